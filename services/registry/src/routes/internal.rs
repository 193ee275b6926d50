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
//! - `GET /internal/v1/traffic/{service_id}/{env}`: the weights in the routing table for one
//!   service and environment, the table version they took effect at, and the version each
//!   router serves, for the deployer's route step.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use slipway_http::Problem;
use slipway_ids::ServiceId;
use slipway_secrets::SecretBox;
use slipway_wire::releases::RunConfig;
use slipway_wire::routes::{RoutableRelease, RouterStatus, TrafficStatus};
use sqlx::PgPool;

use super::config::check_env_name;
use super::{internal, service_id};
use crate::db::{config, instances, routers};

/// Routers silent for longer are left out of the traffic status.
const ROUTERS_RECENT_SECONDS: i64 = 600;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/internal/v1/services/{name}/environments/{env}/config/{version}",
        web::get().to(run_config),
    )
    .route(
        "/internal/v1/traffic/{service_id}/{env}",
        web::get().to(traffic_status),
    );
}

async fn traffic_status(
    pool: web::Data<PgPool>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (service, env) = path.into_inner();
    let service: ServiceId = service.parse().map_err(|_| {
        Problem::validation("service_id", format!("`{service}` is not a service id"))
    })?;
    check_env_name(&env)?;
    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    let index = instances::index(&mut tx)
        .await
        .map_err(|e| internal("read index", e))?;
    let (weights, version) = routers::traffic(&mut tx, service, &env)
        .await
        .map_err(|e| internal("read traffic", e))?
        .unwrap_or_default();
    let routers = routers::recent(&mut tx, ROUTERS_RECENT_SECONDS)
        .await
        .map_err(|e| internal("read routers", e))?
        .into_iter()
        .map(|r| RouterStatus {
            router: r.id,
            applied: u64::try_from(r.applied).unwrap_or(0),
            polled_at: r.polled_at,
            live: r.live,
        })
        .collect();
    // Read in the same transaction as the index: the counts are those of that table version.
    let mut routable: Vec<RoutableRelease> = Vec::new();
    for i in instances::of_service(&mut tx, service, Some(&env))
        .await
        .map_err(|e| internal("read instances", e))?
    {
        match routable.iter_mut().find(|r| r.release == i.release) {
            Some(r) => r.instances += u32::from(i.routable),
            None => routable.push(RoutableRelease {
                release: i.release,
                instances: u32::from(i.routable),
            }),
        }
    }
    let status = TrafficStatus {
        service_id: service,
        environment: env,
        weights,
        version: u64::try_from(version).unwrap_or(0),
        index: u64::try_from(index).unwrap_or(0),
        routers,
        routable,
    };
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(status))
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
        .json(RunConfig {
            version,
            vars,
            secrets,
        }))
}
