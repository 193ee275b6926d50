//! The edge router: the gateway's front door for the services slipway runs as local processes.
//!
//! A request for `hello` in `prod` arrives either as `Host: hello.prod.<domain>` (the whole path
//! is proxied) or as `/apps/hello/prod/<rest>` (proxied as `/<rest>`). The router picks a
//! release by weight among those with a routable (running and healthy) instance, then an
//! instance of it round-robin, and proxies the request to it.
//!
//! Routes are learnt from the registry's discovery endpoint by one background task that
//! long-polls it ([`Edge::follow_discovery`]) with the gateway's service credential, never per
//! request: each answer becomes a new immutable [`table::Table`] swapped in atomically, so a
//! blue-green switch is a single swap. Instances claiming one of the platform's own addresses
//! are never routed ([`platform`]).
//!
//! The data path runs on threads of its own ([`front`]): the router listens on the gateway's
//! public port (hyper's HTTP/1 server) and passes every request that is not its own on to the
//! gateway's API. Requests with a body in memory go to instances through the router's own
//! HTTP/1 client on the same task; streamed ones and upgrades through hyper's client.
//!
//! Layout:
//! - [`table`]: the discovery answer, the table built from it, release and instance selection.
//! - [`discovery`]: the long-poll loop with backoff.
//! - [`platform`]: the platform's own listeners, which no route may lead to.
//! - [`front`]: the listener threads, bound to cores by [`affinity`]; [`target`]: which requests are the router's.
//! - `forward`: forwarding, retries, upgrades, problems; `pool`: each thread's connections to
//!   instances; `client` and `framing`: the router's own HTTP/1 exchange and the answer's
//!   framing; `body`: streamed bodies with the size limit; `headers`: hop-by-hop and
//!   `x-forwarded-*`.
//! - [`metrics`]: Prometheus collectors on the service's registry.
//! - `standin` (feature `test-support`): a stand-in discovery server for tests and benches.

pub mod affinity;
mod body;
mod client;
pub mod discovery;
mod forward;
mod framing;
pub mod front;
mod headers;
pub mod metrics;
pub mod platform;
mod pool;
pub mod table;
pub mod target;

pub use forward::MAX_ATTEMPTS;

#[cfg(feature = "test-support")]
pub mod standin;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;

use slipway_ids::ReplicaId;

use crate::metrics::EdgeMetrics;
use crate::platform::PlatformAddresses;
use crate::table::{Discovery, Refused, Table};

/// Settings of the `[edge]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EdgeSettings {
    /// `Host: <service>.<environment>.<domain>` is routed to that service.
    pub domain: String,
    /// Longest wait for an instance's answer headers (504 beyond); the body is then streamed
    /// for as long as it lasts (server-sent events, downloads).
    pub upstream_timeout_seconds: u64,
    /// Longest wait for a TCP connection to an instance; a failure here is retried elsewhere.
    pub connect_timeout_ms: u64,
    /// Largest request body forwarded (413 beyond). Bodies are streamed; one declared up to
    /// 64 KiB is read whole first, so an idempotent request can be sent again elsewhere.
    pub max_body_bytes: usize,
    /// Threads serving the router's listener, each with its own connections to instances;
    /// 0: one per core.
    pub workers: usize,
    /// Binds each listener thread to a core of its own when there is one thread per CPU the
    /// process may run on ([`affinity`]); elsewhere, or when `false`, the threads are left to
    /// the scheduler.
    pub pin_threads: bool,
    /// How long the registry may hold a discovery poll when nothing changed.
    pub discovery_wait_seconds: u64,
    /// How long a request that arrives before the first discovery answer (a router that just
    /// started) waits for it, milliseconds; 503 when it has not come by then. Clients whose
    /// connections queued while the gateway started are then routed, not refused.
    pub first_table_wait_ms: u64,
    /// `host:port` of the platform's own listeners: an instance at one of them is never routed.
    /// The gateway adds its own listener and its upstreams; list others here (e.g. a second
    /// gateway, or an address the upstreams are also reachable at).
    pub platform_addresses: Vec<String>,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            domain: "localhost".into(),
            upstream_timeout_seconds: 30,
            connect_timeout_ms: 1000,
            max_body_bytes: 10 * 1024 * 1024,
            workers: 0,
            pin_threads: true,
            discovery_wait_seconds: 30,
            first_table_wait_ms: 5000,
            platform_addresses: Vec::new(),
        }
    }
}

/// Why the router could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("cannot start the edge router's listener threads: {0}")]
    Serve(#[source] std::io::Error),
    #[error("cannot register the edge metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    #[error("invalid edge settings: {0}")]
    Settings(String),
}

/// The router; cheap to clone (everything is shared).
#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

struct Inner {
    /// Swapped whole on every discovery answer; readers never block.
    table: ArcSwap<Table>,
    /// `true` once a discovery answer was applied: requests that came before wait on it.
    loaded: tokio::sync::watch::Sender<bool>,
    /// `.<domain>`, lower case, for host matching.
    host_suffix: String,
    /// The registry's base URL.
    registry: String,
    /// `Authorization` with the gateway's service credential, for discovery polls only (never
    /// for proxied requests).
    credential: reqwest::header::HeaderMap,
    /// Swapped when the named listeners are resolved again.
    platform: ArcSwap<PlatformAddresses>,
    /// The refused instances already logged, so that each is logged once while it lasts.
    refused: Mutex<HashSet<Refused>>,
    settings: EdgeSettings,
    metrics: EdgeMetrics,
    /// Names this router in its discovery polls, which report the table version it serves.
    router: ReplicaId,
}

impl Edge {
    /// A router with an empty table (every request answers 503 until discovery answered once),
    /// whose metrics go to `registry` and which learns routes from the registry at
    /// `registry_url`, presenting `credential` (the gateway's).
    pub fn new(
        settings: &EdgeSettings,
        registry_url: &str,
        credential: &slipway_identity::Credential,
        registry: &prometheus::Registry,
    ) -> Result<Self, EdgeError> {
        let domain = settings.domain.trim_matches('.').to_ascii_lowercase();
        if domain.is_empty() {
            return Err(EdgeError::Settings("`edge.domain` is empty".into()));
        }
        if settings.upstream_timeout_seconds == 0 || settings.connect_timeout_ms == 0 {
            return Err(EdgeError::Settings(
                "`edge.upstream_timeout_seconds` and `edge.connect_timeout_ms` must be > 0".into(),
            ));
        }
        if !(registry_url.starts_with("http://") || registry_url.starts_with("https://")) {
            return Err(EdgeError::Settings(format!(
                "the registry URL `{registry_url}` is not an http(s) URL"
            )));
        }
        let platform =
            PlatformAddresses::parse(settings.platform_addresses.iter().map(String::as_str))
                .map_err(EdgeError::Settings)?;
        let metrics = EdgeMetrics::register(registry).map_err(EdgeError::Metrics)?;
        Ok(Self {
            inner: Arc::new(Inner {
                table: ArcSwap::from_pointee(Table::default()),
                loaded: tokio::sync::watch::Sender::new(false),
                host_suffix: format!(".{domain}"),
                registry: registry_url.trim_end_matches('/').to_owned(),
                credential: credential.headers(),
                platform: ArcSwap::from_pointee(platform),
                refused: Mutex::default(),
                settings: settings.clone(),
                metrics,
                router: ReplicaId::for_process("gateway"),
            }),
        })
    }

    /// The same router under the id `router` (the gateway's replica id, when it has one, so
    /// logs and the registry's router table name one process the same way). Call it right
    /// after [`Edge::new`]: once the router was cloned (its discovery task started) the id is
    /// fixed and this changes nothing. Without it the id is `ReplicaId::for_process("gateway")`
    /// (`SLIPWAY_REPLICA_ID`, else `gateway-<random>`).
    pub fn with_router_id(mut self, router: ReplicaId) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.router = router;
        }
        self
    }

    /// The id this router reports its table version under.
    pub fn router_id(&self) -> &ReplicaId {
        &self.inner.router
    }

    /// The discovery index of the table in use; `None` before the first answer.
    pub fn table_index(&self) -> Option<u64> {
        self.inner.table.load().index
    }

    /// Replaces the whole table with one built from `discovery` (one atomic swap).
    pub fn replace_table(&self, discovery: &Discovery) {
        let table = Table::build(discovery, &self.inner.platform.load(), &self.inner.metrics);
        self.log_refused(&table.refused);
        self.inner.metrics.table_index.set(discovery.index as i64);
        self.inner.table.store(Arc::new(table));
        self.inner.loaded.send_replace(true);
    }

    /// The table in use, once discovery answered: waits up to `edge.first_table_wait_ms` for
    /// the first answer; `None` when it has not come by then.
    pub(crate) async fn loaded_table(&self) -> Option<Arc<Table>> {
        let table = self.inner.table.load_full();
        if table.index.is_some() {
            return Some(table);
        }
        let wait = Duration::from_millis(self.inner.settings.first_table_wait_ms);
        let mut loaded = self.inner.loaded.subscribe();
        tokio::time::timeout(wait, loaded.wait_for(|l| *l))
            .await
            .ok()?
            .ok()?;
        let table = self.inner.table.load_full();
        table.index.is_some().then_some(table)
    }

    /// Looks the platform's named listeners up again (their addresses may change when a
    /// container restarts); cheap when there are none.
    pub async fn resolve_platform(&self) {
        let mut platform = PlatformAddresses::clone(&self.inner.platform.load());
        platform.resolve().await;
        self.inner.platform.store(Arc::new(platform));
    }

    /// Warns once per refused instance while it stays refused: a forged announcement must be
    /// visible, but not once per discovery answer.
    fn log_refused(&self, refused: &[Refused]) {
        let mut logged = self
            .inner
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for r in refused.iter().filter(|r| !logged.contains(*r)) {
            tracing::warn!(
                service = %r.service,
                instance = %r.instance,
                address = %r.address,
                "discovery gave an instance at one of the platform's own addresses; never routing to it"
            );
        }
        *logged = refused.iter().cloned().collect();
    }
}
