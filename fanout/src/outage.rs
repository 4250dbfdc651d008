//! Outage bookkeeping for one Redis loop: log once when Redis becomes unreachable (and once when
//! it is back), not on every retry, and drive the `redis` readiness condition.

use std::fmt::Display;

use roomcast_shared::health::Readiness;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// The readiness condition the fanout reports on `/readyz`.
pub(crate) const READY_REDIS: &str = "redis";

#[derive(Debug)]
pub(crate) struct Outage {
    /// Which loop this is, for the log lines.
    task: &'static str,
    /// Only the loop that talks to Redis continuously (the consumer) drives readiness; a loop
    /// that runs every few seconds would flap it.
    readiness: Option<Readiness>,
    down_since: Option<Instant>,
}

impl Outage {
    pub(crate) fn new(task: &'static str, readiness: Option<Readiness>) -> Self {
        Self {
            task,
            readiness,
            down_since: None,
        }
    }

    pub(crate) fn failed(&mut self, error: &dyn Display) {
        if let Some(readiness) = &self.readiness {
            readiness.set(READY_REDIS, false);
        }
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            warn!(task = self.task, %error, "Redis command failed; retrying with backoff until it works again");
        } else {
            debug!(task = self.task, %error, "Redis still failing");
        }
    }

    pub(crate) fn succeeded(&mut self) {
        if let Some(readiness) = &self.readiness {
            readiness.set(READY_REDIS, true);
        }
        if let Some(since) = self.down_since.take() {
            info!(task = self.task, down_for = ?since.elapsed(), "Redis works again");
        }
    }
}
