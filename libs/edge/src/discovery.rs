//! Follows the registry's discovery endpoint with blocking queries.
//!
//! `GET {registry}/v1/discovery?index=N&wait=30s` answers at once when the registry's index is
//! newer than `N`, else after up to `wait` with the same index. Every answer replaces the whole
//! table; an error (registry down, bad answer) keeps the last table and retries with
//! exponential backoff, so the router keeps routing on what it knew. The first failure is
//! logged as a warning, the ones after it only at debug until discovery answers again; the
//! gauge `edge_routing_table_age_seconds` says how long the table has gone unconfirmed.
//!
//! Every poll names the router ([`ROUTER_HEADER`], its `ReplicaId`) and sends the index of the
//! table it serves: the registry records that as the version this router applied, which the
//! deployer's route steps wait for.

use std::convert::Infallible;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use slipway_wire::routes::ROUTER_HEADER;

use crate::Edge;
use crate::table::Discovery;

/// First and longest pause after a failed poll.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the platform's named listeners are looked up again (see [`crate::platform`]).
const RESOLVE_EVERY: Duration = Duration::from_secs(60);

/// Why one poll failed (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("registry unreachable: {0}")]
    Request(#[source] reqwest::Error),
    #[error("registry answered {0}")]
    Status(reqwest::StatusCode),
    #[error("the registry refused the gateway's service credential ({0}): check `[identity]`")]
    Refused(reqwest::StatusCode),
    #[error("discovery answer is not the expected JSON: {0}")]
    Body(#[source] reqwest::Error),
}

impl Edge {
    /// Polls discovery until `cancel` fires; never fails (errors are retried), hence `Infallible`.
    pub async fn follow_discovery(self, cancel: CancellationToken) -> Result<(), Infallible> {
        let wait = Duration::from_secs(self.inner.settings.discovery_wait_seconds.max(1));
        let client = match reqwest::Client::builder()
            // The gateway's service credential (sensitive: never in Debug output or logs).
            .default_headers(self.inner.credential.clone())
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            // The registry may hold the request for `wait`; past that plus slack it is stuck.
            .timeout(wait + Duration::from_secs(10))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                // Only fails when the TLS backend cannot initialise; nothing to retry.
                tracing::error!(error = %e, "cannot create the discovery client; edge routes stay empty");
                cancel.cancelled().await;
                return Ok(());
            }
        };
        let url = format!("{}/v1/discovery", self.inner.registry);
        let wait_param = format!("{}s", wait.as_secs());
        let mut index: u64 = 0;
        let mut backoff = BACKOFF_MIN;
        let mut resolved_at: Option<tokio::time::Instant> = None;
        // When discovery last answered, and whether the current run of failures was logged.
        let mut confirmed_at = tokio::time::Instant::now();
        let mut failing = false;
        let router = self.inner.router.to_string();
        loop {
            if resolved_at.is_none_or(|at| at.elapsed() >= RESOLVE_EVERY) {
                self.resolve_platform().await;
                resolved_at = Some(tokio::time::Instant::now());
            }
            let started = tokio::time::Instant::now();
            let polled = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                polled = poll(&client, &url, &router, index, &wait_param) => polled,
            };
            let pause = match polled {
                Ok(answer) => {
                    backoff = BACKOFF_MIN;
                    if failing {
                        tracing::info!(
                            unconfirmed_for_s = confirmed_at.elapsed().as_secs(),
                            "discovery answers again"
                        );
                        failing = false;
                    }
                    confirmed_at = tokio::time::Instant::now();
                    self.inner.metrics.table_age.set(0);
                    let unchanged = answer.index <= index && self.table_index().is_some();
                    if !unchanged || answer.index < index {
                        tracing::info!(
                            index = answer.index,
                            routes = answer.routes.len(),
                            "edge routing table replaced"
                        );
                    }
                    if answer.index < index {
                        // The registry's index went backwards (its state was reset): follow it.
                        tracing::warn!(
                            from = index,
                            to = answer.index,
                            "discovery index went backwards"
                        );
                    }
                    self.replace_table(&answer);
                    index = answer.index;
                    // A registry answering at once with no change would make this a busy loop.
                    (unchanged && started.elapsed() < Duration::from_millis(100))
                        .then_some(BACKOFF_MIN)
                }
                Err(e) => {
                    let age = confirmed_at.elapsed();
                    self.inner
                        .metrics
                        .table_age
                        .set(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
                    if failing {
                        tracing::debug!(error = %e, retry_in_ms = backoff.as_millis() as u64, "discovery poll failed again");
                    } else {
                        // Once per outage: a warning per retry would flood the log for as long
                        // as the registry is away, saying nothing new.
                        tracing::warn!(
                            error = %e,
                            index = ?self.table_index(),
                            retry_in_ms = backoff.as_millis() as u64,
                            "discovery poll failed; serving the last routing table until it answers"
                        );
                        failing = true;
                    }
                    let pause = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    Some(pause)
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

async fn poll(
    client: &reqwest::Client,
    url: &str,
    router: &str,
    index: u64,
    wait: &str,
) -> Result<Discovery, PollError> {
    let response = client
        .get(url)
        .header(ROUTER_HEADER, router)
        .query(&[("index", index.to_string().as_str()), ("wait", wait)])
        .send()
        .await
        .map_err(PollError::Request)?;
    let status = response.status();
    if matches!(status.as_u16(), 401 | 403) {
        return Err(PollError::Refused(status));
    }
    if !status.is_success() {
        return Err(PollError::Status(status));
    }
    response.json().await.map_err(PollError::Body)
}
