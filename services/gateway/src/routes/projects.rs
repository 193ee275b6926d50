//! `/v1/projects`: projects, the grants of roles in them, and each project's audit log.
//! Who may call what is in `auth/rules.rs`: platform admins create projects; a project's
//! admins manage its grants and read its audit entries; anyone sees the projects it has a
//! role in.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use slipway_http::Problem;
use slipway_ids::{ProjectName, TokenId};
use sqlx::PgPool;

use super::internal;
use crate::audit;
use crate::auth::{Caller, Role, Scoped};
use crate::projects::{self, Granted};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/projects", web::post().to(create))
        .route("/projects", web::get().to(list))
        .route("/projects/{project}", web::get().to(get))
        .route("/projects/{project}/grants", web::get().to(list_grants))
        .route(
            "/projects/{project}/grants/{token_id}",
            web::put().to(put_grant),
        )
        .route(
            "/projects/{project}/grants/{token_id}",
            web::delete().to(delete_grant),
        )
        .route("/projects/{project}/audit", web::get().to(project_audit));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProject {
    /// A DNS label, unique.
    name: String,
}

/// `POST /v1/projects`.
async fn create(
    caller: Caller,
    pool: web::Data<PgPool>,
    body: web::Json<CreateProject>,
) -> Result<HttpResponse, Problem> {
    let name =
        ProjectName::parse(&body.name).map_err(|e| Problem::validation("name", e.to_string()))?;
    let created = projects::create(&pool, &name, caller.token_id)
        .await
        .map_err(|e| internal("create project", e))?
        .ok_or_else(|| Problem::conflict(format!("a project named `{name}` already exists")))?;
    tracing::info!(project = %name, by = %caller.token_name, "project created");
    Ok(HttpResponse::Created()
        .insert_header(("location", format!("/v1/projects/{name}")))
        .json(created))
}

/// `GET /v1/projects`: those the token has a role in (all, for platform admins), each with
/// that role.
async fn list(caller: Caller, pool: web::Data<PgPool>) -> Result<HttpResponse, Problem> {
    let visible = caller.visible_projects();
    let items: Vec<_> = projects::list(&pool, visible.as_deref())
        .await
        .map_err(|e| internal("list projects", e))?
        .into_iter()
        .map(|p| {
            let role = caller.role_in(&p.name);
            serde_json::json!({ "name": p.name, "created_at": p.created_at, "role": role })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

/// The project the guard resolved, which must exist (only platform admins reach here for one
/// that does not: everyone else has no role in it).
async fn existing(pool: &PgPool, scoped: &Scoped) -> Result<projects::Project, Problem> {
    let name = scoped.project()?;
    let mut conn = pool.acquire().await.map_err(|e| internal("acquire", e))?;
    projects::get(&mut conn, &name)
        .await
        .map_err(|e| internal("get project", e))?
        .ok_or_else(|| Problem::not_found(format!("no project named `{name}`")))
}

/// `GET /v1/projects/{project}`.
async fn get(
    caller: Caller,
    scoped: Scoped,
    pool: web::Data<PgPool>,
) -> Result<HttpResponse, Problem> {
    let project = existing(&pool, &scoped).await?;
    let role = caller.role_in(&project.name);
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "name": project.name, "created_at": project.created_at, "role": role,
    })))
}

/// `GET /v1/projects/{project}/grants`.
async fn list_grants(scoped: Scoped, pool: web::Data<PgPool>) -> Result<HttpResponse, Problem> {
    let project = existing(&pool, &scoped).await?;
    let items = projects::grants(&pool, &project.name)
        .await
        .map_err(|e| internal("list grants", e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutGrant {
    /// `admin`, `deployer` or `viewer`.
    role: String,
}

/// A token id in the path; anything else names no token.
fn token_id(raw: &str) -> Result<TokenId, Problem> {
    raw.parse()
        .map_err(|_| Problem::not_found(format!("no live token with id `{raw}`")))
}

/// `PUT /v1/projects/{project}/grants/{token_id} {"role"}`: 201 for a new grant, 200 for a
/// changed one.
async fn put_grant(
    caller: Caller,
    scoped: Scoped,
    pool: web::Data<PgPool>,
    path: web::Path<(String, String)>,
    body: web::Json<PutGrant>,
) -> Result<HttpResponse, Problem> {
    let token = token_id(&path.1)?;
    let role: Role = body
        .role
        .parse()
        .map_err(|e: String| Problem::validation("role", e))?;
    let project = existing(&pool, &scoped).await?;
    let mut conn = pool.acquire().await.map_err(|e| internal("acquire", e))?;
    let granted = projects::grant(&mut conn, &project.name, token, role, caller.token_id)
        .await
        .map_err(|e| internal("grant", e))?;
    match granted {
        Granted::New(grant) => Ok(HttpResponse::Created().json(grant)),
        Granted::Changed(grant) => Ok(HttpResponse::Ok().json(grant)),
        Granted::NoSuchToken => Err(Problem::not_found(format!("no live token with id {token}"))),
    }
}

/// `DELETE /v1/projects/{project}/grants/{token_id}`.
async fn delete_grant(
    scoped: Scoped,
    pool: web::Data<PgPool>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let token = token_id(&path.1)?;
    let project = scoped.project()?;
    if projects::revoke(&pool, &project, token)
        .await
        .map_err(|e| internal("revoke grant", e))?
    {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(Problem::not_found(format!(
            "token {token} has no role in project `{project}`"
        )))
    }
}

/// `GET /v1/projects/{project}/audit[?limit=]`: the project's audit entries, newest first.
async fn project_audit(
    scoped: Scoped,
    pool: web::Data<PgPool>,
    query: web::Query<audit::Query>,
) -> Result<HttpResponse, Problem> {
    let project = scoped.project()?;
    let items = audit::latest(&pool, query.limit()?, Some(&project))
        .await
        .map_err(|e| internal("audit", e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}
