//! Command-line settings: every one a flag with an environment variable and a default.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use roomcast_tests::bench_fanout::FanoutBenchArgs;

/// Benchmarks a Roomcast cluster (and, side by side, the Node socket.io reference cluster) on
/// this machine: each scenario starts Redis and the servers, ramps up its clients, measures and
/// stops everything, then prints a table (`--json` for machines). See docs/benchmarks.md.
#[derive(Debug, Parser)]
#[command(name = "roomcast-bench", version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Scenario {
    /// Idle connections: memory per connection on the servers, connect times, pings answered
    /// while they are held.
    Idle(IdleArgs),
    /// Fan-out: CLIENTS clients in ROOMS rooms; the publish rate is stepped up until p99
    /// latency passes the limit or delivery is incomplete.
    Fanout(SteppedArgs),
    /// Many small rooms: one client per room, 1:1 messages from the backend; the rate is
    /// stepped up like `fanout`.
    SmallRooms(SteppedArgs),
    /// Recovery storm: a share of the clients drop at once and reconnect with connection state
    /// recovery while events keep flowing.
    RecoveryStorm(StormArgs),
    /// Publish throughput of the fanout alone (a stand-in gateway reads every message).
    FanoutThroughput(ThroughputArgs),
    /// A load-generator process (started by the scenarios).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
}

/// Which cluster to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Targets {
    Roomcast,
    Node,
    /// Both, alternating, and the ratios.
    Both,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ClusterArgs {
    /// Cluster(s) to measure.
    #[arg(long, env = "BENCH_TARGET", default_value = "roomcast")]
    pub(crate) target: Targets,
    /// Rounds: with `both`, Roomcast and Node alternate this many times (each round starts
    /// fresh processes); the best round of each is reported.
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 1)]
    pub(crate) rounds: usize,
    /// Roomcast gateways.
    #[arg(long, env = "BENCH_GATEWAYS", default_value_t = 2)]
    pub(crate) gateways: usize,
    /// Roomcast fanout replicas.
    #[arg(long, env = "BENCH_FANOUTS", default_value_t = 2)]
    pub(crate) fanouts: usize,
    /// Node socket.io processes.
    #[arg(long, env = "BENCH_NODE_SERVERS", default_value_t = 2)]
    pub(crate) node_servers: usize,
    /// Folder with roomcast-gateway and roomcast-fanout (default: this executable's folder,
    /// e.g. target/release).
    #[arg(long, env = "BENCH_BIN_DIR")]
    pub(crate) bin_dir: Option<PathBuf>,
    /// The Node reference cluster (server.js, package.json); copied and installed with `npm
    /// ci` under the log folder if it has no node_modules.
    #[arg(
        long,
        env = "BENCH_NODE_PEER_DIR",
        default_value = "../shared/peers/node"
    )]
    pub(crate) node_peer_dir: PathBuf,
    /// The node executable.
    #[arg(long, env = "BENCH_NODE", default_value = "node")]
    pub(crate) node: PathBuf,
    /// The npm executable.
    #[arg(long, env = "BENCH_NPM", default_value = "npm")]
    pub(crate) npm: PathBuf,
    /// The redis-server executable.
    #[arg(long, env = "REDIS_SERVER_BIN", default_value = "redis-server")]
    pub(crate) redis_server: PathBuf,
    /// Where server and worker logs go (one folder per target).
    #[arg(long, env = "BENCH_LOG_DIR", default_value = "target/bench")]
    pub(crate) log_dir: PathBuf,
    /// Engine.IO ping interval of the servers, ms.
    #[arg(long, env = "BENCH_PING_INTERVAL_MS", default_value_t = 25_000)]
    pub(crate) ping_interval_ms: u64,
    /// Extra environment for the Roomcast gateways and fanouts, `KEY=VALUE`, repeatable or
    /// comma-separated (e.g. `TOKIO_WORKER_THREADS=1`).
    #[arg(long, env = "BENCH_SERVER_ENV", value_delimiter = ',', value_parser = parse_env_pair)]
    pub(crate) server_env: Vec<(String, String)>,
    /// RUST_LOG of the Roomcast servers.
    #[arg(long, env = "BENCH_RUST_LOG", default_value = "warn")]
    pub(crate) rust_log: String,
    /// Print one JSON document instead of tables.
    #[arg(long, env = "BENCH_JSON", default_value_t = false)]
    pub(crate) json: bool,
}

impl ClusterArgs {
    pub(crate) fn bin_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.bin_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(std::env::current_exe()
                .context("own executable")?
                .parent()
                .context("own folder")?
                .to_path_buf()),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct LoadArgs {
    /// Client connections.
    #[arg(long, env = "BENCH_CLIENTS", default_value_t = 10_000)]
    pub(crate) clients: u64,
    /// Load-generator processes (0: one per 15,000 clients, as open files are capped per
    /// process, and at least one per CPU so that a burst is read in parallel).
    #[arg(long, env = "BENCH_WORKERS", default_value_t = 0)]
    pub(crate) workers: usize,
    /// Threads per load-generator process.
    #[arg(long, env = "BENCH_WORKER_THREADS", default_value_t = 1)]
    pub(crate) worker_threads: usize,
    /// Loopback source addresses 127.0.0.1…127.0.0.N the clients connect from, in turn (0: one
    /// per 20,000 clients; one address has one ephemeral port range).
    #[arg(long, env = "BENCH_SOURCE_ADDRESSES", default_value_t = 0)]
    pub(crate) source_addresses: u8,
    /// Connections being set up at once, per load-generator process.
    #[arg(long, env = "BENCH_CONNECT_CONCURRENCY", default_value_t = 256)]
    pub(crate) connect_concurrency: usize,
    /// WebSocket read buffer per client connection, bytes.
    #[arg(long, env = "BENCH_CLIENT_READ_BUFFER", default_value_t = 4096)]
    pub(crate) client_read_buffer: usize,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    #[command(flatten)]
    pub(crate) load: LoadArgs,
    /// Rooms the clients join (`b<i % ROOMS>`); 0: none, connected to the namespace only.
    #[arg(long, env = "BENCH_ROOMS", default_value_t = 0)]
    pub(crate) rooms: u64,
    /// Seconds to let the servers settle before measuring memory.
    #[arg(long, env = "BENCH_SETTLE_SECS", default_value_t = 5)]
    pub(crate) settle_secs: u64,
    /// Seconds to hold the connections (pings flowing) after measuring, counting any lost.
    #[arg(long, env = "BENCH_HOLD_SECS", default_value_t = 30)]
    pub(crate) hold_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct SteppedArgs {
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    #[command(flatten)]
    pub(crate) load: LoadArgs,
    /// Rooms (`fanout` only; `small-rooms` has one per client).
    #[arg(long, env = "BENCH_ROOMS", default_value_t = 10)]
    pub(crate) rooms: u64,
    /// Padding bytes in each event's payload.
    #[arg(long, env = "BENCH_PAYLOAD", default_value_t = 100)]
    pub(crate) payload: usize,
    /// First step, in delivered events per second (published rate × clients per room).
    #[arg(long, env = "BENCH_START_RATE", default_value_t = 10_000.0)]
    pub(crate) start_rate: f64,
    /// Each step multiplies the rate by this.
    #[arg(long, env = "BENCH_FACTOR", default_value_t = 1.5)]
    pub(crate) factor: f64,
    /// Highest rate tried, delivered events per second.
    #[arg(long, env = "BENCH_MAX_RATE", default_value_t = 5_000_000.0)]
    pub(crate) max_rate: f64,
    /// Seconds each step publishes.
    #[arg(long, env = "BENCH_STEP_SECS", default_value_t = 10)]
    pub(crate) step_secs: u64,
    /// Seconds after a step's last publish for its last events to arrive.
    #[arg(long, env = "BENCH_DRAIN_SECS", default_value_t = 5)]
    pub(crate) drain_secs: u64,
    /// Seconds of warm-up at a quarter of the start rate before the first step (not reported).
    #[arg(long, env = "BENCH_WARMUP_SECS", default_value_t = 3)]
    pub(crate) warmup_secs: u64,
    /// A step passes with p99 publish→receive latency at or below this, in ms (and every
    /// event delivered).
    #[arg(long, env = "BENCH_P99_LIMIT_MS", default_value_t = 100.0)]
    pub(crate) p99_limit_ms: f64,
    /// Steps between the last passing and the first failing rate, halving the interval.
    #[arg(long, env = "BENCH_REFINE", default_value_t = 2)]
    pub(crate) refine: usize,
    /// After finding the highest passing rate, one more step at half of it.
    #[arg(long, env = "BENCH_HALF_STEP", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) half_step: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct StormArgs {
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    #[command(flatten)]
    pub(crate) load: LoadArgs,
    /// Rooms.
    #[arg(long, env = "BENCH_ROOMS", default_value_t = 100)]
    pub(crate) rooms: u64,
    /// Padding bytes in each event's payload.
    #[arg(long, env = "BENCH_PAYLOAD", default_value_t = 100)]
    pub(crate) payload: usize,
    /// Delivered events per second while the storm happens.
    #[arg(long, env = "BENCH_RATE", default_value_t = 20_000.0)]
    pub(crate) rate: f64,
    /// Share of the clients that drop at once.
    #[arg(long, env = "BENCH_DROP", default_value_t = 0.1)]
    pub(crate) drop: f64,
    /// Seconds of publishing before anything is measured (every room's first events, the
    /// gateways' first subscriptions and ordering state, are not what this measures).
    #[arg(long, env = "BENCH_WARMUP_SECS", default_value_t = 3)]
    pub(crate) warmup_secs: u64,
    /// Seconds of publishing before the drop.
    #[arg(long, env = "BENCH_BEFORE_SECS", default_value_t = 5)]
    pub(crate) before_secs: u64,
    /// Seconds of publishing after the drop.
    #[arg(long, env = "BENCH_AFTER_SECS", default_value_t = 15)]
    pub(crate) after_secs: u64,
    /// Seconds after the last publish for the last events to arrive.
    #[arg(long, env = "BENCH_DRAIN_SECS", default_value_t = 10)]
    pub(crate) drain_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ThroughputArgs {
    #[command(flatten)]
    pub(crate) bench: FanoutBenchArgs,
    /// Print one JSON document instead of a table.
    #[arg(long, env = "BENCH_JSON", default_value_t = false)]
    pub(crate) json: bool,
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}
