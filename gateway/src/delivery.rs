//! Turns an envelope received on a topic channel into one Socket.IO packet and writes the same
//! bytes to every local recipient. Messages first pass the orderer (`order`), which releases
//! them in publish order across the fanout's partitions. Keeps each topic's sequence contiguous:
//! a duplicate is dropped, a gap is filled from the topic's history before the message that
//! revealed it.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use crate::eio::Message;
use redis::aio::ConnectionManager;
use roomcast_shared::wire::{
    Envelope, EnvelopeBody, KeySpace, LateDelivery, Position, Progress, StreamId, Topic,
};
use tokio::{sync::watch, time::Instant};

use crate::{
    history,
    order::{Held, Orderer},
    replay::Buffered,
    rooms::{LocalRooms, TopicEntry},
    sio::packet,
    stats::GatewayStats,
};

/// Source ids of recent multi-room deliveries. A request to rooms `[a, b]` arrives once per
/// room channel; the first copy is delivered to the members of every target room and the later
/// copies are dropped, so a socket in both rooms gets it once. The copies are published back to
/// back, so a small window is enough.
struct RecentIds {
    order: VecDeque<StreamId>,
    set: HashSet<StreamId>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            order: VecDeque::with_capacity(capacity),
            set: HashSet::with_capacity(capacity),
            capacity,
        }
    }

    /// True the first time an id is seen.
    fn first_sighting(&mut self, id: StreamId) -> bool {
        if self.set.contains(&id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id);
        self.set.insert(id);
        true
    }
}

/// The EVENT packet for an envelope: `2[<nsp>,]["event",...args]`, with the offset appended as
/// the last argument when recovery is on (what the official client remembers and sends back).
pub(crate) fn event_packet(body: &EnvelopeBody, offset: Option<StreamId>) -> Message {
    match offset {
        None => packet::encode_event(&body.nsp, &body.data).into(),
        Some(src) => {
            // `data` is a validated JSON array text: insert before its closing bracket.
            let inner = body.data.strip_suffix(']').unwrap_or(&body.data);
            let data = format!("{inner},\"{src}\"]");
            packet::encode_event(&body.nsp, &data).into()
        }
    }
}

/// Outcome counters of one delivery, for logs (and metrics later).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) sockets: usize,
    pub(crate) dropped: usize,
    /// Held back for sockets whose recovery replay is still being written.
    pub(crate) buffered: usize,
    /// Sent after a message with a larger source id.
    pub(crate) late: bool,
}

/// What a message needs before it can be delivered.
enum Verdict {
    Deliver,
    Duplicate,
    /// Messages after `after` and before this one are missing.
    Gap {
        after: Position,
    },
    /// Nobody here holds the topic any more.
    Gone,
}

/// The synchronous part of delivery: sequence checks and writing to local sockets.
pub(crate) struct Dispatcher {
    rooms: Arc<LocalRooms>,
    keys: KeySpace,
    recent: RecentIds,
    /// Append offsets (recovery on) and repair gaps from history.
    recovery: bool,
    /// The largest source id delivered so far (on any topic): the send order's high mark.
    high: StreamId,
    /// Messages delivered so far: each message's place in this gateway's send order.
    sent: u64,
}

/// Delivery with history access for gap repair; owned by the subscription's reading task.
pub(crate) struct Delivery {
    dispatch: Dispatcher,
    commands: ConnectionManager,
    stats: Arc<GatewayStats>,
    /// `None`: ordering off (`DELIVERY_ORDER_WAIT_MS=0`), messages go as they arrive.
    order: Option<Orderer>,
    /// How far messages were released, for recoveries that must wait for it.
    released: watch::Sender<StreamId>,
}

impl Dispatcher {
    pub(crate) fn new(rooms: Arc<LocalRooms>, keys: KeySpace, recovery: bool) -> Self {
        Self {
            rooms,
            keys,
            recent: RecentIds::new(16_384),
            recovery,
            high: StreamId::default(),
            sent: 0,
        }
    }

    /// Decodes a message and decides what it needs.
    #[cfg(test)]
    fn check(&self, channel: &str, payload: &[u8]) -> Option<(Envelope, StreamId, Verdict)> {
        let (envelope, src) = decode(channel, payload)?;
        let verdict = self.verdict(channel, &envelope, src);
        Some((envelope, src, verdict))
    }

    /// Decides what a decoded message needs.
    fn verdict(&self, channel: &str, envelope: &Envelope, src: StreamId) -> Verdict {
        self.rooms.with_topics(|topics| match topics.get(channel) {
            None => Verdict::Gone,
            Some(entry) => match entry.last.get() {
                // Source ids are time-based and keep growing even when Redis lost its data and
                // a topic's seq started again at 1: a lower seq with a newer source id is such a
                // restart, not a duplicate.
                Some(last) if envelope.seq <= last.seq && src <= last.src => Verdict::Duplicate,
                Some(last) if envelope.seq <= last.seq => {
                    tracing::warn!(
                        channel,
                        seq = envelope.seq,
                        last = last.seq,
                        "topic sequence restarted (Redis lost its data?); following it"
                    );
                    Verdict::Deliver
                }
                Some(last) if envelope.seq > last.seq + 1 && self.recovery => {
                    Verdict::Gap { after: last }
                }
                _ => Verdict::Deliver,
            },
        })
    }

    /// Delivers a message that is next in its topic, and advances the topic's position.
    pub(crate) fn deliver_in_order(
        &mut self,
        channel: &str,
        envelope: &Envelope,
        src: StreamId,
    ) -> Delivered {
        let body = &envelope.body;
        // A traced message (the publisher sent a traceparent) gets a span in its trace; the rest
        // stay at debug, which costs nothing unless enabled.
        let span = match &body.traceparent {
            Some(traceparent) => {
                let span = tracing::info_span!("deliver", source_id = %body.source_id, seq = envelope.seq, channel);
                roomcast_shared::telemetry::continue_trace(&span, traceparent);
                span
            }
            None => {
                tracing::debug_span!("deliver", source_id = %body.source_id, seq = envelope.seq)
            }
        };
        let _span = span.entered();
        let first_copy = body.rooms.len() <= 1 || self.recent.first_sighting(src);
        // Sent after a message with a larger source id (a gap repair, or a release the orderer
        // could not wait for): recovery must know, for every topic whose members get it now.
        let late = (first_copy && src < self.high).then_some(self.high);
        self.high = self.high.max(src);
        self.sent += 1;
        let order = self.sent;
        // Encoded once; every recipient gets a clone of the same reference-counted bytes.
        let packet = event_packet(body, self.recovery.then_some(src));
        let channel_arc: Arc<str> = channel.into();
        let mut out = Delivered {
            late: late.is_some(),
            ..Delivered::default()
        };
        self.rooms.with_topics(|topics| {
            let Some(entry) = topics.get(channel) else {
                return;
            };
            entry.last.set(Position {
                seq: envelope.seq,
                src,
            });
            entry.arrived(src);
            if !first_copy {
                return;
            }
            let late = late.map(|high| LateDelivery { src, high, order });
            let mut send = |entry: &TopicEntry, seen: Option<&mut HashSet<Arc<str>>>| {
                for (id, member) in &entry.members {
                    if let Some(seen) = seen.as_ref()
                        && seen.contains(id)
                    {
                        continue;
                    }
                    if !body.except.is_empty() && member.socket.in_any(&body.except) {
                        continue;
                    }
                    // A member has everything up to its base (where it joined, or where its
                    // recovery replay ended): a gap repair that lands after a replay must not
                    // send the replayed messages again.
                    if member.base.is_some_and(|base| src <= base.src) {
                        continue;
                    }
                    let packet = match &member.replay {
                        Some(buffer) => {
                            let item = Buffered {
                                channel: channel_arc.clone(),
                                seq: envelope.seq,
                                src,
                                packet: packet.clone(),
                            };
                            match buffer.offer(item) {
                                Some(packet) => packet,
                                None => {
                                    out.buffered += 1;
                                    continue;
                                }
                            }
                        }
                        None => packet.clone(),
                    };
                    match member.socket.emit(packet) {
                        Ok(()) => out.sockets += 1,
                        Err(_) => out.dropped += 1,
                    }
                }
                if let Some(seen) = seen {
                    seen.extend(entry.members.keys().cloned());
                }
            };
            if body.rooms.len() > 1 {
                let mut seen: HashSet<Arc<str>> = HashSet::new();
                for room in &body.rooms {
                    let target = self.keys.room(&body.nsp, room);
                    if let Some(other) = topics.get(target.channel()) {
                        send(other, Some(&mut seen));
                        if let Some(late) = late {
                            other.delivered_late(late);
                        }
                        if target.channel() != channel {
                            // Its members have it now, before that room's own copy arrives.
                            other.delivered_ahead(src);
                        }
                    }
                }
            } else {
                send(entry, None);
                if let Some(late) = late {
                    entry.delivered_late(late);
                }
            }
        });
        tracing::trace!(
            sockets = out.sockets,
            dropped = out.dropped,
            buffered = out.buffered,
            "delivered"
        );
        out
    }
}

/// Decodes an envelope and its source id; `None` (logged) for anything undeliverable.
fn decode(channel: &str, payload: &[u8]) -> Option<(Envelope, StreamId)> {
    let envelope = match Envelope::decode(payload) {
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::warn!(%error, channel, "dropping undecodable envelope");
            return None;
        }
    };
    let Some(src) = StreamId::parse(&envelope.body.source_id) else {
        tracing::warn!(channel, source_id = %envelope.body.source_id, "dropping envelope with a malformed source id");
        return None;
    };
    Some((envelope, src))
}

impl Delivery {
    pub(crate) fn new(
        dispatch: Dispatcher,
        commands: ConnectionManager,
        stats: Arc<GatewayStats>,
        order: Option<Orderer>,
        released: watch::Sender<StreamId>,
    ) -> Self {
        Self {
            dispatch,
            commands,
            stats,
            order,
            released,
        }
    }

    /// Takes one message received on `channel`: delivers it when its turn comes (at once, or
    /// once the fanout partitions caught up), with whatever it lets go too.
    pub(crate) async fn deliver(&mut self, channel: &str, payload: &[u8]) {
        let Some((envelope, src)) = decode(channel, payload) else {
            return;
        };
        let item = Held {
            channel: channel.to_owned(),
            envelope,
            src,
        };
        let now_or_later = match self.order.as_mut() {
            Some(order) => order.push(item, Instant::now()),
            None => Some(item),
        };
        if let Some(item) = now_or_later {
            self.dispatch_one(item).await;
        }
        self.release_ready().await;
    }

    /// A fanout replica announced its progress (`wire::progress`).
    pub(crate) async fn progress(&mut self, payload: &[u8]) {
        let Some(order) = self.order.as_mut() else {
            return;
        };
        match Progress::decode(payload) {
            Ok(progress) => order.progress(&progress),
            Err(error) => {
                tracing::warn!(%error, "undecodable fanout progress message");
                return;
            }
        }
        self.release_ready().await;
    }

    /// When held messages run out of patience (`None`: nothing held).
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.order.as_mut().and_then(Orderer::next_deadline)
    }

    /// Delivers every held message whose turn has come, smallest source id first.
    pub(crate) async fn release_ready(&mut self) {
        loop {
            let next = self.order.as_mut().and_then(|o| o.pop(Instant::now()));
            let Some((item, forced)) = next else { break };
            if forced {
                self.stats.order_forced.inc();
            }
            self.dispatch_one(item).await;
        }
        if let Some(order) = &self.order {
            self.stats.order_held.set(order.held() as u64);
            let upto = order.released_upto();
            self.released.send_if_modified(|released| {
                let newer = upto > *released;
                if newer {
                    *released = upto;
                }
                newer
            });
        }
    }

    /// Delivers one message whose turn it is: after a gap repair if it reveals one.
    async fn dispatch_one(&mut self, item: Held) -> Delivered {
        let Held {
            channel,
            envelope,
            src,
        } = item;
        match self.dispatch.verdict(&channel, &envelope, src) {
            Verdict::Gone | Verdict::Duplicate => return Delivered::default(),
            Verdict::Gap { after } => self.repair(&channel, after, envelope.seq).await,
            Verdict::Deliver => {}
        }
        let out = self.dispatch.deliver_in_order(&channel, &envelope, src);
        if out.late {
            self.stats.late_deliveries.inc();
        }
        if out.sockets > 0 {
            self.stats.events_delivered.add(out.sockets as u64);
            let latency_ms =
                roomcast_shared::clock::unix_ms().saturating_sub(envelope.body.published_at_ms);
            self.stats
                .delivery_latency
                .0
                .observe(latency_ms as f64 / 1000.0);
        }
        out
    }

    /// Fills a gap on `channel`: every message after `after` and before `until` seq, from history.
    async fn repair(&mut self, channel: &str, after: Position, until: u64) {
        let missing = until.saturating_sub(after.seq + 1) as usize;
        let topic = Topic::from_channel(channel);
        let mut pipe = redis::pipe();
        history::range_after(&mut pipe, &topic.history_key(), after.src, missing);
        let entries = match pipe
            .query_async::<Vec<redis::Value>>(&mut self.commands)
            .await
        {
            Ok(mut replies) => history::parse_entries(replies.pop().unwrap_or(redis::Value::Nil)),
            Err(error) => {
                tracing::warn!(%error, channel, "cannot read history to repair a gap; delivering on");
                return;
            }
        };
        // Whatever was delivered so far with a larger source id was sent before these: the
        // dispatcher records them as late, so a recovery knows a client may have an offset past
        // them without having them.
        let mut expected = after.seq + 1;
        for entry in entries
            .into_iter()
            .filter(|e| e.envelope.seq > after.seq && e.envelope.seq < until)
        {
            if entry.envelope.seq != expected {
                break;
            }
            expected += 1;
            let out = self
                .dispatch
                .deliver_in_order(channel, &entry.envelope, entry.src);
            if out.late {
                self.stats.late_deliveries.inc();
            }
            self.stats.gap_messages.inc();
        }
        if expected == until {
            self.stats.gaps_repaired.inc();
            tracing::info!(
                channel,
                from = after.seq + 1,
                to = until - 1,
                "gap on the live path repaired from history"
            );
        } else {
            self.stats.gaps_unrepaired.inc();
            tracing::warn!(
                channel,
                missing_from = expected,
                to = until - 1,
                "gap could not be fully repaired: history no longer has it"
            );
        }
    }

    /// After the subscription connection was re-established: fetch whatever every topic missed
    /// while it was down (the next live message would reveal it too, but a quiet room might
    /// wait a long time for one).
    pub(crate) async fn repair_all(&mut self) {
        if !self.dispatch.recovery {
            return;
        }
        let positioned: Vec<(Arc<str>, Position)> = self.dispatch.rooms.with_topics(|topics| {
            topics
                .iter()
                .filter_map(|(c, e)| e.last.get().map(|p| (c.clone(), p)))
                .collect()
        });
        if positioned.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (channel, _) in &positioned {
            pipe.cmd("HGET")
                .arg(Topic::from_channel(&**channel).meta_key())
                .arg("seq");
        }
        let current: Vec<Option<u64>> = match pipe.query_async(&mut self.commands).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%error, "cannot check topics for messages missed while resubscribing");
                return;
            }
        };
        for ((channel, last), now) in positioned.into_iter().zip(current) {
            if let Some(now) = now
                && now > last.seq
            {
                // Deliver up to and including `now`: repair stops before `until`.
                self.repair(&channel, last, now + 1).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_remember_a_bounded_window() {
        let id = |n| StreamId { ms: n, seq: 0 };
        let mut r = RecentIds::new(2);
        assert!(r.first_sighting(id(1)));
        assert!(!r.first_sighting(id(1)));
        assert!(r.first_sighting(id(2)));
        assert!(r.first_sighting(id(3)));
        assert!(r.first_sighting(id(1)), "evicted ids are forgotten");
        assert_eq!(r.order.len(), 2);
    }

    #[test]
    fn offsets_are_appended_as_the_last_argument() {
        let body = |data: &str| EnvelopeBody {
            source_id: "1-0".into(),
            nsp: "/".into(),
            rooms: vec![],
            except: vec![],
            data: data.into(),
            published_at_ms: 1,
            traceparent: None,
        };
        let src = Some(StreamId { ms: 17, seq: 2 });
        assert_eq!(
            event_packet(&body(r#"["m",{"a":1}]"#), src).as_str(),
            r#"2["m",{"a":1},"17-2"]"#
        );
        assert_eq!(
            event_packet(&body(r#"["m"]"#), src).as_str(),
            r#"2["m","17-2"]"#
        );
        assert_eq!(event_packet(&body(r#"["m"]"#), None).as_str(), r#"2["m"]"#);
    }
}

#[cfg(test)]
mod delivery_tests {
    use super::*;
    use crate::sio::{SioSocket, testing};

    fn envelope(seq: u64, rooms: &[&str], except: &[&str], source_id: &str) -> Vec<u8> {
        let body = EnvelopeBody {
            source_id: source_id.into(),
            nsp: "/".into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            except: except.iter().map(|r| r.to_string()).collect(),
            data: r#"["message",{"text":"hi"}]"#.into(),
            published_at_ms: 1,
            traceparent: None,
        };
        Envelope::encode(seq, &body.encode().expect("encodes")).expect("encodes")
    }

    fn join(rooms: &LocalRooms, keys: &KeySpace, socket: &Arc<SioSocket>, room: &str) {
        socket.add_room(&Arc::from(room));
        rooms.add(keys.room("/", room).channel(), socket, None);
    }

    fn deliver(d: &mut Dispatcher, channel: &str, payload: &[u8]) -> Delivered {
        let (env, src, verdict) = d.check(channel, payload).expect("decodes");
        match verdict {
            Verdict::Deliver => d.deliver_in_order(channel, &env, src),
            _ => Delivered::default(),
        }
    }

    #[tokio::test]
    async fn one_encoding_shared_by_every_recipient() {
        let keys = KeySpace::new("p");
        let rooms = Arc::new(LocalRooms::new());
        let (mut a, mut b, mut outsider) = (
            testing::socket("/"),
            testing::socket("/"),
            testing::socket("/"),
        );
        join(&rooms, &keys, &a.socket, "r");
        join(&rooms, &keys, &b.socket, "r");
        join(&rooms, &keys, &outsider.socket, "other");
        let mut d = Dispatcher::new(rooms, keys.clone(), false);
        let out = deliver(
            &mut d,
            keys.room("/", "r").channel(),
            &envelope(1, &["r"], &[], "1-0"),
        );
        assert_eq!(
            out,
            Delivered {
                sockets: 2,
                dropped: 0,
                buffered: 0,
                late: false
            }
        );
        let (pa, pb) = (a.drain().await, b.drain().await);
        assert_eq!(pa.len(), 1);
        assert_eq!(pa[0].as_str(), r#"2["message",{"text":"hi"}]"#);
        assert_eq!(
            pa[0].as_bytes().as_ptr(),
            pb[0].as_bytes().as_ptr(),
            "same buffer, not a copy per socket"
        );
        assert!(outsider.drain().await.is_empty());
    }

    #[tokio::test]
    async fn multi_room_request_reaches_each_socket_once_and_honours_except() {
        let keys = KeySpace::new("p");
        let rooms = Arc::new(LocalRooms::new());
        let (mut both, mut only_b, mut banned) = (
            testing::socket("/"),
            testing::socket("/"),
            testing::socket("/"),
        );
        join(&rooms, &keys, &both.socket, "a");
        join(&rooms, &keys, &both.socket, "b");
        join(&rooms, &keys, &only_b.socket, "b");
        join(&rooms, &keys, &banned.socket, "a");
        join(&rooms, &keys, &banned.socket, "x");
        let mut d = Dispatcher::new(rooms, keys.clone(), true);
        let env = envelope(1, &["a", "b"], &["x"], "7-0");
        deliver(&mut d, keys.room("/", "a").channel(), &env);
        deliver(&mut d, keys.room("/", "b").channel(), &env);
        let got = both.drain().await;
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].as_str(),
            r#"2["message",{"text":"hi"},"7-0"]"#,
            "offset appended with recovery on"
        );
        assert_eq!(only_b.drain().await.len(), 1);
        assert!(banned.drain().await.is_empty());
    }

    #[tokio::test]
    async fn a_member_gets_nothing_at_or_before_its_base() {
        let keys = KeySpace::new("p");
        let rooms = Arc::new(LocalRooms::new());
        let (mut recovered, mut other) = (testing::socket("/"), testing::socket("/"));
        join(&rooms, &keys, &recovered.socket, "r");
        join(&rooms, &keys, &other.socket, "r");
        let channel = keys.room("/", "r").into_channel();
        // The recovered socket's replay ended at seq 2 (source id 2-0).
        rooms.set_base(
            &channel,
            recovered.socket.id(),
            Position {
                seq: 2,
                src: StreamId { ms: 2, seq: 0 },
            },
        );
        let mut d = Dispatcher::new(rooms, keys, true);
        for (seq, id) in [(1, "1-0"), (2, "2-0"), (3, "3-0")] {
            deliver(&mut d, &channel, &envelope(seq, &["r"], &[], id));
        }
        assert_eq!(
            recovered.drain().await.len(),
            1,
            "only what came after its replay"
        );
        assert_eq!(other.drain().await.len(), 3);
    }

    #[tokio::test]
    async fn a_message_sent_after_a_newer_one_is_recorded_late_in_its_topic() {
        let keys = KeySpace::new("p");
        let rooms = Arc::new(LocalRooms::new());
        let mut a = testing::socket("/");
        join(&rooms, &keys, &a.socket, "x");
        join(&rooms, &keys, &a.socket, "y");
        let (x, y) = (keys.room("/", "x"), keys.room("/", "y"));
        let mut d = Dispatcher::new(rooms.clone(), keys, true);
        assert!(!deliver(&mut d, y.channel(), &envelope(1, &["y"], &[], "30-0")).late);
        assert!(deliver(&mut d, x.channel(), &envelope(1, &["x"], &[], "20-0")).late);
        assert!(!deliver(&mut d, x.channel(), &envelope(2, &["x"], &[], "40-0")).late);
        assert_eq!(a.drain().await.len(), 3);
        let left_x = rooms.remove(x.channel(), &a.socket).expect("member of x");
        assert_eq!(
            left_x.late,
            vec![LateDelivery {
                src: StreamId { ms: 20, seq: 0 },
                high: StreamId { ms: 30, seq: 0 },
                order: 2
            }]
        );
        let left_y = rooms.remove(y.channel(), &a.socket).expect("member of y");
        assert!(left_y.late.is_empty());
    }

    #[tokio::test]
    async fn duplicates_and_gaps_are_recognised_by_seq() {
        let keys = KeySpace::new("p");
        let rooms = Arc::new(LocalRooms::new());
        let mut a = testing::socket("/");
        join(&rooms, &keys, &a.socket, "r");
        let channel = keys.room("/", "r").into_channel();
        let mut d = Dispatcher::new(rooms, keys, true);
        assert_eq!(
            deliver(&mut d, &channel, &envelope(1, &["r"], &[], "1-0")).sockets,
            1
        );
        assert!(matches!(
            d.check(&channel, &envelope(1, &["r"], &[], "1-0")),
            Some((_, _, Verdict::Duplicate))
        ));
        assert!(
            matches!(d.check(&channel, &envelope(3, &["r"], &[], "3-0")), Some((_, _, Verdict::Gap { after })) if after.seq == 1)
        );
        assert!(d.check(&channel, b"junk").is_none());
        assert!(
            matches!(
                d.check(&channel, &envelope(1, &["r"], &[], "9-0")),
                Some((_, _, Verdict::Deliver))
            ),
            "a lower seq with a newer source id is a restarted sequence"
        );
        assert_eq!(a.drain().await.len(), 1);
    }
}
