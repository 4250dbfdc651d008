//! `/metrics` in the Prometheus text format. The hot paths count in plain atomics
//! ([`GatewayStats`], [`SioStats`]); a prometheus-client collector reads them at scrape time, so
//! counting costs one relaxed add and the exposition format is the library's.

use std::sync::{Arc, atomic::Ordering};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use roomcast_shared::counter::Counter;

use crate::{
    eio::{DisconnectReason, EngineStats},
    rooms::LocalRooms,
    sio::SioStats,
    stats::GatewayStats,
};

/// Everything the gateway exposes.
pub(crate) struct Sources {
    pub(crate) stats: Arc<GatewayStats>,
    pub(crate) connections: Arc<SioStats>,
    pub(crate) engine: Arc<EngineStats>,
    pub(crate) rooms: Arc<LocalRooms>,
    pub(crate) gateway_id: Arc<str>,
}

struct GatewayCollector(Sources);

impl std::fmt::Debug for GatewayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayCollector")
    }
}

type Labels = [(&'static str, &'static str); 1];

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: &Counter,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value.get());
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One counter with a label, e.g. `reason`, over a small fixed set of values.
fn labelled(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for GatewayCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Sources {
            stats,
            connections,
            engine,
            rooms,
            gateway_id,
        } = &self.0;
        {
            let mut info = e.encode_descriptor(
                "roomcast_gateway_build_info",
                "Version of this gateway (value 1).",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION")),
                ("gateway_id", &**gateway_id),
            ];
            ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        }
        let open = connections.open.load(Ordering::Relaxed);
        gauge(
            &mut e,
            "roomcast_gateway_connections",
            "Client connections (Engine.IO sessions) open now.",
            i64::try_from(open).unwrap_or(i64::MAX),
        )?;
        counter(
            &mut e,
            "roomcast_gateway_connections_opened",
            "Client connections opened.",
            &connections.opened,
        )?;
        labelled(
            &mut e,
            "roomcast_gateway_connections_refused",
            "Connections refused, by reason.",
            &[
                (
                    [("reason", "rate_limited")],
                    stats.refused_rate_limited.get(),
                ),
                (
                    [("reason", "unauthorized")],
                    stats.refused_unauthorized.get(),
                ),
                ([("reason", "server_full")], connections.refused_full.get()),
            ],
        )?;
        let closed: Vec<(Labels, u64)> = DisconnectReason::ALL
            .iter()
            .map(|r| ([("reason", r.label())], connections.closed[r.index()].get()))
            .collect();
        labelled(
            &mut e,
            "roomcast_gateway_connections_closed",
            "Connections closed, by reason (parse_error includes payloads over MAX_PAYLOAD).",
            &closed,
        )?;
        let topics = rooms.with_topics(|t| t.len());
        gauge(
            &mut e,
            "roomcast_gateway_topics",
            "Rooms and namespaces this gateway holds a member of (one Redis subscription each).",
            i64::try_from(topics).unwrap_or(i64::MAX),
        )?;
        labelled(
            &mut e,
            "roomcast_gateway_joins_refused",
            "Joins refused, by reason.",
            &[
                ([("reason", "forbidden")], stats.joins_forbidden.get()),
                ([("reason", "room_limit")], stats.joins_over_limit.get()),
            ],
        )?;
        labelled(
            &mut e,
            "roomcast_gateway_events_refused",
            "Client events refused, by reason.",
            &[(
                [("reason", "rate_limited")],
                stats.events_rate_limited.get(),
            )],
        )?;
        counter(
            &mut e,
            "roomcast_gateway_events_delivered",
            "Events queued to client sockets (one per socket per event).",
            &stats.events_delivered,
        )?;
        counter(
            &mut e,
            "roomcast_gateway_written_bytes",
            "Bytes written to clients (WebSocket frames and long-polling bodies).",
            &engine.bytes_written,
        )?;
        stats.delivery_latency.0.encode(e.encode_descriptor(
            "roomcast_gateway_delivery_latency_seconds",
            "Time from publish (the stream entry's time) to the packet being queued to the gateway's sockets, once per event and gateway.",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?)?;
        let failed = stats.recoveries_failed.get();
        let known = stats.recoveries_expired.get()
            + stats.recoveries_history_gone.get()
            + stats.recoveries_wrong_user.get()
            + stats.recoveries_retry.get();
        labelled(
            &mut e,
            "roomcast_gateway_recoveries",
            "Connection state recovery attempts, by result: ok, or why the client got a fresh session (expired: unknown pid or past the window), or retry (failed for now; the client reconnects).",
            &[
                ([("result", "ok")], stats.recoveries.get()),
                ([("result", "expired")], stats.recoveries_expired.get()),
                (
                    [("result", "history_gone")],
                    stats.recoveries_history_gone.get(),
                ),
                (
                    [("result", "wrong_user")],
                    stats.recoveries_wrong_user.get(),
                ),
                ([("result", "retry")], stats.recoveries_retry.get()),
                ([("result", "other")], failed.saturating_sub(known)),
            ],
        )?;
        counter(
            &mut e,
            "roomcast_gateway_late_deliveries",
            "Events sent after a newer one (gap repairs, forced releases); recovery accounts for them.",
            &stats.late_deliveries,
        )?;
        counter(
            &mut e,
            "roomcast_gateway_order_forced",
            "Events released before every fanout partition was known to be done up to them.",
            &stats.order_forced,
        )?;
        gauge(
            &mut e,
            "roomcast_gateway_order_held",
            "Events held now, waiting for slower fanout partitions.",
            i64::try_from(stats.order_held.get()).unwrap_or(i64::MAX),
        )?;
        counter(
            &mut e,
            "roomcast_gateway_commands",
            "Backend commands (join, leave, disconnect) received and applied.",
            &stats.commands,
        )?;
        counter(
            &mut e,
            "roomcast_gateway_replayed_events",
            "Events written by recovery replays.",
            &stats.replayed_events,
        )?;
        counter(
            &mut e,
            "roomcast_gateway_gaps_repaired",
            "Gaps on the live path filled from history.",
            &stats.gaps_repaired,
        )?;
        counter(
            &mut e,
            "roomcast_gateway_gaps_unrepaired",
            "Gaps history could no longer fill.",
            &stats.gaps_unrepaired,
        )?;
        counter(
            &mut e,
            "roomcast_gateway_subscription_reconnects",
            "Redis subscription connections re-established.",
            &stats.subscription_reconnects,
        )?;
        counter(
            &mut e,
            "roomcast_gateway_redis_errors",
            "Redis commands or connections that failed (then retried or reconnected).",
            &stats.redis_errors,
        )?;
        counter(
            &mut e,
            "roomcast_gateway_subscription_probe_failures",
            "Liveness probes of the subscription connection that went unanswered.",
            &stats.probe_failures,
        )?;
        Ok(())
    }
}

/// The registry behind `/metrics`.
pub(crate) fn registry(sources: Sources) -> Arc<Registry> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(GatewayCollector(sources)));
    Arc::new(registry)
}

/// `GET /metrics`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(registry: Arc<Registry>) -> Router<S> {
    Router::new().route("/metrics", get(render).with_state(registry))
}

async fn render(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, &registry) {
        tracing::error!(%error, "cannot encode metrics");
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
