//! The deployer's internal HTTP API (the gateway forwards reads; commands come over Kafka).

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use slipway_events::deploy::Strategy;
use slipway_http::Problem;
use slipway_ids::DeploymentId;
use slipway_runtime::ServiceCaller::Gateway;
use slipway_runtime::{AccessRules, Rule, ServiceCaller};
use sqlx::PgPool;

use crate::db::{deployments, instances, state};

/// Who may call which route (deny by default): only the gateway, which authorises people.
pub const ACCESS: AccessRules = AccessRules::new(
    ServiceCaller::Deployer,
    &[
        Rule::new("/v1/deployments/{id}", &[Gateway]),
        Rule::new(
            "/v1/services/{name}/environments/{env}/deployments",
            &[Gateway],
        ),
        Rule::new("/v1/services/{name}/environments/{env}/state", &[Gateway]),
        Rule::new("/v1/services/{name}/environments/{env}/policy", &[Gateway]),
    ],
);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/deployments/{id}", web::get().to(get))
        .route(
            "/v1/services/{name}/environments/{env}/deployments",
            web::get().to(list),
        )
        .route(
            "/v1/services/{name}/environments/{env}/state",
            web::get().to(current_state),
        )
        .route(
            "/v1/services/{name}/environments/{env}/policy",
            web::put().to(put_policy),
        );
}

use slipway_http::problem::unexpected as internal;

async fn get(pool: web::Data<PgPool>, id: web::Path<String>) -> Result<HttpResponse, Problem> {
    let id: DeploymentId = id
        .parse()
        .map_err(|_| Problem::not_found(format!("no deployment `{id}` (ids are UUIDs)")))?;
    match deployments::get(&pool, id)
        .await
        .map_err(|e| internal("get deployment", e))?
    {
        Some(d) => Ok(HttpResponse::Ok().json(d.view())),
        None => Err(Problem::not_found(format!("no deployment {id}"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list(
    pool: web::Data<PgPool>,
    path: web::Path<(String, String)>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let (name, env) = path.into_inner();
    let limit = query.limit.unwrap_or(20);
    if !(1..=200).contains(&limit) {
        return Err(Problem::validation("limit", "must be between 1 and 200"));
    }
    let items: Vec<_> = deployments::list(&pool, &name, &env, limit)
        .await
        .map_err(|e| internal("list deployments", e))?
        .iter()
        .map(deployments::Deployment::view)
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

async fn current_state(
    pool: web::Data<PgPool>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    let (name, env) = path.into_inner();
    let Some(s) = state::by_name(&pool, &name, &env)
        .await
        .map_err(|e| internal("get state", e))?
    else {
        return Err(Problem::not_found(format!(
            "nothing was deployed to `{name}` in `{env}` yet"
        )));
    };
    let instances = instances::of_environment(&pool, s.service_id, &env)
        .await
        .map_err(|e| internal("list instances", e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "state": s, "instances": instances })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    auto_deploy: bool,
    #[serde(default)]
    strategy: Strategy,
}

/// `PUT .../policy {"auto_deploy": true, "strategy": {...}}`: new releases deploy themselves.
async fn put_policy(
    pool: web::Data<PgPool>,
    path: web::Path<(String, String)>,
    body: web::Json<PolicyBody>,
) -> Result<HttpResponse, Problem> {
    let (name, env) = path.into_inner();
    let body = body.into_inner();
    body.strategy
        .validate()
        .map_err(|(field, why)| Problem::validation(field, why))?;
    let service: Option<slipway_ids::ServiceId> =
        sqlx::query_scalar("SELECT service_id FROM deploy_targets WHERE name = $1")
            .bind(&name)
            .fetch_optional(pool.get_ref())
            .await
            .map_err(|e| internal("find service", e))?;
    let Some(service) = service else {
        return Err(Problem::not_found(format!("no service named `{name}`")));
    };
    state::put_policy(
        &pool,
        service,
        &name,
        &env,
        body.auto_deploy,
        &body.strategy,
    )
    .await
    .map_err(|e| internal("put policy", e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "service": name, "environment": env, "auto_deploy": body.auto_deploy, "strategy": body.strategy
    })))
}
