//! A span per HTTP request, continuing the caller's trace (W3C `traceparent` header).

use std::collections::HashMap;

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use tracing::Instrument;

/// Middleware: wraps the request in an `http.request` span whose parent is the incoming trace
/// context, and logs the outcome once.
pub async fn trace_request(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, Error> {
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!(
        "http.request",
        http.method = %req.method(),
        http.route = %route,
        http.status = tracing::field::Empty,
    );
    let carrier: HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            let value = req.headers().get(name)?.to_str().ok()?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect();
    slipway_telemetry::set_parent(&span, &carrier);
    let res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    span.record("http.status", status);
    if route != "/healthz" && route != "/readyz" && route != "/metrics" {
        span.in_scope(|| tracing::info!(status, "request"));
    }
    Ok(res)
}
