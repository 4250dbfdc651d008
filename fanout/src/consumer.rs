//! The consume loop. Each session owns a dedicated connection (the blocking `XREADGROUP` must not
//! stall a connection other tasks share): set up (script, consumer group), process every entry
//! still pending in the group first, then read new entries in batches, claiming entries left by
//! dead consumers now and then. Any Redis failure ends the session; the loop reconnects with
//! backoff.

use std::{sync::Arc, time::Duration};

use redis::{AsyncConnectionConfig, RedisError, Value, aio::MultiplexedConnection};
use roomcast_shared::{health::Readiness, redis_conn::Backoff, wire::TOPIC_PUBLISH_LUA};
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    batch::{self, BatchContext, Plan},
    config::FanoutConfig,
    outage::Outage,
    settle,
    stats::FanoutStats,
    stream_reply::{self, ReplyError, StreamEntry},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Added to the `XREADGROUP` block time for the response timeout; also bounds one pipeline chunk.
const RESPONSE_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
enum SessionError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Reply(#[from] ReplyError),
}

pub(crate) struct Consumer {
    client: redis::Client,
    ctx: BatchContext,
    consumer: String,
    batch_size: usize,
    block: Duration,
    claim_min_idle: Duration,
    stats: Arc<FanoutStats>,
    outage: Outage,
    /// Commands of an already acknowledged batch that hit a retryable error and then lost the
    /// connection: they exist nowhere else, so the next session runs them first.
    carry: Option<Plan>,
}

struct Session {
    conn: MultiplexedConnection,
    /// SHA1 of the sequencing script, loaded on this connection's server.
    sha: String,
}

impl Consumer {
    pub(crate) fn new(
        config: &FanoutConfig,
        client: redis::Client,
        ctx: BatchContext,
        stats: Arc<FanoutStats>,
        readiness: Readiness,
    ) -> Self {
        Self {
            client,
            ctx,
            consumer: config.consumer.clone(),
            batch_size: config.batch_size,
            block: config.block,
            claim_min_idle: config.claim_min_idle,
            stats,
            outage: Outage::new("consumer", Some(readiness)),
            carry: None,
        }
    }

    /// Runs until `cancel` fires; the in-flight batch is finished and acknowledged first.
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        info!(group = %self.ctx.group, consumer = %self.consumer, stream = %self.ctx.stream, "consumer starting");
        let mut backoff = Backoff::default();
        loop {
            match self.session(&cancel, &mut backoff).await {
                Ok(()) => break,
                Err(error) => {
                    self.stats.redis_errors.inc();
                    self.outage.failed(&error);
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        if let Some(plan) = self.carry.take() {
            error!(
                commands = plan.len(),
                "stopping with commands of an acknowledged batch not executed; they are lost"
            );
        }
        info!("consumer stopped");
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
        let sha = load_script(&mut conn).await?;
        self.create_group(&mut conn).await?;
        self.outage.succeeded();
        backoff.reset();
        let mut session = Session { conn, sha };

        if let Some(plan) = self.carry.take() {
            self.run_plan(&mut session, plan, cancel).await?;
        }
        // Entries still pending in the group (a dead predecessor's, or ours before a reconnect)
        // go first: the script drops an entry older than the last one sequenced in its topic, so
        // every topic must see its entries in stream order.
        self.claim(&mut session, Duration::ZERO, cancel).await?;
        let mut next_claim = Instant::now() + self.claim_min_idle;

        while !cancel.is_cancelled() {
            if Instant::now() >= next_claim {
                self.claim(&mut session, self.claim_min_idle, cancel)
                    .await?;
                next_claim = Instant::now() + self.claim_min_idle;
            }
            let reply = tokio::select! {
                biased;
                // Dropping the read is safe: whatever it delivered stays pending in the group.
                () = cancel.cancelled() => break,
                reply = self.read(&mut session.conn) => reply?,
            };
            self.outage.succeeded();
            let entries = stream_reply::read_reply(reply)?;
            if !entries.is_empty() {
                self.process(&mut session, entries, cancel).await?;
            }
        }
        Ok(())
    }

    async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.block + RESPONSE_MARGIN));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Creates the group at `0`, so entries published before the first fanout ever ran are
    /// delivered too.
    async fn create_group(&self, conn: &mut MultiplexedConnection) -> Result<(), RedisError> {
        let created = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.ctx.stream)
            .arg(&self.ctx.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(conn)
            .await;
        match created {
            Ok(()) => {
                info!(group = %self.ctx.group, stream = %self.ctx.stream, "created consumer group");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn read(&self, conn: &mut MultiplexedConnection) -> Result<Value, RedisError> {
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.ctx.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.batch_size)
            .arg("BLOCK")
            .arg(millis(self.block))
            .arg("STREAMS")
            .arg(&self.ctx.stream)
            .arg(">")
            .query_async(conn)
            .await
    }

    /// Takes over and processes, in id order, every entry pending for at least `min_idle`.
    async fn claim(
        &mut self,
        session: &mut Session,
        min_idle: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut cursor = String::from("0-0");
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.ctx.stream)
                .arg(&self.ctx.group)
                .arg(&self.consumer)
                .arg(millis(min_idle))
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.batch_size)
                .query_async(&mut session.conn)
                .await?;
            let page = stream_reply::claim_reply(reply)?;
            if !page.deleted.is_empty() {
                debug!(ids = ?page.deleted, "pending entries were deleted from the stream");
                self.stats.deleted.add(page.deleted.len() as u64);
            }
            if let Some(first) = page.entries.first() {
                info!(entries = page.entries.len(), first = %first.id, min_idle_ms = millis(min_idle), "claimed pending entries");
                self.stats.claimed.add(page.entries.len() as u64);
                self.process(session, page.entries, cancel).await?;
            }
            if page.cursor == "0-0" || cancel.is_cancelled() {
                return Ok(());
            }
            cursor = page.cursor;
        }
    }

    async fn process(
        &mut self,
        session: &mut Session,
        entries: Vec<StreamEntry>,
        cancel: &CancellationToken,
    ) -> Result<(), SessionError> {
        self.stats.batches.inc();
        let plan = Plan::build(entries, &self.ctx, &self.stats);
        self.run_plan(session, plan, cancel).await
    }

    /// Executes a plan until nothing is left. Retryable per-command errors are retried with
    /// backoff (only cancellation stops that); a connection failure ends the session.
    async fn run_plan(
        &mut self,
        session: &mut Session,
        mut plan: Plan,
        cancel: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut backoff = Backoff::default();
        let mut round = 0_u32;
        loop {
            let replies =
                match batch::execute(&mut session.conn, &self.ctx, &session.sha, &plan).await {
                    Ok(replies) => replies,
                    Err(error) => {
                        self.keep_if_acked(plan);
                        return Err(error.into());
                    }
                };
            let settled = settle::settle(plan, replies, &self.stats);
            plan = settled.leftover;
            if plan.is_empty() {
                return Ok(());
            }
            self.stats.retries.add(plan.len() as u64);
            if settled.reload_script {
                debug!("script cache was flushed; loading the script again");
                match load_script(&mut session.conn).await {
                    Ok(sha) => session.sha = sha,
                    Err(error) => {
                        self.keep_if_acked(plan);
                        return Err(error.into());
                    }
                }
            }
            if let Some(error) = &settled.transient
                && round == 0
            {
                warn!(%error, commands = plan.len(), "Redis refused commands of a batch; retrying them");
            }
            // A reload fixes NOSCRIPT at once; anything else (or a repeat) needs time.
            if settled.transient.is_some() || round > 0 {
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = cancel.cancelled() => {
                        if plan.is_acked() {
                            error!(commands = plan.len(), "stopping with commands of an acknowledged batch not executed; they are lost");
                        }
                        return Ok(());
                    }
                }
            }
            round = round.saturating_add(1);
        }
    }

    fn keep_if_acked(&mut self, plan: Plan) {
        // Unacknowledged entries are still pending in the group and come back by the start-up
        // claim of the next session; acknowledged ones only live here.
        if plan.is_acked() && !plan.is_empty() {
            self.carry = Some(plan);
        }
    }
}

async fn load_script(conn: &mut MultiplexedConnection) -> Result<String, RedisError> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(TOPIC_PUBLISH_LUA)
        .query_async(conn)
        .await
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
