//! Many deployments at once on the process target (release binaries, the real broker and
//! PostgreSQL that `scripts/bench` starts). Prints, asserts nothing.
//!
//! One service (a trivial app: `tests/e2e/fixtures/trivial`, built once into release v1) and
//! one fresh environment per deployment, 1 instance each. For each size (default 10, 100 and
//! 1,000; `SLIPWAY_BENCH_DEPLOYS=10,100`), in rounds (3; `SLIPWAY_BENCH_DEPLOYS_ROUNDS`) that
//! alternate which side goes first:
//!
//! - platform: every `POST .../deployments` sent at once through the gateway's REST API, then
//!   until every deployment ended (each one's `finished_at` as the deployer recorded it; the
//!   bench reads the deployer's table rather than polling 1,000 deployments through the API,
//!   which would load the platform it measures). Per deployment: request sent → succeeded.
//! - direct (the peer): the same app started by hand as many times at once, each polled on its
//!   health path every 20 ms: spawn → first 200.
//!
//! The platform's overhead per deployment is the platform's p50 minus the direct p50 at the
//! same concurrency. The instances are then scaled to 0 (not timed). CPU seconds are the
//! services' own (`/proc/<pid>/stat`) during the timed part; RSS the deployer's peak, sampled.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench reports failure by panicking

#[path = "common/procfs.rs"]
mod procfs;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::Stack;
use support::deploy::SECRET;
use tokio::task::JoinSet;

/// Rounds per size (`SLIPWAY_BENCH_DEPLOYS_ROUNDS`, default 3): the medians are over these.
fn rounds() -> usize {
    std::env::var("SLIPWAY_BENCH_DEPLOYS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3)
}
/// The health check of every deployment: the monitor probes each new instance this often.
const PROBE_INTERVAL_MS: u64 = 200;
/// How often the direct peer polls each app it started.
const DIRECT_POLL: Duration = Duration::from_millis(20);

fn sizes() -> Vec<usize> {
    std::env::var("SLIPWAY_BENCH_DEPLOYS")
        .unwrap_or_else(|_| "10,100,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// The figures of one platform round.
struct PlatformRound {
    /// First request sent → last deployment finished (s).
    total: f64,
    /// Request sent → succeeded, per deployment (s), sorted.
    per: Vec<f64>,
    /// Medians of: sent → the deployer recorded it, recorded → started, started → finished.
    phases: [f64; 3],
    /// The first phase split, medians: sent → the gateway committed the command (its outbox
    /// row), committed → its relay published it, published → the deployer recorded it.
    accept: [f64; 3],
    succeeded: usize,
    others: HashMap<String, usize>,
    /// Why the others did not succeed: `status: step / check` → how many, and one message.
    reasons: HashMap<String, (usize, String)>,
    /// CPU seconds of each service during the round.
    cpu: HashMap<&'static str, f64>,
    deployer_peak_rss_mib: f64,
}

/// The figures of one direct round: total and per app (s), sorted.
struct DirectRound {
    total: f64,
    per: Vec<f64>,
}

/// `python3` as the process target finds it for instances: on its default `[process] path`
/// (a shell's own PATH may find a slower wrapper first, such as a version manager's shim).
fn instance_python() -> std::path::PathBuf {
    "/usr/local/bin:/usr/bin:/bin"
        .split(':')
        .map(|dir| Path::new(dir).join("python3"))
        .find(|p| p.exists())
        .unwrap_or_else(|| "python3".into())
}

async fn direct(n: usize, dir: &Path) -> DirectRound {
    let python = instance_python();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let first = Instant::now();
    let mut children = Vec::new();
    let mut waits = JoinSet::new();
    for _ in 0..n {
        let port = support::free_port();
        let started = Instant::now();
        let child = tokio::process::Command::new(&python)
            .args(["-S", "app.py"])
            .current_dir(dir)
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        children.push(child);
        let client = client.clone();
        waits.spawn(async move {
            let url = format!("http://127.0.0.1:{port}/healthz");
            loop {
                if let Ok(res) = client.get(&url).send().await
                    && res.status() == 200
                {
                    return (started.elapsed(), first.elapsed());
                }
                tokio::time::sleep(DIRECT_POLL).await;
            }
        });
    }
    let (mut per, mut total) = (Vec::new(), 0f64);
    while let Some(done) = waits.join_next().await {
        let (own, since_first) = done.unwrap();
        per.push(own.as_secs_f64());
        total = total.max(since_first.as_secs_f64());
    }
    for child in &mut children {
        let _ = child.kill().await;
    }
    per.sort_by(f64::total_cmp);
    DirectRound { total, per }
}

/// Creates `n` fresh environments on the process target; answers their names. A request the
/// platform answers "retry shortly" (503, 504), or its edge answers 502 because the API behind
/// it did not accept the connection in time under the burst, is retried up to 10 times a second apart, as a
/// client would: setting up is not what is measured, but how often it had to retry is printed.
async fn environments(stack: &Arc<Stack>, prefix: &str, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let retried = Arc::new(AtomicU64::new(0));
    let mut puts = JoinSet::new();
    for chunk in names.chunks(n.div_ceil(16).max(1)) {
        let (stack, chunk, retried) = (stack.clone(), chunk.to_vec(), retried.clone());
        puts.spawn(async move {
            for env in chunk {
                for attempt in 1.. {
                    let res = stack
                        .put(
                            &format!("/v1/services/hello/environments/{env}"),
                            json!({"target": "process"}),
                        )
                        .await;
                    let status = res.status();
                    if status.is_success() {
                        break;
                    }
                    let body = res.text().await.unwrap_or_default();
                    assert!(
                        matches!(status.as_u16(), 502..=504) && attempt < 10,
                        "{env}: {status} {body}"
                    );
                    retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        });
    }
    while let Some(r) = puts.join_next().await {
        r.unwrap();
    }
    let retried = retried.load(Ordering::Relaxed);
    if retried > 0 {
        println!("warning: creating {n} environments took {retried} retries after 502/503/504");
    }
    names
}

/// A deployment as the deployer recorded it: id, status, created, started, finished (seconds
/// since the epoch; the last two not yet set while it is queued or running), and its reason
/// (`step / check: message`) when it has one.
type Recorded = (
    String,
    String,
    f64,
    Option<f64>,
    Option<f64>,
    Option<String>,
);

/// One ended deployment: id, status, created, started, finished (seconds since the epoch),
/// reason.
type Ended = (String, String, f64, f64, f64, Option<String>);

/// Waits until every deployment of `ids` ended; answers (id, status, created, started,
/// finished, reason) with the times as seconds since the epoch.
async fn ended(stack: &Stack, ids: &[String]) -> Vec<Ended> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let rows: Vec<Recorded> = sqlx::query_as(
            "SELECT id::text, status, extract(epoch FROM created_at)::float8, \
             extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8, \
             (reason->>'step') || ' / ' || (reason->>'check') || ': ' || \
             left(reason->>'message', 200) \
             FROM deployer.deployments WHERE id::text = ANY($1)",
        )
        .bind(ids)
        .fetch_all(stack.db())
        .await
        .unwrap();
        let done = rows.iter().filter(|r| r.4.is_some()).count();
        if done == ids.len() {
            return rows
                .into_iter()
                .map(|(id, s, c, st, f, why)| (id, s, c, st.unwrap_or(c), f.unwrap_or(c), why))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {} deployments ended after 15 minutes ({} recorded)",
            ids.len(),
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends one request per environment at once (each on its own task and connection).
async fn request_all(
    stack: &Arc<Stack>,
    envs: &[String],
    body: Value,
) -> (f64, Vec<(String, f64)>) {
    let first = now_epoch();
    let mut posts = JoinSet::new();
    for env in envs {
        let (stack, env, body) = (stack.clone(), env.clone(), body.clone());
        posts.spawn(async move {
            let sent = now_epoch();
            let res = stack
                .post(
                    &format!("/v1/services/hello/environments/{env}/deployments"),
                    &stack.admin_token,
                    body,
                )
                .await;
            let status = res.status();
            let answer: Value = res.json().await.unwrap_or_default();
            match answer["id"].as_str() {
                Some(id) if status == 202 => Ok((id.to_owned(), sent)),
                _ => Err(format!("{env}: {status} {answer}")),
            }
        });
    }
    let mut sent = Vec::new();
    let mut refused = Vec::new();
    while let Some(r) = posts.join_next().await {
        match r.unwrap() {
            Ok(s) => sent.push(s),
            Err(why) => refused.push(why),
        }
    }
    // A refused request is a figure too (it is not retried): say how many, and one reason.
    if let Some(why) = refused.first() {
        println!(
            "warning: {} of {} deployment requests refused, e.g. {why}",
            refused.len(),
            envs.len()
        );
    }
    (first, sent)
}

async fn platform(stack: &Arc<Stack>, envs: &[String]) -> PlatformRound {
    let check = json!({"interval_ms": PROBE_INTERVAL_MS, "timeout_ms": 1000,
        "failure_threshold": 3, "grace_seconds": 60});
    let pids: Vec<(&'static str, u32)> = support::SERVICES
        .iter()
        .map(|s| (*s, stack.pid(s)))
        .collect();
    let before: HashMap<_, _> = pids
        .iter()
        .map(|(s, p)| (*s, procfs::cpu_seconds(*p)))
        .collect();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, stack) = (peak.clone(), stack.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(stack.rss_kib("deployer"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let body = json!({"release": 1, "replicas": 1, "health_check": check});
    let (first, sent) = request_all(stack, envs, body).await;
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    let rows = ended(stack, &ids).await;
    sampler.abort();
    let cpu = pids
        .iter()
        .map(|(s, p)| (*s, procfs::cpu_seconds(*p) - before[s]))
        .collect();

    let sent: HashMap<String, f64> = sent.into_iter().collect();
    let accept = accept_split(stack, &sent, &rows).await;
    let (mut per, mut phases) = (Vec::new(), [Vec::new(), Vec::new(), Vec::new()]);
    let (mut last, mut succeeded, mut others) = (first, 0, HashMap::new());
    let mut reasons: HashMap<String, (usize, String)> = HashMap::new();
    for (id, status, created, started, finished, why) in rows {
        last = last.max(finished);
        if status == "succeeded" {
            succeeded += 1;
            per.push(finished - sent[&id]);
            phases[0].push(created - sent[&id]);
            phases[1].push(started - created);
            phases[2].push(finished - started);
        } else {
            let why = why.unwrap_or_else(|| "no reason recorded".into());
            let (kind, message) = why.split_once(": ").unwrap_or((&why, ""));
            let entry = reasons
                .entry(format!("{status}: {kind}"))
                .or_insert_with(|| (0, message.to_owned()));
            entry.0 += 1;
            *others.entry(status).or_insert(0) += 1;
        }
    }
    per.sort_by(f64::total_cmp);
    PlatformRound {
        total: last - first,
        per,
        phases: phases.map(median),
        accept,
        succeeded,
        others,
        reasons,
        cpu,
        deployer_peak_rss_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
    }
}

/// Where the accepting of each command went, from the gateway's outbox rows (kept a week
/// after they are published): medians of sent → committed, → published, → recorded.
async fn accept_split(stack: &Stack, sent: &HashMap<String, f64>, rows: &[Ended]) -> [f64; 3] {
    let ids: Vec<String> = sent.keys().cloned().collect();
    let outbox: Vec<(String, f64, Option<f64>)> = sqlx::query_as(
        "SELECT data->>'deployment_id', extract(epoch FROM created_at)::float8, \
         extract(epoch FROM published_at)::float8 FROM gateway.outbox \
         WHERE data->>'deployment_id' = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(stack.db())
    .await
    .unwrap();
    let recorded: HashMap<&str, f64> = rows.iter().map(|r| (r.0.as_str(), r.2)).collect();
    let mut split = [Vec::new(), Vec::new(), Vec::new()];
    for (id, committed, published) in outbox {
        let (Some(sent), Some(published), Some(recorded)) =
            (sent.get(&id), published, recorded.get(id.as_str()))
        else {
            continue;
        };
        split[0].push(committed - sent);
        split[1].push(published - committed);
        split[2].push(recorded - published);
    }
    split.map(median)
}

/// Scales every environment back to 0 instances and waits for it (not timed).
async fn scale_down(stack: &Arc<Stack>, envs: &[String]) {
    let mut puts = JoinSet::new();
    for env in envs {
        let (stack, env) = (stack.clone(), env.clone());
        puts.spawn(async move {
            let res = stack
                .put(
                    &format!("/v1/services/hello/environments/{env}/scale"),
                    json!({"replicas": 0}),
                )
                .await;
            let answer: Value = res.json().await.unwrap_or_default();
            answer["id"].as_str().map(str::to_owned)
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = puts.join_next().await {
        ids.extend(r.unwrap());
    }
    ended(stack, &ids).await;
}

/// One size's figures: the medians over its rounds.
struct Row {
    n: usize,
    platform: Vec<PlatformRound>,
    direct: Vec<DirectRound>,
}

fn print_tables(rows: &[Row]) {
    let ms = |s: f64| s * 1000.0;
    println!();
    println!(
        "deployments at once, 1 instance each, process target (median of {} rounds; probes every {PROBE_INTERVAL_MS} ms)",
        rounds()
    );
    println!(
        "{:>6} {:>9} {:>10} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>10} {:>7}",
        "n",
        "ok",
        "all (s)",
        "deploys/s",
        "p50 ms",
        "p99 ms",
        "direct s",
        "p50 ms",
        "p99 ms",
        "overhd ms",
        "x total"
    );
    for row in rows {
        let p = &row.platform;
        let total = median(p.iter().map(|r| r.total).collect());
        let direct_total = median(row.direct.iter().map(|r| r.total).collect());
        let p50 = median(p.iter().map(|r| percentile(&r.per, 0.5)).collect());
        let d50 = median(row.direct.iter().map(|r| percentile(&r.per, 0.5)).collect());
        let ok: usize = p.iter().map(|r| r.succeeded).min().unwrap_or(0);
        println!(
            "{:>6} {:>9} {:>10.2} {:>9.1} {:>9.0} {:>9.0} | {:>9.2} {:>9.0} {:>9.0} | {:>10.0} {:>7.2}",
            row.n,
            format!("{ok}/{}", row.n),
            total,
            row.n as f64 / total,
            ms(p50),
            ms(median(p.iter().map(|r| percentile(&r.per, 0.99)).collect())),
            direct_total,
            ms(d50),
            ms(median(
                row.direct
                    .iter()
                    .map(|r| percentile(&r.per, 0.99))
                    .collect()
            )),
            ms(p50 - d50),
            total / direct_total,
        );
    }
    println!();
    println!(
        "where the time goes (p50 per deployment) and what the platform spends (per round, median)"
    );
    println!(
        "{:>6} {:>10} {:>10} {:>10} | {:>10} {:>12} {:>10} {:>10} {:>10}",
        "n",
        "accept ms",
        "queue ms",
        "drive ms",
        "deployer s",
        "per deploy ms",
        "all five s",
        "monitor s",
        "peak MiB"
    );
    for row in rows {
        let p = &row.platform;
        let phase = |i: usize| ms(median(p.iter().map(|r| r.phases[i]).collect()));
        let deployer = median(p.iter().map(|r| r.cpu["deployer"]).collect());
        println!(
            "{:>6} {:>10.0} {:>10.0} {:>10.0} | {:>10.2} {:>12.1} {:>10.2} {:>10.2} {:>10.0}",
            row.n,
            phase(0),
            phase(1),
            phase(2),
            deployer,
            ms(deployer / row.n as f64),
            median(p.iter().map(|r| r.cpu.values().sum()).collect()),
            median(p.iter().map(|r| r.cpu["monitor"]).collect()),
            p.iter()
                .map(|r| r.deployer_peak_rss_mib)
                .fold(0f64, f64::max),
        );
    }
    for row in rows {
        for (i, r) in row.platform.iter().enumerate() {
            if !r.others.is_empty() {
                println!("n={} round {}: not succeeded: {:?}", row.n, i + 1, r.others);
            }
            print_reasons(r);
        }
    }
}

/// The most frequent reasons of a round's deployments that did not succeed.
fn print_reasons(r: &PlatformRound) {
    let mut reasons: Vec<_> = r.reasons.iter().collect();
    reasons.sort_by_key(|(_, (count, _))| std::cmp::Reverse(*count));
    for (kind, (count, message)) in reasons.iter().take(5) {
        println!("  {count} x {kind}, e.g. {message}");
    }
}

fn limits() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let limits = read("/proc/self/limits");
    let pick = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().rev().nth(2).unwrap_or("?").to_owned())
            .unwrap_or_default()
    };
    // Every probe of the trivial app is a new connection, tracked for 2 minutes after it
    // closed where connection tracking is on (Docker's rules turn it on): a full table drops
    // new connections, the platform's own included.
    let conntrack = match read("/proc/sys/net/netfilter/nf_conntrack_max").trim() {
        "" => "off".to_owned(),
        max => max.to_owned(),
    };
    format!(
        "open files {}, processes {}, ephemeral ports {}, tracked connections {conntrack}",
        pick("Max open files"),
        pick("Max processes"),
        read("/proc/sys/net/ipv4/ip_local_port_range")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join("-")
    )
}

async fn run() {
    let sizes = sizes();
    println!("limits: {}", limits());
    let stack = Arc::new(Stack::start().await);
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/trivial");
    let repo = slipway_testkit::git::Repo::from_dir(&app);
    let res = stack
        .post(
            "/v1/services",
            &stack.admin_token,
            json!({"name": "hello", "repository": repo.url, "webhook_secret": SECRET}),
        )
        .await;
    assert_eq!(res.status(), 201);
    stack.release(&repo, 1).await;

    let mut rows = Vec::new();
    for &n in &sizes {
        let mut row = Row {
            n,
            platform: Vec::new(),
            direct: Vec::new(),
        };
        for round in 0..rounds() {
            let envs = environments(&stack, &format!("b{n}r{round}"), n).await;
            let direct_first = round % 2 == 1;
            if direct_first {
                row.direct.push(direct(n, &app).await);
            }
            let p = platform(&stack, &envs).await;
            println!(
                "n={n} round {}: all in {:.2} s, {}/{n} succeeded, p50 {:.0} ms, p99 {:.0} ms, CPU s: deployer {:.2}, registry {:.2}, monitor {:.2}, gateway {:.2}",
                round + 1,
                p.total,
                p.succeeded,
                percentile(&p.per, 0.5) * 1000.0,
                percentile(&p.per, 0.99) * 1000.0,
                p.cpu["deployer"],
                p.cpu["registry"],
                p.cpu["monitor"],
                p.cpu["gateway"],
            );
            println!(
                "n={n} round {}: accepting, p50: gateway {:.0} ms, outbox relay {:.0} ms, broker and deployer {:.0} ms",
                round + 1,
                p.accept[0] * 1000.0,
                p.accept[1] * 1000.0,
                p.accept[2] * 1000.0,
            );
            print_reasons(&p);
            row.platform.push(p);
            scale_down(&stack, &envs).await;
            if !direct_first {
                row.direct.push(direct(n, &app).await);
            }
            let d = row.direct.last().unwrap();
            println!(
                "n={n} round {}: direct all healthy in {:.2} s, p50 {:.0} ms",
                round + 1,
                d.total,
                percentile(&d.per, 0.5) * 1000.0
            );
        }
        rows.push(row);
    }
    print_tables(&rows);
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
