//! Discovery at scale next to etcd 3.4, and the platform's memory with that much known. Prints
//! figures, asserts nothing about speed.
//!
//! - the real stack (release binaries, the PostgreSQL and broker `scripts/test --bench` starts);
//!   resident memory of the five services idle;
//! - 1,000 services created through the gateway, then 10 instances each registered the way the
//!   platform does it: one deployer heartbeat per service on Kafka (signed as the deployer),
//!   which the registry applies by inserting the instances it does not know;
//! - memory again once the gateway's edge router serves the table of the registry's latest
//!   index (its `edge_routing_table_index` gauge), and after the reads;
//! - etcd 3.4 (Debian's `etcd`, one member, its own data directory) holding the same data:
//!   one key per instance under `/slipway/instances/<service>/`, the value the very JSON record
//!   the registry answers for it;
//! - reads of one service's instances, each request a random one of the 1,000: the registry's
//!   `GET /v1/services/{name}/instances` (the gateway's credential) and etcd's prefix range
//!   through its v3 JSON gateway (`POST /v3/kv/range`, base64 `key` and `range_end`). The same
//!   load generator for both: `wrk -t2 -c32 --latency` with a Lua script choosing the service.
//!   [`ROUNDS`] rounds, the order alternating; the median of the rounds is reported with the
//!   ratio slipway / etcd. Without wrk or etcd the bench says why and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench reports failure by panicking

#[path = "../tests/support/mod.rs"]
mod support;
#[path = "common/wrk.rs"]
mod wrk;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::Utc;
use serde_json::{Value, json};
use slipway_events::CloudEvent;
use slipway_events::EventData;
use slipway_events::deploy::{
    EnvironmentInstances, Health, HealthCheck, HeartbeatInstance, InstanceState, InstancesHeartbeat,
};
use slipway_events::slipway::sources;
use slipway_ids::{InstanceId, ReplicaId, ServiceId};
use support::{SERVICES, Stack};
use wrk::{Figures, Load, medians};

const SERVICE_COUNT: usize = 1_000;
const INSTANCES_PER_SERVICE: usize = 10;
const ENVIRONMENT: &str = "prod";
const ROUNDS: usize = 3;
const WARM_UP_SECONDS: u32 = 1;
/// Seconds per measured run (`SLIPWAY_BENCH_SECONDS` overrides).
const SECONDS: u32 = 5;
const THREADS: u32 = 2;
const CONNECTIONS: u32 = 32;
/// The goals for the five services together, MiB.
const IDLE_GOAL_MIB: f64 = 100.0;
const LOADED_GOAL_MIB: f64 = 250.0;

/// `name` on PATH or in the sbin directories.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn service_name(i: usize) -> String {
    format!("bench-{i:04}")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resident memory of each service, MiB, in [`SERVICES`] order.
fn memory(stack: &Stack) -> Vec<f64> {
    SERVICES
        .iter()
        .map(|s| stack.rss_kib(s) as f64 / 1024.0)
        .collect()
}

/// Creates services `range` through the gateway; their ids.
async fn create(stack: &Stack, range: std::ops::Range<usize>) -> Vec<(usize, ServiceId)> {
    let mut ids = Vec::with_capacity(range.len());
    for i in range {
        let res = stack
            .post(
                "/v1/services",
                &stack.admin_token,
                json!({"name": service_name(i)}),
            )
            .await;
        assert_eq!(res.status(), 201, "create {}", service_name(i));
        let body: Value = res.json().await.unwrap();
        ids.push((i, body["id"].as_str().unwrap().parse().unwrap()));
    }
    ids
}

/// The heartbeat a deployer sends for service `i`: its 10 instances, running and healthy.
fn heartbeat(i: usize, service_id: ServiceId) -> InstancesHeartbeat {
    let now = Utc::now();
    let instances = (0..INSTANCES_PER_SERVICE)
        .map(|j| HeartbeatInstance {
            instance_id: InstanceId::new(),
            release: 1,
            address: format!("127.0.0.1:{}", 40_000 + i * INSTANCES_PER_SERVICE + j),
            target: "process".into(),
            state: InstanceState::Running,
            health: Some(Health::Healthy),
            health_check: HealthCheck::default(),
            detail: None,
            restarts: 0,
            started_at: now,
        })
        .collect();
    InstancesHeartbeat {
        service_id,
        service_name: service_name(i),
        owner: ReplicaId::from_name("deployer-bench"),
        environments: vec![EnvironmentInstances {
            environment: ENVIRONMENT.into(),
            instances,
        }],
        interval_ms: 10_000,
        at: now,
    }
}

async fn discovery_index(stack: &Stack) -> i64 {
    sqlx::query_scalar("SELECT value FROM registry.discovery_index")
        .fetch_one(stack.db())
        .await
        .unwrap()
}

/// The gateway's `edge_routing_table_index` gauge: the discovery index its router serves.
async fn router_index(client: &reqwest::Client, stack: &Stack) -> Option<i64> {
    let text = client
        .get(stack.url("gateway", "/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.split_once(' ')?;
            name.ends_with("edge_routing_table_index")
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .map(|v| v as i64)
}

/// Polls `check` every 200 ms until it holds; panics with `what` after `limit`.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// etcd 3.4, one member on loopback, stopped on drop.
struct Etcd {
    child: Child,
    url: String,
}

impl Etcd {
    fn start(bin: &Path, dir: &Path) -> Self {
        let (client, peer) = (support::free_port(), support::free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let child = Command::new(bin)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("etcd-data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        Self { child, url }
    }

    async fn post(&self, client: &reqwest::Client, path: &str, body: &Value) -> Value {
        let res = client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "etcd {path}");
        res.json().await.unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/slipway/instances/<service>/`: the prefix etcd keeps a service's instances under.
fn etcd_prefix(service: &str) -> String {
    format!("/slipway/instances/{service}/")
}

/// The range end of a prefix: the prefix with its last byte raised (`/` becomes `0`).
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    let last = end.last_mut().unwrap();
    *last += 1;
    end
}

/// A wrk script sending `requests` (Lua expressions of `wrk.format(...)`), one at random each
/// time, to both targets alike.
fn wrk_script(path: &Path, requests: &[String]) {
    let list = requests.join(",\n  ");
    std::fs::write(
        path,
        format!(
            "local formats = {{\n  {list}\n}}\nlocal requests = {{}}\n\
             init = function(args)\n  for i, f in ipairs(formats) do requests[i] = f() end\nend\n\
             request = function()\n  return requests[math.random(#requests)]\nend\n"
        ),
    )
    .unwrap();
}

const TARGETS: [&str; 2] = ["etcd 3.4", "slipway"];

async fn run() {
    let (Some(wrk_bin), Some(etcd_bin)) = (find_tool("wrk"), find_tool("etcd")) else {
        println!(
            "discovery bench skipped: needs wrk ({}) and etcd ({}); `scripts/test --bench` \
             installs them (Debian `wrk`, `etcd-server`)",
            find_tool("wrk").map_or("missing".into(), |p| p.display().to_string()),
            find_tool("etcd").map_or("missing".into(), |p| p.display().to_string()),
        );
        return;
    };
    let seconds: u32 = std::env::var("SLIPWAY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SECONDS);
    let dir = std::env::temp_dir().join(format!(
        "slipway-discovery-bench-{}",
        slipway_testkit::unique()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let load_before = load_average();

    let stack = Stack::start().await;
    tokio::time::sleep(Duration::from_secs(3)).await; // let start-up work settle before "idle"
    let idle = memory(&stack);

    // 1,000 services through the gateway, four clients at a time.
    let t = Instant::now();
    let quarter = SERVICE_COUNT / 4;
    let (a, b, c, d) = tokio::join!(
        create(&stack, 0..quarter),
        create(&stack, quarter..2 * quarter),
        create(&stack, 2 * quarter..3 * quarter),
        create(&stack, 3 * quarter..SERVICE_COUNT),
    );
    let services: Vec<(usize, ServiceId)> = [a, b, c, d].concat();
    eprintln!(
        "{SERVICE_COUNT} services created in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Their instances, as the deployer announces them: a heartbeat per service.
    let mut kafka = slipway_testkit::kafka_settings();
    kafka.topic_prefix = stack.topic("");
    let producer = slipway_testkit::signing::producer(&kafka);
    let t = Instant::now();
    for (i, id) in &services {
        let data = heartbeat(*i, *id);
        let event = CloudEvent::new(sources::DEPLOYER, *id, None, &data).unwrap();
        producer
            .publish(InstancesHeartbeat::TOPIC, &event)
            .await
            .unwrap();
    }
    let expected = (SERVICE_COUNT * INSTANCES_PER_SERVICE) as i64;
    wait_for(
        "the registry inserts every instance",
        Duration::from_secs(600),
        || async { stack.count("registry.instances").await >= expected },
    )
    .await;
    let applied = t.elapsed();
    eprintln!(
        "{expected} instances registered in {:.1} s",
        applied.as_secs_f64()
    );

    // The router must serve the big table before its memory counts.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let index = discovery_index(&stack).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let served = loop {
        let served = router_index(&client, &stack).await;
        if served.is_some_and(|i| i >= index) || Instant::now() > deadline {
            break served;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let router_note = format!(
        "edge router table index {} of the registry's {index}",
        served.map_or("(no gauge)".into(), |i| i.to_string())
    );
    eprintln!("{router_note}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let known = memory(&stack);

    // etcd with the same records, read back from the registry.
    let registry =
        slipway_testkit::identity::client(slipway_testkit::identity::ServiceCaller::Gateway);
    let etcd = Etcd::start(&etcd_bin, &dir);
    wait_for("etcd answers", Duration::from_secs(60), || async {
        client
            .get(format!("{}/health", etcd.url))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let t = Instant::now();
    for (i, _) in &services {
        let name = service_name(*i);
        let url = stack.url("registry", &format!("/v1/services/{name}/instances"));
        let body: Value = registry
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = body["items"].as_array().unwrap();
        assert_eq!(items.len(), INSTANCES_PER_SERVICE, "{name}: {body}");
        let puts: Vec<Value> = items
            .iter()
            .map(|item| {
                let key = format!("{}{}", etcd_prefix(&name), item["id"].as_str().unwrap());
                json!({"requestPut": {
                    "key": BASE64.encode(key),
                    "value": BASE64.encode(serde_json::to_vec(item).unwrap()),
                }})
            })
            .collect();
        etcd.post(&client, "/v3/kv/txn", &json!({ "success": puts }))
            .await;
    }
    eprintln!("etcd loaded in {:.1} s", t.elapsed().as_secs_f64());
    let check = etcd
        .post(&client, "/v3/kv/range", &range_body(&service_name(0)))
        .await;
    assert_eq!(
        check["count"],
        INSTANCES_PER_SERVICE.to_string(),
        "etcd's prefix range: {check}"
    );

    // One script per target, the same random choice of service in both.
    let credential =
        slipway_testkit::identity::credential(slipway_testkit::identity::ServiceCaller::Gateway);
    let slipway_script = dir.join("slipway.lua");
    wrk_script(
        &slipway_script,
        &(0..SERVICE_COUNT)
            .map(|i| {
                format!(
                    "function() return wrk.format(\"GET\", \"/v1/services/{}/instances\", \
                     {{[\"Authorization\"] = \"Bearer {credential}\"}}) end",
                    service_name(i)
                )
            })
            .collect::<Vec<_>>(),
    );
    let etcd_script = dir.join("etcd.lua");
    wrk_script(
        &etcd_script,
        &(0..SERVICE_COUNT)
            .map(|i| {
                format!(
                    "function() return wrk.format(\"POST\", \"/v3/kv/range\", \
                     {{[\"Content-Type\"] = \"application/json\"}}, '{}') end",
                    range_body(&service_name(i))
                )
            })
            .collect::<Vec<_>>(),
    );
    let urls = [etcd.url.clone(), stack.url("registry", "")];
    let scripts = [etcd_script, slipway_script];
    let load = Load {
        threads: THREADS,
        connections: CONNECTIONS,
        seconds,
    };
    let warm_up = Load {
        seconds: WARM_UP_SECONDS,
        ..load
    };
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); TARGETS.len()];
    for round in 0..ROUNDS {
        for k in 0..TARGETS.len() {
            let t = (k + round) % TARGETS.len();
            let args = ["-s".to_owned(), scripts[t].display().to_string()];
            eprintln!("round {}: {}", round + 1, TARGETS[t]);
            wrk::wrk(&wrk_bin, &urls[t], warm_up, &args);
            let figures = wrk::wrk(&wrk_bin, &urls[t], load, &args);
            if figures.errors > 0 {
                println!(
                    "warning: {} had {} failed answers",
                    TARGETS[t], figures.errors
                );
            }
            runs[t].push(figures);
        }
    }
    let after = memory(&stack);
    let load_after = load_average();

    println!();
    println!(
        "discovery: {SERVICE_COUNT} services x {INSTANCES_PER_SERVICE} instances; each request one \
         random service's instances; wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s, median of \
         {ROUNDS} alternating rounds, {} cores; slipway = the registry's \
         GET /v1/services/{{name}}/instances (release binary), etcd = POST /v3/kv/range by prefix",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<17} {:>9} {:>8} {:>8}",
        "target", "reads/s", "p50 ms", "p99 ms"
    );
    let m: Vec<Figures> = runs.iter().map(|r| medians(r)).collect();
    for (t, f) in m.iter().enumerate() {
        println!(
            "{:<17} {:>9.0} {:>8.3} {:>8.3}",
            TARGETS[t], f.rate, f.p50_ms, f.p99_ms
        );
    }
    println!(
        "{:<17} {:>8.2}x {:>7.2}x {:>7.2}x",
        "slipway / etcd",
        m[1].rate / m[0].rate,
        m[1].p50_ms / m[0].p50_ms,
        m[1].p99_ms / m[0].p99_ms
    );
    println!(
        "registration: {expected} instances in {:.1} s (1,000 heartbeats on Kafka applied)",
        applied.as_secs_f64()
    );

    println!();
    println!(
        "resident memory (VmRSS), MiB: idle after start; with {SERVICE_COUNT} x \
         {INSTANCES_PER_SERVICE} known (the edge router serving the table); after the reads"
    );
    println!(
        "{:<10} {:>8} {:>8} {:>8}",
        "service", "idle", "known", "after"
    );
    for (s, name) in SERVICES.iter().enumerate() {
        println!(
            "{name:<10} {:>8.1} {:>8.1} {:>8.1}",
            idle[s], known[s], after[s]
        );
    }
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    println!(
        "{:<10} {:>8.1} {:>8.1} {:>8.1}   goals: idle <= {IDLE_GOAL_MIB:.0}, known <= {LOADED_GOAL_MIB:.0}",
        "all",
        sum(&idle),
        sum(&known),
        sum(&after)
    );
    println!("{router_note} when memory was read as known");
    println!("load average before {load_before}, after {load_after}");

    drop(etcd);
    drop(stack);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The JSON of an etcd range over `service`'s prefix.
fn range_body(service: &str) -> Value {
    let prefix = etcd_prefix(service);
    json!({
        "key": BASE64.encode(prefix.as_bytes()),
        "range_end": BASE64.encode(range_end(&prefix)),
    })
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
