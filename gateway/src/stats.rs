//! The gateway's counters. Kept as plain atomics so the hot paths pay one relaxed add; the
//! operations issue exports them as Prometheus metrics.

use prometheus_client::metrics::histogram::Histogram;
use roomcast_shared::counter::{Counter, Gauge};

#[derive(Debug, Default)]
pub(crate) struct GatewayStats {
    /// Sessions restored (`recovered === true`).
    pub(crate) recoveries: Counter,
    /// Clients that asked to recover but got a fresh session (expired, unknown, history gone).
    pub(crate) recoveries_failed: Counter,
    /// ...of which: no session (unknown pid, or the window passed).
    pub(crate) recoveries_expired: Counter,
    /// ...of which: history no longer covers what the client missed.
    pub(crate) recoveries_history_gone: Counter,
    /// Recoveries that failed for now (Redis, ordering, a slow client); the client retries.
    pub(crate) recoveries_retry: Counter,
    /// Redis commands or connections that failed (heartbeats, subscription rounds, session
    /// writes); each is retried or reconnected.
    pub(crate) redis_errors: Counter,
    /// Events queued to client sockets (one per socket per event).
    pub(crate) events_delivered: Counter,
    /// Time from publish (the stream entry's time) to the gateway's queuing of the packet, once
    /// per event and gateway.
    pub(crate) delivery_latency: LatencyHistogram,
    /// Events written by recovery replays.
    pub(crate) replayed_events: Counter,
    /// Gaps on the live path filled from history, and the messages that filled them.
    pub(crate) gaps_repaired: Counter,
    pub(crate) gap_messages: Counter,
    /// Gaps that history could not fill (trimmed or expired).
    pub(crate) gaps_unrepaired: Counter,
    /// Subscription connections re-established (lost, killed, or failed the probe).
    pub(crate) subscription_reconnects: Counter,
    /// Liveness probes of the subscription connection that went unanswered.
    pub(crate) probe_failures: Counter,
    /// Handshakes refused: too many attempts from one address.
    pub(crate) refused_rate_limited: Counter,
    /// Namespace connects refused: no valid token.
    pub(crate) refused_unauthorized: Counter,
    /// Joins refused by the token's `rooms` claim (or of another user's room).
    pub(crate) joins_forbidden: Counter,
    /// Joins refused for MAX_ROOMS_PER_SOCKET.
    pub(crate) joins_over_limit: Counter,
    /// Events refused for EVENT_RATE_PER_SECOND.
    pub(crate) events_rate_limited: Counter,
    /// Recoveries refused because the token belongs to another user than the session.
    pub(crate) recoveries_wrong_user: Counter,
    /// Backend commands applied.
    pub(crate) commands: Counter,
    /// Messages released before every fanout partition was known to be done up to them (a
    /// partition stalled longer than DELIVERY_ORDER_WAIT_MS, or too many were held).
    pub(crate) order_forced: Counter,
    /// Messages sent after a message with a larger source id (gap repairs, forced releases);
    /// recovery records them.
    pub(crate) late_deliveries: Counter,
    /// Messages held now, waiting for slower fanout partitions.
    pub(crate) order_held: Gauge,
}

/// A latency histogram in seconds, 0.5 ms to 10 s.
#[derive(Debug)]
pub(crate) struct LatencyHistogram(pub(crate) Histogram);

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self(Histogram::new([
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
        ]))
    }
}

impl GatewayStats {
    /// One line for the shutdown log.
    pub(crate) fn summary(&self) -> String {
        format!(
            "recoveries={} recoveries_failed={} replayed_events={} gaps_repaired={} gap_messages={} gaps_unrepaired={} subscription_reconnects={} probe_failures={} refused_rate_limited={} refused_unauthorized={} joins_forbidden={} joins_over_limit={} events_rate_limited={} recoveries_wrong_user={} order_forced={} late_deliveries={}",
            self.recoveries.get(),
            self.recoveries_failed.get(),
            self.replayed_events.get(),
            self.gaps_repaired.get(),
            self.gap_messages.get(),
            self.gaps_unrepaired.get(),
            self.subscription_reconnects.get(),
            self.probe_failures.get(),
            self.refused_rate_limited.get(),
            self.refused_unauthorized.get(),
            self.joins_forbidden.get(),
            self.joins_over_limit.get(),
            self.events_rate_limited.get(),
            self.recoveries_wrong_user.get(),
            self.order_forced.get(),
            self.late_deliveries.get(),
        )
    }
}
