//! The Engine.IO v4 server: the HTTP entry point, handshakes, the session registry and each
//! session's heartbeat.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use bytes::Bytes;
use tokio::time::Instant;

use super::{
    cors::{self, AllowedOrigins},
    packet::{Inbound, Outbound, PacketError, Str},
    polling,
    socket::{DisconnectReason, EngineSocket, Handshake, Transport},
    ws,
};

/// What the application does with Engine.IO sessions. Called from the transports, in packet
/// order for each session; the calls must not block.
pub trait EngineHandler: Send + Sync + 'static {
    /// The application's per-session data.
    type Data: Default + Send + Sync + 'static;

    /// Decides whether a new session may open (e.g. a per-address rate limit); called before
    /// anything is allocated for it.
    fn admit(&self, _handshake: &Handshake) -> Result<(), Refusal> {
        Ok(())
    }

    /// A session opened; called before any of its messages.
    fn on_connect(&self, socket: &Arc<EngineSocket<Self::Data>>);
    fn on_message(&self, socket: &Arc<EngineSocket<Self::Data>>, message: Str);
    fn on_binary(&self, socket: &Arc<EngineSocket<Self::Data>>, data: Bytes);
    /// The session ended; called once, after its last message.
    fn on_disconnect(&self, socket: &Arc<EngineSocket<Self::Data>>, reason: DisconnectReason);
}

/// Why a handshake was refused, as the HTTP answer says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: &'static str,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = format!("{{\"code\":4,\"message\":\"{}\"}}", self.message);
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// Engine.IO settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Request path, without the trailing slash (`/socket.io`).
    pub path: String,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// How long a WebSocket upgrade of a polling session may take.
    pub upgrade_timeout: Duration,
    /// Largest message or polling payload a client may send, in bytes.
    pub max_payload: usize,
    /// Bytes of application packets a session may have queued before emits are refused.
    pub max_buffered_bytes: usize,
    pub websocket: bool,
    pub polling: bool,
    /// Read buffer of each WebSocket, in bytes; small keeps idle connections cheap.
    pub ws_read_buffer_size: usize,
    /// Browser origins allowed.
    pub allowed_origins: AllowedOrigins,
    /// Take the client's address from the last `X-Forwarded-For` hop (set by a trusted proxy).
    pub trust_forwarded_for: bool,
}

impl EngineConfig {
    /// Node's defaults at `path`.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            upgrade_timeout: Duration::from_secs(10),
            max_payload: 1_000_000,
            max_buffered_bytes: 1 << 20,
            websocket: true,
            polling: true,
            ws_read_buffer_size: 1024,
            allowed_origins: AllowedOrigins::Any,
            trust_forwarded_for: false,
        }
    }
}

/// The Engine.IO server for one path. [`Engine::router`] serves it.
pub struct Engine<H: EngineHandler> {
    shared: Arc<Shared<H>>,
}

pub(super) type Socket<H> = Arc<EngineSocket<<H as EngineHandler>::Data>>;

/// What the transports wrote, for metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Bytes written to clients (WebSocket frame payloads and long-polling bodies).
    pub bytes_written: roomcast_shared::counter::Counter,
}

pub(super) struct Shared<H: EngineHandler> {
    pub(super) config: EngineConfig,
    pub(super) stats: Arc<EngineStats>,
    handler: Arc<H>,
    sessions: Mutex<HashMap<Arc<str>, Socket<H>>>,
    /// Cleared when draining: new sessions are refused so clients go to another server.
    accepting: std::sync::atomic::AtomicBool,
}

impl<H: EngineHandler> Engine<H> {
    pub fn new(handler: Arc<H>, config: EngineConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                handler,
                stats: Arc::default(),
                sessions: Mutex::default(),
                accepting: std::sync::atomic::AtomicBool::new(true),
            }),
        }
    }

    /// Stops accepting sessions and closes the open ones (as `ClosingServer`, which clients
    /// treat as a dropped connection and reconnect from), spread evenly over `period` so their
    /// reconnections do not all land on the other servers at once.
    pub async fn drain(&self, period: Duration) {
        self.shared
            .accepting
            .store(false, std::sync::atomic::Ordering::Release);
        let sockets: Vec<Socket<H>> = self.shared.sessions().values().cloned().collect();
        let count = sockets.len();
        tracing::info!(
            connections = count,
            period_ms = period.as_millis(),
            "draining connections"
        );
        let start = Instant::now();
        for (i, socket) in sockets.iter().enumerate() {
            // u32 is plenty for a gateway's connection count; larger counts just share slots.
            let slot = u32::try_from(i).unwrap_or(u32::MAX);
            let of = u32::try_from(count).unwrap_or(u32::MAX).max(1);
            tokio::time::sleep_until(start + period / of * slot).await;
            socket.close(DisconnectReason::ClosingServer);
        }
    }

    /// Routes `<path>/` (and `<path>`) to the server; merge it with the application's router.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let path = self.shared.config.path.trim_end_matches('/');
        Router::new()
            .route(&format!("{path}/"), any(handle::<H>))
            .route(path, any(handle::<H>))
            .with_state(self.shared.clone())
    }

    pub fn stats(&self) -> Arc<EngineStats> {
        self.shared.stats.clone()
    }

    /// Sessions currently open.
    pub fn session_count(&self) -> usize {
        self.shared.sessions().len()
    }
}

/// The Engine.IO error codes of the HTTP API, as Node sends them.
#[derive(Debug, Clone, Copy)]
pub(super) enum HttpError {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    UnsupportedProtocolVersion = 5,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let message = match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        };
        let body = format!("{{\"code\":{},\"message\":\"{message}\"}}", self as u8);
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

/// The query parameters Engine.IO uses; others (`t`, application ones) are ignored.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query<'a> {
    eio: Option<&'a str>,
    transport: Option<&'a str>,
    sid: Option<&'a str>,
}

impl<'a> Query<'a> {
    fn parse(query: &'a str) -> Self {
        let mut out = Self::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "EIO" => out.eio = Some(value),
                "transport" => out.transport = Some(value),
                "sid" => out.sid = Some(value),
                _ => {}
            }
        }
        out
    }
}

async fn handle<H: EngineHandler>(State(engine): State<Arc<Shared<H>>>, req: Request) -> Response {
    let Ok(origin) = engine.config.allowed_origins.check(req.headers()) else {
        return Refusal {
            status: StatusCode::FORBIDDEN,
            message: "Origin not allowed",
        }
        .into_response();
    };
    let preflight = (req.method() == Method::OPTIONS).then(|| req.headers().clone());
    let mut response = match &preflight {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => dispatch(engine, req).await,
    };
    if let Some(origin) = origin {
        cors::allow(response.headers_mut(), origin);
        if let Some(request) = &preflight {
            cors::preflight(response.headers_mut(), request);
        }
    }
    response
}

async fn dispatch<H: EngineHandler>(engine: Arc<Shared<H>>, req: Request) -> Response {
    let uri = req.uri().clone();
    let query = Query::parse(uri.query().unwrap_or(""));
    if query.eio != Some("4") {
        return HttpError::UnsupportedProtocolVersion.into_response();
    }
    let transport = match query.transport {
        Some("polling") if engine.config.polling => Transport::Polling,
        Some("websocket") if engine.config.websocket => Transport::Websocket,
        _ => return HttpError::UnknownTransport.into_response(),
    };
    match (transport, query.sid) {
        (Transport::Polling, None) if req.method() == Method::GET => match engine.admit(&req) {
            Ok(handshake) => polling::handshake(&engine, handshake),
            Err(refusal) => refusal.into_response(),
        },
        (Transport::Polling, None) => HttpError::BadHandshakeMethod.into_response(),
        (Transport::Polling, Some(sid)) => {
            let Some(socket) = engine.session(sid) else {
                return HttpError::UnknownSid.into_response();
            };
            if socket.transport() != Transport::Polling {
                // The session moved to WebSocket: its polling requests are stale.
                return HttpError::BadRequest.into_response();
            }
            match *req.method() {
                Method::GET => polling::poll(&socket, &engine.stats).await,
                Method::POST => polling::post(&engine, &socket, req.into_body()).await,
                _ => HttpError::BadHandshakeMethod.into_response(),
            }
        }
        (Transport::Websocket, sid) => ws::upgrade(engine.clone(), req, sid),
    }
}

impl<H: EngineHandler> Shared<H> {
    fn sessions(&self) -> MutexGuard<'_, HashMap<Arc<str>, Socket<H>>> {
        // Poisoning only means a panic elsewhere mid-insert; the map is still valid.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A session by id: an open one, or one the client just closed (see `lifecycle`).
    pub(super) fn session(&self, sid: &str) -> Option<Socket<H>> {
        let socket = self.sessions().get(sid).cloned()?;
        if socket.pong_overdue(tokio::time::Instant::now()) {
            // Past its deadline: dead now, whether or not its heartbeat task has run yet.
            socket.close(DisconnectReason::HeartbeatTimeout);
        }
        match socket.close_reason() {
            None => Some(socket),
            Some(DisconnectReason::ClientClose) if !socket.close_answered() => Some(socket),
            Some(_) => None,
        }
    }

    /// What the application learns of a handshake request, once it has admitted it.
    pub(super) fn admit(&self, req: &Request) -> Result<Handshake, Refusal> {
        if !self.accepting.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "Server shutting down",
            });
        }
        let handshake = Handshake {
            client_ip: client_ip(req, self.config.trust_forwarded_for),
            authorization: req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(Into::into),
        };
        self.handler.admit(&handshake)?;
        Ok(handshake)
    }

    /// Opens a session: registers it, starts its heartbeat and tells the application.
    pub(super) fn open(self: &Arc<Self>, handshake: Handshake, transport: Transport) -> Socket<H> {
        let socket = Arc::new(EngineSocket::new(
            random_sid(),
            H::Data::default(),
            handshake,
            transport,
            self.config.max_buffered_bytes,
        ));
        self.sessions().insert(socket.id.clone(), socket.clone());
        tokio::spawn(self.clone().lifecycle(socket.clone()));
        self.handler.on_connect(&socket);
        socket
    }

    /// The open packet of a new session.
    pub(super) fn open_packet(&self, sid: &str, transport: Transport) -> String {
        let upgrades = if transport == Transport::Polling && self.config.websocket {
            "[\"websocket\"]"
        } else {
            "[]"
        };
        format!(
            "0{{\"sid\":\"{sid}\",\"upgrades\":{upgrades},\"pingInterval\":{},\"pingTimeout\":{},\"maxPayload\":{}}}",
            self.config.ping_interval.as_millis(),
            self.config.ping_timeout.as_millis(),
            self.config.max_payload,
        )
    }

    /// Handles a packet from the client outside of an upgrade.
    pub(super) fn receive(&self, socket: &Socket<H>, packet: Inbound) -> Result<(), PacketError> {
        match packet {
            Inbound::Message(text) => self.handler.on_message(socket, text),
            Inbound::Binary(data) => self.handler.on_binary(socket, data),
            // Only the heartbeat waits for pongs; one that arrives unasked wakes nobody.
            Inbound::Pong => socket.pong_received(),
            Inbound::Ping { probe: false } => socket.push_control(Outbound::Pong),
            Inbound::Close => socket.close(DisconnectReason::ClientClose),
            Inbound::Noop => {}
            Inbound::Ping { probe: true } => return Err(PacketError::NotFromClient('2')),
            Inbound::Upgrade => return Err(PacketError::NotFromClient('5')),
        }
        Ok(())
    }

    /// Runs the heartbeat until the session ends, then unregisters it and tells the application.
    async fn lifecycle(self: Arc<Self>, socket: Socket<H>) {
        heartbeat(&socket, self.config.ping_interval, self.config.ping_timeout).await;
        let reason = socket
            .close_reason()
            .unwrap_or(DisconnectReason::TransportClose);
        tracing::trace!(sid = %socket.id, reason = reason.as_str(), "engine session closed");
        self.handler.on_disconnect(&socket, reason);
        if reason == DisconnectReason::ClientClose && socket.transport() == Transport::Polling {
            // A polling client that sent a close packet may have its GET still on the way;
            // like Node, answer it with a noop rather than an error.
            tokio::time::sleep(CLOSE_LINGER).await;
        }
        self.sessions().remove(&socket.id);
    }
}

/// How long a polling session closed by its client still answers a GET.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Pings every `interval` (the first one after an interval too, as Node does) and closes the
/// session when a pong does not come within `timeout`. Deadlines are absolute so timer
/// rounding does not add up.
async fn heartbeat<D>(socket: &EngineSocket<D>, interval: Duration, timeout: Duration) {
    let mut next_ping = Instant::now() + interval;
    loop {
        tokio::select! {
            _ = socket.closed() => return,
            _ = tokio::time::sleep_until(next_ping) => {}
        }
        let due = next_ping + timeout;
        tokio::select! {
            _ = socket.closed() => return,
            _ = socket.ping(due) => next_ping = Instant::now() + interval,
            _ = tokio::time::sleep_until(due) => {
                socket.close(DisconnectReason::HeartbeatTimeout);
                return;
            }
        }
    }
}

/// The client's address: the last `X-Forwarded-For` hop if trusted (the one our own proxy
/// added; earlier hops are whatever the client claimed), else the TCP peer.
fn client_ip(req: &Request, trust_forwarded_for: bool) -> Option<std::net::IpAddr> {
    if trust_forwarded_for {
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(|hop| hop.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    req.extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

/// A session id: 20 URL-safe characters from 120 random bits, like Node's.
fn random_sid() -> Arc<str> {
    crate::sio::random_id()
}

/// A `200 OK` with a text body and the headers polling responses need.
pub(super) fn text_response(body: impl Into<Body>, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            // Long-polling responses must never be served from a cache.
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.into(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_query() {
        assert_eq!(
            Query::parse("EIO=4&transport=polling&t=Nx1&sid=abc"),
            Query {
                eio: Some("4"),
                transport: Some("polling"),
                sid: Some("abc"),
            }
        );
        assert_eq!(Query::parse(""), Query::default());
        assert_eq!(Query::parse("EIO").eio, Some(""));
    }

    #[test]
    fn open_packet_lists_upgrades_for_polling_only() {
        let engine = Engine::new(Arc::new(Nothing), EngineConfig::new("/x"));
        assert_eq!(
            engine.shared.open_packet("abc", Transport::Polling),
            r#"0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
        assert!(
            engine
                .shared
                .open_packet("abc", Transport::Websocket)
                .contains(r#""upgrades":[]"#)
        );
    }

    struct Nothing;

    impl EngineHandler for Nothing {
        type Data = ();
        fn on_connect(&self, _: &Arc<EngineSocket<()>>) {}
        fn on_message(&self, _: &Arc<EngineSocket<()>>, _: Str) {}
        fn on_binary(&self, _: &Arc<EngineSocket<()>>, _: Bytes) {}
        fn on_disconnect(&self, _: &Arc<EngineSocket<()>>, _: DisconnectReason) {}
    }
}
