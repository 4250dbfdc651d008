//! The Redis key and channel layout (contract v1), in one place. Nothing else in the code base
//! formats a key.
//!
//! Every key and the channel of one topic share the hash tag `{<nsp>#<room>}` (or `{<nsp>}` for
//! a namespace-wide topic), so the sequencing script touches a single hash slot and a later
//! Redis Cluster deployment can use sharded pub/sub (`SPUBLISH`) on the same names.

/// Names derived from the configured key prefix (`REDIS_KEY_PREFIX`, default `socket.io`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The stream backends `XADD` publish requests to: `<prefix>:publish`.
    pub fn publish_stream(&self) -> String {
        format!("{}:publish", self.prefix)
    }

    /// Where entries that cannot be honoured go, with `error` and `source_id`: `<prefix>:publish:dead`.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}:publish:dead", self.prefix)
    }

    /// Sorted set of live gateways: member = gateway id, score = heartbeat expiry (unix ms).
    pub fn gateways(&self) -> String {
        format!("{}:gateways", self.prefix)
    }

    /// Set of topic channels a gateway holds members of, used to clean up after a dead gateway.
    pub fn gateway_topics(&self, gateway_id: &str) -> String {
        format!("{}:gateway:{{{gateway_id}}}:topics", self.prefix)
    }

    /// Channel every gateway listens to for requests from the others (`wire::control`).
    pub fn control_channel(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// Channel one gateway listens to for answers to its requests.
    pub fn gateway_control_channel(&self, gateway_id: &str) -> String {
        format!("{}:gateway:{{{gateway_id}}}:control", self.prefix)
    }

    /// A disconnected socket's recovery session (msgpack `SessionRecord`, expires after the
    /// recovery window); the hash tag is the private session id.
    pub fn session(&self, pid: &str) -> String {
        format!("{}:session:{{{pid}}}", self.prefix)
    }

    /// Sorted set of live fanout replicas: member = replica id, score = heartbeat expiry (unix ms).
    /// Each replica takes a fair share of the partitions: `ceil(partitions / live replicas)`.
    pub fn fanout_replicas(&self) -> String {
        format!("{}:fanout:replicas", self.prefix)
    }

    /// Channel on which fanout replicas announce how far their partitions are done
    /// (`wire::progress`); gateways order deliveries by it.
    pub fn fanout_progress_channel(&self) -> String {
        format!("{}:fanout:progress", self.prefix)
    }

    /// The keys of partition `index` of `partitions` (see `wire::partition`). Both keys share the
    /// hash tag `{<index>/<partitions>}`; the count is part of the name so that changing
    /// `FANOUT_PARTITIONS` starts a new set of cursors instead of misreading the old ones.
    pub fn partition(&self, index: u16, partitions: u16) -> PartitionKeys {
        PartitionKeys {
            base: format!("{}:fanout:{{{index}/{partitions}}}", self.prefix),
        }
    }

    /// The topic of one room in a namespace.
    pub fn room(&self, nsp: &str, room: &str) -> Topic {
        Topic {
            base: format!("{}:room:{{{nsp}#{room}}}", self.prefix),
        }
    }

    /// A room's topic, or the namespace's for `None` (how sessions name a socket's topics).
    pub fn topic(&self, nsp: &str, room: Option<&str>) -> Topic {
        match room {
            Some(room) => self.room(nsp, room),
            None => self.namespace(nsp),
        }
    }

    /// The topic that reaches every socket of a namespace (publish requests without rooms).
    pub fn namespace(&self, nsp: &str) -> Topic {
        Topic {
            base: format!("{}:nsp:{{{nsp}}}", self.prefix),
        }
    }
}

/// The keys of one fanout partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKeys {
    base: String,
}

impl PartitionKeys {
    /// String: the id of the replica that owns the partition, with an expiry (the lease).
    pub fn lease(&self) -> String {
        format!("{}:lease", self.base)
    }

    /// String: the id of the last publish-stream entry whose effects on the partition's topics
    /// are all in Redis. Everything up to it is done; the owner resumes after it.
    pub fn cursor(&self) -> String {
        format!("{}:cursor", self.base)
    }
}

/// Shortest life of a topic's `:meta` once nobody holds the topic: a gateway leaving and another
/// joining a moment later (a page reload) keep the sequence instead of restarting it.
pub const MIN_META_TTL_MS: u64 = 60_000;

/// How long a topic's `:meta` lives once nobody holds it: at least as long as the sessions that
/// may recover into it (`RECOVERY_MAX_DISCONNECTION_MS`), at least [`MIN_META_TTL_MS`].
pub fn meta_ttl_ms(window_ms: u64) -> u64 {
    window_ms.max(MIN_META_TTL_MS)
}

/// A delivery target with its own channel, sequence and member counts: a room, or a whole
/// namespace. Its identity is its channel name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    base: String,
}

impl Topic {
    /// Builds a topic from a channel name received from Redis.
    pub fn from_channel(channel: impl Into<String>) -> Self {
        Self {
            base: channel.into(),
        }
    }

    /// The pub/sub channel gateways subscribe to while they hold a member.
    pub fn channel(&self) -> &str {
        &self.base
    }

    /// Hash `{seq, src}`: the topic's last sequence number and the last source entry id sequenced.
    /// Persistent while a gateway holds the topic; expires [`meta_ttl_ms`] after the last one
    /// left (extended by every `:hold` written meanwhile).
    pub fn meta_key(&self) -> String {
        format!("{}:meta", self.base)
    }

    /// Hash `{<gateway id>: <local member count>}`; the sum of its values is the topic's size.
    pub fn members_key(&self) -> String {
        format!("{}:members", self.base)
    }

    /// Stream of the topic's recent envelopes for recovery and gap repair: entry id = the
    /// publish entry id, field `e` = the envelope. Capped (`HISTORY_MAX_LEN`) and expiring
    /// (`RECOVERY_MAX_DISCONNECTION_MS` after the last publish).
    pub fn history_key(&self) -> String {
        format!("{}:hist", self.base)
    }

    /// Set (with an expiry of one recovery window) while a disconnected socket may still recover
    /// into this topic, so its history keeps being written even when no gateway holds it.
    pub fn hold_key(&self) -> String {
        format!("{}:hold", self.base)
    }

    pub fn into_channel(self) -> String {
        self.base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        let ks = KeySpace::new("socket.io");
        assert_eq!(ks.publish_stream(), "socket.io:publish");
        assert_eq!(ks.dead_letter_stream(), "socket.io:publish:dead");
        assert_eq!(ks.gateways(), "socket.io:gateways");
        assert_eq!(ks.gateway_topics("gw-1"), "socket.io:gateway:{gw-1}:topics");
        let t = ks.room("/", "chat:42");
        assert_eq!(t.channel(), "socket.io:room:{/#chat:42}");
        assert_eq!(t.meta_key(), "socket.io:room:{/#chat:42}:meta");
        assert_eq!(t.members_key(), "socket.io:room:{/#chat:42}:members");
        assert_eq!(t.history_key(), "socket.io:room:{/#chat:42}:hist");
        assert_eq!(t.hold_key(), "socket.io:room:{/#chat:42}:hold");
        assert_eq!(ks.session("abc"), "socket.io:session:{abc}");
        assert_eq!(ks.control_channel(), "socket.io:control");
        assert_eq!(
            ks.gateway_control_channel("gw-1"),
            "socket.io:gateway:{gw-1}:control"
        );
        assert_eq!(ks.namespace("/admin").channel(), "socket.io:nsp:{/admin}");
        assert_eq!(ks.fanout_replicas(), "socket.io:fanout:replicas");
        assert_eq!(ks.fanout_progress_channel(), "socket.io:fanout:progress");
        let p = ks.partition(3, 16);
        assert_eq!(p.lease(), "socket.io:fanout:{3/16}:lease");
        assert_eq!(p.cursor(), "socket.io:fanout:{3/16}:cursor");
    }

    /// The hash tag is the text between the first `{` and the next `}`; a room containing `}`
    /// shortens it, but identically for every key of that room, so they still share a slot.
    #[test]
    fn braces_in_room_keep_one_slot() {
        fn tag(key: &str) -> &str {
            let start = key.find('{').expect("has a tag") + 1;
            let end = start + key[start..].find('}').expect("closed");
            &key[start..end]
        }
        let t = KeySpace::new("p").room("/", "a}b{c");
        assert_eq!(tag(t.channel()), tag(&t.meta_key()));
        assert_eq!(tag(t.channel()), tag(&t.members_key()));
        assert_eq!(tag(t.channel()), tag(&t.history_key()));
        assert_eq!(tag(t.channel()), tag(&t.hold_key()));
    }

    /// A partition's lease and cursor are one slot: its scripts touch a single slot.
    #[test]
    fn a_partitions_keys_share_one_slot() {
        let p = KeySpace::new("p").partition(7, 16);
        let slot = |k: &str| crate::wire::hash_slot(k.as_bytes());
        assert_eq!(slot(&p.lease()), slot(&p.cursor()));
        assert_eq!(slot(&p.lease()), slot("{7/16}"));
        assert_ne!(
            p.cursor(),
            KeySpace::new("p").partition(7, 32).cursor(),
            "another partition count, other keys"
        );
    }
}
