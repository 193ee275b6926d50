//! Environments and their config.
//!
//! `PUT /v1/services/{name}/environments/{env}` creates or changes an environment;
//! `PUT .../config` makes a new config version. Optimistic concurrency: once a version exists,
//! a change must say which version it replaces (`If-Match: "3"`); a stale one answers 412 and
//! changes nothing. Secret values are sealed before they are stored and are never answered:
//! the answer lists their names as `"set"`.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use slipway_events::cdevents::CdEvent;
use slipway_events::slipway::sources;
use slipway_http::Problem;
use sqlx::PgPool;

use slipway_wire::releases::TargetKind;

use super::{internal, service_id};
use crate::db::config::{self, StoredConfig};
use crate::startup::ServiceSettings;
use slipway_secrets::SecretBox;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/services/{name}/environments", web::get().to(list))
        .route(
            "/v1/services/{name}/environments/{env}",
            web::get().to(get_environment),
        )
        .route(
            "/v1/services/{name}/environments/{env}",
            web::put().to(put_environment),
        )
        .route(
            "/v1/services/{name}/environments/{env}/config",
            web::get().to(get_config),
        )
        .route(
            "/v1/services/{name}/environments/{env}/config",
            web::put().to(put_config),
        );
}

pub(crate) fn check_env_name(env: &str) -> Result<(), Problem> {
    let ok = !env.is_empty()
        && env.len() <= 63
        && env.starts_with(|c: char| c.is_ascii_lowercase())
        && !env.ends_with('-')
        && env
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Problem::validation(
            "environment",
            "must be a DNS label (lowercase letters, digits, `-`)",
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentBody {
    /// `process`, `docker` or `kubernetes`; absent: `[services] default_target` for a new
    /// environment, unchanged for an existing one.
    target: Option<String>,
}

async fn list(pool: web::Data<PgPool>, name: web::Path<String>) -> Result<HttpResponse, Problem> {
    let service = service_id(&pool, &name).await?;
    let items = config::environments(&pool, service)
        .await
        .map_err(|e| internal("list environments", e))?;
    let items = items.into_iter().map(wire_environment).collect();
    Ok(HttpResponse::Ok().json(slipway_wire::releases::Environments { items }))
}

/// `GET /v1/services/{name}/environments/{env}`: one environment, without listing them all
/// (the gateway checks each deployment request's environment with it).
async fn get_environment(
    pool: web::Data<PgPool>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (name, env) = path.into_inner();
    check_env_name(&env)?;
    let service = service_id(&pool, &name).await?;
    let e = config::environment_of(&pool, service, &env)
        .await
        .map_err(|e| internal("read environment", e))?
        .ok_or_else(|| {
            Problem::not_found(format!(
                "service `{name}` has no environment `{env}`; create it with PUT /v1/services/{name}/environments/{env}"
            ))
        })?;
    Ok(HttpResponse::Ok().json(wire_environment(e)))
}

/// An environment as the API answers it.
fn wire_environment(e: config::Environment) -> slipway_wire::releases::Environment {
    slipway_wire::releases::Environment {
        name: e.name,
        target: e.target,
        config_version: e.config_version,
        created_at: e.created_at,
        updated_at: e.updated_at,
    }
}

async fn put_environment(
    pool: web::Data<PgPool>,
    settings: web::Data<ServiceSettings>,
    path: web::Path<(String, String)>,
    body: Option<web::Json<EnvironmentBody>>,
) -> Result<HttpResponse, Problem> {
    let (name, env) = path.into_inner();
    check_env_name(&env)?;
    let target = body
        .and_then(|b| b.into_inner().target)
        .map(|t| t.parse::<TargetKind>())
        .transpose()
        .map_err(|e| Problem::validation("target", e.to_string()))?;
    let service = service_id(&pool, &name).await?;
    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    let created =
        config::upsert_environment(&mut tx, service, &env, target, settings.default_target)
            .await
            .map_err(|e| internal("upsert environment", e))?;
    let environment = config::environment(&mut tx, service, &env)
        .await
        .map_err(|e| internal("read environment", e))?
        .ok_or_else(Problem::internal)?;
    let target = environment.target;
    let uri = format!("/v1/services/{name}/environments/{env}");
    let subject = format!("{name}/{env}");
    let event = if created {
        CdEvent::environment_created(sources::REGISTRY, &subject, &env, &uri)
    } else {
        CdEvent::environment_modified(sources::REGISTRY, &subject, &env, &uri)
    }
    .with_custom_data(serde_json::json!({ "service": name, "target": target }));
    let topic = event.kind().topic();
    let project = crate::db::services::project_of(&mut tx, service)
        .await
        .map_err(|e| internal("read service project", e))?;
    slipway_outbox::enqueue(
        &mut tx,
        topic,
        &event
            .into_cloud_event(service, Some(subject))
            .with_project(project),
    )
    .await
    .map_err(|e| internal("enqueue event", e))?;
    tx.commit().await.map_err(|e| internal("commit", e))?;
    let status = if created {
        actix_web::http::StatusCode::CREATED
    } else {
        actix_web::http::StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(environment))
}

/// What answers show of a config: values of vars, only the names of secrets.
fn shown(c: &StoredConfig) -> HttpResponse {
    let secrets: BTreeMap<&String, &str> = c.secrets.0.keys().map(|k| (k, "set")).collect();
    HttpResponse::Ok()
        .insert_header(("etag", format!("\"{}\"", c.version)))
        .json(serde_json::json!({
            "version": c.version,
            "vars": c.vars.0,
            "secrets": secrets,
            "created_at": c.created_at,
        }))
}

async fn get_config(
    pool: web::Data<PgPool>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (name, env) = path.into_inner();
    let service = service_id(&pool, &name).await?;
    let mut conn = pool.acquire().await.map_err(|e| internal("acquire", e))?;
    if config::environment(&mut conn, service, &env)
        .await
        .map_err(|e| internal("read environment", e))?
        .is_none()
    {
        return Err(Problem::not_found(format!(
            "service `{name}` has no environment `{env}`"
        )));
    }
    match config::latest(&mut conn, service, &env)
        .await
        .map_err(|e| internal("read config", e))?
    {
        Some(c) => Ok(shown(&c)),
        None => Ok(HttpResponse::Ok()
            .insert_header(("etag", "\"0\""))
            .json(serde_json::json!({ "version": 0, "vars": {}, "secrets": {} }))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    /// Replaces all variables when present; keeps them when absent.
    vars: Option<BTreeMap<String, String>>,
    /// Merged: a string sets a secret, `null` removes it, an absent name keeps it.
    #[serde(default)]
    secrets: BTreeMap<String, Option<String>>,
}

fn check_key(field: &str, key: &str, value_len: usize) -> Result<(), Problem> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(Problem::validation(
            field,
            format!("`{key}` is not an environment variable name (A-Z, 0-9, _)"),
        ));
    }
    if key == "PORT" || key.starts_with("SLIPWAY_") {
        return Err(Problem::validation(
            field,
            format!("`{key}` is set by the platform"),
        ));
    }
    if value_len > 32 * 1024 {
        return Err(Problem::validation(
            field,
            format!("the value of `{key}` is over 32 KiB"),
        ));
    }
    Ok(())
}

/// The version an `If-Match` header names: `"3"`, `3` or `W/"3"`.
fn if_match(req: &HttpRequest) -> Result<Option<i32>, Problem> {
    let Some(value) = req.headers().get("if-match") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"');
    text.parse::<i32>().map(Some).map_err(|_| {
        Problem::bad_request("If-Match must be a config version as answered in ETag, e.g. \"3\"")
    })
}

async fn put_config(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    sealer: web::Data<SecretBox>,
    path: web::Path<(String, String)>,
    body: web::Json<ConfigBody>,
) -> Result<HttpResponse, Problem> {
    let (name, env) = path.into_inner();
    let body = body.into_inner();
    if let Some(vars) = &body.vars {
        for (k, v) in vars {
            check_key("vars", k, v.len())?;
        }
    }
    for (k, v) in &body.secrets {
        check_key("secrets", k, v.as_ref().map_or(0, String::len))?;
    }
    let expected = if_match(&req)?;
    let service = service_id(&pool, &name).await?;

    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    // Locks the environment row: concurrent changes queue here, then see the new version.
    if config::environment(&mut tx, service, &env)
        .await
        .map_err(|e| internal("read environment", e))?
        .is_none()
    {
        return Err(Problem::not_found(format!(
            "service `{name}` has no environment `{env}`; create it with PUT /v1/services/{name}/environments/{env}"
        )));
    }
    let current = config::latest(&mut tx, service, &env)
        .await
        .map_err(|e| internal("read config", e))?;
    let current_version = current.as_ref().map_or(0, |c| c.version);
    match expected {
        None if current_version > 0 => {
            return Err(Problem::new(
                actix_web::http::StatusCode::PRECONDITION_REQUIRED,
                "precondition-required",
                format!(
                    "config version {current_version} exists: send If-Match: \"{current_version}\" to replace it"
                ),
            ));
        }
        Some(v) if v != current_version => {
            return Err(Problem::new(
                actix_web::http::StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                format!(
                    "If-Match names version {v}, but the current version is {current_version}; read it again"
                ),
            ));
        }
        _ => {}
    }
    let vars = match body.vars {
        Some(v) => v,
        None => current
            .as_ref()
            .map(|c| c.vars.0.clone())
            .unwrap_or_default(),
    };
    let mut secrets = current.map(|c| c.secrets.0).unwrap_or_default();
    for (k, v) in body.secrets {
        match v {
            Some(plain) => secrets.insert(k, sealer.seal(&plain)),
            None => secrets.remove(&k),
        };
    }
    let stored =
        config::insert_version(&mut tx, service, &env, current_version + 1, &vars, &secrets)
            .await
            .map_err(|e| internal("store config", e))?;
    tx.commit().await.map_err(|e| internal("commit", e))?;
    tracing::info!(service = %name, environment = %env, version = stored.version, "config changed");
    Ok(shown(&stored))
}
