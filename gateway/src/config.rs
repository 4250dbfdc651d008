//! `roomcast-gateway` settings: every one a flag with an env-var equivalent and a stated default.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;

use crate::{
    auth::{PublicKey, Secret},
    eio::AllowedOrigins,
    limits::Rate,
};
use roomcast_shared::{
    config::{
        RecoveryArgs, RedisArgs, ShutdownArgs, TelemetryArgs, parse_millis, parse_millis_or_zero,
        parse_positive,
    },
    wire::validate_namespace,
};

/// Roomcast gateway: holds Socket.IO client connections and delivers room events from Redis.
#[derive(Debug, Clone, Parser)]
#[command(name = "roomcast-gateway", version, about)]
pub struct GatewayConfig {
    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    #[command(flatten)]
    pub recovery: RecoveryArgs,

    /// Skip connect middlewares for a recovered session, as Node's `skipMiddlewares` (the
    /// session was admitted once already). Default true.
    #[arg(long = "recovery-skip-middlewares", env = "RECOVERY_SKIP_MIDDLEWARES", value_name = "RECOVERY_SKIP_MIDDLEWARES", default_value_t = true, action = clap::ArgAction::Set)]
    pub recovery_skip_middlewares: bool,

    /// Milliseconds between liveness probes (PING) of the Redis subscription connection; a probe
    /// unanswered for as long triggers a resubscribe and a repair from history.
    #[arg(long = "subscription-probe-interval", env = "SUBSCRIPTION_PROBE_INTERVAL_MS", value_name = "SUBSCRIPTION_PROBE_INTERVAL_MS", default_value = "5000", value_parser = parse_millis)]
    pub subscription_probe_interval: Duration,

    /// Longest a message is held, in milliseconds, waiting until every fanout partition is known
    /// to be done up to it, so that messages go out in publish order although several fanout
    /// replicas publish concurrently (recovery relies on it). Longer than a fanout failover
    /// (FANOUT_LEASE_TTL_MS + FANOUT_LEASE_RENEW_MS) keeps the order through a fanout crash, at
    /// the price of a pause; 0 turns ordering off (per-room order still holds).
    #[arg(long = "delivery-order-wait-ms", env = "DELIVERY_ORDER_WAIT_MS", value_name = "DELIVERY_ORDER_WAIT_MS", default_value = "5000", value_parser = parse_millis_or_zero)]
    pub delivery_order_wait: Duration,

    /// Most messages held for ordering at once; past it the oldest go without waiting.
    #[arg(long = "delivery-order-max-held", env = "DELIVERY_ORDER_MAX_HELD", value_name = "DELIVERY_ORDER_MAX_HELD", default_value = "100000", value_parser = parse_positive)]
    pub delivery_order_max_held: usize,

    /// Address to listen on for Socket.IO (`/socket.io/`), `/healthz` and `/readyz`.
    #[arg(
        long = "listen-addr",
        env = "LISTEN_ADDR",
        value_name = "LISTEN_ADDR",
        default_value = "0.0.0.0:3000"
    )]
    pub listen_addr: SocketAddr,

    /// Connections the kernel may hold for the gateway before it accepts them (the listen
    /// backlog; capped by `net.core.somaxconn`). A reconnect wave (a pod restart, a network
    /// blip) arrives at once, and a connection refused for a full queue retries only after a
    /// one-second SYN timeout.
    #[arg(long = "listen-backlog", env = "LISTEN_BACKLOG", value_name = "LISTEN_BACKLOG", default_value = "4096", value_parser = parse_backlog)]
    pub listen_backlog: u32,

    /// Milliseconds between Engine.IO pings.
    #[arg(long = "ping-interval", env = "WEBSOCKET_PING_INTERVAL", value_name = "WEBSOCKET_PING_INTERVAL", default_value = "25000", value_parser = parse_millis)]
    pub ping_interval: Duration,

    /// Milliseconds to wait for a pong before the connection is considered dead.
    #[arg(long = "ping-timeout", env = "WEBSOCKET_PING_TIMEOUT", value_name = "WEBSOCKET_PING_TIMEOUT", default_value = "60000", value_parser = parse_millis)]
    pub ping_timeout: Duration,

    /// Milliseconds a polling→websocket upgrade may take.
    #[arg(long = "upgrade-timeout", env = "WEBSOCKET_UPGRADE_TIMEOUT", value_name = "WEBSOCKET_UPGRADE_TIMEOUT", default_value = "10000", value_parser = parse_millis)]
    pub upgrade_timeout: Duration,

    /// Largest message a client may send, in bytes (Engine.IO `maxPayload`).
    #[arg(long = "max-payload", env = "MAX_PAYLOAD", value_name = "MAX_PAYLOAD", default_value = "1000000", value_parser = parse_positive)]
    pub max_payload: usize,

    /// Most client connections this gateway holds; the next one gets a `connect_error`
    /// ("server full") and is counted.
    #[arg(long = "max-connections", env = "MAX_CONNECTIONS", value_name = "MAX_CONNECTIONS", default_value = "1000", value_parser = parse_positive)]
    pub max_connections: usize,

    /// Transports clients may use, comma-separated: `websocket`, `polling`.
    #[arg(long = "transports", env = "TRANSPORTS", value_name = "TRANSPORTS", default_value = "websocket,polling", value_parser = parse_transports)]
    pub transports: Transports,

    /// Milliseconds a client has to connect to a namespace after its Engine.IO handshake.
    #[arg(long = "connect-timeout", env = "CONNECT_TIMEOUT", value_name = "CONNECT_TIMEOUT", default_value = "45000", value_parser = parse_millis)]
    pub connect_timeout: Duration,

    /// Bytes queued for one connection (each packet counts its size plus 64) before the client
    /// counts as a slow consumer and is disconnected (recoverably: it catches up from history).
    #[arg(long = "max-buffered-bytes", env = "MAX_BUFFERED_BYTES", value_name = "MAX_BUFFERED_BYTES", default_value = "1048576", value_parser = parse_positive)]
    pub max_buffered_bytes: usize,

    /// Namespaces clients may connect to, comma-separated.
    #[arg(long = "namespaces", env = "NAMESPACES", value_name = "NAMESPACES", default_value = "/", value_delimiter = ',', value_parser = parse_namespace)]
    pub namespaces: Vec<String>,

    /// This gateway's id in Redis membership keys; unique per pod. Default: hostname plus a
    /// random suffix.
    #[arg(long = "gateway-id", env = "GATEWAY_ID", value_name = "GATEWAY_ID", value_parser = roomcast_shared::config::parse_instance_id)]
    pub gateway_id: Option<String>,

    /// Milliseconds between liveness heartbeats in Redis.
    #[arg(long = "heartbeat-interval", env = "HEARTBEAT_INTERVAL_MS", value_name = "HEARTBEAT_INTERVAL_MS", default_value = "5000", value_parser = parse_millis)]
    pub heartbeat_interval: Duration,

    /// Milliseconds without a heartbeat after which a gateway counts as dead and its room
    /// memberships are removed by the others.
    #[arg(long = "gateway-ttl", env = "GATEWAY_TTL_MS", value_name = "GATEWAY_TTL_MS", default_value = "15000", value_parser = parse_millis)]
    pub gateway_ttl: Duration,

    /// Milliseconds a `join` may wait for its Redis subscription before it is refused
    /// (the inter-server request timeout).
    #[arg(long = "request-timeout", env = "REQUEST_TIMEOUT_MS", value_name = "REQUEST_TIMEOUT_MS", default_value = "5000", value_parser = parse_millis)]
    pub request_timeout: Duration,

    /// Most rooms one socket may be in.
    #[arg(long = "max-rooms-per-socket", env = "MAX_ROOMS_PER_SOCKET", value_name = "MAX_ROOMS_PER_SOCKET", default_value = "100", value_parser = parse_positive)]
    pub max_rooms_per_socket: usize,

    /// Graceful shutdown (closing connections, saving their sessions).
    #[command(flatten)]
    pub shutdown: ShutdownArgs,

    #[command(flatten)]
    pub drain: DrainArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub limits: LimitArgs,
}

/// How a gateway leaves on SIGTERM without losing anything: not-ready at once, serve on for
/// DRAIN_DELAY_MS while load balancers notice, then close connections spread over
/// DRAIN_PERIOD_MS (clients reconnect elsewhere and recover), then save sessions within
/// SHUTDOWN_TIMEOUT_MS. Keep the sum below the pod's termination grace period.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// Milliseconds the gateway keeps serving after SIGTERM while reporting not-ready, so load
    /// balancers stop sending it new clients before it closes connections.
    #[arg(long = "drain-delay", env = "DRAIN_DELAY_MS", value_name = "DRAIN_DELAY_MS", default_value = "5000", value_parser = parse_millis_or_zero)]
    pub delay: Duration,

    /// Milliseconds over which the connections are closed, evenly spread, so reconnections do
    /// not hit the other gateways all at once. 0 closes them all at once.
    #[arg(long = "drain-period", env = "DRAIN_PERIOD_MS", value_name = "DRAIN_PERIOD_MS", default_value = "10000", value_parser = parse_millis_or_zero)]
    pub period: Duration,
}

/// Authentication of clients (JWT) and browser origins.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Shared secret (at least 32 bytes) for HS256 tokens. Setting it or JWT_PUBLIC_KEY_FILE
    /// turns authentication on. Default: none (authentication off, any room may be joined).
    #[arg(
        long = "jwt-secret",
        env = "JWT_SECRET",
        value_name = "JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key"
    )]
    pub jwt_secret: Option<Secret>,

    /// PEM public key file: an RSA key means RS256 tokens, an EC P-256 key ES256. Default: none.
    #[arg(long = "jwt-public-key-file", env = "JWT_PUBLIC_KEY_FILE", value_name = "JWT_PUBLIC_KEY_FILE", value_parser = PublicKey::load)]
    pub jwt_public_key: Option<PublicKey>,

    /// Required `iss` of tokens. Default: not checked.
    #[arg(long = "jwt-issuer", env = "JWT_ISSUER", value_name = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of tokens. Default: not checked.
    #[arg(
        long = "jwt-audience",
        env = "JWT_AUDIENCE",
        value_name = "JWT_AUDIENCE"
    )]
    pub jwt_audience: Option<String>,

    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(
        long = "jwt-leeway",
        env = "JWT_LEEWAY_SECONDS",
        value_name = "JWT_LEEWAY_SECONDS",
        default_value = "5"
    )]
    pub jwt_leeway_seconds: u64,

    /// Browser origins allowed, comma-separated (`https://app.example.com`), or `*` for any.
    /// Pages served from the gateway's own host are always allowed. Default: any origin when
    /// authentication is off, none but the gateway's own host when it is on.
    #[arg(
        long = "cors-allowed-origins",
        env = "CORS_ALLOWED_ORIGINS",
        value_name = "CORS_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_allowed_origins: Vec<String>,
}

impl AuthArgs {
    pub fn enabled(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some()
    }

    pub fn allowed_origins(&self) -> AllowedOrigins {
        let listed: Vec<String> = self
            .cors_allowed_origins
            .iter()
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if listed.iter().any(|o| o == "*") || (listed.is_empty() && !self.enabled()) {
            AllowedOrigins::Any
        } else {
            AllowedOrigins::List(listed)
        }
    }
}

/// Limits on what one client may do.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Events a socket may send per second, on average (token bucket); past it, events are
    /// refused (`{ok:false, error:"rate limited"}` in the ack) and counted.
    #[arg(long = "event-rate", env = "EVENT_RATE_PER_SECOND", value_name = "EVENT_RATE_PER_SECOND", default_value = "50", value_parser = parse_rate)]
    pub event_rate: f64,

    /// Events a socket may send in a burst above EVENT_RATE_PER_SECOND.
    #[arg(long = "event-burst", env = "EVENT_BURST", value_name = "EVENT_BURST", default_value = "100", value_parser = parse_positive)]
    pub event_burst: usize,

    /// Connection attempts (Engine.IO handshakes) per second from one client address; past it
    /// the handshake gets HTTP 429.
    #[arg(long = "connect-rate-per-ip", env = "CONNECT_RATE_PER_IP", value_name = "CONNECT_RATE_PER_IP", default_value = "20", value_parser = parse_rate)]
    pub connect_rate_per_ip: f64,

    /// Connection attempts one address may make in a burst above CONNECT_RATE_PER_IP.
    #[arg(long = "connect-burst-per-ip", env = "CONNECT_BURST_PER_IP", value_name = "CONNECT_BURST_PER_IP", default_value = "100", value_parser = parse_positive)]
    pub connect_burst_per_ip: usize,

    /// Take the client address from the last `X-Forwarded-For` hop (set this behind an
    /// ingress that appends it; otherwise every client would share the ingress's address).
    #[arg(long = "trust-x-forwarded-for", env = "TRUST_X_FORWARDED_FOR", value_name = "TRUST_X_FORWARDED_FOR", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_x_forwarded_for: bool,
}

impl LimitArgs {
    pub fn event_rate(&self) -> Rate {
        Rate {
            per_second: self.event_rate,
            burst: self.event_burst as f64,
        }
    }

    pub fn connect_rate(&self) -> Rate {
        Rate {
            per_second: self.connect_rate_per_ip,
            burst: self.connect_burst_per_ip as f64,
        }
    }
}

fn parse_backlog(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a whole number above zero")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("`{s}` is not a positive number")),
    }
}

/// Which Engine.IO transports are enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transports {
    pub websocket: bool,
    pub polling: bool,
}

fn parse_transports(s: &str) -> Result<Transports, String> {
    let mut t = Transports {
        websocket: false,
        polling: false,
    };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "websocket" => t.websocket = true,
            "polling" => t.polling = true,
            other => {
                return Err(format!(
                    "unknown transport `{other}` (expected websocket, polling)"
                ));
            }
        }
    }
    if !t.websocket && !t.polling {
        return Err("at least one transport is required".into());
    }
    Ok(t)
}

fn parse_namespace(s: &str) -> Result<String, String> {
    let s = s.trim();
    validate_namespace(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

impl GatewayConfig {
    /// The configured gateway id, or `<hostname>-<random>`.
    pub fn resolved_gateway_id(&self) -> String {
        self.gateway_id
            .clone()
            .unwrap_or_else(|| roomcast_shared::config::instance_id("gateway"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design_notes() {
        let c = GatewayConfig::try_parse_from(["gw"]).expect("defaults parse");
        assert_eq!(c.listen_addr.to_string(), "0.0.0.0:3000");
        assert_eq!(c.listen_backlog, 4096);
        assert_eq!(c.ping_interval, Duration::from_secs(25));
        assert_eq!(c.ping_timeout, Duration::from_secs(60));
        assert_eq!(c.upgrade_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 1000);
        assert_eq!(
            c.transports,
            Transports {
                websocket: true,
                polling: true
            }
        );
        assert_eq!(c.namespaces, vec!["/".to_owned()]);
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        assert_eq!(c.delivery_order_wait, Duration::from_secs(5));
        assert_eq!(c.delivery_order_max_held, 100_000);
        assert!(!c.auth.enabled());
        assert_eq!(c.auth.allowed_origins(), AllowedOrigins::Any);
    }

    #[test]
    fn auth_on_restricts_origins_unless_listed() {
        let secret = "0123456789abcdef0123456789abcdef";
        let c = GatewayConfig::try_parse_from(["gw", "--jwt-secret", secret]).expect("parses");
        assert!(c.auth.enabled());
        assert_eq!(c.auth.allowed_origins(), AllowedOrigins::List(Vec::new()));
        let c = GatewayConfig::try_parse_from([
            "gw",
            "--jwt-secret",
            secret,
            "--cors-allowed-origins",
            "https://a.example,https://b.example",
        ])
        .expect("parses");
        assert_eq!(
            c.auth.allowed_origins(),
            AllowedOrigins::List(vec!["https://a.example".into(), "https://b.example".into()])
        );
        let both = GatewayConfig::try_parse_from([
            "gw",
            "--jwt-secret",
            secret,
            "--jwt-public-key-file",
            "Cargo.toml",
        ]);
        assert!(both.is_err(), "one key source at a time");
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (args, name) in [
            (&["gw", "--max-connections", "0"][..], "MAX_CONNECTIONS"),
            (
                &["gw", "--ping-interval", "soon"][..],
                "WEBSOCKET_PING_INTERVAL",
            ),
            (&["gw", "--transports", "carrier-pigeon"][..], "TRANSPORTS"),
            (&["gw", "--namespaces", "/,admin"][..], "NAMESPACES"),
            (&["gw", "--listen-addr", "nowhere"][..], "LISTEN_ADDR"),
            (&["gw", "--listen-backlog", "0"][..], "LISTEN_BACKLOG"),
            (&["gw", "--gateway-id", ""][..], "GATEWAY_ID"),
            (&["gw", "--gateway-id", "a{b}"][..], "GATEWAY_ID"),
            (&["gw", "--jwt-secret", "short"][..], "JWT_SECRET"),
            (
                &["gw", "--jwt-public-key-file", "/nonexistent.pem"][..],
                "JWT_PUBLIC_KEY_FILE",
            ),
            (&["gw", "--event-rate", "fast"][..], "EVENT_RATE_PER_SECOND"),
            (
                &["gw", "--connect-burst-per-ip", "0"][..],
                "CONNECT_BURST_PER_IP",
            ),
            (
                &["gw", "--delivery-order-wait-ms", "5s"][..],
                "DELIVERY_ORDER_WAIT_MS",
            ),
            (
                &["gw", "--delivery-order-max-held", "0"][..],
                "DELIVERY_ORDER_MAX_HELD",
            ),
        ] {
            let err = GatewayConfig::try_parse_from(args).expect_err("refused");
            assert!(err.to_string().contains(name), "{args:?}: {err}");
        }
    }

    #[test]
    fn lists_parse() {
        let c = GatewayConfig::try_parse_from([
            "gw",
            "--transports",
            "polling",
            "--namespaces",
            "/,/admin",
        ])
        .expect("parses");
        assert_eq!(
            c.transports,
            Transports {
                websocket: false,
                polling: true
            }
        );
        assert_eq!(c.namespaces, vec!["/".to_owned(), "/admin".to_owned()]);
    }
}
