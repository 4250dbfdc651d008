//! Validation of namespace and room names, shared by the publish parser (fanout) and the
//! `join`/`leave` handlers (gateway) so both sides accept exactly the same names.

use thiserror::Error;

/// Longest accepted room name, in bytes.
pub const MAX_ROOM_BYTES: usize = 256;
/// Longest accepted namespace, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 128;

/// Why a room or namespace name was refused. The `Display` text is what clients and the
/// dead-letter stream see.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("room name must be a non-empty string")]
    EmptyRoom,
    #[error("room name is longer than {MAX_ROOM_BYTES} bytes")]
    RoomTooLong,
    #[error("room name must not contain control characters")]
    RoomControlChar,
    #[error("namespace must start with '/'")]
    NamespaceNoSlash,
    #[error("namespace is longer than {MAX_NAMESPACE_BYTES} bytes")]
    NamespaceTooLong,
    #[error("namespace may only contain letters, digits and '/._~:-'")]
    NamespaceChar,
}

/// A room is any non-empty UTF-8 string of at most [`MAX_ROOM_BYTES`] bytes without control
/// characters. Braces are allowed: the key layout keeps every key of one room in one hash slot
/// whatever the room contains (see `keys`).
pub fn validate_room(room: &str) -> Result<(), NameError> {
    if room.is_empty() {
        return Err(NameError::EmptyRoom);
    }
    if room.len() > MAX_ROOM_BYTES {
        return Err(NameError::RoomTooLong);
    }
    if room.chars().any(char::is_control) {
        return Err(NameError::RoomControlChar);
    }
    Ok(())
}

/// A namespace is `/` followed by letters, digits and `/._~:-`. The narrow set keeps `,`
/// (the Socket.IO packet separator), `#` (our topic separator) and braces (Redis hash tags)
/// out of namespaces.
pub fn validate_namespace(nsp: &str) -> Result<(), NameError> {
    if !nsp.starts_with('/') {
        return Err(NameError::NamespaceNoSlash);
    }
    if nsp.len() > MAX_NAMESPACE_BYTES {
        return Err(NameError::NamespaceTooLong);
    }
    let ok = nsp
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'~' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::NamespaceChar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms() {
        assert!(validate_room("chat:42").is_ok());
        assert!(validate_room("ünï {code} #1").is_ok());
        assert_eq!(validate_room(""), Err(NameError::EmptyRoom));
        assert_eq!(validate_room("a\nb"), Err(NameError::RoomControlChar));
        assert_eq!(validate_room(&"x".repeat(257)), Err(NameError::RoomTooLong));
        assert!(validate_room(&"x".repeat(256)).is_ok());
    }

    #[test]
    fn namespaces() {
        assert!(validate_namespace("/").is_ok());
        assert!(validate_namespace("/admin/v1.2").is_ok());
        assert_eq!(
            validate_namespace("admin"),
            Err(NameError::NamespaceNoSlash)
        );
        assert_eq!(validate_namespace("/a,b"), Err(NameError::NamespaceChar));
        assert_eq!(validate_namespace("/a#b"), Err(NameError::NamespaceChar));
        assert_eq!(validate_namespace("/{a}"), Err(NameError::NamespaceChar));
    }
}
