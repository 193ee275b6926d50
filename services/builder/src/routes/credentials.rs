//! `PUT/DELETE /v1/services/{id}/clone-credential`: set or remove the credential a service's
//! builds fetch with. Write-only: no route answers it back, and it is never logged.

use actix_web::{HttpResponse, web};
use slipway_http::Problem;
use slipway_ids::ServiceId;
use slipway_secrets::SecretBox;
use sqlx::PgPool;

use super::internal;
use crate::credentials::{self, CloneCredential};

/// Largest body accepted (a deploy key is a few KiB).
const MAX_BODY: usize = 32 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/services/{id}/clone-credential")
            .app_data(slipway_http::problem::json_config(MAX_BODY))
            .route(web::put().to(put))
            .route(web::delete().to(delete)),
    );
}

async fn put(
    pool: web::Data<PgPool>,
    sealer: web::Data<SecretBox>,
    id: web::Path<ServiceId>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, Problem> {
    let credential =
        CloneCredential::parse(&body).map_err(|e| Problem::validation(e.field, e.message))?;
    credentials::put(&pool, &sealer, *id, &credential)
        .await
        .map_err(|e| internal("store clone credential", e))?;
    tracing::info!(service.id = %id, kind = credential.kind(), "clone credential set");
    Ok(HttpResponse::NoContent().finish())
}

async fn delete(
    pool: web::Data<PgPool>,
    id: web::Path<ServiceId>,
) -> Result<HttpResponse, Problem> {
    let removed = credentials::delete(&pool, *id)
        .await
        .map_err(|e| internal("delete clone credential", e))?;
    if !removed {
        return Err(Problem::not_found(format!(
            "service {id} has no clone credential"
        )));
    }
    tracing::info!(service.id = %id, "clone credential removed");
    Ok(HttpResponse::NoContent().finish())
}
