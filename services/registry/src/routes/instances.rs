//! Discovered instances, with blocking queries in the manner of Consul's.
//!
//! - `GET /v1/services/{name}/instances[?environment=E]`: a service's instances.
//! - `GET /v1/discovery`: every service and environment with instances or traffic weights,
//!   what the edge router needs.
//!
//! Both answer `{"index": n, ...}` and `X-Slipway-Index: n`. The index is the routing table's
//! version. An edge router names itself in `X-Slipway-Router` when it polls discovery; its
//! `index` is then its report of the version it serves (kept in `routers`, read by the
//! deployer's route step through `/internal/v1/traffic/...`). With `?index=n` the answer waits
//! until the index moves past `n` or `wait` passes (default 30 s, at most 2 min; `30s`,
//! `500ms`, `2m`), then answers the current state; a caller long-polls by sending back the
//! index it last got. Index and contents are read in one snapshot, so they always agree.
//! A service's instances are answered from memory while the index has not moved past the
//! answer and no heartbeat of the service came since (see `crate::answers`).

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use slipway_http::Problem;
use slipway_ids::ReplicaId;
use slipway_wire::instances::RouteInstance;
use slipway_wire::routes::{Discovery, ROUTER_HEADER, Route};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::config::check_env_name;
use super::{internal, service_id};
use crate::answers::AnswerCache;
use crate::db::instances::{self, Instance};
use crate::db::routers;
use crate::discovery::{IndexWatch, RouterGrace};

/// The header carrying the index of an answer.
pub use slipway_wire::routes::INDEX_HEADER;
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

/// Returns once the index is past `after` (at once without one), or when `wait` passes; with
/// the index the table had when it looked (`None` when it did not), which an answer must reach.
async fn block(
    pool: &PgPool,
    watch: &IndexWatch,
    blocking: &Blocking,
) -> Result<Option<i64>, Problem> {
    let Some(after) = blocking.after else {
        return Ok(None);
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
        return Ok(Some(current));
    }
    // Err: the watcher stopped (shutdown); answer what is there.
    let _ = tokio::time::timeout(blocking.wait, receiver.wait_for(|i| *i > after)).await;
    Ok(Some(current))
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

fn answer(index: i64, body: Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((INDEX_HEADER, index.to_string()))
        .insert_header(ContentType::json())
        .body(body)
}

/// A service's instances: from the [`AnswerCache`] while the index has not moved past its
/// answer, else read in a snapshot (and kept). A kept answer names an existing service, so a
/// hit skips the name lookup too; a miss looks it up first, so an unknown name still gets 404.
async fn of_service(
    pool: web::Data<PgPool>,
    watch: web::Data<IndexWatch>,
    answers: web::Data<AnswerCache>,
    name: web::Path<String>,
    query: web::Query<WatchQuery>,
) -> Result<HttpResponse, Problem> {
    let blocking = query.blocking()?;
    let environment = query.environment.as_deref();
    if let Some(env) = environment {
        check_env_name(env)?;
    }
    if blocking.after.is_none()
        && let Some((index, body)) = answers.get(&name, environment, watch.current())
    {
        return Ok(answer(index, body));
    }
    let service = service_id(&pool, &name).await?;
    let seen = block(&pool, &watch, &blocking).await?;
    // Past the wait: an answer at the watched index, or at the table's when that was ahead.
    let min_index = watch.current().max(seen.unwrap_or(0));
    if let Some((index, body)) = answers.get(&name, environment, min_index) {
        return Ok(answer(index, body));
    }
    let generation = answers.generation();
    let (mut tx, index) = snapshot(&pool).await?;
    let items = instances::of_service(&mut tx, service, environment)
        .await
        .map_err(|e| internal("list instances", e))?;
    drop(tx);
    let body = serde_json::to_vec(&serde_json::json!({ "index": index, "items": items }))
        .map_err(|e| internal("serialize instances", e))?;
    let body = Bytes::from(body);
    answers.put(&name, environment, (index, generation), body.clone());
    Ok(answer(index, body))
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
            .push(RouteInstance::new(id, address, release, health, state));
    }
    Ok(routes.into_values().collect())
}

/// The router named in [`ROUTER_HEADER`], if any: 1 to 128 of `A-Z a-z 0-9 . _ -` (replica
/// ids and pod names), so a garbled header cannot fill the table with odd keys.
fn router_of(req: &HttpRequest) -> Result<Option<ReplicaId>, Problem> {
    let Some(value) = req.headers().get(ROUTER_HEADER) else {
        return Ok(None);
    };
    let valid = value.to_str().ok().filter(|v| {
        (1..=128).contains(&v.len())
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    });
    match valid {
        Some(v) => Ok(Some(ReplicaId::from_name(v))),
        None => Err(Problem::validation(
            ROUTER_HEADER,
            "a router id is 1 to 128 letters, digits, `.`, `_` or `-`",
        )),
    }
}

async fn discovery(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    watch: web::Data<IndexWatch>,
    grace: web::Data<RouterGrace>,
    query: web::Query<WatchQuery>,
) -> Result<HttpResponse, Problem> {
    let blocking = query.blocking()?;
    if query.environment.is_some() {
        return Err(Problem::validation(
            "environment",
            "not a filter of /v1/discovery, which answers every environment",
        ));
    }
    if let Some(router) = router_of(&req)? {
        // The poll is the report: this router serves table `index` and, while the poll is
        // held, is alive; past the wait plus the grace without another poll it is gone.
        let held = if blocking.after.is_some() {
            blocking.wait
        } else {
            Duration::ZERO
        };
        let live_ms = i64::try_from((held + grace.0).as_millis()).unwrap_or(i64::MAX);
        let mut conn = pool.acquire().await.map_err(|e| internal("acquire", e))?;
        routers::polled(&mut conn, &router, blocking.after.unwrap_or(0), live_ms)
            .await
            .map_err(|e| internal("record router", e))?;
    }
    block(&pool, &watch, &blocking).await?;
    let (mut tx, index) = snapshot(&pool).await?;
    let routes = routes(&mut tx)
        .await
        .map_err(|e| internal("read routes", e))?;
    let body = Discovery {
        index: u64::try_from(index).unwrap_or(0),
        routes,
    };
    Ok(HttpResponse::Ok()
        .insert_header((INDEX_HEADER, index.to_string()))
        .json(body))
}
