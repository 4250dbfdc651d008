//! One client socket in one namespace: its id, its rooms and how packets reach its connection.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::Notify;

use super::packet;
use crate::{
    auth::Identity,
    eio::{self, DisconnectReason, Message, Str},
    limits::{Rate, TokenBucket},
};

/// Per-Engine.IO-connection data: the inbox of the task that owns the connection (see
/// `server`).
#[derive(Debug, Default)]
pub struct ConnData {
    pub(super) inbox: Inbox,
}

/// Packets waiting for the connection's task, bounded. A queue that allocates only when packets
/// wait (an idle connection holds none), instead of a channel whose first block of slots costs
/// about 1.8 KB per connection whether used or not.
#[derive(Debug, Default)]
pub(super) struct Inbox {
    queue: Mutex<VecDeque<Inbound>>,
    ready: Notify,
}

/// The inbox holds as many packets as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InboxFull;

impl Inbox {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Inbound>> {
        // A poisoned lock only means a panic elsewhere mid-push; the queue is still valid.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a packet unless `capacity` are waiting already.
    pub(super) fn push(&self, item: Inbound, capacity: usize) -> Result<(), InboxFull> {
        {
            let mut queue = self.queue();
            if queue.len() >= capacity {
                return Err(InboxFull);
            }
            queue.push_back(item);
        }
        // Stores a permit if the task is not waiting yet, so the packet is never missed.
        self.ready.notify_one();
        Ok(())
    }

    /// The next packet, waiting for one. Cancel-safe: a packet is taken only by a poll that
    /// returns it.
    pub(super) async fn recv(&self) -> Inbound {
        loop {
            if let Some(item) = self.queue().pop_front() {
                return item;
            }
            self.ready.notified().await;
        }
    }
}

/// What the engine hands to a connection's task, in arrival order.
#[derive(Debug)]
pub(super) enum Inbound {
    Text(Str),
    Binary(Bytes),
    /// The server disconnects the socket of this namespace (see [`SioSocket::disconnect`]).
    ServerDisconnect(Arc<str>),
}

pub type EngineSocket = eio::EngineSocket<ConnData>;

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
    /// Who the client is, when authentication is on.
    identity: OnceLock<Arc<Identity>>,
    /// Inbound event rate limit.
    events: Mutex<Option<TokenBucket>>,
}

impl SioSocket {
    pub(super) fn new(id: Arc<str>, nsp: Arc<str>, engine: Arc<EngineSocket>) -> Self {
        Self {
            id,
            nsp,
            engine,
            rooms: Mutex::new(Vec::new()),
            pid: OnceLock::new(),
            identity: OnceLock::new(),
            events: Mutex::new(None),
        }
    }

    /// The authenticated identity, if authentication is on.
    pub(crate) fn identity(&self) -> Option<&Arc<Identity>> {
        self.identity.get()
    }

    pub(crate) fn set_identity(&self, identity: Arc<Identity>) {
        let _ = self.identity.set(identity);
    }

    /// Takes a token from the socket's event bucket; false when it is over `rate`.
    pub(crate) fn take_event_token(&self, rate: Rate) -> bool {
        let mut bucket = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        bucket
            .get_or_insert_with(|| TokenBucket::full(rate))
            .take(rate, tokio::time::Instant::now())
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

    /// Queues an already-encoded packet. The same [`Message`] is shared by every recipient of a
    /// broadcast; cloning it only bumps a reference count.
    pub fn emit(&self, packet: Message) -> Result<(), EmitError> {
        match self.engine.emit(packet) {
            Ok(()) => Ok(()),
            Err(eio::EmitError::Full) => {
                self.close_slow_consumer();
                Err(EmitError::SlowConsumer)
            }
            Err(eio::EmitError::Closed) => Err(EmitError::Closed),
        }
    }

    /// Queues a packet, waiting while the connection's queue is full: for recovery replays,
    /// which can be longer than the queue. Gives up (closing the connection) if the client does
    /// not drain its queue within `patience`.
    pub async fn emit_patiently(
        &self,
        packet: Message,
        patience: std::time::Duration,
    ) -> Result<(), EmitError> {
        match self.engine.emit_within(packet, patience).await {
            Ok(()) => Ok(()),
            Err(eio::EmitError::Full) => {
                self.close_slow_consumer();
                Err(EmitError::SlowConsumer)
            }
            Err(eio::EmitError::Closed) => Err(EmitError::Closed),
        }
    }

    /// Disconnects this socket from its namespace as the server: the client gets a DISCONNECT
    /// packet (`io server disconnect`) and does not reconnect; the application sees the reason
    /// `server namespace disconnect`. Goes through the connection's task, which owns the socket.
    pub fn disconnect(&self) {
        let sent = self
            .engine
            .data
            .inbox
            .push(
                Inbound::ServerDisconnect(self.nsp.clone()),
                super::server::INBOX_CAPACITY,
            )
            .is_ok();
        if !sent {
            // The connection is gone or flooded; ending it is the next best thing.
            self.close_connection();
        }
    }

    /// Closes the client's whole Engine.IO connection; the official client reconnects.
    pub fn close_connection(&self) {
        self.engine.close(DisconnectReason::TransportError);
    }

    /// Replies to a client's event that asked for an acknowledgement.
    pub fn ack(&self, id: u64, args: &Value) {
        // A failure here means the client is gone or slow; emit() already handled both.
        let _ = self.emit(Message::new(packet::encode_ack(&self.nsp, id, args, 0)));
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
            let _ = self.emit(Message::new(text));
            return;
        }
        if let Err(eio::EmitError::Full) = self.engine.emit_many(Message::new(text), binaries) {
            self.close_slow_consumer();
        }
    }

    /// A client that does not read its queue is disconnected, not silently skipped: a lost
    /// packet would be a gap it never learns about, a reconnect lets it recover.
    fn close_slow_consumer(&self) {
        tracing::warn!(sid = %self.id, "outgoing queue full, closing slow consumer");
        self.engine.close(DisconnectReason::SlowConsumer);
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

/// Test support: a socket whose connection keeps the packets written to it.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) struct Recorded {
        pub(crate) socket: Arc<SioSocket>,
        engine: Arc<EngineSocket>,
    }

    impl Recorded {
        /// Text packets written so far (async for the tests written against a piped engine).
        pub(crate) async fn drain(&mut self) -> Vec<Message> {
            self.engine.take_messages()
        }
    }

    pub(crate) fn socket(nsp: &str) -> Recorded {
        let engine = Arc::new(EngineSocket::detached(
            random_id(),
            ConnData::default(),
            eio::Handshake::default(),
            1 << 20,
        ));
        Recorded {
            socket: Arc::new(SioSocket::new(random_id(), nsp.into(), engine.clone())),
            engine,
        }
    }
}
