//! One client socket in one namespace: its id, its rooms and how packets reach its connection.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use engineioxide::{DisconnectReason, Str};
use serde_json::Value;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::packet;

/// Per-Engine.IO-connection data engineioxide keeps for us: the inbox of the task that owns
/// the connection (see `server`).
#[derive(Debug, Default)]
pub struct ConnData {
    pub(super) inbox: OnceLock<mpsc::Sender<Inbound>>,
}

/// What the engine hands to a connection's task, in arrival order.
#[derive(Debug)]
pub(super) enum Inbound {
    Text(Str),
    Binary(Bytes),
}

pub type EngineSocket = engineioxide::Socket<ConnData>;

/// Why an outgoing packet did not reach the connection's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitError {
    /// The queue was full: the client reads slower than we write. The connection was closed.
    SlowConsumer,
    /// The connection is already gone.
    Closed,
}

/// A Socket.IO socket: one client in one namespace.
#[derive(Debug)]
pub struct SioSocket {
    id: Arc<str>,
    nsp: Arc<str>,
    engine: Arc<EngineSocket>,
    /// Rooms joined, by name. Small in practice, so a vector beats a set.
    rooms: Mutex<Vec<Arc<str>>>,
    /// The private session id given in the CONNECT reply (connection state recovery).
    pid: OnceLock<Arc<str>>,
}

impl SioSocket {
    pub(super) fn new(id: Arc<str>, nsp: Arc<str>, engine: Arc<EngineSocket>) -> Self {
        Self {
            id,
            nsp,
            engine,
            rooms: Mutex::new(Vec::new()),
            pid: OnceLock::new(),
        }
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    pub fn nsp(&self) -> &Arc<str> {
        &self.nsp
    }

    /// The private session id, when recovery is on.
    pub fn pid(&self) -> Option<&Arc<str>> {
        self.pid.get()
    }

    pub(super) fn set_pid(&self, pid: Arc<str>) {
        let _ = self.pid.set(pid);
    }

    /// Queues an already-encoded packet. The same `Str` is shared by every recipient of a
    /// broadcast; cloning it only bumps a reference count.
    pub fn emit(&self, packet: Str) -> Result<(), EmitError> {
        match self.engine.emit(packet) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.close_slow_consumer();
                Err(EmitError::SlowConsumer)
            }
            Err(TrySendError::Closed(_)) => Err(EmitError::Closed),
        }
    }

    /// Queues a packet, waiting while the connection's queue is full: for recovery replays,
    /// which can be longer than the queue. Gives up (closing the connection) if the client does
    /// not drain its queue within `patience`.
    pub async fn emit_patiently(
        &self,
        packet: Str,
        patience: std::time::Duration,
    ) -> Result<(), EmitError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut packet = packet;
        loop {
            match self.engine.emit(packet) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(EmitError::Closed),
                Err(TrySendError::Full(back)) => {
                    if tokio::time::Instant::now() >= deadline {
                        self.close_slow_consumer();
                        return Err(EmitError::SlowConsumer);
                    }
                    packet = back;
                    // engineioxide has no awaitable send; poll while the transport drains it.
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        }
    }

    /// Closes the client's whole Engine.IO connection; the official client reconnects.
    pub fn close_connection(&self) {
        self.engine.close(DisconnectReason::TransportError);
    }

    /// Replies to a client's event that asked for an acknowledgement.
    pub fn ack(&self, id: u64, args: &Value) {
        // A failure here means the client is gone or slow; emit() already handled both.
        let _ = self.emit(packet::encode_ack(&self.nsp, id, args, 0).into());
    }

    /// Acknowledges with binary attachments (`args` holds their placeholders).
    pub fn ack_with_binaries(&self, id: u64, args: &Value, binaries: Vec<Bytes>) {
        let text = packet::encode_ack(&self.nsp, id, args, binaries.len());
        self.emit_with_binaries(text, binaries);
    }

    /// Emits a server-initiated event: `args` is the JSON array `["event", ...]`, with
    /// placeholders for `binaries`, if any.
    pub fn emit_event(&self, args: &Value, binaries: Vec<Bytes>) {
        let text = packet::encode_event_value(&self.nsp, args, binaries.len());
        self.emit_with_binaries(text, binaries);
    }

    /// Queues a text packet and its attachments as one unit, so no other packet lands between.
    fn emit_with_binaries(&self, text: String, binaries: Vec<Bytes>) {
        if binaries.is_empty() {
            let _ = self.emit(text.into());
            return;
        }
        match self.engine.reserve() {
            Ok(permit) => permit.emit_many(text.into(), binaries.into()),
            Err(TrySendError::Full(())) => self.close_slow_consumer(),
            Err(TrySendError::Closed(())) => {}
        }
    }

    /// A client that does not read its queue is disconnected, not silently skipped: a lost
    /// packet would be a gap it never learns about, a reconnect lets it recover.
    fn close_slow_consumer(&self) {
        tracing::warn!(sid = %self.id, "outgoing queue full, closing slow consumer");
        self.engine.close(DisconnectReason::TransportError);
    }

    fn rooms_lock(&self) -> MutexGuard<'_, Vec<Arc<str>>> {
        // A poisoned lock only means another thread panicked mid-update of a Vec push/remove;
        // the data is still a valid list.
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a joined room; false if the socket was already in it.
    pub fn add_room(&self, room: &Arc<str>) -> bool {
        let mut rooms = self.rooms_lock();
        if rooms.iter().any(|r| r == room) {
            return false;
        }
        rooms.push(room.clone());
        true
    }

    /// Forgets a room; false if the socket was not in it.
    pub fn remove_room(&self, room: &str) -> bool {
        let mut rooms = self.rooms_lock();
        let before = rooms.len();
        rooms.retain(|r| &**r != room);
        rooms.len() != before
    }

    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.rooms_lock().clone()
    }

    pub fn room_count(&self) -> usize {
        self.rooms_lock().len()
    }

    pub fn take_rooms(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut *self.rooms_lock())
    }

    /// Whether the socket is in any of `rooms` (the `except` list of a broadcast).
    pub fn in_any(&self, rooms: &[String]) -> bool {
        let mine = self.rooms_lock();
        rooms.iter().any(|r| mine.iter().any(|m| **m == **r))
    }
}

/// A new random id (socket id, private session id): 20 characters of URL-safe base64 from 120
/// random bits, like Node's.
pub fn random_id() -> Arc<str> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes: [u8; 15] = rand::random();
    let mut out = String::with_capacity(20);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_20_url_safe_chars_and_unique() {
        let a = random_id();
        let b = random_id();
        assert_eq!(a.len(), 20);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a, b);
    }
}

/// Test support: a socket whose connection records the packets written to it.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use engineioxide::{Str, socket::Sid};

    pub(crate) struct Recorded {
        pub(crate) socket: Arc<SioSocket>,
        rx: mpsc::Receiver<engineioxide::Packet>,
    }

    impl Recorded {
        /// Text packets written so far. The dummy engine forwards packets from a task; on the
        /// single-threaded test runtime one yield lets it forward everything queued.
        pub(crate) async fn drain(&mut self) -> Vec<Str> {
            tokio::task::yield_now().await;
            let mut out = Vec::new();
            while let Ok(p) = self.rx.try_recv() {
                if let engineioxide::Packet::Message(s) = p {
                    out.push(s);
                }
            }
            out
        }
    }

    pub(crate) fn socket(nsp: &str) -> Recorded {
        let (engine, rx) = EngineSocket::new_dummy_piped(Sid::new(), Box::new(|_, _| {}), 64);
        Recorded {
            socket: Arc::new(SioSocket::new(random_id(), nsp.into(), engine)),
            rx,
        }
    }
}
