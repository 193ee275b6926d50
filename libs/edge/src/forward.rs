//! One request through the router: matching, choosing an instance, forwarding, retries.
//!
//! Retries only where safe: a connect failure (refused, unreachable, connect timeout: nothing was
//! sent), or a request hyper hands back unsent, is tried on another routable instance (a pooled
//! connection the instance had closed is first replaced by a new one to the same instance); so
//! is a connection that broke before any answer for an idempotent method (GET, HEAD, OPTIONS,
//! TRACE, PUT, DELETE) whose body was small enough to keep ([`crate::body::REPLAY_BYTES`]).
//! Up to [`MAX_ATTEMPTS`] instances, never the same one twice. A timeout, or a broken
//! connection under a POST or PATCH, may have had its effect, so it answers 504 or 502 and is
//! never repeated.
//!
//! The upstream timeout runs until the instance's answer headers; the body is then streamed for
//! as long as it lasts (server-sent events, downloads), and an `Upgrade` (WebSocket) answered
//! `101` becomes a tunnel between the two connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode as ProblemStatus;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use slipway_http::Problem;
use slipway_http::problem::PROBLEM_JSON;

use crate::Edge;
use crate::body::{self, BodyError, ReqBody, RespBody, UpstreamBody};
use crate::client;
use crate::headers;
use crate::pool::{self, Lease};
use crate::table::Route;
use crate::target::{self, Target};

/// Instances tried for one request when connections fail.
pub const MAX_ATTEMPTS: usize = 3;

/// What one router thread serves with.
pub(crate) struct Worker {
    pub edge: Edge,
    /// `host:port` of the gateway's own API (everything that is not the router's).
    pub fallback: Option<Box<str>>,
}

/// Methods a request of which may be repeated without changing the outcome (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

pub(crate) async fn handle(
    worker: Rc<Worker>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let inner = &worker.edge.inner;
    let target = target::of(&parts, &inner.host_suffix);
    let (service, environment, rest) = match &target {
        Target::Gateway => return Ok(to_gateway(&worker, parts, incoming).await),
        Target::BadPath => {
            return Ok(problem(
                &parts.uri,
                StatusCode::NOT_FOUND,
                "not-found",
                "expected /apps/<service>/<environment>/<path>".into(),
            ));
        }
        Target::Host(service, environment) => (service.as_str(), environment.as_str(), None),
        Target::Path(service, environment, rest) => (*service, *environment, Some(*rest)),
    };
    // A router that just started waits (bounded) for its first table rather than refusing.
    let Some(table) = worker.edge.loaded_table().await else {
        return Ok(problem(
            &parts.uri,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the edge router has not received its routes from the registry yet".into(),
        ));
    };
    let Some(route) = table.route(service, environment) else {
        return Ok(unknown(&parts.uri, service, environment));
    };
    let path_and_query = match rest {
        None => parts.uri.path_and_query().cloned(),
        Some(rest) => match parts.uri.query() {
            Some(query) => PathAndQuery::try_from(format!("{rest}?{query}")),
            None => PathAndQuery::try_from(rest),
        }
        .ok(),
    };
    Ok(proxy(&worker.edge, route, peer, parts, incoming, path_and_query).await)
}

fn unknown(uri: &Uri, service: &str, environment: &str) -> Response<RespBody> {
    problem(
        uri,
        StatusCode::NOT_FOUND,
        "not-found",
        format!("no service `{service}` in environment `{environment}` is routed here"),
    )
}

/// A problem document answered by the router itself.
fn problem(uri: &Uri, status: StatusCode, slug: &str, detail: String) -> Response<RespBody> {
    let status_code =
        ProblemStatus::from_u16(status.as_u16()).unwrap_or(ProblemStatus::BAD_GATEWAY);
    let document = Problem::new(status_code, slug, detail).with_instance(uri.path().to_owned());
    let body = serde_json::to_vec(&document).unwrap_or_default();
    let mut response = Response::new(RespBody::Full(Some(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn proxy(
    edge: &Edge,
    route: &Route,
    peer: SocketAddr,
    mut parts: http::request::Parts,
    incoming: Incoming,
    path_and_query: Option<PathAndQuery>,
) -> Response<RespBody> {
    let settings = &edge.inner.settings;
    let uri = parts.uri.clone();
    let limit = settings.max_body_bytes as u64;
    let declared = declared_length(&parts.headers);
    if declared.is_some_and(|len| len > limit) {
        return too_large(&uri, limit);
    }
    let upgrade = headers::is_upgrade(&parts.headers);
    let (body, over) = if http_body::Body::is_end_stream(&incoming) {
        (ReqBody::empty(), None)
    } else if declared.is_some_and(|len| len <= body::REPLAY_BYTES) {
        match body::read_whole(incoming, limit).await {
            Ok(bytes) => (ReqBody::Full(Some(bytes)), None),
            Err(BodyError::TooLarge(_)) => return too_large(&uri, limit),
            Err(e) => {
                return problem(&uri, StatusCode::BAD_REQUEST, "bad-request", e.to_string());
            }
        }
    } else {
        let (body, over) = ReqBody::stream(incoming, Some(limit));
        (body, Some(over))
    };

    let mut client_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let host = match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => parts.headers.remove(header::HOST),
    };
    parts.headers.remove(header::HOST);
    headers::add_forwarded(&mut parts.headers, peer.ip(), host);
    parts.uri = Uri::from(path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/")));
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();

    let request = Request::from_parts(parts, body);
    // The router's own client only borrows the request, which is still whole after a failure;
    // hyper's client takes it, so for that one a copy is kept to send again after a broken
    // connection (idempotent, body in memory).
    let own_client = client::fits(&request, upgrade);
    let replay = (!own_client && idempotent(request.method()))
        .then(|| request.body().replay())
        .flatten()
        .map(|copy| {
            (
                request.method().clone(),
                request.uri().clone(),
                request.headers().clone(),
                copy,
            )
        });
    let replayable = replay.is_some() || (own_client && idempotent(request.method()));
    let mut pending = Some(request);
    let (service, environment) = (route.service.as_str(), route.environment.as_str());
    let mut tried: Vec<slipway_ids::InstanceId> = Vec::new();
    let connect = Duration::from_millis(settings.connect_timeout_ms);
    let deadline = Duration::from_secs(settings.upstream_timeout_seconds);
    while tried.len() < MAX_ATTEMPTS {
        let Some(choice) = route.choose(fastrand::u64(..), &tried) else {
            break;
        };
        let Some(mut request) = pending.take().or_else(|| {
            replay.as_ref().and_then(|(method, uri, headers, body)| {
                let mut request = Request::new(body.replay()?);
                *request.method_mut() = method.clone();
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = headers.clone();
                Some(request)
            })
        }) else {
            break;
        };
        if !tried.is_empty() {
            route.metrics.retries.inc();
        }
        request
            .headers_mut()
            .insert(header::HOST, choice.upstream.host.clone());
        let started = Instant::now();
        let address = &choice.upstream.address;
        let sent = if own_client {
            let sent = client::exchange(address, &request, connect, deadline).await;
            // Kept for another instance, if this one fails in a way that allows it.
            pending = Some(request);
            sent
        } else {
            exchange(address, request, connect, Some(deadline), upgrade)
                .await
                .map(|(response, lease)| answer(response, lease, upgrade, client_upgrade.take()))
        };
        let instance = choice.upstream.id;
        let failure = match sent {
            Ok(answer) => {
                choice
                    .metrics
                    .duration
                    .observe(started.elapsed().as_secs_f64());
                choice.metrics.answered(answer.status().as_u16());
                return answer;
            }
            Err(Failure::Unsent(request, e)) => {
                // Nothing reached the instance: safe to send the same request elsewhere.
                tracing::warn!(service, environment, %instance, error = %e, "cannot connect to instance; trying another");
                if let Some(request) = request {
                    pending = Some(*request);
                }
                tried.push(instance);
                continue;
            }
            Err(Failure::Broken(e)) if over.as_ref().is_some_and(|o| o.get()) => {
                tracing::debug!(service, environment, error = %e, "request body over the limit");
                choice.metrics.answered(413);
                return too_large(&uri, limit);
            }
            Err(Failure::Broken(e)) if replayable => {
                // The connection broke before any answer (typically a keep-alive connection
                // to an instance that just died). An idempotent request may be sent again
                // (RFC 9110 §9.2.2), as nginx's `proxy_next_upstream error` does.
                tracing::warn!(service, environment, %instance, error = %e, "instance connection failed before an answer; retrying an idempotent request elsewhere");
                tried.push(instance);
                continue;
            }
            Err(failure) => failure,
        };
        choice
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        let (status, slug, what) = match &failure {
            Failure::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "did not answer in time",
            ),
            _ => (StatusCode::BAD_GATEWAY, "bad-gateway", "failed to answer"),
        };
        tracing::warn!(service, environment, %instance, error = %failure, "instance {what}");
        choice.metrics.answered(status.as_u16());
        return problem(
            &uri,
            status,
            slug,
            format!(
                "the instance of `{service}` in `{environment}` {what}; the request was not retried"
            ),
        );
    }
    if tried.is_empty() {
        route.metrics.unrouted.answered(503);
        return problem(
            &uri,
            StatusCode::SERVICE_UNAVAILABLE,
            "no-routable-instance",
            format!("`{service}` in `{environment}` has no running, healthy instance to route to"),
        );
    }
    route.metrics.unrouted.answered(502);
    problem(
        &uri,
        StatusCode::BAD_GATEWAY,
        "bad-gateway",
        format!(
            "could not connect to any of {} instances of `{service}` in `{environment}`",
            tried.len()
        ),
    )
}

fn too_large(uri: &Uri, limit: u64) -> Response<RespBody> {
    problem(
        uri,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        format!("the request body exceeds the limit of {limit} bytes"),
    )
}

/// Why one exchange with an instance failed.
pub(crate) enum Failure {
    /// The request never left: it comes back for another instance (hyper's client hands it
    /// back; the router's own client only borrowed it).
    Unsent(Option<Box<Request<ReqBody>>>, String),
    /// The connection failed after the request (or part of it) went out, before an answer.
    Broken(String),
    Timeout,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsent(_, why) => f.write_str(why),
            Self::Broken(why) => f.write_str(why),
            Self::Timeout => f.write_str("no answer headers in time"),
        }
    }
}

/// Sends `request` to `address` (an instance, or the gateway's API) and waits for the answer
/// headers, for at most `deadline`. A pooled connection found closed is replaced by a new one.
async fn exchange(
    address: &str,
    mut request: Request<ReqBody>,
    connect: Duration,
    deadline: Option<Duration>,
    upgrade: bool,
) -> Result<(Response<Incoming>, Lease), Failure> {
    let started = tokio::time::Instant::now();
    loop {
        let mut lease = match pool::checkout(address, connect, upgrade).await {
            Ok(lease) => lease,
            Err(e) => return Err(Failure::Unsent(Some(Box::new(request)), e.to_string())),
        };
        lease.body_sent = request.body().sent();
        let sending = lease.sender.try_send_request(request);
        let sent = match deadline {
            Some(deadline) => match tokio::time::timeout_at(started + deadline, sending).await {
                Ok(sent) => sent,
                Err(_) => return Err(Failure::Timeout),
            },
            None => sending.await,
        };
        match sent {
            Ok(response) => return Ok((response, lease)),
            Err(mut e) => match e.take_message() {
                Some(unsent) if lease.reused => request = unsent,
                Some(unsent) => {
                    return Err(Failure::Unsent(
                        Some(Box::new(unsent)),
                        e.into_error().to_string(),
                    ));
                }
                None => return Err(Failure::Broken(e.into_error().to_string())),
            },
        }
    }
}

/// The instance's answer for the client: hop-by-hop headers dropped in place, the body
/// streamed; a `101` to an upgrade becomes a tunnel.
fn answer(
    response: Response<Incoming>,
    lease: Lease,
    upgrade: bool,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<RespBody> {
    let (mut parts, incoming) = response.into_parts();
    let switching = upgrade && parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(&mut parts.headers, switching);
    if switching {
        // What `hyper::upgrade::on` takes from a response; the (empty) body is not needed.
        let upstream_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        drop(incoming);
        if let (Some(client), Some(upstream)) = (client_upgrade, upstream_upgrade) {
            tokio::task::spawn_local(tunnel(client, upstream, lease));
        }
        return Response::from_parts(parts, RespBody::Full(None));
    }
    parts.extensions = http::Extensions::new();
    Response::from_parts(
        parts,
        RespBody::Upstream(UpstreamBody::new(incoming, Some(lease))),
    )
}

/// Copies bytes both ways between the client's upgraded connection and the instance's.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    // Held until the tunnel ends; the connection is never reused.
    _lease: Lease,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = hyper_util::rt::TokioIo::new(client);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

/// A request for the gateway's own API, passed on unchanged but for hop-by-hop headers: no
/// limit or timeout here (the API applies its own), upgrades and streams pass through.
async fn to_gateway(
    worker: &Worker,
    mut parts: http::request::Parts,
    incoming: Incoming,
) -> Response<RespBody> {
    let uri = parts.uri.clone();
    let Some(address) = worker.fallback.as_deref() else {
        return problem(
            &uri,
            StatusCode::NOT_FOUND,
            "not-found",
            "no such route".into(),
        );
    };
    let upgrade = headers::is_upgrade(&parts.headers);
    let client_upgrade = upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    let body = if http_body::Body::is_end_stream(&incoming) {
        ReqBody::empty()
    } else {
        ReqBody::stream(incoming, None).0
    };
    let connect = Duration::from_millis(worker.edge.inner.settings.connect_timeout_ms);
    match exchange(
        address,
        Request::from_parts(parts, body),
        connect,
        None,
        upgrade,
    )
    .await
    {
        Ok((response, lease)) => answer(response, lease, upgrade, client_upgrade),
        Err(e) => {
            tracing::error!(error = %e, "the gateway's API did not answer through the edge router");
            problem(
                &uri,
                StatusCode::BAD_GATEWAY,
                "bad-gateway",
                "the gateway's API did not answer".into(),
            )
        }
    }
}
