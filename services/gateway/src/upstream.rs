//! Calls to the internal APIs of the other services.
//!
//! Answers pass through: an upstream's problem document (a 404, a 409, a 422) reaches the
//! client unchanged. An unreachable upstream answers 503, an upstream 5xx answers 502, and so
//! does an upstream refusing the gateway's own credential (401/403: a misconfigured
//! `[identity]`, never the client's fault, so its detail is logged, not passed on). An upstream
//! that does not answer in time (`[upstreams] timeout_seconds`, or not even accepting the
//! connection within `connect_timeout_seconds`) answers 504 naming the upstream and the call.
//!
//! Every request carries the gateway's service credential (`[identity] credential`) as
//! `Authorization: Bearer`; the client's own `Authorization` is never forwarded.
//!
//! Upstreams: the registry (services, environments, releases, instances), the builder
//! (builds), the deployer (deployments, desired state) and the monitor (health, logs).

use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde::Deserialize;
use slipway_http::Problem;
use slipway_wire::service::{Service, ServicePage};

/// Where the internal APIs are, and how long the gateway waits for them (`[upstreams]`).
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamSettings {
    /// Base URL of the registry's internal API.
    pub registry: String,
    /// Base URL of the builder's internal API.
    pub builder: String,
    /// Base URL of the deployer's internal API (deployments, desired state).
    pub deployer: String,
    /// Base URL of the monitor's internal API (health verdicts, instance logs).
    pub monitor: String,
    /// Seconds a whole call may take, connecting and reading the answer included (504 beyond).
    pub timeout_seconds: u64,
    /// Seconds to wait for a connection to be accepted (504 beyond): a host that drops packets
    /// fails fast instead of holding the client for the whole `timeout_seconds`.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
}

fn default_connect_timeout() -> u64 {
    3
}

impl UpstreamSettings {
    /// `host:port` of every upstream: the edge router must never route to them.
    pub fn addresses(&self) -> Vec<String> {
        [&self.registry, &self.builder, &self.deployer, &self.monitor]
            .into_iter()
            .filter_map(|u| url::Url::parse(u).ok())
            .filter_map(|u| Some(format!("{}:{}", u.host()?, u.port_or_known_default()?)))
            .collect()
    }
}

/// Which internal API to call.
#[derive(Debug, Clone, Copy)]
pub enum Upstream {
    Registry,
    Builder,
    Deployer,
    Monitor,
}

impl Upstream {
    fn name(self) -> &'static str {
        match self {
            Upstream::Registry => "registry",
            Upstream::Builder => "builder",
            Upstream::Deployer => "deployer",
            Upstream::Monitor => "monitor",
        }
    }
}

/// The internal APIs the gateway calls.
#[derive(Clone)]
pub struct Upstreams {
    client: reqwest::Client,
    registry: String,
    builder: String,
    deployer: String,
    monitor: String,
    /// The total timeout every call has unless it sets its own (named in 504 answers).
    timeout: Duration,
}

/// An upstream's answer: status, content type and body.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    /// The `ETag` (config versions), passed on to the client.
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

/// One call, as 503/504 answers and logs name it.
struct Call<'a> {
    name: &'static str,
    method: &'a reqwest::Method,
    url: &'a str,
    path: &'a str,
    timeout: Duration,
}

/// A call that got no whole answer: why, and whether the upstream may have acted on it.
#[derive(Debug)]
pub struct Failed {
    pub problem: Problem,
    /// The request never left the gateway (no connection was made), so the upstream did
    /// nothing; otherwise it may have done what was asked and only its answer was lost.
    pub not_sent: bool,
}

impl From<Failed> for Problem {
    fn from(failed: Failed) -> Self {
        failed.problem
    }
}

impl Call<'_> {
    fn failure(&self, e: &reqwest::Error) -> Failed {
        Failed {
            problem: self.failed(e),
            not_sent: e.is_connect(),
        }
    }

    /// The problem for a call that failed before a whole answer arrived: 504 when it ran out
    /// of time (connecting or waiting), 503 when the upstream could not be reached at all or
    /// dropped the connection.
    fn failed(&self, e: &reqwest::Error) -> Problem {
        let Call {
            name,
            method,
            url,
            path,
            timeout,
        } = self;
        if e.is_timeout() || (e.is_connect() && is_connect_timeout(e)) {
            tracing::error!(error = %e, %url, %method, "{name} timed out");
            let what = if e.is_connect() {
                "did not accept the connection in time".to_owned()
            } else {
                format!("did not answer within {} s", timeout.as_secs_f32())
            };
            return Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                format!("the {name} {what} ({method} {path}); retry shortly"),
            );
        }
        tracing::error!(error = %e, %url, %method, "{name} unreachable");
        Problem::unavailable(format!("the {name} is unreachable; retry shortly"))
    }
}

/// Whether a connect error is reqwest's connect timeout: it reports those as connect errors
/// whose source chain says "timed out" rather than as timeouts.
fn is_connect_timeout(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if err.to_string().contains("timed out") {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        source = err.source();
    }
    false
}

impl Answer {
    async fn read(response: reqwest::Response, call: &Call<'_>) -> Result<Self, Problem> {
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                return call.failed(&e);
            }
            let name = call.name;
            tracing::error!(error = %e, url = %call.url, "{name} answer cut short");
            Problem::unavailable(format!("the {name}'s answer was cut short; retry"))
        })?;
        Ok(Self {
            status,
            content_type,
            etag,
            body: body.to_vec(),
        })
    }

    /// The answer as the gateway's own response.
    pub fn into_response(self) -> Result<HttpResponse, Problem> {
        if self.status.is_server_error() || self.refused_the_gateway() {
            tracing::error!(status = %self.status, body = %String::from_utf8_lossy(&self.body), "upstream failed");
            return Err(Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream",
                "an internal service failed to answer; it has been logged",
            ));
        }
        let mut response = HttpResponse::build(self.status);
        response.content_type(self.content_type);
        if let Some(etag) = self.etag {
            response.insert_header(("etag", etag));
        }
        Ok(response.body(self.body))
    }

    /// 401/403 from an internal API: upstreams authorise services, not people (the gateway
    /// checked the person already), so this is the gateway's own credential refused.
    fn refused_the_gateway(&self) -> bool {
        matches!(
            self.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        )
    }

    pub fn json(&self) -> Result<serde_json::Value, Problem> {
        self.parse()
    }

    /// The body as `T`; 502 when it is not one.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Problem> {
        serde_json::from_slice(&self.body).map_err(|e| {
            tracing::error!(error = %e, "upstream answered unexpected JSON");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream",
                "an internal service answered unexpectedly; it has been logged",
            )
        })
    }

    /// The JSON body of a 2xx answer; anything else is an upstream failure.
    pub fn ok_json(self) -> Result<serde_json::Value, Problem> {
        self.ok()?.json()
    }

    /// This answer if it is a 2xx; anything else is an upstream failure (502).
    pub fn ok(self) -> Result<Self, Problem> {
        if !self.status.is_success() {
            tracing::error!(status = %self.status, body = %String::from_utf8_lossy(&self.body), "unexpected upstream answer");
            return Err(bad_upstream("answer", self.status));
        }
        Ok(self)
    }
}

impl Upstreams {
    pub fn new(
        settings: &UpstreamSettings,
        credential: &slipway_runtime::Credential,
    ) -> Result<Self, String> {
        let base = |name: &str, url: &str| {
            let url = url.trim_end_matches('/').to_owned();
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(url)
            } else {
                Err(format!("upstreams.{name} `{url}` must be an http(s) URL"))
            }
        };
        if settings.timeout_seconds == 0 || settings.connect_timeout_seconds == 0 {
            return Err(
                "upstreams.timeout_seconds and upstreams.connect_timeout_seconds must be at \
                 least 1: a call without a deadline can hold a request forever"
                    .to_owned(),
            );
        }
        let registry = base("registry", &settings.registry)?;
        let builder = base("builder", &settings.builder)?;
        let deployer = base("deployer", &settings.deployer)?;
        let monitor = base("monitor", &settings.monitor)?;
        let timeout = Duration::from_secs(settings.timeout_seconds);
        let client = reqwest::Client::builder()
            // Marked sensitive: never shown by reqwest's or our Debug output.
            .default_headers(credential.headers())
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(settings.connect_timeout_seconds))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            registry,
            builder,
            deployer,
            monitor,
            timeout,
        })
    }

    /// Sends a request to the registry; `path_and_query` starts with `/`.
    pub async fn registry(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, Problem> {
        self.call(Upstream::Registry, method, path_and_query, body)
            .await
    }

    /// Sends a request to `upstream`; `path_and_query` starts with `/`.
    pub async fn call(
        &self,
        upstream: Upstream,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, Problem> {
        self.call_with(upstream, method, path_and_query, body, &[])
            .await
    }

    /// POSTs raw bytes (an upload) to `upstream`.
    pub async fn call_bytes(
        &self,
        upstream: Upstream,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> Result<Answer, Problem> {
        let url = format!("{}{path_and_query}", self.base(upstream));
        let call = Call {
            name: upstream.name(),
            method: &reqwest::Method::POST,
            url: &url,
            path: path_and_query,
            timeout: self.timeout,
        };
        let response = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .body(body)
            .send()
            .await
            .map_err(|e| call.failed(&e))?;
        Answer::read(response, &call).await
    }

    fn base(&self, upstream: Upstream) -> &str {
        match upstream {
            Upstream::Registry => &self.registry,
            Upstream::Builder => &self.builder,
            Upstream::Deployer => &self.deployer,
            Upstream::Monitor => &self.monitor,
        }
    }

    /// Like [`Upstreams::call`], passing some of the client's headers on (e.g. `If-Match`).
    pub async fn call_with(
        &self,
        upstream: Upstream,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, String)],
    ) -> Result<Answer, Problem> {
        self.send(upstream, method, path_and_query, body, headers, None)
            .await
    }

    /// A GET allowed to take `timeout` instead of the configured one: blocking queries
    /// (`?index=&wait=`) hold the answer back on purpose.
    pub async fn get_with_timeout(
        &self,
        upstream: Upstream,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<Answer, Problem> {
        self.send(
            upstream,
            reqwest::Method::GET,
            path_and_query,
            None,
            &[],
            Some(timeout),
        )
        .await
    }

    async fn send(
        &self,
        upstream: Upstream,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, String)],
        timeout: Option<Duration>,
    ) -> Result<Answer, Problem> {
        Ok(self
            .attempt(upstream, method, path_and_query, body, headers, timeout)
            .await?)
    }

    /// Like [`Upstreams::call`], but a failure says whether the request reached the upstream:
    /// for a create whose outcome must be known (see `routes/services.rs`).
    pub async fn try_call(
        &self,
        upstream: Upstream,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, Failed> {
        self.attempt(upstream, method, path_and_query, body, &[], None)
            .await
    }

    async fn attempt(
        &self,
        upstream: Upstream,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, String)],
        timeout: Option<Duration>,
    ) -> Result<Answer, Failed> {
        let url = format!("{}{path_and_query}", self.base(upstream));
        let call = Call {
            name: upstream.name(),
            method: &method,
            url: &url,
            path: path_and_query,
            timeout: timeout.unwrap_or(self.timeout),
        };
        let mut request = self.client.request(method.clone(), &url);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        for (name, value) in slipway_telemetry::current_context() {
            request = request.header(name, value);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| call.failure(&e))?;
        Answer::read(response, &call)
            .await
            .map_err(|problem| Failed {
                problem,
                not_sent: false,
            })
    }
}

impl Upstreams {
    /// The registry's service named `name`; its 404 passes through.
    pub async fn service(&self, name: &str) -> Result<Service, Problem> {
        // Names are DNS labels; anything else cannot exist, and must not reach the URL unescaped.
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(Problem::not_found(format!("no service named `{name}`")));
        }
        let answer = self
            .registry(reqwest::Method::GET, &format!("/v1/services/{name}"), None)
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Err(Problem::not_found(format!("no service named `{name}`")));
        }
        answer.ok()?.parse()
    }

    /// The services built from `repository` (any URL form of it).
    pub async fn services_by_repository(&self, repository: &str) -> Result<Vec<Service>, Problem> {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("repository", repository)
            .finish();
        let answer = self
            .registry(reqwest::Method::GET, &format!("/v1/services?{query}"), None)
            .await?;
        let page: ServicePage = answer.ok()?.parse()?;
        Ok(page.items)
    }
}

/// 502 for an upstream answer the gateway cannot use; the cause is logged, not answered.
pub(crate) fn bad_upstream(what: &str, e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "upstream {what} unreadable");
    Problem::new(
        StatusCode::BAD_GATEWAY,
        "upstream",
        "an internal service answered unexpectedly; it has been logged",
    )
}
