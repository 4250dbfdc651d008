//! `PublishRequest::parse`: the fields of a publish stream entry, written by any backend.
//!
//! Input: one field per line, `name=value` (split at the first `=`; a line without one is a
//! name with an empty value; a final newline ends the last line). Values cannot hold `\n`,
//! which costs little: JSON never needs a raw newline and names with control characters are
//! refused anyway.
//!
//! Properties of every accepted request:
//! - its parts are valid on their own (event length and reserved names, namespace, rooms
//!   non-empty, valid and deduplicated, traceparent shape, `data` a JSON array whose first
//!   element is the event name);
//! - limits: accepted at exactly its own size and room count, refused one below either;
//! - field order does not matter;
//! - rebuilding the fields from the request (`args` or `data`, `room` or `rooms`) gives the
//!   same request, so the JSON text is kept as written;
//! - the gateway's EVENT packet for it reads back as that event (when serde_json can read the
//!   data at all: JSON clients accept numbers such as `1e999` that serde_json refuses).

#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_gateway::sio::packet::{self, Packet, PacketType};
use roomcast_shared::wire::{
    PublishError, PublishLimits, PublishRequest, Target,
    publish::{MAX_EVENT_BYTES, RESERVED_EVENTS},
    validate_namespace, validate_room,
};
use serde_json::value::RawValue;

const UNLIMITED: PublishLimits = PublishLimits {
    max_entry_bytes: usize::MAX,
    max_rooms: usize::MAX,
};

fn fields(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    if data.is_empty() {
        return Vec::new();
    }
    data.split(|&b| b == b'\n')
        .map(|line| match line.iter().position(|&b| b == b'=') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &b""[..]),
        })
        .collect()
}

fn parse(fields: &[(&[u8], &[u8])], limits: PublishLimits) -> Result<PublishRequest, PublishError> {
    PublishRequest::parse(fields.iter().copied(), limits)
}

fn value<'a>(fields: &[(&'a [u8], &'a [u8])], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| *k == name.as_bytes())
        .map(|(_, v)| std::str::from_utf8(v).expect("accepted values are UTF-8"))
}

/// Elements of a JSON array field before deduplication (what the room limit counts).
fn array_len(json: Option<&str>) -> usize {
    json.map_or(0, |j| {
        serde_json::from_str::<Vec<&RawValue>>(j)
            .expect("accepted room lists are JSON arrays")
            .len()
    })
}

fn assert_rooms(rooms: &[String]) {
    for (i, room) in rooms.iter().enumerate() {
        assert!(
            validate_room(room).is_ok(),
            "invalid room {room:?} accepted"
        );
        assert!(!rooms[..i].contains(room), "duplicate room {room:?} kept");
    }
}

fn is_traceparent(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 55
        && b.iter().enumerate().all(|(i, &c)| match i {
            2 | 35 | 52 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

fuzz_target!(|data: &[u8]| {
    let fields = fields(data);
    let result = parse(&fields, UNLIMITED);

    // Whether an entry is accepted does not depend on field order.
    let mut reversed = fields.clone();
    reversed.reverse();
    let reversed = parse(&reversed, UNLIMITED);

    let req = match result {
        Ok(req) => req,
        Err(error) => {
            assert!(
                reversed.is_err(),
                "accepted only in reverse order: {reversed:?}"
            );
            assert!(!error.to_string().is_empty() && !error.reason().is_empty());
            return;
        }
    };
    assert_eq!(
        reversed.as_ref(),
        Ok(&req),
        "field order changed the request"
    );

    // Each part is valid on its own.
    assert_eq!(Some(req.event.as_str()), value(&fields, "event"));
    assert!((1..=MAX_EVENT_BYTES).contains(&req.event.len()));
    assert!(!RESERVED_EVENTS.contains(&req.event.as_str()));
    assert!(validate_namespace(&req.nsp).is_ok());
    match &req.target {
        Target::Namespace => {}
        Target::Rooms(rooms) => {
            assert!(!rooms.is_empty(), "an empty room list became a target");
            assert_rooms(rooms);
        }
    }
    assert_rooms(&req.except);
    if let Some(tp) = &req.traceparent {
        assert!(is_traceparent(tp), "bad traceparent {tp:?} accepted");
    }
    let items: Vec<&RawValue> = serde_json::from_str(&req.data).expect("data is a JSON array text");
    assert!(req.data.starts_with('[') && req.data.ends_with(']'));
    let name: String = serde_json::from_str(items[0].get()).expect("first element is a string");
    assert_eq!(name, req.event);

    // Limits: accepted at exactly its size and room count, refused one below.
    let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
    let rooms = array_len(value(&fields, "rooms")).max(array_len(value(&fields, "except")));
    let exact = PublishLimits {
        max_entry_bytes: size,
        max_rooms: rooms,
    };
    assert_eq!(parse(&fields, exact).as_ref(), Ok(&req));
    let smaller = PublishLimits {
        max_entry_bytes: size - 1,
        ..exact
    };
    assert_eq!(
        parse(&fields, smaller),
        Err(PublishError::Oversized {
            size,
            max: size - 1
        })
    );
    if rooms > 0 {
        let fewer = PublishLimits {
            max_rooms: rooms - 1,
            ..exact
        };
        assert_eq!(
            parse(&fields, fewer).map_err(|e| e.reason()),
            Err("too_many_rooms")
        );
    }

    // Rebuilt from the request, the fields give the same request.
    let args = format!(
        "[{}]",
        items[1..]
            .iter()
            .map(|a| a.get())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut rebuilt: Vec<(String, String)> = vec![
        ("event".into(), req.event.clone()),
        ("nsp".into(), req.nsp.clone()),
        ("args".into(), args),
    ];
    match &req.target {
        Target::Namespace => {}
        Target::Rooms(rooms) => rebuilt.push((
            "rooms".into(),
            serde_json::to_string(rooms).expect("strings serialize"),
        )),
    }
    if !req.except.is_empty() {
        rebuilt.push((
            "except".into(),
            serde_json::to_string(&req.except).expect("strings serialize"),
        ));
    }
    if let Some(tp) = &req.traceparent {
        rebuilt.push(("traceparent".into(), tp.clone()));
    }
    let as_bytes = |f: &[(String, String)]| -> Result<PublishRequest, PublishError> {
        PublishRequest::parse(
            f.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            UNLIMITED,
        )
    };
    assert_eq!(
        as_bytes(&rebuilt).as_ref(),
        Ok(&req),
        "rebuilt: {rebuilt:?}"
    );
    // The single-argument and single-room spellings say the same.
    if items.len() == 2 {
        rebuilt[2] = ("data".into(), items[1].get().to_owned());
        assert_eq!(
            as_bytes(&rebuilt).as_ref(),
            Ok(&req),
            "rebuilt: {rebuilt:?}"
        );
    }
    if let Target::Rooms(rooms) = &req.target
        && let [room] = rooms.as_slice()
    {
        rebuilt.retain(|(k, _)| k != "rooms");
        rebuilt.push(("room".into(), room.clone()));
        assert_eq!(
            as_bytes(&rebuilt).as_ref(),
            Ok(&req),
            "rebuilt: {rebuilt:?}"
        );
    }

    // What the gateway sends for it reads back as that event.
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&req.data) {
        let text = packet::encode_event(&req.nsp, &req.data);
        let packet = Packet::parse(&text).expect("an accepted request frames a valid packet");
        assert_eq!(packet.kind, PacketType::Event);
        assert_eq!(packet.nsp, req.nsp);
        assert_eq!(packet.id, None);
        assert_eq!(packet.data, value);
    }
});
