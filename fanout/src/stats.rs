//! Counters of what the fanout did, shared between its tasks and readable by tests (and, later,
//! exported as Prometheus metrics).

use roomcast_shared::counter::Counter;

/// Monotonic counters since start. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct FanoutStats {
    pub(crate) entries: Counter,
    pub(crate) deleted: Counter,
    pub(crate) claimed: Counter,
    pub(crate) published: Counter,
    pub(crate) unheld: Counter,
    pub(crate) duplicates: Counter,
    pub(crate) receivers: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) dropped: Counter,
    pub(crate) acked: Counter,
    pub(crate) batches: Counter,
    pub(crate) retries: Counter,
    pub(crate) redis_errors: Counter,
    pub(crate) trim_runs: Counter,
    pub(crate) trimmed: Counter,
}

/// A point-in-time copy of [`FanoutStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Stream entries handled (valid, invalid and deleted-while-pending).
    pub entries: u64,
    /// Entries whose fields were gone (deleted while pending); acked without effect.
    pub deleted: u64,
    /// Entries taken over with `XAUTOCLAIM` (start-up and periodic).
    pub claimed: u64,
    /// Topic publishes that reached the channel (script status 1).
    pub published: u64,
    /// Topic publishes skipped because no gateway holds the topic (status 0).
    pub unheld: u64,
    /// Topic publishes skipped as redeliveries of an already sequenced entry (status -1).
    pub duplicates: u64,
    /// Sum of gateways reached over all publishes.
    pub receivers: u64,
    /// Invalid entries written to the dead-letter stream.
    pub dead_lettered: u64,
    /// Commands given up on after a non-retryable Redis error (logged at error).
    pub dropped: u64,
    /// Entries acknowledged (`XACK` replies).
    pub acked: u64,
    /// Batches processed.
    pub batches: u64,
    /// Re-executions of commands after a retryable error (`NOSCRIPT`, `OOM`, ...).
    pub retries: u64,
    /// Failed Redis sessions (each one a reconnect).
    pub redis_errors: u64,
    /// Completed trim passes over the publish stream.
    pub trim_runs: u64,
    /// Entries removed from the publish stream by trimming.
    pub trimmed: u64,
}

impl FanoutStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            entries: self.entries.get(),
            deleted: self.deleted.get(),
            claimed: self.claimed.get(),
            published: self.published.get(),
            unheld: self.unheld.get(),
            duplicates: self.duplicates.get(),
            receivers: self.receivers.get(),
            dead_lettered: self.dead_lettered.get(),
            dropped: self.dropped.get(),
            acked: self.acked.get(),
            batches: self.batches.get(),
            retries: self.retries.get(),
            redis_errors: self.redis_errors.get(),
            trim_runs: self.trim_runs.get(),
            trimmed: self.trimmed.get(),
        }
    }
}
