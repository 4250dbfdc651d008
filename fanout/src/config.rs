//! The fanout's settings: every one a flag with an env-var equivalent; `--help` states defaults.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use roomcast_shared::{
    config::{RecoveryArgs, RedisArgs, ShutdownArgs, TelemetryArgs, parse_millis, parse_positive},
    wire::MAX_PARTITIONS,
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

    /// Number of partitions the topics (rooms and namespaces) are split into; each partition has
    /// exactly one active owner among the replicas, which keeps every room in publish order.
    /// All replicas must use the same value: changing it starts new partition cursors (the
    /// remaining stream is read again, and what was already applied is skipped). 1 to 1024.
    /// Default 16.
    #[arg(
        long = "fanout-partitions",
        env = "FANOUT_PARTITIONS",
        value_name = "FANOUT_PARTITIONS",
        default_value = "16",
        value_parser = parse_partitions
    )]
    pub partitions: u16,

    /// This replica's id in partition leases and the replica registry; must be unique per
    /// running process. Default: the hostname (the pod name in Kubernetes) plus a random suffix.
    #[arg(
        long = "fanout-replica-id",
        env = "FANOUT_REPLICA_ID",
        value_name = "FANOUT_REPLICA_ID",
        default_value_t = default_replica_id(),
        value_parser = roomcast_shared::config::parse_instance_id
    )]
    pub replica_id: String,

    /// How long a partition lease (and a replica's registration) lasts without renewal, in
    /// milliseconds: after a crash, another replica takes the partitions over within about this
    /// long. Default 3000.
    #[arg(
        long = "fanout-lease-ttl-ms",
        env = "FANOUT_LEASE_TTL_MS",
        value_name = "FANOUT_LEASE_TTL_MS",
        default_value = "3000",
        value_parser = parse_millis
    )]
    pub lease_ttl: Duration,

    /// How often a replica renews its leases and heartbeat, and rebalances (takes free
    /// partitions up to its fair share, gives up those above it), in milliseconds; must be well
    /// below FANOUT_LEASE_TTL_MS. Default 750.
    #[arg(
        long = "fanout-lease-renew-ms",
        env = "FANOUT_LEASE_RENEW_MS",
        value_name = "FANOUT_LEASE_RENEW_MS",
        default_value = "750",
        value_parser = parse_millis
    )]
    pub lease_renew: Duration,

    /// Most entries read per `XREAD` (the batch size; bounds memory). Default 500.
    #[arg(
        long = "fanout-batch-size",
        env = "FANOUT_BATCH_SIZE",
        value_name = "FANOUT_BATCH_SIZE",
        default_value = "500",
        value_parser = parse_positive
    )]
    pub batch_size: usize,

    /// How long one `XREAD` waits for new entries, in milliseconds; an idle replica announces its
    /// progress and gives up partitions it should no longer own at least this often. Default 2000.
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

    /// How often the publish stream is trimmed to what every partition has done (and every other
    /// consumer group has acknowledged), and the lag is measured and logged, in milliseconds.
    /// Default 10000.
    #[arg(
        long = "fanout-trim-interval-ms",
        env = "FANOUT_TRIM_INTERVAL_MS",
        value_name = "FANOUT_TRIM_INTERVAL_MS",
        default_value = "10000",
        value_parser = parse_millis
    )]
    pub trim_interval: Duration,

    /// Graceful shutdown (finishing the in-flight batch, giving the leases up).
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
}

fn parse_partitions(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(n) if (1..=MAX_PARTITIONS).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` is not a whole number from 1 to {MAX_PARTITIONS}"
        )),
    }
}

/// The hostname (the pod name in Kubernetes) plus a random suffix: unique per process, so a
/// restarted replica never mistakes the leases of its predecessor (which may still be running,
/// cut off) for its own.
fn default_replica_id() -> String {
    roomcast_shared::config::instance_id("fanout")
}

impl FanoutConfig {
    /// Settings that are valid one by one but not together.
    pub fn check(&self) -> Result<(), String> {
        if self.lease_renew >= self.lease_ttl {
            return Err(format!(
                "FANOUT_LEASE_RENEW_MS ({} ms) must be below FANOUT_LEASE_TTL_MS ({} ms)",
                self.lease_renew.as_millis(),
                self.lease_ttl.as_millis()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = FanoutConfig::try_parse_from(["roomcast-fanout"]).expect("defaults parse");
        assert_eq!(c.admin_addr, "0.0.0.0:9090".parse().expect("addr"));
        assert_eq!(c.partitions, 16);
        assert!(c.replica_id.len() > 9, "hostname-suffix: {}", c.replica_id);
        assert_eq!(c.lease_ttl, Duration::from_millis(3000));
        assert_eq!(c.lease_renew, Duration::from_millis(750));
        assert!(c.check().is_ok());
        assert_eq!(c.batch_size, 500);
        assert_eq!(c.block, Duration::from_millis(2000));
        assert_eq!(c.max_publish_bytes, 1_000_000);
        assert_eq!(c.max_publish_rooms, 1000);
        assert_eq!(c.dead_letter_maxlen, 100_000);
        assert_eq!(c.trim_interval, Duration::from_secs(10));
        assert_eq!(c.shutdown.timeout, Duration::from_secs(10));
        assert_eq!(c.redis.key_prefix, "socket.io");
    }

    #[test]
    fn flags_override_defaults() {
        let c = FanoutConfig::try_parse_from([
            "roomcast-fanout",
            "--fanout-replica-id",
            "pod-7",
            "--fanout-partitions",
            "4",
            "--fanout-batch-size",
            "10",
            "--fanout-block-ms",
            "250",
        ])
        .expect("parses");
        assert_eq!(c.replica_id, "pod-7");
        assert_eq!(c.partitions, 4);
        assert_eq!(c.batch_size, 10);
        assert_eq!(c.block, Duration::from_millis(250));
    }

    #[test]
    fn bad_values_name_their_env_var() {
        let cases: &[(&str, &str, &str)] = &[
            ("--fanout-batch-size", "0", "FANOUT_BATCH_SIZE"),
            ("--fanout-block-ms", "2s", "FANOUT_BLOCK_MS"),
            ("--admin-addr", "nowhere", "ADMIN_ADDR"),
            ("--fanout-replica-id", "", "FANOUT_REPLICA_ID"),
            ("--fanout-replica-id", "a{b}", "FANOUT_REPLICA_ID"),
            ("--fanout-partitions", "0", "FANOUT_PARTITIONS"),
            ("--fanout-partitions", "1025", "FANOUT_PARTITIONS"),
            ("--fanout-lease-ttl-ms", "0", "FANOUT_LEASE_TTL_MS"),
            ("--fanout-lease-renew-ms", "soon", "FANOUT_LEASE_RENEW_MS"),
        ];
        for (flag, value, env) in cases {
            let err = FanoutConfig::try_parse_from(["roomcast-fanout", flag, value])
                .expect_err("must be refused");
            assert!(err.to_string().contains(env), "{flag}={value}: {err}");
        }
    }

    #[test]
    fn renewal_must_be_faster_than_expiry() {
        let c = FanoutConfig::try_parse_from([
            "roomcast-fanout",
            "--fanout-lease-ttl-ms",
            "1000",
            "--fanout-lease-renew-ms",
            "1000",
        ])
        .expect("each value parses");
        let err = c.check().expect_err("refused together");
        assert!(err.contains("FANOUT_LEASE_RENEW_MS"), "{err}");
    }
}
