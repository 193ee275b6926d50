//! `GET /v1/services/{name}/health[?environment=E]`: the health of each instance the monitor
//! probes (or last probed, for exited ones), by environment, release and instance id.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use slipway_http::Problem;
use sqlx::PgPool;

use super::{environment, internal, known_service};
use crate::db::probes::{self, Probe};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/services/{name}/health", web::get().to(list));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    environment: Option<String>,
}

#[derive(Serialize)]
struct Item<'a> {
    instance_id: slipway_ids::InstanceId,
    environment: &'a str,
    release: i32,
    address: &'a str,
    health: &'static str,
    check: String,
    detail: &'a str,
    /// When `health` took its value.
    since: chrono::DateTime<chrono::Utc>,
    /// The incarnation the health is about.
    restarts: u32,
}

fn item(p: &Probe) -> Item<'_> {
    Item {
        instance_id: p.instance.instance_id,
        environment: &p.instance.environment,
        release: p.instance.release,
        address: &p.address,
        health: probes::health_name(p.health),
        check: p.check.describe(),
        detail: &p.detail,
        since: p.since,
        restarts: p.restarts,
    }
}

async fn list(
    pool: web::Data<PgPool>,
    name: web::Path<String>,
    query: web::Query<Query>,
) -> Result<HttpResponse, Problem> {
    if let Some(env) = &query.environment {
        environment(env, "environment")?;
    }
    known_service(&pool, &name).await?;
    let found = probes::of_service(&pool, &name, query.environment.as_deref())
        .await
        .map_err(|e| internal("list probes", e))?;
    let items: Vec<_> = found.iter().map(item).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}
