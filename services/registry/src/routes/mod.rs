//! The registry's HTTP API: `/v1/` is called by the gateway (which authenticates users) and by
//! the edge router (discovery); `/internal/` only by slipway's services (see [`internal`]).

mod config;
pub mod instances;
pub mod internal;
mod releases;
mod services;

use actix_web::web;
use slipway_http::Problem;
use slipway_runtime::ServiceCaller::{Deployer, Gateway};
use slipway_runtime::{AccessRules, Rule, ServiceCaller};

/// Who may call which route (deny by default: a route missing here is refused to everyone).
/// The gateway forwards people's requests after authorising their token, and its edge router
/// follows discovery; the deployer reads the releases and environments it runs, and is the one
/// service that may read decrypted config.
pub const ACCESS: AccessRules = AccessRules::new(
    ServiceCaller::Registry,
    &[
        Rule::new("/v1/services", &[Gateway]),
        Rule::new("/v1/services/{name}", &[Gateway]),
        Rule::new("/v1/services/{name}/releases", &[Gateway]),
        Rule::new(
            "/v1/services/{name}/releases/{number}",
            &[Gateway, Deployer],
        ),
        Rule::new("/v1/services/{name}/environments", &[Gateway, Deployer]),
        Rule::new("/v1/services/{name}/environments/{env}", &[Gateway]),
        Rule::new("/v1/services/{name}/environments/{env}/config", &[Gateway]),
        Rule::new("/v1/services/{name}/instances", &[Gateway]),
        Rule::new("/v1/discovery", &[Gateway]),
        Rule::new(
            "/internal/v1/services/{name}/environments/{env}/config/{version}",
            &[Deployer],
        ),
        Rule::new("/internal/v1/traffic/{service_id}/{env}", &[Deployer]),
    ],
);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(services::configure)
        .configure(releases::configure)
        .configure(config::configure)
        .configure(instances::configure)
        .configure(internal::configure);
}

/// Logs an unexpected error and answers a sanitised 500.
pub(crate) use slipway_http::problem::unexpected as internal;

/// The id of the service named `name`, or 404.
pub(crate) async fn service_id(
    pool: &sqlx::PgPool,
    name: &str,
) -> Result<slipway_ids::ServiceId, Problem> {
    match crate::db::services::by_name(pool, name).await {
        Ok(Some(s)) => Ok(s.id),
        Ok(None) => Err(Problem::not_found(format!("no service named `{name}`"))),
        Err(e) => Err(internal("get service", e)),
    }
}
