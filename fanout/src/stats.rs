//! Counters and gauges of what the fanout did and how far behind it is, shared between its tasks,
//! readable by tests and served as JSON on the admin endpoint's `/stats` (Prometheus export
//! comes later).

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use prometheus_client::metrics::histogram::Histogram;
use roomcast_shared::counter::{Counter, Gauge};
use serde::Serialize;

/// Monotonic counters since start, and current levels (gauges). Cheap to update from any task.
#[derive(Debug, Default)]
pub struct FanoutStats {
    pub(crate) entries: Counter,
    pub(crate) published: Counter,
    pub(crate) unheld: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) receivers: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) commands: Counter,
    pub(crate) dropped: Counter,
    pub(crate) committed: Counter,
    pub(crate) batches: Counter,
    pub(crate) retries: Counter,
    pub(crate) redis_errors: Counter,
    pub(crate) trim_runs: Counter,
    pub(crate) trimmed: Counter,
    pub(crate) progress_published: Counter,
    pub(crate) leases_acquired: Counter,
    pub(crate) leases_lost: Counter,
    pub(crate) leases_released: Counter,
    pub(crate) partitions_owned: Gauge,
    pub(crate) live_replicas: Gauge,
    pub(crate) in_flight: Gauge,
    pub(crate) backlog: Gauge,
    pub(crate) oldest_unprocessed_age_ms: Gauge,
    /// Dead-lettered entries by reason (`PublishError::reason`, a small fixed set).
    pub(crate) dead_reasons: Mutex<BTreeMap<&'static str, u64>>,
    /// Entries per batch read.
    pub(crate) batch_size: BatchSizes,
}

/// A histogram of batch sizes.
#[derive(Debug)]
pub(crate) struct BatchSizes(pub(crate) Histogram);

impl Default for BatchSizes {
    fn default() -> Self {
        Self(Histogram::new([
            1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
        ]))
    }
}

/// A point-in-time copy of [`FanoutStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Stream entries read (every replica reads every entry; it applies those of its partitions).
    pub entries: u64,
    /// Topic publishes that reached the channel or history (script status 1).
    pub published: u64,
    /// Topic publishes skipped because no gateway holds the topic (status 0).
    pub unheld: u64,
    /// Topic publishes skipped as re-applications of an already sequenced entry (status -1).
    pub duplicates: u64,
    /// Sum of gateways reached over all publishes.
    pub receivers: u64,
    /// Invalid entries written to the dead-letter stream (by the owner of partition 0).
    pub dead_lettered: u64,
    /// Backend commands relayed to the gateways (by the owner of partition 0).
    pub commands: u64,
    /// Entry effects given up on after a non-retryable Redis error (logged at error).
    pub dropped: u64,
    /// Entries whose batch was committed: every effect in Redis, the partition cursors moved
    /// past them.
    pub committed: u64,
    /// Batches read and applied.
    pub batches: u64,
    /// Re-executions of script calls (or of a commit) after a retryable error (`NOSCRIPT`,
    /// `OOM`, ...).
    pub retries: u64,
    /// Failed Redis sessions of the stream reader (each one a reconnect).
    pub redis_errors: u64,
    /// Completed trim passes over the publish stream.
    pub trim_runs: u64,
    /// Entries removed from the publish stream by trimming.
    pub trimmed: u64,
    /// Progress announcements published for gateways.
    pub progress_published: u64,
    /// Partition leases taken.
    pub leases_acquired: u64,
    /// Partition leases found taken by another replica or expired.
    pub leases_lost: u64,
    /// Partition leases given up (rebalancing, shutdown).
    pub leases_released: u64,
    /// Partitions this replica owns now.
    pub partitions_owned: u64,
    /// Live replicas (registered, heartbeat not expired) at the last renewal.
    pub live_replicas: u64,
    /// Entries of the batch being applied (read, not yet committed); 0 between batches.
    pub in_flight: u64,
    /// Length of the publish stream right after the last trim: entries not yet done by every
    /// partition (plus at most a stream node of done ones, and what other groups still need).
    pub backlog: u64,
    /// Age of the oldest entry this replica's partitions have not done yet, at the last
    /// measurement (0: caught up).
    pub oldest_unprocessed_age_ms: u64,
}

impl FanoutStats {
    pub(crate) fn dead_letter(&self, reason: &'static str) {
        self.dead_lettered.inc();
        *self
            .dead_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }

    pub(crate) fn dead_reasons(&self) -> Vec<(&'static str, u64)> {
        self.dead_reasons
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(r, n)| (*r, *n))
            .collect()
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            entries: self.entries.get(),
            published: self.published.get(),
            unheld: self.unheld.get(),
            duplicates: self.duplicates.get(),
            receivers: self.receivers.get(),
            dead_lettered: self.dead_lettered.get(),
            commands: self.commands.get(),
            dropped: self.dropped.get(),
            committed: self.committed.get(),
            batches: self.batches.get(),
            retries: self.retries.get(),
            redis_errors: self.redis_errors.get(),
            trim_runs: self.trim_runs.get(),
            trimmed: self.trimmed.get(),
            progress_published: self.progress_published.get(),
            leases_acquired: self.leases_acquired.get(),
            leases_lost: self.leases_lost.get(),
            leases_released: self.leases_released.get(),
            partitions_owned: self.partitions_owned.get(),
            live_replicas: self.live_replicas.get(),
            in_flight: self.in_flight.get(),
            backlog: self.backlog.get(),
            oldest_unprocessed_age_ms: self.oldest_unprocessed_age_ms.get(),
        }
    }
}
