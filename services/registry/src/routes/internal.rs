//! `/internal/`: answers for slipway's own services, never for people.
//!
//! These routes are served to the other slipway services on the internal network only. The
//! gateway never routes `/internal/` (it forwards `/v1/` paths it authorises), and a
//! deployment must not expose the registry's port outside that network: these answers carry
//! decrypted secrets.
//!
//! - `GET /internal/v1/services/{name}/environments/{env}/config/{version}`: the config an
//!   instance runs with, secrets opened, for the deployer. `{version}` is a number or
//!   `latest`; version 0 (or `latest` before any config) is the empty config.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use slipway_http::Problem;
use slipway_secrets::SecretBox;
use sqlx::PgPool;

use super::{internal, service_id};
use crate::db::config;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/internal/v1/services/{name}/environments/{env}/config/{version}",
        web::get().to(run_config),
    );
}

/// Which config version is asked for.
enum Wanted {
    Latest,
    Number(i32),
}

impl Wanted {
    fn parse(text: &str) -> Option<Self> {
        if text == "latest" {
            return Some(Wanted::Latest);
        }
        text.parse::<i32>()
            .ok()
            .filter(|v| *v >= 0)
            .map(Wanted::Number)
    }
}

async fn run_config(
    pool: web::Data<PgPool>,
    sealer: web::Data<SecretBox>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, Problem> {
    let (name, env, version) = path.into_inner();
    let wanted = Wanted::parse(&version).ok_or_else(|| {
        Problem::not_found(format!(
            "no config version `{version}`: a version is a number or `latest`"
        ))
    })?;
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
    let stored = match wanted {
        Wanted::Latest => config::latest(&mut conn, service, &env).await,
        Wanted::Number(0) => Ok(None),
        Wanted::Number(v) => match config::version(&mut conn, service, &env, v).await {
            Ok(None) => {
                return Err(Problem::not_found(format!(
                    "environment `{env}` of `{name}` has no config version {v}"
                )));
            }
            other => other,
        },
    }
    .map_err(|e| internal("read config", e))?;
    let (version, vars, sealed) = match stored {
        Some(c) => (c.version, c.vars.0, c.secrets.0),
        None => (0, BTreeMap::new(), BTreeMap::new()),
    };
    let mut secrets = BTreeMap::new();
    for (key, value) in sealed {
        // A secret that does not open means the key changed under stored data: an operator
        // problem, logged (without the value) and answered as a 500.
        let plain = sealer
            .open(&value)
            .map_err(|e| internal(&format!("open secret `{key}`"), e))?;
        secrets.insert(key, plain);
    }
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(serde_json::json!({ "version": version, "vars": vars, "secrets": secrets })))
}
