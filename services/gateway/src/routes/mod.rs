//! The public REST API (`/v1/...`). Every route authenticates its caller; the audit middleware
//! records every mutating call.

mod admin;
mod build_logs;
pub(crate) mod builds;
mod deployments;
mod releases;
mod services;
mod sources;
mod webhooks;

use actix_web::{middleware, web};
use slipway_http::Problem;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .wrap(middleware::from_fn(crate::audit::record))
            .configure(services::configure)
            .configure(builds::configure)
            .configure(build_logs::configure)
            .configure(releases::configure)
            .configure(deployments::configure)
            .configure(sources::configure)
            .configure(webhooks::configure)
            .configure(admin::configure),
    );
}

/// Logs an unexpected error and answers a sanitised 500.
pub(crate) fn internal(context: &str, error: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %error, "{context}");
    Problem::internal()
}
