//! Periodic trimming of the publish stream (nothing else trims it) and lag measurement. The
//! stream is trimmed to what every partition has done (the lowest partition cursor) and what
//! every other consumer group on the stream (an audit consumer, say) has finished: per group its
//! oldest pending entry or, with none pending, just past its last delivered one. Never removes
//! an entry some partition or group still needs. Then it measures the backlog (the stream's
//! length) and how old the oldest entry this replica's partitions have not done yet is, and logs
//! them when the replica is behind.

use std::{sync::Arc, time::Duration};

use redis::{RedisError, Value, aio::ConnectionLike};
use roomcast_shared::{
    clock::unix_ms,
    redis_conn::{Backoff, command_connection},
    wire::{KeySpace, StreamId},
};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{leases::LeaseTable, outage::Outage, stats::FanoutStats};

/// Behind by more than this (oldest entry not done yet), the lag is logged at `info`.
const LAG_LOG_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub(crate) enum TrimError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("unexpected {0} reply")]
    Unexpected(&'static str),
}

pub(crate) struct Trimmer {
    client: redis::Client,
    keys: KeySpace,
    stream: String,
    interval: Duration,
    table: Arc<LeaseTable>,
    stats: Arc<FanoutStats>,
    outage: Outage,
}

/// What one pass found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Pass {
    removed: u64,
    backlog: u64,
    /// Age of the oldest entry after the lowest cursor of this replica's partitions.
    oldest_ms: u64,
}

/// What trimming needs to know about one consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupInfo {
    name: String,
    pending: u64,
    last_delivered: StreamId,
    oldest_pending: Option<StreamId>,
}

impl Trimmer {
    pub(crate) fn new(
        client: redis::Client,
        keys: KeySpace,
        interval: Duration,
        table: Arc<LeaseTable>,
        stats: Arc<FanoutStats>,
    ) -> Self {
        Self {
            client,
            stream: keys.publish_stream(),
            keys,
            interval,
            table,
            stats,
            outage: Outage::new("trim", None),
        }
    }

    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        // A multiplexed connection that reconnects by itself; created lazily, with backoff.
        let mut conn = None;
        let mut backoff = Backoff::default();
        let mut delay = self.interval;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            let result = match &mut conn {
                Some(conn) => self.pass(conn).await,
                None => match command_connection(&self.client).await {
                    Ok(mut new) => {
                        let result = self.pass(&mut new).await;
                        conn = Some(new);
                        result
                    }
                    Err(error) => Err(error.into()),
                },
            };
            match result {
                Ok(pass) => {
                    self.outage.succeeded();
                    backoff.reset();
                    delay = self.interval;
                    self.stats.trim_runs.inc();
                    self.stats.trimmed.add(pass.removed);
                    self.stats.backlog.set(pass.backlog);
                    self.stats.oldest_unprocessed_age_ms.set(pass.oldest_ms);
                    let owned = self.table.held().len();
                    if pass.oldest_ms >= millis(LAG_LOG_AFTER) {
                        info!(
                            backlog = pass.backlog,
                            oldest_unprocessed_age_ms = pass.oldest_ms,
                            partitions = owned,
                            in_flight = self.stats.in_flight.get(),
                            "fanout is behind"
                        );
                    } else {
                        debug!(
                            backlog = pass.backlog,
                            oldest_unprocessed_age_ms = pass.oldest_ms,
                            partitions = owned,
                            removed = pass.removed,
                            "fanout lag"
                        );
                    }
                }
                Err(error) => {
                    self.outage.failed(&error);
                    delay = backoff.next_delay().min(self.interval);
                }
            }
        }
    }

    /// One trim and measurement pass.
    async fn pass<C: ConnectionLike>(&self, conn: &mut C) -> Result<Pass, TrimError> {
        let partitions = self.table.partitions();
        let mut pipe = redis::pipe();
        for p in 0..partitions {
            pipe.cmd("GET")
                .arg(self.keys.partition(p, partitions).cursor());
        }
        let cursors: Vec<Option<String>> = pipe.query_async(conn).await?;
        let cursors: Vec<Option<StreamId>> = cursors
            .iter()
            .map(|c| c.as_deref().and_then(StreamId::parse))
            .collect();
        // A partition that has never committed needs the stream from its start.
        let done_by_all: Option<StreamId> = cursors
            .iter()
            .copied()
            .collect::<Option<Vec<_>>>()
            .and_then(|all| all.into_iter().min());

        let removed = match done_by_all {
            Some(min) => trim_once(conn, &self.stream, min.successor()).await?,
            None => 0,
        };
        let backlog: u64 = redis::cmd("XLEN")
            .arg(&self.stream)
            .query_async(conn)
            .await?;
        let mine = self
            .table
            .held()
            .into_iter()
            .map(|p| {
                cursors
                    .get(usize::from(p))
                    .copied()
                    .flatten()
                    .unwrap_or_default()
            })
            .min();
        let oldest_ms = match mine {
            None => 0,
            Some(cursor) => {
                let next: Vec<(String, Value)> = redis::cmd("XRANGE")
                    .arg(&self.stream)
                    .arg(format!("({cursor}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(conn)
                    .await?;
                next.first()
                    .and_then(|(id, _)| StreamId::parse(id))
                    .map_or(0, |id| unix_ms().saturating_sub(id.ms))
            }
        };
        Ok(Pass {
            removed,
            backlog,
            oldest_ms,
        })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Trims the stream below `below` (what every partition has done), holding back for other
/// consumer groups; returns how many entries were removed.
async fn trim_once<C: ConnectionLike>(
    conn: &mut C,
    stream: &str,
    below: StreamId,
) -> Result<u64, TrimError> {
    let reply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async::<Value>(conn)
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        // The stream is gone (e.g. Redis restarted empty); the first XADD creates it again.
        Err(e)
            if e.code() == Some("ERR") && e.detail().is_some_and(|d| d.contains("no such key")) =>
        {
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    let mut groups = parse_groups(reply)?;

    let with_pending: Vec<usize> = (0..groups.len())
        .filter(|&i| groups[i].pending > 0)
        .collect();
    if !with_pending.is_empty() {
        let mut pipe = redis::pipe();
        for &i in &with_pending {
            pipe.cmd("XPENDING").arg(stream).arg(&groups[i].name);
        }
        let Value::Array(summaries) = pipe.query_async::<Value>(conn).await? else {
            return Err(TrimError::Unexpected("XPENDING"));
        };
        if summaries.len() != with_pending.len() {
            return Err(TrimError::Unexpected("XPENDING"));
        }
        for (i, summary) in with_pending.into_iter().zip(summaries) {
            groups[i].oldest_pending = oldest_pending(&summary)?;
        }
    }

    let min_id = safe_point(&groups).map_or(below, |groups_need| groups_need.min(below));
    // `~`: Redis removes only whole internal nodes below the id, which is cheap and never
    // removes more than the exact trim would.
    let removed: u64 = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg("~")
        .arg(min_id.to_string())
        .query_async(conn)
        .await?;
    if removed > 0 {
        debug!(removed, min_id = %min_id, "trimmed done entries from the publish stream");
    }
    Ok(removed)
}

/// The lowest id any consumer group still needs; everything below it is finished by every group.
/// `None` without groups.
fn safe_point(groups: &[GroupInfo]) -> Option<StreamId> {
    groups
        .iter()
        .map(|g| match g.oldest_pending {
            Some(oldest) => oldest,
            // Nothing pending (or acked since XINFO): everything up to the last delivered id is done.
            None => g.last_delivered.successor(),
        })
        .min()
}

/// `XINFO GROUPS`: an array of per-group maps (flat arrays in RESP2).
fn parse_groups(reply: Value) -> Result<Vec<GroupInfo>, TrimError> {
    const CMD: &str = "XINFO GROUPS";
    let Value::Array(groups) = reply else {
        return Err(TrimError::Unexpected(CMD));
    };
    groups
        .iter()
        .map(|group| {
            let mut name = None;
            let mut pending = None;
            let mut last_delivered = None;
            for (key, value) in group.as_map_iter().ok_or(TrimError::Unexpected(CMD))? {
                match (text(key).as_deref(), value) {
                    (Some("name"), v) => name = text(v),
                    (Some("pending"), Value::Int(n)) => pending = u64::try_from(*n).ok(),
                    (Some("last-delivered-id"), v) => {
                        last_delivered = text(v).as_deref().and_then(StreamId::parse)
                    }
                    _ => {}
                }
            }
            match (name, pending, last_delivered) {
                (Some(name), Some(pending), Some(last_delivered)) => Ok(GroupInfo {
                    name,
                    pending,
                    last_delivered,
                    oldest_pending: None,
                }),
                _ => Err(TrimError::Unexpected(CMD)),
            }
        })
        .collect()
}

/// `XPENDING <stream> <group>` summary: `[count, oldest id, newest id, consumers]`.
fn oldest_pending(summary: &Value) -> Result<Option<StreamId>, TrimError> {
    match summary {
        Value::Array(parts) => match parts.as_slice() {
            [Value::Int(0), ..] => Ok(None),
            [Value::Int(_), oldest, ..] => text(oldest)
                .as_deref()
                .and_then(StreamId::parse)
                .map(Some)
                .ok_or(TrimError::Unexpected("XPENDING")),
            _ => Err(TrimError::Unexpected("XPENDING")),
        },
        _ => Err(TrimError::Unexpected("XPENDING")),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn id(s: &str) -> StreamId {
        StreamId::parse(s).expect("valid id")
    }

    #[test]
    fn parses_resp2_and_resp3_groups() {
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("name"),
            bulk("fanout"),
            bulk("consumers"),
            Value::Int(1),
            bulk("pending"),
            Value::Int(2),
            bulk("last-delivered-id"),
            bulk("5-1"),
            bulk("entries-read"),
            Value::Nil,
        ])]);
        let resp3 = Value::Array(vec![Value::Map(vec![
            (Value::SimpleString("name".into()), bulk("audit")),
            (Value::SimpleString("pending".into()), Value::Int(0)),
            (Value::SimpleString("last-delivered-id".into()), bulk("0-0")),
        ])]);
        let g2 = parse_groups(resp2).expect("resp2");
        assert_eq!(
            g2,
            [GroupInfo {
                name: "fanout".into(),
                pending: 2,
                last_delivered: id("5-1"),
                oldest_pending: None
            }]
        );
        let g3 = parse_groups(resp3).expect("resp3");
        assert_eq!(g3[0].name, "audit");
        assert!(parse_groups(Value::Array(vec![Value::Array(vec![bulk("name")])])).is_err());
    }

    #[test]
    fn pending_summary() {
        let none = Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil]);
        assert_eq!(oldest_pending(&none).expect("parses"), None);
        let some = Value::Array(vec![
            Value::Int(3),
            bulk("7-0"),
            bulk("9-0"),
            Value::Array(vec![]),
        ]);
        assert_eq!(oldest_pending(&some).expect("parses"), Some(id("7-0")));
    }

    #[test]
    fn safe_point_is_the_minimum_over_groups() {
        let group = |last: &str, oldest: Option<&str>| GroupInfo {
            name: "g".into(),
            pending: u64::from(oldest.is_some()),
            last_delivered: id(last),
            oldest_pending: oldest.map(id),
        };
        assert_eq!(safe_point(&[]), None);
        // Nothing pending: keep nothing up to the last delivered entry.
        assert_eq!(safe_point(&[group("9-3", None)]), Some(id("9-4")));
        // A pending entry holds the trim back; so does a group that has read nothing yet.
        assert_eq!(
            safe_point(&[group("9-3", None), group("9-3", Some("4-0"))]),
            Some(id("4-0"))
        );
        assert_eq!(
            safe_point(&[group("9-3", None), group("0-0", None)]),
            Some(id("0-1"))
        );
    }
}
