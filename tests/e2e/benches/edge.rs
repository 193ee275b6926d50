//! The edge router next to nginx and HAProxy, side by side in one run, on the same backend and
//! the same load. Prints figures, asserts nothing about speed.
//!
//! - backend: an nginx process answering a fixed `200 hello` (one worker);
//! - nginx and HAProxy: Debian's binaries as reverse proxies to it (one worker per core, each
//!   bound to its core as the router binds its threads: `worker_cpu_affinity auto`, `cpu-map`;
//!   upstream keep-alive), each adding what the router adds: `X-Forwarded-For`, `-Host`,
//!   `-Proto` and a request id; run as non-daemon children with generated configs;
//! - slipway: the real gateway binary from `target/release` (the edge router on its public
//!   port), on the PostgreSQL and broker `scripts/test --bench` starts, learning the route from a
//!   stand-in discovery server in this process; requests go through `/apps/bench/prod/`.
//!
//! - slipway baseline (only with `SLIPWAY_BENCH_EDGE_BASELINE=<a gateway binary>`): another
//!   build of the gateway, measured in the same rounds, for A/B choices such as the allocator;
//!   ratios slipway / baseline are printed too.
//!
//! Three cases: small GETs, 64 KiB POSTs, and GETs with keep-alive off (`Connection: close`).
//! [`ROUNDS`] rounds (`SLIPWAY_BENCH_ROUNDS` overrides, at least 3), the targets' order rotating
//! each round, each run a warm-up then `wrk -t2 -c32 --latency`; each run's figures go to stderr
//! as it ends, and the median of the rounds is reported, with slipway's ratio to each peer.
//! Without nginx, HAProxy or wrk the bench says why and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench reports failure by panicking

#[path = "common/procfs.rs"]
mod procfs;
#[path = "common/wrk.rs"]
mod wrk;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use slipway_edge::standin::DiscoveryStandIn;
use slipway_edge::standin::build::{healthy, route};
use wrk::{Figures, Load, medians};

const CONNECTIONS: u32 = 32;
const THREADS: u32 = 2;
const WARM_UP_SECONDS: u32 = 1;
/// Seconds per measured run (`SLIPWAY_BENCH_SECONDS` overrides).
const SECONDS: u32 = 5;
/// Rounds by default: single runs move by 10-15% on a busy 2-core machine, so five, whose
/// median an outlier on either side does not move.
const ROUNDS: usize = 5;
const POST_BYTES: usize = 64 * 1024;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `name` on PATH or in the sbin directories (nginx lives in /usr/sbin, often not on PATH).
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// A child process stopped with SIGTERM (nginx: fast shutdown, workers included) on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} ignored SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts nginx in the foreground with `http_block` as its `http {}` contents.
/// `workers`: an nginx `worker_processes` value, followed by `worker_cpu_affinity auto` when
/// `bound`.
fn nginx(
    bin: &Path,
    dir: &Path,
    name: &'static str,
    (workers, bound): (&str, bool),
    http_block: &str,
) -> Proc {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    let r = root.display();
    let affinity = if bound {
        "worker_cpu_affinity auto;\n"
    } else {
        ""
    };
    let config = format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\n{affinity}pid {r}/nginx.pid;\n\
         error_log {r}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {r}/body;\n  proxy_temp_path {r}/proxy;\n\
         fastcgi_temp_path {r}/fastcgi;\n  uwsgi_temp_path {r}/uwsgi;\n  scgi_temp_path {r}/scgi;\n\
         {http_block}\n}}\n"
    );
    let file = root.join("nginx.conf");
    std::fs::write(&file, config).unwrap();
    let child = Command::new(bin)
        .args(["-e", "stderr", "-p"])
        .arg(&root)
        .arg("-c")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc { name, child }
}

/// Polls `url` until it answers 200.
async fn wait_ok(client: &reqwest::Client, what: &str, url: &str, proc: &mut Proc) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(res) = client.get(url).send().await
            && res.status() == 200
        {
            return;
        }
        assert!(proc.alive(), "{what} exited before {url} answered 200");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {url} did not answer 200 within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway binary with the bench's database and broker, its registry being `registry`.
async fn gateway(bin: &Path, port: u16, registry: &str, log: &Path) -> Proc {
    let db = slipway_testkit::fresh_database("gateway").await;
    let kafka = slipway_testkit::kafka_settings();
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(bin)
        .env("SLIPWAY_HTTP__HOST", "127.0.0.1")
        .env("SLIPWAY_HTTP__PORT", port.to_string())
        .env("SLIPWAY_DATABASE__HOST", &db.host)
        .env("SLIPWAY_DATABASE__PORT", db.port.to_string())
        .env("SLIPWAY_DATABASE__USERNAME", &db.username)
        .env("SLIPWAY_DATABASE__PASSWORD", slipway_testkit::password(&db))
        .env("SLIPWAY_DATABASE__DATABASE", &db.database)
        .env("SLIPWAY_KAFKA__BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env("SLIPWAY_KAFKA__TOPIC_PREFIX", &kafka.topic_prefix)
        .env("SLIPWAY_TELEMETRY__LOG_LEVEL", "warn")
        .env("SLIPWAY_UPSTREAMS__REGISTRY", registry)
        .envs(slipway_testkit::identity::env(
            slipway_testkit::identity::ServiceCaller::Gateway,
        ))
        .envs(slipway_testkit::signing::env("gateway"))
        .env("SLIPWAY_SECRETS__KEY", slipway_testkit::secrets_key())
        .env(
            "SLIPWAY_AUTH__BOOTSTRAP_TOKEN",
            format!("slw_{}", "b2".repeat(32)),
        )
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    Proc {
        name: "gateway",
        child,
    }
}

/// Starts HAProxy in the foreground with `config`.
fn haproxy(bin: &Path, dir: &Path, config: &str) -> Proc {
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, config).unwrap();
    let child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc {
        name: "haproxy",
        child,
    }
}

/// One kind of load.
#[derive(Clone, Copy)]
enum Case {
    SmallGet,
    Post64k,
    KeepAliveOff,
}

impl Case {
    const ALL: [Case; 3] = [Case::SmallGet, Case::Post64k, Case::KeepAliveOff];

    fn name(self) -> &'static str {
        match self {
            Case::SmallGet => "small GET",
            Case::Post64k => "64 KiB POST",
            Case::KeepAliveOff => "GET, keep-alive off",
        }
    }

    fn args(self, post_script: &Path) -> Vec<String> {
        match self {
            Case::SmallGet => Vec::new(),
            Case::Post64k => vec!["-s".into(), post_script.display().to_string()],
            Case::KeepAliveOff => vec!["-H".into(), "Connection: close".into()],
        }
    }
}

const TARGETS: [&str; 5] = [
    "backend (direct)",
    "nginx",
    "haproxy",
    "slipway",
    "slipway baseline",
];

async fn run() {
    let tools = ["nginx", "haproxy", "wrk"].map(|t| (t, find_tool(t)));
    let [
        (_, Some(nginx_bin)),
        (_, Some(haproxy_bin)),
        (_, Some(wrk_bin)),
    ] = tools.clone()
    else {
        let said: Vec<String> = tools
            .iter()
            .map(|(t, p)| {
                format!(
                    "{t} ({})",
                    p.as_ref()
                        .map_or("missing".into(), |p| p.display().to_string())
                )
            })
            .collect();
        println!(
            "edge bench skipped: needs {}; `scripts/test --bench` installs them",
            said.join(", ")
        );
        return;
    };
    let gateway_bin = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("slipway-gateway");
    if !gateway_bin.exists() {
        println!(
            "edge bench skipped: {} is missing (`cargo build -p slipway-gateway --release`)",
            gateway_bin.display()
        );
        return;
    }
    let seconds: u32 = std::env::var("SLIPWAY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SECONDS);
    let rounds: usize = std::env::var("SLIPWAY_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS)
        .max(3);
    let dir =
        std::env::temp_dir().join(format!("slipway-edge-bench-{}", slipway_testkit::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let post_script = dir.join("post.lua");
    std::fs::write(
        &post_script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {POST_BYTES})\n\
             wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n"
        ),
    )
    .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // The proxies' threads on cores of their own, when the router binds its (one per CPU).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bound = slipway_edge::affinity::plan(true, cores, &slipway_edge::affinity::allowed_cpus());
    let backend_port = free_port();
    let mut backend = nginx(
        &nginx_bin,
        &dir,
        "backend",
        ("1", false),
        &format!(
            "  server {{ listen 127.0.0.1:{backend_port}; keepalive_requests 1000000;\n\
             client_max_body_size 1m;\n\
             location / {{ default_type text/plain; return 200 \"hello\\n\"; }} }}"
        ),
    );
    let backend_url = format!("http://127.0.0.1:{backend_port}/");
    wait_ok(&client, "backend nginx", &backend_url, &mut backend).await;

    // The headers the edge router adds, added by each peer too.
    let nginx_port = free_port();
    let mut proxy = nginx(
        &nginx_bin,
        &dir,
        "proxy",
        ("auto", bound.is_some()),
        &format!(
            "  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{nginx_port}; keepalive_requests 1000000;\n\
             client_max_body_size 10m; client_body_buffer_size 128k;\n\
             location / {{ proxy_pass http://backend; proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             proxy_set_header X-Forwarded-Host $http_host;\n\
             proxy_set_header X-Forwarded-Proto $scheme;\n\
             proxy_set_header X-Request-Id $request_id; }} }}"
        ),
    );
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/");
    wait_ok(&client, "proxy nginx", &nginx_url, &mut proxy).await;

    let haproxy_port = free_port();
    let mut ha = haproxy(
        &haproxy_bin,
        &dir,
        &format!(
            "global\n  maxconn 4096\n  nbthread {cores}\n{cpu_map}\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n\
             \x20 option http-keep-alive\n  http-reuse always\n\
             frontend fe\n  bind 127.0.0.1:{haproxy_port}\n\
             \x20 unique-id-format %{{+X}}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid\n\
             \x20 option forwardfor\n\
             \x20 http-request set-header X-Forwarded-Host %[req.hdr(host)]\n\
             \x20 http-request set-header X-Forwarded-Proto http\n\
             \x20 http-request set-header X-Request-Id %[unique-id]\n\
             \x20 default_backend be\n\
             backend be\n  server s1 127.0.0.1:{backend_port}\n",
            cpu_map = bound
                .iter()
                .flatten()
                .enumerate()
                .fold(String::new(), |map, (t, cpu)| {
                    format!("{map}  cpu-map 1/{} {cpu}\n", t + 1)
                }),
        ),
    );
    let haproxy_url = format!("http://127.0.0.1:{haproxy_port}/");
    wait_ok(&client, "haproxy", &haproxy_url, &mut ha).await;

    let discovery = DiscoveryStandIn::start(vec![route(
        "bench",
        "prod",
        &[],
        vec![healthy("backend", &format!("127.0.0.1:{backend_port}"), 1)],
    )])
    .unwrap();
    let gateway_port = free_port();
    let mut gw = gateway(
        &gateway_bin,
        gateway_port,
        discovery.url(),
        &dir.join("gateway.log"),
    )
    .await;
    let slipway_url = format!("http://127.0.0.1:{gateway_port}/apps/bench/prod/");
    wait_ok(&client, "gateway", &slipway_url, &mut gw).await;

    let mut urls = vec![
        backend_url.clone(),
        nginx_url.clone(),
        haproxy_url.clone(),
        slipway_url.clone(),
    ];
    let baseline_bin = std::env::var_os("SLIPWAY_BENCH_EDGE_BASELINE").map(PathBuf::from);
    let mut baseline = None;
    if let Some(bin) = &baseline_bin {
        assert!(
            bin.is_file(),
            "SLIPWAY_BENCH_EDGE_BASELINE: {} is not a file",
            bin.display()
        );
        let port = free_port();
        let mut proc = gateway(bin, port, discovery.url(), &dir.join("baseline.log")).await;
        let url = format!("http://127.0.0.1:{port}/apps/bench/prod/");
        wait_ok(&client, "baseline gateway", &url, &mut proc).await;
        urls.push(url);
        baseline = Some(proc);
    }
    let targets = urls.len();
    // The process (tree) serving each target, whose CPU time a run costs.
    let mut pids = vec![
        backend.child.id(),
        proxy.child.id(),
        ha.child.id(),
        gw.child.id(),
    ];
    pids.extend(baseline.as_ref().map(|b| b.child.id()));
    // runs[case][target]: one figure per round; cpu[case][target]: CPU µs per answer.
    let mut runs = vec![vec![Vec::new(); targets]; Case::ALL.len()];
    let mut cpu = vec![vec![Vec::new(); targets]; Case::ALL.len()];
    for round in 0..rounds {
        for (c, case) in Case::ALL.into_iter().enumerate() {
            for k in 0..targets {
                // Each round starts with another target, so none always runs first or last.
                let t = (k + round) % targets;
                let args = case.args(&post_script);
                eprint!("round {}: {} on {}", round + 1, case.name(), TARGETS[t]);
                let load = |seconds| Load {
                    threads: THREADS,
                    connections: CONNECTIONS,
                    seconds,
                };
                wrk::wrk(&wrk_bin, &urls[t], load(WARM_UP_SECONDS), &args);
                let cpu0 = procfs::tree_cpu_seconds(pids[t]);
                let figures = wrk::wrk(&wrk_bin, &urls[t], load(seconds), &args);
                let answers = figures.rate * f64::from(seconds);
                let us = (procfs::tree_cpu_seconds(pids[t]) - cpu0) * 1e6 / answers.max(1.0);
                eprintln!(
                    ": {:.0}/s, p50 {:.3} ms, p99 {:.3} ms, {us:.1} µs CPU per answer",
                    figures.rate, figures.p50_ms, figures.p99_ms
                );
                cpu[c][t].push(us);
                if figures.errors > 0 {
                    println!(
                        "warning: {} had {} failed answers ({})",
                        TARGETS[t],
                        figures.errors,
                        case.name()
                    );
                }
                runs[c][t].push(figures);
            }
        }
    }

    println!();
    println!(
        "edge proxy: wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s, median of {rounds} alternating rounds, {cores} cores; \
         proxy threads {}; slipway = the release gateway binary, path /apps/bench/prod/; CPU: the \
         serving process's (nginx: master and workers) user + system time per answer; ratios are \
         slipway / peer",
        match &bound {
            Some(cpus) => format!("bound to CPUs {cpus:?}, one each"),
            None => "left to the scheduler".into(),
        }
    );
    println!(
        "{:<20} {:<17} {:>11} {:>8} {:>8} {:>8}",
        "case", "target", "requests/s", "p50 ms", "p99 ms", "CPU µs"
    );
    for (c, case) in Case::ALL.into_iter().enumerate() {
        let m: Vec<Figures> = runs[c].iter().map(|r| medians(r)).collect();
        let us: Vec<f64> = cpu[c].iter().map(|r| wrk::median(r.clone())).collect();
        for (t, f) in m.iter().enumerate() {
            println!(
                "{:<20} {:<17} {:>11.0} {:>8.3} {:>8.3} {:>8.1}",
                case.name(),
                TARGETS[t],
                f.rate,
                f.p50_ms,
                f.p99_ms,
                us[t]
            );
        }
        let slipway = m[3];
        let peers = [(1, "nginx"), (2, "haproxy"), (4, "baseline")];
        for (t, peer) in peers.into_iter().filter(|(t, _)| *t < targets) {
            println!(
                "{:<20} {:<17} {:>10.2}x {:>7.2}x {:>7.2}x {:>7.2}x",
                case.name(),
                format!("slipway / {peer}"),
                slipway.rate / m[t].rate,
                slipway.p50_ms / m[t].p50_ms,
                slipway.p99_ms / m[t].p99_ms,
                us[3] / us[t]
            );
        }
    }

    if let Some(bin) = &baseline_bin {
        println!("slipway baseline = {}", bin.display());
    }
    drop((baseline, gw, ha, proxy, backend));
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
