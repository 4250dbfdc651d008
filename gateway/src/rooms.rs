//! The gateway's local room registry: which local sockets are in which topic (room or whole
//! namespace), keyed by the topic's channel name. Every change bumps a generation and marks the
//! topic dirty; the `subscriptions` task applies dirty topics to Redis in batches and publishes
//! the generation it has applied, which is what `join` waits for before it acks.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use tokio::sync::{Notify, watch};

use crate::sio::SioSocket;

/// Local members of one topic, by socket id.
pub(crate) type Members = HashMap<Arc<str>, Arc<SioSocket>>;

#[derive(Default)]
struct Inner {
    topics: HashMap<Arc<str>, Members>,
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

    /// Adds a socket to a topic. Returns the generation to wait for before the membership is
    /// known to Redis.
    pub(crate) fn add(&self, channel: &str, socket: &Arc<SioSocket>) -> u64 {
        let mut inner = self.write();
        let members = match inner.topics.get_mut(channel) {
            Some(members) => members,
            None => inner.topics.entry(Arc::from(channel)).or_default(),
        };
        if members
            .insert(socket.id().clone(), socket.clone())
            .is_none()
        {
            Self::touch(&mut inner, channel);
        }
        let generation = inner.generation;
        drop(inner);
        self.changed.notify_one();
        generation
    }

    /// Removes a socket from a topic; dropping the last member schedules the unsubscribe.
    pub(crate) fn remove(&self, channel: &str, socket_id: &str) {
        let mut inner = self.write();
        let Some(members) = inner.topics.get_mut(channel) else {
            return;
        };
        if members.remove(socket_id).is_none() {
            return;
        }
        if members.is_empty() {
            inner.topics.remove(channel);
        }
        Self::touch(&mut inner, channel);
        drop(inner);
        self.changed.notify_one();
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
            .map(|k| (k.clone(), inner.topics.get(k).map_or(0, HashMap::len)))
            .collect();
        if full {
            topics.extend(
                inner
                    .topics
                    .iter()
                    .filter(|(k, _)| !dirty.contains(*k))
                    .map(|(k, m)| (k.clone(), m.len())),
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

    /// Runs `f` on the topics under a read lock. `f` must not block or await.
    pub(crate) fn with_topics<R>(&self, f: impl FnOnce(&HashMap<Arc<str>, Members>) -> R) -> R {
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
        let g1 = rooms.add("ch:x", &a.socket);
        let g2 = rooms.add("ch:x", &b.socket);
        assert!(g2 > g1);
        assert_eq!(
            rooms.add("ch:x", &a.socket),
            g2,
            "re-adding changes nothing"
        );
        let changes = rooms.take_changes(false);
        assert_eq!(changes.generation, g2);
        assert_eq!(changes.topics, vec![(Arc::from("ch:x"), 2)]);
        assert!(rooms.take_changes(false).topics.is_empty());

        rooms.remove("ch:x", a.socket.id());
        rooms.remove("ch:x", b.socket.id());
        let changes = rooms.take_changes(false);
        assert_eq!(
            changes.topics,
            vec![(Arc::from("ch:x"), 0)],
            "last leave reports zero so the reconciler unsubscribes"
        );
        assert!(rooms.with_topics(HashMap::is_empty));
    }

    #[tokio::test]
    async fn full_resync_lists_every_topic_and_pending_removals() {
        let rooms = LocalRooms::new();
        let a = testing::socket("/");
        rooms.add("ch:x", &a.socket);
        rooms.add("ch:y", &a.socket);
        rooms.take_changes(false);
        rooms.remove("ch:y", a.socket.id());
        rooms.request_full_resync();
        let mut topics = rooms.take_changes(false).topics;
        topics.sort();
        assert_eq!(topics, vec![(Arc::from("ch:x"), 1), (Arc::from("ch:y"), 0)]);
    }

    #[tokio::test]
    async fn waiters_wake_once_their_generation_is_applied() {
        let rooms = Arc::new(LocalRooms::new());
        let a = testing::socket("/");
        let generation = rooms.add("ch:x", &a.socket);
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
