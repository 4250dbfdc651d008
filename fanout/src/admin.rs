//! The admin HTTP server: `/healthz`, `/readyz`, `/metrics` (Prometheus) and `/stats` (the
//! counters as JSON), until shutdown.

use std::sync::Arc;

use axum::{Json, Router, http::header, routing::get};
use prometheus_client::registry::Registry;
use roomcast_shared::health::{self, Readiness};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::stats::{FanoutStats, StatsSnapshot};

pub(crate) async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    stats: Arc<FanoutStats>,
    registry: Arc<Registry>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app: Router = health::routes::<()>(readiness)
        .route(
            "/stats",
            get(move || {
                let stats = stats.clone();
                async move { Json::<StatsSnapshot>(stats.snapshot()) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        crate::metrics::render(&registry),
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}
