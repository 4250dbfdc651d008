//! Interprets the replies to one round of a batch's calls: records what happened (stats,
//! per-entry logs), drops what cannot succeed, and keeps what must be retried.

use redis::Value;
use tracing::{debug, error, warn};

use crate::{
    batch::{Call, DeadItem, TopicItem},
    stats::FanoutStats,
};

/// The outcome of interpreting one round's replies.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    /// Calls that failed with a retryable error, to run again (whole: a call applied only a
    /// prefix of its entries, and running it again applies exactly the rest).
    pub(crate) leftover: Vec<Call>,
    /// The script cache was flushed (`NOSCRIPT`): load the scripts again before retrying.
    pub(crate) reload_script: bool,
    /// The first retryable error other than `NOSCRIPT`, if any.
    pub(crate) transient: Option<String>,
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

/// Interprets the replies of one round (one per call, in order).
pub(crate) fn settle(calls: Vec<Call>, replies: Vec<Value>, stats: &FanoutStats) -> Settled {
    let mut settled = Settled::default();
    let mut replies = replies.into_iter();
    for call in calls {
        let Some(reply) = replies.next() else {
            // Not sent (cannot happen with a complete reply); keep it for the retry.
            settled.leftover.push(call);
            continue;
        };
        match reply {
            Value::ServerError(err) => match classify(err.code()) {
                Failure::NoScript => {
                    settled.reload_script = true;
                    settled.leftover.push(call);
                }
                Failure::Transient => {
                    settled.transient.get_or_insert_with(|| err.to_string());
                    settled.leftover.push(call);
                }
                Failure::Permanent => {
                    let error = err.to_string();
                    for_each_span(&call, |span| {
                        stats.dropped.inc();
                        span.in_scope(|| {
                            error!(%error, "command failed and cannot be retried; dropped");
                        });
                    });
                }
            },
            reply => record(call, reply, stats),
        }
    }
    settled
}

fn for_each_span(call: &Call, mut f: impl FnMut(&tracing::Span)) {
    match call {
        Call::Topic { items, .. } => items.iter().for_each(|i| f(&i.span)),
        Call::Dead { items } => items.iter().for_each(|i| f(&i.span)),
        Call::RawDead { item } => f(&item.span),
        Call::Command { item } => f(&item.span),
    }
}

/// Records a reply that is not an error.
fn record(call: Call, reply: Value, stats: &FanoutStats) {
    match call {
        Call::Topic { topic, items } => {
            let outcomes = script_reply(&reply, items.len());
            let Some(outcomes) = outcomes else {
                for item in &items {
                    stats.dropped.inc();
                    item.span.in_scope(|| {
                        error!(
                            topic = topic.channel(),
                            ?reply,
                            "unexpected reply from the sequencing script"
                        );
                    });
                }
                return;
            };
            for (item, (status, seq, receivers)) in items.iter().zip(outcomes) {
                record_topic(item, topic.channel(), status, seq, receivers, stats);
            }
        }
        Call::Dead { items } => {
            let written = match reply {
                Value::Int(n) => usize::try_from(n).unwrap_or(0).min(items.len()),
                other => {
                    error!(reply = ?other, "unexpected reply from the dead-letter script");
                    0
                }
            };
            // The script skips only entries at or before the last one already in the stream, so
            // what it skipped is a prefix of the (stream-ordered) items.
            let skipped = items.len() - written;
            for (n, item) in items.iter().enumerate() {
                if n < skipped {
                    item.span
                        .in_scope(|| debug!("already dead-lettered; skipped"));
                } else {
                    dead_lettered(item, stats);
                }
            }
        }
        Call::Command { item } => match reply {
            Value::Int(gateways) => {
                stats.commands.inc();
                item.span
                    .in_scope(|| debug!(gateways, "backend command relayed"));
            }
            other => {
                item.span
                    .in_scope(|| error!(reply = ?other, "unexpected reply to a command PUBLISH"));
            }
        },
        Call::RawDead { item } => match reply {
            Value::BulkString(_) | Value::SimpleString(_) => dead_lettered(&item, stats),
            other => {
                item.span
                    .in_scope(|| error!(reply = ?other, "unexpected reply to a dead-letter XADD"));
            }
        },
    }
}

fn dead_lettered(item: &DeadItem, stats: &FanoutStats) {
    stats.dead_letter(item.reason);
    item.span.in_scope(|| {
        warn!(error = %item.error, reason = item.reason, id = %item.id, "dead-lettered publish entry");
    });
}

fn record_topic(
    item: &TopicItem,
    topic: &str,
    status: i64,
    seq: i64,
    receivers: i64,
    stats: &FanoutStats,
) {
    let _enter = item.span.enter();
    match status {
        1 => {
            stats.published.inc();
            stats.receivers.add(u64::try_from(receivers).unwrap_or(0));
            debug!(topic, seq, receivers, "published");
        }
        0 => {
            stats.unheld.inc();
            debug!(topic, "no gateway holds the topic; nothing published");
        }
        -1 => {
            stats.duplicates.inc();
            debug!(topic, last_seq = seq, "already sequenced; skipped");
        }
        other => {
            stats.dropped.inc();
            error!(
                topic,
                status = other,
                "unexpected status from the sequencing script"
            );
        }
    }
}

/// `topic_publish.lua`'s reply: 3 integers per entry.
fn script_reply(reply: &Value, entries: usize) -> Option<Vec<(i64, i64, i64)>> {
    let Value::Array(items) = reply else {
        return None;
    };
    if items.len() != entries * 3 {
        return None;
    }
    items
        .chunks(3)
        .map(|triple| match triple {
            [Value::Int(status), Value::Int(seq), Value::Int(receivers)] => {
                Some((*status, *seq, *receivers))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{
        Plan,
        tests::{all, ctx, entry},
    };

    fn server_error(resp: &str) -> Value {
        match redis::parse_redis_value(resp.as_bytes()) {
            Ok(v @ Value::ServerError(_)) => v,
            other => panic!("not a server error: {other:?}"),
        }
    }

    fn ints(values: &[i64]) -> Value {
        Value::Array(values.iter().map(|v| Value::Int(*v)).collect())
    }

    #[test]
    fn settle_records_and_keeps_retryable_calls_whole() {
        let stats = FanoutStats::default();
        let entries = vec![
            entry("1-0", &[("room", "a"), ("event", "m")]),
            entry("1-1", &[("room", "b"), ("event", "m")]),
            entry("1-2", &[("room", "c"), ("event", "m")]),
            entry("1-3", &[("room", "d"), ("event", "m")]),
            entry("1-4", &[("romm", "d"), ("event", "m")]),
            entry("1-5", &[("room", "e"), ("event", "m")]),
            entry("1-6", &[("room", "a"), ("event", "m")]),
        ];
        let mut plan = Plan::build(entries, &ctx(), &all(), &stats);
        let calls = plan.rounds.remove(0);
        // Calls: a (1-0, 1-6), b, c, d, e, dead (1-4).
        let replies = vec![
            ints(&[1, 7, 2, -1, 7, 0]),
            ints(&[0, 0, 0]),
            server_error("-NOSCRIPT No matching script.\r\n"),
            server_error("-OOM command not allowed when used memory > 'maxmemory'.\r\n"),
            server_error("-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"),
            Value::Int(1),
        ];
        let settled = settle(calls, replies, &stats);
        assert!(settled.reload_script);
        assert!(
            settled
                .transient
                .as_deref()
                .is_some_and(|e| e.contains("OOM")),
            "{:?}",
            settled.transient
        );
        let left: Vec<&str> = settled
            .leftover
            .iter()
            .map(|c| match c {
                Call::Topic { topic, .. } => topic.channel(),
                _ => "other",
            })
            .collect();
        assert_eq!(left, ["t:room:{/#c}", "t:room:{/#d}"]);
        let snap = stats.snapshot();
        assert_eq!(
            (
                snap.published,
                snap.duplicates,
                snap.receivers,
                snap.unheld,
                snap.dead_lettered,
                snap.dropped
            ),
            (1, 1, 2, 1, 1, 1)
        );

        // The retry succeeds; nothing is left.
        let settled = settle(
            settled.leftover,
            vec![ints(&[1, 8, 1]), ints(&[1, 3, 1])],
            &stats,
        );
        assert!(settled.leftover.is_empty());
        assert!(!settled.reload_script && settled.transient.is_none());
        assert_eq!(stats.snapshot().published, 3);
    }

    #[test]
    fn dead_letters_skipped_as_duplicates_are_a_prefix() {
        let stats = FanoutStats::default();
        let entries = vec![
            entry("1-0", &[("romm", "a")]),
            entry("1-1", &[("romm", "a")]),
            entry("1-2", &[("romm", "a")]),
        ];
        let mut plan = Plan::build(entries, &ctx(), &all(), &stats);
        let settled = settle(plan.rounds.remove(0), vec![Value::Int(1)], &stats);
        assert!(settled.leftover.is_empty());
        assert_eq!(stats.snapshot().dead_lettered, 1);
    }

    #[test]
    fn a_malformed_script_reply_drops_the_calls_entries() {
        let stats = FanoutStats::default();
        let entries = vec![
            entry("1-0", &[("room", "a"), ("event", "m")]),
            entry("1-1", &[("room", "a"), ("event", "m")]),
        ];
        let mut plan = Plan::build(entries, &ctx(), &all(), &stats);
        let settled = settle(plan.rounds.remove(0), vec![ints(&[1, 1, 1])], &stats);
        assert!(settled.leftover.is_empty());
        assert_eq!(stats.snapshot().dropped, 2);
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
