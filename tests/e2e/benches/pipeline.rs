//! Figures of the platform's own overhead, measured on the real stack (release binaries, the
//! broker and PostgreSQL `scripts/bench` starts). Prints, asserts nothing.
//!
//! - idle resident memory of each service, and after the load;
//! - `POST /v1/services` through the gateway (auth, audit, registry, outbox): latency, rate;
//! - event latency: from the POST to a plain Kafka subscriber receiving the CloudEvent
//!   (outbox relay wake-up, idempotent produce, consume);
//! - consumer throughput: how fast the builder applies a burst of events.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench reports failure by panicking

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::json;
use support::{SERVICES, Stack};

const CREATES: usize = 300;
const EVENT_SAMPLES: usize = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<34} n={:<4} p50 {:>7.2} ms   p90 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap()),
    );
}

fn memory(stack: &Stack, when: &str) {
    let figures: Vec<String> = SERVICES
        .iter()
        .map(|s| format!("{s} {:.1} MiB", stack.rss_kib(s) as f64 / 1024.0))
        .collect();
    println!("RSS {when:<30} {}", figures.join(", "));
}

async fn run() {
    let stack = Stack::start().await;
    tokio::time::sleep(Duration::from_secs(3)).await; // let start-up work settle before "idle"
    memory(&stack, "idle after start");

    // Creates, sequential: the latency one client sees.
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(CREATES);
    for i in 0..CREATES {
        let t = Instant::now();
        let res = stack
            .post(
                "/v1/services",
                &stack.admin_token,
                json!({"name": format!("bench-{i}")}),
            )
            .await;
        assert_eq!(res.status(), 201);
        latencies.push(t.elapsed());
    }
    let rate = CREATES as f64 / started.elapsed().as_secs_f64();
    summary("POST /v1/services (sequential)", latencies);
    println!("{:<34} {rate:.0} creates/s", "  rate, one client");

    // Event latency: POST to receipt by an outside subscriber, one at a time.
    let subscriber: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .set("group.id", format!("bench-{}", slipway_testkit::unique()))
        .set("auto.offset.reset", "latest")
        .create()
        .unwrap();
    subscriber
        .subscribe(&[&stack.topic("slipway.services")])
        .unwrap();
    // Wait for the assignment so "latest" does not skip the first sample.
    while subscriber.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        let _ = tokio::time::timeout(Duration::from_millis(100), subscriber.recv()).await;
    }
    let mut event_latencies = Vec::with_capacity(EVENT_SAMPLES);
    for i in 0..EVENT_SAMPLES {
        let t = Instant::now();
        let res = stack
            .post(
                "/v1/services",
                &stack.admin_token,
                json!({"name": format!("event-{i}")}),
            )
            .await;
        assert_eq!(res.status(), 201);
        tokio::time::timeout(Duration::from_secs(30), subscriber.recv())
            .await
            .unwrap()
            .unwrap();
        event_latencies.push(t.elapsed());
    }
    summary("POST -> event at a subscriber", event_latencies);

    // Consumer throughput: everything so far must be applied by the builder.
    let total = CREATES + EVENT_SAMPLES;
    let t = Instant::now();
    stack.wait_applied("builder", total).await;
    println!(
        "{:<34} all {total} applied {:.0} ms after the last create",
        "builder catch-up",
        t.elapsed().as_secs_f64() * 1000.0
    );

    memory(&stack, &format!("after {total} creates"));
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
