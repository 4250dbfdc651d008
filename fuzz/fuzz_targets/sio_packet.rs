//! `Packet::parse`: a Socket.IO v5 packet a client sends (`<type>[<n>-][<nsp>,][<id>][<json>]`).
//!
//! Input: the packet text (what follows the Engine.IO `4`); non-UTF-8 input is skipped, the
//! Engine.IO layer refuses it before.
//!
//! Properties of every accepted packet:
//! - binary packets announce 1 to `MAX_ATTACHMENTS` attachments, other packets none;
//! - it has the shape the connection code relies on: never CONNECT_ERROR; namespace starts with
//!   `/` and holds no `,`; CONNECT: no id, no payload or an object; DISCONNECT: no id, no
//!   payload; EVENT: a non-empty array led by a string (not a reserved name) or a number, so
//!   taking the name out cannot fail; ACK: an id and an array;
//! - encoding it again (with the gateway's encoders where it has one) parses to the same packet;
//! - placeholder checking never panics, accepts nothing when no attachment arrived unless the
//!   packet has no placeholder, and once valid stays valid with more attachments.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use roomcast_gateway::sio::packet::{self, MAX_ATTACHMENTS, Packet, PacketError, PacketType};
use roomcast_shared::wire::publish::RESERVED_EVENTS;
use serde_json::Value;

/// The packet as a client would write it: the spec's layout, independent of the parser.
fn encode(p: &Packet) -> String {
    let mut out = String::new();
    out.push(char::from(b'0' + p.kind as u8));
    if p.attachments > 0 {
        out.push_str(&format!("{}-", p.attachments));
    }
    if p.nsp != "/" {
        out.push_str(&p.nsp);
        out.push(',');
    }
    if let Some(id) = p.id {
        out.push_str(&id.to_string());
    }
    if !p.data.is_null() {
        out.push_str(&p.data.to_string());
    }
    out
}

/// JSON equality, with floats equal within 2 ULPs: serde_json (built, like the gateway, without
/// its `float_roundtrip` feature) may read a long decimal to a neighbour of the nearest double,
/// so printing and reading it again can move it by an ULP. Harmless, and not the parser's doing.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    x == y || (x.signum() == y.signum() && x.to_bits().abs_diff(y.to_bits()) <= 2)
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Whether `v` holds a `{"_placeholder":true,…}` marker anywhere.
fn has_placeholder(v: &Value) -> bool {
    match v {
        Value::Object(map) => {
            map.get("_placeholder") == Some(&Value::Bool(true)) || map.values().any(has_placeholder)
        }
        Value::Array(items) => items.iter().any(has_placeholder),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let p = match Packet::parse(text) {
        Ok(p) => p,
        Err(PacketError::UnexpectedBinary) => panic!("the parser sees no binary"),
        Err(_) => return,
    };

    let binary = matches!(p.kind, PacketType::BinaryEvent | PacketType::BinaryAck);
    assert!(
        p.attachments <= MAX_ATTACHMENTS,
        "{} attachments",
        p.attachments
    );
    assert_eq!(binary, p.attachments > 0, "attachments on the wrong kind");

    assert!(
        p.nsp.starts_with('/') && !p.nsp.contains(','),
        "nsp {:?}",
        p.nsp
    );
    match p.kind {
        PacketType::Connect => {
            assert!(p.id.is_none() && (p.data.is_null() || p.data.is_object()));
        }
        PacketType::Disconnect => assert!(p.id.is_none() && p.data.is_null()),
        PacketType::Event | PacketType::BinaryEvent => {
            let Value::Array(args) = &p.data else {
                panic!("event data {:?}", p.data);
            };
            match args.first() {
                Some(Value::String(name)) => assert!(!RESERVED_EVENTS.contains(&name.as_str())),
                Some(Value::Number(_)) => {}
                other => panic!("event name {other:?}"),
            }
        }
        PacketType::Ack | PacketType::BinaryAck => assert!(p.id.is_some() && p.data.is_array()),
        PacketType::ConnectError => panic!("CONNECT_ERROR accepted from a client"),
    }

    // Encoded again, it reads back the same; the gateway's encoders agree with the layout.
    let again = encode(&p);
    let back = Packet::parse(&again).unwrap_or_else(|e| panic!("{again:?} refused: {e}"));
    assert!(
        (back.kind, &back.nsp, back.id, back.attachments) == (p.kind, &p.nsp, p.id, p.attachments)
            && same_json(&back.data, &p.data),
        "re-encoded as {again:?}, read back as {back:?}"
    );
    match (p.kind, p.id) {
        (PacketType::Event | PacketType::BinaryEvent, None) => {
            assert_eq!(
                packet::encode_event_value(&p.nsp, &p.data, p.attachments),
                again
            );
        }
        (PacketType::Ack | PacketType::BinaryAck, Some(id)) => {
            assert_eq!(
                packet::encode_ack(&p.nsp, id, &p.data, p.attachments),
                again
            );
        }
        _ => {}
    }

    // Placeholders: without attachments only a packet without any is valid; valid with n
    // attachments stays valid with more.
    assert_eq!(p.placeholders_valid(&[]), !has_placeholder(&p.data));
    let mut valid = false;
    for n in 0..=MAX_ATTACHMENTS {
        let now = p.placeholders_valid(&vec![Bytes::new(); n]);
        assert!(
            now || !valid,
            "valid with fewer than {n} attachments, not with {n}"
        );
        valid = now;
    }
});
