//! Reading topic histories (`<topic>:hist`): the entries after a position, and the last entry at
//! or before a source id. Used by recovery and by gap repair.

use redis::Value;
use roomcast_shared::wire::{Envelope, StreamId};

/// One history entry: its source id (the entry id) and the envelope stored under it.
#[derive(Debug, Clone)]
pub(crate) struct HistoryEntry {
    pub(crate) src: StreamId,
    pub(crate) envelope: Envelope,
}

/// `XRANGE <hist> (<after> + COUNT <count>`: entries strictly after `after`.
pub(crate) fn range_after(
    pipe: &mut redis::Pipeline,
    history_key: &str,
    after: StreamId,
    count: usize,
) {
    pipe.cmd("XRANGE")
        .arg(history_key)
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count);
}

/// `XREVRANGE <hist> <at> - COUNT 1`: the last entry at or before `at`.
pub(crate) fn last_at_or_before(pipe: &mut redis::Pipeline, history_key: &str, at: StreamId) {
    pipe.cmd("XREVRANGE")
        .arg(history_key)
        .arg(at.to_string())
        .arg("-")
        .arg("COUNT")
        .arg(1);
}

/// Parses an XRANGE/XREVRANGE reply. Entries that do not decode are skipped with a warning
/// (they cannot be delivered anyway); the caller's contiguity checks notice the hole.
pub(crate) fn parse_entries(reply: Value) -> Vec<HistoryEntry> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut parts) = item else {
            continue;
        };
        if parts.len() != 2 {
            continue;
        }
        let fields = parts.pop();
        let id = parts.pop();
        let (Some(Value::BulkString(id)), Some(Value::Array(fields))) = (id, fields) else {
            continue;
        };
        let Some(src) = std::str::from_utf8(&id).ok().and_then(StreamId::parse) else {
            continue;
        };
        let envelope = fields.chunks(2).find_map(|pair| match pair {
            [Value::BulkString(name), Value::BulkString(value)] if name == b"e" => {
                Some(Envelope::decode(value))
            }
            _ => None,
        });
        match envelope {
            Some(Ok(envelope)) => out.push(HistoryEntry { src, envelope }),
            Some(Err(error)) => tracing::warn!(%error, %src, "undecodable history entry skipped"),
            None => tracing::warn!(%src, "history entry without an envelope skipped"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_shared::wire::EnvelopeBody;

    #[test]
    fn parses_entries_and_skips_junk() {
        let body = EnvelopeBody {
            source_id: "5-1".into(),
            nsp: "/".into(),
            rooms: vec!["r".into()],
            except: vec![],
            data: "[\"e\"]".into(),
            published_at_ms: 5,
            traceparent: None,
        };
        let bytes = Envelope::encode(3, &body.encode().expect("encodes")).expect("encodes");
        let entry = |id: &str, field: &str, value: Vec<u8>| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(field.as_bytes().to_vec()),
                    Value::BulkString(value),
                ]),
            ])
        };
        let reply = Value::Array(vec![
            entry("5-1", "e", bytes),
            entry("6-0", "e", b"junk".to_vec()),
            entry("7-0", "x", b"y".to_vec()),
            Value::Int(1),
        ]);
        let entries = parse_entries(reply);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].src, StreamId { ms: 5, seq: 1 });
        assert_eq!(entries[0].envelope.seq, 3);
        assert!(parse_entries(Value::Nil).is_empty());
    }
}
