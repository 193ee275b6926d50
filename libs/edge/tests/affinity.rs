//! The router's listener threads on cores of their own, read from the kernel's view of this
//! process's threads (`/proc/self/task`). A test binary of its own: it looks at every thread
//! named `edge-*`, so no other router may run beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::time::Duration;

use slipway_edge::affinity::allowed_cpus;
use slipway_edge::standin::DiscoveryStandIn;
use slipway_edge::standin::build::{healthy, route};
use slipway_edge::{Edge, EdgeSettings};
use slipway_testkit::identity::ServiceCaller;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// `0-2,5` as `[0, 1, 2, 5]`.
fn cpu_list(text: &str) -> Vec<usize> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .flat_map(|part| match part.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![part.parse().unwrap()],
        })
        .collect()
}

/// Each `edge-<n>` thread of this process with the CPUs it may run on, by `n`.
fn edge_threads() -> Vec<(usize, Vec<usize>)> {
    let mut threads: Vec<(usize, Vec<usize>)> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let n = name.trim().strip_prefix("edge-")?.parse().ok()?;
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let list = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
            Some((n, cpu_list(list.trim())))
        })
        .collect();
    threads.sort();
    threads
}

struct Started {
    front: slipway_edge::front::Front,
    cancel: CancellationToken,
    metrics: slipway_http::Metrics,
    port: u16,
}

async fn start(workers: usize, pin_threads: bool, discovery: &DiscoveryStandIn) -> Started {
    let metrics = slipway_http::Metrics::new("gateway");
    let credential = slipway_testkit::identity::settings(ServiceCaller::Gateway).credential;
    let settings = EdgeSettings {
        workers,
        pin_threads,
        ..EdgeSettings::default()
    };
    let edge = Edge::new(&settings, discovery.url(), &credential, &metrics.registry).unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(edge.clone().follow_discovery(cancel.clone()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let front = edge.serve(listener, None, cancel.clone()).unwrap();
    let port = front.port();
    Started {
        front,
        cancel,
        metrics,
        port,
    }
}

impl Started {
    fn open_connections(&self, thread: usize) -> f64 {
        let families = self.metrics.registry.gather();
        let family = families
            .iter()
            .find(|f| f.name() == "slipway_edge_client_connections")
            .expect("the per-thread connection gauge is registered");
        family
            .get_metric()
            .iter()
            .find(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "thread" && l.value() == thread.to_string())
            })
            .map_or(0.0, |m| m.get_gauge().get_value())
    }

    /// Opens connections at once until every thread serves one (each answered a request), so
    /// every thread is past the point where it binds itself; returns them open.
    async fn serve_on_every_thread(&self, threads: usize) -> Vec<tokio::net::TcpStream> {
        let connects =
            (0..4 * threads).map(|_| tokio::net::TcpStream::connect(("127.0.0.1", self.port)));
        let mut connections = futures::future::try_join_all(connects).await.unwrap();
        for c in &mut connections {
            c.write_all(b"GET /apps/hello/prod/ HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut head = [0u8; 12];
            c.read_exact(&mut head).await.unwrap();
            assert_eq!(&head, b"HTTP/1.1 200");
        }
        for thread in 0..threads {
            assert!(
                self.open_connections(thread) > 0.0,
                "thread {thread} serves none of {} connections",
                connections.len()
            );
        }
        connections
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.front.wait())
            .await
            .expect("the router's threads stop")
            .unwrap();
    }
}

/// One thread per CPU this process may run on: thread `n` runs on the `n`-th of them alone.
/// One thread more than CPUs, or binding turned off: every thread keeps the process's CPUs.
#[tokio::test]
async fn listener_threads_get_a_core_each_only_when_there_is_one_per_cpu() {
    let allowed = allowed_cpus();
    assert!(!allowed.is_empty());
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = backend.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = backend.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0
                        || c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    let discovery = DiscoveryStandIn::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("a", &address, 1)],
    )])
    .unwrap();

    let threads = allowed.len();
    let router = start(threads, true, &discovery).await;
    let open = router.serve_on_every_thread(threads).await;
    let bound = edge_threads();
    if threads > 1 {
        let expected: Vec<(usize, Vec<usize>)> = allowed
            .iter()
            .enumerate()
            .map(|(n, &cpu)| (n, vec![cpu]))
            .collect();
        assert_eq!(
            bound, expected,
            "one thread per CPU, in order (allowed: {allowed:?})"
        );
    } else {
        assert_eq!(
            bound,
            [(0, allowed.clone())],
            "a single CPU: nothing to spread"
        );
    }
    drop(open);
    router.stop().await;
    assert_eq!(edge_threads(), [], "the threads ended");

    for (workers, pin) in [(threads + 1, true), (threads, false)] {
        let router = start(workers, pin, &discovery).await;
        let open = router.serve_on_every_thread(workers).await;
        let unbound: Vec<(usize, Vec<usize>)> =
            (0..workers).map(|n| (n, allowed.clone())).collect();
        assert_eq!(
            edge_threads(),
            unbound,
            "{workers} threads, binding {}: left to the scheduler",
            if pin { "on" } else { "off" }
        );
        drop(open);
        router.stop().await;
    }
}
