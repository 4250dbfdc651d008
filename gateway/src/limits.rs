//! Rate limits on what clients do: events per socket and connection attempts per address.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
};

use tokio::time::Instant;

/// A rate with a burst: `per_second` tokens refill continuously up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn full(rate: Rate) -> Self {
        Self {
            tokens: rate.burst,
            last: Instant::now(),
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.last = now;
    }

    fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst
    }
}

/// Addresses tracked at most; past it, addresses whose bucket has refilled are forgotten
/// (they are indistinguishable from new ones), so memory stays bounded under a flood.
const MAX_TRACKED: usize = 100_000;

/// Connection attempts per client address.
#[derive(Debug)]
pub(crate) struct PerAddress {
    rate: Rate,
    buckets: Mutex<HashMap<IpAddr, TokenBucket>>,
}

impl PerAddress {
    pub(crate) fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::default(),
        }
    }

    /// Whether `ip` may make another attempt now.
    pub(crate) fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&ip) {
            buckets.retain(|_, b| !b.is_full(self.rate, now));
            if buckets.len() >= MAX_TRACKED {
                // Every tracked address is mid-burst: an attack from many addresses. Refuse
                // newcomers rather than grow.
                return false;
            }
        }
        buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::full(self.rate))
            .take(self.rate, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const RATE: Rate = Rate {
        per_second: 10.0,
        burst: 3.0,
    };

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::full(RATE);
        assert!((0..3).all(|_| b.take(RATE, start)));
        assert!(!b.take(RATE, start));
        assert!(
            b.take(RATE, start + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!b.take(RATE, start + Duration::from_millis(100)));
    }

    #[test]
    fn addresses_have_their_own_buckets() {
        let limiter = PerAddress::new(RATE);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert!((0..3).all(|_| limiter.allow(a)));
        assert!(!limiter.allow(a));
        assert!(limiter.allow(b));
    }
}
