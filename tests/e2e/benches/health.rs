//! How many instances the monitor health-checks at a 1 s interval on this machine without
//! missing an interval (the release binary, on the broker and PostgreSQL `scripts/bench`
//! starts). Prints, asserts nothing.
//!
//! Only the monitor runs. A stand-in deployer tells it about N instances as the deployer does:
//! signed `InstanceStarted` events on `slipway.instances`, each with an HTTP check every
//! 1000 ms. Every instance has an address of its own on loopback (`127.a.b.c`, one port), where
//! one stand-in server in this process answers each probe `200` over keep-alive and records,
//! per instance, when each probe came (the destination address says which instance it was).
//!
//! N is raised in steps (instances are added, never replaced). At each step, once every
//! instance has been probed and its `healthy` verdict written and relayed, three windows of
//! [`WINDOW`] are measured: probes received per second, the share of gaps between two probes
//! of one instance longer than 1.5 × the interval (a missed interval), the p99 and the longest
//! gap, the monitor's CPU (share of one core) and RSS, and the machine's busy share (other
//! work on it included). The medians of the windows are printed. A step stops the climb when a
//! tenth of its intervals were missed, and steps beyond the open-file limit are skipped (each
//! instance holds one connection, on both sides).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench reports failure by panicking

#[path = "common/procfs.rs"]
mod procfs;
#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use slipway_events::deploy::{HealthCheck, InstanceRef, InstanceStarted};
use slipway_events::slipway::sources;
use slipway_events::{CloudEvent, EventData};
use slipway_ids::{InstanceId, ServiceId};
use support::{Stack, StackOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STEPS: [usize; 6] = [1_000, 2_000, 5_000, 10_000, 15_000, 20_000];
const INTERVAL_MS: u32 = 1_000;
/// A gap between two probes of one instance longer than this missed an interval.
const MISSED_MS: u32 = INTERVAL_MS * 3 / 2;
const WINDOW: Duration = Duration::from_secs(10);
const WINDOWS: usize = 3;
/// Instances per stand-in service (as in 1,000 services × 10 instances).
const PER_SERVICE: usize = 10;

/// Instance `i`'s loopback address: `127.a.b.c`, each byte from 1 to 250 (no `.0`, no `.255`).
fn address_of(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).unwrap();
    let byte = |v: u32| u8::try_from(1 + v % 250).unwrap();
    Ipv4Addr::new(127, byte(i / 62_500), byte(i / 250), byte(i))
}

/// The inverse of [`address_of`].
fn instance_of(ip: IpAddr) -> Option<usize> {
    let IpAddr::V4(ip) = ip else { return None };
    let [127, a, b, c] = ip.octets() else {
        return None;
    };
    let part = |v: u8| (1..=250).contains(&v).then(|| usize::from(v) - 1);
    Some(part(a)? * 62_500 + part(b)? * 250 + part(c)?)
}

/// When each instance was probed, in ms since `epoch`; one lock per instance, so the server's
/// connections never wait on each other.
struct Seen {
    epoch: Instant,
    times: Vec<Mutex<Vec<u32>>>,
}

impl Seen {
    fn new(instances: usize) -> Self {
        Self {
            epoch: Instant::now(),
            times: (0..instances).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    fn now_ms(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_millis()).unwrap()
    }

    fn record(&self, instance: usize) {
        let now = self.now_ms();
        if let Some(times) = self.times.get(instance) {
            times.lock().unwrap().push(now);
        }
    }

    /// How many of the first `n` instances were probed at least once.
    fn probed(&self, n: usize) -> usize {
        self.times[..n]
            .iter()
            .filter(|t| !t.lock().unwrap().is_empty())
            .count()
    }
}

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok";

/// Accepts every instance's connections on `listener` (bound to all addresses, so every
/// `127.a.b.c` reaches it) and answers their probes.
async fn serve(listener: TcpListener, seen: Arc<Seen>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = answer(stream, &seen).await;
                });
            }
            // Out of file descriptors, most likely: wait rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Answers each request on one keep-alive connection (a probe is a GET without a body).
async fn answer(mut stream: TcpStream, seen: &Seen) -> std::io::Result<()> {
    let Some(instance) = instance_of(stream.local_addr()?.ip()) else {
        return Ok(());
    };
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            seen.record(instance);
            stream.write_all(ANSWER).await?;
            buf.copy_within(end + 4..filled, 0);
            filled -= end + 4;
        }
        if filled == buf.len() {
            return Ok(()); // not a probe
        }
    }
}

/// The instances `from..to` announced as started, at `port` of their addresses, from 64
/// publishers at once.
async fn announce(stack: &Stack, services: &[ServiceId], from: usize, to: usize, port: u16) {
    let mut settings = slipway_kafka::KafkaSettings::new(stack.kafka.clone());
    settings.topic_prefix = stack.topic("");
    let producer = slipway_testkit::signing::producer(&settings);
    let check = HealthCheck {
        interval_ms: INTERVAL_MS,
        timeout_ms: INTERVAL_MS,
        ..HealthCheck::default()
    };
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..64 {
        let (producer, check) = (producer.clone(), check.clone());
        let services = services.to_vec();
        tasks.spawn(async move {
            for i in (from + lane..to).step_by(64) {
                let service_id = services[i / PER_SERVICE];
                let data = InstanceStarted {
                    instance: InstanceRef {
                        instance_id: InstanceId::new(),
                        service_id,
                        service_name: format!("fleet-{}", i / PER_SERVICE),
                        environment: "production".to_owned(),
                        release: 1,
                    },
                    address: format!("{}:{port}", address_of(i)),
                    target: "process".to_owned(),
                    health_check: check.clone(),
                    restarts: 0,
                    at: Utc::now(),
                };
                let subject = Some(data.instance.instance_id.to_string());
                let event = CloudEvent::new(sources::DEPLOYER, service_id, subject, &data).unwrap();
                producer
                    .publish(InstanceStarted::TOPIC, &event)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// (busy, total) jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu[3] + cpu[4]; // idle + iowait
    (total - idle, total)
}

/// The soft limit on open files (each instance holds a connection on both sides).
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024)
}

/// What one window saw.
#[derive(Clone, Copy)]
struct Window {
    probes_per_s: f64,
    /// Gaps over [`MISSED_MS`] among all gaps, %.
    missed_pct: f64,
    missed: usize,
    p99_gap_ms: u32,
    max_gap_ms: u32,
    monitor_cpu_pct: f64,
    bench_cpu_pct: f64,
    machine_busy_pct: f64,
    monitor_rss_mib: f64,
}

/// The gaps of instances `..n` ending in `(t0, t1]`, and the probes received then. An instance
/// unprobed at `t1` for longer than [`MISSED_MS`] counts that gap too (as missed so far).
fn gaps(seen: &Seen, n: usize, t0: u32, t1: u32) -> (Vec<u32>, usize) {
    let mut gaps = Vec::new();
    let mut received = 0;
    for times in &seen.times[..n] {
        let times = times.lock().unwrap();
        let mut last: Option<u32> = None;
        for &t in times.iter().filter(|&&t| t <= t1) {
            if t > t0 {
                received += 1;
                if let Some(l) = last {
                    gaps.push(t - l);
                }
            }
            last = Some(t);
        }
        match last {
            Some(l) if t1 - l > MISSED_MS => gaps.push(t1 - l),
            None => gaps.push(t1 - t0),
            Some(_) => {}
        }
    }
    (gaps, received)
}

async fn measure(stack: &Stack, seen: &Seen, n: usize) -> Window {
    let pid = stack.pid("monitor");
    let (me, cpu0, machine0) = (
        std::process::id(),
        procfs::cpu_seconds(pid),
        machine_jiffies(),
    );
    let bench0 = procfs::cpu_seconds(me);
    let t0 = seen.now_ms();
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    let (t1, secs) = (seen.now_ms(), started.elapsed().as_secs_f64());
    let (cpu1, bench1, machine1) = (
        procfs::cpu_seconds(pid),
        procfs::cpu_seconds(me),
        machine_jiffies(),
    );
    let (mut gaps, received) = gaps(seen, n, t0, t1);
    gaps.sort_unstable();
    let missed = gaps.iter().filter(|&&g| g > MISSED_MS).count();
    let p99 = gaps[((gaps.len() - 1) as f64 * 0.99).round() as usize];
    Window {
        probes_per_s: received as f64 / secs,
        missed_pct: 100.0 * missed as f64 / gaps.len() as f64,
        missed,
        p99_gap_ms: p99,
        max_gap_ms: *gaps.last().unwrap(),
        monitor_cpu_pct: 100.0 * (cpu1 - cpu0) / secs,
        bench_cpu_pct: 100.0 * (bench1 - bench0) / secs,
        machine_busy_pct: 100.0 * (machine1.0 - machine0.0) as f64
            / (machine1.1 - machine0.1).max(1) as f64,
        monitor_rss_mib: stack.rss_kib("monitor") as f64 / 1024.0,
    }
}

fn median(windows: &[Window], f: impl Fn(&Window) -> f64) -> f64 {
    let mut v: Vec<f64> = windows.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Waits until `condition` holds, up to `limit`; says so and answers `false` otherwise.
async fn wait_for<F, Fut>(what: &str, limit: Duration, condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let ok = slipway_testkit::wait_until(limit, condition).await;
    if !ok {
        println!("(not {what} within {} s: no larger step)", limit.as_secs());
    }
    ok
}

async fn run() {
    let limit = open_file_limit();
    let steps: Vec<usize> = STEPS.into_iter().filter(|n| n + 1_000 <= limit).collect();
    let max = *steps.last().unwrap();
    let stack = Stack::start_with(StackOptions::default().only(&["monitor"])).await;
    let seen = Arc::new(Seen::new(max));
    let port = support::free_port();
    let listener = TcpListener::bind(("0.0.0.0", port)).await.unwrap();
    tokio::spawn(serve(listener, seen.clone()));
    let services: Vec<ServiceId> = (0..max.div_ceil(PER_SERVICE))
        .map(|_| ServiceId::new())
        .collect();

    println!(
        "health checks: HTTP GET every {INTERVAL_MS} ms per instance, missed = a gap over \
         {MISSED_MS} ms; median of {WINDOWS} windows of {} s per step (open-file limit {limit}{})",
        WINDOW.as_secs(),
        if steps.len() < STEPS.len() {
            format!(", so no step over {max}")
        } else {
            String::new()
        }
    );
    println!(
        "{:>7} {:>10} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "N",
        "probes/s",
        "missed %",
        "missed",
        "p99 gap",
        "max gap",
        "mon CPU",
        "mon RSS",
        "bench CPU",
        "machine"
    );
    let mut announced = 0;
    let mut best = None;
    for n in steps {
        let t = Instant::now();
        announce(&stack, &services, announced, n, port).await;
        announced = n;
        let seen_ref = &seen;
        let probed = wait_for(
            &format!("every one of {n} instances probed"),
            Duration::from_secs(300),
            || async move { seen_ref.probed(n) >= n },
        )
        .await;
        if !probed
            || !wait_for(
                &format!("{n} healthy verdicts written and relayed"),
                Duration::from_secs(600),
                || async {
                    stack.count("monitor.probes WHERE health = 'healthy'").await >= n as i64
                        && stack
                            .count("monitor.outbox WHERE published_at IS NULL")
                            .await
                            == 0
                },
            )
            .await
        {
            break;
        }
        let ready = t.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut windows = Vec::new();
        for _ in 0..WINDOWS {
            windows.push(measure(&stack, &seen, n).await);
        }
        let all_kept = windows.iter().all(|w| w.missed == 0);
        println!(
            "{n:>7} {:>10.0} {:>8.3}% {:>8.0} {:>6.0} ms {:>6.0} ms {:>8.1}% {:>5.0} MiB {:>8.1}% {:>7.0}%   (all probed and healthy {:.1} s after the announcements began)",
            median(&windows, |w| w.probes_per_s),
            median(&windows, |w| w.missed_pct),
            median(&windows, |w| w.missed as f64),
            median(&windows, |w| f64::from(w.p99_gap_ms)),
            median(&windows, |w| f64::from(w.max_gap_ms)),
            median(&windows, |w| w.monitor_cpu_pct),
            median(&windows, |w| w.monitor_rss_mib),
            median(&windows, |w| w.bench_cpu_pct),
            median(&windows, |w| w.machine_busy_pct),
            ready.as_secs_f64(),
        );
        if all_kept {
            best = Some(n);
        }
        if median(&windows, |w| w.missed_pct) > 10.0 {
            println!("(a tenth of the intervals missed at {n}: no larger step)");
            break;
        }
    }
    match best {
        Some(n) => println!(
            "largest N with no missed interval in any window: {n} instances at {INTERVAL_MS} ms"
        ),
        None => println!("every step missed intervals"),
    }
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
