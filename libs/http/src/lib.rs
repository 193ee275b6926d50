//! HTTP pieces every slipway service shares.
//!
//! Layout:
//! - [`problem`]: RFC 9457 `application/problem+json` errors, and extractor configs that turn
//!   malformed JSON, paths and queries into them instead of plain-text answers.
//! - [`ops`]: `/healthz`, `/readyz` (checks supplied by the service) and `/metrics`.
//! - [`metrics`]: the Prometheus registry and per-request metrics middleware.
//! - [`trace`]: a span per request that continues the caller's W3C trace.
//! - [`lifecycle`]: binding, serving, shutdown on SIGINT/SIGTERM, draining background tasks.

pub mod lifecycle;
pub mod metrics;
pub mod ops;
pub mod problem;
pub mod trace;

pub use lifecycle::{Lifecycle, shutdown_signal};
pub use metrics::Metrics;
pub use ops::{Readiness, ReadinessCheck};
pub use problem::Problem;
