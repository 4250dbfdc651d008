//! The scenarios: each starts a cluster, ramps its clients up, measures, stops everything and
//! returns its figures.

use std::{net::IpAddr, time::Duration};

use anyhow::bail;
use serde::Serialize;
use tokio::time::Instant;

use crate::{
    Target,
    cli::{IdleArgs, LoadArgs, SteppedArgs, StormArgs},
    cluster::{Cluster, Role, Worker, Workers},
    publish::Publisher,
    report::{Latency, Snapshot, Usage},
    worker::{Command, Reply, Status, WorkerSpec, decode_histogram, histogram},
};

/// How the clients came up.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ramp {
    pub(crate) clients: u64,
    pub(crate) connected: u64,
    pub(crate) failed: u64,
    pub(crate) seconds: f64,
    /// Connections per second while ramping.
    pub(crate) rate: f64,
    /// From TCP connect to joined (or namespace-connected), per client.
    pub(crate) connect: Latency,
    pub(crate) workers: usize,
    pub(crate) source_addresses: usize,
}

/// Sums the counters of every worker.
fn total(replies: &[Reply]) -> Status {
    let mut t = Status::default();
    for r in replies {
        let s = &r.status;
        t.connected += s.connected;
        t.failed += s.failed;
        t.lost += s.lost;
        t.pings += s.pings;
        t.received += s.received;
        t.stale += s.stale;
        t.duplicates += s.duplicates;
        t.gaps += s.gaps;
        t.recovered += s.recovered;
        t.not_recovered += s.not_recovered;
        t.reconnect_failed += s.reconnect_failed;
        t.reconnecting += s.reconnecting;
        t.rss_kib += s.rss_kib;
    }
    t
}

/// Merges one histogram field of every reply.
fn merged(replies: &[Reply], field: fn(&Reply) -> Option<&String>) -> anyhow::Result<Latency> {
    let mut h = histogram();
    for r in replies {
        if let Some(text) = field(r) {
            h.add(decode_histogram(text)?)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
    }
    Ok(Latency::of(&h))
}

/// Starts the load generators and waits until every client is connected (or failed).
pub(crate) async fn ramp(
    cluster: &Cluster,
    load: &LoadArgs,
    rooms: u64,
) -> anyhow::Result<(Workers, Ramp)> {
    let processes = if load.workers == 0 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (load.clients.div_ceil(15_000) as usize).max(cpus.min(load.clients as usize).max(1))
    } else {
        load.workers
    };
    let sources = if load.source_addresses == 0 {
        load.clients.div_ceil(20_000).clamp(1, 250) as u8
    } else {
        load.source_addresses
    };
    // One address: no bind at all, so the kernel picks ports per destination (and reuses
    // TIME_WAIT ones); several: each connection binds its address.
    let source_ips: Vec<IpAddr> = if sources <= 1 {
        Vec::new()
    } else {
        (1..=sources)
            .map(|i| IpAddr::from([127, 0, 0, i]))
            .collect()
    };
    let mut workers = Vec::new();
    let per = load.clients.div_ceil(processes as u64);
    let started = Instant::now();
    for id in 0..processes {
        let first = id as u64 * per;
        let count = per.min(load.clients.saturating_sub(first));
        if count == 0 {
            break;
        }
        let spec = WorkerSpec {
            id,
            targets: cluster.endpoints.clone(),
            sources: source_ips.clone(),
            path: "/socket.io/".into(),
            first,
            count,
            rooms,
            concurrency: load.connect_concurrency,
            read_buffer: load.client_read_buffer,
            threads: load.worker_threads,
        };
        workers.push(Worker::spawn(&spec, &cluster.log_dir)?);
    }
    let mut workers = Workers(workers);
    let mut last_progress = (0, Instant::now());
    let status = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let status = total(&workers.ask(&Command::Status).await?);
        let settled = status.connected + status.failed;
        if settled >= load.clients {
            break status;
        }
        if settled != last_progress.0 {
            last_progress = (settled, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(60) {
            bail!(
                "ramp stalled at {} connected, {} failed of {} (see the logs in {})",
                status.connected,
                status.failed,
                load.clients,
                cluster.log_dir.display()
            );
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let replies = workers.ask(&Command::Report).await?;
    let connect = merged(&replies, |r| r.connect.as_ref())?;
    Ok((
        workers,
        Ramp {
            clients: load.clients,
            connected: status.connected,
            failed: status.failed,
            seconds,
            rate: status.connected as f64 / seconds,
            connect,
            workers: processes,
            source_addresses: source_ips.len().max(1),
        },
    ))
}

/// Clients per room when `clients` are spread `i % rooms`.
fn members(clients: u64, rooms: u64) -> Vec<u64> {
    (0..rooms)
        .map(|r| clients / rooms + u64::from(r < clients % rooms))
        .collect()
}

// ---------------------------------------------------------------- idle

#[derive(Debug, Clone, Serialize)]
pub(crate) struct IdleResult {
    pub(crate) target: Target,
    pub(crate) ramp: Ramp,
    /// Server memory growth per connection, KiB: the servers holding the connections
    /// (gateways or Node processes), and Redis.
    pub(crate) kib_per_connection: f64,
    pub(crate) redis_kib_per_connection: f64,
    /// Fanout replicas (they hold no connections; for completeness).
    pub(crate) fanout_kib_per_connection: f64,
    pub(crate) loadgen_kib_per_connection: f64,
    pub(crate) hold_secs: u64,
    /// Pings the clients answered while held, and connections lost meanwhile.
    pub(crate) pings: u64,
    pub(crate) lost: u64,
    pub(crate) still_connected: u64,
    /// CPU while idle (pings only).
    pub(crate) usage: Usage,
}

pub(crate) async fn idle(target: Target, args: &IdleArgs) -> anyhow::Result<IdleResult> {
    let cluster = Cluster::start(target, &args.cluster).await?;
    let result = idle_on(&cluster, args).await;
    cluster.stop().await;
    result
}

async fn idle_on(cluster: &Cluster, args: &IdleArgs) -> anyhow::Result<IdleResult> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cluster.samples();
    let (mut workers, ramp) = ramp(cluster, &args.load, args.rooms).await?;
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let after = cluster.samples();
    let growth = |roles: &[Role]| {
        let kib: f64 = after
            .iter()
            .zip(&before)
            .filter(|((r, _, _), _)| roles.contains(r))
            .map(|((_, _, a), (_, _, b))| a.rss_kib as f64 - b.rss_kib as f64)
            .sum();
        kib / ramp.connected.max(1) as f64
    };
    let hold_start = total(&workers.ask(&Command::Status).await?);
    let snap = Snapshot::take(cluster, workers.samples());
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let hold_end = total(&workers.ask(&Command::Status).await?);
    let usage = snap.usage(&Snapshot::take(cluster, workers.samples()));
    let loadgen_kib = hold_end.rss_kib as f64 / ramp.connected.max(1) as f64;
    workers.stop().await;
    Ok(IdleResult {
        target: cluster.target,
        kib_per_connection: growth(&[Role::Gateway, Role::Node]),
        redis_kib_per_connection: growth(&[Role::Redis]),
        fanout_kib_per_connection: growth(&[Role::Fanout]),
        loadgen_kib_per_connection: loadgen_kib,
        ramp,
        hold_secs: args.hold_secs,
        pings: hold_end.pings - hold_start.pings,
        lost: hold_end.lost - hold_start.lost,
        still_connected: hold_end.connected,
        usage,
    })
}

// ---------------------------------------------------------------- stepped rates

/// One rate step.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Step {
    /// Delivered events per second asked for.
    pub(crate) target_rate: f64,
    /// Events published per second (each reaches one room).
    pub(crate) published_per_sec: f64,
    /// Events received per second of publishing.
    pub(crate) delivered_per_sec: f64,
    pub(crate) expected: u64,
    pub(crate) received: u64,
    /// received / expected.
    pub(crate) completeness: f64,
    pub(crate) duplicates: u64,
    pub(crate) gaps: u64,
    pub(crate) publish_errors: u64,
    pub(crate) latency: Latency,
    pub(crate) usage: Usage,
    /// Server CPU (Redis included) per delivered event, µs.
    pub(crate) server_cpu_us_per_event: f64,
    pub(crate) pass: bool,
    /// Why it failed.
    pub(crate) verdict: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SteppedResult {
    pub(crate) target: Target,
    pub(crate) clients: u64,
    pub(crate) rooms: u64,
    pub(crate) ramp: Ramp,
    pub(crate) steps: Vec<Step>,
    /// The highest delivered rate of a passing step.
    pub(crate) max_sustainable: Option<f64>,
    /// The step at half of it.
    pub(crate) half: Option<Step>,
}

pub(crate) async fn stepped(
    target: Target,
    args: &SteppedArgs,
    rooms: u64,
) -> anyhow::Result<SteppedResult> {
    let cluster = Cluster::start(target, &args.cluster).await?;
    let result = stepped_on(&cluster, args, rooms).await;
    cluster.stop().await;
    result
}

struct Stepper<'a> {
    cluster: &'a Cluster,
    workers: Workers,
    publisher: Publisher,
    members: Vec<u64>,
    clients_per_room: f64,
    step: u64,
    duration: Duration,
    drain: Duration,
}

impl Stepper<'_> {
    /// Publishes at `rate` delivered events/s for one step and measures it.
    async fn measure(&mut self, rate: f64, p99_limit_ms: f64) -> anyhow::Result<Step> {
        self.step += 1;
        self.workers.ask(&Command::Step { step: self.step }).await?;
        let before = Snapshot::take(self.cluster, self.workers.samples());
        let msgs_rate = rate / self.clients_per_room;
        let published = self
            .publisher
            .run(msgs_rate, self.duration, self.step)
            .await?;
        let expected: u64 = published
            .per_room
            .iter()
            .zip(&self.members)
            .map(|(p, m)| p * m)
            .sum();
        let until = Instant::now() + self.drain;
        loop {
            let status = total(&self.workers.ask(&Command::Status).await?);
            if status.received >= expected || Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let usage = before.usage(&Snapshot::take(self.cluster, self.workers.samples()));
        let replies = self.workers.ask(&Command::Report).await?;
        let status = total(&replies);
        let latency = merged(&replies, |r| r.latency.as_ref())?;
        let completeness = if expected == 0 {
            1.0
        } else {
            status.received as f64 / expected as f64
        };
        let achieved = published.total as f64 / published.seconds.max(1e-9);
        let mut verdict = Vec::new();
        if status.received < expected {
            verdict.push(format!("{} of {expected} delivered", status.received));
        }
        if status.duplicates > 0 || status.gaps > 0 {
            verdict.push(format!(
                "{} duplicates, {} gaps",
                status.duplicates, status.gaps
            ));
        }
        if latency.p99_ms > p99_limit_ms {
            verdict.push(format!("p99 {:.1} ms > {p99_limit_ms} ms", latency.p99_ms));
        }
        if published.errors > 0 {
            verdict.push(format!("{} publish errors", published.errors));
        }
        if achieved < 0.95 * msgs_rate {
            verdict.push(format!(
                "publisher reached {achieved:.0}/s of {msgs_rate:.0}/s"
            ));
        }
        Ok(Step {
            target_rate: rate,
            published_per_sec: achieved,
            delivered_per_sec: status.received as f64 / published.seconds.max(1e-9),
            expected,
            received: status.received,
            completeness,
            duplicates: status.duplicates,
            gaps: status.gaps,
            publish_errors: published.errors,
            latency,
            server_cpu_us_per_event: usage.server_us_per(status.received),
            usage,
            pass: verdict.is_empty(),
            verdict: if verdict.is_empty() {
                "pass".into()
            } else {
                verdict.join("; ")
            },
        })
    }
}

async fn stepped_on(
    cluster: &Cluster,
    args: &SteppedArgs,
    rooms: u64,
) -> anyhow::Result<SteppedResult> {
    let (workers, ramp) = ramp(cluster, &args.load, rooms).await?;
    if ramp.failed > 0 {
        eprintln!(
            "{}: {} of {} clients could not connect; they count as undelivered",
            cluster.target.label(),
            ramp.failed,
            ramp.clients
        );
    }
    let publisher = Publisher::new(cluster.target, &cluster.redis_url, rooms, args.payload).await?;
    let members = members(args.load.clients, rooms);
    let mut s = Stepper {
        cluster,
        workers,
        publisher,
        clients_per_room: args.load.clients as f64 / rooms as f64,
        members,
        step: 0,
        duration: Duration::from_secs(args.step_secs),
        drain: Duration::from_secs(args.drain_secs),
    };
    let quiet = args.cluster.json;
    // Warm-up (JIT, connection pools), not reported.
    s.duration = Duration::from_secs(args.warmup_secs);
    let warm = s.measure(args.start_rate / 4.0, args.p99_limit_ms).await?;
    s.duration = Duration::from_secs(args.step_secs);
    if !quiet {
        eprintln!(
            "{}: warm-up at {:.0}/s: {}",
            cluster.target.label(),
            warm.target_rate,
            warm.verdict
        );
    }
    let mut steps: Vec<Step> = Vec::new();
    let mut rate = args.start_rate;
    let mut best: Option<f64> = None;
    let mut failed_at: Option<f64> = None;
    while rate <= args.max_rate {
        let step = s.measure(rate, args.p99_limit_ms).await?;
        progress(quiet, cluster.target, &step);
        let pass = step.pass;
        if pass {
            best = Some(best.map_or(step.delivered_per_sec, |b: f64| {
                b.max(step.delivered_per_sec)
            }));
        }
        steps.push(step);
        if !pass {
            failed_at = Some(rate);
            break;
        }
        rate *= args.factor;
    }
    // Narrow down between the last passing and the first failing rate.
    if let Some(mut high) = failed_at {
        let mut low = steps
            .iter()
            .filter(|s| s.pass)
            .map(|s| s.target_rate)
            .fold(0.0, f64::max);
        for _ in 0..args.refine {
            if low == 0.0 {
                break;
            }
            let mid = (low + high) / 2.0;
            let step = s.measure(mid, args.p99_limit_ms).await?;
            progress(quiet, cluster.target, &step);
            if step.pass {
                low = mid;
                best = Some(best.map_or(step.delivered_per_sec, |b: f64| {
                    b.max(step.delivered_per_sec)
                }));
            } else {
                high = mid;
            }
            steps.push(step);
        }
    }
    let half = match best {
        Some(b) if args.half_step => {
            let step = s.measure(b / 2.0, args.p99_limit_ms).await?;
            if !quiet {
                eprintln!(
                    "{}: half of the best ({:.0}/s): p99 {:.1} ms",
                    cluster.target.label(),
                    b / 2.0,
                    step.latency.p99_ms
                );
            }
            Some(step)
        }
        _ => None,
    };
    s.workers.stop().await;
    Ok(SteppedResult {
        target: cluster.target,
        clients: args.load.clients,
        rooms,
        ramp,
        steps,
        max_sustainable: best,
        half,
    })
}

fn progress(quiet: bool, target: Target, step: &Step) {
    if !quiet {
        eprintln!(
            "{}: {:>9.0}/s asked, {:>9.0}/s delivered, p50 {:.1} ms p99 {:.1} ms max {:.1} ms, {:.4} complete; {}; {}",
            target.label(),
            step.target_rate,
            step.delivered_per_sec,
            step.latency.p50_ms,
            step.latency.p99_ms,
            step.latency.max_ms,
            step.completeness,
            step.usage.cpu_summary(),
            step.verdict
        );
    }
}

// ---------------------------------------------------------------- recovery storm

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StormResult {
    pub(crate) target: Target,
    pub(crate) ramp: Ramp,
    pub(crate) rate: f64,
    pub(crate) dropped: u64,
    pub(crate) recovered: u64,
    pub(crate) not_recovered: u64,
    pub(crate) reconnect_failed: u64,
    /// From the drop to the CONNECT reply (replay included), per dropped client.
    pub(crate) recovery: Latency,
    /// Seconds until the last dropped client was back.
    pub(crate) all_back_secs: f64,
    pub(crate) expected: u64,
    pub(crate) received: u64,
    pub(crate) completeness: f64,
    pub(crate) duplicates: u64,
    pub(crate) gaps: u64,
    /// Publish→receive latency over the whole run (replayed events included).
    pub(crate) latency: Latency,
    /// The same for the clients that were never dropped: live delivery during the storm.
    pub(crate) steady_latency: Latency,
    pub(crate) usage: Usage,
}

pub(crate) async fn storm(target: Target, args: &StormArgs) -> anyhow::Result<StormResult> {
    let cluster = Cluster::start(target, &args.cluster).await?;
    let result = storm_on(&cluster, args).await;
    cluster.stop().await;
    result
}

async fn storm_on(cluster: &Cluster, args: &StormArgs) -> anyhow::Result<StormResult> {
    let (mut workers, ramp) = ramp(cluster, &args.load, args.rooms).await?;
    let mut publisher =
        Publisher::new(cluster.target, &cluster.redis_url, args.rooms, args.payload).await?;
    let members = members(args.load.clients, args.rooms);
    let msgs_rate = args.rate / (args.load.clients as f64 / args.rooms as f64);
    if args.warmup_secs > 0 {
        publisher
            .run(msgs_rate, Duration::from_secs(args.warmup_secs), 0)
            .await?;
    }
    workers.ask(&Command::Step { step: 1 }).await?;
    let before = Snapshot::take(cluster, workers.samples());
    let duration = Duration::from_secs(args.before_secs + args.after_secs);
    let publishing =
        tokio::spawn(async move { (publisher.run(msgs_rate, duration, 1).await, publisher) });
    tokio::time::sleep(Duration::from_secs(args.before_secs)).await;
    workers
        .ask(&Command::Drop {
            fraction: args.drop,
        })
        .await?;
    let dropped_at = Instant::now();
    // Every dropped client back (or given up).
    let all_back_secs = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let status = total(&workers.ask(&Command::Status).await?);
        if status.reconnecting == 0 {
            break dropped_at.elapsed().as_secs_f64();
        }
        if dropped_at.elapsed() > Duration::from_secs(120) {
            break f64::NAN;
        }
    };
    let (published, _publisher) = publishing.await?;
    let published = published?;
    let expected: u64 = published
        .per_room
        .iter()
        .zip(&members)
        .map(|(p, m)| p * m)
        .sum();
    let until = Instant::now() + Duration::from_secs(args.drain_secs);
    loop {
        let status = total(&workers.ask(&Command::Status).await?);
        if status.received >= expected || Instant::now() > until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let usage = before.usage(&Snapshot::take(cluster, workers.samples()));
    let replies = workers.ask(&Command::Report).await?;
    let status = total(&replies);
    let recovery = merged(&replies, |r| r.recover.as_ref())?;
    let latency = merged(&replies, |r| r.latency.as_ref())?;
    let steady_latency = merged(&replies, |r| r.steady.as_ref())?;
    workers.stop().await;
    Ok(StormResult {
        target: cluster.target,
        ramp,
        rate: args.rate,
        dropped: status.recovered + status.not_recovered + status.reconnect_failed,
        recovered: status.recovered,
        not_recovered: status.not_recovered,
        reconnect_failed: status.reconnect_failed,
        recovery,
        all_back_secs,
        expected,
        received: status.received,
        completeness: if expected == 0 {
            1.0
        } else {
            status.received as f64 / expected as f64
        },
        duplicates: status.duplicates,
        gaps: status.gaps,
        latency,
        steady_latency,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_spread_like_the_workers_assign_rooms() {
        assert_eq!(members(10, 3), vec![4, 3, 3]);
        assert_eq!(members(4, 4), vec![1, 1, 1, 1]);
        let m = members(10_000, 7);
        assert_eq!(m.iter().sum::<u64>(), 10_000);
    }
}
