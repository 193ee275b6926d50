//! The monitor's internal HTTP API (the gateway forwards it to users).
//!
//! - [`health`]: `GET /v1/services/{name}/health`.
//! - [`logs`]: `GET /v1/services/{name}/environments/{env}/logs`.

mod health;
mod logs;

use actix_web::web;
use slipway_http::Problem;
use slipway_runtime::ServiceCaller::Gateway;
use slipway_runtime::{AccessRules, Rule, ServiceCaller};
use sqlx::PgPool;

/// Who may call which route (deny by default): only the gateway, which authorises people.
pub const ACCESS: AccessRules = AccessRules::new(
    ServiceCaller::Monitor,
    &[
        Rule::new("/v1/services/{name}/health", &[Gateway]),
        Rule::new("/v1/services/{name}/environments/{env}/logs", &[Gateway]),
    ],
);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(health::configure).configure(logs::configure);
}

/// Logs an unexpected error and answers a sanitised 500.
use slipway_http::problem::unexpected as internal;

/// 404 unless the monitor knows a service named `name`.
async fn known_service(pool: &PgPool, name: &str) -> Result<(), Problem> {
    match crate::db::service_known(pool, name).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Problem::not_found(format!("no service named `{name}`"))),
        Err(e) => Err(internal("look up service", e)),
    }
}

/// An environment name given in a query: non-empty, at most 63 characters.
fn environment(value: &str, field: &str) -> Result<(), Problem> {
    if value.is_empty() || value.len() > 63 {
        return Err(Problem::validation(field, "must be 1 to 63 characters"));
    }
    Ok(())
}
