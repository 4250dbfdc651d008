//! Gateway-to-gateway requests (contract v1), JSON on pub/sub channels: a gateway asked to
//! recover a session that is not stored yet asks, on `<prefix>:control`, whether another gateway
//! still holds the socket (its client vanished without closing the connection, so that gateway
//! has not noticed); the holder saves the session, closes the socket and answers on the
//! requester's `<prefix>:gateway:{<id>}:control` channel. Every gateway answers, so the
//! requester knows when it has heard from all of them; it waits at most the request timeout.
//!
//! The fanout also sends backend commands (a publish stream entry with `command`) to every
//! gateway on `<prefix>:control`.

use serde::{Deserialize, Serialize};

use super::publish::CommandAction;

/// A message on a control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// "Does anyone hold the socket of session `pid`? Save it and close it."
    Takeover {
        v: u8,
        request: u64,
        from: String,
        pid: String,
    },
    /// The answer of one gateway; `held` when it saved the session.
    TakeoverReply { v: u8, request: u64, held: bool },
    /// A backend command: apply `action` to this gateway's sockets of namespace `nsp` that are
    /// in any of `rooms` (every socket of `nsp` when `rooms` is empty).
    Command {
        v: u8,
        /// The publish stream entry it came from.
        source_id: String,
        nsp: String,
        rooms: Vec<String>,
        action: CommandAction,
    },
}

impl ControlMessage {
    pub fn encode(&self) -> Vec<u8> {
        // Serializing a plain enum of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_json_round_trips() {
        let request = ControlMessage::Takeover {
            v: 1,
            request: 7,
            from: "gw-a".into(),
            pid: "p1".into(),
        };
        let text = r#"{"type":"takeover","v":1,"request":7,"from":"gw-a","pid":"p1"}"#;
        assert_eq!(String::from_utf8(request.encode()).expect("utf-8"), text);
        assert_eq!(
            ControlMessage::decode(text.as_bytes()).expect("decodes"),
            request
        );
        let reply = ControlMessage::TakeoverReply {
            v: 1,
            request: 7,
            held: true,
        };
        let text = r#"{"type":"takeover_reply","v":1,"request":7,"held":true}"#;
        assert_eq!(String::from_utf8(reply.encode()).expect("utf-8"), text);
        assert_eq!(
            ControlMessage::decode(text.as_bytes()).expect("decodes"),
            reply
        );
        let command = ControlMessage::Command {
            v: 1,
            source_id: "5-0".into(),
            nsp: "/".into(),
            rooms: vec!["user:alice".into()],
            action: CommandAction::Join {
                rooms: vec!["vip".into()],
            },
        };
        let text = r#"{"type":"command","v":1,"source_id":"5-0","nsp":"/","rooms":["user:alice"],"action":{"do":"join","rooms":["vip"]}}"#;
        assert_eq!(String::from_utf8(command.encode()).expect("utf-8"), text);
        assert_eq!(
            ControlMessage::decode(text.as_bytes()).expect("decodes"),
            command
        );
        let disconnect = r#"{"type":"command","v":1,"source_id":"6-0","nsp":"/","rooms":[],"action":{"do":"disconnect","recover":true}}"#;
        assert!(matches!(
            ControlMessage::decode(disconnect.as_bytes()),
            Ok(ControlMessage::Command {
                action: CommandAction::Disconnect { recover: true },
                ..
            })
        ));
        assert!(ControlMessage::decode(b"junk").is_err());
    }
}
