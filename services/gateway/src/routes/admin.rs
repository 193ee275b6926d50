//! Admin resources: API tokens and the audit log.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use slipway_http::Problem;
use slipway_ids::TokenId;
use sqlx::PgPool;

use super::internal;
use crate::audit;
use crate::auth::{Caller, Role, tokens};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/tokens", web::post().to(create_token))
        .route("/tokens", web::get().to(list_tokens))
        .route("/tokens/{id}", web::delete().to(revoke_token))
        .route("/audit", web::get().to(list_audit));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    /// What the token is for, e.g. `ci` or `alice-laptop`.
    name: String,
    /// `admin`, `deployer` or `viewer`.
    role: String,
}

/// `POST /v1/tokens`: the token is in this answer only.
async fn create_token(
    caller: Caller,
    pool: web::Data<PgPool>,
    body: web::Json<CreateToken>,
) -> Result<HttpResponse, Problem> {
    caller.require(Role::Admin)?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(Problem::validation("name", "must be 1 to 100 characters"));
    }
    let role: Role = body
        .role
        .parse()
        .map_err(|e: String| Problem::validation("role", e))?;
    let token = tokens::generate().map_err(|e| internal("randomness", e))?;
    let mut conn = pool.acquire().await.map_err(|e| internal("acquire", e))?;
    let info = tokens::insert(&mut conn, name, role, &token, Some(caller.token_id))
        .await
        .map_err(|e| internal("insert token", e))?;
    let mut body = serde_json::to_value(&info).map_err(|e| internal("serialise", e))?;
    body["token"] = serde_json::json!(token);
    Ok(HttpResponse::Created().json(body))
}

async fn list_tokens(caller: Caller, pool: web::Data<PgPool>) -> Result<HttpResponse, Problem> {
    caller.require(Role::Admin)?;
    let items = tokens::list(&pool)
        .await
        .map_err(|e| internal("list tokens", e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

async fn revoke_token(
    caller: Caller,
    pool: web::Data<PgPool>,
    id: web::Path<TokenId>,
) -> Result<HttpResponse, Problem> {
    caller.require(Role::Admin)?;
    if tokens::revoke(&pool, *id)
        .await
        .map_err(|e| internal("revoke", e))?
    {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(Problem::not_found(format!("no live token with id {id}")))
    }
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<i64>,
}

async fn list_audit(
    caller: Caller,
    pool: web::Data<PgPool>,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, Problem> {
    caller.require(Role::Admin)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::validation("limit", "must be between 1 and 1000"));
    }
    let items = audit::latest(&pool, limit)
        .await
        .map_err(|e| internal("audit", e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}
