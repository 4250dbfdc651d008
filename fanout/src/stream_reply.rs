//! Parsing of raw `XREAD` replies into entries whose fields stay raw and in Redis order. The
//! redis crate's `StreamReadReply` keeps fields in a `HashMap`, which loses both the order
//! (dead letters must keep it) and duplicated fields (which the contract refuses).

use redis::Value;
use thiserror::Error;

/// The field/value pairs of one entry, as Redis returned them.
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamEntry {
    pub(crate) id: String,
    /// `None` when Redis sent the entry without fields (a deleted entry, as consumer-group reads
    /// report them); skipped.
    pub(crate) fields: Option<Fields>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unexpected {command} reply: {detail}")]
pub(crate) struct ReplyError {
    command: &'static str,
    detail: String,
}

fn unexpected(command: &'static str, what: &str, value: &Value) -> ReplyError {
    // Bounded: a reply can hold whole entries.
    let mut detail = format!("{what}: {value:?}");
    detail.truncate(200);
    ReplyError { command, detail }
}

/// `XREAD ... STREAMS <one stream> <id>`: nil on timeout, else `[[stream, entries]]` (RESP2)
/// or `{stream: entries}` (RESP3).
pub(crate) fn read_reply(value: Value) -> Result<Vec<StreamEntry>, ReplyError> {
    const CMD: &str = "XREAD";
    let streams: Vec<Value> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => {
                    Ok(pair.into_iter().nth(1).unwrap_or_default())
                }
                other => Err(unexpected(CMD, "stream is not [name, entries]", &other)),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        other => return Err(unexpected(CMD, "not an array or map", &other)),
    };
    let mut out = Vec::new();
    for entries_value in streams {
        out.extend(entries(CMD, entries_value)?);
    }
    Ok(out)
}

fn entries(command: &'static str, value: Value) -> Result<Vec<StreamEntry>, ReplyError> {
    let items = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(unexpected(command, "entries are not an array", &other)),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            // A deleted entry without its id (as Redis 6.2 reported some): nothing to do.
            Value::Nil => {}
            Value::Array(parts) if parts.len() == 2 => {
                let mut parts = parts.into_iter();
                let id = string(command, parts.next().unwrap_or_default())?;
                let fields = match parts.next().unwrap_or_default() {
                    Value::Nil => None,
                    Value::Array(flat) => Some(pairs(command, flat)?),
                    other => {
                        return Err(unexpected(command, "entry fields are not an array", &other));
                    }
                };
                out.push(StreamEntry { id, fields });
            }
            other => return Err(unexpected(command, "entry is not [id, fields]", &other)),
        }
    }
    Ok(out)
}

fn pairs(command: &'static str, flat: Vec<Value>) -> Result<Fields, ReplyError> {
    if !flat.len().is_multiple_of(2) {
        return Err(ReplyError {
            command,
            detail: format!("odd number ({}) of field items", flat.len()),
        });
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        out.push((bytes(command, name)?, bytes(command, value)?));
    }
    Ok(out)
}

fn bytes(command: &'static str, value: Value) -> Result<Vec<u8>, ReplyError> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::VerbatimString { text, .. } => Ok(text.into_bytes()),
        other => Err(unexpected(command, "expected a string", &other)),
    }
}

fn string(command: &'static str, value: Value) -> Result<String, ReplyError> {
    let raw = bytes(command, value)?;
    String::from_utf8(raw).map_err(|e| ReplyError {
        command,
        detail: format!("id is not UTF-8: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    fn fields(pairs: &[(&str, &str)]) -> Option<Fields> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn read_timeout_is_empty() {
        assert_eq!(read_reply(Value::Nil), Ok(vec![]));
    }

    #[test]
    fn resp2_keeps_order_and_duplicates() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("p:publish"),
            Value::Array(vec![
                entry("1-0", &["room", "r", "event", "e", "event", "f"]),
                entry("1-1", &["event", "e"]),
            ]),
        ])]);
        let got = read_reply(reply).expect("parses");
        assert_eq!(
            got,
            vec![
                StreamEntry {
                    id: "1-0".into(),
                    fields: fields(&[("room", "r"), ("event", "e"), ("event", "f")])
                },
                StreamEntry {
                    id: "1-1".into(),
                    fields: fields(&[("event", "e")])
                },
            ]
        );
    }

    #[test]
    fn resp3_map_and_deleted_entry() {
        let reply = Value::Map(vec![(
            bulk("p:publish"),
            Value::Array(vec![
                Value::Array(vec![bulk("5-0"), Value::Nil]),
                entry("6-0", &["event", "e"]),
            ]),
        )]);
        let got = read_reply(reply).expect("parses");
        assert_eq!(
            got[0],
            StreamEntry {
                id: "5-0".into(),
                fields: None
            }
        );
        assert_eq!(got[1].fields, fields(&[("event", "e")]));
    }

    #[test]
    fn binary_values_stay_raw() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("data"), Value::BulkString(vec![0xff, 0x00])]),
            ])]),
        ])]);
        let got = read_reply(reply).expect("parses");
        assert_eq!(
            got[0].fields,
            Some(vec![(b"data".to_vec(), vec![0xff, 0x00])])
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(read_reply(Value::Int(1)).is_err());
        assert!(read_reply(Value::Array(vec![bulk("only-name")])).is_err());
        let odd = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![entry("1-0", &["event"])]),
        ])]);
        assert!(read_reply(odd).is_err());
        let int_field = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("a"), Value::Int(1)]),
            ])]),
        ])]);
        assert!(read_reply(int_field).is_err());
    }
}
