//! `Envelope::decode`: the msgpack `[1, seq, body]` a gateway receives on a topic channel.
//!
//! Input: the raw message bytes.
//!
//! Properties:
//! - an accepted envelope has the version this code reads (a newer format is never decoded as
//!   if it were ours);
//! - it re-encodes, both as `topic_publish.lua` builds it (`Envelope::encode` on the encoded
//!   body) and through serde, to the same bytes, which decode to an equal envelope;
//! - independently of decoding, a body built from the input (as the fanout could build one)
//!   and any seq survive encode → decode unchanged.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use roomcast_shared::wire::{ENVELOPE_VERSION, Envelope, EnvelopeBody};

fn round_trip(env: &Envelope) {
    let body = env.body.encode().expect("a body encodes");
    let wire = Envelope::encode(env.seq, &body).expect("an envelope encodes");
    assert_eq!(
        wire,
        rmp_serde::to_vec(env).expect("serde encodes"),
        "the script's splice and serde disagree"
    );
    let back = Envelope::decode(&wire).expect("what we encode decodes");
    assert_eq!(&back, env);
}

fn body(u: &mut Unstructured<'_>) -> arbitrary::Result<(u64, EnvelopeBody)> {
    Ok((
        u64::arbitrary(u)?,
        EnvelopeBody {
            source_id: String::arbitrary(u)?,
            nsp: String::arbitrary(u)?,
            rooms: Vec::arbitrary(u)?,
            except: Vec::arbitrary(u)?,
            data: String::arbitrary(u)?,
            published_at_ms: u64::arbitrary(u)?,
            traceparent: Option::arbitrary(u)?,
        },
    ))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        assert_eq!(env.version, ENVELOPE_VERSION, "decoded another version");
        round_trip(&env);
    }

    if let Ok((seq, body)) = body(&mut Unstructured::new(data)) {
        round_trip(&Envelope {
            version: ENVELOPE_VERSION,
            seq,
            body,
        });
    }
});
