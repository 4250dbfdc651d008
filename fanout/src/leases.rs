//! Partition ownership. Topics are split into `FANOUT_PARTITIONS` partitions
//! (`wire::partition`); a replica applies the entries of a partition only while it holds the
//! partition's lease in Redis, so every partition (and so every room) has one active owner.
//!
//! This task registers the replica (heartbeat in `<prefix>:fanout:replicas`), renews its leases,
//! takes free partitions up to its fair share (`ceil(partitions / live replicas)`) and marks
//! those above it for surrender; the processor gives them up between batches. On shutdown, after
//! the processor stopped, it releases everything so other replicas take over at once. The
//! [`LeaseTable`] is what the two tasks share.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use redis::{RedisError, Value, aio::ConnectionLike};
use roomcast_shared::{
    clock::unix_ms,
    redis_conn::command_connection,
    wire::{KeySpace, PARTITION_LEASE_LUA, StreamId, partition::crc16},
};
use thiserror::Error;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{outage::Outage, stats::FanoutStats};

#[derive(Debug, Error)]
pub(crate) enum LeaseError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("unexpected reply to {0}")]
    Unexpected(&'static str),
}

/// One partition this replica holds.
#[derive(Debug, Clone)]
struct Lease {
    /// Changes each time the lease is (re)acquired, so the processor knows to reload the cursor.
    epoch: u64,
    /// The partition's cursor in Redis when the lease was acquired.
    cursor: StreamId,
    /// Until when the processor may work on it: a margin before the lease expires in Redis.
    valid_until: Instant,
    /// To be given up by the processor at its next batch boundary.
    surrender: bool,
}

/// A partition the processor may work on now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Active {
    pub(crate) partition: u16,
    pub(crate) epoch: u64,
    pub(crate) cursor: StreamId,
}

#[derive(Debug, Default)]
struct Table {
    held: BTreeMap<u16, Lease>,
    next_epoch: u64,
}

/// The partitions this replica holds, shared by the lease task and the processor. Never locked
/// across an await.
#[derive(Debug)]
pub(crate) struct LeaseTable {
    partitions: u16,
    inner: Mutex<Table>,
    changed: Notify,
}

impl LeaseTable {
    pub(crate) fn new(partitions: u16) -> Self {
        Self {
            partitions,
            inner: Mutex::default(),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Plain data: a panic while holding the lock leaves nothing half-updated that matters.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn partitions(&self) -> u16 {
        self.partitions
    }

    /// Partitions the processor may apply entries of now.
    pub(crate) fn active(&self, now: Instant) -> Vec<Active> {
        self.lock()
            .held
            .iter()
            .filter(|(_, l)| !l.surrender && l.valid_until > now)
            .map(|(&partition, l)| Active {
                partition,
                epoch: l.epoch,
                cursor: l.cursor,
            })
            .collect()
    }

    /// Every partition held, including those being given up.
    pub(crate) fn held(&self) -> Vec<u16> {
        self.lock().held.keys().copied().collect()
    }

    /// Removes and returns the partitions marked for surrender; the caller releases them.
    pub(crate) fn take_surrendered(&self) -> Vec<u16> {
        let mut table = self.lock();
        let gone: Vec<u16> = table
            .held
            .iter()
            .filter(|(_, l)| l.surrender)
            .map(|(&p, _)| p)
            .collect();
        for p in &gone {
            table.held.remove(p);
        }
        gone
    }

    /// The lease is not ours any more (a commit or renewal was refused).
    pub(crate) fn lost(&self, partition: u16) -> bool {
        let removed = self.lock().held.remove(&partition).is_some();
        if removed {
            self.changed.notify_waiters();
        }
        removed
    }

    /// Resolves at the next change of ownership.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    fn renewed(&self, partition: u16, valid_until: Instant) {
        if let Some(lease) = self.lock().held.get_mut(&partition) {
            lease.valid_until = valid_until;
        }
    }

    /// Partitions just taken, with their cursors; one notification for all of them, so the
    /// processor's next batch covers them together.
    fn acquired(&self, taken: &[(u16, StreamId)], valid_until: Instant) {
        {
            let mut table = self.lock();
            for &(partition, cursor) in taken {
                table.next_epoch += 1;
                let epoch = table.next_epoch;
                table.held.insert(
                    partition,
                    Lease {
                        epoch,
                        cursor,
                        valid_until,
                        surrender: false,
                    },
                );
            }
        }
        self.changed.notify_waiters();
    }

    fn surrender(&self, partitions: &[u16]) {
        {
            let mut table = self.lock();
            for p in partitions {
                if let Some(lease) = table.held.get_mut(p) {
                    lease.surrender = true;
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Held partitions not being given up.
    fn kept(&self) -> Vec<u16> {
        self.lock()
            .held
            .iter()
            .filter(|(_, l)| !l.surrender)
            .map(|(&p, _)| p)
            .collect()
    }
}

/// Each live replica's fair share: `ceil(partitions / live)`. With every replica at most at its
/// share, and shares adding up to at least `partitions`, every partition finds an owner.
pub(crate) fn fair_share(partitions: u16, live: u64) -> usize {
    let live = usize::try_from(live.max(1)).unwrap_or(usize::MAX);
    usize::from(partitions).div_ceil(live)
}

/// The partitions in this replica's order of preference: all of them, starting at a point given
/// by a hash of its id, so replicas that start together go for different partitions first.
pub(crate) fn preference(partitions: u16, replica: &str) -> Vec<u16> {
    let start = crc16(replica.as_bytes()) % partitions.max(1);
    (0..partitions)
        .map(|i| (start + i) % partitions.max(1))
        .collect()
}

/// What to change to get to `target` partitions: which of `kept` to give up (the least
/// preferred), or how many free ones to try to take.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Rebalance {
    pub(crate) surrender: Vec<u16>,
    pub(crate) want: usize,
}

pub(crate) fn rebalance(kept: &[u16], preference: &[u16], target: usize) -> Rebalance {
    if kept.len() > target {
        let mut ranked: Vec<u16> = preference
            .iter()
            .copied()
            .filter(|p| kept.contains(p))
            .collect();
        let surrender = ranked.split_off(target);
        Rebalance { surrender, want: 0 }
    } else {
        Rebalance {
            surrender: Vec::new(),
            want: target - kept.len(),
        }
    }
}

/// Whether some replica holds more than its fair share `target`, judging by the owners of the
/// partitions we do not hold: it gives the excess up at its next renewal, and a replica short of
/// its share should be there to take it at once rather than a renewal interval later.
pub(crate) fn release_expected(owners: &[Option<String>], me: &str, target: usize) -> bool {
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for owner in owners.iter().flatten().filter(|o| o.as_str() != me) {
        *counts.entry(owner.as_str()).or_default() += 1;
    }
    counts.values().any(|&n| n > target)
}

/// How soon a replica short of its share looks again while another holds more than its own: a
/// handed-over partition is unowned (and every gateway holds the messages after it, to keep the
/// order) from its release until it is taken.
const SHORT_RETRY: Duration = Duration::from_millis(25);

/// The lease task.
pub(crate) struct Leases {
    pub(crate) client: redis::Client,
    pub(crate) keys: KeySpace,
    pub(crate) replica: String,
    pub(crate) ttl: Duration,
    pub(crate) renew: Duration,
    pub(crate) table: Arc<LeaseTable>,
    pub(crate) stats: Arc<FanoutStats>,
    /// Drives the `redis` readiness condition: this loop talks to Redis every renewal interval.
    pub(crate) outage: Outage,
}

/// The reply of `partition_lease.lua`.
enum LeaseReply {
    Held(StreamId),
    Other(String),
    NoScript,
    Failed(String),
}

fn lease_reply(value: Value) -> Result<LeaseReply, LeaseError> {
    match value {
        Value::Array(parts) => match parts.as_slice() {
            [Value::Int(1), cursor] => Ok(LeaseReply::Held(
                text(cursor)
                    .as_deref()
                    .and_then(StreamId::parse)
                    .unwrap_or_default(),
            )),
            [Value::Int(0), owner] => Ok(LeaseReply::Other(text(owner).unwrap_or_default())),
            _ => Err(LeaseError::Unexpected("partition_lease.lua")),
        },
        Value::ServerError(e) if e.code() == "NOSCRIPT" => Ok(LeaseReply::NoScript),
        Value::ServerError(e) => Ok(LeaseReply::Failed(e.to_string())),
        _ => Err(LeaseError::Unexpected("partition_lease.lua")),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `partition_lease.lua` calls of one replica.
pub(crate) struct LeaseScript<'a> {
    pub(crate) sha: &'a str,
    pub(crate) keys: &'a KeySpace,
    pub(crate) partitions: u16,
    pub(crate) replica: &'a str,
}

impl LeaseScript<'_> {
    /// Adds one call (`acquire`, `renew` or `release`) to a pipeline.
    pub(crate) fn add(
        &self,
        pipe: &mut redis::Pipeline,
        partition: u16,
        mode: &str,
        ttl: Duration,
    ) {
        let pk = self.keys.partition(partition, self.partitions);
        pipe.cmd("EVALSHA")
            .arg(self.sha)
            .arg(2)
            .arg(pk.lease())
            .arg(pk.cursor())
            .arg(self.replica)
            .arg(mode)
            .arg(millis(ttl));
    }
}

/// Gives up `partitions` (deleting each lease if still ours); returns how many were released.
pub(crate) async fn release<C: ConnectionLike>(
    conn: &mut C,
    script: &LeaseScript<'_>,
    partitions: &[u16],
) -> Result<usize, LeaseError> {
    if partitions.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for &p in partitions {
        script.add(&mut pipe, p, "release", Duration::ZERO);
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let mut released = 0;
    for reply in replies {
        match lease_reply(reply)? {
            LeaseReply::Held(_) => released += 1,
            LeaseReply::Other(_) => {}
            // Not ours to release, or nothing to do about it now: the lease expires by itself.
            LeaseReply::NoScript | LeaseReply::Failed(_) => {}
        }
    }
    Ok(released)
}

pub(crate) async fn load_lease_script<C: ConnectionLike>(
    conn: &mut C,
) -> Result<String, RedisError> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(PARTITION_LEASE_LUA)
        .query_async(conn)
        .await
}

impl Leases {
    /// Renews and rebalances every `renew` until `cancel`; then releases every lease and removes
    /// the replica from the registry. Cancel it only after the processor stopped.
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        let preference = preference(self.table.partitions(), &self.replica);
        let mut conn = None;
        let mut sha = None;
        let mut tick = tokio::time::interval(self.renew);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let retry = SHORT_RETRY.min(self.renew);
        let mut short = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
                () = tokio::time::sleep(retry), if short => {}
            }
            let result = async {
                if conn.is_none() {
                    conn = Some(command_connection(&self.client).await?);
                }
                let Some(c) = conn.as_mut() else {
                    return Err(LeaseError::Unexpected("connection"));
                };
                if sha.is_none() {
                    sha = Some(load_lease_script(c).await?);
                }
                let Some(s) = sha.as_deref() else {
                    return Err(LeaseError::Unexpected("SCRIPT LOAD"));
                };
                let (reload, waiting) = self.round(c, s, &preference).await?;
                if reload {
                    sha = None;
                }
                Ok(waiting)
            }
            .await;
            match result {
                Ok(waiting) => {
                    short = waiting;
                    self.outage.succeeded();
                }
                Err(error) => {
                    short = false;
                    self.outage.failed(&error);
                }
            }
        }
        self.shutdown(conn, sha).await;
    }

    /// One renewal and rebalancing round. Returns whether the script must be loaded again, and
    /// whether this replica is short of its share while another gives partitions up.
    async fn round<C: ConnectionLike>(
        &mut self,
        conn: &mut C,
        sha: &str,
        preference: &[u16],
    ) -> Result<(bool, bool), LeaseError> {
        let partitions = self.table.partitions();
        let replicas = self.keys.fanout_replicas();
        let ttl_ms = millis(self.ttl);
        let now_ms = unix_ms();
        let sent = Instant::now();
        // Stop working on a partition a renewal interval before its lease could expire in Redis.
        let valid_until = sent + self.ttl.saturating_sub(self.renew);
        let held = self.table.held();

        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("ZADD")
            .arg(&replicas)
            .arg(now_ms.saturating_add(ttl_ms))
            .arg(&self.replica);
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&replicas)
            .arg("-inf")
            .arg(now_ms);
        pipe.cmd("ZCARD").arg(&replicas);
        let script = LeaseScript {
            sha,
            keys: &self.keys,
            partitions,
            replica: &self.replica,
        };
        for &p in &held {
            script.add(&mut pipe, p, "renew", self.ttl);
        }
        let replies: Vec<Value> = pipe.query_async(conn).await?;
        if replies.len() != 3 + held.len() {
            return Err(LeaseError::Unexpected("lease renewal pipeline"));
        }
        let mut replies = replies.into_iter();
        for what in ["ZADD", "ZREMRANGEBYSCORE"] {
            if let Some(Value::ServerError(e)) = replies.next() {
                warn!(error = %e, command = what, "replica heartbeat refused");
            }
        }
        let live = match replies.next() {
            Some(Value::Int(n)) => u64::try_from(n).unwrap_or(1).max(1),
            _ => return Err(LeaseError::Unexpected("ZCARD")),
        };
        self.stats.live_replicas.set(live);
        let mut reload = false;
        for (&p, reply) in held.iter().zip(replies) {
            match lease_reply(reply)? {
                LeaseReply::Held(_) => self.table.renewed(p, valid_until),
                LeaseReply::Other(owner) => {
                    if self.table.lost(p) {
                        self.stats.leases_lost.inc();
                        warn!(partition = p, %owner, "partition lease lost");
                    }
                }
                LeaseReply::NoScript => reload = true,
                LeaseReply::Failed(error) => {
                    warn!(partition = p, %error, "partition lease renewal refused")
                }
            }
        }
        if reload {
            return Ok((true, false));
        }

        let kept = self.table.kept();
        let target = fair_share(partitions, live);
        let plan = rebalance(&kept, preference, target);
        if !plan.surrender.is_empty() {
            info!(partitions = ?plan.surrender, live, target, "giving partitions up for other replicas");
            self.table.surrender(&plan.surrender);
        }
        let mut waiting = false;
        if plan.want > 0 {
            waiting = self
                .acquire(conn, sha, preference, plan.want, target, sent)
                .await?;
        }
        self.stats
            .partitions_owned
            .set(self.table.kept().len() as u64);
        Ok((false, waiting))
    }

    /// Takes up to `want` free partitions, in order of preference. Returns whether it is still
    /// short and another replica holds more than its share `target` (so a release is coming).
    async fn acquire<C: ConnectionLike>(
        &mut self,
        conn: &mut C,
        sha: &str,
        preference: &[u16],
        want: usize,
        target: usize,
        sent: Instant,
    ) -> Result<bool, LeaseError> {
        let partitions = self.table.partitions();
        let held = self.table.held();
        let candidates: Vec<u16> = preference
            .iter()
            .copied()
            .filter(|p| !held.contains(p))
            .collect();
        if candidates.is_empty() {
            return Ok(false);
        }
        let mut pipe = redis::pipe();
        for &p in &candidates {
            pipe.cmd("GET")
                .arg(self.keys.partition(p, partitions).lease());
        }
        let owners: Vec<Option<String>> = pipe.query_async(conn).await?;
        let release_coming = release_expected(&owners, &self.replica, target);
        // A lease under our own id is ours to take again (a restart with a fixed
        // FANOUT_REPLICA_ID need not wait for it to expire).
        let free: Vec<u16> = candidates
            .into_iter()
            .zip(owners)
            .filter(|(_, owner)| owner.as_deref().is_none_or(|o| o == self.replica))
            .map(|(p, _)| p)
            .take(want)
            .collect();
        if free.is_empty() {
            return Ok(release_coming);
        }
        let short = free.len() < want;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let script = LeaseScript {
            sha,
            keys: &self.keys,
            partitions,
            replica: &self.replica,
        };
        for &p in &free {
            script.add(&mut pipe, p, "acquire", self.ttl);
        }
        let replies: Vec<Value> = pipe.query_async(conn).await?;
        let valid_until = sent + self.ttl.saturating_sub(self.renew);
        let mut got = Vec::new();
        for (&p, reply) in free.iter().zip(replies) {
            match lease_reply(reply)? {
                LeaseReply::Held(cursor) => {
                    self.stats.leases_acquired.inc();
                    got.push((p, cursor));
                }
                // Another replica was faster.
                LeaseReply::Other(_) => {}
                LeaseReply::NoScript | LeaseReply::Failed(_) => {}
            }
        }
        if !got.is_empty() {
            self.table.acquired(&got, valid_until);
            let list: Vec<u16> = got.iter().map(|(p, _)| *p).collect();
            info!(partitions = ?list, "partitions acquired");
        }
        Ok(short && release_coming)
    }

    /// Releases every lease and leaves the registry, so other replicas take over at once.
    async fn shutdown(&mut self, conn: Option<redis::aio::ConnectionManager>, sha: Option<String>) {
        let held = self.table.held();
        let attempt = async {
            let mut conn = match conn {
                Some(conn) => conn,
                None => command_connection(&self.client).await?,
            };
            let sha = match sha {
                Some(sha) => sha,
                None => load_lease_script(&mut conn).await?,
            };
            let script = LeaseScript {
                sha: &sha,
                keys: &self.keys,
                partitions: self.table.partitions(),
                replica: &self.replica,
            };
            let released = release(&mut conn, &script, &held).await?;
            redis::cmd("ZREM")
                .arg(self.keys.fanout_replicas())
                .arg(&self.replica)
                .query_async::<()>(&mut conn)
                .await?;
            Ok::<_, LeaseError>(released)
        };
        match attempt.await {
            Ok(released) => {
                self.stats.leases_released.add(released as u64);
                self.stats.partitions_owned.set(0);
                info!(released, "partition leases released");
            }
            Err(error) => {
                warn!(%error, "could not release the partition leases; they expire by themselves")
            }
        }
        debug!("lease task stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_shares_cover_every_partition() {
        assert_eq!(fair_share(16, 1), 16);
        assert_eq!(fair_share(16, 2), 8);
        assert_eq!(fair_share(16, 3), 6);
        assert_eq!(
            fair_share(16, 0),
            16,
            "no live replica counted yet: take all"
        );
        assert_eq!(fair_share(1, 3), 1);
        for p in 1..=64_u16 {
            for live in 1..=10_u64 {
                assert!(fair_share(p, live) * live as usize >= usize::from(p));
            }
        }
    }

    #[test]
    fn preference_is_a_rotation_of_all_partitions() {
        let pref = preference(16, "replica-a");
        let mut sorted = pref.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..16).collect::<Vec<_>>());
        assert!(pref.windows(2).all(|w| (w[0] + 1) % 16 == w[1]));
        assert_ne!(
            preference(16, "replica-a")[0],
            preference(16, "replica-b")[0],
            "different ids start elsewhere (true for these two)"
        );
        assert_eq!(preference(1, "x"), vec![0]);
    }

    #[test]
    fn rebalance_gives_up_the_least_preferred_or_asks_for_more() {
        let pref: Vec<u16> = vec![4, 5, 6, 7, 0, 1, 2, 3];
        assert_eq!(
            rebalance(&[0, 1, 4, 5, 6], &pref, 3),
            Rebalance {
                surrender: vec![0, 1],
                want: 0
            }
        );
        assert_eq!(
            rebalance(&[4], &pref, 3),
            Rebalance {
                surrender: vec![],
                want: 2
            }
        );
        assert_eq!(
            rebalance(&[4, 5, 6], &pref, 3),
            Rebalance {
                surrender: vec![],
                want: 0
            }
        );
    }

    #[test]
    fn a_release_is_expected_only_from_a_replica_above_its_share() {
        let own = |o: &str| Some(o.to_owned());
        // At start-up one replica holds everything; the newcomer's share is 8 of 16.
        let all_a: Vec<Option<String>> = (0..16).map(|_| own("a")).collect();
        assert!(release_expected(&all_a, "b", 8));
        // 16 over 3 replicas (share 6): 6, 6 and 4 is settled, nobody gives anything up.
        let settled: Vec<Option<String>> = (0..12)
            .map(|i| own(if i < 6 { "a" } else { "b" }))
            .collect();
        assert!(!release_expected(&settled, "c", 6));
        // Free partitions and our own leases do not count.
        assert!(!release_expected(&[None, own("c"), own("c")], "c", 1));
    }

    #[tokio::test]
    async fn table_hands_out_valid_partitions_and_surrenders_between_batches() {
        let table = LeaseTable::new(4);
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        table.acquired(&[(1, StreamId { ms: 5, seq: 0 })], later);
        table.acquired(&[(2, StreamId::default())], now);
        let active = table.active(now);
        assert_eq!(active.len(), 1, "a lease past its validity is not used");
        assert_eq!(active[0].partition, 1);
        assert_eq!(active[0].cursor, StreamId { ms: 5, seq: 0 });
        table.renewed(2, later);
        assert_eq!(table.active(now).len(), 2);
        table.surrender(&[2]);
        assert_eq!(table.active(now).len(), 1);
        assert_eq!(table.held(), vec![1, 2], "still held until released");
        assert_eq!(table.take_surrendered(), vec![2]);
        assert_eq!(table.held(), vec![1]);
        let epoch = table.active(now)[0].epoch;
        assert!(table.lost(1));
        table.acquired(&[(1, StreamId { ms: 9, seq: 0 })], later);
        let again = table.active(now)[0];
        assert!(again.epoch > epoch, "a re-acquired lease has a new epoch");
        assert_eq!(again.cursor, StreamId { ms: 9, seq: 0 });
    }
}
