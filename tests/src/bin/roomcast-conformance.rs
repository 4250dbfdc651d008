//! `roomcast-conformance`: the server the official protocol test suites expect, built from our
//! own parts. It mirrors `shared/peers/node/conformance-server.js` exactly, on one port (`PORT`,
//! default 3000, which both suites hard-code):
//! - `/engine.io/`: a raw Engine.IO echo server (`roomcast_gateway::eio`), for the Engine.IO v4
//!   suite;
//! - `/socket.io/`: `roomcast_gateway::sio` with namespaces `/` and `/custom`, for the
//!   Socket.IO v5 suite.
//!
//! See `tests/conformance/run.sh` for how to run the suites against it.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use roomcast_gateway::{
    eio::{DisconnectReason, Engine, EngineConfig, EngineHandler, EngineSocket, Message, Str},
    sio::{
        Accepted, ConnectRequest, Event, HandlerFuture, SioApp, SioConfig, SioServer, SioSocket,
    },
};
use roomcast_shared::{health::Readiness, shutdown::cancel_on_signal};
use serde_json::{Value, json};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Both suites assert these values in the Engine.IO handshake.
const PING_INTERVAL: Duration = Duration::from_millis(300);
const PING_TIMEOUT: Duration = Duration::from_millis(200);
const MAX_PAYLOAD: usize = 1_000_000;
/// The Socket.IO suite expects a connection without a namespace CONNECT to close within its
/// 2 s test timeout; Node's reference server uses 1 s.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse().context("PORT must be a port number")?,
        Err(_) => 3000,
    };
    let host: std::net::IpAddr = match std::env::var("HOST") {
        Ok(host) => host.parse().context("HOST must be an IP address")?,
        Err(_) => [127, 0, 0, 1].into(),
    };
    let addr = SocketAddr::new(host, port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;

    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let connections = TaskTracker::new();
    let sio = SioServer::new(
        Arc::new(Conformance::default()),
        SioConfig {
            namespaces: vec!["/".into(), "/custom".into()],
            // The suites open a few dozen connections; no limit is under test.
            max_connections: 10_000,
            connect_timeout: CONNECT_TIMEOUT,
        },
        shutdown.child_token(),
        connections.clone(),
    );

    // Both servers share one port, like the Node reference server.
    let router = roomcast_shared::health::routes(Readiness::new(&[]))
        .merge(Engine::new(Arc::new(Echo), engine_config("/engine.io")).router())
        .merge(Engine::new(Arc::new(sio), engine_config("/socket.io")).router());

    // The one line a caller (run.sh) waits for; everything else goes through tracing.
    #[allow(clippy::print_stdout)]
    {
        println!(
            "[conformance] listening on {} (engine.io echo at /engine.io/, socket.io at /socket.io/)",
            listener.local_addr()?
        );
    }
    let stop = shutdown.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .context("HTTP server failed")?;
    connections.close();
    connections.wait().await;
    Ok(())
}

/// The Engine.IO settings of the Node reference server (`pingInterval`, `pingTimeout`,
/// `maxPayload`/`maxHttpBufferSize`), at `path`.
fn engine_config(path: &'static str) -> EngineConfig {
    EngineConfig {
        ping_interval: PING_INTERVAL,
        ping_timeout: PING_TIMEOUT,
        max_payload: MAX_PAYLOAD,
        ..EngineConfig::new(path)
    }
}

/// The Engine.IO suite's server: every message, text or binary, is sent back as it came.
#[derive(Debug, Clone)]
struct Echo;

impl EngineHandler for Echo {
    type Data = ();

    fn on_connect(&self, _socket: &Arc<EngineSocket<()>>) {}

    fn on_disconnect(&self, _socket: &Arc<EngineSocket<()>>, _reason: DisconnectReason) {}

    fn on_message(&self, socket: &Arc<EngineSocket<()>>, message: Str) {
        // A full queue or a closed socket: the suite then sees the close it provoked.
        let _ = socket.emit(Message::from(message.as_str()));
    }

    fn on_binary(&self, socket: &Arc<EngineSocket<()>>, data: Bytes) {
        let _ = socket.emit_binary(data);
    }
}

/// The Socket.IO suite's application, as in the Node reference server: every namespace emits
/// `auth` with the CONNECT payload; `/` echoes `message` as `message-back` and acknowledges
/// `message-with-ack` with its own arguments.
#[derive(Default)]
struct Conformance {
    /// The CONNECT payload of each socket between `connect` and `connected` (the reply must be
    /// written before the `auth` event that repeats it).
    auth: Mutex<HashMap<Arc<str>, Value>>,
}

impl Conformance {
    fn auth(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Value>> {
        // Poisoning only means another connection panicked mid-insert; the map is still valid.
        self.auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SioApp for Conformance {
    async fn connect(&self, request: ConnectRequest) -> Result<Accepted, String> {
        // Node's `socket.handshake.auth` is `{}` when the CONNECT carries no payload.
        let auth = if request.auth.is_null() {
            json!({})
        } else {
            request.auth.clone()
        };
        let socket = request.socket(None);
        self.auth().insert(socket.id().clone(), auth);
        // Recovery is off in the suites' setup: no pid.
        Ok(Accepted { socket, pid: None })
    }

    fn connected(&self, socket: &Arc<SioSocket>) {
        let auth = self.auth().remove(socket.id()).unwrap_or_else(|| json!({}));
        socket.emit_event(&json!(["auth", auth]), Vec::new());
    }

    fn event(&self, socket: &Arc<SioSocket>, event: Event) -> Option<HandlerFuture> {
        if &**socket.nsp() != "/" {
            return None;
        }
        match (event.name.as_str(), event.ack) {
            ("message", _) => {
                let mut args = Vec::with_capacity(event.args.len() + 1);
                args.push(Value::from("message-back"));
                args.extend(event.args);
                socket.emit_event(&Value::Array(args), event.binaries);
            }
            ("message-with-ack", Some(id)) => {
                socket.ack_with_binaries(id, &Value::Array(event.args), event.binaries);
            }
            _ => {}
        }
        None
    }

    fn disconnect(&self, socket: &Arc<SioSocket>, _reason: &'static str) {
        self.auth().remove(socket.id());
    }
}
