//! Roomcast gateway: holds Socket.IO client connections, keeps their room memberships in Redis
//! and delivers the envelopes the fanout publishes on room channels.

mod auth;
mod config;
mod delivery;
pub mod eio;
mod handlers;
mod history;
mod limits;
mod membership;
mod metrics;
mod order;
mod recovery;
mod replay;
mod rooms;
pub mod sio;
mod stats;
mod subscriptions;
mod takeover;

use std::sync::Arc;

use anyhow::Context;
use roomcast_shared::{
    health::Readiness,
    redis_conn::Backoff,
    wire::{KeySpace, StreamId, meta_ttl_ms},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use auth::{PublicKey, Secret};
pub use config::{AuthArgs, DrainArgs, GatewayConfig, LimitArgs, Transports};
pub use limits::Rate;

use crate::{
    eio::{Engine, EngineConfig},
    handlers::Gateway,
    membership::{Membership, READY_REDIS},
    recovery::Sessions,
    rooms::LocalRooms,
    sio::{SioConfig, SioServer},
    stats::GatewayStats,
    subscriptions::{OrderSettings, READY_SUBSCRIPTIONS, Subscriptions},
    takeover::Takeovers,
};

/// Binds the client listener with room for `backlog` connections waiting to be accepted
/// (`TcpListener::bind` fixes 1024).
pub fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted gateway rebinds while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Runs the gateway on `listener` until `shutdown` is cancelled, then closes client
/// connections, removes this gateway's memberships from Redis and returns.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let keys = KeySpace::new(config.redis.key_prefix.clone());
    let gateway_id: Arc<str> = config.resolved_gateway_id().into();
    let client = redis::Client::open(config.redis.url.as_str()).context("REDIS_URL")?;
    tracing::info!(gateway_id = %gateway_id, addr = %listener.local_addr()?, "starting gateway");

    let meta_ttl = meta_ttl_ms(config.recovery.window_ms());
    let Some(mut commands) =
        connect_until_ready(&client, &keys, &gateway_id, meta_ttl, &shutdown).await
    else {
        return Ok(());
    };

    let readiness = Readiness::new(&[READY_REDIS, READY_SUBSCRIPTIONS]);
    readiness.set(READY_REDIS, true);
    let rooms = Arc::new(LocalRooms::new());
    let stats = Arc::new(GatewayStats::default());
    let takeovers = config.recovery.enabled().then(|| {
        Arc::new(Takeovers::new(
            keys.clone(),
            gateway_id.clone(),
            commands.clone(),
            config.request_timeout,
        ))
    });
    let (control_tx, mut control_rx) = tokio::sync::mpsc::channel(1024);
    // Delivery in publish order across the fanout's partitions; recoveries wait for it.
    let (released_tx, released_rx) = tokio::sync::watch::channel(StreamId::default());
    let order = (!config.delivery_order_wait.is_zero()).then(|| OrderSettings {
        max_wait: config.delivery_order_wait,
        max_held: config.delivery_order_max_held,
        marks: Default::default(),
        released: released_tx,
    });
    let released = order.is_some().then_some(released_rx);
    let background = TaskTracker::new();
    let background_stop = CancellationToken::new();

    background.spawn(
        Subscriptions {
            client: client.clone(),
            commands: commands.clone(),
            keys: keys.clone(),
            gateway_id: gateway_id.clone(),
            rooms: rooms.clone(),
            readiness: readiness.clone(),
            window_ms: config.recovery.window_ms(),
            probe_interval: config.subscription_probe_interval,
            stats: stats.clone(),
            // Backend commands arrive on the cluster control channel; takeovers also need this
            // gateway's own channel for replies.
            control_channels: takeovers
                .as_ref()
                .map(|t| t.channels().to_vec())
                .unwrap_or_else(|| vec![keys.control_channel()]),
            control: control_tx,
            order,
        }
        .run(background_stop.clone()),
    );
    background.spawn(
        Membership {
            commands: commands.clone(),
            keys: keys.clone(),
            gateway_id: gateway_id.clone(),
            rooms: rooms.clone(),
            readiness: readiness.clone(),
            interval: config.heartbeat_interval,
            ttl: config.gateway_ttl,
            meta_ttl_ms: meta_ttl,
            stats: stats.clone(),
        }
        .run(background_stop.clone()),
    );

    let session_writes = TaskTracker::new();
    let sessions = config.recovery.enabled().then(|| Sessions {
        commands: commands.clone(),
        keys: keys.clone(),
        rooms: rooms.clone(),
        window: config.recovery.max_disconnection,
        history_max_len: config.recovery.history_max_len,
        request_timeout: config.request_timeout,
        writes: session_writes.clone(),
        stats: stats.clone(),
        released,
    });
    let app = Arc::new(Gateway {
        rooms: rooms.clone(),
        keys: keys.clone(),
        gateway_id: gateway_id.clone(),
        request_timeout: config.request_timeout,
        max_rooms_per_socket: config.max_rooms_per_socket,
        sessions,
        takeovers,
        auth: auth::Authenticator::new(auth::AuthSettings {
            secret: config.auth.jwt_secret.as_ref(),
            public_key: config.auth.jwt_public_key.as_ref(),
            issuer: config.auth.jwt_issuer.as_deref(),
            audience: config.auth.jwt_audience.as_deref(),
            leeway_seconds: config.auth.jwt_leeway_seconds,
        }),
        skip_middlewares_on_recovery: config.recovery_skip_middlewares,
        event_rate: config.limits.event_rate(),
        connect_limit: limits::PerAddress::new(config.limits.connect_rate()),
        stats: stats.clone(),
    });
    {
        // Requests from other gateways; each handled on its own task so a slow session write
        // does not hold up the answers to others.
        let app = app.clone();
        let tasks = background.clone();
        let stop = background_stop.clone();
        background.spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = control_rx.recv() => match m { Some(m) => m, None => return },
                };
                let app = app.clone();
                tasks.spawn(async move { app.handle_control(message).await });
            }
        });
    }
    let connections = TaskTracker::new();
    // Cancelled at the end of the drain (not with `shutdown`): connections are closed one by one
    // during the drain, this closes whatever is left.
    let close_connections = CancellationToken::new();
    let sio = SioServer::new(
        app,
        SioConfig {
            namespaces: config.namespaces.clone(),
            max_connections: config.max_connections,
            connect_timeout: config.connect_timeout,
        },
        close_connections.clone(),
        connections.clone(),
    );
    let connection_stats = sio.stats();
    let engine = Engine::new(Arc::new(sio), engine_config(&config));
    let registry = metrics::registry(metrics::Sources {
        stats: stats.clone(),
        connections: connection_stats,
        engine: engine.stats(),
        rooms: rooms.clone(),
        gateway_id: gateway_id.clone(),
    });
    let router = roomcast_shared::health::routes(readiness.clone())
        .merge(metrics::routes(registry))
        .merge(engine.router());

    let serve_stop = shutdown.clone();
    let ready_on_stop = readiness.clone();
    let drain = config.drain.clone();
    // No Nagle: a packet written while an earlier one is unacknowledged would otherwise wait
    // for that ACK, which the client may delay by up to 40 ms (as Node, which sets noDelay).
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        serve_stop.cancelled().await;
        // Turn not-ready first so the load balancer stops sending new clients, and keep serving
        // while it notices.
        ready_on_stop.set(READY_SUBSCRIPTIONS, false);
        tracing::info!(
            delay_ms = drain.delay.as_millis(),
            "shutting down: not ready, serving on before the drain"
        );
        tokio::time::sleep(drain.delay).await;
        // Clients reconnect elsewhere and recover; spread so the others are not stampeded.
        engine.drain(drain.period).await;
        close_connections.cancel();
    })
    .await
    .context("HTTP server failed")?;

    connections.close();
    // Closing the connections saves their recovery sessions; both must finish before we go.
    let drained = async {
        connections.wait().await;
        session_writes.close();
        session_writes.wait().await;
    };
    if tokio::time::timeout(config.shutdown.timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            "client connections and their sessions did not finish within SHUTDOWN_TIMEOUT_MS"
        );
    }
    // Stop the heartbeat and the reconciler first, so neither re-adds what we remove next.
    background_stop.cancel();
    background.close();
    background.wait().await;
    if let Err(error) =
        membership::remove_gateway(&mut commands, &keys, &gateway_id, meta_ttl).await
    {
        tracing::warn!(%error, "could not remove this gateway's memberships; others will reap them");
    }
    tracing::info!(counters = %stats.summary(), "gateway stopped");
    Ok(())
}

/// Opens the command connection and clears memberships a previous process with our id may have
/// left, retrying while Redis is unreachable. `None` if shut down first.
async fn connect_until_ready(
    client: &redis::Client,
    keys: &KeySpace,
    gateway_id: &str,
    meta_ttl: u64,
    shutdown: &CancellationToken,
) -> Option<redis::aio::ConnectionManager> {
    let mut backoff = Backoff::default();
    let mut logged = false;
    loop {
        let attempt = async {
            let mut commands = roomcast_shared::redis_conn::command_connection(client).await?;
            membership::remove_gateway(&mut commands, keys, gateway_id, meta_ttl).await?;
            Ok::<_, redis::RedisError>(commands)
        };
        let delay = match attempt.await {
            Ok(commands) => return Some(commands),
            Err(error) => {
                if !logged {
                    tracing::warn!(%error, "Redis unreachable at start-up; retrying");
                    logged = true;
                }
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn engine_config(config: &GatewayConfig) -> EngineConfig {
    EngineConfig {
        ping_interval: config.ping_interval,
        ping_timeout: config.ping_timeout,
        upgrade_timeout: config.upgrade_timeout,
        max_payload: config.max_payload,
        max_buffered_bytes: config.max_buffered_bytes,
        websocket: config.transports.websocket,
        polling: config.transports.polling,
        allowed_origins: config.auth.allowed_origins(),
        trust_forwarded_for: config.limits.trust_x_forwarded_for,
        ..EngineConfig::new("/socket.io")
    }
}
