//! Delivery in publish order across fanout partitions.
//!
//! Several fanout replicas publish concurrently, each for its own partitions, so a gateway can
//! receive a message of one room before an older message of another room. Recovery needs a
//! gateway to send in publish order (one offset per client, see docs/recovery.md), so messages
//! are held here and released in source-id order once every partition is known to be done up to
//! their id: each replica announces, after committing a batch, "partitions … done up to X"
//! (`wire::progress`), and Redis delivers that announcement after every envelope the replica
//! published before it. So when all partitions are done up to X, every message up to X has
//! arrived, and the held ones up to X can go, smallest first.
//!
//! A partition that stalls (its owner crashed and the lease has not expired yet) would hold
//! everything back: a message waits at most `max_wait`, then it and everything held before it
//! go anyway (counted as forced; a message of the stalled partition that arrives later is
//! delivered late, which recovery records). At most `max_held` messages are held.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use roomcast_shared::wire::{Envelope, Progress, StreamId};
use tokio::time::Instant;

/// How far each partition is done, as announced by the fanout replicas. Outlives a subscription
/// connection (the announcements stay true), so a resubscribed gateway does not start blind.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    partitions: u16,
    done: Vec<Option<StreamId>>,
}

impl Marks {
    fn apply(&mut self, progress: &Progress) {
        if progress.partitions != self.partitions {
            // Another partition count: the old marks say nothing about the new partitions.
            self.partitions = progress.partitions;
            self.done = vec![None; usize::from(progress.partitions)];
        }
        for &p in &progress.owned {
            if let Some(mark) = self.done.get_mut(usize::from(p)) {
                *mark = Some(mark.map_or(progress.upto, |m| m.max(progress.upto)));
            }
        }
    }

    /// Every partition is done up to this id (`0-0` while some partition was never heard of).
    fn watermark(&self) -> StreamId {
        self.done
            .iter()
            .map(|m| m.unwrap_or_default())
            .min()
            .unwrap_or_default()
    }
}

pub(crate) type SharedMarks = Arc<Mutex<Marks>>;

/// A message waiting for its turn.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) channel: String,
    pub(crate) envelope: Envelope,
    pub(crate) src: StreamId,
}

/// Holds messages until they can go in source-id order.
pub(crate) struct Orderer {
    marks: SharedMarks,
    /// The highest `marks.watermark()` seen. Never goes back, not even when the partition count
    /// changes: what was done under the old count stays done.
    watermark: StreamId,
    /// The largest source id released before the watermark passed it.
    forced: StreamId,
    /// By (source id, arrival number): copies of a multi-room message share the source id.
    held: BTreeMap<(StreamId, u64), Held>,
    /// Arrival order, for the wait limit; keys already released are skipped lazily.
    arrivals: VecDeque<(Instant, (StreamId, u64))>,
    next: u64,
    max_wait: Duration,
    max_held: usize,
}

impl Orderer {
    pub(crate) fn new(marks: SharedMarks, max_wait: Duration, max_held: usize) -> Self {
        let watermark = lock(&marks).watermark();
        Self {
            marks,
            watermark,
            forced: StreamId::default(),
            held: BTreeMap::new(),
            arrivals: VecDeque::new(),
            next: 0,
            max_wait,
            max_held,
        }
    }

    /// Everything up to this id has been released (or will be delivered late).
    pub(crate) fn released_upto(&self) -> StreamId {
        self.watermark.max(self.forced)
    }

    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes a message in. Returns it at once if it may go now (everything before it was
    /// released); otherwise holds it.
    pub(crate) fn push(&mut self, item: Held, now: Instant) -> Option<Held> {
        // Everything held is after `released_upto()` (releases happen as soon as it moves),
        // so a message at or below it is the next to go.
        if item.src <= self.released_upto() {
            return Some(item);
        }
        let key = (item.src, self.next);
        self.next += 1;
        self.held.insert(key, item);
        self.arrivals.push_back((now, key));
        None
    }

    /// A replica announced progress.
    pub(crate) fn progress(&mut self, progress: &Progress) {
        let mut marks = lock(&self.marks);
        marks.apply(progress);
        self.watermark = self.watermark.max(marks.watermark());
    }

    /// The next message to deliver, smallest source id first: one at or below the watermark,
    /// or, once the oldest held message waited `max_wait` (or too many are held), the held
    /// messages up to it (`forced`).
    pub(crate) fn pop(&mut self, now: Instant) -> Option<(Held, bool)> {
        self.forget_released();
        let first = *self.held.keys().next()?;
        if first.0 <= self.watermark {
            return self.held.remove(&first).map(|h| (h, false));
        }
        if first.0 <= self.forced {
            return self.held.remove(&first).map(|h| (h, true));
        }
        let overdue = self
            .arrivals
            .front()
            .filter(|(at, _)| now >= *at + self.max_wait)
            .map(|(_, key)| key.0);
        let upto = match overdue {
            Some(src) => src,
            None if self.held.len() > self.max_held => first.0,
            None => return None,
        };
        self.forced = self.forced.max(upto);
        self.held.remove(&first).map(|h| (h, true))
    }

    /// When the oldest held message runs out of patience.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.forget_released();
        self.arrivals.front().map(|(at, _)| *at + self.max_wait)
    }

    /// Drops arrivals of messages already released from the front, so the front is the oldest
    /// message still held (each arrival is dropped once: amortized constant time).
    fn forget_released(&mut self) {
        while let Some((_, key)) = self.arrivals.front() {
            if self.held.contains_key(key) {
                break;
            }
            self.arrivals.pop_front();
        }
    }
}

fn lock(marks: &SharedMarks) -> std::sync::MutexGuard<'_, Marks> {
    // Plain data; a panic elsewhere cannot leave it half-updated in a way that matters.
    marks.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use roomcast_shared::wire::EnvelopeBody;

    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId { ms, seq: 0 }
    }

    fn held(channel: &str, ms: u64) -> Held {
        Held {
            channel: channel.into(),
            envelope: Envelope {
                version: 1,
                seq: 1,
                body: EnvelopeBody {
                    source_id: id(ms).to_string(),
                    nsp: "/".into(),
                    rooms: vec![],
                    except: vec![],
                    data: "[\"e\"]".into(),
                    published_at_ms: ms,
                    traceparent: None,
                },
            },
            src: id(ms),
        }
    }

    fn progress(partitions: u16, owned: &[u16], upto: u64) -> Progress {
        Progress::new("r", partitions, owned.to_vec(), id(upto))
    }

    fn drain(o: &mut Orderer, now: Instant) -> Vec<(String, u64, bool)> {
        std::iter::from_fn(|| o.pop(now))
            .map(|(h, forced)| (h.channel, h.src.ms, forced))
            .collect()
    }

    #[test]
    fn releases_in_source_order_once_every_partition_is_done() {
        let now = Instant::now();
        let mut o = Orderer::new(SharedMarks::default(), Duration::from_secs(5), 100);
        o.progress(&progress(2, &[0, 1], 10));
        assert!(
            o.push(held("a", 5), now).is_some(),
            "already done: goes at once"
        );
        // Replica of partition 1 is faster: its message 30 arrives before 20 of partition 0.
        assert!(o.push(held("b", 30), now).is_none());
        o.progress(&progress(2, &[1], 30));
        assert!(
            drain(&mut o, now).is_empty(),
            "partition 0 is only done up to 10"
        );
        assert!(o.push(held("a", 20), now).is_none());
        assert!(o.push(held("c", 20), now).is_none(), "a second copy of 20");
        o.progress(&progress(2, &[0], 25));
        assert_eq!(
            drain(&mut o, now),
            [("a".into(), 20, false), ("c".into(), 20, false)]
        );
        o.progress(&progress(2, &[0], 40));
        assert_eq!(drain(&mut o, now), [("b".into(), 30, false)]);
        assert_eq!(o.released_upto(), id(30));
        assert_eq!(o.held(), 0);
    }

    #[test]
    fn a_stalled_partition_holds_messages_back_only_for_a_while() {
        let start = Instant::now();
        let wait = Duration::from_secs(5);
        let mut o = Orderer::new(SharedMarks::default(), wait, 100);
        o.progress(&progress(2, &[0, 1], 10));
        assert!(o.push(held("b", 40), start).is_none());
        let later = start + Duration::from_secs(1);
        assert!(o.push(held("b", 30), later).is_none());
        assert!(o.push(held("b", 50), later).is_none());
        assert_eq!(o.next_deadline(), Some(start + wait));
        assert!(drain(&mut o, start + Duration::from_secs(4)).is_empty());
        // 40 waited long enough: it goes, with everything held before it (30), not after.
        assert_eq!(
            drain(&mut o, start + wait),
            [("b".into(), 30, true), ("b".into(), 40, true)]
        );
        assert_eq!(o.released_upto(), id(40));
        assert_eq!(o.next_deadline(), Some(later + wait));
        // A late message of the stalled partition goes at once (it is late anyway).
        assert!(o.push(held("a", 35), start + wait).is_some());
    }

    #[test]
    fn nothing_is_known_until_every_partition_was_heard_of() {
        let now = Instant::now();
        let marks = SharedMarks::default();
        let mut o = Orderer::new(marks.clone(), Duration::from_secs(5), 2);
        assert!(o.push(held("a", 5), now).is_none(), "no progress seen yet");
        o.progress(&progress(2, &[0], 10));
        assert!(drain(&mut o, now).is_empty(), "partition 1 unknown");
        o.progress(&progress(2, &[1], 10));
        assert_eq!(drain(&mut o, now), [("a".into(), 5, false)]);
        // The marks outlive the orderer (a new subscription connection).
        let fresh = Orderer::new(marks, Duration::from_secs(5), 2);
        assert_eq!(fresh.released_upto(), id(10));
        // Another partition count starts over.
        o.progress(&progress(4, &[0, 1, 2], 50));
        assert_eq!(o.released_upto(), id(10), "what was done stays done");
        assert!(o.push(held("a", 20), now).is_none());
    }

    #[test]
    fn released_messages_do_not_linger_in_the_arrival_order() {
        let now = Instant::now();
        let mut o = Orderer::new(SharedMarks::default(), Duration::from_secs(5), 100);
        o.progress(&progress(1, &[0], 1));
        for ms in 2..1000 {
            assert!(o.push(held("a", ms), now).is_none());
            o.progress(&progress(1, &[0], ms));
            assert_eq!(drain(&mut o, now).len(), 1);
        }
        assert_eq!(o.next_deadline(), None);
        assert!(o.arrivals.is_empty());
    }

    #[test]
    fn too_many_held_messages_are_released_smallest_first() {
        let now = Instant::now();
        let mut o = Orderer::new(SharedMarks::default(), Duration::from_secs(60), 2);
        for ms in [30, 10, 20] {
            assert!(o.push(held("a", ms), now).is_none());
        }
        assert_eq!(drain(&mut o, now), [("a".into(), 10, true)]);
        assert_eq!(o.held(), 2);
    }
}
