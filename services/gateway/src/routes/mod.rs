//! The public REST API (`/v1/...`). The access guard authorises every request by the rule
//! table (`auth/rules.rs`) before a handler runs; the audit middleware, around it, records
//! every mutating call, refusals included.

mod admin;
mod build_logs;
pub(crate) mod builds;
mod clone_credentials;
mod dead_letters;
mod deployments;
mod projects;
mod releases;
mod services;
mod sources;
mod webhooks;

use actix_web::{middleware, web};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .wrap(middleware::from_fn(crate::auth::guard::guard))
            .wrap(middleware::from_fn(crate::audit::record))
            .configure(services::configure)
            .configure(builds::configure)
            .configure(build_logs::configure)
            .configure(releases::configure)
            .configure(deployments::configure)
            .configure(sources::configure)
            .configure(webhooks::configure)
            .configure(projects::configure)
            .configure(admin::configure)
            .configure(dead_letters::configure)
            .configure(clone_credentials::configure),
    );
}

/// Logs an unexpected error and answers a sanitised 500.
pub(crate) use slipway_http::problem::unexpected as internal;
