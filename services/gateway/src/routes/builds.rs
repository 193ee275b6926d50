//! Builds: request one on demand (`POST /v1/services/{name}/builds`), read them, cancel them.
//! The builder owns builds; the gateway forwards, and answers for a build it accepted that no
//! builder has picked up yet from its own `operations` record.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use slipway_events::slipway::BuildTrigger;
use slipway_http::Problem;
use slipway_ids::BuildId;
use sqlx::PgPool;

use crate::auth::{Caller, Scoped};
use crate::commands;
use crate::upstream::{Upstream, Upstreams};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/services/{name}/builds", web::post().to(create))
        .route("/services/{name}/builds", web::get().to(list))
        .route("/builds/{id}", web::get().to(get))
        .route("/builds/{id}/cancel", web::post().to(cancel));
}

/// The gateway's record of an accepted build, as a build answer (`status: requested`).
pub(crate) async fn requested(
    pool: &PgPool,
    id: BuildId,
) -> Result<Option<serde_json::Value>, Problem> {
    let row: Option<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT service_name, trigger, created_at FROM operations WHERE id = $1 AND kind = 'build'",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(|e| super::internal("read operation", e))?;
    Ok(row.map(|(service, trigger, at)| {
        serde_json::json!({
            "id": id, "service_name": service, "trigger_kind": trigger,
            "status": "requested", "queued_at": at,
        })
    }))
}

/// `GET /v1/builds/{id}`.
async fn get(
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    id: web::Path<BuildId>,
) -> Result<HttpResponse, Problem> {
    let answer = upstreams
        .call(
            Upstream::Builder,
            reqwest::Method::GET,
            &format!("/v1/builds/{id}"),
            None,
        )
        .await?;
    if answer.status == actix_web::http::StatusCode::NOT_FOUND
        && let Some(build) = requested(&pool, *id).await?
    {
        return Ok(HttpResponse::Ok().json(build));
    }
    answer.into_response()
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<u16>,
}

/// `GET /v1/services/{name}/builds`: newest first.
async fn list(
    scoped: Scoped,
    upstreams: web::Data<Upstreams>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let service = scoped.service()?;
    let limit = query.limit.unwrap_or(50);
    let path = format!("/v1/builds?service={}&limit={limit}", service.name);
    upstreams
        .call(Upstream::Builder, reqwest::Method::GET, &path, None)
        .await?
        .into_response()
}

/// `POST /v1/builds/{id}/cancel`.
async fn cancel(
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    id: web::Path<BuildId>,
) -> Result<HttpResponse, Problem> {
    let answer = upstreams
        .call(
            Upstream::Builder,
            reqwest::Method::POST,
            &format!("/v1/builds/{id}/cancel"),
            None,
        )
        .await?;
    if answer.status == actix_web::http::StatusCode::NOT_FOUND
        && requested(&pool, *id).await?.is_some()
    {
        return Err(Problem::conflict(format!(
            "build {id} is accepted but no builder has queued it yet; retry in a moment"
        )));
    }
    answer.into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBuild {
    /// A branch (`main`) or full ref (`refs/heads/main`, `refs/tags/v1`); default: the
    /// service's branch.
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    /// An exact commit (40 hex digits) to build instead of the ref's head.
    commit: Option<String>,
}

/// Checks a commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub(crate) fn valid_commit(commit: &str) -> bool {
    matches!(commit.len(), 40 | 64)
        && commit
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// `main` → `refs/heads/main`; full refs stay as they are.
fn full_ref(r: &str) -> Result<String, Problem> {
    let bad = r.is_empty()
        || r.len() > 255
        || r.contains("..")
        || r.starts_with('-')
        || !r
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    if bad {
        return Err(Problem::validation("ref", "is not a valid git ref"));
    }
    Ok(if r.starts_with("refs/") {
        r.to_owned()
    } else {
        format!("refs/heads/{r}")
    })
}

async fn create(
    caller: Caller,
    scoped: Scoped,
    pool: web::Data<PgPool>,
    body: web::Json<CreateBuild>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    if let Some(c) = &body.commit
        && !valid_commit(c)
    {
        return Err(Problem::validation(
            "commit",
            "must be 40 or 64 lowercase hex digits",
        ));
    }
    let service = scoped.service()?;
    if service.repository.is_none() {
        return Err(Problem::conflict(format!(
            "service `{}` has no repository to build from; upload the source instead",
            service.name
        )));
    }
    let git_ref = full_ref(body.git_ref.as_deref().unwrap_or(&service.branch))?;
    let trigger = BuildTrigger {
        kind: "api".into(),
        delivery: None,
        actor: Some(caller.token_name.clone()),
    };
    let id = commands::request_build(&pool, &service, git_ref, body.commit, None, trigger).await?;
    Ok(commands::accepted(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_commits_are_checked() {
        assert_eq!(full_ref("main").unwrap(), "refs/heads/main");
        assert_eq!(full_ref("refs/tags/v1").unwrap(), "refs/tags/v1");
        for bad in ["", "a..b", "-x", "has space", "a;b"] {
            assert!(full_ref(bad).is_err(), "{bad}");
        }
        assert!(valid_commit(&"a1".repeat(20)));
        assert!(!valid_commit(&"A1".repeat(20)));
        assert!(!valid_commit("abc"));
    }
}
