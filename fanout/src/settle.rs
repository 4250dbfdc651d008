//! Interprets the replies to one execution of a batch's pipeline: records what happened (stats,
//! per-entry logs), drops what cannot succeed, and keeps what must be retried, in order.

use redis::Value;
use tracing::{debug, error, warn};

use crate::{
    batch::{Op, OpKind, Plan, Replies},
    stats::FanoutStats,
};

/// The outcome of interpreting replies.
#[derive(Debug)]
pub(crate) struct Settled {
    /// Commands that failed with a retryable error, in their original order.
    pub(crate) leftover: Plan,
    /// The script cache was flushed (`NOSCRIPT`): load it again before retrying.
    pub(crate) reload_script: bool,
    /// The first retryable error other than `NOSCRIPT`, if any.
    pub(crate) transient: Option<String>,
}

impl Op {
    /// Records a reply that is not an error.
    fn record(self, reply: Value, stats: &FanoutStats) {
        let _enter = self.span.enter();
        match self.kind {
            OpKind::Publish { topic, .. } => match script_reply(&reply) {
                Some((1, seq, receivers)) => {
                    stats.published.inc();
                    stats.receivers.add(u64::try_from(receivers).unwrap_or(0));
                    debug!(topic = topic.channel(), seq, receivers, "published");
                }
                Some((0, ..)) => {
                    stats.unheld.inc();
                    debug!(
                        topic = topic.channel(),
                        "no gateway holds the topic; nothing published"
                    );
                }
                Some((-1, seq, _)) => {
                    stats.duplicates.inc();
                    debug!(
                        topic = topic.channel(),
                        last_seq = seq,
                        "already sequenced; redelivery skipped"
                    );
                }
                _ => {
                    stats.dropped.inc();
                    error!(
                        topic = topic.channel(),
                        ?reply,
                        "unexpected reply from the sequencing script"
                    );
                }
            },
            OpKind::DeadLetter { error, reason, .. } => {
                stats.dead_lettered.inc();
                warn!(%error, reason, id = %self.id, "dead-lettered publish entry");
            }
        }
    }
}

fn script_reply(reply: &Value) -> Option<(i64, i64, i64)> {
    match reply {
        Value::Array(items) => match items.as_slice() {
            [Value::Int(status), Value::Int(seq), Value::Int(receivers)] => {
                Some((*status, *seq, *receivers))
            }
            _ => None,
        },
        _ => None,
    }
}

/// How a per-command error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The script cache was flushed: reload, then retry.
    NoScript,
    /// The server cannot take it right now (OOM, LOADING, BUSY, READONLY, MASTERDOWN, ...):
    /// retry with backoff. Unknown codes land here too: waiting is safer than dropping.
    Transient,
    /// Retrying cannot help (`ERR` from a failing script, `WRONGTYPE` on a key someone else
    /// wrote): log and drop, so one poisoned key does not stop the stream.
    Permanent,
}

fn classify(code: &str) -> Failure {
    match code {
        "NOSCRIPT" => Failure::NoScript,
        "ERR" | "WRONGTYPE" => Failure::Permanent,
        _ => Failure::Transient,
    }
}

/// Interprets the replies of one execution: records successes, logs and drops permanent
/// failures, and returns the commands to retry.
pub(crate) fn settle(plan: Plan, replies: Replies, stats: &FanoutStats) -> Settled {
    let Plan { ops, ack } = plan;
    let mut settled = Settled {
        leftover: Plan::default(),
        reload_script: false,
        transient: None,
    };
    let mut replies_iter = replies.ops.into_iter();
    for op in ops {
        let Some(reply) = replies_iter.next() else {
            // Not sent (cannot happen with a complete reply); keep it for the retry.
            settled.leftover.ops.push(op);
            continue;
        };
        match reply {
            Value::ServerError(err) => {
                match classify(err.code()) {
                    Failure::NoScript => {
                        settled.reload_script = true;
                        settled.leftover.ops.push(op);
                    }
                    Failure::Transient => {
                        settled.transient.get_or_insert_with(|| err.to_string());
                        settled.leftover.ops.push(op);
                    }
                    Failure::Permanent => {
                        stats.dropped.inc();
                        op.span.in_scope(|| error!(error = %err, "command failed and cannot be retried; dropped"));
                    }
                }
            }
            reply => op.record(reply, stats),
        }
    }
    match replies.ack {
        None => settled.leftover.ack = ack,
        Some(Value::Int(n)) => stats.acked.add(u64::try_from(n).unwrap_or(0)),
        Some(Value::ServerError(err)) if classify(err.code()) == Failure::Permanent => {
            stats.dropped.inc();
            error!(error = %err, ids = ack.len(), "XACK failed and cannot be retried; entries stay pending");
        }
        Some(Value::ServerError(err)) => {
            settled.transient.get_or_insert_with(|| err.to_string());
            settled.leftover.ack = ack;
        }
        Some(other) => error!(reply = ?other, "unexpected XACK reply"),
    }
    settled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        batch::tests::{ctx, entry},
        stream_reply::StreamEntry,
    };

    fn server_error(resp: &str) -> Value {
        match redis::parse_redis_value(resp.as_bytes()) {
            Ok(v @ Value::ServerError(_)) => v,
            other => panic!("not a server error: {other:?}"),
        }
    }

    fn script(status: i64, seq: i64, receivers: i64) -> Value {
        Value::Array(vec![
            Value::Int(status),
            Value::Int(seq),
            Value::Int(receivers),
        ])
    }

    #[test]
    fn settle_records_and_keeps_retryable_failures_in_order() {
        let stats = FanoutStats::default();
        let entries = vec![
            entry("1-0", &[("room", "a"), ("event", "m")]),
            entry("1-1", &[("room", "b"), ("event", "m")]),
            entry("1-2", &[("room", "c"), ("event", "m")]),
            entry("1-3", &[("room", "d"), ("event", "m")]),
            entry("1-4", &[("romm", "d"), ("event", "m")]),
            entry("1-5", &[("room", "e"), ("event", "m")]),
        ];
        let plan = Plan::build(entries, &ctx(), &stats);
        let replies = Replies {
            ops: vec![
                script(1, 7, 2),
                script(0, 0, 0),
                server_error("-NOSCRIPT No matching script.\r\n"),
                server_error("-OOM command not allowed when used memory > 'maxmemory'.\r\n"),
                Value::BulkString(b"99-0".to_vec()),
                server_error(
                    "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
                ),
            ],
            ack: Some(Value::Int(6)),
        };
        let settled = settle(plan, replies, &stats);
        assert!(settled.reload_script);
        assert!(
            settled
                .transient
                .as_deref()
                .is_some_and(|e| e.contains("OOM")),
            "{:?}",
            settled.transient
        );
        assert!(settled.leftover.is_acked());
        assert_eq!(
            settled
                .leftover
                .ops
                .iter()
                .map(|op| &*op.id)
                .collect::<Vec<_>>(),
            ["1-2", "1-3"]
        );
        let snap = stats.snapshot();
        assert_eq!(
            (
                snap.published,
                snap.receivers,
                snap.unheld,
                snap.dead_lettered,
                snap.dropped,
                snap.acked
            ),
            (1, 2, 1, 1, 1, 6)
        );

        // The retry succeeds, one of them as a duplicate; nothing is left.
        let replies = Replies {
            ops: vec![script(1, 8, 1), script(-1, 8, 0)],
            ack: None,
        };
        let settled = settle(settled.leftover, replies, &stats);
        assert!(settled.leftover.is_empty());
        assert!(!settled.reload_script && settled.transient.is_none());
        assert_eq!(stats.snapshot().duplicates, 1);
    }

    #[test]
    fn failed_ack_is_retried() {
        let stats = FanoutStats::default();
        let plan = Plan::build(
            vec![StreamEntry {
                id: "1-0".into(),
                fields: None,
            }],
            &ctx(),
            &stats,
        );
        let replies = Replies {
            ops: vec![],
            ack: Some(server_error(
                "-READONLY You can't write against a read only replica.\r\n",
            )),
        };
        let settled = settle(plan, replies, &stats);
        assert!(!settled.leftover.is_acked());
        assert_eq!(settled.leftover.len(), 1);
        assert!(settled.transient.is_some());
    }

    #[test]
    fn error_classes() {
        assert_eq!(classify("NOSCRIPT"), Failure::NoScript);
        assert_eq!(classify("ERR"), Failure::Permanent);
        assert_eq!(classify("WRONGTYPE"), Failure::Permanent);
        for code in [
            "OOM",
            "LOADING",
            "BUSY",
            "READONLY",
            "MASTERDOWN",
            "MISCONF",
            "NOREPLICAS",
            "TRYAGAIN",
        ] {
            assert_eq!(classify(code), Failure::Transient, "{code}");
        }
    }
}
