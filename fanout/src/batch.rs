//! Turns one batch of stream entries into script calls: for each topic of a partition this
//! replica owns, **one** `topic_publish.lua` call carrying all of the batch's entries for that
//! topic in stream order, and one `dead_letter.lua` call for the refused entries (when it owns
//! the dead-letter partition). One call per topic is what keeps a room's entries in order under
//! errors: a call is applied as a prefix of its entries, so retrying it after an error applies
//! exactly the rest, and no later entry of the room can have gone ahead of a failed one.
//! (`settle` interprets the replies.)

use std::{collections::HashMap, sync::Arc};

use redis::{Value, aio::ConnectionLike};
use roomcast_shared::wire::{
    ControlMessage, EnvelopeBody, KeySpace, PublishEntry, PublishLimits, StreamId, Target, Topic,
    partition_of,
};
use tracing::{Span, debug, info_span};

use crate::{
    stats::FanoutStats,
    stream_reply::{Fields, StreamEntry},
};

/// A call carries at most about this many argument bytes; a topic with more entries in one batch
/// gets several calls, in consecutive rounds. Also the size of one pipeline.
pub(crate) const CHUNK_BYTES: usize = 8 << 20;

/// `dead_letter.lua` unpacks an entry's fields into one `XADD`; Lua 5.1 cannot unpack much more
/// than 8,000 values, so an entry with more field items is dead-lettered with a plain `XADD`.
const MAX_SCRIPT_DEAD_ITEMS: usize = 7_000;

/// The partition whose owner writes the dead letters and relays backend commands: one fixed
/// owner, so each refused entry is written once (and in stream order, which `dead_letter.lua`'s
/// duplicate check relies on) and each command relayed once (twice at most after a crash, which
/// is harmless: commands are idempotent).
pub(crate) const DEAD_LETTER_PARTITION: u16 = 0;

/// Where a batch's commands go.
#[derive(Debug, Clone)]
pub(crate) struct BatchContext {
    pub(crate) keys: KeySpace,
    pub(crate) stream: String,
    pub(crate) dead_stream: String,
    pub(crate) dead_letter_maxlen: usize,
    pub(crate) limits: PublishLimits,
    /// Per-topic history cap (`HISTORY_MAX_LEN`).
    pub(crate) history_max_len: usize,
    /// History retention in ms (the recovery window); 0 = no history.
    pub(crate) history_retention_ms: u64,
    /// `FANOUT_PARTITIONS`.
    pub(crate) partitions: u16,
    /// Where backend commands go to every gateway (`<prefix>:control`).
    pub(crate) control_channel: String,
}

/// SHA1s of the scripts, loaded on the connection's server.
#[derive(Debug, Clone)]
pub(crate) struct Shas {
    pub(crate) topic: String,
    pub(crate) dead: String,
}

/// The partitions this replica applies in one batch, with their cursors: an entry is applied to
/// a partition only if it comes after the partition's cursor.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ownership {
    cursors: HashMap<u16, StreamId>,
}

impl Ownership {
    pub(crate) fn new(cursors: impl IntoIterator<Item = (u16, StreamId)>) -> Self {
        Self {
            cursors: cursors.into_iter().collect(),
        }
    }

    pub(crate) fn applies(&self, partition: u16, id: StreamId) -> bool {
        self.cursors.get(&partition).is_some_and(|c| id > *c)
    }
}

/// One entry's part of a topic call.
#[derive(Debug)]
pub(crate) struct TopicItem {
    pub(crate) id: Arc<str>,
    /// The entry's span, so a call's outcome is logged in each entry's context.
    pub(crate) span: Span,
    pub(crate) body: Arc<[u8]>,
}

/// One backend command, relayed to every gateway on the control channel.
#[derive(Debug)]
pub(crate) struct CommandItem {
    pub(crate) span: Span,
    /// The encoded `ControlMessage::Command`.
    pub(crate) payload: Vec<u8>,
}

/// One refused entry.
#[derive(Debug)]
pub(crate) struct DeadItem {
    pub(crate) id: Arc<str>,
    pub(crate) span: Span,
    pub(crate) fields: Fields,
    pub(crate) error: String,
    pub(crate) reason: &'static str,
}

#[derive(Debug)]
pub(crate) enum Call {
    /// One `EVALSHA topic_publish.lua` for one topic.
    Topic { topic: Topic, items: Vec<TopicItem> },
    /// One `EVALSHA dead_letter.lua`.
    Dead { items: Vec<DeadItem> },
    /// A plain `XADD` to the dead-letter stream, for an entry with too many fields for the
    /// script (not protected against a duplicate after a crash).
    RawDead { item: DeadItem },
    /// A `PUBLISH` of a backend command on the control channel.
    Command { item: CommandItem },
}

/// A batch's calls, in rounds: a round holds at most one call per topic (and one dead-letter
/// call), and starts only when the previous one is done.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) rounds: Vec<Vec<Call>>,
    /// Entries the plan covers (the batch).
    pub(crate) entries: usize,
}

impl Plan {
    /// Validates every entry and lays out the calls for the partitions in `owned`. Pure: no I/O.
    pub(crate) fn build(
        entries: Vec<StreamEntry>,
        ctx: &BatchContext,
        owned: &Ownership,
        stats: &FanoutStats,
    ) -> Self {
        let count = entries.len();
        let mut topics: Vec<(Topic, Vec<TopicItem>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut dead: Vec<DeadItem> = Vec::new();
        let mut commands: Vec<CommandItem> = Vec::new();
        for entry in entries {
            stats.entries.inc();
            let Some(sid) = StreamId::parse(&entry.id) else {
                // Redis returns complete ids; a garbled one can only be skipped.
                debug!(id = %entry.id, "entry with an unparsable id skipped");
                continue;
            };
            let Some(fields) = entry.fields else {
                continue;
            };
            let id: Arc<str> = entry.id.into();
            let span = info_span!("entry", id = %id);
            // The parent must be set before the span is first entered.
            if let Some((_, traceparent)) = fields.iter().find(|(k, _)| k == b"traceparent")
                && let Ok(traceparent) = std::str::from_utf8(traceparent)
            {
                roomcast_shared::telemetry::continue_trace(&span, traceparent);
            }
            let routed = span.in_scope(|| route(&id, sid, fields, ctx, owned));
            match routed {
                Routed::Nothing => {}
                Routed::Command(payload) => {
                    if owned.applies(DEAD_LETTER_PARTITION, sid) {
                        commands.push(CommandItem { span, payload });
                    }
                }
                Routed::Dead {
                    fields,
                    error,
                    reason,
                } => {
                    if owned.applies(DEAD_LETTER_PARTITION, sid) {
                        dead.push(DeadItem {
                            id,
                            span,
                            fields,
                            error,
                            reason,
                        });
                    }
                }
                Routed::Topics(list, body) => {
                    for topic in list {
                        let item = TopicItem {
                            id: id.clone(),
                            span: span.clone(),
                            body: body.clone(),
                        };
                        match index.get(topic.channel()) {
                            Some(&i) => topics[i].1.push(item),
                            None => {
                                index.insert(topic.channel().to_owned(), topics.len());
                                topics.push((topic, vec![item]));
                            }
                        }
                    }
                }
            }
        }

        let mut plan = Self {
            rounds: Vec::new(),
            entries: count,
        };
        // Commands are independent of each other and of the events: all in the first round.
        for item in commands {
            plan.push(0, Call::Command { item });
        }
        for (topic, items) in topics {
            for (round, chunk) in chunk_by_bytes(items, |i| i.body.len() + 32)
                .into_iter()
                .enumerate()
            {
                plan.push(
                    round,
                    Call::Topic {
                        topic: topic.clone(),
                        items: chunk,
                    },
                );
            }
        }
        // Dead letters in stream order, one call per round: a script call for runs of ordinary
        // entries, a plain XADD for an entry with too many fields.
        let mut round = 0;
        let mut run = Vec::new();
        for item in dead {
            if dead_items(&item) > MAX_SCRIPT_DEAD_ITEMS {
                for chunk in chunk_by_bytes(std::mem::take(&mut run), dead_size) {
                    plan.push(round, Call::Dead { items: chunk });
                    round += 1;
                }
                plan.push(round, Call::RawDead { item });
                round += 1;
            } else {
                run.push(item);
            }
        }
        for chunk in chunk_by_bytes(run, dead_size) {
            plan.push(round, Call::Dead { items: chunk });
            round += 1;
        }
        plan
    }

    fn push(&mut self, round: usize, call: Call) {
        while self.rounds.len() <= round {
            self.rounds.push(Vec::new());
        }
        self.rounds[round].push(call);
    }
}

fn dead_items(item: &DeadItem) -> usize {
    item.fields.len() * 2
}

fn dead_size(item: &DeadItem) -> usize {
    64 + item.error.len()
        + item
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
}

/// Splits `items` into runs of about `CHUNK_BYTES` (each run has at least one item).
fn chunk_by_bytes<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        match out.last_mut() {
            Some(last) if bytes + n <= CHUNK_BYTES => {
                last.push(item);
                bytes += n;
            }
            _ => {
                out.push(vec![item]);
                bytes = n;
            }
        }
    }
    out
}

enum Routed {
    /// Valid, but none of its topics is in a partition this replica applies now.
    Nothing,
    Dead {
        fields: Fields,
        error: String,
        reason: &'static str,
    },
    Topics(Vec<Topic>, Arc<[u8]>),
    /// A backend command, encoded for the control channel.
    Command(Vec<u8>),
}

/// Validates an entry and picks the topics this replica applies it to.
fn route(id: &str, sid: StreamId, fields: Fields, ctx: &BatchContext, owned: &Ownership) -> Routed {
    let parsed = PublishEntry::parse(
        fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
        ctx.limits,
    );
    let request = match parsed {
        Ok(PublishEntry::Event(request)) => request,
        Ok(PublishEntry::Command(command)) => {
            let rooms = match command.target {
                Target::Rooms(rooms) => rooms,
                Target::Namespace => Vec::new(),
            };
            return Routed::Command(
                ControlMessage::Command {
                    v: 1,
                    source_id: id.to_owned(),
                    nsp: command.nsp,
                    rooms,
                    action: command.action,
                }
                .encode(),
            );
        }
        Err(err) => {
            return Routed::Dead {
                error: err.to_string(),
                reason: err.reason(),
                fields,
            };
        }
    };
    let (topics, rooms) = match request.target {
        Target::Rooms(rooms) => (
            rooms
                .iter()
                .map(|room| ctx.keys.room(&request.nsp, room))
                .collect::<Vec<_>>(),
            rooms,
        ),
        Target::Namespace => (vec![ctx.keys.namespace(&request.nsp)], Vec::new()),
    };
    let mine: Vec<Topic> = topics
        .into_iter()
        .filter(|t| owned.applies(partition_of(t, ctx.partitions), sid))
        .collect();
    if mine.is_empty() {
        return Routed::Nothing;
    }
    // A traced entry (its span joined the publisher's trace in `Plan::build`): the gateways
    // continue from this span, or from the publisher's context when spans are not exported here.
    let traceparent = request.traceparent.map(|publisher| {
        roomcast_shared::telemetry::traceparent(&Span::current()).unwrap_or(publisher)
    });
    let body = EnvelopeBody {
        source_id: id.to_owned(),
        nsp: request.nsp,
        rooms,
        except: request.except,
        data: request.data,
        published_at_ms: sid.ms,
        traceparent,
    };
    // Encoded once and shared by every topic of the request.
    match body.encode() {
        Ok(bytes) => Routed::Topics(mine, bytes.into()),
        Err(err) => Routed::Dead {
            fields,
            error: err.to_string(),
            reason: "encode",
        },
    }
}

impl Call {
    /// Adds the call to a pipeline; returns about how many bytes it carries.
    fn add_to(&self, pipe: &mut redis::Pipeline, ctx: &BatchContext, shas: &Shas) -> usize {
        match self {
            Self::Topic { topic, items } => {
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(&shas.topic)
                    .arg(4)
                    .arg(topic.meta_key())
                    .arg(topic.members_key())
                    .arg(topic.history_key())
                    .arg(topic.hold_key())
                    .arg(topic.channel())
                    .arg(ctx.history_max_len)
                    .arg(ctx.history_retention_ms);
                let mut size = 5 * topic.channel().len() + 64;
                for item in items {
                    cmd.arg(&*item.id).arg(&*item.body);
                    size += item.id.len() + item.body.len();
                }
                size
            }
            Self::Dead { items } => {
                let cmd = pipe
                    .cmd("EVALSHA")
                    .arg(&shas.dead)
                    .arg(1)
                    .arg(&ctx.dead_stream)
                    .arg(ctx.dead_letter_maxlen);
                let mut size = 64;
                for item in items {
                    cmd.arg(&*item.id).arg(dead_items(item));
                    for (name, value) in &item.fields {
                        cmd.arg(name).arg(value);
                    }
                    cmd.arg(&item.error);
                    size += dead_size(item);
                }
                size
            }
            Self::Command { item } => {
                pipe.cmd("PUBLISH")
                    .arg(&ctx.control_channel)
                    .arg(&item.payload);
                item.payload.len() + 64
            }
            Self::RawDead { item } => {
                let cmd = pipe
                    .cmd("XADD")
                    .arg(&ctx.dead_stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(ctx.dead_letter_maxlen)
                    .arg("*");
                for (name, value) in &item.fields {
                    cmd.arg(name).arg(value);
                }
                cmd.arg("error")
                    .arg(&item.error)
                    .arg("source_id")
                    .arg(&*item.id);
                dead_size(item)
            }
        }
    }
}

/// Runs the calls of one round in as few pipelines as the chunk budget allows (one for a normal
/// batch) and returns one reply per call, in order. Per-command errors come back in place as
/// `Value::ServerError`; an `Err` is a connection-level failure (some calls may have run).
pub(crate) async fn execute<C: ConnectionLike>(
    conn: &mut C,
    ctx: &BatchContext,
    shas: &Shas,
    calls: &[Call],
) -> redis::RedisResult<Vec<Value>> {
    let mut replies = Vec::with_capacity(calls.len());
    let mut start = 0;
    while start < calls.len() {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut bytes = 0;
        let mut end = start;
        while end < calls.len() && (end == start || bytes < CHUNK_BYTES) {
            bytes += calls[end].add_to(&mut pipe, ctx, shas);
            end += 1;
        }
        let expected = end - start;
        match pipe.query_async::<Value>(conn).await? {
            Value::Array(values) if values.len() == expected => replies.extend(values),
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
        }
        start = end;
    }
    Ok(replies)
}

#[cfg(test)]
pub(crate) mod tests {
    use roomcast_shared::wire::{Envelope, KeySpace};

    use super::*;

    pub(crate) fn ctx() -> BatchContext {
        let keys = KeySpace::new("t");
        BatchContext {
            stream: keys.publish_stream(),
            dead_stream: keys.dead_letter_stream(),
            control_channel: keys.control_channel(),
            keys,
            dead_letter_maxlen: 1000,
            limits: PublishLimits {
                max_entry_bytes: 4096,
                max_rooms: 10,
            },
            history_max_len: 100,
            history_retention_ms: 60_000,
            partitions: 4,
        }
    }

    /// Owns every partition of `ctx()`, nothing done yet.
    pub(crate) fn all() -> Ownership {
        Ownership::new((0..4).map(|p| (p, StreamId::default())))
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

    fn describe(plan: &Plan) -> Vec<Vec<String>> {
        plan.rounds
            .iter()
            .map(|round| {
                round
                    .iter()
                    .map(|call| match call {
                        Call::Topic { topic, items } => format!(
                            "{} {}",
                            topic.channel(),
                            items.iter().map(|i| &*i.id).collect::<Vec<_>>().join(",")
                        ),
                        Call::Dead { items } => format!(
                            "dead {}",
                            items
                                .iter()
                                .map(|i| format!("{}:{}", i.id, i.reason))
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                        Call::RawDead { item } => format!("raw-dead {}", item.id),
                        Call::Command { item } => {
                            format!("command {}", String::from_utf8_lossy(&item.payload))
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn commands_are_relayed_once_by_the_owner_of_the_dead_letter_partition() {
        let stats = FanoutStats::default();
        let entries = || {
            vec![
                entry(
                    "7-0",
                    &[("command", "join"), ("user", "al"), ("args", r#"["vip"]"#)],
                ),
                entry("7-1", &[("command", "disconnect"), ("recover", "true")]),
            ]
        };
        let plan = Plan::build(entries(), &ctx(), &all(), &stats);
        assert_eq!(
            describe(&plan),
            vec![vec![
                r#"command {"type":"command","v":1,"source_id":"7-0","nsp":"/","rooms":["user:al"],"action":{"do":"join","rooms":["vip"]}}"#.to_owned(),
                r#"command {"type":"command","v":1,"source_id":"7-1","nsp":"/","rooms":[],"action":{"do":"disconnect","recover":true}}"#.to_owned(),
            ]]
        );
        let others = Ownership::new((1..4).map(|p| (p, StreamId::default())));
        assert!(
            Plan::build(entries(), &ctx(), &others, &stats)
                .rounds
                .is_empty(),
            "only the owner of partition 0 relays"
        );
    }

    #[test]
    fn one_call_per_topic_with_its_entries_in_stream_order() {
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
            entry("10-4", &[("room", "a"), ("event", "m")]),
            entry("10-5", &[("romm", "a"), ("event", "m")]),
        ];
        let plan = Plan::build(entries, &ctx(), &all(), &stats);
        assert_eq!(plan.entries, 6);
        assert_eq!(
            describe(&plan),
            [[
                "t:room:{/#a} 10-0,10-4",
                "t:room:{/#b} 10-0",
                "t:nsp:{/admin} 10-3",
                "dead 10-1:invalid_event,10-5:unknown_field"
            ]]
        );
        let Call::Topic { items, .. } = &plan.rounds[0][0] else {
            panic!("topic call")
        };
        let env =
            Envelope::decode(&Envelope::encode(1, &items[0].body).expect("encodes")).expect("ok");
        assert_eq!(env.body.source_id, "10-0");
        assert_eq!(env.body.rooms, ["a", "b"]);
        assert_eq!(env.body.except, ["x"]);
        assert_eq!(env.body.data, r#"["m",1]"#);
        assert_eq!(env.body.published_at_ms, 10);
        let Call::Topic { items: b, .. } = &plan.rounds[0][1] else {
            panic!("topic call")
        };
        assert!(
            Arc::ptr_eq(&items[0].body, &b[0].body),
            "body encoded once per request"
        );
        assert_eq!(stats.snapshot().entries, 6);
    }

    #[test]
    fn only_owned_partitions_after_their_cursor() {
        let stats = FanoutStats::default();
        let c = ctx();
        let pa = partition_of(&c.keys.room("/", "a"), 4);
        let pb = partition_of(&c.keys.room("/", "b"), 4);
        assert_ne!(pa, pb, "the test needs rooms in different partitions");
        let entries = || {
            vec![
                entry("10-0", &[("rooms", r#"["a","b"]"#), ("event", "m")]),
                entry("11-0", &[("room", "a"), ("event", "m")]),
                entry("12-0", &[("romm", "a"), ("event", "m")]),
            ]
        };
        // Owns a's partition only, done up to 10-0 there; not the dead-letter partition
        // (unless a's partition is partition 0).
        let owned = Ownership::new([(pa, StreamId { ms: 10, seq: 0 })]);
        let plan = Plan::build(entries(), &c, &owned, &stats);
        let mut expected = vec!["t:room:{/#a} 11-0".to_owned()];
        if pa == DEAD_LETTER_PARTITION {
            expected.push("dead 12-0:unknown_field".into());
        }
        assert_eq!(describe(&plan), [expected]);
        let none = Plan::build(entries(), &c, &Ownership::default(), &stats);
        assert!(none.rounds.is_empty());
        assert_eq!(none.entries, 3);
    }

    #[test]
    fn large_topics_and_huge_dead_letters_are_split_into_rounds() {
        let stats = FanoutStats::default();
        let mut c = ctx();
        c.limits.max_entry_bytes = 10 << 20;
        let big = format!(r#""{}""#, "x".repeat(3 << 20));
        let mut entries: Vec<StreamEntry> = (0..5)
            .map(|i| {
                entry(
                    &format!("1-{i}"),
                    &[("room", "a"), ("event", "m"), ("data", &big)],
                )
            })
            .collect();
        let many: Vec<(String, String)> =
            (0..4000).map(|i| (format!("f{i}"), "v".into())).collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        entries.push(entry("2-0", &[("romm", "a")]));
        entries.push(entry("2-1", &refs));
        entries.push(entry("2-2", &[("romm", "b")]));
        let plan = Plan::build(entries, &c, &all(), &stats);
        assert_eq!(
            describe(&plan),
            [
                vec!["t:room:{/#a} 1-0,1-1", "dead 2-0:unknown_field"],
                vec!["t:room:{/#a} 1-2,1-3", "raw-dead 2-1"],
                vec!["t:room:{/#a} 1-4", "dead 2-2:unknown_field"],
            ]
        );
    }
}
