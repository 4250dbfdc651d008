//! Pieces both Roomcast services share: the versioned wire contracts (`wire`), the clap argument
//! groups (`config`), telemetry setup, Redis connection helpers and the shutdown signal.

pub mod clock;
pub mod config;
pub mod counter;
pub mod health;
pub mod redis_conn;
pub mod shutdown;
pub mod telemetry;
pub mod wire;
