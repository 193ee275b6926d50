//! The public REST API (`/v1/...`). Every route authenticates its caller; the audit middleware
//! records every mutating call.

mod admin;
mod build_logs;
pub(crate) mod builds;
mod clone_credentials;
mod deployments;
mod releases;
mod services;
mod sources;
mod webhooks;

use actix_web::{middleware, web};

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
            .configure(admin::configure)
            .configure(clone_credentials::configure),
    );
}

/// Logs an unexpected error and answers a sanitised 500.
pub(crate) use slipway_http::problem::unexpected as internal;
