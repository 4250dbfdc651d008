//! Fanout throughput: a fresh `redis-server` per run, `rooms` rooms held by a stand-in gateway
//! (a member count in `:members` and one subscriber connection that reads every message),
//! `entries` publish requests written to a side stream, the fanout processes started and left to
//! share the partitions, then the side stream renamed into the publish stream in one step and the
//! clock running until every partition's cursor has passed the last entry. Used by
//! `roomcast-bench-fanout` (scripts/bench-fanout.sh) and `roomcast-bench run fanout-throughput`.
//! Not a test.

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use roomcast_shared::wire::{KeySpace, StreamId};

use crate::RedisServer;

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutBenchArgs {
    /// Publish requests per run.
    #[arg(long, default_value = "100000")]
    pub entries: usize,
    /// Rooms the requests go to (round-robin), all held by the stand-in gateway.
    #[arg(long, default_value = "200")]
    pub rooms: usize,
    /// Replica counts to measure, comma-separated.
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    pub replicas: Vec<usize>,
    /// Payload bytes per event (`data`).
    #[arg(long, default_value = "100")]
    pub payload: usize,
    /// FANOUT_PARTITIONS.
    #[arg(long, default_value = "16")]
    pub partitions: u16,
    /// FANOUT_BATCH_SIZE.
    #[arg(long, default_value = "500")]
    pub batch_size: usize,
    /// The fanout binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/roomcast-fanout")]
    pub fanout_bin: String,
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Run {
    pub replicas: usize,
    pub seconds: f64,
    pub delivered: u64,
    pub fanout_cpu: f64,
    pub redis_cpu: f64,
    /// This process (the stand-in gateway reading every message).
    pub reader_cpu: f64,
}

/// Measures `args.entries` publish requests through `replicas` fanout processes.
pub async fn measure(args: &FanoutBenchArgs, replicas: usize) -> anyhow::Result<Run> {
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

fn spawn_fanout(args: &FanoutBenchArgs, url: &str, i: usize) -> anyhow::Result<Child> {
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

/// Polls `check` until it says yes, or fails after `limit` (benchmark set-up, not a test).
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
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
pub fn cpu_seconds(pid: u32) -> f64 {
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
pub async fn redis_cpu(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    Ok(info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_user" || *k == "used_cpu_sys")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum())
}
