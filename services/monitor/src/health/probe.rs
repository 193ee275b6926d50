//! One probe of an instance: HTTP GET (healthy on 2xx/3xx) or TCP connect, bounded by the
//! check's timeout. The result carries a short detail for people (`HTTP 503`,
//! `connection refused`, `timed out after 1000 ms`).
//!
//! A probe only ever goes to the instance's own address: that address must be an `IP:port`
//! (no name to resolve elsewhere), the URL is built from it and the check's [`ProbePath`] with
//! `Url` setters (never by pasting strings, where a path like `@169.254.169.254/` would become
//! the authority), and redirects are not followed.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::Url;
use slipway_events::deploy::{HealthCheck, ProbeKind, ProbePath};

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

/// Probes `address` (`IP:port`) once with `check`. Any other address is refused unprobed.
pub async fn probe(client: &reqwest::Client, address: &str, check: &HealthCheck) -> ProbeResult {
    let Ok(address) = address.parse::<SocketAddr>() else {
        return ProbeResult::failure(format!(
            "not probed: the instance's address `{}` is not an IP:port",
            address.escape_debug()
        ));
    };
    let timeout = Duration::from_millis(u64::from(check.timeout_ms));
    // The outer bound also covers what the inner ones do not (connect).
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

/// `http://<address><path>`: the authority is the address and nothing else.
pub fn probe_url(address: SocketAddr, path: &ProbePath) -> Url {
    let mut url = Url::parse("http://0.0.0.0/").unwrap_or_else(|_| unreachable!("a valid URL"));
    // Neither can fail on an `http` URL, which always has a host.
    let _ = url.set_ip_host(address.ip());
    let _ = url.set_port(Some(address.port()));
    url.set_path(path.path());
    url.set_query(path.query());
    url
}

async fn http(
    client: &reqwest::Client,
    address: SocketAddr,
    path: &ProbePath,
    timeout: Duration,
) -> Result<ProbeResult, ProbeError> {
    let url = probe_url(address, path);
    match client.get(url).timeout(timeout).send().await {
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

async fn tcp(address: SocketAddr) -> Result<ProbeResult, ProbeError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> ProbePath {
        ProbePath::parse(raw).unwrap()
    }

    #[test]
    fn urls_keep_the_instance_as_their_authority() {
        let v4: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let v6: SocketAddr = "[::1]:9000".parse().unwrap();
        for (address, raw, expected) in [
            (v4, "/healthz", "http://10.0.0.7:8080/healthz"),
            (v4, "/ready?deep=1", "http://10.0.0.7:8080/ready?deep=1"),
            (v4, "/", "http://10.0.0.7:8080/"),
            (v4, "/a:b/c", "http://10.0.0.7:8080/a:b/c"),
            (v6, "/healthz", "http://[::1]:9000/healthz"),
        ] {
            let url = probe_url(address, &path(raw));
            assert_eq!(url.as_str(), expected);
            assert_eq!(url.socket_addrs(|| None).unwrap(), vec![address]);
        }
    }

    #[tokio::test]
    async fn an_address_that_is_not_an_ip_and_port_is_not_probed() {
        let client = client().unwrap();
        for address in ["169.254.169.254", "metadata.internal:80", "a@b:1", ""] {
            let result = probe(&client, address, &HealthCheck::default()).await;
            assert_eq!(result.outcome, Outcome::Failure);
            assert!(
                result.detail.starts_with("not probed"),
                "{address}: {}",
                result.detail
            );
        }
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Where a redirect would send the probe. A connection made to it waits in its backlog,
        // so a non-blocking accept afterwards tells whether anyone came.
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        elsewhere.set_nonblocking(true).unwrap();
        let target = elsewhere.local_addr().unwrap();
        let instance = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = instance.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut stream, _) = instance.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 302 Found\r\nlocation: http://{target}/latest\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        });
        let result = probe(&client().unwrap(), &address, &HealthCheck::default()).await;
        assert_eq!(
            (result.outcome, result.detail.as_str()),
            (Outcome::Success, "HTTP 302")
        );
        let came = elsewhere.accept();
        assert!(
            came.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "the redirect was followed: {came:?}"
        );
    }
}
