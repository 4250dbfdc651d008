//! Engine.IO v4 packets on both transports: a WebSocket text frame is one packet (`4hello`,
//! `2`, `3probe`), a binary frame is one binary message; a long-polling payload joins packets
//! with the record separator 0x1e and writes binary messages as `b` + base64.

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use bytes::{BufMut as _, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Text received from a client: a cheaply cloneable, reference-counted UTF-8 string.
pub type Str = Utf8Bytes;

/// Separates the packets of a long-polling payload.
const SEPARATOR: u8 = 0x1e;

/// An outgoing Engine.IO `message` packet, encoded once (with its `4` type prefix) and shared by
/// reference count: a broadcast queues the same bytes on every recipient's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message(Utf8Bytes);

impl Message {
    /// Wraps a message's content (e.g. a Socket.IO packet) as an Engine.IO message packet.
    pub fn new(mut content: String) -> Self {
        // One move of the bytes per packet; the result is shared by every recipient.
        content.insert(0, '4');
        Self(content.into())
    }

    /// The content, without the type prefix.
    pub fn as_str(&self) -> &str {
        &self.0.as_str()[1..]
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.as_str().as_bytes()
    }

    /// The encoded packet, `4` included: what a WebSocket text frame carries.
    pub(crate) fn frame(&self) -> &Utf8Bytes {
        &self.0
    }

    /// Size of the encoded packet in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() <= 1
    }
}

impl From<String> for Message {
    fn from(content: String) -> Self {
        Self::new(content)
    }
}

impl From<&str> for Message {
    fn from(content: &str) -> Self {
        Self::new(content.to_owned())
    }
}

/// A packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Close,
    /// Only `2probe` (the upgrade probe) is expected from v4 clients; a plain ping gets a pong.
    Ping {
        probe: bool,
    },
    Pong,
    Message(Str),
    Binary(Bytes),
    Upgrade,
    Noop,
}

/// What is wrong with a packet a client sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("a {0} packet must not carry data")]
    UnexpectedData(&'static str),
    #[error("invalid base64 in a binary packet")]
    Base64,
    #[error("packet is not UTF-8")]
    NotUtf8,
    #[error("packet type {0:?} is not sent by clients")]
    NotFromClient(char),
}

impl Inbound {
    /// Parses one text packet: a WebSocket text frame or one record of a polling payload.
    /// `text` is sliced, not copied.
    pub fn parse(text: Bytes) -> Result<Self, PacketError> {
        let Some(&kind) = text.first() else {
            return Err(PacketError::Empty);
        };
        let data = text.slice(1..);
        let bare = |packet: Self, name: &'static str| {
            if data.is_empty() {
                Ok(packet)
            } else {
                Err(PacketError::UnexpectedData(name))
            }
        };
        match kind {
            b'1' => bare(Self::Close, "close"),
            b'2' if &data[..] == b"probe" => Ok(Self::Ping { probe: true }),
            b'2' => bare(Self::Ping { probe: false }, "ping"),
            b'3' => bare(Self::Pong, "pong"),
            b'4' => Str::try_from(data)
                .map(Self::Message)
                .map_err(|_| PacketError::NotUtf8),
            b'5' => bare(Self::Upgrade, "upgrade"),
            b'6' => bare(Self::Noop, "noop"),
            b'b' => BASE64
                .decode(&data)
                .map(|bytes| Self::Binary(bytes.into()))
                .map_err(|_| PacketError::Base64),
            b'0' => Err(PacketError::NotFromClient('0')),
            other => Err(PacketError::UnknownType(char::from(other))),
        }
    }

    /// Splits a long-polling payload into its packets.
    pub fn parse_payload(payload: Bytes) -> Result<Vec<Self>, PacketError> {
        if std::str::from_utf8(&payload).is_err() {
            return Err(PacketError::NotUtf8);
        }
        let mut packets = Vec::new();
        let mut rest = payload;
        loop {
            match rest.iter().position(|&b| b == SEPARATOR) {
                Some(at) => {
                    let record = rest.split_to(at);
                    rest = rest.slice(1..);
                    packets.push(Self::parse(record)?);
                }
                None => {
                    packets.push(Self::parse(rest)?);
                    return Ok(packets);
                }
            }
        }
    }
}

/// A packet queued for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    Message(Message),
    Binary(Bytes),
    Ping,
    Pong,
}

impl Outbound {
    /// Bytes this packet takes in a polling payload, separator excluded.
    fn payload_len(&self) -> usize {
        match self {
            Self::Message(m) => m.len(),
            Self::Binary(b) => 1 + b.len().div_ceil(3) * 4,
            Self::Ping | Self::Pong => 1,
        }
    }

    fn write_payload(&self, out: &mut BytesMut) {
        match self {
            Self::Message(m) => out.put_slice(m.frame().as_bytes()),
            Self::Binary(b) => {
                out.put_u8(b'b');
                let start = out.len();
                out.resize(start + b.len().div_ceil(3) * 4, 0);
                // The length is exact for padded base64, so this cannot fail.
                let written = BASE64.encode_slice(b, &mut out[start..]).unwrap_or(0);
                out.truncate(start + written);
            }
            Self::Ping => out.put_u8(b'2'),
            Self::Pong => out.put_u8(b'3'),
        }
    }
}

/// Encodes packets as one long-polling payload.
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = &'a Outbound> + Clone) -> Bytes {
    let len: usize = packets
        .clone()
        .into_iter()
        .map(|p| p.payload_len() + 1)
        .sum();
    let mut out = BytesMut::with_capacity(len);
    for (i, packet) in packets.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(SEPARATOR);
        }
        packet.write_payload(&mut out);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Inbound, PacketError> {
        Inbound::parse(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn parses_client_packets() {
        assert_eq!(parse("1"), Ok(Inbound::Close));
        assert_eq!(parse("2"), Ok(Inbound::Ping { probe: false }));
        assert_eq!(parse("2probe"), Ok(Inbound::Ping { probe: true }));
        assert_eq!(parse("3"), Ok(Inbound::Pong));
        assert_eq!(parse("4hello"), Ok(Inbound::Message("hello".into())));
        assert_eq!(parse("4"), Ok(Inbound::Message("".into())));
        assert_eq!(parse("5"), Ok(Inbound::Upgrade));
        assert_eq!(parse("6"), Ok(Inbound::Noop));
        assert_eq!(
            parse("bAQIDBA=="),
            Ok(Inbound::Binary(Bytes::from_static(&[1, 2, 3, 4])))
        );
    }

    #[test]
    fn rejects_malformed_packets() {
        assert_eq!(parse(""), Err(PacketError::Empty));
        assert_eq!(parse("abc"), Err(PacketError::UnknownType('a')));
        assert_eq!(parse("0{}"), Err(PacketError::NotFromClient('0')));
        assert_eq!(parse("3x"), Err(PacketError::UnexpectedData("pong")));
        assert_eq!(parse("b!!"), Err(PacketError::Base64));
        assert_eq!(
            Inbound::parse(Bytes::from_static(b"4\xff")),
            Err(PacketError::NotUtf8)
        );
    }

    #[test]
    fn splits_payloads() {
        let payload = Bytes::from_static(b"4test1\x1e4test2\x1ebAQIDBA==\x1e3");
        assert_eq!(
            Inbound::parse_payload(payload),
            Ok(vec![
                Inbound::Message("test1".into()),
                Inbound::Message("test2".into()),
                Inbound::Binary(Bytes::from_static(&[1, 2, 3, 4])),
                Inbound::Pong,
            ])
        );
        assert_eq!(
            Inbound::parse_payload(Bytes::from_static(b"4a\x1e")),
            Err(PacketError::Empty)
        );
    }

    #[test]
    fn encodes_payloads_byte_exact() {
        let packets = [
            Outbound::Message("hello".into()),
            Outbound::Binary(Bytes::from_static(&[1, 2, 3, 4])),
            Outbound::Ping,
            Outbound::Binary(Bytes::new()),
        ];
        assert_eq!(
            &encode_payload(&packets)[..],
            b"4hello\x1ebAQIDBA==\x1e2\x1eb"
        );
        assert_eq!(&encode_payload(&[Outbound::Pong])[..], b"3");
    }

    #[test]
    fn round_trips_through_a_payload() {
        let out = [
            Outbound::Message("4\u{e9}\u{1f600}".into()),
            Outbound::Binary(Bytes::from_static(b"\x00\xff\x1e")),
        ];
        let back = Inbound::parse_payload(encode_payload(&out)).expect("valid payload");
        assert_eq!(
            back,
            vec![
                Inbound::Message("4\u{e9}\u{1f600}".into()),
                Inbound::Binary(Bytes::from_static(b"\x00\xff\x1e")),
            ]
        );
    }

    #[test]
    fn message_is_prefixed_once() {
        let m = Message::new("2[\"x\"]".to_owned());
        assert_eq!(m.frame().as_str(), "42[\"x\"]");
        assert_eq!(m.as_str(), "2[\"x\"]");
    }
}
