//! The builder's internal HTTP API (called by the gateway, which authenticates users).

mod builds;
mod credentials;
pub mod sources;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(builds::configure)
        .configure(sources::configure)
        .configure(credentials::configure);
}

/// Logs an unexpected error and answers a sanitised 500.
pub(crate) use slipway_http::problem::unexpected as internal;
