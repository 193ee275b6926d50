//! Deploy, roll back, scale and cancel: validated here, at once, then handed to the deployer as
//! command events (`DeployRequested`, `DeployCancelRequested`) with a `202 Accepted`.
//!
//! Everything a client can get wrong is checked before anything is recorded: the body's shape
//! and ranges, the strategy and health check (their own `validate`), and, with the registry,
//! that the service, the environment and the release exist and that the config version is one
//! the environment has. A refused request leaves no operation row and no event.
//!
//! Reads are forwarded to whoever owns the data: deployments and desired state to the
//! deployer, instances to the registry (a blocking query, given a longer timeout), health and
//! logs to the monitor. `GET /v1/deployments/{id}` answers `requested` for a deployment the
//! gateway accepted that no deployer has picked up yet.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use slipway_events::deploy::{DeployKind, DeployRequested, HealthCheck, Strategy};
use slipway_http::Problem;
use slipway_ids::DeploymentId;
use sqlx::PgPool;

use super::releases::safe_path;
use crate::auth::{Caller, Scoped};
use crate::commands;
use crate::upstream::{Upstream, Upstreams, bad_upstream};
use slipway_wire::service::Service;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/services/{name}/environments/{env}/deployments",
        web::post().to(deploy),
    )
    .route(
        "/services/{name}/environments/{env}/deployments",
        web::get().to(deployer_read),
    )
    .route(
        "/services/{name}/environments/{env}/rollback",
        web::post().to(rollback),
    )
    .route(
        "/services/{name}/environments/{env}/scale",
        web::put().to(scale),
    )
    .route(
        "/services/{name}/environments/{env}/state",
        web::get().to(deployer_read),
    )
    .route(
        "/services/{name}/environments/{env}/logs",
        web::get().to(monitor_read),
    )
    .route("/services/{name}/health", web::get().to(monitor_read))
    .route("/services/{name}/instances", web::get().to(instances))
    .route("/deployments/{id}", web::get().to(get))
    .route("/deployments/{id}/cancel", web::post().to(cancel))
    .route(
        "/services/{name}/environments/{env}/policy",
        web::put().to(put_policy),
    );
}

/// Most replicas one request may ask for.
const MAX_REPLICAS: i64 = 100;
/// Longest step deadline one request may ask for (an hour).
const MAX_STEP_TIMEOUT_SECONDS: i64 = 3600;
/// The registry's longest and default blocking-query waits, and the slack added on top of the
/// wait before the gateway gives up on the answer.
const MAX_WAIT: Duration = Duration::from_secs(120);
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const WAIT_SLACK: Duration = Duration::from_secs(5);

/// `POST .../deployments`. Fields are kept loose (`Value`, `i64`) where serde's own message
/// would not name the field; they are checked one by one below, each refusal naming its field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    /// `"v2"`, `"2"` or `2`.
    release: serde_json::Value,
    strategy: Option<serde_json::Value>,
    replicas: Option<i64>,
    config_version: Option<i64>,
    health_check: Option<serde_json::Value>,
    step_timeout_seconds: Option<i64>,
    auto_rollback: Option<bool>,
}

/// `POST .../rollback`; an empty body rolls back to the release before the current one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    release: Option<serde_json::Value>,
}

/// `PUT .../scale`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    replicas: i64,
}

/// An environment as the registry answers it (the fields used here).
#[derive(Debug, Deserialize)]
struct EnvironmentRef {
    name: String,
    /// The latest config version (0: none yet).
    config_version: i32,
}

/// A release number from `"v2"`, `"2"` or `2`.
fn release_number(value: &serde_json::Value) -> Result<i32, Problem> {
    let n = match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.strip_prefix('v').unwrap_or(s).parse::<i64>().ok(),
        _ => None,
    };
    n.filter(|n| (1..=i64::from(i32::MAX)).contains(n))
        .and_then(|n| i32::try_from(n).ok())
        .ok_or_else(|| {
            Problem::validation(
                "release",
                format!("`{value}` is not a release (releases are v1, v2, ... or 1, 2, ...)"),
            )
        })
}

/// `value` in `range`, as a `u32`, or a problem naming `field`.
fn in_range(field: &str, value: i64, range: std::ops::RangeInclusive<i64>) -> Result<u32, Problem> {
    if !range.contains(&value) {
        return Err(Problem::validation(
            field,
            format!("must be {}..={}", range.start(), range.end()),
        ));
    }
    u32::try_from(value).map_err(|_| Problem::validation(field, "must not be negative"))
}

/// A nested object of the body, typed, or a problem naming `field` and what serde saw.
fn typed<T: DeserializeOwned>(
    field: &str,
    value: Option<serde_json::Value>,
) -> Result<Option<T>, Problem> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v).map(Some).map_err(|e| {
            // A contract type that names the inner field (`health_check.path: ...`) gets it
            // as the problem's field.
            let message = e.to_string();
            match message.split_once(": ") {
                Some((inner, why))
                    if inner
                        .strip_prefix(field)
                        .is_some_and(|r| r.starts_with('.')) =>
                {
                    Problem::validation(inner, why)
                }
                _ => Problem::validation(field, message),
            }
        }),
    }
}

/// `Err((field, why))` from a contract type's `validate`, as a 422.
fn checked(result: Result<(), (&'static str, String)>) -> Result<(), Problem> {
    result.map_err(|(field, why)| Problem::validation(field, why))
}

/// An environment name in the URL: a DNS label, or it cannot exist.
fn check_env(env: &str) -> Result<(), Problem> {
    let ok = !env.is_empty()
        && env.len() <= 63
        && env
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Problem::not_found(format!("no environment `{env}`")))
    }
}

/// The service (resolved by the access guard) and environment a request targets, both
/// checked with the registry.
async fn target(
    upstreams: &Upstreams,
    scoped: &Scoped,
    env: &str,
) -> Result<(Service, EnvironmentRef), Problem> {
    check_env(env)?;
    let service = scoped.service()?;
    // The one environment, not the list: a service with a thousand environments and as many
    // deployment requests at once made this check quadratic.
    let answer = upstreams
        .registry(
            reqwest::Method::GET,
            &format!("/v1/services/{}/environments/{env}", service.name),
            None,
        )
        .await?;
    if answer.status == actix_web::http::StatusCode::NOT_FOUND {
        return Err(Problem::not_found(format!(
            "service `{0}` has no environment `{env}`; create it with PUT /v1/services/{0}/environments/{env}",
            service.name
        )));
    }
    let environment: EnvironmentRef =
        serde_json::from_value(answer.ok_json()?).map_err(|e| bad_upstream("environment", e))?;
    Ok((service, environment))
}

/// 422 naming `release` unless the registry holds release `n` of `service`.
async fn check_release(upstreams: &Upstreams, service: &str, n: i32) -> Result<(), Problem> {
    let answer = upstreams
        .registry(
            reqwest::Method::GET,
            &format!("/v1/services/{service}/releases/{n}"),
            None,
        )
        .await?;
    if answer.status == StatusCode::NOT_FOUND {
        return Err(Problem::validation(
            "release",
            format!("service `{service}` has no release v{n}"),
        ));
    }
    answer.ok_json().map(drop)
}

/// A command for `service` in `environment`, with nothing set beyond who asked.
fn command(
    kind: DeployKind,
    service: &Service,
    environment: &EnvironmentRef,
    caller: &Caller,
) -> DeployRequested {
    DeployRequested {
        deployment_id: DeploymentId::new(),
        kind,
        service_id: service.id,
        service_name: service.name.clone(),
        project: Some(service.project.clone()),
        environment: environment.name.clone(),
        release: None,
        strategy: Strategy::default(),
        replicas: None,
        config_version: None,
        health_check: None,
        step_timeout_seconds: None,
        auto_rollback: None,
        actor: Some(caller.token_name.clone()),
        requested_at: Utc::now(),
    }
}

/// Records the command and answers 202 with where to follow it.
async fn accept(pool: &PgPool, data: DeployRequested) -> Result<HttpResponse, Problem> {
    commands::request_deploy(pool, &data).await?;
    let url = format!("/v1/deployments/{}", data.deployment_id);
    Ok(HttpResponse::Accepted()
        .insert_header(("location", url.clone()))
        .json(serde_json::json!({
            "id": data.deployment_id,
            "kind": commands::kind_name(data.kind),
            "status": "requested",
            "url": url,
        })))
}

/// `POST /v1/services/{name}/environments/{env}/deployments`.
async fn deploy(
    caller: Caller,
    scoped: Scoped,
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    path: web::Path<(String, String)>,
    body: web::Json<DeployBody>,
) -> Result<HttpResponse, Problem> {
    let (_, env) = path.into_inner();
    let body = body.into_inner();
    // Everything the body alone can tell, before asking the registry anything.
    let release = release_number(&body.release)?;
    let strategy: Strategy = typed("strategy", body.strategy)?.unwrap_or_default();
    checked(strategy.validate())?;
    let health_check: Option<HealthCheck> = typed("health_check", body.health_check)?;
    if let Some(h) = &health_check {
        checked(h.validate())?;
    }
    let replicas = body
        .replicas
        .map(|r| in_range("replicas", r, 0..=MAX_REPLICAS))
        .transpose()?;
    let step_timeout_seconds = body
        .step_timeout_seconds
        .map(|s| in_range("step_timeout_seconds", s, 1..=MAX_STEP_TIMEOUT_SECONDS))
        .transpose()?;
    if body.config_version.is_some_and(|v| v < 1) {
        return Err(Problem::validation("config_version", "must be at least 1"));
    }

    let (service, environment) = target(&upstreams, &scoped, &env).await?;
    check_release(&upstreams, &service.name, release).await?;
    // Only a version the environment has: the deployer would otherwise fail the deployment late.
    let config_version = match body.config_version {
        None => None,
        Some(v) => match i32::try_from(v) {
            Ok(v) if v <= environment.config_version => Some(v),
            _ => {
                return Err(Problem::validation(
                    "config_version",
                    format!(
                        "environment `{env}` of `{}` has config versions up to {}",
                        service.name, environment.config_version
                    ),
                ));
            }
        },
    };

    let mut data = command(DeployKind::Deploy, &service, &environment, &caller);
    data.release = Some(release);
    data.strategy = strategy;
    data.replicas = replicas;
    data.config_version = config_version;
    data.health_check = health_check;
    data.step_timeout_seconds = step_timeout_seconds;
    data.auto_rollback = body.auto_rollback;
    accept(&pool, data).await
}

/// `POST /v1/services/{name}/environments/{env}/rollback`: the body is optional, so it is
/// read by hand (an absent body is not an error, a malformed one is).
async fn rollback(
    caller: Caller,
    scoped: Scoped,
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let (_, env) = path.into_inner();
    let body: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            if e.is_data() {
                Problem::validation("body", e.to_string())
            } else {
                Problem::bad_request(format!("the body is not valid JSON: {e}"))
            }
        })?
    };
    let release = match body.release {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(release_number(&v)?),
    };
    let (service, environment) = target(&upstreams, &scoped, &env).await?;
    if let Some(n) = release {
        check_release(&upstreams, &service.name, n).await?;
    }
    let mut data = command(DeployKind::Rollback, &service, &environment, &caller);
    data.release = release;
    accept(&pool, data).await
}

/// `PUT /v1/services/{name}/environments/{env}/scale`.
async fn scale(
    caller: Caller,
    scoped: Scoped,
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    path: web::Path<(String, String)>,
    body: web::Json<ScaleBody>,
) -> Result<HttpResponse, Problem> {
    let (_, env) = path.into_inner();
    let replicas = in_range("replicas", body.replicas, 0..=MAX_REPLICAS)?;
    let (service, environment) = target(&upstreams, &scoped, &env).await?;
    let mut data = command(DeployKind::Scale, &service, &environment, &caller);
    data.replicas = Some(replicas);
    accept(&pool, data).await
}

/// `POST /v1/deployments/{id}/cancel`.
async fn cancel(
    caller: Caller,
    scoped: Scoped,
    pool: web::Data<PgPool>,
    id: web::Path<DeploymentId>,
) -> Result<HttpResponse, Problem> {
    let id = id.into_inner();
    let deployment = commands::deployment_operation(&pool, id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no deployment {id}")))?;
    commands::request_cancel(&pool, &deployment, scoped.project()?, &caller.token_name).await?;
    let url = format!("/v1/deployments/{id}");
    Ok(HttpResponse::Accepted()
        .insert_header(("location", url.clone()))
        .json(serde_json::json!({ "id": id, "status": "cancel_requested", "url": url })))
}

/// `GET /v1/deployments/{id}`: the deployer's answer, or `requested` while the command waits.
async fn get(
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    id: web::Path<DeploymentId>,
) -> Result<HttpResponse, Problem> {
    let id = id.into_inner();
    let answer = upstreams
        .call(
            Upstream::Deployer,
            reqwest::Method::GET,
            &format!("/v1/deployments/{id}"),
            None,
        )
        .await?;
    if answer.status == StatusCode::NOT_FOUND
        && let Some(op) = commands::deployment_operation(&pool, id).await?
    {
        return Ok(HttpResponse::Ok().json(serde_json::json!({
            "id": op.id,
            "kind": op.kind,
            "status": "requested",
            "service": op.service_name,
            "environment": op.environment,
            "requested_at": op.created_at,
        })));
    }
    answer.into_response()
}

/// Forwards a read to `upstream` under the same path and query.
async fn forward(
    req: &HttpRequest,
    upstreams: &Upstreams,
    upstream: Upstream,
) -> Result<HttpResponse, Problem> {
    let path = safe_path(req)?;
    upstreams
        .call(upstream, reqwest::Method::GET, &path, None)
        .await?
        .into_response()
}

/// Deployments of an environment and its desired state: the deployer's.
async fn deployer_read(
    req: HttpRequest,
    upstreams: web::Data<Upstreams>,
) -> Result<HttpResponse, Problem> {
    forward(&req, &upstreams, Upstream::Deployer).await
}

/// `PUT .../policy {"auto_deploy": true, "strategy": {...}}`: whether new releases deploy
/// themselves to the environment (the deployer's, which validates it).
async fn put_policy(
    req: HttpRequest,
    upstreams: web::Data<Upstreams>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, Problem> {
    let path = safe_path(&req)?;
    let body = body.into_inner();
    upstreams
        .call(Upstream::Deployer, reqwest::Method::PUT, &path, Some(&body))
        .await?
        .into_response()
}

/// Health verdicts and instance logs: the monitor's.
async fn monitor_read(
    req: HttpRequest,
    upstreams: web::Data<Upstreams>,
) -> Result<HttpResponse, Problem> {
    forward(&req, &upstreams, Upstream::Monitor).await
}

/// `GET /v1/services/{name}/instances[?environment=&index=&wait=]`: the registry's, as a
/// blocking query that may hold its answer for `wait`; the gateway waits that long plus slack.
async fn instances(
    req: HttpRequest,
    upstreams: web::Data<Upstreams>,
) -> Result<HttpResponse, Problem> {
    let path = safe_path(&req)?;
    let wait = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "wait")
        .and_then(|(_, v)| parse_wait(&v))
        .unwrap_or(DEFAULT_WAIT)
        .min(MAX_WAIT);
    upstreams
        .get_with_timeout(Upstream::Registry, &path, wait + WAIT_SLACK)
        .await?
        .into_response()
}

/// `30s`, `500ms`, `2m` or bare seconds; `None` for anything else (the registry then refuses
/// it with its own problem, promptly, so the default timeout is enough).
fn parse_wait(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_numbers_or_v_numbers() {
        assert_eq!(release_number(&serde_json::json!(2)).unwrap(), 2);
        assert_eq!(release_number(&serde_json::json!("v7")).unwrap(), 7);
        assert_eq!(release_number(&serde_json::json!("3")).unwrap(), 3);
        for bad in [
            serde_json::json!(0),
            serde_json::json!(-1),
            serde_json::json!("vx"),
            serde_json::json!(null),
            serde_json::json!(1.5),
            serde_json::json!(5_000_000_000_i64),
        ] {
            let p = release_number(&bad).unwrap_err();
            assert_eq!(p.errors[0].field, "release", "{bad}");
        }
    }

    #[test]
    fn waits_parse_in_the_registrys_forms() {
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_wait("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_wait("soon"), None);
        assert_eq!(parse_wait("5h"), None);
    }
}
