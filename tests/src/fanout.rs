//! The fanout run in-process against a test Redis, its admin server on an ephemeral port.

use std::{net::SocketAddr, sync::Arc};

use clap::Parser as _;
use roomcast_fanout::{Fanout, FanoutConfig, FanoutStats, StatsSnapshot};
use roomcast_shared::wire::KeySpace;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// A running fanout; cancelled (not awaited) on drop.
#[derive(Debug)]
pub struct InProcessFanout {
    keys: KeySpace,
    replica: String,
    partitions: u16,
    stats: Arc<FanoutStats>,
    admin_addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl InProcessFanout {
    /// Test settings: this Redis, replica id `test-fanout`, admin on `127.0.0.1:0`, then `extra`
    /// flags (e.g. `["--fanout-batch-size", "10"]`), which win.
    pub fn config(redis_url: &str, extra: &[&str]) -> FanoutConfig {
        let defaults = [
            ("--redis-url", redis_url),
            ("--admin-addr", "127.0.0.1:0"),
            ("--fanout-replica-id", "test-fanout"),
        ];
        let mut args = vec!["roomcast-fanout"];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        args.extend_from_slice(extra);
        FanoutConfig::try_parse_from(args).expect("test fanout settings parse")
    }

    /// Starts `roomcast_fanout::Fanout::run` on a task.
    pub async fn start(config: FanoutConfig) -> anyhow::Result<Self> {
        crate::init_logging();
        let listener = TcpListener::bind(config.admin_addr).await?;
        let admin_addr = listener.local_addr()?;
        let keys = KeySpace::new(config.redis.key_prefix.clone());
        let replica = config.replica_id.clone();
        let partitions = config.partitions;
        let fanout = Fanout::new(config);
        let stats = fanout.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(fanout.run(listener, shutdown.clone()));
        Ok(Self {
            keys,
            replica,
            partitions,
            stats,
            admin_addr,
            shutdown,
            task: Some(task),
        })
    }

    /// The key layout of the configured prefix.
    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// This replica's id (`FANOUT_REPLICA_ID`).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// `FANOUT_PARTITIONS`.
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The counters now. The fanout records a publish after Redis replied, so a test that just
    /// received an envelope may not see it counted yet: await with `eventually`, or use the
    /// snapshot [`InProcessFanout::stop`] returns.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Cancels the fanout, waits for `run` to return (its in-flight batch finished) and returns
    /// the final counters, or what `run` failed with.
    pub async fn stop(mut self) -> anyhow::Result<StatsSnapshot> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(self.stats.snapshot())
    }
}

impl Drop for InProcessFanout {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
