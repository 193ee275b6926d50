//! The registry's HTTP API: `/v1/` is called by the gateway (which authenticates users) and by
//! the edge router (discovery); `/internal/` only by slipway's services (see [`internal`]).

mod config;
pub mod instances;
pub mod internal;
mod releases;
mod services;

use actix_web::web;
use slipway_http::Problem;

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
