//! Which fanout partition a topic belongs to (contract v1). Every fanout replica must compute
//! the same answer, so this is a wire contract like the key layout: `docs/fanout.md` describes
//! it for other implementations.
//!
//! A topic's partition is its Redis Cluster hash slot (CRC16/XMODEM of the hash tag, mod 16384)
//! scaled down to `partitions`: `slot * partitions / 16384`. So a partition is a contiguous
//! range of slots, which keeps a partition's topics on few nodes once Roomcast runs on Redis
//! Cluster (nodes own contiguous slot ranges), and the function is the one every Redis client
//! already implements.

use super::Topic;

/// Hash slots in Redis Cluster.
pub const HASH_SLOTS: u32 = 16_384;

/// Most partitions a deployment may use (`FANOUT_PARTITIONS`). Far more than replicas will ever
/// be run; each partition costs a lease renewal per replica interval and a cursor commit per batch.
pub const MAX_PARTITIONS: u16 = 1_024;

/// The partition of `topic` out of `partitions` (1 to [`MAX_PARTITIONS`]; 0 is treated as 1).
pub fn partition_of(topic: &Topic, partitions: u16) -> u16 {
    partition_of_slot(hash_slot(topic.channel().as_bytes()), partitions)
}

/// `slot * partitions / 16384`: contiguous slot ranges of (almost) equal size.
pub fn partition_of_slot(slot: u16, partitions: u16) -> u16 {
    let partitions = u32::from(partitions.max(1));
    let p = u32::from(slot) * partitions / HASH_SLOTS;
    // p < partitions ≤ u16::MAX, so the conversion cannot fail.
    u16::try_from(p).unwrap_or(u16::MAX)
}

/// The Redis Cluster hash slot of a key: CRC16 of its hash tag (the text between the first `{`
/// and the next `}`, when not empty) or of the whole key, mod 16384.
pub fn hash_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let crc = crc16(tagged.unwrap_or(key));
    // 16384 is a power of two: the mask is the modulo.
    crc & 0x3fff
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster uses it.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::KeySpace;

    #[test]
    fn crc16_check_value() {
        // The standard check value of CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(crc16(b""), 0);
    }

    /// Golden values from `CLUSTER KEYSLOT` on Redis 7.0.
    #[test]
    fn hash_slots_match_redis() {
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"bar"), 5061);
        assert_eq!(hash_slot(b"{user1000}.following"), 3443);
        assert_eq!(
            hash_slot(b"{user1000}.following"),
            hash_slot(b"{user1000}.followers")
        );
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(hash_slot(b"foo{}{bar}"), 8363);
        // The tag ends at the first `}` after the first `{`.
        assert_eq!(hash_slot(b"foo{{bar}}zap"), hash_slot(b"{bar"));
        assert_eq!(hash_slot(b"socket.io:room:{/#chat:42}"), 4954);
        assert_eq!(hash_slot(b"socket.io:nsp:{/}"), 5517);
    }

    #[test]
    fn partitions_are_contiguous_slot_ranges() {
        assert_eq!(partition_of_slot(0, 16), 0);
        assert_eq!(partition_of_slot(1023, 16), 0);
        assert_eq!(partition_of_slot(1024, 16), 1);
        assert_eq!(partition_of_slot(16383, 16), 15);
        assert_eq!(partition_of_slot(16383, 1), 0);
        assert_eq!(
            partition_of_slot(16383, 0),
            0,
            "0 partitions is treated as 1"
        );
        assert_eq!(partition_of_slot(16383, MAX_PARTITIONS), MAX_PARTITIONS - 1);
    }

    #[test]
    fn every_key_of_a_topic_is_in_the_topics_partition() {
        let keys = KeySpace::new("socket.io");
        let topic = keys.room("/", "chat:42");
        // Golden: slot 4954 of 16384, partition 4 of 16.
        assert_eq!(partition_of(&topic, 16), 4);
        for key in [
            topic.meta_key(),
            topic.members_key(),
            topic.history_key(),
            topic.hold_key(),
        ] {
            assert_eq!(partition_of_slot(hash_slot(key.as_bytes()), 16), 4, "{key}");
        }
        // The prefix does not matter: only the tag is hashed.
        assert_eq!(
            partition_of(&KeySpace::new("other").room("/", "chat:42"), 16),
            4
        );
        assert_eq!(partition_of(&keys.namespace("/"), 16), 5, "slot 5517");
    }
}
