//! Versioned wire contracts. Everything another language must implement or read lives here:
//! the publish request a backend `XADD`s (`publish`), the msgpack envelope the fanout publishes
//! on a topic channel (`envelope`), and the Redis key and channel layout (`keys`).
//! `docs/publish.md`, `docs/redis-keys.md` and `docs/architecture.md` describe the same contracts
//! for humans; change both together.

pub mod control;
pub mod envelope;
pub mod keys;
pub mod names;
pub mod publish;
pub mod session;
pub mod stream_id;

pub use control::ControlMessage;
pub use envelope::{ENVELOPE_VERSION, Envelope, EnvelopeBody, EnvelopeError};
pub use keys::{KeySpace, Topic};
pub use names::{NameError, validate_namespace, validate_room};
pub use publish::{
    Command, CommandAction, PublishEntry, PublishError, PublishLimits, PublishRequest, Target,
    USER_ROOM_PREFIX,
};
pub use session::{
    LateDelivery, Position, SESSION_VERSION, SessionError, SessionRecord, TopicPosition,
};
pub use stream_id::StreamId;

/// The Lua script that atomically sequences one entry into one topic and publishes it.
/// See `docs/redis-keys.md` for its keys and arguments.
pub const TOPIC_PUBLISH_LUA: &str = include_str!("topic_publish.lua");

/// The Lua script that removes the room memberships of dead (or departing) gateways.
pub const REAP_GATEWAYS_LUA: &str = include_str!("reap_gateways.lua");
