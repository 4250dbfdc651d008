//! The Socket.IO v5 packet codec: `<type>[<attachments>-][<nsp>,][<ack id>][<json>]`, plus the
//! binary attachments that follow a BINARY_EVENT / BINARY_ACK header as separate Engine.IO
//! messages.

use bytes::Bytes;
// Node's parser refuses these from a client: they name a socket's own lifecycle events.
use roomcast_shared::wire::publish::RESERVED_EVENTS;
use serde_json::Value;
use thiserror::Error;

/// Most binary attachments one packet may announce; more is treated as hostile.
pub const MAX_ATTACHMENTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

/// A packet received from a client, its JSON parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub kind: PacketType,
    pub nsp: String,
    pub id: Option<u64>,
    /// CONNECT: the auth object (or `Null`); EVENT/ACK: the argument array; DISCONNECT: `Null`.
    pub data: Value,
    /// Binary attachments this packet still expects (BINARY_* only).
    pub attachments: usize,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("packet type {0:?} cannot come from a client")]
    NotFromClient(PacketType),
    #[error("bad attachment count")]
    BadAttachments,
    #[error("bad ack id")]
    BadAckId,
    #[error("invalid JSON payload")]
    InvalidJson,
    #[error("payload has the wrong shape for its packet type")]
    WrongShape,
    #[error("reserved event name")]
    ReservedEvent,
    #[error("unexpected binary attachment")]
    UnexpectedBinary,
}

impl Packet {
    /// Parses a text packet from a client.
    pub fn parse(text: &str) -> Result<Self, PacketError> {
        let mut rest = text;
        let kind = match rest.chars().next().ok_or(PacketError::Empty)? {
            '0' => PacketType::Connect,
            '1' => PacketType::Disconnect,
            '2' => PacketType::Event,
            '3' => PacketType::Ack,
            '5' => PacketType::BinaryEvent,
            '6' => PacketType::BinaryAck,
            '4' => return Err(PacketError::NotFromClient(PacketType::ConnectError)),
            c => return Err(PacketError::UnknownType(c)),
        };
        rest = &rest[1..];

        let mut attachments = 0;
        if matches!(kind, PacketType::BinaryEvent | PacketType::BinaryAck) {
            let dash = rest.find('-').ok_or(PacketError::BadAttachments)?;
            attachments = rest[..dash]
                .parse::<usize>()
                .map_err(|_| PacketError::BadAttachments)?;
            // A binary packet announces at least one attachment (Node: "Illegal attachments").
            if attachments == 0 || attachments > MAX_ATTACHMENTS {
                return Err(PacketError::BadAttachments);
            }
            rest = &rest[dash + 1..];
        }

        let mut nsp = "/";
        if rest.starts_with('/') {
            let end = rest.find(',').unwrap_or(rest.len());
            nsp = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or("");
        }

        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let id = if digits > 0 {
            Some(
                rest[..digits]
                    .parse::<u64>()
                    .map_err(|_| PacketError::BadAckId)?,
            )
        } else {
            None
        };
        rest = &rest[digits..];

        // An absent payload and a JSON `null` both end up as `Null`, but only the first is valid
        // where a payload is optional (Node refuses `0null` and `1null`).
        let has_payload = !rest.is_empty();
        let data = if has_payload {
            serde_json::from_str(rest).map_err(|_| PacketError::InvalidJson)?
        } else {
            Value::Null
        };

        let shape_ok = match kind {
            PacketType::Connect => id.is_none() && (!has_payload || data.is_object()),
            PacketType::Disconnect => id.is_none() && !has_payload,
            PacketType::Event | PacketType::BinaryEvent => match &data {
                Value::Array(a) => match a.first() {
                    Some(Value::String(name)) if RESERVED_EVENTS.contains(&name.as_str()) => {
                        return Err(PacketError::ReservedEvent);
                    }
                    // socket.io-parser accepts a string or a number as the event name.
                    Some(Value::String(_) | Value::Number(_)) => true,
                    _ => false,
                },
                _ => false,
            },
            PacketType::Ack | PacketType::BinaryAck => id.is_some() && data.is_array(),
            PacketType::ConnectError => false,
        };
        if !shape_ok {
            return Err(PacketError::WrongShape);
        }
        Ok(Self {
            kind,
            nsp: nsp.to_owned(),
            id,
            data,
            attachments,
        })
    }

    /// Replaces `{"_placeholder":true,"num":n}` markers with the received attachments, rendered
    /// as the JSON the rest of the gateway sees (attachments are kept aside in `binaries`).
    pub fn placeholders_valid(&self, binaries: &[Bytes]) -> bool {
        fn walk(v: &Value, n: usize) -> bool {
            match v {
                Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => map
                    .get("num")
                    .and_then(Value::as_u64)
                    .is_some_and(|i| (i as usize) < n),
                Value::Object(map) => map.values().all(|v| walk(v, n)),
                Value::Array(items) => items.iter().all(|v| walk(v, n)),
                _ => true,
            }
        }
        walk(&self.data, binaries.len())
    }
}

/// The `<nsp>,` part of an outgoing packet (empty for the main namespace).
fn nsp_prefix(out: &mut String, nsp: &str) {
    if nsp != "/" {
        out.push_str(nsp);
        out.push(',');
    }
}

/// `0[<nsp>,]{"sid":"…"}`: the CONNECT reply.
pub(crate) fn encode_connect(nsp: &str, sid: &str, pid: Option<&str>) -> String {
    let mut out = String::with_capacity(nsp.len() + sid.len() + 40);
    out.push('0');
    nsp_prefix(&mut out, nsp);
    let reply = match pid {
        // With connection state recovery the client keeps `pid` and sends it back with its last
        // offset when it reconnects.
        Some(pid) => serde_json::json!({ "sid": sid, "pid": pid }),
        None => serde_json::json!({ "sid": sid }),
    };
    out.push_str(&reply.to_string());
    out
}

/// `1[<nsp>,]`: a server-side DISCONNECT; the official client does not reconnect after it.
pub(crate) fn encode_disconnect(nsp: &str) -> String {
    let mut out = String::from("1");
    nsp_prefix(&mut out, nsp);
    out
}

/// `4[<nsp>,]{"message":"…"}`: the CONNECT_ERROR reply, shown by clients as `connect_error`.
pub(crate) fn encode_connect_error(nsp: &str, message: &str) -> String {
    let mut out = String::from("4");
    nsp_prefix(&mut out, nsp);
    out.push_str(&serde_json::json!({ "message": message }).to_string());
    out
}

/// `2[<nsp>,]<data>` with `data` already a JSON array text (`["event", …]`). Built once per
/// broadcast and shared by every recipient.
pub fn encode_event(nsp: &str, data: &str) -> String {
    let mut out = String::with_capacity(nsp.len() + data.len() + 2);
    out.push('2');
    nsp_prefix(&mut out, nsp);
    out.push_str(data);
    out
}

/// `3[<nsp>,]<id><args>` or, with attachments, `6<n>-[<nsp>,]<id><args>`.
pub fn encode_ack(nsp: &str, id: u64, args: &Value, attachments: usize) -> String {
    let mut out = String::new();
    if attachments > 0 {
        out.push('6');
        out.push_str(&attachments.to_string());
        out.push('-');
    } else {
        out.push('3');
    }
    nsp_prefix(&mut out, nsp);
    out.push_str(&id.to_string());
    out.push_str(&args.to_string());
    out
}

/// `2[<nsp>,]<args>` or, with attachments, `5<n>-[<nsp>,]<args>`: a server-initiated event whose
/// arguments are a JSON array (binary arguments already replaced by placeholders).
pub fn encode_event_value(nsp: &str, args: &Value, attachments: usize) -> String {
    let mut out = String::new();
    if attachments > 0 {
        out.push('5');
        out.push_str(&attachments.to_string());
        out.push('-');
    } else {
        out.push('2');
    }
    nsp_prefix(&mut out, nsp);
    out.push_str(&args.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_client_packets() {
        let p = Packet::parse("0").expect("connect");
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.data.clone()),
            (PacketType::Connect, "/", Value::Null)
        );
        let p = Packet::parse(r#"0/admin,{"token":"x"}"#).expect("connect with auth");
        assert_eq!(
            (p.nsp.as_str(), p.data.clone()),
            ("/admin", json!({"token":"x"}))
        );
        let p = Packet::parse(r#"2[42,"x"]"#).expect("numeric event names are valid, as in Node");
        assert_eq!(p.kind, PacketType::Event);
        let p = Packet::parse(r#"2["join","chat:42"]"#).expect("event");
        assert_eq!((p.kind, p.id), (PacketType::Event, None));
        let p = Packet::parse(r#"2/admin,12["join","a"]"#).expect("event with ack");
        assert_eq!((p.nsp.as_str(), p.id), ("/admin", Some(12)));
        let p = Packet::parse(r#"3/admin,7["ok"]"#).expect("ack");
        assert_eq!((p.kind, p.id), (PacketType::Ack, Some(7)));
        let p = Packet::parse(r#"51-["up",{"_placeholder":true,"num":0}]"#).expect("binary event");
        assert_eq!((p.kind, p.attachments), (PacketType::BinaryEvent, 1));
        let p = Packet::parse("1/admin,").expect("disconnect");
        assert_eq!((p.kind, p.nsp.as_str()), (PacketType::Disconnect, "/admin"));
        let p = Packet::parse("1").expect("disconnect main");
        assert_eq!(p.nsp, "/");
    }

    #[test]
    fn refuses_malformed_packets() {
        let cases = [
            ("", PacketError::Empty),
            ("9", PacketError::UnknownType('9')),
            ("x[]", PacketError::UnknownType('x')),
            (
                r#"4{"message":"x"}"#,
                PacketError::NotFromClient(PacketType::ConnectError),
            ),
            ("2[", PacketError::InvalidJson),
            ("2{}", PacketError::WrongShape),
            ("2[true]", PacketError::WrongShape),
            ("2[]", PacketError::WrongShape),
            ("0[1]", PacketError::WrongShape),
            ("3[1]", PacketError::WrongShape),
            ("1{}", PacketError::WrongShape),
            ("5x-[\"e\"]", PacketError::BadAttachments),
            ("5[\"e\"]", PacketError::BadAttachments),
            ("5999-[\"e\"]", PacketError::BadAttachments),
            ("299999999999999999999999[\"e\"]", PacketError::BadAckId),
        ];
        for (text, err) in cases {
            assert_eq!(Packet::parse(text), Err(err), "{text:?}");
        }
    }

    #[test]
    fn binary_packets_announce_at_least_one_attachment() {
        // Was accepted as a plain event; Node refuses it ("Illegal attachments").
        assert_eq!(
            Packet::parse(r#"50-["e"]"#),
            Err(PacketError::BadAttachments)
        );
        assert_eq!(Packet::parse("60-1[]"), Err(PacketError::BadAttachments));
        assert_eq!(
            Packet::parse(r#"5-["e"]"#),
            Err(PacketError::BadAttachments)
        );
    }

    #[test]
    fn optional_payloads_are_absent_or_objects_never_null() {
        // A JSON `null` was taken for "no payload"; Node refuses both.
        assert_eq!(Packet::parse("0null"), Err(PacketError::WrongShape));
        assert_eq!(Packet::parse("0/admin,null"), Err(PacketError::WrongShape));
        assert_eq!(Packet::parse("1null"), Err(PacketError::WrongShape));
        assert_eq!(Packet::parse("0").map(|p| p.data), Ok(Value::Null));
        assert_eq!(Packet::parse("0{}").map(|p| p.data), Ok(json!({})));
    }

    #[test]
    fn reserved_event_names_are_refused() {
        for name in RESERVED_EVENTS {
            let text = format!(r#"2["{name}",1]"#);
            assert_eq!(
                Packet::parse(&text),
                Err(PacketError::ReservedEvent),
                "{text}"
            );
            let text = format!(r#"51-/admin,["{name}",{{"_placeholder":true,"num":0}}]"#);
            assert_eq!(
                Packet::parse(&text),
                Err(PacketError::ReservedEvent),
                "{text}"
            );
        }
        // Only the event name is checked, like Node.
        assert!(Packet::parse(r#"2["message","disconnect"]"#).is_ok());
    }

    #[test]
    fn placeholders_must_point_at_received_attachments() {
        let p = Packet::parse(r#"51-["up",{"_placeholder":true,"num":0}]"#).expect("parses");
        assert!(p.placeholders_valid(&[Bytes::from_static(b"x")]));
        assert!(!p.placeholders_valid(&[]));
    }

    #[test]
    fn encodes_server_packets() {
        assert_eq!(encode_connect("/", "abc", None), r#"0{"sid":"abc"}"#);
        assert_eq!(
            encode_connect("/admin", "abc", None),
            r#"0/admin,{"sid":"abc"}"#
        );
        assert_eq!(
            encode_connect("/", "abc", Some("p")),
            r#"0{"pid":"p","sid":"abc"}"#
        );
        assert_eq!(encode_connect_error("/", "nope"), r#"4{"message":"nope"}"#);
        assert_eq!(encode_event("/", r#"["m",1]"#), r#"2["m",1]"#);
        assert_eq!(encode_event("/x", r#"["m"]"#), r#"2/x,["m"]"#);
        assert_eq!(
            encode_ack("/", 3, &json!([{"ok":true}]), 0),
            r#"33[{"ok":true}]"#
        );
        assert_eq!(encode_ack("/x", 3, &json!([]), 2), "62-/x,3[]");
        assert_eq!(encode_event_value("/", &json!(["e"]), 0), r#"2["e"]"#);
        assert_eq!(
            encode_event_value("/c", &json!(["e", {"_placeholder": true, "num": 0}]), 1),
            r#"51-/c,["e",{"_placeholder":true,"num":0}]"#
        );
    }
}
