//! The recovery session (contract v1): what a gateway stores at `<prefix>:session:{<pid>}` when a
//! socket disconnects, so that any gateway can restore it within the recovery window. Encoded
//! with rmp-serde (structs as arrays, fields only appended with defaults). A newer gateway reads
//! older records; an older gateway refuses a newer record (its client gets a fresh session), so
//! during a rolling deploy that adds a field a few recoveries may fall back to fresh sessions.

use serde::{Deserialize, Serialize};

use super::StreamId;

/// The session format version this code writes and reads.
pub const SESSION_VERSION: u8 = 1;

/// A place in one topic's sequence: the topic's `seq` and the source id of that message.
/// `seq` 0 / src `0-0` means "before the first message".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub seq: u64,
    pub src: StreamId,
}

/// The socket's place in one topic when it disconnected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicPosition {
    /// The room, or `None` for the namespace-wide topic.
    pub room: Option<String>,
    /// Where the topic stood when the socket joined it: the socket was sent only later messages.
    pub base: Position,
    /// The last message of the topic the gateway had delivered when the socket left: later ones
    /// were never sent to it. Messages between `base` and `last` were sent; the client's offset
    /// says which of them it received.
    pub last: Position,
    /// Messages to several rooms that reached the socket through another room's copy while
    /// this topic's own copy had not arrived yet: they are after `last` but were delivered.
    #[serde(default)]
    pub ahead: Vec<StreamId>,
    /// Messages sent out of publish order because a gap was repaired.
    #[serde(default)]
    pub late: Vec<LateDelivery>,
}

/// A message a gap repair delivered after messages with larger source ids. Whether a client
/// with offset X has it depends on send order, not source order: it does if X is this message,
/// if X is a later-sent repaired message (`order`), or if X is a live message sent after the
/// repair (`X > high`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateDelivery {
    pub src: StreamId,
    /// The largest source id the gateway had sent before this repair.
    pub high: StreamId,
    /// Position in the gateway's send order, comparable between the late deliveries of one
    /// session.
    pub order: u64,
}

impl LateDelivery {
    /// Whether a client whose last received offset is `x` has this message; `x_order` is X's
    /// send order if X is itself a late delivery of the same session.
    pub fn received_by(&self, x: StreamId, x_order: Option<u64>) -> bool {
        self.src == x
            || match x_order {
                Some(x_order) => x_order > self.order,
                None => x > self.high,
            }
    }
}

/// A disconnected socket, as needed to restore it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub version: u8,
    /// The socket id the client gets back.
    pub sid: String,
    pub nsp: String,
    /// Every topic the socket was in: its rooms and its namespace.
    pub topics: Vec<TopicPosition>,
    /// When the gateway noticed the disconnection (unix ms).
    pub disconnected_at_ms: u64,
    /// The authenticated user (`sub`) the session belongs to; `None` without authentication.
    /// Added after the first release of v1: absent in older records, which then have no user.
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("unsupported session version {0}")]
    UnsupportedVersion(u8),
    #[error("malformed session: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("cannot encode session: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

impl SessionRecord {
    pub fn encode(&self) -> Result<Vec<u8>, SessionError> {
        Ok(rmp_serde::to_vec(self)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SessionError> {
        let record: Self = rmp_serde::from_slice(bytes)?;
        if record.version != SESSION_VERSION {
            return Err(SessionError::UnsupportedVersion(record.version));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_golden_bytes() {
        let record = SessionRecord {
            version: 1,
            sid: "s".into(),
            nsp: "/".into(),
            topics: vec![TopicPosition {
                room: Some("r".into()),
                base: Position {
                    seq: 1,
                    src: StreamId { ms: 2, seq: 0 },
                },
                last: Position {
                    seq: 3,
                    src: StreamId { ms: 4, seq: 1 },
                },
                ahead: vec![StreamId { ms: 5, seq: 0 }],
                late: vec![],
            }],
            disconnected_at_ms: 9,
            user: Some("u".into()),
        };
        let bytes = record.encode().expect("encodes");
        let expected: &[u8] = &[
            0x96, 0x01, 0xa1, b's', 0xa1, b'/', // [1, "s", "/",
            0x91, 0x95, 0xa1, b'r', // [[ "r",
            0x92, 0x01, 0x92, 0x02, 0x00, // [1, [2, 0]],
            0x92, 0x03, 0x92, 0x04, 0x01, // [3, [4, 1]],
            0x91, 0x92, 0x05, 0x00, // [[5, 0]],
            0x90, // []]],
            0x09, // 9,
            0xa1, b'u', // "u"]
        ];
        assert_eq!(bytes, expected);
        assert_eq!(SessionRecord::decode(&bytes).expect("decodes"), record);
    }

    #[test]
    fn records_from_before_the_user_field_decode_without_a_user() {
        // [1, "s", "/", [], 9]: what gateways wrote before `user` was appended.
        let old: &[u8] = &[0x95, 0x01, 0xa1, b's', 0xa1, b'/', 0x90, 0x09];
        let record = SessionRecord::decode(old).expect("decodes");
        assert_eq!(record.user, None);
        assert_eq!(record.disconnected_at_ms, 9);
    }

    #[test]
    fn rejects_other_versions() {
        let mut record = SessionRecord {
            version: 2,
            sid: "s".into(),
            nsp: "/".into(),
            topics: vec![],
            disconnected_at_ms: 0,
            user: None,
        };
        let bytes = record.encode().expect("encodes");
        assert!(matches!(
            SessionRecord::decode(&bytes),
            Err(SessionError::UnsupportedVersion(2))
        ));
        record.version = 1;
        assert!(SessionRecord::decode(b"junk").is_err());
    }
}
