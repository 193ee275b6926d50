//! One probe of an instance: HTTP GET (healthy on 2xx/3xx) or TCP connect, bounded by the
//! check's timeout. The result carries a short detail for people (`HTTP 503`,
//! `connection refused`, `timed out after 1000 ms`).

use std::time::Duration;

use slipway_events::deploy::{HealthCheck, ProbeKind};

use super::machine::Outcome;

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub outcome: Outcome,
    pub detail: String,
}

impl ProbeResult {
    fn success(detail: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Success,
            detail: detail.into(),
        }
    }

    fn failure(detail: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Failure,
            detail: detail.into(),
        }
    }
}

/// The HTTP client every prober shares: pooled connections, no proxy (instances are reached
/// directly, never through whatever `HTTP_PROXY` the monitor's host has), no redirects
/// followed (a 3xx already counts as healthy, and following one could leave the instance).
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
}

/// Probes `address` (`host:port`) once with `check`.
pub async fn probe(client: &reqwest::Client, address: &str, check: &HealthCheck) -> ProbeResult {
    let timeout = Duration::from_millis(u64::from(check.timeout_ms));
    // The outer bound also covers what the inner ones do not (name resolution, connect).
    let attempt = async {
        match check.kind {
            ProbeKind::Http => http(client, address, &check.path, timeout).await,
            ProbeKind::Tcp => tcp(address).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(result)) => result,
        Ok(Err(ProbeError::Other(detail))) => ProbeResult::failure(detail),
        Err(_) | Ok(Err(ProbeError::TimedOut)) => {
            ProbeResult::failure(format!("timed out after {} ms", check.timeout_ms))
        }
    }
}

/// Why a probe failed before it saw an answer.
enum ProbeError {
    TimedOut,
    Other(String),
}

async fn http(
    client: &reqwest::Client,
    address: &str,
    path: &str,
    timeout: Duration,
) -> Result<ProbeResult, ProbeError> {
    let url = format!("http://{address}{path}");
    match client.get(&url).timeout(timeout).send().await {
        Ok(response) => {
            let status = response.status();
            let detail = format!("HTTP {}", status.as_u16());
            Ok(if status.is_success() || status.is_redirection() {
                ProbeResult::success(detail)
            } else {
                ProbeResult::failure(detail)
            })
        }
        Err(e) if e.is_timeout() => Err(ProbeError::TimedOut),
        Err(e) => Err(ProbeError::Other(describe_reqwest(&e))),
    }
}

async fn tcp(address: &str) -> Result<ProbeResult, ProbeError> {
    match tokio::net::TcpStream::connect(address).await {
        Ok(_) => Ok(ProbeResult::success("connected")),
        Err(e) => Err(ProbeError::Other(describe_io(&e))),
    }
}

/// The innermost I/O cause, said briefly (`connection refused`), else the error's chain.
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return describe_io(io);
        }
        source = s.source();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::TimedOut => "connection timed out".into(),
        K::UnexpectedEof => "connection closed before a response".into(),
        _ => format!("connection failed: {e}"),
    }
}
