//! The builder's internal HTTP API (called by the gateway, which authenticates users).

mod builds;
pub mod sources;

use actix_web::web;
use slipway_http::Problem;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(builds::configure)
        .configure(sources::configure);
}

/// Logs an unexpected error and answers a sanitised 500.
pub(crate) fn internal(context: &str, error: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %error, "{context}");
    Problem::internal()
}
