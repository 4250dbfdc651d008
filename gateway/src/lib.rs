//! Roomcast gateway: holds Socket.IO client connections, keeps their room memberships in Redis
//! and delivers the envelopes the fanout publishes on room channels.

mod config;
mod delivery;
mod handlers;
mod history;
mod membership;
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
use engineioxide::{TransportType, config::EngineIoConfig, layer::EngineIoLayer};
use roomcast_shared::{
    health::Readiness,
    redis_conn::Backoff,
    wire::{KeySpace, StreamId},
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::{GatewayConfig, Transports};

use crate::{
    handlers::Gateway,
    membership::{Membership, READY_REDIS},
    recovery::Sessions,
    rooms::LocalRooms,
    sio::{SioConfig, SioServer},
    stats::GatewayStats,
    subscriptions::{OrderSettings, READY_SUBSCRIPTIONS, Subscriptions},
    takeover::Takeovers,
};

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

    let Some(mut commands) = connect_until_ready(&client, &keys, &gateway_id, &shutdown).await
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
            control_channels: takeovers
                .as_ref()
                .map(|t| t.channels().to_vec())
                .unwrap_or_default(),
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
    let sio = SioServer::new(
        app,
        SioConfig {
            namespaces: config.namespaces.clone(),
            max_connections: config.max_connections,
            connect_timeout: config.connect_timeout,
        },
        shutdown.child_token(),
        connections.clone(),
    );
    let router = roomcast_shared::health::routes(readiness.clone()).layer(
        EngineIoLayer::from_config(Arc::new(sio), engine_config(&config)),
    );

    let serve_stop = shutdown.clone();
    let ready_on_stop = readiness.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            serve_stop.cancelled().await;
            // Turn not-ready first so the load balancer stops sending new clients.
            ready_on_stop.set(READY_SUBSCRIPTIONS, false);
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
    if let Err(error) = membership::remove_gateway(&mut commands, &keys, &gateway_id).await {
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
    shutdown: &CancellationToken,
) -> Option<redis::aio::ConnectionManager> {
    let mut backoff = Backoff::default();
    let mut logged = false;
    loop {
        let attempt = async {
            let mut commands = roomcast_shared::redis_conn::command_connection(client).await?;
            membership::remove_gateway(&mut commands, keys, gateway_id).await?;
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

fn engine_config(config: &GatewayConfig) -> EngineIoConfig {
    let builder = EngineIoConfig::builder()
        .req_path("/socket.io")
        .ping_interval(config.ping_interval)
        .ping_timeout(config.ping_timeout)
        .upgrade_timeout(config.upgrade_timeout)
        .max_payload(config.max_payload as u64)
        .max_buffer_size(config.max_buffered_packets)
        .ws_max_message_size(config.max_payload)
        .ws_max_frame_size(config.max_payload);
    let builder = match (config.transports.websocket, config.transports.polling) {
        (true, true) => builder.transports([TransportType::Websocket, TransportType::Polling]),
        (true, false) => builder.transports([TransportType::Websocket]),
        _ => builder.transports([TransportType::Polling]),
    };
    builder.build()
}
