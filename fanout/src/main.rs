//! The `roomcast-fanout` binary: configuration, logging, the admin listener; the rest is the lib.

use std::process::ExitCode;

use anyhow::Context as _;
use roomcast_fanout::FanoutConfig;
use roomcast_shared::{config::parse_or_exit, shutdown::cancel_on_signal, telemetry};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let config = parse_or_exit::<FanoutConfig>();
    if let Err(error) = config.check() {
        // Like a bad single value (parse_or_exit): the message names the settings, exit 64.
        eprintln!("roomcast-fanout: {error}");
        return ExitCode::from(64);
    }
    if let Err(error) = telemetry::init(&config.telemetry) {
        eprintln!("roomcast-fanout: cannot set up logging: {error:#}");
        return ExitCode::FAILURE;
    }
    let result = start(config).await;
    // The trace exporter blocks while it flushes; keep it off the async workers.
    let _ = tokio::task::spawn_blocking(telemetry::shutdown).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "roomcast-fanout failed");
            ExitCode::FAILURE
        }
    }
}

async fn start(config: FanoutConfig) -> anyhow::Result<()> {
    let admin = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot listen on ADMIN_ADDR {}", config.admin_addr))?;
    let shutdown = CancellationToken::new();
    cancel_on_signal(shutdown.clone());
    roomcast_fanout::run(config, admin, shutdown).await
}
