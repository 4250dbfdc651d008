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

use std::{
    io::Write as _,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::StreamExt as _;
use roomcast_shared::wire::{KeySpace, StreamId};
use roomcast_tests::RedisServer;

/// Fanout throughput with 1, 2 and 3 replicas.
#[derive(Debug, Parser)]
struct Args {
    /// Publish requests per run.
    #[arg(long, default_value = "100000")]
    entries: usize,
    /// Rooms the requests go to (round-robin), all held by the stand-in gateway.
    #[arg(long, default_value = "200")]
    rooms: usize,
    /// Replica counts to measure, comma-separated.
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    replicas: Vec<usize>,
    /// Payload bytes per event (`data`).
    #[arg(long, default_value = "100")]
    payload: usize,
    /// FANOUT_PARTITIONS.
    #[arg(long, default_value = "16")]
    partitions: u16,
    /// FANOUT_BATCH_SIZE.
    #[arg(long, default_value = "500")]
    batch_size: usize,
    /// The fanout binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/roomcast-fanout")]
    fanout_bin: String,
}

struct Run {
    replicas: usize,
    seconds: f64,
    delivered: u64,
    fanout_cpu: f64,
    redis_cpu: f64,
    /// This process (the stand-in gateway reading every message).
    reader_cpu: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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

async fn measure(args: &Args, replicas: usize) -> anyhow::Result<Run> {
    let redis = RedisServer::spawn().await?;
    let mut conn = redis.connection().await?;
    let keys = KeySpace::new("socket.io");
    let rooms: Vec<String> = (0..args.rooms).map(|i| format!("bench-{i}")).collect();

    // The stand-in gateway: holds every room and reads every message.
    let (mut sink, mut messages) = redis.client().get_async_pubsub().await?.split();
    let delivered = Arc::new(AtomicU64::new(0));
    let mut hold = redis::pipe();
    for room in &rooms {
        let topic = keys.room("/", room);
        sink.subscribe(topic.channel()).await?;
        hold.cmd("HSET")
            .arg(topic.members_key())
            .arg("bench-gw")
            .arg(1)
            .ignore();
    }
    hold.query_async::<()>(&mut conn).await?;
    let reader = {
        let delivered = delivered.clone();
        tokio::spawn(async move {
            while messages.next().await.is_some() {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // The backlog, in a side stream until the clock starts.
    let side = "socket.io:bench-backlog";
    let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(args.payload));
    let mut last = String::new();
    for chunk_start in (0..args.entries).step_by(1000) {
        let mut pipe = redis::pipe();
        for n in chunk_start..(chunk_start + 1000).min(args.entries) {
            pipe.cmd("XADD")
                .arg(side)
                .arg("*")
                .arg("room")
                .arg(&rooms[n % rooms.len()])
                .arg("event")
                .arg("tick")
                .arg("data")
                .arg(&data);
        }
        let ids: Vec<String> = pipe.query_async(&mut conn).await?;
        last = ids.last().cloned().unwrap_or_default();
    }
    let last = StreamId::parse(&last).context("last entry id")?;

    let mut fanouts = Vec::new();
    for i in 0..replicas {
        fanouts.push(spawn_fanout(args, &redis.url(), i)?);
    }
    let result = async {
        wait_until("partitions shared", Duration::from_secs(60), || {
            let mut conn = conn.clone();
            let keys = keys.clone();
            async move { shared(&mut conn, &keys, args.partitions, replicas).await }
        })
        .await?;
        let fanout_cpu_before: f64 = fanouts.iter().map(|c| cpu_seconds(c.id())).sum();
        let redis_cpu_before = redis_cpu(&mut conn).await?;
        let reader_cpu_before = cpu_seconds(std::process::id());

        let started = Instant::now();
        redis::cmd("RENAME")
            .arg(side)
            .arg(keys.publish_stream())
            .query_async::<()>(&mut conn)
            .await?;
        wait_until("every partition done", Duration::from_secs(600), || {
            let mut conn = conn.clone();
            let keys = keys.clone();
            async move { done(&mut conn, &keys, args.partitions, last).await }
        })
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        let fanout_cpu: f64 =
            fanouts.iter().map(|c| cpu_seconds(c.id())).sum::<f64>() - fanout_cpu_before;
        let redis_cpu = redis_cpu(&mut conn).await? - redis_cpu_before;
        let reader_cpu = cpu_seconds(std::process::id()) - reader_cpu_before;
        // Let the last messages reach the subscriber.
        let expected = args.entries as u64;
        let _ = wait_until("messages delivered", Duration::from_secs(30), || {
            let delivered = delivered.clone();
            async move { Ok(delivered.load(Ordering::Relaxed) >= expected) }
        })
        .await;
        Ok::<_, anyhow::Error>(Run {
            replicas,
            seconds,
            delivered: delivered.load(Ordering::Relaxed),
            fanout_cpu,
            redis_cpu,
            reader_cpu,
        })
    }
    .await;
    for child in &mut fanouts {
        let _ = child.kill();
        let _ = child.wait();
    }
    reader.abort();
    result
}

fn spawn_fanout(args: &Args, url: &str, i: usize) -> anyhow::Result<Child> {
    let admin = std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?;
    Command::new(&args.fanout_bin)
        .env_clear()
        .env("REDIS_URL", url)
        .env("ADMIN_ADDR", admin.to_string())
        .env("FANOUT_REPLICA_ID", format!("bench-{i}"))
        .env("FANOUT_PARTITIONS", args.partitions.to_string())
        .env("FANOUT_BATCH_SIZE", args.batch_size.to_string())
        .env("FANOUT_BLOCK_MS", "100")
        .env("FANOUT_LEASE_RENEW_MS", "200")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", args.fanout_bin))
}

/// Every partition leased, by `replicas` owners, none above its fair share.
async fn shared(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &KeySpace,
    partitions: u16,
    replicas: usize,
) -> anyhow::Result<bool> {
    let mut pipe = redis::pipe();
    for p in 0..partitions {
        pipe.cmd("GET").arg(keys.partition(p, partitions).lease());
    }
    let owners: Vec<Option<String>> = pipe.query_async(conn).await?;
    let Some(owners) = owners.into_iter().collect::<Option<Vec<_>>>() else {
        return Ok(false);
    };
    let share = usize::from(partitions).div_ceil(replicas);
    let mut counts = std::collections::HashMap::new();
    for o in owners {
        *counts.entry(o).or_insert(0_usize) += 1;
    }
    Ok(counts.len() == replicas.min(usize::from(partitions))
        && counts.values().all(|&n| n <= share))
}

async fn done(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &KeySpace,
    partitions: u16,
    last: StreamId,
) -> anyhow::Result<bool> {
    let mut pipe = redis::pipe();
    for p in 0..partitions {
        pipe.cmd("GET").arg(keys.partition(p, partitions).cursor());
    }
    let cursors: Vec<Option<String>> = pipe.query_async(conn).await?;
    Ok(cursors.iter().all(|c| {
        c.as_deref()
            .and_then(StreamId::parse)
            .is_some_and(|c| c >= last)
    }))
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let until = Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// User + system CPU seconds of a process (`/proc/<pid>/stat`, fields 14 and 15).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may contain spaces; fields after it start behind the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// Redis's own CPU seconds (`INFO cpu`: used_cpu_user + used_cpu_sys).
async fn redis_cpu(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    Ok(info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_user" || *k == "used_cpu_sys")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum())
}
