//! Steady traffic to the sample app through the edge router, as a load balancer in front of
//! the gateway replicas would send it: each request goes to the next replica, and to the other
//! one when the first refuses the connection or drops it. A request fails when no replica
//! answered it with a 200.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One probe: when, and why it failed (`None`: a 200).
pub type Probe = (Instant, Option<String>);

pub struct Prober {
    probes: Arc<Mutex<Vec<Probe>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Prober {
    /// Probes `/apps/<service>/<env>/` on the gateways at `ports` every 50 ms.
    pub fn start(ports: Vec<u16>, service: &str, env: &str) -> Self {
        let path = format!("/apps/{service}/{env}/");
        let probes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (record, stopped) = (probes.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap();
            let mut next = 0usize;
            while !stopped.load(Ordering::Relaxed) {
                let mut failure = None;
                for i in 0..ports.len() {
                    let port = ports[(next + i) % ports.len()];
                    let url = format!("http://127.0.0.1:{port}{path}");
                    match client.get(&url).send().await {
                        Ok(res) if res.status() == 200 => {
                            failure = None;
                            break;
                        }
                        // A gateway that answers decides: a balancer does not retry a 503.
                        Ok(res) => {
                            let status = res.status().as_u16();
                            // The problem body says which 503 it is (no table yet, no healthy
                            // instance, ...): the reason is what a failed cell must show.
                            let body = res.text().await.unwrap_or_default();
                            let detail: String = body.chars().take(300).collect();
                            failure = Some(format!("{status} from :{port}: {detail}"));
                            break;
                        }
                        Err(e) if e.is_connect() || e.is_request() => {
                            failure = Some(format!("no gateway answered ({e})"));
                        }
                        Err(e) => {
                            failure = Some(format!("{e}"));
                            break;
                        }
                    }
                }
                next += 1;
                record.lock().unwrap().push((Instant::now(), failure));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { probes, stop, task }
    }

    /// Requests made between `from` and `to`, and the failed ones (a few shown).
    pub fn between(&self, from: Instant, to: Instant) -> (usize, Vec<String>) {
        let probes = self.probes.lock().unwrap();
        let window: Vec<&Probe> = probes.iter().filter(|p| p.0 >= from && p.0 <= to).collect();
        let failed = window.iter().filter_map(|p| p.1.clone()).collect();
        (window.len(), failed)
    }

    /// Whether the last `n` probes all got a 200.
    pub fn last_ok(&self, n: usize) -> bool {
        let probes = self.probes.lock().unwrap();
        probes.len() >= n && probes[probes.len() - n..].iter().all(|p| p.1.is_none())
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}
