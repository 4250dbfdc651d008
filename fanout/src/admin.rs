//! The admin HTTP server: `/healthz`, `/readyz` and `/stats` (the counters as JSON), until
//! shutdown.

use std::sync::Arc;

use axum::{Json, Router, routing::get};
use roomcast_shared::health::{self, Readiness};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::stats::{FanoutStats, StatsSnapshot};

pub(crate) async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    stats: Arc<FanoutStats>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app: Router = health::routes::<()>(readiness).route(
        "/stats",
        get(move || {
            let stats = stats.clone();
            async move { Json::<StatsSnapshot>(stats.snapshot()) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}
