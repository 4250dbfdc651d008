//! roomcast-fanout: consumes the publish stream with a consumer group and sequences every publish
//! request into its room or namespace topics (`topic_publish.lua`), dead-lettering invalid ones.
//! `main.rs` only parses the configuration; [`run`] (or [`Fanout`]) is the whole service, so
//! tests start it in-process.

mod admin;
mod batch;
mod config;
mod consumer;
mod outage;
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

use crate::{batch::BatchContext, consumer::Consumer, outage::READY_REDIS, trim::Trimmer};

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

    /// Runs until `shutdown` is cancelled, then stops reading, finishes and acknowledges the
    /// in-flight batch and stops the admin server, all within `SHUTDOWN_TIMEOUT_MS`.
    pub async fn run(self, admin: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            stats,
            readiness,
        } = self;
        let client = redis::Client::open(config.redis.url.as_str()).context("invalid REDIS_URL")?;
        let keys = KeySpace::new(config.redis.key_prefix.clone());
        let ctx = BatchContext {
            stream: keys.publish_stream(),
            dead_stream: keys.dead_letter_stream(),
            keys,
            group: config.group.clone(),
            dead_letter_maxlen: config.dead_letter_maxlen,
            limits: PublishLimits {
                max_entry_bytes: config.max_publish_bytes,
                max_rooms: config.max_publish_rooms,
            },
            history_max_len: config.recovery.history_max_len,
            history_retention_ms: config.recovery.window_ms(),
        };
        if let Ok(addr) = admin.local_addr() {
            info!(%addr, "admin server listening");
        }

        // Our own root below the caller's, so a fatal admin-server error can stop everything
        // without cancelling the caller's token.
        let root = shutdown.child_token();
        let tracker = TaskTracker::new();
        let mut admin_task =
            tracker.spawn(admin::serve(admin, readiness.clone(), root.child_token()));
        let consumer = Consumer::new(
            &config,
            client.clone(),
            ctx.clone(),
            stats.clone(),
            readiness,
        );
        tracker.spawn(consumer.run(root.child_token()));
        let trimmer = Trimmer::new(client, ctx.stream.clone(), config.trim_interval, stats);
        tracker.spawn(trimmer.run(root.child_token()));
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
        root.cancel();
        if tokio::time::timeout(config.shutdown.timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(timeout = ?config.shutdown.timeout, "shutdown timed out; unacknowledged entries stay pending");
            anyhow::bail!(
                "shutdown did not finish within {:?}",
                config.shutdown.timeout
            );
        }
        match admin_failure {
            Some(error) => Err(error),
            None => {
                info!("stopped");
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
