//! A throw-away `redis-server` on a free loopback port, killed on drop. It can be stopped and
//! started again on the same port with the same data directory, so tests can take Redis away and
//! bring it back (and, with AOF arguments, check what survives).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::Instant,
};

use crate::wait::DEADLINE;

/// `redis-server` binary; override with `REDIS_SERVER_BIN`.
const DEFAULT_BIN: &str = "redis-server";

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// One `redis-server` process owned by a test.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server --port <free port> --bind 127.0.0.1 --save '' --appendonly no` and
    /// waits until it answers `PING`.
    pub async fn spawn() -> anyhow::Result<Self> {
        Self::spawn_with_args::<&str>(&[]).await
    }

    /// Like [`RedisServer::spawn`], with extra `redis-server` arguments appended (later
    /// arguments win, so e.g. `["--appendonly", "yes"]` turns AOF on).
    pub async fn spawn_with_args<S: AsRef<str>>(extra_args: &[S]) -> anyhow::Result<Self> {
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.as_ref().to_owned()).collect();
        let mut last_error = None;
        // The free port is only free when we looked; another process may take it first.
        for _ in 0..5 {
            let port = free_port()?;
            let dir = std::env::temp_dir().join(format!(
                "roomcast-redis-{}-{}-{port}",
                std::process::id(),
                NEXT_DIR.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut server = Self {
                port,
                dir,
                extra_args: extra_args.clone(),
                child: None,
            };
            match server.start().await {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The working directory (`--dir`): RDB/AOF files and `redis.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid loopback URL")
    }

    /// A new command connection with timeouts generous enough for slow CI machines.
    pub async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        self.client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the server (again) on the same port and directory and waits until it answers
    /// `PING`. Does nothing if it is running.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| DEFAULT_BIN.to_owned());
        let log = self.dir.join("redis.log");
        let mut cmd = Command::new(&bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {bin} (set REDIS_SERVER_BIN?)"))?;
        self.child = Some(child);

        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                bail!(
                    "redis-server on port {} exited with {status}: {tail}",
                    self.port
                );
            }
            if ping(self.port).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "redis-server on port {} did not answer PING within {DEADLINE:?}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the server with `SHUTDOWN` (which writes the AOF/RDB if configured) and waits for
    /// the process to exit; kills it if it does not.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if !self.is_running() {
            self.child = None;
            return Ok(());
        }
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)).await {
            // The server closes the connection instead of replying.
            let _ = stream.write_all(b"*1\r\n$8\r\nSHUTDOWN\r\n").await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink)).await;
        }
        let deadline = Instant::now() + DEADLINE;
        while self.is_running() {
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "redis-server on port {} ignored SHUTDOWN; killed",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = None;
        Ok(())
    }

    /// Kills the server (SIGKILL) without letting it persist anything: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "redis-server files kept for inspection in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).context("no free loopback port")?;
    Ok(listener.local_addr()?.port())
}

async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
        let mut buf = [0_u8; 64];
        let n = stream.read(&mut buf).await.ok()?;
        // Anything else (e.g. `-LOADING`) means not ready yet.
        buf[..n].starts_with(b"+PONG").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(()))
    )
}
