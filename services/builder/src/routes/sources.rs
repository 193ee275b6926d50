//! `POST /v1/sources?service=<name>`: accept an uploaded `.tar.gz` of a source folder, after
//! checking every entry (see `builds::archive`). The gateway then requests its build.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use slipway_http::Problem;
use sqlx::PgPool;

use super::internal;
use crate::builds::{self, archive};

/// Largest upload accepted, compressed.
pub const MAX_UPLOAD: usize = 50 * 1024 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/sources")
            .app_data(web::PayloadConfig::new(MAX_UPLOAD))
            .route(web::post().to(upload)),
    );
}

#[derive(Deserialize)]
struct UploadQuery {
    service: String,
}

async fn upload(
    pool: web::Data<PgPool>,
    query: web::Query<UploadQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let bytes = body.to_vec();
    let checked = tokio::task::spawn_blocking(move || {
        archive::inspect(&bytes, archive::Limits::default(), None).map(|summary| (summary, bytes))
    })
    .await
    .map_err(|e| internal("inspect upload", e))?;
    let (summary, bytes) = checked.map_err(|e| Problem::validation("archive", e.to_string()))?;
    let (id, sha256) = builds::store_upload(&pool, &query.service, &bytes, summary.files)
        .await
        .map_err(|e| internal("store upload", e))?;
    Ok(HttpResponse::Created().json(serde_json::json!({
        "id": id,
        "sha256": sha256,
        "files": summary.files,
        "unpacked_bytes": summary.unpacked_bytes,
    })))
}
