//! Turns one batch of stream entries into one pipeline: in stream order, a sequencing-script call
//! per target topic and a dead-letter `XADD` per invalid entry, then one `XACK` for the whole
//! batch (`settle` interprets the replies).

use std::sync::Arc;

use redis::{Value, aio::ConnectionLike};
use roomcast_shared::wire::{
    EnvelopeBody, KeySpace, PublishLimits, PublishRequest, StreamId, Target, Topic,
};
use tracing::{Span, debug, info_span};

use crate::{
    stats::FanoutStats,
    stream_reply::{Fields, StreamEntry},
};

/// A pipeline is split into chunks of about this many argument bytes, so that a batch of large
/// or many-room entries does not build one huge request buffer. Chunks go out back to back on
/// the same connection, so the order (and the XACK coming last) is unchanged.
const CHUNK_BYTES: usize = 8 << 20;

/// Where a batch's commands go.
#[derive(Debug, Clone)]
pub(crate) struct BatchContext {
    pub(crate) keys: KeySpace,
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) dead_stream: String,
    pub(crate) dead_letter_maxlen: usize,
    pub(crate) limits: PublishLimits,
    /// Per-topic history cap (`HISTORY_MAX_LEN`).
    pub(crate) history_max_len: usize,
    /// History retention in ms (the recovery window); 0 = no history.
    pub(crate) history_retention_ms: u64,
}

/// What remains to be executed for a batch.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) ops: Vec<Op>,
    /// Ids still to acknowledge; empty once the `XACK` went through.
    pub(crate) ack: Vec<Arc<str>>,
}

/// One command of a plan, with the entry it belongs to.
#[derive(Debug)]
pub(crate) struct Op {
    pub(crate) id: Arc<str>,
    /// The entry's span, so a command's outcome is logged in its entry's context.
    pub(crate) span: Span,
    pub(crate) kind: OpKind,
}

#[derive(Debug)]
pub(crate) enum OpKind {
    /// One `EVALSHA` of the sequencing script for one topic.
    Publish { topic: Topic, body: Arc<[u8]> },
    /// One `XADD` to the dead-letter stream.
    DeadLetter {
        fields: Fields,
        error: String,
        reason: &'static str,
    },
}

/// The replies to one execution of a plan, in command order.
#[derive(Debug)]
pub(crate) struct Replies {
    pub(crate) ops: Vec<Value>,
    /// The `XACK` reply, when one was sent.
    pub(crate) ack: Option<Value>,
}

impl Plan {
    /// Validates every entry and lays out its commands. Pure: no I/O.
    pub(crate) fn build(
        entries: Vec<StreamEntry>,
        ctx: &BatchContext,
        stats: &FanoutStats,
    ) -> Self {
        let mut plan = Self {
            ops: Vec::with_capacity(entries.len()),
            ack: Vec::with_capacity(entries.len()),
        };
        for entry in entries {
            stats.entries.inc();
            let id: Arc<str> = entry.id.into();
            let span = info_span!("entry", id = %id);
            plan.ack.push(id.clone());
            let Some(fields) = entry.fields else {
                span.in_scope(|| debug!("entry deleted while pending; acknowledging it"));
                stats.deleted.inc();
                continue;
            };
            for kind in span.in_scope(|| plan_entry(&id, fields, ctx)) {
                plan.ops.push(Op {
                    id: id.clone(),
                    span: span.clone(),
                    kind,
                });
            }
        }
        plan
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.ack.is_empty()
    }

    /// True once the batch's `XACK` went through: from then on the entries are no longer
    /// pending, and any leftover command exists only in this plan.
    pub(crate) fn is_acked(&self) -> bool {
        self.ack.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.len() + usize::from(!self.ack.is_empty())
    }
}

fn plan_entry(id: &str, fields: Fields, ctx: &BatchContext) -> Vec<OpKind> {
    let parsed = PublishRequest::parse(
        fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        ctx.limits,
    );
    let request = match parsed {
        Ok(request) => request,
        Err(err) => {
            return vec![OpKind::DeadLetter {
                fields,
                error: err.to_string(),
                reason: err.reason(),
            }];
        }
    };
    let (topics, rooms) = match request.target {
        Target::Rooms(rooms) => (
            rooms
                .iter()
                .map(|room| ctx.keys.room(&request.nsp, room))
                .collect(),
            rooms,
        ),
        Target::Namespace => (vec![ctx.keys.namespace(&request.nsp)], Vec::new()),
    };
    let body = EnvelopeBody {
        source_id: id.to_owned(),
        nsp: request.nsp,
        rooms,
        except: request.except,
        data: request.data,
        published_at_ms: StreamId::parse(id).map_or(0, |id| id.ms),
        traceparent: request.traceparent,
    };
    // Encoded once and shared by every topic of the request.
    let body: Arc<[u8]> = match body.encode() {
        Ok(bytes) => bytes.into(),
        Err(err) => {
            return vec![OpKind::DeadLetter {
                fields,
                error: err.to_string(),
                reason: "encode",
            }];
        }
    };
    topics
        .into_iter()
        .map(|topic| OpKind::Publish {
            topic,
            body: body.clone(),
        })
        .collect()
}

impl Op {
    fn add_to(&self, pipe: &mut redis::Pipeline, ctx: &BatchContext, sha: &str) -> usize {
        match &self.kind {
            OpKind::Publish { topic, body } => {
                pipe.cmd("EVALSHA")
                    .arg(sha)
                    .arg(4)
                    .arg(topic.meta_key())
                    .arg(topic.members_key())
                    .arg(topic.history_key())
                    .arg(topic.hold_key())
                    .arg(topic.channel())
                    .arg(&*self.id)
                    .arg(&**body)
                    .arg(ctx.history_max_len)
                    .arg(ctx.history_retention_ms);
                body.len() + 5 * topic.channel().len() + 96
            }
            OpKind::DeadLetter { fields, error, .. } => {
                let cmd = pipe
                    .cmd("XADD")
                    .arg(&ctx.dead_stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(ctx.dead_letter_maxlen)
                    .arg("*");
                let mut size = 64;
                for (name, value) in fields {
                    cmd.arg(name).arg(value);
                    size += name.len() + value.len();
                }
                cmd.arg("error").arg(error).arg("source_id").arg(&*self.id);
                size + error.len()
            }
        }
    }
}

/// Runs the plan's commands, in order, in as few pipelines as the chunk budget allows (one for
/// a normal batch), with the `XACK` last. An `Err` is a connection-level failure: some commands
/// may have run, the replies are lost.
pub(crate) async fn execute<C: ConnectionLike>(
    conn: &mut C,
    ctx: &BatchContext,
    sha: &str,
    plan: &Plan,
) -> redis::RedisResult<Replies> {
    let mut replies = Replies {
        ops: Vec::with_capacity(plan.ops.len()),
        ack: None,
    };
    let mut start = 0;
    loop {
        let mut pipe = redis::pipe();
        // Per-command errors come back as `Value::ServerError` in place, so each op is judged
        // on its own instead of the whole pipeline failing.
        pipe.ignore_errors();
        let mut bytes = 0;
        let mut end = start;
        while end < plan.ops.len() && (end == start || bytes < CHUNK_BYTES) {
            bytes += plan.ops[end].add_to(&mut pipe, ctx, sha);
            end += 1;
        }
        let last = end == plan.ops.len();
        let with_ack = last && !plan.ack.is_empty();
        if with_ack {
            let cmd = pipe.cmd("XACK").arg(&ctx.stream).arg(&ctx.group);
            for id in &plan.ack {
                cmd.arg(&**id);
            }
        }
        if pipe.is_empty() {
            return Ok(replies);
        }
        let expected = pipe.len();
        let mut values = match pipe.query_async::<Value>(conn).await? {
            Value::Array(values) if values.len() == expected => values,
            other => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "pipeline reply does not match the commands sent",
                    format!("expected {expected} replies, got {other:?}")
                        .chars()
                        .take(200)
                        .collect::<String>(),
                )));
            }
        };
        if with_ack {
            replies.ack = values.pop();
        }
        replies.ops.extend(values);
        if last {
            return Ok(replies);
        }
        start = end;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use roomcast_shared::wire::Envelope;

    use super::*;

    pub(crate) fn ctx() -> BatchContext {
        let keys = KeySpace::new("t");
        BatchContext {
            stream: keys.publish_stream(),
            dead_stream: keys.dead_letter_stream(),
            keys,
            group: "g".into(),
            dead_letter_maxlen: 1000,
            limits: PublishLimits {
                max_entry_bytes: 4096,
                max_rooms: 10,
            },
            history_max_len: 100,
            history_retention_ms: 60_000,
        }
    }

    pub(crate) fn entry(id: &str, fields: &[(&str, &str)]) -> StreamEntry {
        StreamEntry {
            id: id.into(),
            fields: Some(
                fields
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect(),
            ),
        }
    }

    #[test]
    fn plan_lays_out_commands_in_stream_order() {
        let stats = FanoutStats::default();
        let entries = vec![
            entry(
                "10-0",
                &[
                    ("rooms", r#"["a","b"]"#),
                    ("event", "m"),
                    ("data", "1"),
                    ("except", r#"["x"]"#),
                ],
            ),
            entry("10-1", &[("event", "connect")]),
            StreamEntry {
                id: "10-2".into(),
                fields: None,
            },
            entry("10-3", &[("event", "tick"), ("nsp", "/admin")]),
        ];
        let plan = Plan::build(entries, &ctx(), &stats);
        assert_eq!(
            plan.ack.iter().map(|id| &**id).collect::<Vec<_>>(),
            ["10-0", "10-1", "10-2", "10-3"]
        );
        let kinds: Vec<String> = plan
            .ops
            .iter()
            .map(|op| match &op.kind {
                OpKind::Publish { topic, .. } => format!("{} {}", op.id, topic.channel()),
                OpKind::DeadLetter { reason, .. } => format!("{} dead {reason}", op.id),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "10-0 t:room:{/#a}",
                "10-0 t:room:{/#b}",
                "10-1 dead invalid_event",
                "10-3 t:nsp:{/admin}"
            ]
        );
        let OpKind::Publish { body, .. } = &plan.ops[0].kind else {
            panic!("publish")
        };
        let env = Envelope::decode(&Envelope::encode(1, body).expect("encodes")).expect("decodes");
        assert_eq!(env.body.source_id, "10-0");
        assert_eq!(env.body.rooms, ["a", "b"]);
        assert_eq!(env.body.except, ["x"]);
        assert_eq!(env.body.data, r#"["m",1]"#);
        assert_eq!(env.body.published_at_ms, 10);
        let OpKind::Publish { body: second, .. } = &plan.ops[1].kind else {
            panic!("publish")
        };
        assert!(Arc::ptr_eq(body, second), "body encoded once per request");
        let snap = stats.snapshot();
        assert_eq!((snap.entries, snap.deleted), (4, 1));
    }
}
