//! Starting and stopping what a scenario measures: Redis, then either a Roomcast cluster
//! (gateways and fanout replicas) or the Node reference cluster (socket.io processes with the
//! Redis streams adapter), and the load-generator worker processes.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use roomcast_tests::bench_fanout::wait_until;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::{
    Target,
    cli::ClusterArgs,
    procstat::{self, Sample},
    worker::{Command as WorkerCommand, Reply, WorkerSpec},
};

/// What a process is, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Redis,
    Gateway,
    Fanout,
    Node,
}

/// A server process this run started.
pub(crate) struct Proc {
    pub(crate) role: Role,
    pub(crate) name: String,
    child: Child,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub(crate) fn sample(&self) -> Sample {
        procstat::sample(self.pid())
    }
}

/// The servers of one target, started for one scenario run.
pub(crate) struct Cluster {
    pub(crate) target: Target,
    pub(crate) procs: Vec<Proc>,
    /// Where clients connect.
    pub(crate) endpoints: Vec<SocketAddr>,
    pub(crate) redis_url: String,
    pub(crate) log_dir: PathBuf,
}

/// A free TCP port on the loopback interface (free when we looked).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    std::fs::File::create(dir.join(format!("{name}.log")))
        .with_context(|| format!("cannot create {}/{name}.log", dir.display()))
}

impl Cluster {
    /// Starts Redis and the target's servers, and waits until every one is ready.
    pub(crate) async fn start(target: Target, args: &ClusterArgs) -> anyhow::Result<Self> {
        let log_dir = args.log_dir.join(target.label());
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("cannot create {}", log_dir.display()))?;
        let redis_port = free_port()?;
        let mut cluster = Self {
            target,
            procs: Vec::new(),
            endpoints: Vec::new(),
            redis_url: format!("redis://127.0.0.1:{redis_port}"),
            log_dir: log_dir.clone(),
        };
        let redis_dir = log_dir.join("redis-data");
        std::fs::create_dir_all(&redis_dir)?;
        cluster.spawn(
            Role::Redis,
            "redis".into(),
            Command::new(&args.redis_server)
                .args(["--port", &redis_port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--maxclients", "10000"])
                .arg("--dir")
                .arg(&redis_dir),
        )?;
        wait_until("redis", Duration::from_secs(20), || async {
            redis_ping(&cluster.redis_url).await
        })
        .await?;
        match target {
            Target::Roomcast => cluster.start_roomcast(args).await?,
            Target::Node => cluster.start_node(args).await?,
        }
        Ok(cluster)
    }

    fn spawn(&mut self, role: Role, name: String, cmd: &mut Command) -> anyhow::Result<()> {
        let log = log_file(&self.log_dir, &name)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.procs.push(Proc { role, name, child });
        Ok(())
    }

    async fn start_roomcast(&mut self, args: &ClusterArgs) -> anyhow::Result<()> {
        let bin_dir = args.bin_dir()?;
        let gateway_bin = bin_dir.join("roomcast-gateway");
        let fanout_bin = bin_dir.join("roomcast-fanout");
        for bin in [&gateway_bin, &fanout_bin] {
            if !bin.exists() {
                bail!(
                    "{} not found: build it with `cargo build --release` (or pass --bin-dir)",
                    bin.display()
                );
            }
        }
        let mut ready = Vec::new();
        for i in 0..args.fanouts {
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let name = format!("fanout-{}", i + 1);
            self.spawn(
                Role::Fanout,
                name.clone(),
                Command::new(&fanout_bin)
                    .env("REDIS_URL", &self.redis_url)
                    .env("ADMIN_ADDR", admin.to_string())
                    .env("FANOUT_REPLICA_ID", &name)
                    .env("RUST_LOG", &args.rust_log)
                    .envs(args.server_env.iter().map(|(k, v)| (k, v))),
            )?;
            ready.push((name, admin));
        }
        for i in 0..args.gateways {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let name = format!("gateway-{}", i + 1);
            self.spawn(
                Role::Gateway,
                name.clone(),
                Command::new(&gateway_bin)
                    .env("REDIS_URL", &self.redis_url)
                    .env("LISTEN_ADDR", addr.to_string())
                    .env("GATEWAY_ID", &name)
                    .env("RUST_LOG", &args.rust_log)
                    // The load generator is one address opening thousands of connections.
                    .env("MAX_CONNECTIONS", "1000000")
                    .env("CONNECT_RATE_PER_IP", "100000000")
                    .env("CONNECT_BURST_PER_IP", "100000000")
                    .env("WEBSOCKET_PING_INTERVAL", args.ping_interval_ms.to_string())
                    .env("DRAIN_DELAY_MS", "0")
                    .env("DRAIN_PERIOD_MS", "0")
                    .envs(args.server_env.iter().map(|(k, v)| (k, v))),
            )?;
            ready.push((name, addr));
            self.endpoints.push(addr);
        }
        for (name, addr) in ready {
            wait_until(&name, Duration::from_secs(60), || async move {
                Ok(http_status(addr, "/readyz").await == Some(200))
            })
            .await?;
        }
        Ok(())
    }

    async fn start_node(&mut self, args: &ClusterArgs) -> anyhow::Result<()> {
        let dir = node_peer_dir(args).await?;
        for i in 0..args.node_servers {
            let port = free_port()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let name = format!("node-{}", i + 1);
            self.spawn(
                Role::Node,
                name.clone(),
                Command::new(&args.node)
                    .arg("server.js")
                    .current_dir(&dir)
                    .env("PORT", port.to_string())
                    .env("HOST", "127.0.0.1")
                    .env("REDIS_URL", &self.redis_url)
                    .env("PING_INTERVAL", args.ping_interval_ms.to_string())
                    .env("LOG", "0"),
            )?;
            wait_until(&name, Duration::from_secs(60), || async move {
                Ok(http_status(addr, "/healthz").await == Some(200))
            })
            .await?;
            self.endpoints.push(addr);
        }
        Ok(())
    }

    /// Every server process (Redis included).
    pub(crate) fn samples(&self) -> Vec<(Role, String, Sample)> {
        self.procs
            .iter()
            .map(|p| (p.role, p.name.clone(), p.sample()))
            .collect()
    }

    /// Stops everything (SIGKILL: the measurement is over, clean shutdown is not measured).
    pub(crate) async fn stop(mut self) {
        for p in self.procs.iter_mut().rev() {
            let _ = p.child.start_kill();
        }
        for p in &mut self.procs {
            let _ = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
        }
    }
}

/// The Node reference cluster's folder, with its dependencies installed: used as it is when it
/// has `node_modules`, else copied under the log folder and installed with `npm ci` once.
async fn node_peer_dir(args: &ClusterArgs) -> anyhow::Result<PathBuf> {
    let source = &args.node_peer_dir;
    if source.join("node_modules").exists() {
        return Ok(source.clone());
    }
    let copy = args.log_dir.join("node-peer");
    if copy.join("node_modules/socket.io").exists() {
        return Ok(copy);
    }
    if !source.join("package.json").exists() {
        bail!(
            "{} has no package.json: point --node-peer-dir at the Node reference cluster",
            source.display()
        );
    }
    std::fs::create_dir_all(&copy)?;
    for name in [
        "package.json",
        "package-lock.json",
        "server.js",
        "common.js",
    ] {
        std::fs::copy(source.join(name), copy.join(name))
            .with_context(|| format!("copying {name} from {}", source.display()))?;
    }
    eprintln!(
        "installing the Node reference cluster in {} (npm ci)",
        copy.display()
    );
    let status = Command::new(&args.npm)
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&copy)
        .stdout(Stdio::null())
        .status()
        .await
        .context("cannot run npm")?;
    if !status.success() {
        bail!("npm ci failed in {}", copy.display());
    }
    Ok(copy)
}

async fn redis_ping(url: &str) -> anyhow::Result<bool> {
    let Ok(client) = redis::Client::open(url) else {
        return Ok(false);
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return Ok(false);
    };
    Ok(redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok())
}

/// The status code of `GET path`, or `None` if nothing answers.
pub(crate) async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::AsyncReadExt as _;
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0_u8; 32];
        let n = stream.read(&mut head).await.ok()?;
        let line = std::str::from_utf8(&head[..n]).ok()?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// A load-generator process.
pub(crate) struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    pub(crate) fn spawn(spec: &WorkerSpec, log_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("own executable")?;
        let log = log_file(log_dir, &format!("worker-{}", spec.id))?;
        let mut child = Command::new(exe)
            .arg("worker")
            .arg("--spec")
            .arg(serde_json::to_string(spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub(crate) async fn send(&mut self, command: &WorkerCommand) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    pub(crate) async fn recv(&mut self) -> anyhow::Result<Reply> {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .context("worker did not answer within 60 s")??
            .context("worker exited (see its log)")?;
        serde_json::from_str(&line).with_context(|| format!("bad worker reply {line}"))
    }
}

/// All the load-generator processes of a run.
pub(crate) struct Workers(pub(crate) Vec<Worker>);

impl Workers {
    /// Sends `command` to every worker and collects the answers.
    pub(crate) async fn ask(&mut self, command: &WorkerCommand) -> anyhow::Result<Vec<Reply>> {
        for w in &mut self.0 {
            w.send(command).await?;
        }
        let mut replies = Vec::with_capacity(self.0.len());
        for w in &mut self.0 {
            replies.push(w.recv().await?);
        }
        Ok(replies)
    }

    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.0.iter().map(|w| procstat::sample(w.pid())).collect()
    }

    pub(crate) async fn stop(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(20), self.ask(&WorkerCommand::Stop)).await;
        for w in &mut self.0 {
            let _ = w.child.start_kill();
            let _ = w.child.wait().await;
        }
    }
}
