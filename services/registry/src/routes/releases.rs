//! `/v1/services/{name}/releases[/{n}]`: releases, newest first. `{n}` is `3` or `v3`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use slipway_http::Problem;
use sqlx::PgPool;

use super::{internal, service_id};
use crate::db::releases::{self, Release};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/services/{name}/releases", web::get().to(list))
        .route("/v1/services/{name}/releases/{number}", web::get().to(get));
}

/// A release as answered (the wire contract the deployer reads).
fn shown(r: &Release) -> slipway_wire::releases::Release {
    slipway_wire::releases::Release {
        id: r.id,
        service_id: r.service_id,
        number: r.number,
        version: r.version(),
        build_id: r.build_id,
        artifact_purl: r.artifact_purl.clone(),
        image: r.image.clone(),
        digest: r.digest.clone(),
        commit: r.commit.clone(),
        run: r.run.as_ref().map(|run| run.0.clone()),
        config: r.config.0.clone(),
        created_at: r.created_at,
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list(
    pool: web::Data<PgPool>,
    name: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::validation("limit", "must be between 1 and 500"));
    }
    let service = service_id(&pool, &name).await?;
    let items: Vec<_> = releases::list(&pool, service, limit)
        .await
        .map_err(|e| internal("list releases", e))?
        .iter()
        .map(shown)
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

async fn get(
    pool: web::Data<PgPool>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (name, number) = path.into_inner();
    let n: i32 = number.trim_start_matches('v').parse().map_err(|_| {
        Problem::not_found(format!("no release `{number}` (releases are v1, v2, ...)"))
    })?;
    let service = service_id(&pool, &name).await?;
    match releases::get(&pool, service, n)
        .await
        .map_err(|e| internal("get release", e))?
    {
        Some(r) => Ok(HttpResponse::Ok().json(shown(&r))),
        None => Err(Problem::not_found(format!(
            "service `{name}` has no release v{n}"
        ))),
    }
}
