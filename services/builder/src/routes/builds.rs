//! `/v1/builds`: read builds and their output, cancel them.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use slipway_http::Problem;
use slipway_ids::BuildId;
use sqlx::PgPool;

use super::internal;
use crate::builds;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/builds", web::get().to(list))
        .route("/v1/builds/{id}", web::get().to(get))
        .route("/v1/builds/{id}/logs", web::get().to(logs))
        .route("/v1/builds/{id}/cancel", web::post().to(cancel));
}

fn not_found(id: BuildId) -> Problem {
    Problem::not_found(format!("no build with id {id}"))
}

/// The build serving request `id` (a request for a commit already built is served by that
/// build: see [`builds::enqueue`]).
async fn resolve(pool: &PgPool, id: BuildId) -> Result<BuildId, Problem> {
    builds::resolve(pool, id)
        .await
        .map_err(|e| internal("resolve build", e))
}

/// A build; read by the id of a request it serves, it says so (`reused_for`).
async fn get(pool: web::Data<PgPool>, id: web::Path<BuildId>) -> Result<HttpResponse, Problem> {
    let build = builds::get(&pool, resolve(&pool, *id).await?)
        .await
        .map_err(|e| internal("get build", e))?
        .ok_or_else(|| not_found(*id))?;
    if build.id == *id {
        return Ok(HttpResponse::Ok().json(build));
    }
    let mut answer = serde_json::to_value(&build).map_err(|e| internal("serialise build", e))?;
    if let Some(fields) = answer.as_object_mut() {
        fields.insert("reused_for".into(), serde_json::json!(*id));
    }
    Ok(HttpResponse::Ok().json(answer))
}

#[derive(Deserialize)]
struct ListQuery {
    service: String,
    limit: Option<i64>,
}

async fn list(
    pool: web::Data<PgPool>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::validation("limit", "must be between 1 and 500"));
    }
    let items = builds::list(&pool, &query.service, limit)
        .await
        .map_err(|e| internal("list builds", e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

#[derive(Deserialize)]
struct LogQuery {
    /// Lines after this sequence number (default: from the start).
    after: Option<i64>,
    limit: Option<i64>,
}

/// A page of output lines, with the build's status so a follower knows when to stop.
async fn logs(
    pool: web::Data<PgPool>,
    id: web::Path<BuildId>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = query.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(Problem::validation("limit", "must be between 1 and 10000"));
    }
    let id = resolve(&pool, *id).await?;
    // Status first: lines stored before a finished status was read are then all returned.
    let build = builds::get(&pool, id)
        .await
        .map_err(|e| internal("get build", e))?
        .ok_or_else(|| not_found(id))?;
    let lines = builds::log_lines(&pool, id, query.after.unwrap_or(-1), limit)
        .await
        .map_err(|e| internal("read logs", e))?;
    let finished = matches!(build.status.as_str(), "succeeded" | "failed" | "cancelled");
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "status": build.status,
        "finished": finished,
        "lines": lines,
    })))
}

/// Cancelling a request served by an earlier build cancels that build (there is only one).
async fn cancel(pool: web::Data<PgPool>, id: web::Path<BuildId>) -> Result<HttpResponse, Problem> {
    let build = builds::request_cancel(&pool, resolve(&pool, *id).await?)
        .await
        .map_err(|e| internal("cancel build", e))?
        .ok_or_else(|| not_found(*id))?;
    match build.status.as_str() {
        "succeeded" | "failed" => Err(Problem::conflict(format!(
            "build {} already {}; nothing to cancel",
            build.id, build.status
        ))),
        "cancelled" => Ok(HttpResponse::Ok().json(build)),
        _ => Ok(HttpResponse::Accepted().json(build)),
    }
}
