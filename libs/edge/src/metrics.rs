//! The router's Prometheus collectors, on the service's registry (whose `slipway` prefix makes
//! `edge_requests_total` appear as `slipway_edge_requests_total`).

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Release label of answers that reached no instance (503: nothing routable).
pub const NO_RELEASE: &str = "none";

#[derive(Clone)]
pub struct EdgeMetrics {
    /// `{service, environment, release, code}` with `code` the class: `2xx` ... `5xx`.
    pub requests: IntCounterVec,
    /// `{service, environment, release}`: until the instance's answer headers (not the body,
    /// which is streamed and may be long-lived).
    pub duration: HistogramVec,
    /// `{service, environment}`: attempts sent to another instance after a connect failure.
    pub retries: IntCounterVec,
    /// The discovery index of the table in use.
    pub table_index: IntGauge,
    /// Seconds since discovery last answered: 0 while it does; while it cannot be reached,
    /// how long the table in use has gone unconfirmed (it keeps being served).
    pub table_age: IntGauge,
    /// `{thread}`: client connections each listener thread serves.
    pub client_connections: IntGaugeVec,
}

impl EdgeMetrics {
    /// Registers the collectors; fails on a name clash (a second router on one registry).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "edge_requests_total",
                "Requests the edge router answered, by route, release and status class",
            ),
            &["service", "environment", "release", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "edge_request_duration_seconds",
                "Time from the request to the instance's answer headers",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["service", "environment", "release"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "edge_upstream_retries_total",
                "Requests sent to another instance after a connection failure",
            ),
            &["service", "environment"],
        )?;
        let table_index = IntGauge::new(
            "edge_routing_table_index",
            "Discovery index of the routing table in use",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        let table_age = IntGauge::new(
            "edge_routing_table_age_seconds",
            "Seconds since discovery last answered (0 while it does); the table is kept meanwhile",
        )?;
        registry.register(Box::new(table_index.clone()))?;
        registry.register(Box::new(table_age.clone()))?;
        let client_connections = IntGaugeVec::new(
            Opts::new(
                "edge_client_connections",
                "Client connections each of the router's listener threads serves",
            ),
            &["thread"],
        )?;
        registry.register(Box::new(client_connections.clone()))?;
        Ok(Self {
            requests,
            duration,
            retries,
            table_index,
            table_age,
            client_connections,
        })
    }
}

/// `2xx` for 200..=299, and so on.
pub fn code_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// One release's collectors, looked up when the table is built, never per request.
#[derive(Debug, Clone)]
pub struct ReleaseMetrics {
    /// By status class: `1xx` ... `5xx` (index = first digit - 1).
    answers: [prometheus::IntCounter; 5],
    pub duration: prometheus::Histogram,
}

impl ReleaseMetrics {
    fn new(metrics: &EdgeMetrics, service: &str, environment: &str, release: &str) -> Self {
        let answers = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|code| {
            metrics
                .requests
                .with_label_values(&[service, environment, release, code])
        });
        Self {
            answers,
            duration: metrics
                .duration
                .with_label_values(&[service, environment, release]),
        }
    }

    /// Counts one answer with `status`.
    pub fn answered(&self, status: u16) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.answers[class].inc();
    }
}

/// One route's collectors: its retries and the answers that reached no release.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    pub retries: prometheus::IntCounter,
    /// Release [`NO_RELEASE`]: 503 (nothing routable) and 502 (no instance reachable).
    pub unrouted: ReleaseMetrics,
}

impl EdgeMetrics {
    /// The collectors of `release` of a route (label values resolved once).
    pub fn release(&self, service: &str, environment: &str, release: i32) -> ReleaseMetrics {
        ReleaseMetrics::new(self, service, environment, &release.to_string())
    }

    /// The collectors of a route.
    pub fn route(&self, service: &str, environment: &str) -> RouteMetrics {
        RouteMetrics {
            retries: self.retries.with_label_values(&[service, environment]),
            unrouted: ReleaseMetrics::new(self, service, environment, NO_RELEASE),
        }
    }
}
