//! Gateway liveness in Redis: a heartbeat in `<prefix>:gateways`, removal of the memberships of
//! gateways that stopped heartbeating (any gateway does it; the script is idempotent), and
//! removal of our own memberships at start-up and on clean shutdown.

use std::{sync::Arc, time::Duration};

use redis::aio::ConnectionManager;
use roomcast_shared::clock::unix_ms;
use roomcast_shared::{health::Readiness, wire::KeySpace, wire::REAP_GATEWAYS_LUA};
use tokio_util::sync::CancellationToken;

use crate::rooms::LocalRooms;

pub(crate) const READY_REDIS: &str = "redis";

pub(crate) struct Membership {
    pub(crate) commands: ConnectionManager,
    pub(crate) keys: KeySpace,
    pub(crate) gateway_id: Arc<str>,
    pub(crate) rooms: Arc<LocalRooms>,
    pub(crate) readiness: Readiness,
    pub(crate) interval: Duration,
    pub(crate) ttl: Duration,
    /// Life of the `:meta` of a topic a reaped gateway was the last to hold (`wire::meta_ttl_ms`).
    pub(crate) meta_ttl_ms: u64,
    pub(crate) stats: Arc<crate::stats::GatewayStats>,
}

impl Membership {
    /// Heartbeats until shutdown. Readiness condition `redis` follows the heartbeat's success.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        let mut healthy = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.beat().await {
                Ok(added) => {
                    if added && !first {
                        // We were missing from the live set: reaped after a stall, or Redis lost
                        // its data. Our memberships may be gone; write them all again.
                        tracing::warn!(
                            "gateway heartbeat entry was missing; rewriting memberships"
                        );
                        self.rooms.request_full_resync();
                    }
                    if !healthy {
                        tracing::info!("Redis reachable again");
                    }
                    first = false;
                    healthy = true;
                    self.readiness.set(READY_REDIS, true);
                }
                Err(error) => {
                    self.stats.redis_errors.inc();
                    if healthy {
                        tracing::warn!(%error, "Redis heartbeat failed; not ready until it succeeds");
                    }
                    healthy = false;
                    self.readiness.set(READY_REDIS, false);
                }
            }
        }
    }

    /// One heartbeat and one reaping pass. Returns whether our entry had to be added.
    async fn beat(&mut self) -> redis::RedisResult<bool> {
        let now = unix_ms();
        let expiry = now + self.ttl.as_millis() as u64;
        let script = redis::Script::new(REAP_GATEWAYS_LUA);
        let mut reap = script.key(self.keys.gateways());
        reap.arg(now)
            .arg(self.keys.prefix())
            .arg("")
            .arg(self.meta_ttl_ms);
        // Loading the script every beat is cheap and makes the pipeline survive a Redis restart
        // (which forgets loaded scripts).
        let (added, _reaped): (u64, u64) = redis::pipe()
            .load_script(&script)
            .ignore()
            .zadd(self.keys.gateways(), &*self.gateway_id, expiry)
            .invoke_script(&reap)
            .query_async(&mut self.commands)
            .await?;
        Ok(added == 1)
    }
}

/// Removes every membership recorded under `gateway_id` (ours, at start-up after a crash with
/// the same id, and on clean shutdown).
pub(crate) async fn remove_gateway(
    commands: &mut ConnectionManager,
    keys: &KeySpace,
    gateway_id: &str,
    meta_ttl_ms: u64,
) -> redis::RedisResult<()> {
    redis::Script::new(REAP_GATEWAYS_LUA)
        .key(keys.gateways())
        .arg(unix_ms())
        .arg(keys.prefix())
        .arg(gateway_id)
        .arg(meta_ttl_ms)
        .invoke_async::<u64>(commands)
        .await?;
    Ok(())
}
