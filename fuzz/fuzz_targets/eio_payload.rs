//! `Inbound::parse` (one WebSocket text frame) and `Inbound::parse_payload` (a long-polling POST
//! body, packets joined by 0x1e): the Engine.IO v4 packets a client sends.
//!
//! Input: the frame or body bytes; both parsers get every input.
//!
//! Properties:
//! - parsing is exact: an accepted packet, written back in the protocol's form, gives the input
//!   byte for byte (so no two inputs mean the same, and nothing is dropped);
//! - a payload is accepted iff it is UTF-8 and each 0x1e-separated record is accepted on its
//!   own, and yields exactly those packets, in order;
//! - what the gateway's payload encoder writes for messages, binaries, pings and pongs parses
//!   back to the same packets.

#![no_main]

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use roomcast_gateway::eio::{Inbound, Message, Outbound, encode_payload};

/// The packet in the protocol's form, independent of the parser.
fn encode(p: &Inbound) -> Vec<u8> {
    match p {
        Inbound::Close => b"1".to_vec(),
        Inbound::Ping { probe: true } => b"2probe".to_vec(),
        Inbound::Ping { probe: false } => b"2".to_vec(),
        Inbound::Pong => b"3".to_vec(),
        Inbound::Message(text) => [b"4", text.as_bytes()].concat(),
        Inbound::Binary(data) => [&b"b"[..], BASE64.encode(data).as_bytes()].concat(),
        Inbound::Upgrade => b"5".to_vec(),
        Inbound::Noop => b"6".to_vec(),
    }
}

/// The same packet as the server would queue it, where the server sends that kind.
fn outbound(p: &Inbound) -> Option<Outbound> {
    Some(match p {
        Inbound::Message(text) => Outbound::Message(Message::from(text.as_str())),
        Inbound::Binary(data) => Outbound::Binary(data.clone()),
        Inbound::Ping { probe: false } => Outbound::Ping,
        Inbound::Pong => Outbound::Pong,
        _ => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);

    if let Ok(packet) = Inbound::parse(input.clone()) {
        assert_eq!(encode(&packet), data, "{packet:?} is not what was sent");
    }

    let records: Vec<&[u8]> = data.split(|&b| b == 0x1e).collect();
    let one_by_one: Result<Vec<Inbound>, _> = records
        .iter()
        .map(|r| Inbound::parse(Bytes::copy_from_slice(r)))
        .collect();
    match Inbound::parse_payload(input) {
        Ok(packets) => {
            assert!(
                std::str::from_utf8(data).is_ok(),
                "non-UTF-8 payload accepted"
            );
            assert_eq!(
                Ok(&packets),
                one_by_one.as_ref(),
                "payload and records disagree"
            );
            let joined = packets
                .iter()
                .map(encode)
                .collect::<Vec<_>>()
                .join(&0x1e_u8);
            assert_eq!(joined, data);
            if let Some(out) = packets.iter().map(outbound).collect::<Option<Vec<_>>>() {
                assert_eq!(
                    &encode_payload(&out)[..],
                    data,
                    "the server encodes it otherwise"
                );
            }
        }
        Err(_) => assert!(
            std::str::from_utf8(data).is_err() || one_by_one.is_err(),
            "payload refused though every record is valid"
        ),
    }
});
