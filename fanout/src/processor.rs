//! The stream reader. Every replica reads the whole publish stream, in order, from the lowest
//! cursor of the partitions it owns (one `XREAD` serves them all), and applies each entry to the
//! topics of its own partitions (and dead-letters refused entries if it owns the dead-letter
//! partition). A batch is committed — each partition's cursor moved past it, in a second round
//! trip — only after every reply of the batch was checked, and the same pipeline tells the
//! gateways how far the partitions are done (`wire::progress`). A crash before the commit means
//! the next owner applies the batch again, which the scripts turn into no-ops where it was
//! already applied.
//!
//! It owns a dedicated connection (the blocking `XREAD` must not stall a connection other tasks
//! share). Any connection failure ends the session; the loop reconnects with backoff and
//! continues from the committed cursors.

use std::{collections::BTreeMap, sync::Arc, task::Poll, time::Duration};

use redis::{AsyncConnectionConfig, RedisError, Value, aio::MultiplexedConnection};
use roomcast_shared::{
    redis_conn::Backoff,
    wire::{
        DEAD_LETTER_LUA, PARTITION_COMMIT_LUA, PARTITION_LEASE_LUA, Progress, StreamId,
        TOPIC_PUBLISH_LUA,
    },
};
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    batch::{self, BatchContext, Call, Ownership, Plan, Shas},
    leases::{self, Active, LeaseError, LeaseScript, LeaseTable},
    outage::Outage,
    settle,
    stats::FanoutStats,
    stream_reply::{self, ReplyError},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Added to the `XREAD` block time for the response timeout; also bounds one pipeline chunk.
const RESPONSE_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
enum SessionError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Reply(#[from] ReplyError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// Settings of the processor.
pub(crate) struct ProcessorConfig {
    pub(crate) replica: String,
    pub(crate) batch_size: usize,
    pub(crate) block: Duration,
    /// How long to wait for partitions when it owns none (the lease task's interval).
    pub(crate) idle: Duration,
}

pub(crate) struct Processor {
    client: redis::Client,
    ctx: BatchContext,
    config: ProcessorConfig,
    table: Arc<LeaseTable>,
    stats: Arc<FanoutStats>,
    outage: Outage,
    /// Where each held partition stands: (lease epoch it was loaded for, cursor).
    cursors: BTreeMap<u16, (u64, StreamId)>,
}

struct Session {
    conn: MultiplexedConnection,
    shas: Shas,
    commit_sha: String,
    lease_sha: String,
}

/// Whether a batch went through to its commit.
enum Done {
    /// With the next batch if it was read while this one was applied.
    Committed(Option<Ahead>),
    Cancelled,
}

/// The next batch, read and planned while Redis applied the previous one, for the partitions
/// and cursors the previous commit leaves (used only if those are what the next turn finds).
struct Ahead {
    active: Vec<(u16, u64)>,
    after: StreamId,
    last: StreamId,
    plan: Plan,
}

/// What the next turn works on.
enum Batch {
    Read(Vec<stream_reply::StreamEntry>),
    Planned(Plan),
}

impl Batch {
    /// Entries in the batch.
    fn len(&self) -> usize {
        match self {
            Self::Read(entries) => entries.len(),
            Self::Planned(plan) => plan.entries,
        }
    }
}

impl Processor {
    pub(crate) fn new(
        client: redis::Client,
        ctx: BatchContext,
        config: ProcessorConfig,
        table: Arc<LeaseTable>,
        stats: Arc<FanoutStats>,
    ) -> Self {
        Self {
            client,
            ctx,
            config,
            table,
            stats,
            outage: Outage::new("processor", None),
            cursors: BTreeMap::new(),
        }
    }

    /// Runs until `cancel` fires; the in-flight batch is finished and committed first (or, if
    /// it cannot be finished, left for the next owner to apply again).
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        info!(replica = %self.config.replica, stream = %self.ctx.stream, partitions = self.ctx.partitions, "processor starting");
        let mut backoff = Backoff::default();
        loop {
            match self.session(&cancel, &mut backoff).await {
                Ok(()) => break,
                Err(error) => {
                    self.stats.redis_errors.inc();
                    self.stats.in_flight.set(0);
                    self.outage.failed(&error);
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        info!("processor stopped");
    }

    async fn session(
        &mut self,
        cancel: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), SessionError> {
        let connected = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            connected = self.connect() => connected,
        };
        let mut conn = connected?;
        let (shas, commit_sha, lease_sha) = load_scripts(&mut conn).await?;
        self.outage.succeeded();
        backoff.reset();
        let mut session = Session {
            conn,
            shas,
            commit_sha,
            lease_sha,
        };

        let mut ahead: Option<Ahead> = None;
        while !cancel.is_cancelled() {
            self.give_up_surrendered(&mut session).await?;
            let active = self.table.active(Instant::now());
            self.sync(&active);
            let Some(start) = active.iter().map(|a| self.cursor(a.partition)).min() else {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = self.table.changed() => {}
                    () = tokio::time::sleep(self.config.idle) => {}
                }
                continue;
            };
            let (batch, last) = match ahead.take() {
                // Read while the previous batch was applied, for exactly these partitions.
                Some(next) if next.after == start && next.active == epochs(&active) => {
                    (Batch::Planned(next.plan), next.last)
                }
                _ => {
                    let reply = tokio::select! {
                        biased;
                        // Dropping the read is safe: nothing was applied, the cursors did not move.
                        () = cancel.cancelled() => break,
                        reply = self.read(&mut session.conn, start, true) => reply?,
                    };
                    self.outage.succeeded();
                    let entries = stream_reply::read_reply(reply)?;
                    let Some(last) = entries.last().and_then(|e| StreamId::parse(&e.id)) else {
                        // Idle: say how far we are, so gateways holding a message of another
                        // partition need not wait for our next batch.
                        self.announce(&mut session, &active, start).await?;
                        continue;
                    };
                    (Batch::Read(entries), last)
                }
            };
            match self
                .process(&mut session, batch, &active, last, cancel)
                .await?
            {
                Done::Committed(next) => ahead = next,
                Done::Cancelled => break,
            }
        }
        Ok(())
    }

    async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.config.block + RESPONSE_MARGIN));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Releases the partitions the lease task wants to give up; between batches, so no batch
    /// of ours is half-applied in them when another replica takes them.
    async fn give_up_surrendered(&mut self, session: &mut Session) -> Result<(), SessionError> {
        let gone = self.table.take_surrendered();
        if gone.is_empty() {
            return Ok(());
        }
        for p in &gone {
            self.cursors.remove(p);
        }
        let script = LeaseScript {
            sha: &session.lease_sha,
            keys: &self.ctx.keys,
            partitions: self.ctx.partitions,
            replica: &self.config.replica,
        };
        let released = leases::release(&mut session.conn, &script, &gone).await?;
        self.stats.leases_released.add(released as u64);
        info!(partitions = ?gone, "partitions given up");
        Ok(())
    }

    /// Takes the cursors of newly (re)acquired partitions and forgets released ones.
    fn sync(&mut self, active: &[Active]) {
        let held = self.table.held();
        self.cursors.retain(|p, _| held.contains(p));
        for a in active {
            match self.cursors.get(&a.partition) {
                Some((epoch, _)) if *epoch == a.epoch => {}
                _ => {
                    debug!(partition = a.partition, cursor = %a.cursor, "starting partition at its cursor");
                    self.cursors.insert(a.partition, (a.epoch, a.cursor));
                }
            }
        }
    }

    fn cursor(&self, partition: u16) -> StreamId {
        self.cursors
            .get(&partition)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    /// Reads the next batch after `after`; waits up to the block time for one if `block`.
    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        after: StreamId,
        block: bool,
    ) -> Result<Value, RedisError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(self.config.batch_size);
        if block {
            cmd.arg("BLOCK").arg(millis(self.config.block));
        }
        cmd.arg("STREAMS")
            .arg(&self.ctx.stream)
            .arg(after.to_string())
            .query_async(conn)
            .await
    }

    /// Reads and plans the batch after `last` for the partitions of `active` as the commit of
    /// the current batch will leave them; `None` if there is none yet.
    async fn read_ahead(
        &self,
        reply: Result<Value, RedisError>,
        active: &[Active],
        last: StreamId,
    ) -> Result<Option<Ahead>, SessionError> {
        let entries = stream_reply::read_reply(reply?)?;
        let Some(next_last) = entries.last().and_then(|e| StreamId::parse(&e.id)) else {
            return Ok(None);
        };
        let owned = Ownership::new(
            active
                .iter()
                .map(|a| (a.partition, self.cursor(a.partition).max(last))),
        );
        Ok(Some(Ahead {
            active: epochs(active),
            after: last,
            last: next_last,
            plan: Plan::build(entries, &self.ctx, &owned, &self.stats),
        }))
    }

    /// Applies one batch and commits it. While Redis applies it, the next batch is read and
    /// planned (one replica otherwise leaves Redis idle while it plans, and itself idle while
    /// Redis applies).
    async fn process(
        &mut self,
        session: &mut Session,
        entries: Batch,
        active: &[Active],
        last: StreamId,
        cancel: &CancellationToken,
    ) -> Result<Done, SessionError> {
        self.stats.batches.inc();
        self.stats.batch_size.0.observe(entries.len() as f64);
        self.stats.in_flight.set(entries.len() as u64);
        let plan = match entries {
            Batch::Planned(plan) => plan,
            Batch::Read(entries) => {
                let owned = Ownership::new(
                    active
                        .iter()
                        .map(|a| (a.partition, self.cursor(a.partition))),
                );
                Plan::build(entries, &self.ctx, &owned, &self.stats)
            }
        };
        let count = plan.entries as u64;
        // The read goes out before the batch's calls, so Redis answers it first and the plan
        // is built while Redis runs the calls. Nothing is applied from it before this batch is
        // committed; it is dropped if the partitions changed meanwhile.
        let mut ahead_conn = session.conn.clone();
        let (applied, ahead) = {
            let mut next = std::pin::pin!(self.read(&mut ahead_conn, last, false));
            let sent = std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await;
            let read_next = async {
                let reply = match sent {
                    Poll::Ready(reply) => reply,
                    Poll::Pending => next.await,
                };
                self.read_ahead(reply, active, last).await
            };
            let apply = async {
                for round in plan.rounds {
                    if !self.run_round(session, round, cancel).await? {
                        return Ok::<_, SessionError>(false);
                    }
                }
                Ok(true)
            };
            tokio::join!(apply, read_next)
        };
        if !applied? {
            self.stats.in_flight.set(0);
            return Ok(Done::Cancelled);
        }
        self.commit(session, active, last).await?;
        self.stats.committed.add(count);
        self.stats.in_flight.set(0);
        // A failed read-ahead is only a lost optimisation: the next turn reads again.
        Ok(Done::Committed(ahead.ok().flatten()))
    }

    /// Executes one round until every call succeeded or was given up. Retryable errors are
    /// retried with backoff; only cancellation stops that (`false`: the batch is not finished
    /// and must not be committed). A connection failure ends the session.
    async fn run_round(
        &self,
        session: &mut Session,
        mut calls: Vec<Call>,
        cancel: &CancellationToken,
    ) -> Result<bool, SessionError> {
        let mut backoff = Backoff::default();
        let mut attempt = 0_u32;
        loop {
            let replies =
                batch::execute(&mut session.conn, &self.ctx, &session.shas, &calls).await?;
            let settled = settle::settle(calls, replies, &self.stats);
            calls = settled.leftover;
            if calls.is_empty() {
                return Ok(true);
            }
            self.stats.retries.add(calls.len() as u64);
            if settled.reload_script {
                debug!("script cache was flushed; loading the scripts again");
                let (shas, commit_sha, lease_sha) = load_scripts(&mut session.conn).await?;
                session.shas = shas;
                session.commit_sha = commit_sha;
                session.lease_sha = lease_sha;
            }
            if let Some(error) = &settled.transient
                && attempt == 0
            {
                warn!(%error, calls = calls.len(), "Redis refused calls of a batch; retrying them");
            }
            // A reload fixes NOSCRIPT at once; anything else (or a repeat) needs time.
            if settled.transient.is_some() || attempt > 0 {
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = cancel.cancelled() => return Ok(false),
                }
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// Moves every partition of the batch past `last` (each only if its lease is still ours)
    /// and announces the progress, in one pipeline.
    async fn commit(
        &mut self,
        session: &mut Session,
        active: &[Active],
        last: StreamId,
    ) -> Result<(), SessionError> {
        for _ in 0..2 {
            let targets: Vec<(u16, StreamId)> = active
                .iter()
                .map(|a| (a.partition, self.cursor(a.partition).max(last)))
                .collect();
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &(p, upto) in &targets {
                let keys = self.ctx.keys.partition(p, self.ctx.partitions);
                pipe.cmd("EVALSHA")
                    .arg(&session.commit_sha)
                    .arg(2)
                    .arg(keys.lease())
                    .arg(keys.cursor())
                    .arg(&self.config.replica)
                    .arg(upto.to_string());
            }
            // True whatever the commits answer: every effect of the batch is in Redis.
            self.progress(&mut pipe, active, last);
            let replies: Vec<Value> = pipe.query_async(&mut session.conn).await?;
            if replies.len() != targets.len() + 1 {
                return Err(SessionError::Unexpected(format!(
                    "{} replies to a commit pipeline of {} commands",
                    replies.len(),
                    targets.len() + 1
                )));
            }
            self.stats.progress_published.inc();
            let mut reload = false;
            for (&(p, upto), reply) in targets.iter().zip(replies) {
                match reply {
                    Value::Int(1) => {
                        if let Some(entry) = self.cursors.get_mut(&p) {
                            entry.1 = upto;
                        }
                    }
                    Value::Int(0) => {
                        self.cursors.remove(&p);
                        if self.table.lost(p) {
                            self.stats.leases_lost.inc();
                            warn!(
                                partition = p,
                                "partition lease lost; its cursor was not moved"
                            );
                        }
                    }
                    Value::ServerError(e) if e.code() == "NOSCRIPT" => reload = true,
                    other => {
                        // The cursor stays: the batch is applied again (as no-ops) later.
                        warn!(partition = p, reply = ?other, "cursor commit refused");
                    }
                }
            }
            if !reload {
                return Ok(());
            }
            self.stats.retries.inc();
            debug!("script cache was flushed; loading the scripts again to commit");
            let (shas, commit_sha, lease_sha) = load_scripts(&mut session.conn).await?;
            session.shas = shas;
            session.commit_sha = commit_sha;
            session.lease_sha = lease_sha;
        }
        Ok(())
    }

    fn progress(&self, pipe: &mut redis::Pipeline, active: &[Active], upto: StreamId) {
        let message = Progress::new(
            &self.config.replica,
            self.ctx.partitions,
            active.iter().map(|a| a.partition).collect(),
            upto,
        );
        pipe.cmd("PUBLISH")
            .arg(self.ctx.keys.fanout_progress_channel())
            .arg(message.encode());
    }

    /// Announces progress without a batch (the stream had nothing new).
    async fn announce(
        &mut self,
        session: &mut Session,
        active: &[Active],
        upto: StreamId,
    ) -> Result<(), SessionError> {
        let mut pipe = redis::pipe();
        self.progress(&mut pipe, active, upto);
        pipe.query_async::<()>(&mut session.conn).await?;
        self.stats.progress_published.inc();
        Ok(())
    }
}

/// Loads every script the processor runs: (batch scripts, commit, lease).
async fn load_scripts(
    conn: &mut MultiplexedConnection,
) -> Result<(Shas, String, String), RedisError> {
    let mut pipe = redis::pipe();
    for script in [
        TOPIC_PUBLISH_LUA,
        DEAD_LETTER_LUA,
        PARTITION_COMMIT_LUA,
        PARTITION_LEASE_LUA,
    ] {
        pipe.cmd("SCRIPT").arg("LOAD").arg(script);
    }
    let (topic, dead, commit, lease): (String, String, String, String) =
        pipe.query_async(conn).await?;
    Ok((Shas { topic, dead }, commit, lease))
}

/// The partitions and lease epochs of `active`: what a read-ahead was planned for.
fn epochs(active: &[Active]) -> Vec<(u16, u64)> {
    active.iter().map(|a| (a.partition, a.epoch)).collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
