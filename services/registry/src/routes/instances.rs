//! Discovered instances, with blocking queries in the manner of Consul's.
//!
//! - `GET /v1/services/{name}/instances[?environment=E]`: a service's instances.
//! - `GET /v1/discovery`: every service and environment with instances or traffic weights,
//!   what the edge router needs.
//!
//! Both answer `{"index": n, ...}` and `X-Slipway-Index: n`. With `?index=n` the answer waits
//! until the index moves past `n` or `wait` passes (default 30 s, at most 2 min; `30s`,
//! `500ms`, `2m`), then answers the current state; a caller long-polls by sending back the
//! index it last got. Index and contents are read in one snapshot, so they always agree.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use slipway_events::deploy::{Health, ReleaseWeight};
use slipway_http::Problem;
use slipway_ids::ServiceId;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::config::check_env_name;
use super::{internal, service_id};
use crate::db::instances::{self, Instance, State};
use crate::discovery::IndexWatch;

/// The header carrying the index of an answer.
pub const INDEX_HEADER: &str = "x-slipway-index";
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(120);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/services/{name}/instances", web::get().to(of_service))
        .route("/v1/discovery", web::get().to(discovery));
}

/// Query parameters, taken as text so each bad value gets its own problem.
#[derive(Debug, Deserialize)]
struct WatchQuery {
    index: Option<String>,
    wait: Option<String>,
    environment: Option<String>,
}

/// A parsed blocking request: wait while the index is `after`, up to `wait`.
struct Blocking {
    after: Option<i64>,
    wait: Duration,
}

impl WatchQuery {
    fn blocking(&self) -> Result<Blocking, Problem> {
        let after =
            match &self.index {
                None => None,
                Some(text) => Some(text.parse::<i64>().ok().filter(|i| *i >= 0).ok_or_else(
                    || {
                        Problem::validation(
                            "index",
                            format!(
                                "`{text}` is not an index: send the `index` of an earlier answer"
                            ),
                        )
                    },
                )?),
            };
        let wait = match &self.wait {
            None => DEFAULT_WAIT,
            Some(text) => humantime::parse_duration(text).map_err(|_| {
                Problem::validation(
                    "wait",
                    format!("`{text}` is not a duration such as `30s`, `500ms` or `2m`"),
                )
            })?,
        };
        if wait > MAX_WAIT {
            return Err(Problem::validation("wait", "must be at most 2m"));
        }
        Ok(Blocking { after, wait })
    }
}

/// Returns once the index is past `after` (at once without one), or when `wait` passes.
async fn block(pool: &PgPool, watch: &IndexWatch, blocking: &Blocking) -> Result<(), Problem> {
    let Some(after) = blocking.after else {
        return Ok(());
    };
    let mut receiver = watch.0.clone();
    // The table first: this replica's watch may trail a change by one notification.
    let mut conn = pool.acquire().await.map_err(|e| internal("acquire", e))?;
    let current = instances::index(&mut conn)
        .await
        .map_err(|e| internal("read index", e))?;
    drop(conn);
    // An index from the future (another installation, a restored database) is not waited on.
    if current != after {
        return Ok(());
    }
    // Err: the watcher stopped (shutdown); answer what is there.
    let _ = tokio::time::timeout(blocking.wait, receiver.wait_for(|i| *i > after)).await;
    Ok(())
}

/// A read-only snapshot: the index and the rows read after it belong to one state.
async fn snapshot(pool: &PgPool) -> Result<(Transaction<'static, Postgres>, i64), Problem> {
    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(|e| internal("set isolation", e))?;
    let index = instances::index(&mut tx)
        .await
        .map_err(|e| internal("read index", e))?;
    Ok((tx, index))
}

fn answer(index: i64, body: serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((INDEX_HEADER, index.to_string()))
        .json(body)
}

async fn of_service(
    pool: web::Data<PgPool>,
    watch: web::Data<IndexWatch>,
    name: web::Path<String>,
    query: web::Query<WatchQuery>,
) -> Result<HttpResponse, Problem> {
    let blocking = query.blocking()?;
    if let Some(env) = &query.environment {
        check_env_name(env)?;
    }
    let service = service_id(&pool, &name).await?;
    block(&pool, &watch, &blocking).await?;
    let (mut tx, index) = snapshot(&pool).await?;
    let items = instances::of_service(&mut tx, service, query.environment.as_deref())
        .await
        .map_err(|e| internal("list instances", e))?;
    Ok(answer(
        index,
        serde_json::json!({ "index": index, "items": items }),
    ))
}

/// An instance as the router sees it.
#[derive(Debug, Serialize)]
struct RouteInstance {
    id: Uuid,
    address: String,
    release: i32,
    health: Health,
    state: State,
    routable: bool,
}

/// One service in one environment.
#[derive(Debug, Serialize)]
struct Route {
    service: String,
    service_id: ServiceId,
    environment: String,
    weights: Vec<ReleaseWeight>,
    instances: Vec<RouteInstance>,
}

/// Groups instances and weights by service and environment, sorted by name.
async fn routes(conn: &mut PgConnection) -> Result<Vec<Route>, sqlx::Error> {
    let mut routes: BTreeMap<(String, String), Route> = BTreeMap::new();
    for t in instances::all_traffic(&mut *conn).await? {
        routes.insert(
            (t.service_name.clone(), t.environment.clone()),
            Route {
                service: t.service_name,
                service_id: t.service_id,
                environment: t.environment,
                weights: t.weights.0,
                instances: Vec::new(),
            },
        );
    }
    for i in instances::all(&mut *conn).await? {
        let Instance {
            id,
            service_id,
            service_name,
            environment,
            release,
            address,
            health,
            state,
            routable,
            ..
        } = i;
        routes
            .entry((service_name.clone(), environment.clone()))
            .or_insert_with(|| Route {
                service: service_name,
                service_id,
                environment,
                weights: Vec::new(),
                instances: Vec::new(),
            })
            .instances
            .push(RouteInstance {
                id,
                address,
                release,
                health,
                state,
                routable,
            });
    }
    Ok(routes.into_values().collect())
}

async fn discovery(
    pool: web::Data<PgPool>,
    watch: web::Data<IndexWatch>,
    query: web::Query<WatchQuery>,
) -> Result<HttpResponse, Problem> {
    let blocking = query.blocking()?;
    if query.environment.is_some() {
        return Err(Problem::validation(
            "environment",
            "not a filter of /v1/discovery, which answers every environment",
        ));
    }
    block(&pool, &watch, &blocking).await?;
    let (mut tx, index) = snapshot(&pool).await?;
    let routes = routes(&mut tx)
        .await
        .map_err(|e| internal("read routes", e))?;
    Ok(answer(
        index,
        serde_json::json!({ "index": index, "routes": routes }),
    ))
}
