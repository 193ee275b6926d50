//! Prometheus metrics: one registry per process, with HTTP request metrics built in.
//!
//! Other libraries (the Kafka consumer, the outbox relay) register their own collectors on the
//! same registry, so `/metrics` shows everything the process does.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, web};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// A collector could not be registered (a name clash: a programming error).
#[derive(Debug, thiserror::Error)]
#[error("metric registration failed: {0}")]
pub struct MetricsError(pub prometheus::Error);

/// The process's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Everything `/metrics` exposes.
    pub registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
}

impl Metrics {
    /// A registry whose metrics all carry `service="<service>"`.
    pub fn new(service: &str) -> Self {
        let labels = std::iter::once(("service".to_owned(), service.to_owned())).collect();
        // Only fails on an invalid prefix or label name, which these constants are not.
        let registry = Registry::new_custom(Some("slipway".into()), Some(labels))
            .unwrap_or_else(|_| Registry::new());
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by route and status",
            ),
            &["method", "route", "status"],
        )
        .unwrap_or_else(unreachable_metric);
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency"),
            &["method", "route"],
        )
        .unwrap_or_else(unreachable_metric);
        let metrics = Self {
            registry,
            http_requests,
            http_duration,
        };
        metrics.register(Box::new(metrics.http_requests.clone()));
        metrics.register(Box::new(metrics.http_duration.clone()));
        metrics
    }

    /// Registers a collector; a duplicate registration is logged, not fatal.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::warn!(error = %e, "metric registered twice");
        }
    }

    /// A counter vector registered on this registry.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let counter =
            IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(unreachable_metric);
        self.register(Box::new(counter.clone()));
        counter
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

fn unreachable_metric<T>(e: prometheus::Error) -> T {
    // Metric names and labels here are compile-time constants checked by tests; an error means
    // a programming mistake, which must surface at start-up, not at scrape time.
    panic!("invalid metric definition: {e}")
}

/// The `method` label: one of the methods slipway's APIs use, else `other`. The method comes
/// from the caller, and anyone may send `FOO` or a random token; a label per distinct value
/// would let unauthenticated callers grow the process's memory without bound.
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// The `route` label for a request to no route.
pub const UNMATCHED: &str = "unmatched";

/// Middleware recording every request's count and latency by method (a closed set, see
/// [`method_label`]) and matched route pattern (never the raw path, so neither ids nor probing
/// callers explode the label set).
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, Error> {
    let started = Instant::now();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = method_label(req.method());
    let route = req.match_pattern().unwrap_or_else(|| UNMATCHED.into());
    let res = next.call(req).await?;
    if let Some(m) = metrics {
        let status = res.status().as_u16().to_string();
        m.http_requests
            .with_label_values(&[method, route.as_str(), status.as_str()])
            .inc();
        m.http_duration
            .with_label_values(&[method, route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_closed_set_share_one_label() {
        use actix_web::http::Method;
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        assert_eq!(method_label(&Method::TRACE), "other");
        assert_eq!(
            method_label(&Method::from_bytes(b"XYZZY").unwrap()),
            "other"
        );
        assert_eq!(method_label(&Method::from_bytes(b"get").unwrap()), "other");
    }

    #[test]
    fn renders_with_the_service_label() {
        let m = Metrics::new("registry");
        let c = m.counter_vec("events_total", "events", &["type"]);
        c.with_label_values(&["x"]).inc();
        let text = m.render();
        assert!(
            text.contains(r#"slipway_events_total{type="x",service="registry"} 1"#),
            "{text}"
        );
    }
}
