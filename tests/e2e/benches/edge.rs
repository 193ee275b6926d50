//! The edge router's proxy overhead next to nginx's, on the same backend and the same load.
//! Prints figures, asserts nothing about speed.
//!
//! - backend: an nginx process answering a fixed `200 hello` (one worker);
//! - nginx: Debian's binary as a reverse proxy to it (`worker_processes auto`, upstream
//!   keep-alive), run as a non-daemon child with a generated config in a temporary directory;
//! - slipway: the real gateway binary from `target/release` (the edge router mounted in it,
//!   with its metrics and tracing middleware), on the PostgreSQL and broker `scripts/test --bench`
//!   starts, learning the route from a stand-in discovery server in this process; requests go
//!   through `/apps/bench/prod/`.
//!
//! Each target gets a warm-up, then `wrk -t2 -c32 -d10s --latency`. Without nginx or wrk the
//! bench says why and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench reports failure by panicking

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use slipway_edge::standin::DiscoveryStandIn;
use slipway_edge::standin::build::{healthy, route};

const CONNECTIONS: u32 = 32;
const THREADS: u32 = 2;
const WARM_UP_SECONDS: u32 = 3;
const SECONDS: u32 = 10;

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
fn nginx(bin: &Path, dir: &Path, name: &'static str, workers: &str, http_block: &str) -> Proc {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    let r = root.display();
    let config = format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {r}/nginx.pid;\n\
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

/// Requests/s, p99 in ms, and non-2xx answers of one wrk run.
struct Figures {
    rate: f64,
    p99_ms: f64,
    errors: u64,
}

fn wrk(bin: &Path, url: &str, seconds: u32) -> Figures {
    let out = Command::new(bin)
        .args([
            &format!("-t{THREADS}"),
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    let value = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    let rate = value("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"));
    let p99 = value("99%").unwrap_or_else(|| panic!("no 99% latency in wrk's output:\n{text}"));
    let errors = value("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        + value("Socket errors:").map_or(0, |v| {
            // "connect 0, read 0, write 0, timeout 0"
            v.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        });
    Figures {
        rate,
        p99_ms: duration_ms(&p99),
        errors,
    }
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.00s`, `1.00m`.
fn duration_ms(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

fn measure(wrk_bin: &Path, name: &str, url: &str) -> Figures {
    eprintln!("{name}: warm-up {WARM_UP_SECONDS}s, then {SECONDS}s on {url}");
    wrk(wrk_bin, url, WARM_UP_SECONDS);
    let figures = wrk(wrk_bin, url, SECONDS);
    if figures.errors > 0 {
        println!("warning: {name} had {} failed answers", figures.errors);
    }
    figures
}

async fn run() {
    let (Some(nginx_bin), Some(wrk_bin)) = (find_tool("nginx"), find_tool("wrk")) else {
        println!(
            "edge bench skipped: needs nginx ({}) and wrk ({}); `scripts/test --bench` installs them",
            find_tool("nginx").map_or("missing".into(), |p| p.display().to_string()),
            find_tool("wrk").map_or("missing".into(), |p| p.display().to_string()),
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
    let dir =
        std::env::temp_dir().join(format!("slipway-edge-bench-{}", slipway_testkit::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let backend_port = free_port();
    let mut backend = nginx(
        &nginx_bin,
        &dir,
        "backend",
        "1",
        &format!(
            "  server {{ listen 127.0.0.1:{backend_port}; keepalive_requests 100000;\n\
             location / {{ default_type text/plain; return 200 \"hello\\n\"; }} }}"
        ),
    );
    let backend_url = format!("http://127.0.0.1:{backend_port}/");
    wait_ok(&client, "backend nginx", &backend_url, &mut backend).await;

    let nginx_port = free_port();
    let mut proxy = nginx(
        &nginx_bin,
        &dir,
        "proxy",
        "auto",
        &format!(
            "  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{nginx_port}; keepalive_requests 100000;\n\
             location / {{ proxy_pass http://backend; proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\"; }} }}"
        ),
    );
    let nginx_url = format!("http://127.0.0.1:{nginx_port}/");
    wait_ok(&client, "proxy nginx", &nginx_url, &mut proxy).await;

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

    let direct = measure(&wrk_bin, "backend (direct)", &backend_url);
    let nginx_figures = measure(&wrk_bin, "nginx", &nginx_url);
    let slipway = measure(&wrk_bin, "slipway", &slipway_url);

    println!();
    println!(
        "edge proxy, wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS}s, {} cores; slipway = the release gateway binary (router mounted in it), path /apps/bench/prod/",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("{:<18} {:>12} {:>10}", "target", "requests/s", "p99 ms");
    for (name, f) in [
        ("backend (direct)", &direct),
        ("nginx", &nginx_figures),
        ("slipway", &slipway),
    ] {
        println!("{name:<18} {:>12.0} {:>10.2}", f.rate, f.p99_ms);
    }
    println!(
        "{:<18} {:>12.2} {:>10.2}",
        "slipway / nginx",
        slipway.rate / nginx_figures.rate,
        slipway.p99_ms / nginx_figures.p99_ms
    );

    drop((gw, proxy, backend));
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
