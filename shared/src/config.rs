//! Clap argument groups shared by both binaries, and the parse step every `main` uses.
//! Every setting is a flag with an env-var equivalent; the doc comment (shown by `--help`) states
//! its default.

use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

/// Redis connection and key layout.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis server URL (`redis://[:password@]host:port[/db]`, `rediss://` for TLS).
    #[arg(long = "redis-url", env = "REDIS_URL", value_name = "REDIS_URL", default_value = "redis://127.0.0.1:6379", value_parser = parse_redis_url)]
    pub url: String,

    /// Prefix of every Redis key and channel Roomcast uses (see docs/redis-keys.md).
    #[arg(long = "redis-key-prefix", env = "REDIS_KEY_PREFIX", value_name = "REDIS_KEY_PREFIX", default_value = "socket.io", value_parser = parse_key_prefix)]
    pub key_prefix: String,
}

/// Connection state recovery, shared by both binaries (the fanout keeps history for the window,
/// the gateway restores sessions within it).
#[derive(Debug, Clone, Args)]
pub struct RecoveryArgs {
    /// How long a disconnected client can come back and recover its session, in milliseconds;
    /// also how long each room keeps its history. 0 turns recovery off.
    #[arg(long = "recovery-max-disconnection-ms", env = "RECOVERY_MAX_DISCONNECTION_MS", value_name = "RECOVERY_MAX_DISCONNECTION_MS", default_value = "120000", value_parser = parse_millis_or_zero)]
    pub max_disconnection: Duration,

    /// Most events each room keeps in its history (approximate); a client that missed more
    /// than this gets a fresh session instead of a recovered one.
    #[arg(long = "history-max-len", env = "HISTORY_MAX_LEN", value_name = "HISTORY_MAX_LEN", default_value = "1000", value_parser = parse_positive)]
    pub history_max_len: usize,
}

impl RecoveryArgs {
    pub fn enabled(&self) -> bool {
        !self.max_disconnection.is_zero()
    }

    /// The window in milliseconds, as Redis expiries take it; 0 when recovery is off.
    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.max_disconnection.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, Args)]
pub struct ShutdownArgs {
    /// Longest a graceful shutdown may take after SIGTERM, in milliseconds; then the process
    /// exits anyway. Keep it below the pod's termination grace period.
    #[arg(long = "shutdown-timeout-ms", env = "SHUTDOWN_TIMEOUT_MS", value_name = "SHUTDOWN_TIMEOUT_MS", default_value = "10000", value_parser = parse_millis)]
    pub timeout: Duration,
}

/// Log output.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log format: `text` for humans, `json` for log collectors. The level comes from `RUST_LOG`
    /// (default `info`).
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_name = "LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// OpenTelemetry: base URL of an OTLP/HTTP collector (`http://otel-collector:4318`); traces
    /// are sent to `<url>/v1/traces`. Only traces a publisher started (a sampled `traceparent`
    /// on the publish entry) are recorded, unless OTEL_TRACES_SAMPLER says otherwise. Default:
    /// none, nothing is exported.
    #[arg(
        long = "otel-exporter-otlp-endpoint",
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    pub otlp_endpoint: Option<String>,

    /// OTLP encoding: `http/protobuf` or `http/json`.
    #[arg(long = "otel-exporter-otlp-protocol", env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_name = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf", value_parser = ["http/protobuf", "http/json"])]
    pub otlp_protocol: String,

    /// `service.name` of exported spans. Default: the binary's name.
    #[arg(
        long = "otel-service-name",
        env = "OTEL_SERVICE_NAME",
        value_name = "OTEL_SERVICE_NAME"
    )]
    pub service_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses the process arguments and environment. On a bad setting prints clap's message (which
/// names the flag and its env var) and exits with 64 (EX_USAGE); `--help` exits 0.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(error) => {
            let code = if error.use_stderr() { 64 } else { 0 };
            // Printing can only fail if stdout/stderr are gone; the exit code still tells.
            let _ = error.print();
            std::process::exit(code);
        }
    }
}

/// A duration given in whole milliseconds, greater than zero.
pub fn parse_millis(s: &str) -> Result<Duration, String> {
    let ms: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of milliseconds"))?;
    if ms == 0 {
        return Err("must be greater than 0".into());
    }
    Ok(Duration::from_millis(ms))
}

/// A duration given in whole milliseconds; 0 allowed (it means "off" where documented).
pub fn parse_millis_or_zero(s: &str) -> Result<Duration, String> {
    let ms: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of milliseconds"))?;
    Ok(Duration::from_millis(ms))
}

/// A count greater than zero.
pub fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be greater than 0".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

fn parse_redis_url(s: &str) -> Result<String, String> {
    redis::Client::open(s).map_err(|e| format!("not a Redis URL: {e}"))?;
    Ok(s.to_owned())
}

fn parse_key_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.contains(['{', '}']) || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        // Braces would become the hash tag of every key and put them all in one cluster slot.
        return Err("must not contain braces, spaces or control characters".into());
    }
    Ok(s.to_owned())
}

/// Parses an instance id given on the command line (`GATEWAY_ID`, `FANOUT_REPLICA_ID`): it ends
/// up in hash fields, set members and key hash tags, so it stays plain.
pub fn parse_instance_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must be 1 to 128 letters, digits or '-_.:'".into())
    }
}

/// A default instance id: `<hostname>-<8 random hex digits>` (hostname reduced to letters,
/// digits and `-_.`, at most 100 characters; `fallback` without one). Random so that a restarted
/// process never mistakes what its predecessor left in Redis (which may still be running, cut
/// off) for its own.
pub fn instance_id(fallback: &str) -> String {
    let host: String = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(100)
        .collect();
    let host = if host.is_empty() {
        fallback.to_owned()
    } else {
        host
    };
    format!("{host}-{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        redis: RedisArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
        #[command(flatten)]
        recovery: RecoveryArgs,
    }

    #[test]
    fn defaults() {
        let p = Probe::try_parse_from(["x"]).expect("defaults parse");
        assert_eq!(p.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(p.redis.key_prefix, "socket.io");
        assert_eq!(p.telemetry.log_format, LogFormat::Text);
        assert_eq!(p.recovery.max_disconnection, Duration::from_secs(120));
        assert!(p.recovery.enabled());
        assert_eq!(p.recovery.history_max_len, 1000);
        let off =
            Probe::try_parse_from(["x", "--recovery-max-disconnection-ms", "0"]).expect("0 is off");
        assert!(!off.recovery.enabled());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = Probe::try_parse_from(["x", "--redis-url", "nope://"]).expect_err("refused");
        assert!(err.to_string().contains("REDIS_URL"), "{err}");
        let err = Probe::try_parse_from(["x", "--redis-key-prefix", "{a}"]).expect_err("refused");
        assert!(err.to_string().contains("REDIS_KEY_PREFIX"), "{err}");
        let err = Probe::try_parse_from(["x", "--log-format", "xml"]).expect_err("refused");
        assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
    }

    #[test]
    fn millis() {
        assert_eq!(parse_millis("25000"), Ok(Duration::from_secs(25)));
        assert!(parse_millis("0").is_err());
        assert!(parse_millis("1s").is_err());
    }
}
