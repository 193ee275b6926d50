//! Platform administration: API tokens and the whole audit log (platform admins only, see
//! `auth/rules.rs`). Roles in a project are granted under `/v1/projects/{project}/grants`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use slipway_http::Problem;
use slipway_ids::{ProjectName, TokenId};
use sqlx::PgPool;

use super::internal;
use crate::audit;
use crate::auth::{Caller, Role, tokens};
use crate::projects::{self, Granted};

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
    /// A role to grant it at once: `admin`, `deployer` or `viewer`, in `project`.
    role: Option<String>,
    /// The project of `role` (default `default`).
    project: Option<String>,
    /// Whether it may act in every project and manage projects and tokens (default no).
    #[serde(default)]
    platform_admin: bool,
}

/// `POST /v1/tokens`: the token is in this answer only. The token and its grant are stored in
/// one transaction: a refused grant leaves no token behind.
async fn create_token(
    caller: Caller,
    pool: web::Data<PgPool>,
    body: web::Json<CreateToken>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let name = body.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(Problem::validation("name", "must be 1 to 100 characters"));
    }
    let role: Option<Role> = body
        .role
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: String| Problem::validation("role", e))?;
    let project = match (&body.project, role) {
        (Some(_), None) => {
            return Err(Problem::validation(
                "role",
                "is needed with `project`: the role the token gets there",
            ));
        }
        (Some(p), Some(_)) => {
            ProjectName::parse(p).map_err(|e| Problem::validation("project", e.to_string()))?
        }
        (None, _) => ProjectName::default_project(),
    };
    let token = tokens::generate().map_err(|e| internal("randomness", e))?;
    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    let mut info = tokens::insert(
        &mut tx,
        name,
        body.platform_admin,
        &token,
        Some(caller.token_id),
    )
    .await
    .map_err(|e| internal("insert token", e))?;
    if let Some(role) = role {
        let known = projects::get(&mut tx, &project)
            .await
            .map_err(|e| internal("get project", e))?;
        if known.is_none() {
            return Err(Problem::validation(
                "project",
                format!("no project named `{project}`; create it with POST /v1/projects"),
            ));
        }
        match projects::grant(&mut tx, &project, info.id, role, caller.token_id).await {
            Ok(Granted::New(_) | Granted::Changed(_)) => {}
            Ok(Granted::NoSuchToken) => return Err(internal("grant", "the new token vanished")),
            Err(e) => return Err(internal("grant", e)),
        }
        info = tokens::get(&mut tx, info.id)
            .await
            .map_err(|e| internal("read token", e))?
            .ok_or_else(|| internal("read token", "the new token vanished"))?;
    }
    tx.commit().await.map_err(|e| internal("commit", e))?;
    let mut body = serde_json::to_value(&info).map_err(|e| internal("serialise", e))?;
    body["token"] = serde_json::json!(token);
    Ok(HttpResponse::Created().json(body))
}

async fn list_tokens(pool: web::Data<PgPool>) -> Result<HttpResponse, Problem> {
    let items = tokens::list(&pool)
        .await
        .map_err(|e| internal("list tokens", e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

async fn revoke_token(
    pool: web::Data<PgPool>,
    id: web::Path<TokenId>,
) -> Result<HttpResponse, Problem> {
    if tokens::revoke(&pool, *id)
        .await
        .map_err(|e| internal("revoke", e))?
    {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(Problem::not_found(format!("no live token with id {id}")))
    }
}

/// `GET /v1/audit[?limit=]`: every project's entries and those naming none.
async fn list_audit(
    pool: web::Data<PgPool>,
    query: web::Query<audit::Query>,
) -> Result<HttpResponse, Problem> {
    let items = audit::latest(&pool, query.limit()?, None)
        .await
        .map_err(|e| internal("audit", e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}
