//! `/v1/services`: the registry owns services; the gateway authenticates, keeps the webhook
//! secret, and forwards.
//!
//! Creating is safe to retry (see `creations.rs`): the creation and its sealed secret are
//! committed before the registry is called, under the id the gateway chose.
//! - With `Idempotency-Key: <key>`, the same token sending the same key and body gets the same
//!   answer, secret included, for `retention.creations_hours`, whether the first attempt
//!   completed or its answer was lost; the same key with another body is a 422.
//! - Without one, a retry of the same body by the same token completes a creation whose answer
//!   was lost; once a creation has answered 201, a retry is a 409 like any taken name.
//! - Whatever was lost, a project admin can rotate the secret
//!   (`POST /v1/services/{name}/webhook-secret`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use slipway_http::Problem;
use slipway_ids::ServiceId;
use slipway_secrets::SecretBox;
use slipway_wire::service::{CreateService as RegistryCreate, Service};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use super::internal;
use crate::auth::{Caller, Scoped, tokens};
use crate::creations::{self, Creation, IdempotencyKey, Request};
use crate::projects;
use crate::upstream::{Upstream, Upstreams};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/services", web::post().to(create))
        .route("/services", web::get().to(list))
        .route("/services/{name}", web::get().to(get))
        .route("/services/{name}/webhook-secret", web::post().to(rotate));
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

/// The `Idempotency-Key` header, if sent; 400 when malformed.
fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, Problem> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(IdempotencyKey::parse)
        .map(Some)
        .ok_or_else(|| {
            Problem::bad_request("`Idempotency-Key` must be 1 to 255 visible ASCII characters")
        })
}

/// Creates the service in the registry and keeps its webhook secret; safe to retry (above).
async fn create(
    req: HttpRequest,
    caller: Caller,
    scoped: Scoped,
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    sealer: web::Data<SecretBox>,
    body: web::Json<CreateService>,
) -> Result<HttpResponse, Problem> {
    let key = idempotency_key(&req)?;
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
    if let Some(s) = &body.webhook_secret
        && !(16..=256).contains(&s.len())
    {
        return Err(Problem::validation(
            "webhook_secret",
            "must be 16 to 256 characters",
        ));
    }
    let request = Request {
        project: &project,
        name: &body.name,
        repository: body.repository.as_deref(),
        branch: body.branch.as_deref(),
        secret_given: body.webhook_secret.is_some(),
    };
    let given = body.webhook_secret.as_deref();
    let creation = match earlier(&pool, &sealer, &caller, key.as_ref(), &request, given).await? {
        Some(creation) => creation,
        None => {
            let (secret, generated) = match given {
                Some(s) => (s.to_owned(), false),
                None => (
                    tokens::generate().map_err(|e| internal("randomness", e))?,
                    true,
                ),
            };
            let new = creations::New {
                service_id: ServiceId::new(),
                token: caller.token_id,
                key: key.as_ref(),
                request: &request,
                secret: &secret,
                secret_generated: generated,
            };
            let started = creations::start(&pool, &sealer, &new)
                .await
                .map_err(|e| internal("record service creation", e))?;
            if started {
                Creation {
                    service_id: new.service_id,
                    request_sha256: request.sha256(),
                    secret_generated: generated,
                    answer: None,
                }
            } else {
                // A concurrent attempt with the same key recorded first: follow it.
                earlier(&pool, &sealer, &caller, key.as_ref(), &request, given)
                    .await?
                    .ok_or_else(Problem::internal)?
            }
        }
    };
    if let Some(answer) = &creation.answer {
        return created(&pool, &sealer, &creation, answer.clone(), true).await;
    }
    let service = match register(&pool, &upstreams, &creation, &body, &project).await? {
        Registered::Done(service) => service,
        Registered::Refused(answer) => return Ok(answer),
    };
    let answer = serde_json::to_value(&service).map_err(|e| internal("serialise service", e))?;
    creations::complete(&pool, creation.service_id, &answer)
        .await
        .map_err(|e| internal("complete service creation", e))?;
    tracing::info!(service.id = %service.id, service.name = %service.name, "service created");
    created(&pool, &sealer, &creation, answer, false).await
}

/// The creation an earlier attempt of this request started, if any: by key when one was sent
/// (422 when that key was used for another request), else the same token's unfinished
/// creation of the same request.
async fn earlier(
    pool: &PgPool,
    sealer: &SecretBox,
    caller: &Caller,
    key: Option<&IdempotencyKey>,
    request: &Request<'_>,
    given: Option<&str>,
) -> Result<Option<Creation>, Problem> {
    let sha = request.sha256();
    let found = match key {
        Some(key) => creations::by_key(pool, caller.token_id, key).await,
        None => creations::in_flight(pool, caller.token_id, request.name, &sha).await,
    }
    .map_err(|e| internal("read service creation", e))?;
    let Some(found) = found else {
        return Ok(None);
    };
    let same_secret = match given {
        None => true,
        Some(given) => creations::secret(pool, sealer, found.service_id)
            .await
            .map_err(|e| internal("read webhook secret", e))?
            .is_some_and(|stored| bool::from(stored.as_bytes().ct_eq(given.as_bytes()))),
    };
    match (found.request_sha256 == sha && same_secret, key) {
        (true, _) => Ok(Some(found)),
        (false, Some(_)) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "this Idempotency-Key was already used for a different request; use a new key for \
             a new request",
        )),
        // Another body than the unfinished one: a request of its own.
        (false, None) => Ok(None),
    }
}

/// How the registry settled a create.
enum Registered {
    /// Created, now or by an earlier attempt of this creation.
    Done(Service),
    /// Refused (a taken name, an invalid field): its answer, passed on.
    Refused(HttpResponse),
}

/// Asks the registry to create the service under the creation's id. An answer that settles it
/// (201, or a refusal) ends the creation; a lost or late answer leaves it for a retry.
async fn register(
    pool: &PgPool,
    upstreams: &Upstreams,
    creation: &Creation,
    body: &CreateService,
    project: &slipway_ids::ProjectName,
) -> Result<Registered, Problem> {
    let request = RegistryCreate {
        id: Some(creation.service_id),
        name: body.name.clone(),
        project: Some(project.to_string()),
        repository: body.repository.clone(),
        branch: body.branch.clone(),
    };
    let request = serde_json::to_value(&request).map_err(|e| internal("serialise", e))?;
    let abandon = || async {
        creations::abandon(pool, creation.service_id)
            .await
            .map_err(|e| internal("abandon service creation", e))
    };
    let answer = match upstreams
        .try_call(
            Upstream::Registry,
            reqwest::Method::POST,
            "/v1/services",
            Some(&request),
        )
        .await
    {
        Ok(answer) => answer,
        Err(failed) if failed.not_sent => {
            abandon().await?;
            return Err(failed.problem);
        }
        Err(failed) => return Err(kept(failed.problem)),
    };
    match answer.status {
        StatusCode::CREATED => answer.parse().map(Registered::Done),
        // Maybe the id is taken by this very creation: an earlier attempt reached the registry
        // and only its answer was lost.
        StatusCode::CONFLICT => match upstreams.service(&body.name).await {
            Ok(service) if service.id == creation.service_id => Ok(Registered::Done(service)),
            Ok(_) => {
                abandon().await?;
                Ok(Registered::Refused(answer.into_response()?))
            }
            Err(problem) if problem.status == StatusCode::NOT_FOUND.as_u16() => {
                abandon().await?;
                Ok(Registered::Refused(answer.into_response()?))
            }
            Err(problem) => Err(problem),
        },
        // A failing registry may have stored the service before failing: keep the creation.
        status if status.is_server_error() => answer
            .into_response()
            .map_err(kept)
            .map(Registered::Refused),
        _ => {
            abandon().await?;
            answer.into_response().map(Registered::Refused)
        }
    }
}

/// `problem`, saying that the creation is kept for a retry to complete.
fn kept(mut problem: Problem) -> Problem {
    problem.detail.push_str(
        " (the creation is kept: send the same request again, with the same Idempotency-Key \
         if it had one, to complete it)",
    );
    problem
}

/// The 201 of a creation: the registry's service with the webhook secret (shown here only,
/// and to replays of the same key).
async fn created(
    pool: &PgPool,
    sealer: &SecretBox,
    creation: &Creation,
    mut service: serde_json::Value,
    replayed: bool,
) -> Result<HttpResponse, Problem> {
    let secret = creations::secret(pool, sealer, creation.service_id)
        .await
        .map_err(|e| internal("read webhook secret", e))?
        .ok_or_else(|| internal("read webhook secret", "missing for a completed creation"))?;
    service["webhook_secret"] = serde_json::json!(secret);
    service["webhook_secret_generated"] = serde_json::json!(creation.secret_generated);
    let location = format!(
        "/v1/services/{}",
        service["name"].as_str().unwrap_or_default()
    );
    let mut response = HttpResponse::Created();
    response.insert_header(("location", location));
    if replayed {
        response.insert_header(("idempotent-replayed", "true"));
    }
    Ok(response.json(service))
}

/// `POST /v1/services/{name}/webhook-secret` (project admins): a new generated secret, shown
/// in this answer only; the old one is refused from now on. The audit log records the call.
async fn rotate(
    scoped: Scoped,
    pool: web::Data<PgPool>,
    sealer: web::Data<SecretBox>,
) -> Result<HttpResponse, Problem> {
    let service = scoped.service()?;
    let secret = tokens::generate().map_err(|e| internal("randomness", e))?;
    let rotated_at = creations::rotate(&pool, &sealer, service.id, &secret)
        .await
        .map_err(|e| internal("rotate webhook secret", e))?;
    tracing::info!(service.id = %service.id, service.name = %service.name, "webhook secret rotated");
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "id": service.id,
        "name": service.name,
        "webhook_secret": secret,
        "rotated_at": rotated_at,
    })))
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
