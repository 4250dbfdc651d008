//! Integration test harness shared by the Rust test suites: a real `redis-server` per test
//! ([`RedisServer`]), waiting for conditions instead of sleeping ([`eventually`], [`within`]),
//! a minimal HTTP client for admin endpoints and long-polling ([`http_get`], [`http_request`]), the fanout run in-process
//! ([`InProcessFanout`]), the gateway run in-process ([`InProcessGateway`]) and a Redis-level stand-in for a gateway ([`FakeGateway`]).

pub mod bench_fanout;
mod fake_gateway;
mod fanout;
mod gateway;
mod http;
mod redis_server;
mod wait;

pub use fake_gateway::FakeGateway;
pub use fanout::InProcessFanout;
pub use gateway::InProcessGateway;
pub use http::{http_get, http_request};
pub use redis_server::RedisServer;
pub use wait::{Check, DEADLINE, eventually, eventually_within, within};

/// Sends this test's logs (`RUST_LOG`, default `warn`) to the test output, which is shown for
/// failing tests. Safe to call more than once.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
