//! `roomcast-bench-fanout`: fanout throughput with 1, 2 and 3 replicas on this machine. Not a
//! test: it prints figures (see `scripts/bench-fanout.sh`, which builds the release binaries and
//! runs it).
//!
//! For each replica count, on a fresh `redis-server`: `ROOMS` rooms are held by a stand-in
//! gateway (a member count in `:members` and one subscriber connection that reads every message),
//! `ENTRIES` publish requests are written to a side stream, the fanout processes are started and
//! left to share the partitions, then the side stream is renamed into the publish stream in one
//! step and the clock runs until every partition's cursor has passed the last entry. Reported:
//! entries/s, messages the subscriber received, the CPU seconds the fanouts, Redis and the
//! subscriber spent, and how busy that made the machine (Redis is one thread: when it is near one
//! core per second, it is the limit; when the machine is near 100%, the cores are).

use std::io::Write as _;

use anyhow::{Context as _, bail};
use clap::Parser;
use roomcast_tests::bench_fanout::{FanoutBenchArgs, measure};

/// Fanout throughput with 1, 2 and 3 replicas.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    bench: FanoutBenchArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse().bench;
    if !std::path::Path::new(&args.fanout_bin).exists() {
        bail!(
            "{} not found: run `cargo build --release` (or pass --fanout-bin)",
            args.fanout_bin
        );
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "fanout throughput: {} entries to {} held rooms, {} B payload, {} partitions, batch {}, {} CPUs",
        args.entries,
        args.rooms,
        args.payload,
        args.partitions,
        args.batch_size,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    let mut runs = Vec::new();
    for &replicas in &args.replicas {
        let run = measure(&args, replicas)
            .await
            .with_context(|| format!("run with {replicas} replica(s)"))?;
        writeln!(
            out,
            "  {} replica(s): {:>8.0} entries/s  ({:.2} s; {} messages delivered; CPU s: fanouts {:.2}, redis {:.2}, subscriber {:.2}; machine {:.0}% busy)",
            run.replicas,
            args.entries as f64 / run.seconds,
            run.seconds,
            run.delivered,
            run.fanout_cpu,
            run.redis_cpu,
            run.reader_cpu,
            100.0 * (run.fanout_cpu + run.redis_cpu + run.reader_cpu)
                / (run.seconds
                    * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64))
        )?;
        runs.push(run);
    }
    if let Some(base) = runs.first() {
        for run in &runs[1..] {
            writeln!(
                out,
                "  {} replica(s) vs {}: {:.2}x",
                run.replicas,
                base.replicas,
                base.seconds / run.seconds
            )?;
        }
    }
    Ok(())
}
