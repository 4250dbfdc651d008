//! The msgpack envelope (contract v1) the fanout publishes on a topic channel and gateways decode.
//!
//! On the wire an envelope is the msgpack array `[version, seq, body]`. Structs are encoded as
//! arrays (rmp-serde's default), so a field's position is its stable tag: fields are only ever
//! appended, new ones with `#[serde(default)]`. The body is encoded once per publish request and
//! reused for every target topic; the sequencing script (`topic_publish.lua`) prepends the version
//! and the topic's sequence number, which is why `encode` works on already-encoded body bytes.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The envelope format version this code writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// What a gateway needs to deliver one publish request to its local sockets.
///
/// Decoding is lenient at the tail in both directions: fields missing at the end take their
/// default, and fields appended by a newer writer are skipped, so either side of a rolling
/// deploy can be upgraded first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvelopeBody {
    /// 0: id of the publish stream entry this came from; identical in every topic's copy.
    pub source_id: String,
    /// 1: namespace, e.g. `/`.
    pub nsp: String,
    /// 2: every target room of the request (empty: the whole namespace). A gateway uses the full
    /// list so that a socket in several target rooms receives the event once.
    pub rooms: Vec<String>,
    /// 3: rooms whose members must not receive the event.
    pub except: Vec<String>,
    /// 4: the Socket.IO EVENT data as JSON array text, `["event", arg1, ...]`.
    pub data: String,
    /// 5: time of the publish stream entry (unix ms), for delivery latency.
    pub published_at_ms: u64,
    /// 6: W3C trace context of the publisher, if it sent one.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// A decoded envelope: the topic's sequence number and the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u8,
    /// Position of this message in its topic, contiguous from 1.
    pub seq: u64,
    pub body: EnvelopeBody,
}

#[derive(Debug, Error)]
pub enum EnvelopeError {
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    #[error("malformed envelope: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("cannot encode envelope: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

impl<'de> Deserialize<'de> for EnvelopeBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;

        impl<'de> serde::de::Visitor<'de> for BodyVisitor {
            type Value = EnvelopeBody;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an envelope body array of at least 6 fields")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EnvelopeBody, A::Error> {
                use serde::de::Error;
                let missing = |i| A::Error::invalid_length(i, &self);
                let body = EnvelopeBody {
                    source_id: seq.next_element()?.ok_or_else(|| missing(0))?,
                    nsp: seq.next_element()?.ok_or_else(|| missing(1))?,
                    rooms: seq.next_element()?.ok_or_else(|| missing(2))?,
                    except: seq.next_element()?.ok_or_else(|| missing(3))?,
                    data: seq.next_element()?.ok_or_else(|| missing(4))?,
                    published_at_ms: seq.next_element()?.ok_or_else(|| missing(5))?,
                    traceparent: seq.next_element()?.flatten(),
                };
                // Fields a newer writer appended: skip them.
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(body)
            }
        }

        deserializer.deserialize_seq(BodyVisitor)
    }
}

impl EnvelopeBody {
    /// Encodes the body once; the result is what the sequencing script receives as `ARGV[3]`.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(rmp_serde::to_vec(self)?)
    }
}

impl Envelope {
    /// Builds the wire bytes from an encoded body, exactly as `topic_publish.lua` does.
    pub fn encode(seq: u64, body: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::with_capacity(body.len() + 11);
        out.push(0x93);
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&rmp_serde::to_vec(&seq)?);
        out.extend_from_slice(body);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        // Check the version before the body so a newer format is reported as such, not as garbage.
        if let [0x90..=0x9f, v @ 0..=0x7f, ..] = bytes
            && *v != ENVELOPE_VERSION
        {
            return Err(EnvelopeError::UnsupportedVersion(*v));
        }
        let envelope: Self = rmp_serde::from_slice(bytes)?;
        // The check above only sees the compact encoding; msgpack has others for the same array
        // and number (found by fuzzing: `0xd0 0x00`, an int8 0, decoded as version 0).
        if envelope.version != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(envelope.version));
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> EnvelopeBody {
        EnvelopeBody {
            source_id: "1-0".into(),
            nsp: "/".into(),
            rooms: vec!["r".into()],
            except: vec![],
            data: r#"["m",1]"#.into(),
            published_at_ms: 5,
            traceparent: None,
        }
    }

    /// Golden bytes: a change here breaks every gateway and fanout of the previous version.
    #[test]
    fn golden_bytes() {
        let body = body().encode().expect("encodes");
        let bytes = Envelope::encode(300, &body).expect("encodes");
        let expected: &[u8] = &[
            0x93, 0x01, 0xcd, 0x01, 0x2c, // [1, 300,
            0x97, // body: array of 7
            0xa3, b'1', b'-', b'0', // "1-0"
            0xa1, b'/', // "/"
            0x91, 0xa1, b'r', // ["r"]
            0x90, // []
            0xa7, b'[', b'"', b'm', b'"', b',', b'1', b']', // "[\"m\",1]"
            0x05, // 5
            0xc0, // nil
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn round_trip_matches_serde_encoding() {
        let env = Envelope {
            version: 1,
            seq: 1 << 40,
            body: body(),
        };
        let via_serde = rmp_serde::to_vec(&env).expect("encodes");
        let via_splice =
            Envelope::encode(env.seq, &env.body.encode().expect("encodes")).expect("encodes");
        assert_eq!(via_serde, via_splice);
        assert_eq!(Envelope::decode(&via_splice).expect("decodes"), env);
    }

    #[test]
    fn older_body_without_trailing_optional_field_decodes() {
        // A v1 writer that predates `traceparent` sent 6 body fields.
        let mut bytes = vec![0x93, 0x01, 0x01, 0x96];
        bytes.extend_from_slice(&[
            0xa3, b'1', b'-', b'0', 0xa1, b'/', 0x90, 0x90, 0xa2, b'[', b']', 0x00,
        ]);
        let env = Envelope::decode(&bytes).expect("decodes");
        assert_eq!(env.body.traceparent, None);
        assert_eq!(env.body.data, "[]");
    }

    #[test]
    fn newer_body_with_appended_fields_decodes() {
        let mut body = rmp_serde::to_vec(&body()).expect("encodes");
        // Grow the array from 7 to 9 fields: a future writer's additions.
        assert_eq!(body[0], 0x97);
        body[0] = 0x99;
        body.extend_from_slice(&[0xa1, b'x', 0x2a]);
        let env = Envelope::decode(&Envelope::encode(3, &body).expect("encodes")).expect("decodes");
        assert_eq!(env.body, super::tests::body());
    }

    #[test]
    fn rejects_other_versions_in_any_msgpack_encoding() {
        let body = body().encode().expect("encodes");
        for header in [
            &[0x93, 0xd0, 0x00][..],               // int8 0 (the fuzzer's find)
            &[0x93, 0xcc, 0x02],                   // uint8 2
            &[0xdc, 0x00, 0x03, 0x02],             // array16 of 3, version 2
            &[0xdd, 0x00, 0x00, 0x00, 0x03, 0x00], // array32 of 3, version 0
        ] {
            let mut bytes = header.to_vec();
            bytes.push(0x01); // seq
            bytes.extend_from_slice(&body);
            assert!(
                matches!(
                    Envelope::decode(&bytes),
                    Err(EnvelopeError::UnsupportedVersion(0 | 2))
                ),
                "{header:x?}"
            );
        }
        // Another encoding of version 1 is still version 1.
        let mut bytes = vec![0xdc, 0x00, 0x03, 0xcc, 0x01, 0x01];
        bytes.extend_from_slice(&body);
        assert_eq!(Envelope::decode(&bytes).expect("decodes").version, 1);
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        assert!(matches!(
            Envelope::decode(&[0x93, 0x02, 0x01, 0x90]),
            Err(EnvelopeError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            Envelope::decode(b"hello"),
            Err(EnvelopeError::Decode(_))
        ));
        assert!(matches!(
            Envelope::decode(&[]),
            Err(EnvelopeError::Decode(_))
        ));
    }
}
