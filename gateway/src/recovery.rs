//! Connection state recovery: saving a disconnected socket's session, and restoring it on any
//! gateway with exactly the messages the client missed. The algorithm is in docs/recovery.md.
//!
//! In short: a message's offset is its publish entry id, and one gateway sends messages in
//! publish order, so a client that received offset X received every message sent to it before X.
//! The session stores, per topic, where the topic stood when the socket joined (`base`) and the
//! last message sent (`last`). The replay for a topic is every history entry after `base` that
//! was either not sent (after `last`) or sent after X.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use crate::eio::Message;
use redis::{Value, aio::ConnectionManager};
use roomcast_shared::clock::unix_ms;
use roomcast_shared::wire::{
    Envelope, KeySpace, Position, SESSION_VERSION, SessionRecord, StreamId, Topic, TopicPosition,
};
use serde_json::Value as Json;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::replay::{Buffered, ReplayBuffer};
use crate::{
    delivery::event_packet,
    history::{self, HistoryEntry},
    rooms::{Departure, LocalRooms},
    sio::{Accepted, ConnectRequest, SioSocket},
    stats::GatewayStats,
};

/// Why a session could not be restored; the client then gets a fresh session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestoreError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored session is unreadable: {0}")]
    Session(#[from] roomcast_shared::wire::SessionError),
    #[error("room subscriptions not confirmed in time")]
    Subscriptions,
    #[error("history of a room no longer covers what the client missed")]
    HistoryGone,
    #[error("too many live messages arrived during the replay")]
    Overflow,
    #[error("the client went away or stopped reading during the replay")]
    ClientGone,
    #[error("the session belongs to another user")]
    WrongUser,
    #[error("messages of slower fanout partitions did not arrive in time")]
    Ordering,
}

impl RestoreError {
    /// Whether the same session may well recover on a retry (as opposed to: it cannot, so the
    /// client should continue with a fresh one).
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Redis(_)
                | Self::Subscriptions
                | Self::Overflow
                | Self::ClientGone
                | Self::Ordering
        )
    }
}

pub(crate) struct Sessions {
    pub(crate) commands: ConnectionManager,
    pub(crate) keys: KeySpace,
    pub(crate) rooms: Arc<LocalRooms>,
    pub(crate) window: Duration,
    pub(crate) history_max_len: usize,
    pub(crate) request_timeout: Duration,
    /// Session writes still in flight; waited for on shutdown.
    pub(crate) writes: TaskTracker,
    pub(crate) stats: Arc<GatewayStats>,
    /// How far live messages were released in publish order (`None`: ordering off).
    pub(crate) released: Option<watch::Receiver<StreamId>>,
}

impl Sessions {
    /// Stores the session of a socket that left without asking to (transport closed, server
    /// shutdown), and keeps its topics' history being written for the window.
    pub(crate) fn save(
        &self,
        socket: &SioSocket,
        pid: &str,
        departures: Vec<(Option<String>, Departure)>,
    ) {
        let write = self.session_write(socket, pid, departures);
        self.writes.spawn(write);
    }

    /// The write of a session, to await (a takeover must answer only once it is stored) or to
    /// spawn.
    pub(crate) fn session_write(
        &self,
        socket: &SioSocket,
        pid: &str,
        departures: Vec<(Option<String>, Departure)>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let topics: Vec<TopicPosition> = departures
            .into_iter()
            .map(|(room, d)| {
                let base = d.base.unwrap_or_default();
                TopicPosition {
                    room,
                    base,
                    last: d.last.unwrap_or(base),
                    ahead: d.ahead,
                    late: d.late,
                }
            })
            .collect();
        let record = SessionRecord {
            version: SESSION_VERSION,
            sid: socket.id().to_string(),
            nsp: socket.nsp().to_string(),
            topics,
            disconnected_at_ms: unix_ms(),
            user: socket.identity().map(|i| i.user.to_string()),
        };
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        match record.encode() {
            Ok(bytes) => {
                pipe.cmd("SET")
                    .arg(self.keys.session(pid))
                    .arg(bytes)
                    .arg("PX")
                    .arg(window_ms)
                    .ignore();
            }
            Err(error) => {
                tracing::error!(%error, "cannot encode a session; the client will get a fresh one")
            }
        }
        for t in &record.topics {
            let topic = self.keys.topic(&record.nsp, t.room.as_deref());
            pipe.cmd("SET")
                .arg(topic.hold_key())
                .arg(1)
                .arg("PX")
                .arg(window_ms)
                .ignore();
            // The sequence must outlive the session: an expiring meta (nobody holds the topic)
            // lives at least as long as the hold; GT leaves a persistent one (held) alone.
            pipe.cmd("PEXPIRE")
                .arg(topic.meta_key())
                .arg(window_ms)
                .arg("GT")
                .ignore();
        }
        let mut commands = self.commands.clone();
        let sid = record.sid;
        let stats = self.stats.clone();
        async move {
            match pipe.query_async::<()>(&mut commands).await {
                Ok(()) => tracing::debug!(%sid, "session saved"),
                Err(error) => {
                    stats.redis_errors.inc();
                    tracing::warn!(%error, %sid, "could not save a session; the client will get a fresh one")
                }
            }
        }
    }

    /// Restores the session `pid` into a new socket on this gateway: same id, same rooms, the
    /// missed messages written before the CONNECT reply. `Ok(None)` when there is no such
    /// session (expired, unknown, or another namespace).
    /// Restores the session `pid` for `user` (the authenticated `sub`, `None` without
    /// authentication): a session of another user is not restored, and stays for its owner.
    pub(crate) async fn restore(
        &self,
        request: &ConnectRequest,
        pid: &str,
        offset: Option<StreamId>,
        user: Option<&str>,
    ) -> Result<Option<Accepted>, RestoreError> {
        let mut commands = self.commands.clone();
        // GETDEL: a session is restored at most once, so a replayed pid cannot take it over.
        let stored: Option<Vec<u8>> = redis::cmd("GETDEL")
            .arg(self.keys.session(pid))
            .query_async(&mut commands)
            .await?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let record = SessionRecord::decode(&stored)?;
        if *record.nsp != *request.nsp {
            return Ok(None);
        }
        if record.user.as_deref() != user {
            self.put_back(pid, &stored, &record).await;
            return Err(RestoreError::WrongUser);
        }
        let socket = request.socket(Some(record.sid.as_str().into()));
        let buffer = ReplayBuffer::new();
        let mut topics = Vec::with_capacity(record.topics.len());
        let mut generation = 0;
        for t in &record.topics {
            let channel: Arc<str> = self
                .keys
                .topic(&record.nsp, t.room.as_deref())
                .into_channel()
                .into();
            if let Some(room) = &t.room {
                socket.add_room(&Arc::from(room.as_str()));
            }
            generation = generation.max(self.rooms.add(&channel, &socket, Some(buffer.clone())));
            topics.push((channel, t));
        }
        let result = self
            .replay(&socket, &buffer, &topics, offset, generation)
            .await;
        match result {
            Ok(()) => Ok(Some(Accepted {
                socket,
                pid: Some(pid.into()),
            })),
            Err(error) => {
                for (channel, _) in &topics {
                    self.rooms.remove(channel, &socket);
                }
                socket.take_rooms();
                if error.is_transient() {
                    // The session is still good: put it back for the rest of its window and drop
                    // the connection, so the client reconnects and tries again instead of
                    // continuing with a fresh session (and half a replay).
                    self.put_back(pid, &stored, &record).await;
                    socket.close_connection();
                }
                Err(error)
            }
        }
    }

    /// Stores a taken session again for the rest of its window.
    async fn put_back(&self, pid: &str, stored: &[u8], record: &SessionRecord) {
        let elapsed = unix_ms().saturating_sub(record.disconnected_at_ms);
        let left = u64::try_from(self.window.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_sub(elapsed);
        if left == 0 {
            return;
        }
        let put_back = redis::cmd("SET")
            .arg(self.keys.session(pid))
            .arg(stored)
            .arg("PX")
            .arg(left)
            .query_async::<()>(&mut self.commands.clone())
            .await;
        if let Err(error) = put_back {
            tracing::warn!(%error, "could not put a session back after a failed recovery");
        }
    }

    async fn replay(
        &self,
        socket: &Arc<SioSocket>,
        buffer: &ReplayBuffer,
        topics: &[(Arc<str>, &TopicPosition)],
        offset: Option<StreamId>,
        generation: u64,
    ) -> Result<(), RestoreError> {
        // Listen first: anything published after this point reaches the buffer, anything
        // before it is in the history read next; the overlap is removed by seq.
        if tokio::time::timeout(self.request_timeout, self.rooms.wait_applied(generation))
            .await
            .is_err()
        {
            return Err(RestoreError::Subscriptions);
        }
        let count = self.history_max_len + 1;
        let x_order = offset_order(topics, offset);
        // Where "received" ends in publish order: X, or, when X itself was delivered late, the
        // largest source id sent before it (everything up to that was sent before X).
        let read_from = reading_point(topics, offset);
        // One MULTI/EXEC: every topic's history is read at the same instant, so everything in
        // the replay was published before everything that only reaches the buffer, and the
        // socket keeps receiving in publish order.
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut plans = Vec::with_capacity(topics.len());
        for (channel, t) in topics {
            let topic = Topic::from_channel(&**channel);
            let hist = topic.history_key();
            pipe.cmd("HGET").arg(topic.meta_key()).arg("seq");
            let plan = match read_from {
                // Everything sent was sent before X, so it was received.
                Some(x) if t.last.src <= x => {
                    history::range_after(&mut pipe, &hist, t.last.src, count);
                    Plan::Last
                }
                Some(x) => {
                    history::last_at_or_before(&mut pipe, &hist, x);
                    history::range_after(&mut pipe, &hist, x, count);
                    Plan::Offset
                }
                None => {
                    history::range_after(&mut pipe, &hist, t.base.src, count);
                    Plan::Base
                }
            };
            // Repaired messages sent after X although published before it: the client may lack them.
            let late = late_unreceived(t, offset, read_from, x_order);
            for src in &late {
                pipe.cmd("XRANGE")
                    .arg(&hist)
                    .arg(src.to_string())
                    .arg(src.to_string());
            }
            plans.push((plan, late.len()));
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.commands.clone()).await?;
        let mut replies = replies.into_iter();

        let mut merged: BTreeMap<StreamId, ReplayItem> = BTreeMap::new();
        let mut ends: HashMap<Arc<str>, Position> = HashMap::new();
        for ((channel, t), (plan, late)) in topics.iter().zip(plans) {
            let meta_seq: u64 = match replies.next() {
                Some(Value::BulkString(b)) => std::str::from_utf8(&b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                _ => 0,
            };
            let at = match plan {
                Plan::Offset => history::parse_entries(replies.next().unwrap_or(Value::Nil)),
                Plan::Last | Plan::Base => Vec::new(),
            };
            let read = history::parse_entries(replies.next().unwrap_or(Value::Nil));
            let Some((end, entries)) =
                topic_replay(t, &plan, at.first(), read, meta_seq, self.history_max_len)
            else {
                tracing::debug!(topic = %channel, meta_seq, "history does not cover what the client missed");
                return Err(RestoreError::HistoryGone);
            };
            ends.insert(channel.clone(), end);
            // Repaired messages published after X but sent before it were received.
            let received_late = |src: &StreamId| {
                offset.is_some_and(|x| {
                    t.late
                        .iter()
                        .any(|l| l.src == *src && l.received_by(x, x_order))
                })
            };
            for e in entries.into_iter().filter(|e| !received_late(&e.src)) {
                merged
                    .entry(e.src)
                    .or_insert(ReplayItem::History(e.envelope));
            }
            for _ in 0..late {
                for e in history::parse_entries(replies.next().unwrap_or(Value::Nil)) {
                    if e.envelope.seq > t.base.seq && !t.ahead.contains(&e.src) {
                        merged
                            .entry(e.src)
                            .or_insert(ReplayItem::History(e.envelope));
                    }
                }
            }
        }

        let skip = |item: &Buffered, ends: &HashMap<Arc<str>, Position>| {
            merged.contains_key(&item.src)
                || ends
                    .get(&item.channel)
                    .is_some_and(|end| item.seq <= end.seq)
                || read_from.is_some_and(|x| item.src <= x)
        };
        // The history was read at one instant, but fanout partitions publish at their own
        // pace: a message older than the newest one read may still be on its way, and must not
        // be sent after it. Wait until live delivery is past the newest one read; then every
        // older message is in the history read or in the buffer, and goes in order with them.
        if let (Some(&newest), Some(released)) = (merged.keys().next_back(), &self.released) {
            let mut released = released.clone();
            let caught_up = tokio::time::timeout(
                self.request_timeout,
                released.wait_for(|upto| *upto >= newest),
            )
            .await;
            if !matches!(caught_up, Ok(Ok(_))) {
                return Err(RestoreError::Ordering);
            }
            let mut live: Vec<Buffered> = buffer.take_upto(newest);
            live.retain(|item| !skip(item, &ends));
            for item in live {
                let end = ends.entry(item.channel.clone()).or_default();
                if item.seq > end.seq {
                    *end = Position {
                        seq: item.seq,
                        src: item.src,
                    };
                }
                merged.insert(item.src, ReplayItem::Live(item.packet));
            }
        }

        // One gateway sends in publish order; so does the replay, across all rooms, each message
        // once even when it targeted several of the socket's rooms.
        let mut replayed = HashSet::with_capacity(merged.len());
        for (src, item) in merged {
            replayed.insert(src);
            let packet = match item {
                ReplayItem::History(envelope) => {
                    if !envelope.body.except.is_empty() && socket.in_any(&envelope.body.except) {
                        continue;
                    }
                    event_packet(&envelope.body, Some(src))
                }
                // Filtered (`except`) when it was delivered into the buffer.
                ReplayItem::Live(packet) => packet,
            };
            self.stats.replayed_events.inc();
            // A replay can be longer than the connection's queue: wait for the client to drain.
            socket
                .emit_patiently(packet, self.request_timeout)
                .await
                .map_err(|_| RestoreError::ClientGone)?;
        }
        for (channel, end) in &ends {
            self.rooms.set_base(channel, socket.id(), *end);
        }
        let skip = |item: &Buffered| {
            replayed.contains(&item.src)
                || ends
                    .get(&item.channel)
                    .is_some_and(|end| item.seq <= end.seq)
                || read_from.is_some_and(|x| item.src <= x)
        };
        buffer.finish(socket, skip, self.request_timeout).await
    }
}

/// One topic's part of a replay, from what was read: the messages to send (in seq order) and
/// where the socket will stand afterwards. `None` when the history no longer covers it.
///
/// `at` is the last history entry at or before the client's offset (read for `Plan::Offset`),
/// `read` the entries read after the plan's starting point, `meta_seq` the topic's seq in Redis
/// read before them.
fn topic_replay(
    t: &TopicPosition,
    plan: &Plan,
    at: Option<&HistoryEntry>,
    read: Vec<HistoryEntry>,
    meta_seq: u64,
    max_len: usize,
) -> Option<(Position, Vec<HistoryEntry>)> {
    // `prev`: the last message of the topic the client has (or that predates its join).
    let prev = match plan {
        Plan::Last => t.last,
        Plan::Base => t.base,
        Plan::Offset => match at {
            Some(e) if e.envelope.seq > t.base.seq => Position {
                seq: e.envelope.seq,
                src: e.src,
            },
            _ => t.base,
        },
    };
    let entries: Vec<HistoryEntry> = read
        .into_iter()
        .filter(|e| e.envelope.seq > prev.seq)
        .collect();
    let contiguous = match entries.first() {
        Some(first) => first.envelope.seq == prev.seq + 1,
        None => meta_seq <= prev.seq,
    };
    if !contiguous || entries.len() > max_len {
        return None;
    }
    let end = entries.last().map_or(prev, |e| Position {
        seq: e.envelope.seq,
        src: e.src,
    });
    // Multi-room messages the old gateway delivered through another room's copy are after
    // `last` here but were sent: not again.
    let entries = entries
        .into_iter()
        .filter(|e| !t.ahead.contains(&e.src))
        .collect();
    Some((end, entries))
}

/// Messages delivered late (after messages up to `high`) that a client with offset X may not
/// have: published before the reading point (so not in the history read after it) but sent
/// after X.
fn late_unreceived(
    t: &TopicPosition,
    offset: Option<StreamId>,
    read_from: Option<StreamId>,
    x_order: Option<u64>,
) -> Vec<StreamId> {
    let (Some(x), Some(from)) = (offset, read_from) else {
        return Vec::new();
    };
    t.late
        .iter()
        .filter(|l| l.src < from && !l.received_by(x, x_order))
        .map(|l| l.src)
        .collect()
}

/// The source id up to which, in publish order, a client with offset X received everything not
/// delivered late: X itself, or — if X was a late delivery, sent after messages up to `high` —
/// `high`, since every message that was not late and has a source id up to `high` was sent before
/// X. (Late ones are decided by their send order.)
fn reading_point(
    topics: &[(Arc<str>, &TopicPosition)],
    offset: Option<StreamId>,
) -> Option<StreamId> {
    let x = offset?;
    let high = topics
        .iter()
        .flat_map(|(_, t)| &t.late)
        .filter(|l| l.src == x)
        .map(|l| l.high)
        .max();
    Some(high.map_or(x, |h| h.max(x)))
}

/// X's place in the old gateway's send order, if X was itself a repaired (late) delivery.
fn offset_order(topics: &[(Arc<str>, &TopicPosition)], offset: Option<StreamId>) -> Option<u64> {
    let x = offset?;
    topics
        .iter()
        .flat_map(|(_, t)| &t.late)
        .find(|l| l.src == x)
        .map(|l| l.order)
}

/// One message of a replay: from the history, or a live message that arrived in the buffer and
/// is older than the newest history entry (sent in publish order with them).
enum ReplayItem {
    History(Envelope),
    Live(Message),
}

/// Where a topic's replay starts reading history.
enum Plan {
    /// Everything sent was received: after `last`.
    Last,
    /// Some sent messages may be lost: after the client's offset.
    Offset,
    /// The client received nothing: after `base`.
    Base,
}

/// Reads `{pid, offset}` from a CONNECT payload, as the official client sends them.
pub(crate) fn recovery_request(auth: &Json) -> Option<(String, Option<StreamId>)> {
    let pid = auth.get("pid")?.as_str()?.to_owned();
    // A malformed offset cannot be honoured exactly: the client gets a fresh session.
    let offset = match auth.get("offset") {
        None | Some(Json::Null) => None,
        Some(value) => Some(StreamId::parse(value.as_str()?)?),
    };
    Some((pid, offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_shared::wire::{EnvelopeBody, LateDelivery};

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    fn pos(seq: u64, ms: u64) -> Position {
        Position { seq, src: id(ms) }
    }

    /// History entry `seq` with source id `ms-0`.
    fn entry(seq: u64, ms: u64) -> HistoryEntry {
        let body = EnvelopeBody {
            source_id: id(ms).to_string(),
            nsp: "/".into(),
            rooms: vec!["r".into()],
            except: vec![],
            data: "[\"e\"]".into(),
            published_at_ms: ms,
            traceparent: None,
        };
        HistoryEntry {
            src: id(ms),
            envelope: Envelope {
                version: 1,
                seq,
                body,
            },
        }
    }

    fn topic(base: Position, last: Position, ahead: Vec<StreamId>) -> TopicPosition {
        TopicPosition {
            room: Some("r".into()),
            base,
            last,
            ahead,
            late: vec![],
        }
    }

    #[test]
    fn late_repairs_follow_send_order() {
        // Message 40 was lost on pub/sub and repaired (send order 7) after messages up to 90 had
        // been sent; message 45 was repaired right after it (order 8).
        let late = |ms, order| LateDelivery {
            src: id(ms),
            high: id(90),
            order,
        };
        let mut t = topic(pos(0, 0), pos(9, 95), vec![]);
        t.late = vec![late(40, 7), late(45, 8)];
        let unreceived = |x: StreamId| {
            let topics = [(Arc::from("c"), &t)];
            late_unreceived(
                &t,
                Some(x),
                reading_point(&topics, Some(x)),
                offset_order(&topics, Some(x)),
            )
        };
        assert_eq!(
            unreceived(id(60)),
            vec![id(40), id(45)],
            "X=60 was sent before the repair"
        );
        assert!(unreceived(id(91)).is_empty(), "X=91 came after the repair");
        assert!(
            unreceived(id(30)).is_empty(),
            "after X anyway: read with the rest"
        );
        assert!(
            late_unreceived(&t, None, None, None).is_empty(),
            "no offset: everything since the join is read"
        );
        // X is the repaired 45 itself: 40 was sent before it.
        let topics = [(Arc::from("c"), &t)];
        let x_order = offset_order(&topics, Some(id(45)));
        assert_eq!(x_order, Some(8));
        assert!(unreceived(id(45)).is_empty());
        // X is the repaired 40: 45 was sent after it, and is now before the reading point (90).
        assert_eq!(unreceived(id(40)), vec![id(45)]);
    }

    #[test]
    fn an_offset_delivered_late_reads_from_what_was_sent_before_it() {
        // 40 was delivered late, after messages up to 90 (of other topics, and 50-90 here).
        let mut t = topic(pos(0, 0), pos(9, 95), vec![]);
        t.late = vec![LateDelivery {
            src: id(40),
            high: id(90),
            order: 7,
        }];
        let topics = [(Arc::from("c"), &t)];
        assert_eq!(
            reading_point(&topics, Some(id(40))),
            Some(id(90)),
            "the client with offset 40 has everything up to 90 that was not late"
        );
        assert_eq!(reading_point(&topics, Some(id(60))), Some(id(60)));
        assert_eq!(reading_point(&topics, None), None);
        // So the replay reads after 90: what came after, not 50-90 again.
        let at = entry(8, 90);
        let read = vec![entry(9, 95)];
        assert_eq!(
            seqs(topic_replay(&t, &Plan::Offset, Some(&at), read, 9, 100)),
            Some((9, vec![9]))
        );
    }

    fn seqs(r: Option<(Position, Vec<HistoryEntry>)>) -> Option<(u64, Vec<u64>)> {
        r.map(|(end, e)| (end.seq, e.iter().map(|e| e.envelope.seq).collect()))
    }

    #[test]
    fn everything_sent_was_received_replays_what_came_after_last() {
        let t = topic(pos(2, 20), pos(5, 50), vec![]);
        let read = vec![entry(6, 60), entry(7, 70)];
        assert_eq!(
            seqs(topic_replay(&t, &Plan::Last, None, read, 7, 100)),
            Some((7, vec![6, 7]))
        );
        assert_eq!(
            seqs(topic_replay(&t, &Plan::Last, None, vec![], 5, 100)),
            Some((5, vec![])),
            "nothing new"
        );
    }

    #[test]
    fn in_flight_messages_after_the_offset_are_replayed() {
        // Sent up to seq 5; the client's offset is the message with seq 3 (src 30).
        let t = topic(pos(0, 0), pos(5, 50), vec![]);
        let at = entry(3, 30);
        let read = vec![entry(4, 40), entry(5, 50), entry(6, 60)];
        assert_eq!(
            seqs(topic_replay(&t, &Plan::Offset, Some(&at), read, 6, 100)),
            Some((6, vec![4, 5, 6]))
        );
    }

    #[test]
    fn an_offset_from_before_the_join_replays_from_the_join() {
        // Joined at seq 4; the client's last offset (any room) predates that.
        let t = topic(pos(4, 40), pos(6, 60), vec![]);
        let at = entry(2, 20);
        let read = vec![entry(3, 30), entry(4, 40), entry(5, 50), entry(6, 60)];
        assert_eq!(
            seqs(topic_replay(&t, &Plan::Offset, Some(&at), read, 6, 100)),
            Some((6, vec![5, 6]))
        );
    }

    #[test]
    fn nothing_received_replays_everything_since_the_join() {
        let t = topic(pos(4, 40), pos(5, 50), vec![]);
        let read = vec![entry(5, 50)];
        assert_eq!(
            seqs(topic_replay(&t, &Plan::Base, None, read, 5, 100)),
            Some((5, vec![5]))
        );
    }

    #[test]
    fn trimmed_or_expired_history_means_a_fresh_session() {
        let t = topic(pos(0, 0), pos(5, 50), vec![]);
        assert_eq!(
            seqs(topic_replay(
                &t,
                &Plan::Last,
                None,
                vec![entry(8, 80)],
                8,
                100
            )),
            None,
            "6 and 7 trimmed"
        );
        assert_eq!(
            seqs(topic_replay(&t, &Plan::Last, None, vec![], 9, 100)),
            None,
            "history expired, seq moved on"
        );
        let read = (6..=10).map(|s| entry(s, s * 10)).collect();
        assert_eq!(
            seqs(topic_replay(&t, &Plan::Last, None, read, 10, 3)),
            None,
            "more than the cap"
        );
    }

    #[test]
    fn multi_room_messages_delivered_through_another_room_are_not_sent_again() {
        let t = topic(pos(0, 0), pos(5, 50), vec![id(60)]);
        let read = vec![entry(6, 60), entry(7, 70)];
        assert_eq!(
            seqs(topic_replay(&t, &Plan::Last, None, read, 7, 100)),
            Some((7, vec![7]))
        );
    }
}
