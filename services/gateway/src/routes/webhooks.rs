//! Git webhooks: `POST /v1/webhooks/github` and `POST /v1/webhooks/gitlab`.
//!
//! No bearer token here: a delivery proves itself with the service's webhook secret (GitHub:
//! `X-Hub-Signature-256`, an HMAC-SHA256 of the raw body; GitLab: `X-Gitlab-Token`, the secret
//! itself), both compared in constant time. The service is the one whose repository matches the
//! payload's (any URL form). A push to the service's branch requests a build of the pushed
//! commit; anything else is acknowledged and says why nothing happened.
//!
//! Every verified delivery is handled once (see [`crate::deliveries`]): a replay answers 200
//! `duplicate` and produces nothing; a delivery without a delivery id is refused.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use slipway_events::slipway::BuildTrigger;
use slipway_http::Problem;
use slipway_ids::ServiceId;
use slipway_secrets::SecretBox;
use sqlx::{PgConnection, PgPool};
use subtle::ConstantTimeEq;

use super::internal;
use crate::commands;
use crate::deliveries::{self, DeliveryId, Provider, WebhookSettings};
use crate::upstream::Upstreams;
use slipway_wire::service::Service;

/// Largest delivery accepted (GitHub caps payloads at 25 MB; pushes are far smaller).
const MAX_DELIVERY: usize = 5 * 1024 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhooks/github")
            .app_data(web::PayloadConfig::new(MAX_DELIVERY))
            .route(web::post().to(github)),
    )
    .service(
        web::resource("/webhooks/gitlab")
            .app_data(web::PayloadConfig::new(MAX_DELIVERY))
            .route(web::post().to(gitlab)),
    );
}

#[derive(Debug, Default, Deserialize)]
struct Urls {
    clone_url: Option<String>,
    html_url: Option<String>,
    ssh_url: Option<String>,
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    web_url: Option<String>,
    /// GitHub push events: Unix seconds (other events give a date string, unused here).
    pushed_at: Option<serde_json::Value>,
}

impl Urls {
    fn all(&self) -> Vec<&str> {
        [
            &self.clone_url,
            &self.html_url,
            &self.ssh_url,
            &self.git_http_url,
            &self.git_ssh_url,
            &self.web_url,
        ]
        .into_iter()
        .filter_map(|u| u.as_deref())
        .collect()
    }
}

#[derive(Debug, Deserialize)]
struct Named {
    name: Option<String>,
}

/// The parts of a GitHub `push`/`ping` or GitLab `Push Hook` payload slipway reads.
#[derive(Debug, Deserialize)]
struct Delivery {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    /// GitHub.
    repository: Option<Urls>,
    pusher: Option<Named>,
    /// GitLab.
    project: Option<Urls>,
    user_username: Option<String>,
}

impl Delivery {
    fn parse(body: &[u8]) -> Result<Self, Problem> {
        serde_json::from_slice(body).map_err(|e| {
            Problem::bad_request(format!("the delivery is not a JSON push payload: {e}"))
        })
    }

    /// When GitHub says the push happened (`repository.pushed_at`, Unix seconds).
    fn pushed_at(&self) -> Option<i64> {
        self.repository.as_ref()?.pushed_at.as_ref()?.as_i64()
    }

    fn urls(&self) -> Vec<&str> {
        let mut urls = Vec::new();
        for u in [&self.repository, &self.project].into_iter().flatten() {
            urls.extend(u.all());
        }
        urls
    }
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The registered services whose repository is the delivery's.
async fn candidates(upstreams: &Upstreams, delivery: &Delivery) -> Result<Vec<Service>, Problem> {
    let urls = delivery.urls();
    if urls.is_empty() {
        return Err(Problem::bad_request("the delivery names no repository URL"));
    }
    let mut found: Vec<Service> = Vec::new();
    for url in &urls {
        for service in upstreams.services_by_repository(url).await? {
            if !found.iter().any(|s| s.id == service.id) {
                found.push(service);
            }
        }
        if !found.is_empty() {
            break; // every URL form of one repository gives the same services
        }
    }
    if found.is_empty() {
        return Err(Problem::not_found(format!(
            "no service is registered for repository `{}`",
            urls[0]
        )));
    }
    Ok(found)
}

async fn secret(
    pool: &PgPool,
    sealer: &SecretBox,
    service: ServiceId,
) -> Result<Option<String>, Problem> {
    let sealed: Option<Option<String>> =
        sqlx::query_scalar("SELECT sealed FROM webhook_secrets WHERE service_id = $1")
            .bind(service)
            .fetch_optional(pool)
            .await
            .map_err(|e| internal("read webhook secret", e))?;
    match sealed.flatten() {
        Some(sealed) => sealer
            .open(&sealed)
            .map(Some)
            .map_err(|e| internal("open webhook secret", e)),
        None => Ok(None),
    }
}

/// Keeps the services whose secret `verify` accepts; 401 when none does.
async fn authenticated(
    pool: &PgPool,
    sealer: &SecretBox,
    services: Vec<Service>,
    verify: impl Fn(&str) -> bool,
) -> Result<Vec<Service>, Problem> {
    let mut ok = Vec::new();
    for service in services {
        if let Some(secret) = secret(pool, sealer, service.id).await?
            && verify(&secret)
        {
            ok.push(service);
        }
    }
    if ok.is_empty() {
        return Err(Problem::unauthorized(
            "the delivery's signature does not match the webhook secret of any service for this repository",
        ));
    }
    Ok(ok)
}

/// GitHub's `X-Hub-Signature-256`: `sha256=` and the hex HMAC-SHA256 of the raw body.
pub fn github_signature_ok(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok() // constant-time
}

/// What a delivery is answered (and stored as, for the answer to its replays).
struct Answer {
    status: StatusCode,
    body: serde_json::Value,
}

impl Answer {
    fn ignored(reason: String) -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            body: json!({ "status": "ignored", "reason": reason }),
        }
    }
}

/// Requests a build for every service tracking the pushed branch, in the delivery's
/// transaction; says why for the others.
async fn on_push(
    tx: &mut PgConnection,
    services: Vec<Service>,
    delivery: &Delivery,
    trigger: BuildTrigger,
) -> Result<Answer, Problem> {
    let git_ref = delivery.git_ref.clone().unwrap_or_default();
    let after = delivery.after.clone().unwrap_or_default();
    let mut builds = Vec::new();
    let mut ignored = Vec::new();
    for service in services {
        let branch = git_ref.strip_prefix("refs/heads/");
        let reason = if delivery.deleted || after.chars().all(|c| c == '0') {
            Some(format!("`{git_ref}` was deleted"))
        } else if !super::builds::valid_commit(&after) {
            Some(format!("`after` is not a commit id: `{after}`"))
        } else if branch != Some(service.branch.as_str()) {
            Some(format!(
                "`{git_ref}` is not the tracked branch (service `{}` builds `{}`)",
                service.name, service.branch
            ))
        } else {
            None
        };
        match reason {
            Some(reason) => ignored.push(json!({ "service": service.name, "reason": reason })),
            None => {
                let id = commands::request_build_in(
                    tx,
                    &service,
                    git_ref.clone(),
                    Some(after.clone()),
                    None,
                    trigger.clone(),
                )
                .await?;
                builds.push(
                    json!({ "service": service.name, "id": id, "url": format!("/v1/builds/{id}") }),
                );
            }
        }
    }
    let status = if builds.is_empty() {
        "ignored"
    } else {
        "accepted"
    };
    Ok(Answer {
        status: StatusCode::ACCEPTED,
        body: json!({ "status": status, "builds": builds, "ignored": ignored }),
    })
}

/// A delivery whose credential checked out, from one code host.
struct Verified {
    provider: Provider,
    id: DeliveryId,
    event: String,
    delivery: Delivery,
    services: Vec<Service>,
}

/// The header names a code host's delivery is read from.
struct Headers {
    event: &'static str,
    credential: &'static str,
    /// Where the delivery id may be, in order of preference.
    delivery_ids: &'static [&'static str],
}

/// What every code host's delivery goes through: its event, credential and delivery-id
/// headers, the payload, the services for its repository, and the ones whose secret
/// `check(secret, credential)` accepts.
async fn verified(
    req: &HttpRequest,
    body: &[u8],
    state: &State<'_>,
    provider: Provider,
    headers: Headers,
    check: impl Fn(&str, &str) -> bool,
) -> Result<Verified, Problem> {
    let event = header(req, &headers.event.to_ascii_lowercase())
        .ok_or_else(|| Problem::bad_request(format!("missing `{}` header", headers.event)))?
        .to_owned();
    let id = DeliveryId::from_headers(req, headers.delivery_ids)?;
    let credential = header(req, &headers.credential.to_ascii_lowercase())
        .ok_or_else(|| Problem::unauthorized(format!("missing `{}` header", headers.credential)))?
        .to_owned();
    let delivery = Delivery::parse(body)?;
    let services = candidates(state.upstreams, &delivery).await?;
    let services = authenticated(state.pool, state.sealer, services, |secret| {
        check(secret, &credential)
    })
    .await?;
    Ok(Verified {
        provider,
        id,
        event,
        delivery,
        services,
    })
}

/// A verified delivery, claimed: new (its transaction, for the commands it produces), or seen
/// before (the answer for a duplicate).
enum Claim {
    New(sqlx::Transaction<'static, sqlx::Postgres>),
    Duplicate(HttpResponse),
}

/// Claims a verified delivery (see [`deliveries::claim`]). A delivery seen before (same id or
/// same body) is answered 200 `duplicate` with what the first one made, and produces nothing.
async fn claim(pool: &PgPool, verified: &Verified, body: &[u8]) -> Result<Claim, Problem> {
    let (provider, id) = (verified.provider, &verified.id);
    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    let seen = deliveries::claim(&mut tx, provider, id, body)
        .await
        .map_err(|e| internal("claim webhook delivery", e))?;
    match seen {
        None => Ok(Claim::New(tx)),
        Some(seen) => {
            tracing::info!(
                provider = provider.as_str(),
                delivery = %id,
                first = %seen.delivery_id,
                "duplicate webhook delivery; nothing done"
            );
            Ok(Claim::Duplicate(seen.answer(id))) // dropping `tx` rolls back: nothing is written
        }
    }
}

/// Stores the claimed delivery's answer and commits it with the commands it produced.
async fn finish(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    verified: &Verified,
    answer: Answer,
) -> Result<HttpResponse, Problem> {
    deliveries::record_outcome(&mut tx, verified.provider, &verified.id, &answer.body)
        .await
        .map_err(|e| internal("record webhook delivery", e))?;
    tx.commit().await.map_err(|e| internal("commit", e))?;
    Ok(HttpResponse::build(answer.status).json(answer.body))
}

/// The shared state a delivery handler reads.
struct State<'a> {
    pool: &'a PgPool,
    upstreams: &'a Upstreams,
    sealer: &'a SecretBox,
}

async fn github(
    req: HttpRequest,
    body: web::Bytes,
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    sealer: web::Data<SecretBox>,
    settings: web::Data<WebhookSettings>,
) -> Result<HttpResponse, Problem> {
    let state = State {
        pool: &pool,
        upstreams: &upstreams,
        sealer: &sealer,
    };
    let headers = Headers {
        event: "X-GitHub-Event",
        credential: "X-Hub-Signature-256",
        delivery_ids: &["X-GitHub-Delivery"],
    };
    let v = verified(
        &req,
        &body,
        &state,
        Provider::GitHub,
        headers,
        |secret, sig| github_signature_ok(secret, &body, sig),
    )
    .await?;
    // The signed body dates a push; one older than the retention would no longer be
    // recognised by its id, so it is refused as a replay.
    if v.event == "push"
        && let Some(at) = v.delivery.pushed_at()
        && deliveries::too_old(at, chrono::Utc::now(), settings.retention())
    {
        tracing::warn!(delivery = %v.id, pushed_at = at, "stale GitHub push refused as a replay");
        let answer = Answer::ignored(format!(
            "the push is older than {} days (`repository.pushed_at`): refused as a replay",
            settings.delivery_retention_days
        ));
        return Ok(HttpResponse::build(answer.status).json(answer.body));
    }
    let mut tx = match claim(&pool, &v, &body).await? {
        Claim::New(tx) => tx,
        Claim::Duplicate(answer) => return Ok(answer),
    };
    let answer = match v.event.as_str() {
        "ping" => Answer {
            status: StatusCode::OK,
            body: json!({
                "status": "pong",
                "services": v.services.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
            }),
        },
        "push" => {
            let trigger = BuildTrigger {
                kind: "github".into(),
                delivery: Some(v.id.to_string()),
                actor: v.delivery.pusher.as_ref().and_then(|p| p.name.clone()),
            };
            on_push(&mut tx, v.services.clone(), &v.delivery, trigger).await?
        }
        other => Answer::ignored(format!(
            "GitHub event `{other}` is not handled (only push and ping)"
        )),
    };
    finish(tx, &v, answer).await
}

async fn gitlab(
    req: HttpRequest,
    body: web::Bytes,
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    sealer: web::Data<SecretBox>,
) -> Result<HttpResponse, Problem> {
    let state = State {
        pool: &pool,
        upstreams: &upstreams,
        sealer: &sealer,
    };
    // `Idempotency-Key` stays the same across GitLab's retries (GitLab 17.4 and later); older
    // versions send only the event UUID.
    let headers = Headers {
        event: "X-Gitlab-Event",
        credential: "X-Gitlab-Token",
        delivery_ids: &["Idempotency-Key", "X-Gitlab-Event-UUID"],
    };
    let v = verified(
        &req,
        &body,
        &state,
        Provider::GitLab,
        headers,
        |secret, token| bool::from(secret.as_bytes().ct_eq(token.as_bytes())),
    )
    .await?;
    let mut tx = match claim(&pool, &v, &body).await? {
        Claim::New(tx) => tx,
        Claim::Duplicate(answer) => return Ok(answer),
    };
    let answer = if v.event == "Push Hook" {
        let trigger = BuildTrigger {
            kind: "gitlab".into(),
            delivery: Some(v.id.to_string()),
            actor: v.delivery.user_username.clone(),
        };
        on_push(&mut tx, v.services.clone(), &v.delivery, trigger).await?
    } else {
        Answer::ignored(format!(
            "GitLab event `{}` is not handled (only Push Hook)",
            v.event
        ))
    };
    finish(tx, &v, answer).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signatures_are_checked_exactly() {
        // The example from GitHub's documentation on validating webhook deliveries.
        let secret = "It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github_signature_ok(secret, body, good));
        assert!(!github_signature_ok("another secret", body, good));
        assert!(!github_signature_ok(secret, b"Hello, World?", good));
        assert!(!github_signature_ok(
            secret,
            body,
            &good.replace("sha256=", "sha1=")
        ));
        assert!(!github_signature_ok(secret, body, "sha256=zz"));
    }
}
