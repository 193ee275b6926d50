//! `/v1/services`: the registry owns services; the gateway authenticates, keeps the webhook
//! secret, and forwards.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use slipway_http::Problem;
use slipway_ids::ServiceId;
use sqlx::PgPool;

use super::internal;
use crate::auth::{Caller, Scoped, tokens};
use crate::projects;
use crate::upstream::Upstreams;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/services", web::post().to(create))
        .route("/services", web::get().to(list))
        .route("/services/{name}", web::get().to(get));
}

/// `POST /v1/services`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateService {
    /// A DNS label, unique.
    name: String,
    /// Git URL builds fetch from.
    repository: Option<String>,
    /// Branch whose pushes build (default `main`).
    branch: Option<String>,
    /// The secret git webhooks are signed with; generated when absent.
    webhook_secret: Option<String>,
    /// The project it belongs to (default `default`); read by the access guard, which checks
    /// the caller's `deployer` role there.
    #[allow(dead_code)]
    project: Option<String>,
}

/// Creates the service in the registry and keeps its webhook secret. The secret is stored in
/// the same transaction that waits for the registry: if the registry refuses (409, 422) or
/// cannot be reached, the secret is rolled back and nothing remains.
async fn create(
    scoped: Scoped,
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    sealer: web::Data<slipway_secrets::SecretBox>,
    body: web::Json<CreateService>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let project = scoped.project()?;
    let mut conn = pool.acquire().await.map_err(|e| internal("acquire", e))?;
    if projects::get(&mut conn, &project)
        .await
        .map_err(|e| internal("get project", e))?
        .is_none()
    {
        return Err(Problem::not_found(format!("no project named `{project}`")));
    }
    drop(conn);
    let (secret, generated) = match body.webhook_secret {
        Some(s) if !(16..=256).contains(&s.len()) => {
            return Err(Problem::validation(
                "webhook_secret",
                "must be 16 to 256 characters",
            ));
        }
        Some(s) => (s, false),
        None => (
            tokens::generate().map_err(|e| internal("randomness", e))?,
            true,
        ),
    };
    let id = ServiceId::new();

    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    sqlx::query("INSERT INTO webhook_secrets (service_id, sealed) VALUES ($1, $2)")
        .bind(id)
        .bind(sealer.seal(&secret))
        .execute(&mut *tx)
        .await
        .map_err(|e| internal("store webhook secret", e))?;
    let request = serde_json::json!({
        "id": id,
        "name": body.name,
        "project": project,
        "repository": body.repository,
        "branch": body.branch,
    });
    let answer = upstreams
        .registry(reqwest::Method::POST, "/v1/services", Some(&request))
        .await?;
    if answer.status != actix_web::http::StatusCode::CREATED {
        // Dropping `tx` rolls the secret back.
        return answer.into_response();
    }
    tx.commit()
        .await
        .map_err(|e| internal("commit webhook secret", e))?;

    let mut service = answer.json()?;
    service["webhook_secret"] = serde_json::json!(secret);
    service["webhook_secret_generated"] = serde_json::json!(generated);
    let location = format!(
        "/v1/services/{}",
        service["name"].as_str().unwrap_or_default()
    );
    Ok(HttpResponse::Created()
        .insert_header(("location", location))
        .json(service))
}

/// `GET /v1/services[?after=&limit=&repository=]`: only services of the projects the token
/// has a role in (all, for platform admins); the registry filters, so pages stay full.
async fn list(
    caller: Caller,
    upstreams: web::Data<Upstreams>,
    req: HttpRequest,
) -> Result<HttpResponse, Problem> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        // The filter is the gateway's to set, never the client's.
        if key != "project" {
            query.append_pair(&key, &value);
        }
    }
    if let Some(visible) = caller.visible_projects() {
        if visible.is_empty() {
            return Ok(HttpResponse::Ok().json(serde_json::json!({ "items": [], "next": null })));
        }
        for project in visible {
            query.append_pair("project", project.as_str());
        }
    }
    let path = format!("/v1/services?{}", query.finish());
    upstreams
        .registry(reqwest::Method::GET, &path, None)
        .await?
        .into_response()
}

/// `GET /v1/services/{name}`.
async fn get(
    upstreams: web::Data<Upstreams>,
    name: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    // Names are DNS labels; anything else cannot exist, and must not reach the URL unescaped.
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Problem::not_found(format!("no service named `{name}`")));
    }
    upstreams
        .registry(reqwest::Method::GET, &format!("/v1/services/{name}"), None)
        .await?
        .into_response()
}
