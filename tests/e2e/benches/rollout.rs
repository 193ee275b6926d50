//! The platform's overhead to roll a built release out to 3 instances on the process target
//! (release binaries, the real broker and PostgreSQL that `scripts/bench` starts). Prints,
//! asserts nothing.
//!
//! - baseline: the sample app started by hand, from spawn to its first healthy `/healthz`;
//! - a first deployment to 3 instances: from `POST .../deployments` to the deployment
//!   `succeeded` (command through Kafka, artifact fetched and unpacked, 3 processes, the
//!   monitor's verdicts back through Kafka, traffic published), and to the edge router
//!   serving it;
//! - a blue-green switch between two releases on 3 instances: to traffic switched, and to the
//!   old set retired (which includes the drain period, `deploy.drain_ms`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench reports failure by panicking

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::Stack;
use support::deploy::SECRET;

const ROUNDS: usize = 5;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p50 = percentile(&samples, 0.5);
    println!(
        "{name:<44} n={:<3} p50 {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms",
        samples.len(),
        ms(p50),
        ms(samples[0]),
        ms(*samples.last().unwrap()),
    );
    p50
}

/// The sample app started directly: spawn → first 200 from `/healthz`.
async fn baseline() -> Duration {
    let dir = slipway_testkit::git::example_dir("hello-python");
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = Instant::now();
        let mut child = tokio::process::Command::new("python3")
            .arg("app.py")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/healthz");
        loop {
            if let Ok(res) = client.get(&url).send().await
                && res.status() == 200
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.push(started.elapsed());
        child.kill().await.unwrap();
    }
    summary("baseline: python app spawn → healthy", samples)
}

async fn run() {
    let stack = Stack::start().await;
    let repo = stack.hello_service(SECRET).await;
    stack
        .put(
            "/v1/services/hello/environments/prod",
            json!({"target": "process"}),
        )
        .await;
    stack.set_config("prod", json!({"GREETING": "bench"})).await;
    stack.release(&repo, 1).await;
    repo.change("NOTES.md", "v2\n");
    stack.release(&repo, 2).await;
    // Probes every 100 ms: the figure is the platform's, not the probe interval's.
    let check =
        json!({"interval_ms": 100, "timeout_ms": 500, "failure_threshold": 2, "grace_seconds": 10});
    let client = reqwest::Client::new();

    let app = baseline().await;

    let (mut to_succeeded, mut to_served) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let id = stack
            .deploy(
                "prod",
                json!({"release": 1, "replicas": 3, "health_check": check}),
            )
            .await;
        let d = stack.finished(&id, Duration::from_secs(120)).await;
        assert_eq!(d["status"], "succeeded", "{d}");
        to_succeeded.push(t.elapsed());
        loop {
            if stack.through_edge(&client, "prod").await.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_served.push(t.elapsed());
        // Back to nothing for the next round.
        let res = stack
            .put(
                "/v1/services/hello/environments/prod/scale",
                json!({"replicas": 0}),
            )
            .await;
        let id = res.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        stack.finished(&id, Duration::from_secs(120)).await;
    }
    let first = summary("first deployment, 3 instances → succeeded", to_succeeded);
    summary("first deployment, 3 instances → served", to_served);
    println!(
        "{:<44} {:>8.1} ms (p50 rollout minus p50 app start; instances start in parallel)",
        "platform overhead of a 3-instance rollout",
        (first.as_secs_f64() - app.as_secs_f64()) * 1000.0
    );

    let id = stack
        .deploy(
            "prod",
            json!({"release": 1, "replicas": 3, "health_check": check}),
        )
        .await;
    stack.finished(&id, Duration::from_secs(120)).await;
    let (mut to_switch, mut to_done) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let release = if round % 2 == 0 { 2 } else { 1 };
        let t = Instant::now();
        let id = stack
            .deploy(
                "prod",
                json!({"release": release, "strategy": {"type": "blue_green"}, "health_check": check}),
            )
            .await;
        let wanted = format!("v{release}");
        loop {
            let (status, served, _) = stack.through_edge(&client, "prod").await;
            if status == 200 && served == wanted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        to_switch.push(t.elapsed());
        let d = stack.finished(&id, Duration::from_secs(120)).await;
        assert_eq!(d["status"], "succeeded", "{d}");
        to_done.push(t.elapsed());
    }
    summary("blue-green, 3 instances → traffic switched", to_switch);
    summary("blue-green, 3 instances → old set retired", to_done);
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
