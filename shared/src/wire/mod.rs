//! Versioned wire contracts. Everything another language must implement or read lives here:
//! the publish request a backend `XADD`s (`publish`), the msgpack envelope the fanout publishes
//! on a topic channel (`envelope`), the Redis key and channel layout (`keys`), how topics are
//! split into fanout partitions (`partition`) and how fanout replicas announce their progress
//! (`progress`).
//! `docs/publish.md`, `docs/redis-keys.md` and `docs/architecture.md` describe the same contracts
//! for humans; change both together.

pub mod control;
pub mod envelope;
pub mod keys;
pub mod names;
pub mod partition;
pub mod progress;
pub mod publish;
pub mod session;
pub mod stream_id;

pub use control::ControlMessage;
pub use envelope::{ENVELOPE_VERSION, Envelope, EnvelopeBody, EnvelopeError};
pub use keys::{KeySpace, MIN_META_TTL_MS, PartitionKeys, Topic, meta_ttl_ms};
pub use names::{NameError, validate_namespace, validate_room};
pub use partition::{MAX_PARTITIONS, hash_slot, partition_of};
pub use progress::{PROGRESS_VERSION, Progress, ProgressError};
pub use publish::{
    Command, CommandAction, PublishEntry, PublishError, PublishLimits, PublishRequest, Target,
    USER_ROOM_PREFIX,
};
pub use session::{
    LateDelivery, Position, SESSION_VERSION, SessionError, SessionRecord, TopicPosition,
};
pub use stream_id::StreamId;

/// The Lua script that atomically sequences entries into one topic and publishes them.
/// See `docs/redis-keys.md` for its keys and arguments.
pub const TOPIC_PUBLISH_LUA: &str = include_str!("topic_publish.lua");

/// The Lua script that takes, renews or gives up a fanout partition's lease.
pub const PARTITION_LEASE_LUA: &str = include_str!("partition_lease.lua");

/// The Lua script that moves a fanout partition's cursor forward while its lease is held.
pub const PARTITION_COMMIT_LUA: &str = include_str!("partition_commit.lua");

/// The Lua script that dead-letters refused publish requests, each at most once.
pub const DEAD_LETTER_LUA: &str = include_str!("dead_letter.lua");

/// The Lua script with which a gateway stops holding a topic (hold, count, meta expiry).
pub const TOPIC_LEAVE_LUA: &str = include_str!("topic_leave.lua");

/// The Lua script that removes the room memberships of dead (or departing) gateways.
pub const REAP_GATEWAYS_LUA: &str = include_str!("reap_gateways.lua");
