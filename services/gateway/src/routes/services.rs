//! `/v1/services`: the registry owns services; the gateway authenticates, keeps the webhook
//! secret, and forwards.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use slipway_http::Problem;
use slipway_ids::ServiceId;
use sqlx::PgPool;

use super::internal;
use crate::auth::{Caller, Role, tokens};
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
}

/// Creates the service in the registry and keeps its webhook secret. The secret is stored in
/// the same transaction that waits for the registry: if the registry refuses (409, 422) or
/// cannot be reached, the secret is rolled back and nothing remains.
async fn create(
    caller: Caller,
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    sealer: web::Data<slipway_secrets::SecretBox>,
    body: web::Json<CreateService>,
) -> Result<HttpResponse, Problem> {
    caller.require(Role::Deployer)?;
    let body = body.into_inner();
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

/// `GET /v1/services[?after=&limit=]`.
async fn list(
    caller: Caller,
    upstreams: web::Data<Upstreams>,
    req: HttpRequest,
) -> Result<HttpResponse, Problem> {
    caller.require(Role::Viewer)?;
    let query = req.query_string();
    let path = if query.is_empty() {
        "/v1/services".to_owned()
    } else {
        format!("/v1/services?{query}")
    };
    upstreams
        .registry(reqwest::Method::GET, &path, None)
        .await?
        .into_response()
}

/// `GET /v1/services/{name}`.
async fn get(
    caller: Caller,
    upstreams: web::Data<Upstreams>,
    name: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(Role::Viewer)?;
    // Names are DNS labels; anything else cannot exist, and must not reach the URL unescaped.
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Problem::not_found(format!("no service named `{name}`")));
    }
    upstreams
        .registry(reqwest::Method::GET, &format!("/v1/services/{name}"), None)
        .await?
        .into_response()
}
