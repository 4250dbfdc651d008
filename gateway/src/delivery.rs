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
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
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
