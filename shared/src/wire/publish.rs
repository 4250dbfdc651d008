//! The publish request (contract v1): the fields of one entry a backend `XADD`s to
//! `<prefix>:publish` — an event to deliver, or a command for the gateways (`command` field) —
//! and their validation. `docs/publish.md` is the human version.
//!
//! Parsing is strict on purpose: an unknown field (a typo such as `romm`) would otherwise turn a
//! room message into a namespace-wide broadcast, so it is refused and dead-lettered instead.

use serde_json::value::RawValue;
use thiserror::Error;

use super::names::{NameError, validate_namespace, validate_room};

/// Event names Socket.IO reserves for a socket's own lifecycle (socket.io-parser's
/// `RESERVED_EVENTS`): a publisher must not emit them and a client must not send them.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];
/// Longest accepted event name, in bytes.
pub const MAX_EVENT_BYTES: usize = 256;

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct PublishLimits {
    /// Largest accepted entry (sum of field names and values), in bytes.
    pub max_entry_bytes: usize,
    /// Most target rooms in one request: each costs one sequencing call carrying the whole body,
    /// so an entry with thousands of tiny room names would multiply into gigabytes of work.
    pub max_rooms: usize,
}

/// Who receives a publish request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every socket connected to the namespace.
    Namespace,
    /// Members of any of these rooms (deduplicated, in request order); a socket in several
    /// receives the event once.
    Rooms(Vec<String>),
}

/// Rooms of sockets that belong to one user each: `user:<sub>` (see the gateway's auth).
pub const USER_ROOM_PREFIX: &str = "user:";

/// One entry of the publish stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishEntry {
    Event(PublishRequest),
    Command(Command),
}

/// A command for the gateways: act on the sockets of a room, a user or a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub nsp: String,
    /// Whose sockets: members of these rooms (a user is its room `user:<id>`), or everyone.
    pub target: Target,
    pub action: CommandAction,
    pub traceparent: Option<String>,
}

/// What a command does to each target socket.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum CommandAction {
    /// Join these rooms.
    Join { rooms: Vec<String> },
    /// Leave these rooms.
    Leave { rooms: Vec<String> },
    /// Disconnect the socket: with `recover`, as a dropped connection the client recovers from
    /// (on any gateway); without, as a server-side disconnect the client does not retry.
    Disconnect { recover: bool },
}

impl CommandAction {
    /// A stable label for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Leave { .. } => "leave",
            Self::Disconnect { .. } => "disconnect",
        }
    }
}

/// A validated publish request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub nsp: String,
    pub event: String,
    /// Socket.IO EVENT data, JSON array text: `["event", arg1, ...]`.
    pub data: String,
    pub target: Target,
    pub except: Vec<String>,
    pub traceparent: Option<String>,
}

/// Why an entry cannot be honoured. `Display` is the readable `error` written to the
/// dead-letter stream; [`PublishError::reason`] is a short label from a fixed set, for metrics.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublishError {
    #[error("entry is {size} bytes, over the limit of {max} bytes")]
    Oversized { size: usize, max: usize },
    #[error("field name is not valid UTF-8")]
    FieldNameNotUtf8,
    #[error("field `{0}` is not valid UTF-8")]
    NotUtf8(String),
    #[error(
        "unknown field `{0}` (known: event, data, args, room, rooms, user, except, nsp, traceparent, command, recover)"
    )]
    UnknownField(String),
    #[error("field `{0}` appears more than once")]
    DuplicateField(String),
    #[error("missing required field `event`")]
    MissingEvent,
    #[error("event name must be 1 to {MAX_EVENT_BYTES} bytes")]
    InvalidEvent,
    #[error("event name `{0}` is reserved by Socket.IO")]
    ReservedEvent(String),
    #[error("fields `{0}` and `{1}` cannot be used together")]
    Conflicting(&'static str, &'static str),
    #[error("field `{field}` is not valid JSON: {error}")]
    InvalidJson { field: &'static str, error: String },
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `{field}`: {error}")]
    InvalidRoom {
        field: &'static str,
        error: NameError,
    },
    #[error("field `nsp`: {0}")]
    InvalidNamespace(NameError),
    #[error("field `traceparent` is not a W3C traceparent")]
    InvalidTraceparent,
    #[error("field `{field}` lists {count} rooms, over the limit of {max}")]
    TooManyRooms {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("unknown command `{0}` (known: join, leave, disconnect)")]
    UnknownCommand(String),
    #[error("field `{field}` is not allowed with `command {command}`")]
    NotForCommand {
        field: &'static str,
        command: &'static str,
    },
    #[error("`command {0}` needs field `args`: a non-empty JSON array of room names")]
    MissingCommandRooms(&'static str),
}

impl PublishError {
    /// A stable, bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "oversized",
            Self::FieldNameNotUtf8 | Self::NotUtf8(_) => "not_utf8",
            Self::UnknownField(_) => "unknown_field",
            Self::DuplicateField(_) => "duplicate_field",
            Self::MissingEvent => "missing_event",
            Self::InvalidEvent | Self::ReservedEvent(_) => "invalid_event",
            Self::Conflicting(..) => "conflicting_fields",
            Self::InvalidJson { .. } => "invalid_json",
            Self::WrongType { .. } => "wrong_type",
            Self::InvalidRoom { .. } => "invalid_room",
            Self::InvalidNamespace(_) => "invalid_namespace",
            Self::InvalidTraceparent => "invalid_traceparent",
            Self::TooManyRooms { .. } => "too_many_rooms",
            Self::UnknownCommand(_) | Self::NotForCommand { .. } | Self::MissingCommandRooms(_) => {
                "invalid_command"
            }
        }
    }
}

#[derive(Default)]
struct RawFields<'a> {
    event: Option<&'a str>,
    data: Option<&'a str>,
    args: Option<&'a str>,
    room: Option<&'a str>,
    rooms: Option<&'a str>,
    except: Option<&'a str>,
    nsp: Option<&'a str>,
    traceparent: Option<&'a str>,
    user: Option<&'a str>,
    command: Option<&'a str>,
    recover: Option<&'a str>,
}

impl PublishEntry {
    /// Parses the field/value pairs of one stream entry, in the order Redis returned them.
    pub fn parse<'a, I>(fields: I, limits: PublishLimits) -> Result<Self, PublishError>
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
        I::IntoIter: Clone,
    {
        let fields = fields.into_iter();
        let size: usize = fields.clone().map(|(k, v)| k.len() + v.len()).sum();
        if size > limits.max_entry_bytes {
            return Err(PublishError::Oversized {
                size,
                max: limits.max_entry_bytes,
            });
        }
        let raw = collect_fields(fields)?;
        match raw.command {
            Some(command) => Command::from_raw(command, &raw, limits).map(Self::Command),
            None => PublishRequest::from_raw(&raw, limits).map(Self::Event),
        }
    }
}

impl PublishRequest {
    /// Parses an entry that must be an event (see [`PublishEntry::parse`]).
    pub fn parse<'a, I>(fields: I, limits: PublishLimits) -> Result<Self, PublishError>
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
        I::IntoIter: Clone,
    {
        match PublishEntry::parse(fields, limits)? {
            PublishEntry::Event(request) => Ok(request),
            PublishEntry::Command(_) => Err(PublishError::MissingEvent),
        }
    }

    fn from_raw(raw: &RawFields<'_>, limits: PublishLimits) -> Result<Self, PublishError> {
        if raw.recover.is_some() {
            return Err(PublishError::Conflicting("recover", "event"));
        }
        let event = raw.event.ok_or(PublishError::MissingEvent)?;
        if event.is_empty() || event.len() > MAX_EVENT_BYTES {
            return Err(PublishError::InvalidEvent);
        }
        if RESERVED_EVENTS.contains(&event) {
            return Err(PublishError::ReservedEvent(event.to_owned()));
        }

        let nsp = raw.nsp.unwrap_or("/");
        validate_namespace(nsp).map_err(PublishError::InvalidNamespace)?;

        let data = event_data(event, raw.data, raw.args)?;
        let target = target(raw, limits)?;
        let except = raw
            .except
            .map(|json| room_list("except", json, limits.max_rooms))
            .transpose()?
            .unwrap_or_default();
        let traceparent = traceparent(raw)?;

        Ok(Self {
            nsp: nsp.to_owned(),
            event: event.to_owned(),
            data,
            target,
            except,
            traceparent,
        })
    }
}

impl Command {
    fn from_raw(
        command: &str,
        raw: &RawFields<'_>,
        limits: PublishLimits,
    ) -> Result<Self, PublishError> {
        let name: &'static str = match command {
            "join" => "join",
            "leave" => "leave",
            "disconnect" => "disconnect",
            other => return Err(PublishError::UnknownCommand(other.to_owned())),
        };
        for (field, present) in [
            ("event", raw.event.is_some()),
            ("data", raw.data.is_some()),
            ("except", raw.except.is_some()),
        ] {
            if present {
                return Err(PublishError::NotForCommand {
                    field,
                    command: name,
                });
            }
        }
        let nsp = raw.nsp.unwrap_or("/");
        validate_namespace(nsp).map_err(PublishError::InvalidNamespace)?;
        let rooms = || -> Result<Vec<String>, PublishError> {
            let json = raw.args.ok_or(PublishError::MissingCommandRooms(name))?;
            let rooms = room_list("args", json, limits.max_rooms)?;
            if rooms.is_empty() {
                return Err(PublishError::MissingCommandRooms(name));
            }
            Ok(rooms)
        };
        let action = match name {
            "join" | "leave" => {
                if raw.recover.is_some() {
                    return Err(PublishError::NotForCommand {
                        field: "recover",
                        command: name,
                    });
                }
                if name == "join" {
                    CommandAction::Join { rooms: rooms()? }
                } else {
                    CommandAction::Leave { rooms: rooms()? }
                }
            }
            _ => {
                if raw.args.is_some() {
                    return Err(PublishError::NotForCommand {
                        field: "args",
                        command: name,
                    });
                }
                let recover = match raw.recover {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(_) => {
                        return Err(PublishError::WrongType {
                            field: "recover",
                            expected: "true or false",
                        });
                    }
                };
                CommandAction::Disconnect { recover }
            }
        };
        Ok(Self {
            nsp: nsp.to_owned(),
            target: target(raw, limits)?,
            action,
            traceparent: traceparent(raw)?,
        })
    }
}

/// `room`, `rooms` or `user` (one of them), or the whole namespace.
fn target(raw: &RawFields<'_>, limits: PublishLimits) -> Result<Target, PublishError> {
    match (raw.room, raw.rooms, raw.user) {
        (Some(_), Some(_), _) => Err(PublishError::Conflicting("room", "rooms")),
        (Some(_), _, Some(_)) => Err(PublishError::Conflicting("room", "user")),
        (_, Some(_), Some(_)) => Err(PublishError::Conflicting("rooms", "user")),
        (Some(room), None, None) => {
            validate_room(room).map_err(|error| PublishError::InvalidRoom {
                field: "room",
                error,
            })?;
            Ok(Target::Rooms(vec![room.to_owned()]))
        }
        (None, None, Some(user)) => {
            let room = format!("{USER_ROOM_PREFIX}{user}");
            validate_room(&room).map_err(|error| PublishError::InvalidRoom {
                field: "user",
                error,
            })?;
            Ok(Target::Rooms(vec![room]))
        }
        (None, Some(json), None) => {
            let rooms = room_list("rooms", json, limits.max_rooms)?;
            if rooms.is_empty() {
                // An empty list must not silently become a broadcast to everyone.
                return Err(PublishError::WrongType {
                    field: "rooms",
                    expected: "a non-empty JSON array of room names",
                });
            }
            Ok(Target::Rooms(rooms))
        }
        (None, None, None) => Ok(Target::Namespace),
    }
}

fn traceparent(raw: &RawFields<'_>) -> Result<Option<String>, PublishError> {
    match raw.traceparent {
        Some(tp) if !is_traceparent(tp) => Err(PublishError::InvalidTraceparent),
        tp => Ok(tp.map(str::to_owned)),
    }
}

fn collect_fields<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<RawFields<'a>, PublishError> {
    let mut raw = RawFields::default();
    for (name, value) in fields {
        let name = std::str::from_utf8(name).map_err(|_| PublishError::FieldNameNotUtf8)?;
        let slot = match name {
            "event" => &mut raw.event,
            "data" => &mut raw.data,
            "args" => &mut raw.args,
            "room" => &mut raw.room,
            "rooms" => &mut raw.rooms,
            "except" => &mut raw.except,
            "nsp" => &mut raw.nsp,
            "traceparent" => &mut raw.traceparent,
            "user" => &mut raw.user,
            "command" => &mut raw.command,
            "recover" => &mut raw.recover,
            other => return Err(PublishError::UnknownField(other.to_owned())),
        };
        if slot.is_some() {
            return Err(PublishError::DuplicateField(name.to_owned()));
        }
        *slot =
            Some(std::str::from_utf8(value).map_err(|_| PublishError::NotUtf8(name.to_owned()))?);
    }
    Ok(raw)
}

/// Builds `["event", ...args]` from `data` (one argument) or `args` (a JSON array of arguments),
/// keeping the publisher's JSON text as is: it is validated, never re-serialized.
fn event_data(event: &str, data: Option<&str>, args: Option<&str>) -> Result<String, PublishError> {
    let mut out = String::with_capacity(event.len() + data.or(args).map_or(0, str::len) + 8);
    out.push('[');
    out.push_str(&serde_json::to_string(event).map_err(|_| PublishError::InvalidEvent)?);
    match (data, args) {
        (Some(_), Some(_)) => return Err(PublishError::Conflicting("data", "args")),
        (Some(data), None) => {
            let value: &RawValue =
                serde_json::from_str(data).map_err(|e| PublishError::InvalidJson {
                    field: "data",
                    error: e.to_string(),
                })?;
            out.push(',');
            out.push_str(value.get());
        }
        (None, Some(args)) => {
            let value: &RawValue =
                serde_json::from_str(args).map_err(|e| PublishError::InvalidJson {
                    field: "args",
                    error: e.to_string(),
                })?;
            let list: Vec<&RawValue> =
                serde_json::from_str(value.get()).map_err(|_| PublishError::WrongType {
                    field: "args",
                    expected: "a JSON array",
                })?;
            for arg in list {
                out.push(',');
                out.push_str(arg.get());
            }
        }
        (None, None) => {}
    }
    out.push(']');
    Ok(out)
}

fn room_list(field: &'static str, json: &str, max: usize) -> Result<Vec<String>, PublishError> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| PublishError::InvalidJson {
            field,
            error: e.to_string(),
        })?;
    let serde_json::Value::Array(items) = value else {
        return Err(PublishError::WrongType {
            field,
            expected: "a JSON array of room names",
        });
    };
    if items.len() > max {
        return Err(PublishError::TooManyRooms {
            field,
            count: items.len(),
            max,
        });
    }
    let mut rooms: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let serde_json::Value::String(room) = item else {
            return Err(PublishError::WrongType {
                field,
                expected: "a JSON array of room names",
            });
        };
        validate_room(&room).map_err(|error| PublishError::InvalidRoom { field, error })?;
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }
    Ok(rooms)
}

/// `version-traceid-spanid-flags`, lowercase hex, 2-32-16-2 digits.
fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [2, 32, 16, 2];
    parts.len() == 4
        && parts.iter().zip(lens).all(|(p, n)| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PublishLimits = PublishLimits {
        max_entry_bytes: 1024,
        max_rooms: 3,
    };

    fn parse(fields: &[(&str, &str)]) -> Result<PublishRequest, PublishError> {
        PublishRequest::parse(
            fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            LIMITS,
        )
    }

    fn entry(fields: &[(&str, &str)]) -> Result<PublishEntry, PublishError> {
        PublishEntry::parse(
            fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            LIMITS,
        )
    }

    fn command(fields: &[(&str, &str)]) -> Result<Command, PublishError> {
        match entry(fields)? {
            PublishEntry::Command(c) => Ok(c),
            PublishEntry::Event(e) => panic!("parsed as an event: {e:?}"),
        }
    }

    #[test]
    fn user_targets_the_user_room() {
        let req = parse(&[("user", "alice"), ("event", "dm")]).expect("valid");
        assert_eq!(req.target, Target::Rooms(vec!["user:alice".into()]));
        assert_eq!(
            parse(&[("user", "alice"), ("room", "r"), ("event", "dm")]),
            Err(PublishError::Conflicting("room", "user"))
        );
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            command(&[
                ("command", "join"),
                ("user", "alice"),
                ("args", r#"["vip","vip","news"]"#)
            ]),
            Ok(Command {
                nsp: "/".into(),
                target: Target::Rooms(vec!["user:alice".into()]),
                action: CommandAction::Join {
                    rooms: vec!["vip".into(), "news".into()]
                },
                traceparent: None,
            })
        );
        assert_eq!(
            command(&[
                ("command", "leave"),
                ("room", "r"),
                ("args", r#"["vip"]"#),
                ("nsp", "/admin")
            ])
            .map(|c| (c.nsp, c.action)),
            Ok((
                "/admin".into(),
                CommandAction::Leave {
                    rooms: vec!["vip".into()]
                }
            ))
        );
        assert_eq!(
            command(&[("command", "disconnect")]).map(|c| (c.target, c.action)),
            Ok((
                Target::Namespace,
                CommandAction::Disconnect { recover: false }
            ))
        );
        assert_eq!(
            command(&[
                ("command", "disconnect"),
                ("room", "r"),
                ("recover", "true")
            ])
            .map(|c| c.action),
            Ok(CommandAction::Disconnect { recover: true })
        );
    }

    #[test]
    fn bad_commands_say_why() {
        for (fields, reason) in [
            (&[("command", "explode")][..], "invalid_command"),
            (&[("command", "join")][..], "invalid_command"),
            (
                &[("command", "join"), ("args", "[]")][..],
                "invalid_command",
            ),
            (&[("command", "join"), ("args", "[1]")][..], "wrong_type"),
            (
                &[("command", "join"), ("args", r#"["a"]"#), ("event", "e")][..],
                "invalid_command",
            ),
            (
                &[("command", "disconnect"), ("args", r#"["a"]"#)][..],
                "invalid_command",
            ),
            (
                &[("command", "disconnect"), ("recover", "yes")][..],
                "wrong_type",
            ),
            (
                &[
                    ("command", "leave"),
                    ("args", r#"["a"]"#),
                    ("recover", "true"),
                ][..],
                "invalid_command",
            ),
            (
                &[("event", "e"), ("recover", "true")][..],
                "conflicting_fields",
            ),
        ] {
            let err = entry(fields).expect_err("refused");
            assert_eq!(err.reason(), reason, "{fields:?}: {err}");
        }
    }

    #[test]
    fn minimal_room_event() {
        let req = parse(&[
            ("room", "chat:42"),
            ("event", "message"),
            ("data", r#"{"text":"hi"}"#),
        ])
        .expect("valid");
        assert_eq!(req.nsp, "/");
        assert_eq!(req.data, r#"["message",{"text":"hi"}]"#);
        assert_eq!(req.target, Target::Rooms(vec!["chat:42".into()]));
        assert!(req.except.is_empty());
    }

    #[test]
    fn args_rooms_except_nsp() {
        let req = parse(&[
            ("event", "e\"q"),
            ("args", r#"[1, "two", {"3":[3]}]"#),
            ("rooms", r#"["a","b","a"]"#),
            ("except", r#"["banned"]"#),
            ("nsp", "/admin"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ])
        .expect("valid");
        assert_eq!(req.data, r#"["e\"q",1,"two",{"3":[3]}]"#);
        assert_eq!(req.target, Target::Rooms(vec!["a".into(), "b".into()]));
        assert_eq!(req.except, vec!["banned".to_owned()]);
        assert_eq!(req.nsp, "/admin");
        assert!(req.traceparent.is_some());
    }

    #[test]
    fn no_rooms_is_namespace_broadcast_and_no_data_is_no_args() {
        let req = parse(&[("event", "tick")]).expect("valid");
        assert_eq!(req.target, Target::Namespace);
        assert_eq!(req.data, r#"["tick"]"#);
    }

    #[test]
    fn every_kind_of_bad_entry_has_a_reason() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("data", "1")], "missing_event"),
            (&[("event", "")], "invalid_event"),
            (&[("event", "connect")], "invalid_event"),
            (&[("event", "e"), ("data", "{nope")], "invalid_json"),
            (&[("event", "e"), ("args", "{}")], "wrong_type"),
            (&[("event", "e"), ("args", "[1")], "invalid_json"),
            (
                &[("event", "e"), ("data", "1"), ("args", "[1]")],
                "conflicting_fields",
            ),
            (
                &[("event", "e"), ("room", "a"), ("rooms", "[\"b\"]")],
                "conflicting_fields",
            ),
            (&[("event", "e"), ("rooms", "[]")], "wrong_type"),
            (&[("event", "e"), ("rooms", "[1]")], "wrong_type"),
            (&[("event", "e"), ("rooms", "\"a\"")], "wrong_type"),
            (&[("event", "e"), ("room", "")], "invalid_room"),
            (&[("event", "e"), ("except", "[\"\"]")], "invalid_room"),
            (&[("event", "e"), ("nsp", "admin")], "invalid_namespace"),
            (&[("event", "e"), ("romm", "a")], "unknown_field"),
            (&[("event", "e"), ("event", "f")], "duplicate_field"),
            (
                &[("event", "e"), ("traceparent", "x")],
                "invalid_traceparent",
            ),
            (&[("event", "e"), ("data", &"x".repeat(2000))], "oversized"),
            (
                &[("event", "e"), ("rooms", r#"["a","b","c","d"]"#)],
                "too_many_rooms",
            ),
            (
                &[
                    ("event", "e"),
                    ("room", "a"),
                    ("except", r#"["a","b","c","d"]"#),
                ],
                "too_many_rooms",
            ),
            (
                &[("event", "e"), ("rooms", r#"["a","b","c","d"]"#)],
                "too_many_rooms",
            ),
            (
                &[
                    ("event", "e"),
                    ("room", "a"),
                    ("except", r#"["a","b","c","d"]"#),
                ],
                "too_many_rooms",
            ),
        ];
        for (fields, reason) in cases {
            let err = parse(fields).expect_err("must be refused");
            assert_eq!(err.reason(), *reason, "{fields:?} -> {err}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn not_utf8_is_refused() {
        let fields: [(&[u8], &[u8]); 2] = [(b"event", b"e"), (b"room", &[0xff, 0xfe])];
        let err = PublishRequest::parse(fields, LIMITS).expect_err("refused");
        assert_eq!(err.reason(), "not_utf8");
    }
}
