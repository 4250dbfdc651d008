//! roomcast-fanout: reads the publish stream and sequences every publish request into its room or
//! namespace topics (`topic_publish.lua`), dead-lettering invalid ones. Several replicas share the
//! work: topics are split into partitions, each with one owner at a time (leases in Redis), so
//! every room is sequenced in publish order (see `docs/fanout.md`). `main.rs` only parses the
//! configuration; [`run`] (or [`Fanout`]) is the whole service, so tests start it in-process.

mod admin;
mod batch;
mod config;
mod leases;
mod metrics;
mod outage;
mod processor;
mod settle;
mod stats;
mod stream_reply;
mod trim;

use std::sync::Arc;

use anyhow::Context as _;
use roomcast_shared::{
    health::Readiness,
    wire::{KeySpace, PublishLimits},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};

pub use config::FanoutConfig;
pub use stats::{FanoutStats, StatsSnapshot};

use crate::{
    batch::BatchContext,
    leases::{LeaseTable, Leases},
    outage::{Outage, READY_REDIS},
    processor::{Processor, ProcessorConfig},
    trim::Trimmer,
};

/// The fanout service before it runs: gives access to its counters and readiness.
pub struct Fanout {
    config: FanoutConfig,
    stats: Arc<FanoutStats>,
    readiness: Readiness,
}

impl Fanout {
    pub fn new(config: FanoutConfig) -> Self {
        Self {
            config,
            stats: Arc::default(),
            readiness: Readiness::new(&[READY_REDIS]),
        }
    }

    /// Live counters; they keep updating while [`Fanout::run`] runs.
    pub fn stats(&self) -> Arc<FanoutStats> {
        self.stats.clone()
    }

    /// The readiness served on `/readyz` (condition `redis`).
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Runs until `shutdown` is cancelled, then stops reading, finishes and commits the
    /// in-flight batch, gives its partition leases up (so other replicas take over at once) and
    /// stops the admin server, all within `SHUTDOWN_TIMEOUT_MS`.
    pub async fn run(self, admin: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            stats,
            readiness,
        } = self;
        config.check().map_err(anyhow::Error::msg)?;
        let client = redis::Client::open(config.redis.url.as_str()).context("invalid REDIS_URL")?;
        let keys = KeySpace::new(config.redis.key_prefix.clone());
        let ctx = BatchContext {
            stream: keys.publish_stream(),
            dead_stream: keys.dead_letter_stream(),
            control_channel: keys.control_channel(),
            keys: keys.clone(),
            dead_letter_maxlen: config.dead_letter_maxlen,
            limits: PublishLimits {
                max_entry_bytes: config.max_publish_bytes,
                max_rooms: config.max_publish_rooms,
            },
            history_max_len: config.recovery.history_max_len,
            history_retention_ms: config.recovery.window_ms(),
            partitions: config.partitions,
        };
        if let Ok(addr) = admin.local_addr() {
            info!(%addr, replica = %config.replica_id, partitions = config.partitions, "admin server listening");
        }

        // Our own root below the caller's, so a fatal admin-server error can stop everything
        // without cancelling the caller's token.
        let root = shutdown.child_token();
        let work = root.child_token();
        // Not a child of `root`: the leases are given up only after the processor stopped.
        let lease_stop = CancellationToken::new();
        let table = Arc::new(LeaseTable::new(config.partitions));
        let tracker = TaskTracker::new();
        let mut admin_task = tracker.spawn(admin::serve(
            admin,
            readiness.clone(),
            stats.clone(),
            metrics::registry(stats.clone(), config.replica_id.as_str().into()),
            root.child_token(),
        ));
        let leases = Leases {
            client: client.clone(),
            keys: keys.clone(),
            replica: config.replica_id.clone(),
            ttl: config.lease_ttl,
            renew: config.lease_renew,
            table: table.clone(),
            stats: stats.clone(),
            outage: Outage::new("leases", Some(readiness)),
        };
        let lease_task = tracker.spawn(leases.run(lease_stop.clone()));
        let processor = Processor::new(
            client.clone(),
            ctx,
            ProcessorConfig {
                replica: config.replica_id.clone(),
                batch_size: config.batch_size,
                block: config.block,
                idle: config.lease_renew,
            },
            table.clone(),
            stats.clone(),
        );
        let processor_task = tracker.spawn(processor.run(work.clone()));
        let trimmer = Trimmer::new(client, keys, config.trim_interval, table, stats.clone());
        tracker.spawn(trimmer.run(work.clone()));
        tracker.close();

        let admin_failure = tokio::select! {
            biased;
            () = root.cancelled() => None,
            result = &mut admin_task => match result {
                // It stops by itself only on shutdown, which may have raced this select.
                Ok(Ok(())) if root.is_cancelled() => None,
                Ok(Ok(())) => Some(anyhow::anyhow!("admin server stopped unexpectedly")),
                Ok(Err(e)) => Some(anyhow::Error::new(e).context("admin server failed")),
                Err(e) => Some(anyhow::Error::new(e).context("admin server task failed")),
            },
        };
        if let Some(error) = &admin_failure {
            error!(error = format!("{error:#}"), "stopping");
        }
        info!("shutting down");
        let stopped = async {
            work.cancel();
            // A panicked task has nothing left to finish.
            let _ = processor_task.await;
            lease_stop.cancel();
            let _ = lease_task.await;
            root.cancel();
            tracker.wait().await;
        };
        if tokio::time::timeout(config.shutdown.timeout, stopped)
            .await
            .is_err()
        {
            warn!(timeout = ?config.shutdown.timeout, "shutdown timed out; the leases expire by themselves and the batch is applied again by the next owner");
            anyhow::bail!(
                "shutdown did not finish within {:?}",
                config.shutdown.timeout
            );
        }
        match admin_failure {
            Some(error) => Err(error),
            None => {
                info!(counters = ?stats.snapshot(), "stopped");
                Ok(())
            }
        }
    }
}

/// Runs the fanout until `shutdown` is cancelled. See [`Fanout::run`].
pub async fn run(
    config: FanoutConfig,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Fanout::new(config).run(admin, shutdown).await
}
