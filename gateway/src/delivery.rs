//! Turns an envelope received on a topic channel into one Socket.IO packet and writes the same
//! bytes to every local recipient.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use engineioxide::Str;
use roomcast_shared::wire::{Envelope, KeySpace};

use crate::{rooms::LocalRooms, sio::SioSocket, sio::packet};

/// Source ids of recent multi-room deliveries. A request to rooms `[a, b]` arrives once per
/// room channel; the first copy is delivered to the members of every target room and the later
/// copies are dropped, so a socket in both rooms gets it once. The copies are published back to
/// back, so a small window is enough.
struct RecentIds {
    order: VecDeque<Arc<str>>,
    set: HashSet<Arc<str>>,
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
    fn first_sighting(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        let id: Arc<str> = id.into();
        self.order.push_back(id.clone());
        self.set.insert(id);
        true
    }
}

/// Outcome counters of one delivery, for logs (and metrics later).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) sockets: usize,
    pub(crate) dropped: usize,
}

pub(crate) struct Delivery {
    rooms: Arc<LocalRooms>,
    keys: KeySpace,
    recent: RecentIds,
}

impl Delivery {
    pub(crate) fn new(rooms: Arc<LocalRooms>, keys: KeySpace) -> Self {
        Self {
            rooms,
            keys,
            recent: RecentIds::new(16_384),
        }
    }

    /// Delivers one message received on `channel`.
    pub(crate) fn deliver(&mut self, channel: &str, payload: &[u8]) -> Delivered {
        let envelope = match Envelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(%error, channel, "dropping undecodable envelope");
                return Delivered::default();
            }
        };
        let body = &envelope.body;
        let _span =
            tracing::debug_span!("deliver", source_id = %body.source_id, seq = envelope.seq)
                .entered();
        if body.rooms.len() > 1 && !self.recent.first_sighting(&body.source_id) {
            return Delivered::default();
        }
        // Encoded once; every recipient gets a clone of the same reference-counted bytes.
        let packet: Str = packet::encode_event(&body.nsp, &body.data).into();
        let except = &body.except;
        let mut out = Delivered::default();
        let mut send = |socket: &Arc<SioSocket>| {
            if !except.is_empty() && socket.in_any(except) {
                return;
            }
            match socket.emit(packet.clone()) {
                Ok(()) => out.sockets += 1,
                Err(_) => out.dropped += 1,
            }
        };
        self.rooms.with_topics(|topics| {
            if body.rooms.len() > 1 {
                let mut seen: HashSet<&str> = HashSet::new();
                for room in &body.rooms {
                    let topic = self.keys.room(&body.nsp, room);
                    for (id, socket) in topics.get(topic.channel()).into_iter().flatten() {
                        if seen.insert(id) {
                            send(socket);
                        }
                    }
                }
            } else {
                for socket in topics.get(channel).into_iter().flat_map(|m| m.values()) {
                    send(socket);
                }
            }
        });
        tracing::trace!(sockets = out.sockets, dropped = out.dropped, "delivered");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_remember_a_bounded_window() {
        let mut r = RecentIds::new(2);
        assert!(r.first_sighting("1-0"));
        assert!(!r.first_sighting("1-0"));
        assert!(r.first_sighting("2-0"));
        assert!(r.first_sighting("3-0"));
        assert!(r.first_sighting("1-0"), "evicted ids are forgotten");
        assert_eq!(r.order.len(), 2);
    }
}

#[cfg(test)]
mod delivery_tests {
    use super::*;
    use crate::sio::testing;
    use roomcast_shared::wire::EnvelopeBody;

    fn envelope(rooms: &[&str], except: &[&str], source_id: &str) -> Vec<u8> {
        let body = EnvelopeBody {
            source_id: source_id.into(),
            nsp: "/".into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            except: except.iter().map(|r| r.to_string()).collect(),
            data: r#"["message",{"text":"hi"}]"#.into(),
            published_at_ms: 1,
            traceparent: None,
        };
        Envelope::encode(1, &body.encode().expect("encodes")).expect("encodes")
    }

    fn join(rooms: &LocalRooms, keys: &KeySpace, socket: &Arc<SioSocket>, room: &str) {
        socket.add_room(&Arc::from(room));
        rooms.add(keys.room("/", room).channel(), socket);
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
        let mut delivery = Delivery::new(rooms, keys.clone());
        let out = delivery.deliver(keys.room("/", "r").channel(), &envelope(&["r"], &[], "1-0"));
        assert_eq!(
            out,
            Delivered {
                sockets: 2,
                dropped: 0
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
        let mut delivery = Delivery::new(rooms, keys.clone());
        let env = envelope(&["a", "b"], &["x"], "7-0");
        delivery.deliver(keys.room("/", "a").channel(), &env);
        delivery.deliver(keys.room("/", "b").channel(), &env);
        assert_eq!(both.drain().await.len(), 1);
        assert_eq!(only_b.drain().await.len(), 1);
        assert!(banned.drain().await.is_empty());
    }

    #[tokio::test]
    async fn garbage_on_a_channel_is_dropped_without_delivery() {
        let keys = KeySpace::new("p");
        let rooms = Arc::new(LocalRooms::new());
        let mut a = testing::socket("/");
        join(&rooms, &keys, &a.socket, "r");
        let mut delivery = Delivery::new(rooms, keys.clone());
        assert_eq!(
            delivery.deliver(keys.room("/", "r").channel(), b"not msgpack"),
            Delivered::default()
        );
        assert!(a.drain().await.is_empty());
    }
}
