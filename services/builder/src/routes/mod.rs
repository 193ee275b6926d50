//! The builder's internal HTTP API (called by the gateway, which authenticates users).

mod builds;
mod credentials;
pub mod sources;

use actix_web::web;
use slipway_runtime::ServiceCaller::Gateway;
use slipway_runtime::{AccessRules, Rule, ServiceCaller};

/// Who may call which route (deny by default): only the gateway, which authorises people.
pub const ACCESS: AccessRules = AccessRules::new(
    ServiceCaller::Builder,
    &[
        Rule::new("/v1/builds", &[Gateway]),
        Rule::new("/v1/builds/{id}", &[Gateway]),
        Rule::new("/v1/builds/{id}/logs", &[Gateway]),
        Rule::new("/v1/builds/{id}/cancel", &[Gateway]),
        Rule::new("/v1/sources", &[Gateway]),
        Rule::new("/v1/services/{id}/clone-credential", &[Gateway]),
    ],
);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(builds::configure)
        .configure(sources::configure)
        .configure(credentials::configure);
}

/// Logs an unexpected error and answers a sanitised 500.
pub(crate) use slipway_http::problem::unexpected as internal;
