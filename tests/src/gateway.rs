//! The gateway run in-process against a test Redis, listening on an ephemeral port.

use std::net::SocketAddr;

use clap::Parser as _;
use roomcast_gateway::GatewayConfig;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// A running gateway; cancelled (not awaited) on drop.
#[derive(Debug)]
pub struct InProcessGateway {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcessGateway {
    /// Test settings: this Redis, listening on `127.0.0.1:0`, then `extra` flags, which win.
    pub fn config(redis_url: &str, extra: &[&str]) -> GatewayConfig {
        let mut args = vec!["roomcast-gateway"];
        for (flag, value) in [("--redis-url", redis_url), ("--listen-addr", "127.0.0.1:0")] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend_from_slice(extra);
        GatewayConfig::try_parse_from(args).expect("test gateway settings parse")
    }

    /// Starts `roomcast_gateway::run` on a task.
    pub async fn start(config: GatewayConfig) -> anyhow::Result<Self> {
        crate::init_logging();
        let listener = TcpListener::bind(config.listen_addr).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(roomcast_gateway::run(config, listener, shutdown.clone()));
        Ok(Self {
            addr,
            shutdown,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cancels the gateway and waits for `run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

impl Drop for InProcessGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
