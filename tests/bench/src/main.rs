//! `roomcast-bench`: the benchmark suite. Each scenario starts Redis and a cluster (Roomcast, or
//! the Node socket.io reference, or both in turn), ramps its clients up from load-generator
//! processes, measures, stops everything and prints a table (`--json`: one JSON document on
//! stdout). Progress goes to stderr. Not a test: it asserts nothing about speed.

#![allow(clippy::print_stdout)] // printing the report is this binary's job

mod cli;
mod cluster;
mod procstat;
mod proto;
mod publish;
mod report;
mod scenarios;
mod worker;

use anyhow::Context as _;
use clap::Parser as _;
use serde::Serialize;

use crate::{
    cli::{Cli, ClusterArgs, Scenario, Targets},
    report::{Machine, Table, thousands},
    scenarios::{IdleResult, Step, SteppedResult, StormResult},
};

/// One cluster under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Target {
    Roomcast,
    Node,
}

impl Target {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Roomcast => "roomcast",
            Self::Node => "node",
        }
    }
}

/// The targets of each round, alternating.
fn plan(args: &ClusterArgs) -> Vec<Target> {
    let one: &[Target] = match args.target {
        Targets::Roomcast => &[Target::Roomcast],
        Targets::Node => &[Target::Node],
        Targets::Both => &[Target::Roomcast, Target::Node],
    };
    (0..args.rounds.max(1))
        .flat_map(|_| one.iter().copied())
        .collect()
}

#[derive(Serialize)]
struct Document<R: Serialize> {
    scenario: &'static str,
    machine: Machine,
    runs: Vec<R>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Worker { spec } = &cli.scenario {
        let spec = serde_json::from_str(spec).context("worker spec")?;
        return worker::main(spec);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(cli.scenario))
}

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    let mut machine = Machine::now();
    match scenario {
        Scenario::Worker { .. } => unreachable!("handled in main"),
        Scenario::Idle(args) => {
            let mut runs = Vec::new();
            for target in plan(&args.cluster) {
                runs.push(scenarios::idle(target, &args).await?);
            }
            machine.loadavg_after = procstat::loadavg();
            output(&args.cluster, "idle", machine, runs, print_idle)
        }
        Scenario::Fanout(args) => {
            let mut runs = Vec::new();
            for target in plan(&args.cluster) {
                runs.push(scenarios::stepped(target, &args, args.rooms).await?);
            }
            machine.loadavg_after = procstat::loadavg();
            output(&args.cluster, "fanout", machine, runs, print_stepped)
        }
        Scenario::SmallRooms(args) => {
            let mut runs = Vec::new();
            for target in plan(&args.cluster) {
                runs.push(scenarios::stepped(target, &args, args.load.clients).await?);
            }
            machine.loadavg_after = procstat::loadavg();
            output(&args.cluster, "small-rooms", machine, runs, print_stepped)
        }
        Scenario::RecoveryStorm(args) => {
            let mut runs = Vec::new();
            for target in plan(&args.cluster) {
                runs.push(scenarios::storm(target, &args).await?);
            }
            machine.loadavg_after = procstat::loadavg();
            output(&args.cluster, "recovery-storm", machine, runs, print_storm)
        }
        Scenario::FanoutThroughput(args) => throughput(args, machine).await,
    }
}

fn output<R: Serialize>(
    args: &ClusterArgs,
    scenario: &'static str,
    machine: Machine,
    runs: Vec<R>,
    print: fn(&[R]) -> String,
) -> anyhow::Result<()> {
    if args.json {
        let doc = Document {
            scenario,
            machine,
            runs,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("scenario {scenario}; machine: {}", machine.describe());
        print!("{}", print(&runs));
    }
    Ok(())
}

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

fn best_by<R>(runs: &[R], target: Target, key: impl Fn(&R) -> (Target, f64)) -> Option<&R> {
    runs.iter()
        .filter(|r| key(r).0 == target)
        .max_by(|a, b| key(a).1.total_cmp(&key(b).1))
}

fn ratio_line(
    what: &str,
    roomcast: Option<f64>,
    node: Option<f64>,
    higher_is_better: bool,
) -> String {
    match (roomcast, node) {
        (Some(r), Some(n)) if r > 0.0 && n > 0.0 => {
            let ratio = if higher_is_better { r / n } else { n / r };
            format!(
                "{what}: roomcast {} vs node {} → {ratio:.2}× in Roomcast's favour\n",
                fmt_num(r),
                fmt_num(n)
            )
        }
        _ => String::new(),
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        thousands(v)
    } else {
        format!("{v:.2}")
    }
}

fn print_idle(runs: &[IdleResult]) -> String {
    let mut t = Table::new(&[
        "target",
        "connected",
        "failed",
        "ramp s",
        "conn/s",
        "connect p50 ms",
        "p99 ms",
        "server KiB/conn",
        "redis KiB/conn",
        "loadgen KiB/conn",
        "held s",
        "pings",
        "lost",
        "CPU while idle",
    ]);
    for r in runs {
        t.row(vec![
            r.target.label().into(),
            r.ramp.connected.to_string(),
            r.ramp.failed.to_string(),
            f1(r.ramp.seconds),
            thousands(r.ramp.rate),
            f1(r.ramp.connect.p50_ms),
            f1(r.ramp.connect.p99_ms),
            f1(r.kib_per_connection),
            f1(r.redis_kib_per_connection),
            f1(r.loadgen_kib_per_connection),
            r.hold_secs.to_string(),
            r.pings.to_string(),
            r.lost.to_string(),
            r.usage.cpu_summary(),
        ]);
    }
    let mut out = t.render();
    let key = |r: &IdleResult| (r.target, -r.kib_per_connection);
    let rc = best_by(runs, Target::Roomcast, key).map(|r| r.kib_per_connection);
    let node = best_by(runs, Target::Node, key).map(|r| r.kib_per_connection);
    out.push_str(&ratio_line(
        "memory per idle connection (KiB)",
        rc,
        node,
        false,
    ));
    out
}

fn step_row(target: Target, s: &Step) -> Vec<String> {
    vec![
        target.label().into(),
        thousands(s.target_rate),
        thousands(s.published_per_sec),
        thousands(s.delivered_per_sec),
        format!("{:.4}", s.completeness),
        f1(s.latency.p50_ms),
        f1(s.latency.p90_ms),
        f1(s.latency.p99_ms),
        f1(s.latency.p999_ms),
        f1(s.latency.max_ms),
        f1(s.server_cpu_us_per_event),
        s.usage.cpu_summary(),
        s.verdict.clone(),
    ]
}

fn print_stepped(runs: &[SteppedResult]) -> String {
    let mut t = Table::new(&[
        "target",
        "asked/s",
        "published/s",
        "delivered/s",
        "complete",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "server CPU µs/event",
        "CPU (% of one core)",
        "verdict",
    ]);
    for r in runs {
        for s in &r.steps {
            t.row(step_row(r.target, s));
        }
    }
    let mut out = t.render();
    let mut summary = Table::new(&[
        "target",
        "clients",
        "rooms",
        "connected",
        "max sustainable delivered/s",
        "p99 at half (ms)",
        "peak RSS (MiB)",
    ]);
    for r in runs {
        let peak = r
            .steps
            .last()
            .map(|s| {
                s.usage
                    .memory
                    .iter()
                    .map(|m| format!("{} {:.0}", m.name, m.peak_mib))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        summary.row(vec![
            r.target.label().into(),
            r.clients.to_string(),
            r.rooms.to_string(),
            r.ramp.connected.to_string(),
            r.max_sustainable.map_or("none".into(), thousands),
            r.half.as_ref().map_or("-".into(), |h| f1(h.latency.p99_ms)),
            peak,
        ]);
    }
    out.push_str(&summary.render());
    let key = |r: &SteppedResult| (r.target, r.max_sustainable.unwrap_or(0.0));
    let rc = best_by(runs, Target::Roomcast, key).and_then(|r| r.max_sustainable);
    let node = best_by(runs, Target::Node, key).and_then(|r| r.max_sustainable);
    out.push_str(&ratio_line(
        "max sustainable delivered events/s",
        rc,
        node,
        true,
    ));
    out
}

fn print_storm(runs: &[StormResult]) -> String {
    let mut t = Table::new(&[
        "target",
        "clients",
        "dropped",
        "recovered",
        "fresh",
        "failed",
        "recovery p50 ms",
        "p99 ms",
        "max ms",
        "all back s",
        "complete",
        "dups",
        "gaps",
        "latency p99 ms",
        "steady p50/p99/max ms",
        "CPU",
    ]);
    for r in runs {
        t.row(vec![
            r.target.label().into(),
            r.ramp.connected.to_string(),
            r.dropped.to_string(),
            r.recovered.to_string(),
            r.not_recovered.to_string(),
            r.reconnect_failed.to_string(),
            f1(r.recovery.p50_ms),
            f1(r.recovery.p99_ms),
            f1(r.recovery.max_ms),
            format!("{:.2}", r.all_back_secs),
            format!("{:.4}", r.completeness),
            r.duplicates.to_string(),
            r.gaps.to_string(),
            f1(r.latency.p99_ms),
            format!(
                "{} / {} / {}",
                f1(r.steady_latency.p50_ms),
                f1(r.steady_latency.p99_ms),
                f1(r.steady_latency.max_ms)
            ),
            r.usage.cpu_summary(),
        ]);
    }
    let mut out = t.render();
    let key = |r: &StormResult| (r.target, -r.recovery.p99_ms);
    let rc = best_by(runs, Target::Roomcast, key).map(|r| r.recovery.p99_ms);
    let node = best_by(runs, Target::Node, key).map(|r| r.recovery.p99_ms);
    out.push_str(&ratio_line("recovery p99 (ms)", rc, node, false));
    out
}

#[derive(Serialize)]
struct ThroughputRun {
    replicas: usize,
    entries_per_sec: f64,
    seconds: f64,
    delivered: u64,
    fanout_cpu_seconds: f64,
    redis_cpu_seconds: f64,
    subscriber_cpu_seconds: f64,
}

async fn throughput(args: cli::ThroughputArgs, mut machine: Machine) -> anyhow::Result<()> {
    let bench = args.bench;
    if !std::path::Path::new(&bench.fanout_bin).exists() {
        anyhow::bail!(
            "{} not found: run `cargo build --release` (or pass --fanout-bin)",
            bench.fanout_bin
        );
    }
    let mut runs = Vec::new();
    for &replicas in &bench.replicas {
        let run = roomcast_tests::bench_fanout::measure(&bench, replicas)
            .await
            .with_context(|| format!("run with {replicas} replica(s)"))?;
        if !args.json {
            eprintln!(
                "{replicas} replica(s): {:.0} entries/s",
                bench.entries as f64 / run.seconds
            );
        }
        runs.push(ThroughputRun {
            replicas,
            entries_per_sec: bench.entries as f64 / run.seconds,
            seconds: run.seconds,
            delivered: run.delivered,
            fanout_cpu_seconds: run.fanout_cpu,
            redis_cpu_seconds: run.redis_cpu,
            subscriber_cpu_seconds: run.reader_cpu,
        });
    }
    machine.loadavg_after = procstat::loadavg();
    if args.json {
        let doc = Document {
            scenario: "fanout-throughput",
            machine,
            runs,
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "scenario fanout-throughput ({} entries, {} rooms, {} B payload, batch {}); machine: {}",
        bench.entries,
        bench.rooms,
        bench.payload,
        bench.batch_size,
        machine.describe()
    );
    let mut t = Table::new(&[
        "replicas",
        "entries/s",
        "seconds",
        "delivered",
        "fanout CPU s",
        "redis CPU s",
        "subscriber CPU s",
    ]);
    for r in &runs {
        t.row(vec![
            r.replicas.to_string(),
            thousands(r.entries_per_sec),
            format!("{:.2}", r.seconds),
            r.delivered.to_string(),
            format!("{:.2}", r.fanout_cpu_seconds),
            format!("{:.2}", r.redis_cpu_seconds),
            format!("{:.2}", r.subscriber_cpu_seconds),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}
