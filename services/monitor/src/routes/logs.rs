//! `GET /v1/services/{name}/environments/{env}/logs[?instance=ID][&since_seq=N][&limit=200]`:
//! instance output, oldest first within the page.
//!
//! Without `since_seq` the page is the newest `limit` lines (a tail); with it, the `limit`
//! lines of `instance` after sequence number `since_seq` (following a tail). Sequence numbers
//! count each instance's output, so `since_seq` needs `instance`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use slipway_http::Problem;
use sqlx::PgPool;
use uuid::Uuid;

use super::{environment, internal, known_service};
use crate::db::logs::{self, Page};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/services/{name}/environments/{env}/logs",
        web::get().to(list),
    );
}

/// The largest page.
const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 200;

/// The query as given: parsed field by field below, so a bad value names its field (the
/// extractor's own message does not).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    instance: Option<String>,
    since_seq: Option<String>,
    limit: Option<String>,
}

/// Parses an optional query field, answering 400 naming it when it does not parse.
fn field<T: std::str::FromStr>(
    value: Option<&str>,
    name: &str,
    expected: &str,
) -> Result<Option<T>, Problem> {
    value
        .map(|v| {
            v.parse().map_err(|_| {
                Problem::bad_request(format!("`{name}` must be {expected}, not `{v}`"))
            })
        })
        .transpose()
}

async fn list(
    pool: web::Data<PgPool>,
    path: web::Path<(String, String)>,
    query: web::Query<Query>,
) -> Result<HttpResponse, Problem> {
    let (name, env) = path.into_inner();
    environment(&env, "env")?;
    let instance: Option<Uuid> = field(query.instance.as_deref(), "instance", "an instance id")?;
    let since_seq: Option<i64> = field(query.since_seq.as_deref(), "since_seq", "an integer")?;
    let limit = field(query.limit.as_deref(), "limit", "an integer")?.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Problem::validation(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    if let Some(seq) = since_seq {
        if seq < -1 {
            return Err(Problem::validation("since_seq", "must be -1 or more"));
        }
        if instance.is_none() {
            return Err(Problem::validation(
                "since_seq",
                "needs `instance`: sequence numbers count each instance's output",
            ));
        }
    }
    known_service(&pool, &name).await?;
    let items = logs::page(
        &pool,
        &Page {
            service: &name,
            environment: &env,
            instance,
            since_seq,
            limit,
        },
    )
    .await
    .map_err(|e| internal("read logs", e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}
