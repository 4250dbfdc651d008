//! One Engine.IO connection (a "session"): its outgoing queue, its transport and how it ends.
//! Transports take packets from the queue; producers never touch the network.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
};

use bytes::Bytes;
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::packet::{Message, Outbound};

/// The transport a session currently uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    Websocket,
}

/// What the application may want to know of the request that opened a session.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// The client's address: the peer's, or the last `X-Forwarded-For` hop when the server is
    /// told to trust it (behind an ingress). `None` when unknown.
    pub client_ip: Option<std::net::IpAddr>,
    /// The `Authorization` header, if any.
    pub authorization: Option<Box<str>>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent a close packet.
    ClientClose,
    /// The WebSocket closed, or a long-polling request was abandoned.
    TransportClose,
    /// A transport failed (I/O error), or the application closed the session to make the
    /// client reconnect.
    TransportError,
    /// No pong within the ping timeout.
    HeartbeatTimeout,
    /// The client sent something that is not Engine.IO (or too large).
    PacketParsingError,
    /// Two long-polling requests of the same kind at once.
    Overlap,
    /// The server is shutting down.
    ClosingServer,
    /// The client did not read its packets fast enough (its queue was full).
    SlowConsumer,
}

impl DisconnectReason {
    pub const ALL: [Self; 8] = [
        Self::ClientClose,
        Self::TransportClose,
        Self::TransportError,
        Self::HeartbeatTimeout,
        Self::PacketParsingError,
        Self::Overlap,
        Self::ClosingServer,
        Self::SlowConsumer,
    ];

    /// Position in [`DisconnectReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientClose => "client_close",
            Self::TransportClose => "transport_close",
            Self::TransportError => "transport_error",
            Self::HeartbeatTimeout => "ping_timeout",
            Self::PacketParsingError => "parse_error",
            Self::Overlap => "request_overlap",
            Self::ClosingServer => "server_shutdown",
            Self::SlowConsumer => "slow_consumer",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClose => "client close",
            Self::TransportClose => "transport close",
            Self::TransportError => "transport error",
            Self::HeartbeatTimeout => "ping timeout",
            Self::PacketParsingError => "parse error",
            Self::Overlap => "request overlap",
            Self::ClosingServer => "server shutting down",
            Self::SlowConsumer => "slow consumer",
        }
    }
}

/// Why a packet was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The queue is full: the client reads slower than we write.
    #[error("outgoing queue full")]
    Full,
    /// The session has ended.
    #[error("session closed")]
    Closed,
}

/// What a queued packet costs beyond its bytes (its slot in the queue), so a flood of tiny
/// packets is bounded too.
const PACKET_OVERHEAD: usize = 64;

#[derive(Debug, Default)]
struct Queue {
    packets: VecDeque<Outbound>,
    /// Bytes of the application packets queued, overhead included (control packets are not
    /// counted: they are tiny and must not be refused to a client that is merely busy).
    bytes: usize,
    /// A long-polling GET is waiting for packets.
    poll_pending: bool,
    /// A long-polling POST is being processed.
    post_pending: bool,
    /// A WebSocket is upgrading this session: other upgrade attempts are refused.
    upgrade_claimed: bool,
    /// The client probed a WebSocket and will move to it: pending polls end with a noop.
    upgrading: bool,
    /// When the pong for the ping in flight is due.
    pong_due: Option<Instant>,
    /// A poll has told the client its close went through.
    close_answered: bool,
}

/// An Engine.IO session. `D` is the application's per-connection data.
#[derive(Debug)]
pub struct EngineSocket<D> {
    pub id: Arc<str>,
    pub data: D,
    pub handshake: Handshake,
    transport: AtomicU8,
    queue: Mutex<Queue>,
    /// Most bytes of application packets queued at once.
    capacity: usize,
    /// Wakes the transport that writes the queue (the WebSocket task or the pending poll).
    writer: Notify,
    /// Wakes producers waiting for room in the queue.
    drained: Notify,
    /// Wakes the heartbeat when a pong arrives.
    pong: Notify,
    closed: CancellationToken,
    reason: OnceLock<DisconnectReason>,
}

impl<D> EngineSocket<D> {
    pub(super) fn new(
        id: Arc<str>,
        data: D,
        handshake: Handshake,
        transport: Transport,
        capacity: usize,
    ) -> Self {
        Self {
            id,
            data,
            handshake,
            transport: AtomicU8::new(transport as u8),
            queue: Mutex::default(),
            capacity,
            writer: Notify::new(),
            drained: Notify::new(),
            pong: Notify::new(),
            closed: CancellationToken::new(),
            reason: OnceLock::new(),
        }
    }

    /// A session with no transport, for tests of the layers above: packets stay queued until
    /// taken with [`EngineSocket::take_messages`].
    pub fn detached(id: Arc<str>, data: D, handshake: Handshake, capacity: usize) -> Self {
        Self::new(id, data, handshake, Transport::Websocket, capacity)
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A poisoned lock only means a panic elsewhere mid-push; the queue is still valid.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn transport(&self) -> Transport {
        if self.transport.load(Ordering::Acquire) == Transport::Polling as u8 {
            Transport::Polling
        } else {
            Transport::Websocket
        }
    }

    pub(super) fn set_transport(&self, transport: Transport) {
        self.transport.store(transport as u8, Ordering::Release);
    }

    /// Queues a message for the client.
    pub fn emit(&self, message: Message) -> Result<(), EmitError> {
        let cost = message.len() + PACKET_OVERHEAD;
        self.push(std::iter::once(Outbound::Message(message)), cost)
    }

    /// Queues a binary message.
    pub fn emit_binary(&self, data: Bytes) -> Result<(), EmitError> {
        let cost = data.len() + PACKET_OVERHEAD;
        self.push(std::iter::once(Outbound::Binary(data)), cost)
    }

    /// Queues a message and its binary attachments as one unit: nothing lands between them,
    /// and either all are queued or none.
    pub fn emit_many(&self, message: Message, binaries: Vec<Bytes>) -> Result<(), EmitError> {
        let cost = message.len()
            + binaries.iter().map(Bytes::len).sum::<usize>()
            + PACKET_OVERHEAD * (1 + binaries.len());
        let packets = std::iter::once(Outbound::Message(message))
            .chain(binaries.into_iter().map(Outbound::Binary));
        self.push(packets, cost)
    }

    fn push(&self, packets: impl Iterator<Item = Outbound>, cost: usize) -> Result<(), EmitError> {
        if self.is_closed() {
            return Err(EmitError::Closed);
        }
        {
            let mut queue = self.queue();
            // An empty queue takes anything, so one packet larger than the bound still goes out.
            if queue.bytes > 0 && queue.bytes + cost > self.capacity {
                return Err(EmitError::Full);
            }
            queue.bytes += cost;
            queue.packets.extend(packets);
        }
        self.writer.notify_one();
        Ok(())
    }

    /// Queues a control packet; never refused for a full queue.
    pub(super) fn push_control(&self, packet: Outbound) {
        self.queue().packets.push_back(packet);
        self.writer.notify_one();
    }

    /// Queues a message, waiting while the queue is full (for long recovery replays). Gives up
    /// with [`EmitError::Full`] if the client has not made room within `patience`.
    pub async fn emit_within(
        &self,
        message: Message,
        patience: std::time::Duration,
    ) -> Result<(), EmitError> {
        let attempt = async {
            loop {
                // Registered before trying, so a drain between the try and the wait is not missed.
                let drained = self.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                match self.emit(message.clone()) {
                    Err(EmitError::Full) => drained.await,
                    done => return done,
                }
            }
        };
        tokio::time::timeout(patience, attempt)
            .await
            .unwrap_or(Err(EmitError::Full))
    }

    /// Takes every queued packet, for the transport to write.
    pub(super) fn take_queued(&self) -> VecDeque<Outbound> {
        let taken = {
            let mut queue = self.queue();
            queue.bytes = 0;
            std::mem::take(&mut queue.packets)
        };
        if !taken.is_empty() {
            self.drained.notify_waiters();
        }
        taken
    }

    /// The text messages queued so far, taken from the queue (test support for detached sockets).
    pub fn take_messages(&self) -> Vec<Message> {
        self.take_queued()
            .into_iter()
            .filter_map(|p| match p {
                Outbound::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// Resolves when the transport has packets to write (or may have: spurious wake-ups are
    /// allowed, the caller re-checks).
    pub(super) fn writable(&self) -> tokio::sync::futures::Notified<'_> {
        self.writer.notified()
    }

    /// Marks a long-polling GET as pending; false if one already is.
    pub(super) fn begin_poll(&self) -> bool {
        !std::mem::replace(&mut self.queue().poll_pending, true)
    }

    pub(super) fn end_poll(&self) {
        self.queue().poll_pending = false;
    }

    /// Marks a long-polling POST as being processed; false if one already is.
    pub(super) fn begin_post(&self) -> bool {
        !std::mem::replace(&mut self.queue().post_pending, true)
    }

    pub(super) fn end_post(&self) {
        self.queue().post_pending = false;
    }

    /// Reserves the upgrade of this session for one WebSocket; false if one has it already.
    pub(super) fn claim_upgrade(&self) -> bool {
        !std::mem::replace(&mut self.queue().upgrade_claimed, true)
    }

    pub(super) fn release_upgrade(&self) {
        self.queue().upgrade_claimed = false;
    }

    pub(super) fn set_upgrading(&self, upgrading: bool) {
        self.queue().upgrading = upgrading;
        // A pending poll must end (with a noop) so the client can pause its polling.
        self.writer.notify_one();
    }

    pub(super) fn is_upgrading(&self) -> bool {
        self.queue().upgrading
    }

    /// Notes a ping sent, whose pong is due by `due`; the returned future resolves on the pong.
    pub(super) fn ping(&self, due: Instant) -> impl std::future::Future<Output = ()> + '_ {
        let pong = self.pong.notified();
        self.queue().pong_due = Some(due);
        self.push_control(Outbound::Ping);
        async move {
            tokio::pin!(pong);
            // Listening since before the ping went out, so a fast pong cannot be missed.
            pong.as_mut().enable();
            pong.await;
        }
    }

    pub(super) fn pong_received(&self) {
        self.queue().pong_due = None;
        self.pong.notify_waiters();
    }

    /// Whether the pong for the ping in flight is late: the session is dead even if the
    /// heartbeat task has not run yet.
    pub(super) fn pong_overdue(&self, now: Instant) -> bool {
        self.queue().pong_due.is_some_and(|due| due <= now)
    }

    /// Records that a poll answered the client's close; returns whether it had already been.
    pub(super) fn answer_close(&self) -> bool {
        std::mem::replace(&mut self.queue().close_answered, true)
    }

    pub(super) fn close_answered(&self) -> bool {
        self.queue().close_answered
    }

    /// Ends the session; the first reason given is the one reported.
    pub fn close(&self, reason: DisconnectReason) {
        let _ = self.reason.set(reason);
        self.closed.cancel();
        self.writer.notify_one();
        self.drained.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        // The reason is set before the token is cancelled. An atomic load, where the token's
        // `is_cancelled` takes a lock: this is checked on every packet queued.
        self.reason.get().is_some()
    }

    /// Resolves once the session has ended.
    pub fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }

    /// Why the session ended; `None` while it is open.
    pub fn close_reason(&self) -> Option<DisconnectReason> {
        self.reason.get().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(capacity: usize) -> EngineSocket<()> {
        EngineSocket::detached("s".into(), (), Handshake::default(), capacity)
    }

    #[test]
    fn refuses_past_capacity_in_bytes_but_keeps_control_packets() {
        // Room for two 2-byte messages ("4" + 1 byte each, plus the per-packet overhead).
        let s = socket(2 * (2 + PACKET_OVERHEAD));
        assert_eq!(s.emit("a".into()), Ok(()));
        assert_eq!(
            s.emit_many("b".into(), vec![Bytes::from_static(b"x")]),
            Err(EmitError::Full)
        );
        assert_eq!(s.emit("b".into()), Ok(()));
        assert_eq!(s.emit("c".into()), Err(EmitError::Full));
        s.push_control(Outbound::Ping);
        assert_eq!(s.take_queued().len(), 3);
        assert_eq!(
            s.emit("d".into()),
            Ok(()),
            "taking the queue frees its room"
        );
    }

    #[test]
    fn one_packet_larger_than_the_bound_goes_through_an_empty_queue() {
        let s = socket(16);
        assert_eq!(s.emit("x".repeat(100).into()), Ok(()));
        assert_eq!(s.emit("y".into()), Err(EmitError::Full));
    }

    #[test]
    fn attachments_follow_their_message() {
        let s = socket(8);
        s.emit_many(
            "m".into(),
            vec![Bytes::from_static(b"1"), Bytes::from_static(b"2")],
        )
        .expect("room");
        let queued: Vec<_> = s.take_queued().into_iter().collect();
        assert_eq!(
            queued,
            vec![
                Outbound::Message("m".into()),
                Outbound::Binary(Bytes::from_static(b"1")),
                Outbound::Binary(Bytes::from_static(b"2")),
            ]
        );
    }

    #[test]
    fn closed_sockets_refuse_packets_and_keep_the_first_reason() {
        let s = socket(8);
        s.close(DisconnectReason::HeartbeatTimeout);
        s.close(DisconnectReason::ClosingServer);
        assert_eq!(s.emit("a".into()), Err(EmitError::Closed));
        assert_eq!(s.close_reason(), Some(DisconnectReason::HeartbeatTimeout));
    }

    #[test]
    fn one_poll_and_one_post_at_a_time() {
        let s = socket(8);
        assert!(s.begin_poll());
        assert!(!s.begin_poll());
        s.end_poll();
        assert!(s.begin_poll());
        assert!(s.begin_post());
        assert!(!s.begin_post());
    }
}
