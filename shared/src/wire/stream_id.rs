//! Stream entry ids (`<ms>-<seq>`): parsing, ordering, and the id right after one. Publish entry
//! ids are the identity of a message everywhere: idempotency key, history entry id, offset.

use std::fmt;

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// Parses a complete id as Redis returns it; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The smallest id greater than this one (saturating at the largest id).
    pub fn successor(self) -> Self {
        match self.seq.checked_add(1) {
            Some(seq) => Self { ms: self.ms, seq },
            None => match self.ms.checked_add(1) {
                Some(ms) => Self { ms, seq: 0 },
                None => self,
            },
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_order_and_successor() {
        let a = StreamId::parse("1700000000000-5").expect("valid");
        assert_eq!(
            a,
            StreamId {
                ms: 1_700_000_000_000,
                seq: 5
            }
        );
        assert_eq!(a.to_string(), "1700000000000-5");
        assert!(StreamId::parse("2-0") > StreamId::parse("1-99"));
        assert_eq!(a.successor().to_string(), "1700000000000-6");
        let end_of_ms = StreamId {
            ms: 7,
            seq: u64::MAX,
        };
        assert_eq!(end_of_ms.successor(), StreamId { ms: 8, seq: 0 });
        let max = StreamId {
            ms: u64::MAX,
            seq: u64::MAX,
        };
        assert_eq!(max.successor(), max);
        for bad in ["", "5", "a-1", "1-", "-1", "1-2-3"] {
            assert_eq!(StreamId::parse(bad), None, "{bad}");
        }
    }
}
