//! `/metrics` in the Prometheus text format: a prometheus-client collector reads the fanout's
//! plain atomic counters ([`FanoutStats`]) at scrape time.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::stats::FanoutStats;

struct FanoutCollector {
    stats: Arc<FanoutStats>,
    replica_id: Arc<str>,
}

impl std::fmt::Debug for FanoutCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FanoutCollector")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for FanoutCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = self.stats.snapshot();
        {
            let mut info = e.encode_descriptor(
                "roomcast_fanout_build_info",
                "Version of this fanout replica (value 1).",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION")),
                ("replica_id", &*self.replica_id),
            ];
            ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        }
        let counters: [(&str, &str, u64); 16] = [
            (
                "roomcast_fanout_entries_read",
                "Publish stream entries read (every replica reads every entry).",
                s.entries,
            ),
            (
                "roomcast_fanout_published",
                "Topic publishes sequenced into history and/or the channel.",
                s.published,
            ),
            (
                "roomcast_fanout_unheld",
                "Topic publishes skipped: no gateway holds the topic.",
                s.unheld,
            ),
            (
                "roomcast_fanout_duplicates",
                "Topic publishes skipped as re-applications of an entry already sequenced.",
                s.duplicates,
            ),
            (
                "roomcast_fanout_receivers",
                "Gateways reached, summed over publishes.",
                s.receivers,
            ),
            (
                "roomcast_fanout_commands",
                "Backend commands relayed to the gateways.",
                s.commands,
            ),
            (
                "roomcast_fanout_dropped",
                "Entry effects given up after a non-retryable Redis error.",
                s.dropped,
            ),
            (
                "roomcast_fanout_committed",
                "Entries whose batch was committed (effects in Redis, cursors moved).",
                s.committed,
            ),
            (
                "roomcast_fanout_batches",
                "Batches read and applied.",
                s.batches,
            ),
            (
                "roomcast_fanout_retries",
                "Script calls or commits run again after a retryable error.",
                s.retries,
            ),
            (
                "roomcast_fanout_redis_errors",
                "Failed Redis sessions of the stream reader (each one a reconnect).",
                s.redis_errors,
            ),
            (
                "roomcast_fanout_trimmed",
                "Entries removed from the publish stream by trimming.",
                s.trimmed,
            ),
            (
                "roomcast_fanout_progress_published",
                "Progress announcements published for gateways.",
                s.progress_published,
            ),
            (
                "roomcast_fanout_leases_acquired",
                "Partition leases taken.",
                s.leases_acquired,
            ),
            (
                "roomcast_fanout_leases_lost",
                "Partition leases found taken by another replica or expired.",
                s.leases_lost,
            ),
            (
                "roomcast_fanout_leases_released",
                "Partition leases given up (rebalancing, shutdown).",
                s.leases_released,
            ),
        ];
        for (name, help, value) in counters {
            counter(&mut e, name, help, value)?;
        }
        {
            let mut family = e.encode_descriptor(
                "roomcast_fanout_dead_lettered",
                "Invalid entries written to the dead-letter stream, by reason.",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in self.stats.dead_reasons() {
                ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
            }
        }
        self.stats.batch_size.0.encode(e.encode_descriptor(
            "roomcast_fanout_batch_size",
            "Entries per batch read from the publish stream.",
            None,
            MetricType::Histogram,
        )?)?;
        gauge(
            &mut e,
            "roomcast_fanout_partitions_owned",
            "Partitions this replica owns.",
            s.partitions_owned,
        )?;
        gauge(
            &mut e,
            "roomcast_fanout_live_replicas",
            "Live fanout replicas at the last renewal.",
            s.live_replicas,
        )?;
        gauge(
            &mut e,
            "roomcast_fanout_in_flight_entries",
            "Entries of the batch being applied (read, not yet committed): the pending entries.",
            s.in_flight,
        )?;
        gauge(
            &mut e,
            "roomcast_fanout_backlog_entries",
            "Publish stream length after the last trim: entries not yet done by every partition (the lag).",
            s.backlog,
        )?;
        let age = ConstGauge::new(s.oldest_unprocessed_age_ms as f64 / 1000.0);
        age.encode(e.encode_descriptor(
            "roomcast_fanout_oldest_unprocessed_age_seconds",
            "Age of the oldest entry this replica's partitions have not done yet (0: caught up).",
            None,
            age.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The registry behind `/metrics`.
pub(crate) fn registry(stats: Arc<FanoutStats>, replica_id: Arc<str>) -> Arc<Registry> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(FanoutCollector { stats, replica_id }));
    Arc::new(registry)
}

/// Renders the registry.
pub(crate) fn render(registry: &Registry) -> String {
    let mut body = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::error!(%error, "cannot encode metrics");
    }
    body
}
