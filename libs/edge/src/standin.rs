//! A stand-in for the registry's discovery endpoint (feature `test-support`), with the same
//! blocking-query contract: `GET /v1/discovery?index=N&wait=30s` answers at once when its index
//! is newer than `N`, else when it changes or after `wait`. Tests change the answer with
//! [`DiscoveryStandIn::set`] and make it fail with [`DiscoveryStandIn::fail`]; it remembers the
//! `Authorization` the last poll presented ([`DiscoveryStandIn::last_authorization`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use serde::Deserialize;
use tokio::sync::watch;

use crate::table::{Discovery, RouteEntry};

struct State {
    answer: Mutex<Discovery>,
    failing: Mutex<bool>,
    /// Carries the index; wakes held polls when it changes.
    changed: watch::Sender<u64>,
    polls: AtomicUsize,
    authorization: Mutex<Option<String>>,
}

/// A running stand-in; stops when dropped.
pub struct DiscoveryStandIn {
    url: String,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

#[derive(Deserialize)]
struct Query {
    #[serde(default)]
    index: u64,
    wait: Option<String>,
}

async fn discovery(
    state: web::Data<State>,
    query: web::Query<Query>,
    req: actix_web::HttpRequest,
) -> HttpResponse {
    state.polls.fetch_add(1, Ordering::Relaxed);
    *state
        .authorization
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let wait = query
        .wait
        .as_deref()
        .and_then(|w| w.strip_suffix('s'))
        .and_then(|w| w.parse::<u64>().ok())
        .unwrap_or(30);
    let mut changed = state.changed.subscribe();
    let _ = tokio::time::timeout(
        Duration::from_secs(wait),
        changed.wait_for(|index| *index > query.index),
    )
    .await;
    if *state.failing.lock().unwrap_or_else(PoisonError::into_inner) {
        return HttpResponse::InternalServerError().body("stand-in told to fail");
    }
    let answer = state
        .answer
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    HttpResponse::Ok().json(answer)
}

impl DiscoveryStandIn {
    /// Serves `routes` at index 1 on a free loopback port.
    pub fn start(routes: Vec<RouteEntry>) -> std::io::Result<Self> {
        let (changed, _) = watch::channel(1);
        let state = Arc::new(State {
            answer: Mutex::new(Discovery { index: 1, routes }),
            failing: Mutex::new(false),
            changed,
            polls: AtomicUsize::new(0),
            authorization: Mutex::new(None),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/discovery", web::get().to(discovery))
        })
        .workers(1)
        .shutdown_timeout(0)
        .disable_signals()
        .bind(("127.0.0.1", 0))?;
        let port = server.addrs().first().map(|a| a.port()).unwrap_or(0);
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            state,
            handle,
        })
    }

    /// The base URL (what the gateway calls `upstreams.registry`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Replaces the answer and bumps the index; returns the new index.
    pub fn set(&self, routes: Vec<RouteEntry>) -> u64 {
        let index = {
            let mut answer = self
                .state
                .answer
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            answer.index += 1;
            answer.routes = routes;
            answer.index
        };
        self.state.changed.send_replace(index);
        index
    }

    /// From now on answer 500 (or stop doing so).
    pub fn fail(&self, failing: bool) {
        *self
            .state
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = failing;
    }

    /// The `Authorization` header of the last poll, if it had one.
    pub fn last_authorization(&self) -> Option<String> {
        self.state
            .authorization
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many polls arrived so far.
    pub fn polls(&self) -> usize {
        self.state.polls.load(Ordering::Relaxed)
    }
}

impl Drop for DiscoveryStandIn {
    fn drop(&mut self) {
        // Stopping is asynchronous; the returned future need not be awaited for it to happen.
        drop(self.handle.stop(false));
    }
}

/// Builders for discovery entries, so tests read like the registry's answer.
pub mod build {
    use slipway_ids::{InstanceId, ServiceId};

    use crate::table::{Health, InstanceEntry, InstanceState, RouteEntry, WeightEntry};

    /// The id of the instance a test calls `name`: the same name always gives the same id.
    pub fn instance_id(name: &str) -> InstanceId {
        let mut bytes = [0u8; 16];
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        bytes[..8].copy_from_slice(&hash.to_be_bytes());
        bytes[8..].copy_from_slice(&(name.len() as u64).to_be_bytes());
        InstanceId::from_uuid(uuid::Uuid::from_bytes(bytes))
    }

    /// A route of `service` in `environment` with `weights` (release, weight) and `instances`.
    pub fn route(
        service: &str,
        environment: &str,
        weights: &[(i32, u32)],
        instances: Vec<InstanceEntry>,
    ) -> RouteEntry {
        RouteEntry {
            service: service.into(),
            service_id: ServiceId::new(),
            environment: environment.into(),
            weights: weights
                .iter()
                .map(|&(release, weight)| WeightEntry { release, weight })
                .collect(),
            instances,
        }
    }

    /// A running, healthy instance of `release` at `address`, named `name` in the test.
    pub fn healthy(name: &str, address: &str, release: i32) -> InstanceEntry {
        with(
            name,
            address,
            release,
            Health::Healthy,
            InstanceState::Running,
        )
    }

    /// An instance of `release` at `address` with `health` and `state`.
    pub fn with(
        name: &str,
        address: &str,
        release: i32,
        health: Health,
        state: InstanceState,
    ) -> InstanceEntry {
        InstanceEntry::new(instance_id(name), address.into(), release, health, state)
    }
}
