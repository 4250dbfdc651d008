//! The Socket.IO v5 server on top of our Engine.IO layer: one task per Engine.IO connection processes
//! its packets strictly in arrival order, so an event sent right after `connect` is never lost
//! while the namespace connect is still being set up (a known socketioxide 0.18 race).

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesUnordered};
use serde_json::Value;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    packet::{self, Packet, PacketError, PacketType},
    socket::{ConnData, EngineSocket, Inbound, SioSocket, random_id},
};
use roomcast_shared::counter::Counter;

use crate::eio::{DisconnectReason, EngineHandler, Handshake, Message, Refusal, Str};

/// Packets a connection may have queued before its task reads them; a client that outruns
/// this is flooding and is disconnected.
pub(super) const INBOX_CAPACITY: usize = 128;
/// Event handlers still running (e.g. joins waiting for a subscription) per connection; past it
/// the connection stops reading until one finishes.
const MAX_PENDING_HANDLERS: usize = 32;

pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An event received from a client.
#[derive(Debug)]
pub struct Event {
    pub name: String,
    pub args: Vec<Value>,
    /// Binary attachments, in placeholder order (`{"_placeholder":true,"num":n}` in `args`).
    pub binaries: Vec<Bytes>,
    /// Set when the client asked for an acknowledgement.
    pub ack: Option<u64>,
}

/// What the application does with sockets. The protocol layer calls it in packet order.
pub trait SioApp: Send + Sync + 'static {
    /// Decides whether a new connection may open at all (before any namespace CONNECT).
    fn admit(&self, _handshake: &Handshake) -> Result<(), Refusal> {
        Ok(())
    }

    /// Admits a socket to its namespace (creating it with [`ConnectRequest::socket`]), or refuses
    /// it with the message the client's `connect_error` shows. Whatever it emits on the socket
    /// reaches the client before the CONNECT reply (recovery replays missed events this way).
    fn connect(
        &self,
        request: ConnectRequest,
    ) -> impl Future<Output = Result<Accepted, String>> + Send;
    /// Handles an event. Work that must wait (e.g. for Redis) is returned as a future, which the
    /// connection polls without blocking the next packets.
    fn event(&self, socket: &Arc<SioSocket>, event: Event) -> Option<HandlerFuture>;
    /// Called right after the CONNECT reply was queued: the place for a server's first emits.
    fn connected(&self, _socket: &Arc<SioSocket>) {}
    /// The socket left its namespace (client request, connection closed, or server shutdown).
    fn disconnect(&self, socket: &Arc<SioSocket>, reason: &'static str);
}

/// A namespace CONNECT waiting for the application's decision.
pub struct ConnectRequest {
    pub nsp: Arc<str>,
    /// The CONNECT payload (`auth` of the client), `Null` if none.
    pub auth: Value,
    engine: Arc<EngineSocket>,
}

impl ConnectRequest {
    /// The HTTP request that opened the connection.
    pub fn handshake(&self) -> &Handshake {
        &self.engine.handshake
    }

    /// Creates the socket: with `id` to give a recovered socket its old id back, or a fresh one.
    pub fn socket(&self, id: Option<Arc<str>>) -> Arc<SioSocket> {
        Arc::new(SioSocket::new(
            id.unwrap_or_else(random_id),
            self.nsp.clone(),
            self.engine.clone(),
        ))
    }
}

/// An admitted socket and, with connection state recovery, its private session id.
pub struct Accepted {
    pub socket: Arc<SioSocket>,
    pub pid: Option<Arc<str>>,
}

/// Protocol-level settings.
#[derive(Debug, Clone)]
pub struct SioConfig {
    pub namespaces: Vec<String>,
    pub max_connections: usize,
    pub connect_timeout: Duration,
}

/// Connection counts, for metrics.
#[derive(Debug, Default)]
pub struct SioStats {
    /// Engine.IO connections open now.
    pub open: AtomicUsize,
    pub opened: Counter,
    /// Namespace connects refused for MAX_CONNECTIONS.
    pub refused_full: Counter,
    /// Connections closed, by [`DisconnectReason::index`].
    pub closed: [Counter; DisconnectReason::ALL.len()],
}

/// The Engine.IO handler.
pub struct SioServer<A> {
    app: Arc<A>,
    config: Arc<SioConfig>,
    connections: Arc<SioStats>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl<A> Clone for SioServer<A> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            config: self.config.clone(),
            connections: self.connections.clone(),
            shutdown: self.shutdown.clone(),
            tracker: self.tracker.clone(),
        }
    }
}

impl<A> std::fmt::Debug for SioServer<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SioServer")
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl<A: SioApp> SioServer<A> {
    /// `shutdown` closes every connection; `tracker` tracks the per-connection tasks so the
    /// caller can wait for their clean-up.
    pub fn new(
        app: Arc<A>,
        config: SioConfig,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            app,
            config: Arc::new(config),
            connections: Arc::default(),
            shutdown,
            tracker,
        }
    }

    pub fn stats(&self) -> Arc<SioStats> {
        self.connections.clone()
    }
}

impl<A: SioApp> EngineHandler for SioServer<A> {
    type Data = ConnData;

    fn admit(&self, handshake: &Handshake) -> Result<(), Refusal> {
        self.app.admit(handshake)
    }

    fn on_connect(&self, engine: &Arc<EngineSocket>) {
        let open = self.connections.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.connections.opened.inc();
        // The connection is still accepted at the Engine.IO level so the client gets a readable
        // `connect_error` on its namespace CONNECT instead of an opaque transport failure.
        let refused = open > self.config.max_connections;
        let span = tracing::info_span!("conn", eio = %engine.id, transport = ?engine.transport());
        let conn = Connection {
            app: self.app.clone(),
            config: self.config.clone(),
            engine: engine.clone(),
            refused,
            stats: self.connections.clone(),
            sockets: HashMap::new(),
            pending_binary: None,
            handlers: FuturesUnordered::new(),
        };
        self.tracker
            .spawn(conn.run(self.shutdown.clone()).instrument(span));
    }

    fn on_disconnect(&self, engine: &Arc<EngineSocket>, reason: DisconnectReason) {
        self.connections.open.fetch_sub(1, Ordering::Relaxed);
        self.connections.closed[reason.index()].inc();
        tracing::debug!(eio = %engine.id, reason = reason.as_str(), "engine connection closed");
    }

    fn on_message(&self, engine: &Arc<EngineSocket>, message: Str) {
        forward(engine, Inbound::Text(message));
    }

    fn on_binary(&self, engine: &Arc<EngineSocket>, data: Bytes) {
        forward(engine, Inbound::Binary(data));
    }
}

fn forward(engine: &EngineSocket, item: Inbound) {
    if engine.data.inbox.push(item, INBOX_CAPACITY).is_err() {
        tracing::warn!(eio = %engine.id, "client sends faster than it is served, closing");
        engine.close(DisconnectReason::PacketParsingError);
    }
}

/// Owns one Engine.IO connection: its namespace sockets and a binary packet being assembled.
struct Connection<A> {
    app: Arc<A>,
    config: Arc<SioConfig>,
    engine: Arc<EngineSocket>,
    refused: bool,
    stats: Arc<SioStats>,
    sockets: HashMap<String, Arc<SioSocket>>,
    pending_binary: Option<(Packet, Vec<Bytes>)>,
    handlers: FuturesUnordered<HandlerFuture>,
}

impl<A: SioApp> Connection<A> {
    async fn run(mut self, shutdown: CancellationToken) {
        // Like Node, the deadline only holds until the first namespace is connected: a client
        // that later leaves every namespace keeps its connection (heartbeat still applies).
        // Boxed and dropped then, so a connected client's task does not keep a timer.
        let mut connect_deadline = Some(Box::pin(tokio::time::sleep(self.config.connect_timeout)));
        let engine = self.engine.clone();
        let reason = loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    engine.close(DisconnectReason::ClosingServer);
                    break "server shutting down";
                }
                _ = engine.closed() => {
                    break engine.close_reason().map_or("transport close", DisconnectReason::as_str);
                }
                () = async {
                    match connect_deadline.as_mut() {
                        Some(deadline) => deadline.await,
                        None => std::future::pending().await,
                    }
                }, if connect_deadline.is_some() => {
                    tracing::debug!("no namespace connected in time, closing");
                    engine.close(DisconnectReason::TransportClose);
                    break "connect timeout";
                }
                Some(()) = self.handlers.next(), if !self.handlers.is_empty() => {}
                item = engine.data.inbox.recv(), if self.handlers.len() < MAX_PENDING_HANDLERS => {
                    // Boxed: handling a packet (a namespace connect with a recovery and its Redis
                    // round trips) is by far the largest future this task awaits, and a task
                    // is sized for its largest state. Boxed, an idle connection's task is about
                    // 2 KB smaller, for one allocation per packet from the client.
                    if let Err(error) = Box::pin(self.handle(item)).await {
                        tracing::warn!(%error, "malformed packet from client, closing its connection");
                        engine.close(DisconnectReason::PacketParsingError);
                        break "parse error";
                    }
                    if !self.sockets.is_empty() {
                        connect_deadline = None;
                    }
                }
            }
        };
        for (_, socket) in self.sockets.drain() {
            self.app.disconnect(&socket, reason);
        }
    }

    async fn handle(&mut self, item: Inbound) -> Result<(), PacketError> {
        match item {
            Inbound::ServerDisconnect(nsp) => {
                if let Some(socket) = self.sockets.remove(&*nsp) {
                    self.send(packet::encode_disconnect(&nsp));
                    self.app.disconnect(&socket, "server namespace disconnect");
                }
                Ok(())
            }
            Inbound::Text(text) => {
                if self.pending_binary.is_some() {
                    return Err(PacketError::UnexpectedBinary);
                }
                let packet = Packet::parse(&text)?;
                if packet.attachments > 0 {
                    let count = packet.attachments;
                    self.pending_binary = Some((packet, Vec::with_capacity(count)));
                    Ok(())
                } else {
                    self.dispatch(packet, Vec::new()).await
                }
            }
            Inbound::Binary(data) => {
                let Some((packet, mut binaries)) = self.pending_binary.take() else {
                    return Err(PacketError::UnexpectedBinary);
                };
                binaries.push(data);
                if binaries.len() < packet.attachments {
                    self.pending_binary = Some((packet, binaries));
                    return Ok(());
                }
                if !packet.placeholders_valid(&binaries) {
                    return Err(PacketError::WrongShape);
                }
                self.dispatch(packet, binaries).await
            }
        }
    }

    async fn dispatch(&mut self, packet: Packet, binaries: Vec<Bytes>) -> Result<(), PacketError> {
        match packet.kind {
            PacketType::Connect => {
                self.connect(packet.nsp, packet.data).await;
                Ok(())
            }
            PacketType::Disconnect => {
                if let Some(socket) = self.sockets.remove(&packet.nsp) {
                    self.app.disconnect(&socket, "client namespace disconnect");
                }
                Ok(())
            }
            PacketType::Event | PacketType::BinaryEvent => {
                let Some(socket) = self.sockets.get(&packet.nsp) else {
                    // Node ignores events for a namespace the client is not connected to.
                    tracing::debug!(nsp = %packet.nsp, "event for an unconnected namespace ignored");
                    return Ok(());
                };
                let Value::Array(mut args) = packet.data else {
                    return Err(PacketError::WrongShape);
                };
                let name = match args.remove(0) {
                    Value::String(name) => name,
                    Value::Number(n) => n.to_string(),
                    _ => return Err(PacketError::WrongShape),
                };
                let event = Event {
                    name,
                    args,
                    binaries,
                    ack: packet.id,
                };
                if let Some(fut) = self.app.event(socket, event) {
                    self.handlers.push(fut);
                }
                Ok(())
            }
            // The gateway never asks clients for acknowledgements.
            PacketType::Ack | PacketType::BinaryAck => Ok(()),
            PacketType::ConnectError => Err(PacketError::NotFromClient(PacketType::ConnectError)),
        }
    }

    async fn connect(&mut self, nsp: String, auth: Value) {
        if self.refused {
            self.stats.refused_full.inc();
            let msg = format!(
                "server full: MAX_CONNECTIONS ({}) reached",
                self.config.max_connections
            );
            self.send(packet::encode_connect_error(&nsp, &msg));
            return;
        }
        if !self.config.namespaces.contains(&nsp) {
            self.send(packet::encode_connect_error(&nsp, "Invalid namespace"));
            return;
        }
        if let Some(existing) = self.sockets.get(&nsp) {
            let reply = packet::encode_connect(&nsp, existing.id(), None);
            self.send(reply);
            return;
        }
        let request = ConnectRequest {
            nsp: nsp.as_str().into(),
            auth,
            engine: self.engine.clone(),
        };
        match self.app.connect(request).await {
            Ok(Accepted { socket, pid }) => {
                tracing::debug!(sid = %socket.id(), nsp = %nsp, "socket connected");
                self.send(packet::encode_connect(&nsp, socket.id(), pid.as_deref()));
                if let Some(pid) = pid {
                    socket.set_pid(pid);
                }
                self.app.connected(&socket);
                self.sockets.insert(nsp, socket);
            }
            Err(message) => self.send(packet::encode_connect_error(&nsp, &message)),
        }
    }

    fn send(&self, text: String) {
        // Failure means the client is gone or too slow; the engine reports the close itself.
        let _ = self.engine.emit(Message::new(text));
    }
}
