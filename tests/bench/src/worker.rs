//! A load-generator process (`roomcast-bench worker`, started by the scenarios): holds its share
//! of the client connections, answers pings, records what arrives, and obeys the coordinator's
//! commands, one JSON line on stdin each, answering each with one JSON line on stdout.
//!
//! Several processes are used because open files are capped per process, and several loopback
//! source addresses because one source address has one ephemeral port range.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer as _, V2Serializer},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    sync::{Semaphore, watch},
};
use tokio_tungstenite::tungstenite::Message as Frame;

use crate::proto::{self, SocketIds, Ws};

/// What one worker does; given as JSON on its command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    pub(crate) id: usize,
    /// Servers; connection `i` goes to `targets[i % len]`.
    pub(crate) targets: Vec<SocketAddr>,
    /// Local addresses to connect from, in turn (empty: the kernel's choice).
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) path: String,
    /// Global indexes of this worker's connections: `first..first + count`.
    pub(crate) first: u64,
    pub(crate) count: u64,
    /// Connection `i` joins room `b<i % rooms>`; 0: no room.
    pub(crate) rooms: u64,
    /// Connections being set up at once.
    pub(crate) concurrency: usize,
    /// WebSocket read buffer per connection, bytes.
    pub(crate) read_buffer: usize,
    /// Tokio worker threads (1: a current-thread runtime).
    pub(crate) threads: usize,
}

/// A command from the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Counters only.
    Status,
    /// Counters and histograms.
    Report,
    /// Starts measurement step `step`: its counters and latency histogram start from zero;
    /// events stamped with another step count as stale.
    Step { step: u64 },
    /// Drops `fraction` of the connections at once (closed without a goodbye, like a lost
    /// network) and reconnects them with connection state recovery.
    Drop { fraction: f64 },
    /// Closes everything and exits.
    Stop,
}

/// Counters of a worker (the step's counters since the last `Step`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    /// Connections that ended without being asked to.
    pub(crate) lost: u64,
    pub(crate) pings: u64,
    pub(crate) received: u64,
    /// Events of another step (late arrivals of an earlier one).
    pub(crate) stale: u64,
    /// Events whose room sequence number was not above the previous one.
    pub(crate) duplicates: u64,
    /// Events that skipped sequence numbers (missed events before them).
    pub(crate) gaps: u64,
    pub(crate) recovered: u64,
    /// Reconnects that got a fresh session instead of the old one.
    pub(crate) not_recovered: u64,
    pub(crate) reconnect_failed: u64,
    /// Dropped connections not back yet.
    pub(crate) reconnecting: u64,
    /// Resident memory of this worker, KiB.
    pub(crate) rss_kib: u64,
}

/// A worker's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub(crate) status: Status,
    /// Base64 V2-serialized histograms, µs: publish→receive latency of this step, connect
    /// (TCP to joined) and recovery (drop to CONNECT reply) times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) latency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) connect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) recover: Option<String>,
    /// Publish→receive latency of the clients never dropped (live delivery only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) steady: Option<String>,
}

/// A histogram of µs from 1 µs to 10 min, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

pub(crate) fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Serializing into a Vec cannot fail for a valid histogram.
    let _ = V2Serializer::new().serialize(h, &mut bytes);
    BASE64.encode(bytes)
}

pub(crate) fn decode_histogram(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = BASE64.decode(text)?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))
}

/// µs since the Unix epoch (the publisher's stamps use the same clock).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

const SHARDS: usize = 16;

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    failed: AtomicU64,
    lost: AtomicU64,
    pings: AtomicU64,
    received: AtomicU64,
    stale: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    recovered: AtomicU64,
    not_recovered: AtomicU64,
    reconnect_failed: AtomicU64,
    reconnecting: AtomicU64,
}

struct Shared {
    spec: WorkerSpec,
    step: AtomicU64,
    counters: Counters,
    latency: Vec<Mutex<Histogram<u64>>>,
    /// As `latency`, for the clients never dropped.
    steady: Vec<Mutex<Histogram<u64>>>,
    connect: Mutex<Histogram<u64>>,
    recover: Mutex<Histogram<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the connections are told to do.
#[derive(Debug, Clone, Copy, Default)]
struct Order {
    /// Bumped on every drop command.
    drop_epoch: u64,
    /// Connections with `select(i) < drop_per_mille` drop in the current epoch.
    drop_per_mille: u64,
    stop: bool,
}

/// Runs a worker: builds its runtime and serves the coordinator until `Stop`.
pub(crate) fn main(spec: WorkerSpec) -> anyhow::Result<()> {
    let runtime = if spec.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(spec.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(spec))
}

async fn serve(spec: WorkerSpec) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        latency: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        steady: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        connect: Mutex::new(histogram()),
        recover: Mutex::new(histogram()),
        spec,
        step: AtomicU64::new(0),
        counters: Counters::default(),
    });
    let (orders, order_rx) = watch::channel(Order::default());
    let gate = Arc::new(Semaphore::new(shared.spec.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in shared.spec.first..shared.spec.first + shared.spec.count {
        tasks.spawn(connection(
            i,
            shared.clone(),
            order_rx.clone(),
            gate.clone(),
        ));
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = stdin.next_line().await? {
        let command: Command =
            serde_json::from_str(&line).with_context(|| format!("bad command {line}"))?;
        let mut reply = Reply {
            status: status(&shared),
            latency: None,
            connect: None,
            recover: None,
            steady: None,
        };
        match command {
            Command::Status => {}
            Command::Report => {
                reply.latency = Some(encode_histogram(&merge_shards(&shared.latency)));
                reply.steady = Some(encode_histogram(&merge_shards(&shared.steady)));
                reply.connect = Some(encode_histogram(&lock(&shared.connect)));
                reply.recover = Some(encode_histogram(&lock(&shared.recover)));
            }
            Command::Step { step } => {
                // Counters first, then the step: an event of the new step counts after zeroing.
                let c = &shared.counters;
                for counter in [&c.received, &c.stale, &c.duplicates, &c.gaps] {
                    counter.store(0, Ordering::Relaxed);
                }
                for shard in shared.latency.iter().chain(&shared.steady) {
                    lock(shard).reset();
                }
                shared.step.store(step, Ordering::Release);
                reply.status = status(&shared);
            }
            Command::Drop { fraction } => {
                let per_mille = (fraction.clamp(0.0, 1.0) * 1000.0).round() as u64;
                lock(&shared.recover).reset();
                for c in [
                    &shared.counters.recovered,
                    &shared.counters.not_recovered,
                    &shared.counters.reconnect_failed,
                ] {
                    c.store(0, Ordering::Relaxed);
                }
                orders.send_modify(|o| {
                    o.drop_epoch += 1;
                    o.drop_per_mille = per_mille;
                });
            }
            Command::Stop => {
                orders.send_modify(|o| o.stop = true);
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                reply.status = status(&shared);
                write_reply(&mut stdout, &reply).await?;
                return Ok(());
            }
        }
        write_reply(&mut stdout, &reply).await?;
    }
    Ok(())
}

fn merge_shards(shards: &[Mutex<Histogram<u64>>]) -> Histogram<u64> {
    let mut merged = histogram();
    for shard in shards {
        let _ = merged.add(&*lock(shard));
    }
    merged
}

async fn write_reply(out: &mut tokio::io::Stdout, reply: &Reply) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await?;
    Ok(())
}

fn status(shared: &Shared) -> Status {
    let c = &shared.counters;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Status {
        connected: get(&c.connected),
        failed: get(&c.failed),
        lost: get(&c.lost),
        pings: get(&c.pings),
        received: get(&c.received),
        stale: get(&c.stale),
        duplicates: get(&c.duplicates),
        gaps: get(&c.gaps),
        recovered: get(&c.recovered),
        not_recovered: get(&c.not_recovered),
        reconnect_failed: get(&c.reconnect_failed),
        reconnecting: get(&c.reconnecting),
        rss_kib: crate::procstat::sample(std::process::id()).rss_kib,
    }
}

/// Whether connection `i` is among the `per_mille` dropped in `epoch` (an even spread).
fn selected(i: u64, epoch: u64, per_mille: u64) -> bool {
    (i.wrapping_mul(7919)
        .wrapping_add(epoch.wrapping_mul(104_729)))
        % 1000
        < per_mille
}

/// One client's state between its events.
struct Client {
    index: u64,
    room: Option<String>,
    ids: SocketIds,
    last_seq: Option<u64>,
    offset: Option<String>,
    /// Dropped at least once: its events may be replays, not live deliveries.
    dropped: bool,
}

impl Client {
    /// Records an event (live or replayed).
    fn event(&mut self, shared: &Shared, text: &str) {
        let Some(stamp) = proto::stamp(text) else {
            return;
        };
        let c = &shared.counters;
        if let Some(offset) = stamp.offset {
            match &mut self.offset {
                Some(o) => {
                    o.clear();
                    o.push_str(offset);
                }
                None => self.offset = Some(offset.to_owned()),
            }
        }
        match self.last_seq {
            Some(last) if stamp.seq <= last => {
                c.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(last) if stamp.seq > last + 1 => {
                c.gaps.fetch_add(stamp.seq - last - 1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.last_seq = Some(stamp.seq);
        if stamp.step != shared.step.load(Ordering::Acquire) {
            c.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        c.received.fetch_add(1, Ordering::Relaxed);
        let latency = now_us().saturating_sub(stamp.sent_us).max(1);
        let shard = (self.index as usize) % SHARDS;
        lock(&shared.latency[shard]).saturating_record(latency);
        if !self.dropped {
            lock(&shared.steady[shard]).saturating_record(latency);
        }
    }
}

async fn connection(
    index: u64,
    shared: Arc<Shared>,
    mut orders: watch::Receiver<Order>,
    gate: Arc<Semaphore>,
) {
    let spec = &shared.spec;
    let target = spec.targets[(index as usize) % spec.targets.len()];
    let source = (!spec.sources.is_empty())
        .then(|| spec.sources[(index as usize / spec.targets.len()) % spec.sources.len()]);
    let mut client = Client {
        index,
        room: (spec.rooms > 0).then(|| format!("b{}", index % spec.rooms)),
        ids: SocketIds::default(),
        last_seq: None,
        offset: None,
        dropped: false,
    };
    let (opened, took) = {
        let Ok(_permit) = gate.acquire().await else {
            return;
        };
        // Timed from the permit: waiting for a turn is the load generator's pacing.
        let started = Instant::now();
        let opened = establish(&shared, &mut client, target, source, None).await;
        (opened, started.elapsed())
    };
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(error) => {
            if shared.counters.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                eprintln!("worker {}: connection {index}: {error:#}", spec.id);
            }
            return;
        }
    };
    lock(&shared.connect).saturating_record(took.as_micros() as u64);
    shared.counters.connected.fetch_add(1, Ordering::Relaxed);
    let mut seen_epoch = orders.borrow().drop_epoch;
    loop {
        tokio::select! {
            frame = ws.next() => match frame {
                Some(Ok(Frame::Text(text))) => {
                    if text.as_str() == "2" {
                        shared.counters.pings.fetch_add(1, Ordering::Relaxed);
                        if ws.send(Frame::text("3")).await.is_err() {
                            break;
                        }
                    } else if text.starts_with("42") {
                        client.event(&shared, text.as_str());
                    }
                }
                Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            changed = orders.changed() => {
                if changed.is_err() {
                    return;
                }
                let order = *orders.borrow_and_update();
                if order.stop {
                    shared.counters.connected.fetch_sub(1, Ordering::Relaxed);
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    return;
                }
                if order.drop_epoch != seen_epoch {
                    seen_epoch = order.drop_epoch;
                    if selected(index, seen_epoch, order.drop_per_mille) {
                        // Gone without a goodbye; back at once, asking for its session.
                        drop(ws);
                        client.dropped = true;
                        shared.counters.reconnecting.fetch_add(1, Ordering::Relaxed);
                        let dropped_at = Instant::now();
                        let result = establish(&shared, &mut client, target, source, Some(dropped_at)).await;
                        shared.counters.reconnecting.fetch_sub(1, Ordering::Relaxed);
                        match result {
                            Ok(new_ws) => ws = new_ws,
                            Err(error) => {
                                if shared.counters.reconnect_failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                    eprintln!("worker {}: reconnect {index}: {error:#}", spec.id);
                                }
                                shared.counters.connected.fetch_sub(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
    shared.counters.connected.fetch_sub(1, Ordering::Relaxed);
    shared.counters.lost.fetch_add(1, Ordering::Relaxed);
}

/// Opens a connection, connects the namespace (recovering the client's session when
/// `recovering_since` is set) and joins the client's room unless the session came back.
async fn establish(
    shared: &Shared,
    client: &mut Client,
    target: SocketAddr,
    source: Option<IpAddr>,
    recovering_since: Option<Instant>,
) -> anyhow::Result<Ws> {
    let spec = &shared.spec;
    let mut ws = proto::open(target, source, &spec.path, spec.read_buffer).await?;
    proto::expect_open(&mut ws).await?;
    let old = std::mem::take(&mut client.ids);
    let resume = match (&recovering_since, &old.pid) {
        (Some(_), Some(pid)) => Some((pid.clone(), client.offset.clone())),
        _ => None,
    };
    let mut replayed = Vec::new();
    let ids = proto::connect_namespace(
        &mut ws,
        resume.as_ref().map(|(p, o)| (p.as_str(), o.as_deref())),
        |text| replayed.push(text.to_owned()),
    )
    .await?;
    for text in &replayed {
        client.event(shared, text);
    }
    let recovered = recovering_since.is_some() && ids.sid == old.sid;
    if let Some(since) = recovering_since {
        lock(&shared.recover).saturating_record(since.elapsed().as_micros() as u64);
        if recovered {
            shared.counters.recovered.fetch_add(1, Ordering::Relaxed);
        } else {
            shared
                .counters
                .not_recovered
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    client.ids = ids;
    if !recovered && let Some(room) = &client.room {
        let mut early = Vec::new();
        proto::join(&mut ws, room, |text| early.push(text.to_owned())).await?;
        for text in &early {
            client.event(shared, text);
        }
    }
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_selection_is_close_to_the_fraction() {
        let chosen = (0..10_000).filter(|&i| selected(i, 1, 100)).count();
        assert!((900..=1100).contains(&chosen), "{chosen}");
        assert_eq!((0..1000).filter(|&i| selected(i, 3, 0)).count(), 0);
    }

    #[test]
    fn histograms_survive_the_round_trip() {
        let mut h = histogram();
        h.saturating_record(1234);
        h.saturating_record(99);
        let back = decode_histogram(&encode_histogram(&h)).expect("decodes");
        assert_eq!(back.len(), 2);
        assert_eq!(back.max(), h.max());
    }
}
