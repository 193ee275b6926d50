//! Matching requests to routes, and forwarding them.
//!
//! Two ways in: `Host: <service>.<env>.<domain>` proxies the whole path (registered first, with
//! a guard, so it wins over the gateway's own routes for such hosts only), and
//! `/apps/<service>/<env>/<rest>` proxies `/<rest>` with the query unchanged.
//!
//! Retries only where safe: a connect failure (refused, unreachable, connect timeout: nothing was
//! sent) is tried on another routable instance, and so is a connection that broke before any
//! answer for an idempotent method (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), e.g. a pooled
//! connection to an instance that just died; up to [`MAX_ATTEMPTS`] instances, never the same one
//! twice. A timeout, or a broken connection under a POST or PATCH, may have had its effect, so it
//! answers 504 or 502 and is never repeated.

use std::time::Instant;

use actix_web::body::{BodyStream, SizedStream};
use actix_web::dev::RequestHead;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse, ResponseError, guard};
use futures::StreamExt;
use slipway_http::Problem;

use crate::Edge;
use crate::metrics::{NO_RELEASE, code_class};

/// Methods a request of which may be repeated without changing the outcome (RFC 9110 §9.2.2).
fn idempotent(method: &reqwest::Method) -> bool {
    use reqwest::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// Instances tried for one request when connections fail.
pub const MAX_ATTEMPTS: usize = 3;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1): never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// What one HTTP worker proxies with.
struct Worker {
    edge: Edge,
    /// This worker's own pool: actix workers each run their own single-threaded runtime, and a
    /// connection is driven by the runtime that opened it, so a shared pool would make workers
    /// wait on each other's threads.
    client: reqwest::Client,
}

/// Called once per HTTP worker (actix builds the app per worker).
pub(crate) fn configure(cfg: &mut web::ServiceConfig, edge: Edge) {
    let suffix = edge.inner.host_suffix.clone();
    let client = crate::build_client(&edge.inner.settings).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot build a per-worker client; sharing the router's");
        edge.inner.client.clone()
    });
    cfg.app_data(web::Data::new(Worker { edge, client }))
        .service(
            web::resource("/{tail:.*}")
                .guard(guard::fn_guard(move |ctx| {
                    host_target(ctx.head(), &suffix).is_some()
                }))
                .to(by_host),
        )
        .service(web::resource(["/apps", "/apps/{tail:.*}"]).to(by_path));
}

/// `(service, environment)` when the request's host is `<service>.<environment><suffix>`.
fn host_target(head: &RequestHead, suffix: &str) -> Option<(String, String)> {
    let host = match head.uri.host() {
        Some(host) => host,
        None => strip_port(head.headers.get(header::HOST)?.to_str().ok()?),
    };
    split_host(host, suffix)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal never names a service; keep it whole so it does not match.
        return host;
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

fn split_host(host: &str, suffix: &str) -> Option<(String, String)> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let labels = host.strip_suffix(suffix)?;
    let (service, environment) = labels.split_once('.')?;
    let label = |s: &str| !s.is_empty() && !s.contains('.');
    (label(service) && label(environment)).then(|| (service.to_owned(), environment.to_owned()))
}

/// `(service, environment, rest)` of `/apps/<service>/<environment>[/<rest>]`.
fn path_target(path: &str) -> Option<(&str, &str, String)> {
    let after = path.strip_prefix("/apps/")?;
    let (service, after) = after.split_once('/')?;
    let (environment, rest) = match after.split_once('/') {
        Some((environment, rest)) => (environment, format!("/{rest}")),
        None => (after, "/".to_owned()),
    };
    (!service.is_empty() && !environment.is_empty()).then_some((service, environment, rest))
}

async fn by_host(
    req: HttpRequest,
    payload: web::Payload,
    worker: web::Data<Worker>,
) -> HttpResponse {
    let Some((service, environment)) = host_target(req.head(), &worker.edge.inner.host_suffix)
    else {
        // The guard matched this very request, so this cannot happen; answer sensibly anyway.
        return problem(
            &req,
            StatusCode::NOT_FOUND,
            "not-found",
            "no service in the host name".into(),
        );
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    proxy(
        &worker,
        &req,
        payload,
        &service,
        &environment,
        &path_and_query,
    )
    .await
}

async fn by_path(
    req: HttpRequest,
    payload: web::Payload,
    worker: web::Data<Worker>,
) -> HttpResponse {
    let Some((service, environment, rest)) = path_target(req.uri().path()) else {
        return problem(
            &req,
            StatusCode::NOT_FOUND,
            "not-found",
            "expected /apps/<service>/<environment>/<path>".into(),
        );
    };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest,
    };
    let (service, environment) = (service.to_owned(), environment.to_owned());
    proxy(
        &worker,
        &req,
        payload,
        &service,
        &environment,
        &path_and_query,
    )
    .await
}

fn problem(req: &HttpRequest, status: StatusCode, slug: &str, detail: String) -> HttpResponse {
    Problem::new(status, slug, detail)
        .with_instance(req.path().to_owned())
        .error_response()
}

async fn proxy(
    worker: &Worker,
    req: &HttpRequest,
    payload: web::Payload,
    service: &str,
    environment: &str,
    path_and_query: &str,
) -> HttpResponse {
    let inner = &worker.edge.inner;
    let table = inner.table.load_full();
    if table.index.is_none() {
        return problem(
            req,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the edge router has not received its routes from the registry yet".into(),
        );
    }
    let Some(route) = table.route(service, environment) else {
        return problem(
            req,
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no service `{service}` in environment `{environment}` is routed here"),
        );
    };
    let body = match read_body(payload, req, inner.settings.max_body_bytes).await {
        Ok(body) => body,
        Err(problem) => {
            return problem
                .with_instance(req.path().to_owned())
                .error_response();
        }
    };
    let Ok(method) = reqwest::Method::from_bytes(req.method().as_str().as_bytes()) else {
        return problem(
            req,
            StatusCode::BAD_REQUEST,
            "bad-request",
            "unsupported method".into(),
        );
    };
    let headers = forward_headers(req);
    let labels = [route.service.as_str(), route.environment.as_str()];
    let count = |release: &str, status: StatusCode| {
        inner
            .metrics
            .requests
            .with_label_values(&[labels[0], labels[1], release, code_class(status.as_u16())])
            .inc();
    };

    let mut tried: Vec<slipway_ids::InstanceId> = Vec::with_capacity(MAX_ATTEMPTS);
    while tried.len() < MAX_ATTEMPTS {
        let Some(choice) = route.choose(fastrand::u64(..), &tried) else {
            break;
        };
        if !tried.is_empty() {
            inner.metrics.retries.with_label_values(&labels).inc();
        }
        let release = choice.release.to_string();
        let started = Instant::now();
        let sent = worker
            .client
            .request(
                method.clone(),
                format!("{}{path_and_query}", choice.upstream.base_url),
            )
            .headers(headers.clone())
            .body(body.clone())
            .send()
            .await;
        let observe = || {
            inner
                .metrics
                .duration
                .with_label_values(&[labels[0], labels[1], release.as_str()])
                .observe(started.elapsed().as_secs_f64());
        };
        match sent {
            Ok(response) => {
                observe();
                let answer = stream_back(response);
                count(&release, answer.status());
                return answer;
            }
            Err(e) if e.is_connect() => {
                // Nothing reached the instance: safe to send the same request elsewhere.
                tracing::warn!(service, environment, instance = %choice.upstream.id, error = %e, "cannot connect to instance; trying another");
                tried.push(choice.upstream.id);
            }
            Err(e) if !e.is_timeout() && idempotent(&method) => {
                // The connection broke before any answer (typically a pooled keep-alive
                // connection to an instance that just died). An idempotent request may be
                // sent again (RFC 9110 §9.2.2), as nginx's `proxy_next_upstream error` does.
                tracing::warn!(service, environment, instance = %choice.upstream.id, error = %e, "instance connection failed before an answer; retrying an idempotent request elsewhere");
                tried.push(choice.upstream.id);
            }
            Err(e) => {
                observe();
                let (status, slug, what) = if e.is_timeout() {
                    (
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream-timeout",
                        "did not answer in time",
                    )
                } else {
                    (StatusCode::BAD_GATEWAY, "bad-gateway", "failed to answer")
                };
                tracing::warn!(service, environment, instance = %choice.upstream.id, error = %e, "instance {what}");
                count(&release, status);
                return problem(
                    req,
                    status,
                    slug,
                    format!(
                        "the instance of `{service}` in `{environment}` {what}; the request was not retried"
                    ),
                );
            }
        }
    }
    if tried.is_empty() {
        count(NO_RELEASE, StatusCode::SERVICE_UNAVAILABLE);
        return problem(
            req,
            StatusCode::SERVICE_UNAVAILABLE,
            "no-routable-instance",
            format!("`{service}` in `{environment}` has no running, healthy instance to route to"),
        );
    }
    count(NO_RELEASE, StatusCode::BAD_GATEWAY);
    problem(
        req,
        StatusCode::BAD_GATEWAY,
        "bad-gateway",
        format!(
            "could not connect to any of {} instances of `{service}` in `{environment}`",
            tried.len()
        ),
    )
}

/// The request body, whole (so a refused connection can be retried), up to `limit` bytes.
async fn read_body(
    mut payload: web::Payload,
    req: &HttpRequest,
    limit: usize,
) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| Problem::bad_request(format!("cannot read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Header names listed in `Connection` (they are hop-by-hop too), lower case.
fn connection_listed<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

fn hop_by_hop(name: &str, listed: &[String]) -> bool {
    HOP_BY_HOP.contains(&name) || name.starts_with("proxy-") || listed.iter().any(|l| l == name)
}

/// The client's headers minus hop-by-hop ones and `host`, plus the `x-forwarded-*` set. The
/// router is the first proxy a client meets, so `x-forwarded-host`/`-proto` are its own view;
/// `x-forwarded-for` is appended to; `x-request-id` is kept or created.
fn forward_headers(req: &HttpRequest) -> reqwest::header::HeaderMap {
    use reqwest::header::{HeaderMap, HeaderName as Name, HeaderValue as Value};
    let incoming = req.headers();
    let listed = connection_listed(incoming.get_all(header::CONNECTION).map(|v| v.as_bytes()));
    let mut out = HeaderMap::with_capacity(incoming.len() + 4);
    let mut forwarded_for: Vec<&str> = Vec::new();
    for (name, value) in incoming {
        let lower = name.as_str();
        if lower == "host" || hop_by_hop(lower, &listed) {
            continue;
        }
        if lower == "x-forwarded-for" {
            forwarded_for.extend(value.to_str().ok());
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            Name::from_bytes(lower.as_bytes()),
            Value::from_bytes(value.as_bytes()),
        ) {
            out.append(name, value);
        }
    }
    let peer = req.peer_addr().map(|a| a.ip().to_string());
    forwarded_for.extend(peer.as_deref());
    if let Ok(value) = Value::from_str(&forwarded_for.join(", "))
        && !forwarded_for.is_empty()
    {
        out.insert("x-forwarded-for", value);
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| incoming.get(header::HOST).map(|h| h.as_bytes()));
    if let Some(Ok(host)) = host.map(Value::from_bytes) {
        out.insert("x-forwarded-host", host);
    }
    let proto = if req.app_config().secure() {
        "https"
    } else {
        "http"
    };
    out.insert("x-forwarded-proto", Value::from_static(proto));
    if !out.contains_key("x-request-id")
        && let Ok(id) = Value::from_str(&uuid::Uuid::new_v4().to_string())
    {
        out.insert("x-request-id", id);
    }
    out
}

/// The instance's answer, headers filtered like the request's, body streamed as it arrives.
fn stream_back(response: reqwest::Response) -> HttpResponse {
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut answer = HttpResponse::build(status);
    let listed = connection_listed(
        response
            .headers()
            .get_all(reqwest::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    for (name, value) in response.headers() {
        let lower = name.as_str();
        // The length is re-stated by the body below; copying it would send it twice.
        if lower == "content-length" || hop_by_hop(lower, &listed) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            answer.append_header((name, value));
        }
    }
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return answer.finish();
    }
    match response.content_length() {
        Some(length) => answer.body(SizedStream::new(length, response.bytes_stream())),
        None => answer.body(BodyStream::new(response.bytes_stream())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_a_service_and_environment() {
        let s = ".localhost";
        let want = Some(("hello".to_owned(), "prod".to_owned()));
        assert_eq!(split_host("hello.prod.localhost", s), want);
        assert_eq!(split_host("Hello.PROD.localhost.", s), want);
        assert_eq!(split_host(strip_port("hello.prod.localhost:8080"), s), want);
        assert_eq!(split_host("prod.localhost", s), None);
        assert_eq!(split_host("a.b.c.localhost", s), None);
        assert_eq!(split_host("hello.prod.example.com", s), None);
        assert_eq!(split_host("127.0.0.1", s), None);
        assert_eq!(split_host(strip_port("[::1]:8080"), s), None);
    }

    #[test]
    fn path_prefix_is_stripped() {
        assert_eq!(
            path_target("/apps/hello/prod/x/y"),
            Some(("hello", "prod", "/x/y".to_owned()))
        );
        assert_eq!(
            path_target("/apps/hello/prod"),
            Some(("hello", "prod", "/".to_owned()))
        );
        assert_eq!(
            path_target("/apps/hello/prod/"),
            Some(("hello", "prod", "/".to_owned()))
        );
        assert_eq!(path_target("/apps/hello"), None);
        assert_eq!(path_target("/apps//prod"), None);
        assert_eq!(path_target("/apps"), None);
    }

    #[test]
    fn connection_listed_headers_are_hop_by_hop() {
        let listed = connection_listed(["close, X-Secret".as_bytes()].into_iter());
        assert!(hop_by_hop("x-secret", &listed));
        assert!(hop_by_hop("proxy-connection", &listed));
        assert!(hop_by_hop("transfer-encoding", &listed));
        assert!(!hop_by_hop("content-type", &listed));
    }
}
