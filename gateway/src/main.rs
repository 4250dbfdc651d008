//! `roomcast-gateway`: parse config, start telemetry, run until SIGTERM/SIGINT.

use roomcast_gateway::GatewayConfig;
use roomcast_shared::{config::parse_or_exit, shutdown::cancel_on_signal, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config: GatewayConfig = parse_or_exit();
    telemetry::init(&config.telemetry)?;
    let listener = roomcast_gateway::listen(config.listen_addr, config.listen_backlog)
        .map_err(|e| anyhow::anyhow!("cannot listen on LISTEN_ADDR {}: {e}", config.listen_addr))?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    let result = roomcast_gateway::run(config, listener, shutdown).await;
    // The provider's export thread blocks; keep it off the async workers.
    tokio::task::spawn_blocking(telemetry::shutdown).await?;
    result
}
