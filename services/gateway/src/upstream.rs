//! Calls to the internal APIs of the other services.
//!
//! Answers pass through: an upstream's problem document (a 404, a 409, a 422) reaches the
//! client unchanged. An unreachable upstream answers 503, an upstream 5xx answers 502, and so
//! does an upstream refusing the gateway's own credential (401/403: a misconfigured
//! `[identity]`, never the client's fault, so its detail is logged, not passed on).
//!
//! Every request carries the gateway's service credential (`[identity] credential`) as
//! `Authorization: Bearer`; the client's own `Authorization` is never forwarded.
//!
//! Upstreams: the registry (services, environments, releases, instances), the builder
//! (builds), the deployer (deployments, desired state) and the monitor (health, logs).

use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use slipway_http::Problem;

use crate::startup::UpstreamSettings;

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
}

/// An upstream's answer: status, content type and body.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    /// The `ETag` (config versions), passed on to the client.
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    async fn read(response: reqwest::Response, name: &str, url: &str) -> Result<Self, Problem> {
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
            tracing::error!(error = %e, %url, "{name} answer cut short");
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
        serde_json::from_slice(&self.body).map_err(|e| {
            tracing::error!(error = %e, "upstream answered invalid JSON");
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream",
                "an internal service answered invalid JSON",
            )
        })
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
        let registry = base("registry", &settings.registry)?;
        let builder = base("builder", &settings.builder)?;
        let deployer = base("deployer", &settings.deployer)?;
        let monitor = base("monitor", &settings.monitor)?;
        let client = reqwest::Client::builder()
            // Marked sensitive: never shown by reqwest's or our Debug output.
            .default_headers(credential.headers())
            .timeout(Duration::from_secs(settings.timeout_seconds))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            registry,
            builder,
            deployer,
            monitor,
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
        let name = upstream.name();
        let url = format!("{}{path_and_query}", self.base(upstream));
        let response = self
            .client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                tracing::error!(error = %e, %url, "{name} unreachable");
                Problem::unavailable(format!("the {name} is unreachable; retry shortly"))
            })?;
        Answer::read(response, name, &url).await
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
        let name = upstream.name();
        let url = format!("{}{path_and_query}", self.base(upstream));
        let mut request = self.client.request(method, &url);
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
        let response = request.send().await.map_err(|e| {
            tracing::error!(error = %e, %url, "{name} unreachable");
            Problem::unavailable(format!("the {name} is unreachable; retry shortly"))
        })?;
        Answer::read(response, name, &url).await
    }
}

impl Upstreams {
    /// The registry's service named `name`; its 404 passes through.
    pub async fn service(&self, name: &str) -> Result<crate::commands::ServiceRef, Problem> {
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
        let value = answer.ok_json()?;
        serde_json::from_value(value).map_err(|e| bad_upstream("service", e))
    }

    /// The services built from `repository` (any URL form of it).
    pub async fn services_by_repository(
        &self,
        repository: &str,
    ) -> Result<Vec<crate::commands::ServiceRef>, Problem> {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("repository", repository)
            .finish();
        let answer = self
            .registry(reqwest::Method::GET, &format!("/v1/services?{query}"), None)
            .await?;
        let value = answer.ok_json()?;
        serde_json::from_value(value["items"].clone()).map_err(|e| bad_upstream("services", e))
    }
}

impl Answer {
    /// The JSON body of a 2xx answer; anything else is an upstream failure.
    pub fn ok_json(self) -> Result<serde_json::Value, Problem> {
        if !self.status.is_success() {
            tracing::error!(status = %self.status, body = %String::from_utf8_lossy(&self.body), "unexpected upstream answer");
            return Err(bad_upstream("answer", self.status));
        }
        self.json()
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
