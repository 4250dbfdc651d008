//! The admin HTTP server: `/healthz` and `/readyz`, until shutdown.

use roomcast_shared::health::{self, Readiness};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub(crate) async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = health::routes::<()>(readiness);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}
