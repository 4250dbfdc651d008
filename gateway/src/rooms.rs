//! The gateway's local room registry: which local sockets are in which topic (room or whole
//! namespace), keyed by the topic's channel name. Every change bumps a generation and marks the
//! topic dirty; the `subscriptions` task applies dirty topics to Redis in batches and publishes
//! the generation it has applied, which is what `join` waits for before it acks.
//!
//! For recovery each topic also carries the position (seq, source id) of the last message this
//! gateway delivered on it, and each member the position the topic had when it joined: what a
//! session needs to know which messages were sent to a socket.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use roomcast_shared::wire::{LateDelivery, Position, StreamId};
use tokio::sync::{Notify, watch};

use crate::{replay::ReplayBuffer, sio::SioSocket};

/// One local socket in a topic.
pub(crate) struct Member {
    pub(crate) socket: Arc<SioSocket>,
    /// The topic's position when the socket joined; `None` while the topic's position was not
    /// known yet (a fresh subscription), meaning the position it is initialised with.
    pub(crate) base: Option<Position>,
    /// Set while the socket is being recovered: live messages wait here until the replay is
    /// written.
    pub(crate) replay: Option<Arc<ReplayBuffer>>,
}

/// Local members of one topic, by socket id.
pub(crate) type Members = HashMap<Arc<str>, Member>;

/// The last delivered position of a topic. Written by the delivery task (under the registry's
/// read lock, as the only writer) and by the reconciler (under the write lock), so a reader
/// holding the write lock sees a consistent value.
#[derive(Default)]
pub(crate) struct PositionCell {
    known: AtomicBool,
    seq: AtomicU64,
    ms: AtomicU64,
    n: AtomicU64,
}

impl PositionCell {
    pub(crate) fn get(&self) -> Option<Position> {
        self.known.load(Ordering::Acquire).then(|| Position {
            seq: self.seq.load(Ordering::Relaxed),
            src: StreamId {
                ms: self.ms.load(Ordering::Relaxed),
                seq: self.n.load(Ordering::Relaxed),
            },
        })
    }

    pub(crate) fn set(&self, position: Position) {
        self.seq.store(position.seq, Ordering::Relaxed);
        self.ms.store(position.src.ms, Ordering::Relaxed);
        self.n.store(position.src.seq, Ordering::Relaxed);
        self.known.store(true, Ordering::Release);
    }
}

/// A topic with local members.
#[derive(Default)]
pub(crate) struct TopicEntry {
    pub(crate) members: Members,
    pub(crate) last: PositionCell,
    /// The position the topic was initialised with when first subscribed.
    initial: Option<Position>,
    /// Multi-room messages already delivered to this topic's members through another room's
    /// copy, whose own copy has not arrived yet (see `Departure::ahead`).
    ahead: Mutex<Vec<StreamId>>,
    /// Messages delivered out of publish order by a gap repair, with the largest source id sent
    /// before them (see `Departure::late`).
    late: Mutex<Vec<LateDelivery>>,
}

/// Most entries kept in `TopicEntry::ahead` and `TopicEntry::late`; both record short-lived
/// out-of-order deliveries, so this only bounds a pathological case.
const MAX_OUT_OF_ORDER: usize = 256;

impl TopicEntry {
    fn ahead(&self) -> std::sync::MutexGuard<'_, Vec<StreamId>> {
        self.ahead.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A multi-room message reached this topic's members through another room's copy.
    pub(crate) fn delivered_ahead(&self, src: StreamId) {
        let mut ahead = self.ahead();
        if ahead.len() == MAX_OUT_OF_ORDER {
            ahead.remove(0);
        }
        ahead.push(src);
    }

    /// A gap repair delivered `src` after messages up to `high` had been sent.
    pub(crate) fn delivered_late(&self, delivery: LateDelivery) {
        let mut late = self.late.lock().unwrap_or_else(PoisonError::into_inner);
        if late.len() == MAX_OUT_OF_ORDER {
            late.remove(0);
        }
        late.push(delivery);
    }

    /// This topic's own copy of a message arrived.
    pub(crate) fn arrived(&self, src: StreamId) {
        let mut ahead = self.ahead();
        if !ahead.is_empty() {
            ahead.retain(|s| *s != src);
        }
    }
}

/// What a socket leaving a topic takes with it, for its recovery session.
pub(crate) struct Departure {
    pub(crate) base: Option<Position>,
    pub(crate) last: Option<Position>,
    /// Delivered although after `last` (multi-room messages whose copy for this topic had not
    /// arrived): a replay must not send them again.
    pub(crate) ahead: Vec<StreamId>,
    /// Delivered out of publish order by gap repairs: `(message, largest source id sent before)`.
    pub(crate) late: Vec<LateDelivery>,
}

#[derive(Default)]
struct Inner {
    topics: HashMap<Arc<str>, TopicEntry>,
    generation: u64,
    dirty: HashSet<Arc<str>>,
    /// Set when Redis may have lost our membership (reconnect, reaped by others): the next
    /// reconcile rewrites every topic.
    full_resync: bool,
}

/// What the reconciler must apply: topics whose local count changed, with the new count.
pub(crate) struct Changes {
    pub(crate) generation: u64,
    pub(crate) full: bool,
    pub(crate) topics: Vec<(Arc<str>, usize)>,
}

pub(crate) struct LocalRooms {
    inner: RwLock<Inner>,
    changed: Notify,
    applied: watch::Sender<u64>,
}

impl LocalRooms {
    pub(crate) fn new() -> Self {
        Self {
            inner: RwLock::default(),
            changed: Notify::new(),
            applied: watch::Sender::new(0),
        }
    }

    // The registry holds plain maps; a panic elsewhere while holding the lock leaves them
    // consistent enough to keep serving, so poisoning is ignored.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a socket to a topic (with a replay buffer while it is being recovered). Returns the
    /// generation to wait for before the membership is known to Redis.
    pub(crate) fn add(
        &self,
        channel: &str,
        socket: &Arc<SioSocket>,
        replay: Option<Arc<ReplayBuffer>>,
    ) -> u64 {
        let mut inner = self.write();
        let entry = match inner.topics.get_mut(channel) {
            Some(entry) => entry,
            None => inner.topics.entry(Arc::from(channel)).or_default(),
        };
        let base = entry.last.get();
        let member = Member {
            socket: socket.clone(),
            base,
            replay,
        };
        if entry.members.insert(socket.id().clone(), member).is_none() {
            Self::touch(&mut inner, channel);
        }
        let generation = inner.generation;
        drop(inner);
        self.changed.notify_one();
        generation
    }

    /// Removes a socket from a topic; dropping the last member schedules the unsubscribe.
    /// Returns the socket's positions in the topic, if it was a member.
    pub(crate) fn remove(&self, channel: &str, socket: &SioSocket) -> Option<Departure> {
        let mut inner = self.write();
        let entry = inner.topics.get_mut(channel)?;
        // A recovered socket reuses its id: if it came back here before this gateway processed
        // the old connection's close, the entry is the new socket's and must stay.
        if !entry
            .members
            .get(socket.id())
            .is_some_and(|m| std::ptr::eq(&*m.socket, socket))
        {
            return None;
        }
        let member = entry.members.remove(socket.id())?;
        let departure = Departure {
            base: member.base.or(entry.initial),
            last: entry.last.get(),
            ahead: entry.ahead().clone(),
            late: entry
                .late
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        };
        if entry.members.is_empty() {
            inner.topics.remove(channel);
        }
        Self::touch(&mut inner, channel);
        drop(inner);
        self.changed.notify_one();
        Some(departure)
    }

    /// Records where a recovered socket stands in a topic once its replay is written.
    pub(crate) fn set_base(&self, channel: &str, socket_id: &str, base: Position) {
        let mut inner = self.write();
        if let Some(member) = inner
            .topics
            .get_mut(channel)
            .and_then(|e| e.members.get_mut(socket_id))
        {
            member.base = Some(base);
        }
    }

    /// Topics among `channels` whose position is not known yet (fresh subscriptions).
    pub(crate) fn unpositioned(&self, channels: &[Arc<str>]) -> Vec<Arc<str>> {
        let inner = self.read();
        channels
            .iter()
            .filter(|c| {
                inner
                    .topics
                    .get(&***c)
                    .is_some_and(|e| e.last.get().is_none())
            })
            .cloned()
            .collect()
    }

    /// Sets the starting position of a freshly subscribed topic (read from Redis before the
    /// SUBSCRIBE, so a message published in between shows up as a gap and is repaired).
    pub(crate) fn init_position(&self, channel: &str, position: Position) {
        let mut inner = self.write();
        if let Some(entry) = inner.topics.get_mut(channel)
            && entry.last.get().is_none()
        {
            entry.last.set(position);
            entry.initial = Some(position);
        }
    }

    fn touch(inner: &mut Inner, channel: &str) {
        inner.generation += 1;
        if !inner.dirty.contains(channel) {
            let key = inner
                .topics
                .get_key_value(channel)
                .map_or_else(|| Arc::from(channel), |(k, _)| k.clone());
            inner.dirty.insert(key);
        }
    }

    /// The current generation: waiting for it covers every change made so far.
    pub(crate) fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Asks the reconciler to rewrite every topic (after Redis may have lost our state).
    pub(crate) fn request_full_resync(&self) {
        let mut inner = self.write();
        inner.full_resync = true;
        inner.generation += 1;
        drop(inner);
        self.changed.notify_one();
    }

    /// Takes the pending changes (all topics when `full` or a full resync was requested).
    pub(crate) fn take_changes(&self, full: bool) -> Changes {
        let mut inner = self.write();
        let full = full || std::mem::take(&mut inner.full_resync);
        let dirty = std::mem::take(&mut inner.dirty);
        // Dirty topics first (with count 0 for those now empty), then, on a full resync,
        // every other topic we hold.
        let mut topics: Vec<(Arc<str>, usize)> = dirty
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    inner.topics.get(k).map_or(0, |e| e.members.len()),
                )
            })
            .collect();
        if full {
            topics.extend(
                inner
                    .topics
                    .iter()
                    .filter(|(k, _)| !dirty.contains(*k))
                    .map(|(k, e)| (k.clone(), e.members.len())),
            );
        }
        Changes {
            generation: inner.generation,
            full,
            topics,
        }
    }

    /// Resolves once the reconciler has applied at least `generation`.
    pub(crate) async fn wait_applied(&self, generation: u64) {
        let mut rx = self.applied.subscribe();
        // The sender lives as long as `self`, so this only errs if it is dropped, i.e. never
        // while a caller holds `&self`.
        let _ = rx.wait_for(|applied| *applied >= generation).await;
    }

    pub(crate) fn mark_applied(&self, generation: u64) {
        self.applied.send_if_modified(|applied| {
            let newer = generation > *applied;
            if newer {
                *applied = generation;
            }
            newer
        });
    }

    /// Resolves when something changed since the last `take_changes`.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The local members of a topic.
    pub(crate) fn members(&self, channel: &str) -> Vec<Arc<SioSocket>> {
        self.read()
            .topics
            .get(channel)
            .map(|t| t.members.values().map(|m| m.socket.clone()).collect())
            .unwrap_or_default()
    }

    /// Runs `f` on the topics under a read lock. `f` must not block or await.
    pub(crate) fn with_topics<R>(&self, f: impl FnOnce(&HashMap<Arc<str>, TopicEntry>) -> R) -> R {
        f(&self.read().topics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sio::testing;

    #[tokio::test]
    async fn changes_are_batched_with_counts_and_generations() {
        let rooms = LocalRooms::new();
        let a = testing::socket("/");
        let b = testing::socket("/");
        let g1 = rooms.add("ch:x", &a.socket, None);
        let g2 = rooms.add("ch:x", &b.socket, None);
        assert!(g2 > g1);
        assert_eq!(
            rooms.add("ch:x", &a.socket, None),
            g2,
            "re-adding changes nothing"
        );
        let changes = rooms.take_changes(false);
        assert_eq!(changes.generation, g2);
        assert_eq!(changes.topics, vec![(Arc::from("ch:x"), 2)]);
        assert!(rooms.take_changes(false).topics.is_empty());

        rooms.remove("ch:x", &a.socket);
        rooms.remove("ch:x", &b.socket);
        let changes = rooms.take_changes(false);
        assert_eq!(
            changes.topics,
            vec![(Arc::from("ch:x"), 0)],
            "last leave reports zero so the reconciler unsubscribes"
        );
        assert!(rooms.with_topics(HashMap::is_empty));
    }

    #[tokio::test]
    async fn members_take_the_topic_position_at_join_and_leave_with_the_last_one() {
        let rooms = LocalRooms::new();
        let (a, b) = (testing::socket("/"), testing::socket("/"));
        let pos = |seq, ms| Position {
            seq,
            src: StreamId { ms, seq: 0 },
        };
        rooms.add("ch:x", &a.socket, None);
        assert_eq!(
            rooms.unpositioned(&[Arc::from("ch:x")]),
            vec![Arc::from("ch:x")]
        );
        rooms.init_position("ch:x", pos(5, 50));
        assert!(rooms.unpositioned(&[Arc::from("ch:x")]).is_empty());
        rooms.with_topics(|t| t["ch:x"].last.set(pos(7, 70)));
        rooms.add("ch:x", &b.socket, None);
        rooms.with_topics(|t| t["ch:x"].last.set(pos(9, 90)));
        let da = rooms.remove("ch:x", &a.socket).expect("member");
        assert_eq!(
            (da.base, da.last),
            (Some(pos(5, 50)), Some(pos(9, 90))),
            "joined before positioning: the initial position"
        );
        let db = rooms.remove("ch:x", &b.socket).expect("member");
        assert_eq!((db.base, db.last), (Some(pos(7, 70)), Some(pos(9, 90))));
        assert!(rooms.remove("ch:x", &b.socket).is_none());
    }

    #[tokio::test]
    async fn full_resync_lists_every_topic_and_pending_removals() {
        let rooms = LocalRooms::new();
        let a = testing::socket("/");
        rooms.add("ch:x", &a.socket, None);
        rooms.add("ch:y", &a.socket, None);
        rooms.take_changes(false);
        rooms.remove("ch:y", &a.socket);
        rooms.request_full_resync();
        let mut topics = rooms.take_changes(false).topics;
        topics.sort();
        assert_eq!(topics, vec![(Arc::from("ch:x"), 1), (Arc::from("ch:y"), 0)]);
    }

    #[tokio::test]
    async fn waiters_wake_once_their_generation_is_applied() {
        let rooms = Arc::new(LocalRooms::new());
        let a = testing::socket("/");
        let generation = rooms.add("ch:x", &a.socket, None);
        let waiter = tokio::spawn({
            let rooms = rooms.clone();
            async move { rooms.wait_applied(generation).await }
        });
        rooms.mark_applied(generation - 1);
        assert!(!waiter.is_finished());
        rooms.mark_applied(generation);
        waiter.await.expect("waiter finishes");
    }
}
