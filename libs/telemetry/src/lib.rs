//! Logs and traces.
//!
//! - Logs are JSON lines on stdout (one object per event, with the span fields), filtered by
//!   `log_level` (an `EnvFilter` directive such as `info,sqlx=warn`).
//! - Traces are exported over OTLP/HTTP when `otlp_endpoint` is set, and not collected otherwise.
//! - Trace context crosses HTTP and Kafka as W3C `traceparent`/`tracestate`: [`current_context`]
//!   reads it from the current span to inject it, [`set_parent`] makes a span continue it.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Telemetry settings (section `[telemetry]`).
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub log_level: String,
    /// `json` (default) or `pretty` for humans.
    #[serde(default = "default_format")]
    pub log_format: String,
    /// OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`; traces are off when unset or empty.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
}

fn default_format() -> String {
    "json".into()
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log level `{0}`: {1}")]
    Filter(String, String),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("a global subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Flushes and stops trace export when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("trace exporter shutdown: {e}");
        }
    }
}

/// Builds the tracer provider exporting to `endpoint` (OTLP/HTTP, protobuf).
pub fn otlp_provider(service: &str, endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        // The batch processor exports from its own thread, outside Tokio: the blocking client
        // (the exporter's default with `reqwest-blocking-client`) is the one that works there.
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Installs the global subscriber and propagator. Call once, early in `main`, inside the
/// Tokio runtime (the batch exporter runs on it).
pub fn init(
    service: &'static str,
    settings: &TelemetrySettings,
) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let directive = std::env::var("RUST_LOG").unwrap_or_else(|_| settings.log_level.clone());
    let filter = EnvFilter::try_new(&directive)
        .map_err(|e| TelemetryError::Filter(directive.clone(), e.to_string()))?;

    let provider = match settings.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => Some(otlp_provider(service, endpoint)?),
        None => None,
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    if let Some(p) = &provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }

    let (json, pretty) = if settings.log_format == "pretty" {
        (None, Some(tracing_subscriber::fmt::layer()))
    } else {
        let json = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false);
        (Some(json), None)
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(json)
        .with(pretty)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInstalled(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

/// The W3C trace context of `span`: `traceparent` and, when present, `tracestate`.
/// Empty when tracing is off (no valid span context).
pub fn context_of(span: &tracing::Span) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier
}

/// The W3C trace context of the current span (see [`context_of`]).
pub fn current_context() -> HashMap<String, String> {
    context_of(&tracing::Span::current())
}

/// Makes `span` continue the trace whose context is in `carrier` (`traceparent`, `tracestate`).
/// A missing or malformed context leaves the span a new root.
pub fn set_parent(span: &tracing::Span, carrier: &HashMap<String, String>) {
    if carrier.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(carrier);
        // Fails only when the span is disabled; nothing to do then.
        let _ = span.set_parent(cx);
    }
}

/// The W3C `traceparent` of the current span, `None` when tracing is off: what a row stores
/// so that work resumed later, by any replica, continues this trace.
pub fn current_traceparent() -> Option<String> {
    current_context().remove("traceparent")
}

/// A span named `name` (its OpenTelemetry name) continuing the trace of `traceparent`, for
/// work driven long after (or in another process than) the request that asked for it: a
/// build or a deployment resumed from its stored row. `None` or a malformed value starts a new
/// trace. Enter it (or `instrument` the work with it) so that events enqueued meanwhile carry
/// its context.
pub fn span_with_parent(name: &str, traceparent: Option<&str>) -> tracing::Span {
    // A tracing span's name is fixed at compile time; `otel.name` sets the exported name.
    let span = tracing::info_span!("work", otel.name = name);
    if let Some(tp) = traceparent {
        set_parent(
            &span,
            &HashMap::from([("traceparent".to_owned(), tp.to_owned())]),
        );
    }
    span
}

#[cfg(test)]
mod tests;
