//! The fanout's settings: every one a flag with an env-var equivalent; `--help` states defaults.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use roomcast_shared::config::{
    RecoveryArgs, RedisArgs, ShutdownArgs, TelemetryArgs, parse_millis, parse_positive,
};

/// Consumes the publish stream and sequences every request into its room and namespace topics.
#[derive(Debug, Clone, Parser)]
#[command(name = "roomcast-fanout", version, about)]
pub struct FanoutConfig {
    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    #[command(flatten)]
    pub recovery: RecoveryArgs,

    /// Address of the admin HTTP server (`/healthz`, `/readyz`). Default `0.0.0.0:9090`.
    #[arg(
        long = "admin-addr",
        env = "ADMIN_ADDR",
        value_name = "ADMIN_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub admin_addr: SocketAddr,

    /// Consumer group on the publish stream; replicas of one deployment share it.
    /// Default `roomcast-fanout`.
    #[arg(
        long = "fanout-group",
        env = "FANOUT_GROUP",
        value_name = "FANOUT_GROUP",
        default_value = "roomcast-fanout",
        value_parser = parse_name
    )]
    pub group: String,

    /// Consumer name within the group; must be unique per replica. Default: the hostname (the
    /// pod name in Kubernetes).
    #[arg(
        long = "fanout-consumer",
        env = "FANOUT_CONSUMER",
        value_name = "FANOUT_CONSUMER",
        default_value_t = default_consumer(),
        value_parser = parse_name
    )]
    pub consumer: String,

    /// Most entries read per `XREADGROUP` (the batch size; bounds memory). Default 500.
    #[arg(
        long = "fanout-batch-size",
        env = "FANOUT_BATCH_SIZE",
        value_name = "FANOUT_BATCH_SIZE",
        default_value = "500",
        value_parser = parse_positive
    )]
    pub batch_size: usize,

    /// How long one `XREADGROUP` waits for new entries, in milliseconds. Default 2000.
    #[arg(
        long = "fanout-block-ms",
        env = "FANOUT_BLOCK_MS",
        value_name = "FANOUT_BLOCK_MS",
        default_value = "2000",
        value_parser = parse_millis
    )]
    pub block: Duration,

    /// Largest accepted publish entry (field names plus values), in bytes; larger ones are
    /// dead-lettered. Default 1000000.
    #[arg(
        long = "max-publish-bytes",
        env = "MAX_PUBLISH_BYTES",
        value_name = "MAX_PUBLISH_BYTES",
        default_value = "1000000",
        value_parser = parse_positive
    )]
    pub max_publish_bytes: usize,

    /// Most rooms one publish request may target (`rooms`) or exclude (`except`); larger
    /// requests are dead-lettered. Default 1000.
    #[arg(
        long = "max-publish-rooms",
        env = "MAX_PUBLISH_ROOMS",
        value_name = "MAX_PUBLISH_ROOMS",
        default_value = "1000",
        value_parser = parse_positive
    )]
    pub max_publish_rooms: usize,

    /// Approximate length cap of the dead-letter stream (`XADD MAXLEN ~`). Default 100000.
    #[arg(
        long = "dead-letter-maxlen",
        env = "DEAD_LETTER_MAXLEN",
        value_name = "DEAD_LETTER_MAXLEN",
        default_value = "100000",
        value_parser = parse_positive
    )]
    pub dead_letter_maxlen: usize,

    /// How long an entry must have been pending with another consumer before this one claims
    /// it, in milliseconds. Default 30000.
    #[arg(
        long = "claim-min-idle-ms",
        env = "CLAIM_MIN_IDLE_MS",
        value_name = "CLAIM_MIN_IDLE_MS",
        default_value = "30000",
        value_parser = parse_millis
    )]
    pub claim_min_idle: Duration,

    /// How often the publish stream is trimmed to what every consumer group has acknowledged,
    /// in milliseconds. Default 10000.
    #[arg(
        long = "fanout-trim-interval-ms",
        env = "FANOUT_TRIM_INTERVAL_MS",
        value_name = "FANOUT_TRIM_INTERVAL_MS",
        default_value = "10000",
        value_parser = parse_millis
    )]
    pub trim_interval: Duration,

    /// Graceful shutdown (finishing the in-flight batch).
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

fn parse_name(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_owned())
}

/// The hostname is the pod name in Kubernetes: unique per replica and stable across restarts
/// of the same pod, so its pending entries are picked up again by itself.
fn default_consumer() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        // Without a hostname, a random name at least keeps two replicas apart.
        .unwrap_or_else(|| format!("fanout-{:016x}", rand::random::<u64>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = FanoutConfig::try_parse_from(["roomcast-fanout"]).expect("defaults parse");
        assert_eq!(c.admin_addr, "0.0.0.0:9090".parse().expect("addr"));
        assert_eq!(c.group, "roomcast-fanout");
        assert!(!c.consumer.is_empty());
        assert_eq!(c.batch_size, 500);
        assert_eq!(c.block, Duration::from_millis(2000));
        assert_eq!(c.max_publish_bytes, 1_000_000);
        assert_eq!(c.max_publish_rooms, 1000);
        assert_eq!(c.dead_letter_maxlen, 100_000);
        assert_eq!(c.claim_min_idle, Duration::from_secs(30));
        assert_eq!(c.trim_interval, Duration::from_secs(10));
        assert_eq!(c.shutdown.timeout, Duration::from_secs(10));
        assert_eq!(c.redis.key_prefix, "socket.io");
    }

    #[test]
    fn flags_override_defaults() {
        let c = FanoutConfig::try_parse_from([
            "roomcast-fanout",
            "--fanout-consumer",
            "pod-7",
            "--fanout-batch-size",
            "10",
            "--fanout-block-ms",
            "250",
        ])
        .expect("parses");
        assert_eq!(c.consumer, "pod-7");
        assert_eq!(c.batch_size, 10);
        assert_eq!(c.block, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_name_their_env_var() {
        let cases: &[(&str, &str, &str)] = &[
            ("--fanout-batch-size", "0", "FANOUT_BATCH_SIZE"),
            ("--fanout-block-ms", "2s", "FANOUT_BLOCK_MS"),
            ("--admin-addr", "nowhere", "ADMIN_ADDR"),
            ("--fanout-consumer", "", "FANOUT_CONSUMER"),
            ("--claim-min-idle-ms", "0", "CLAIM_MIN_IDLE_MS"),
        ];
        for (flag, value, env) in cases {
            let err = FanoutConfig::try_parse_from(["roomcast-fanout", flag, value])
                .expect_err("must be refused");
            assert!(err.to_string().contains(env), "{flag}={value}: {err}");
        }
    }
}
