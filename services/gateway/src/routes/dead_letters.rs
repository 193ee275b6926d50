//! `/v1/admin/dead-letters`: what the consumers of every service could never apply, for
//! platform admins (`auth/rules.rs`). Listing filters by consumer group, topic and event type,
//! newest first, a page at a time; a replay republishes the original record to its original
//! topic exactly as it was (key, headers with the signature, value), so it is verified and
//! handled again like the first time, and marks the dead letter replayed (once: a second replay
//! answers 409). The audit middleware records each replay.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use slipway_events::Topic;
use slipway_http::Problem;
use slipway_kafka::EventProducer;
use sqlx::PgPool;

use super::internal;
use crate::auth::Caller;
use crate::dead_letters::{self, Filter};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/dead-letters", web::get().to(list))
        .route("/admin/dead-letters/{id}/replay", web::post().to(replay));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// The consumer group that gave up, e.g. `slipway-deployer-commands`.
    group: Option<String>,
    /// The topic it was read from, e.g. `slipway.commands`.
    topic: Option<String>,
    /// Its CloudEvents type.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// The previous page's `next`.
    before: Option<i64>,
    /// 1 to 500, default 50.
    limit: Option<i64>,
}

/// `GET /v1/admin/dead-letters[?group=&topic=&type=&before=&limit=]`: `{items, next}`, `next`
/// being the `before` of the following page (absent on the last).
async fn list(
    pool: web::Data<PgPool>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let query = query.into_inner();
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Problem::validation("limit", "must be 1 to 500"));
    }
    for (field, value) in [
        ("group", &query.group),
        ("topic", &query.topic),
        ("type", &query.event_type),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > 300)
        {
            return Err(Problem::validation(field, "must be 1 to 300 characters"));
        }
    }
    let filter = Filter {
        group: query.group,
        topic: query.topic,
        event_type: query.event_type,
        before: query.before,
        limit,
    };
    let rows = dead_letters::list(&pool, &filter)
        .await
        .map_err(|e| internal("list dead letters", e))?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let items: Vec<_> = rows.iter().map(dead_letters::Row::view).collect();
    let mut body = serde_json::json!({ "items": items });
    if let Some(next) = next {
        body["next"] = serde_json::json!(next);
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /v1/admin/dead-letters/{id}/replay`: 202 with where the record went.
async fn replay(
    caller: Caller,
    pool: web::Data<PgPool>,
    producer: web::Data<EventProducer>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let id: i64 = id
        .parse()
        .map_err(|_| Problem::not_found(format!("no dead letter with id `{id}`")))?;
    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    let row = dead_letters::lock(&mut tx, id)
        .await
        .map_err(|e| internal("read dead letter", e))?
        .ok_or_else(|| Problem::not_found(format!("no dead letter with id {id}")))?;
    if let Some(at) = row.replayed_at {
        let by = row.replayed_by.as_deref().unwrap_or("someone");
        return Err(Problem::conflict(format!(
            "dead letter {id} was replayed at {at} by {by}; a replay that fails again is \
             dead-lettered again under a new id"
        )));
    }
    // Only back where it came from: one of this installation's topics, never the dead-letter
    // topic itself.
    let topic = producer.topics().parse(&row.source_topic);
    if topic.is_none() || topic == Some(Topic::DeadLetter) {
        return Err(Problem::conflict(format!(
            "dead letter {id} names no topic of this installation to replay to (`{}`)",
            row.source_topic
        )));
    }
    let (partition, offset) = producer
        .republish(
            &row.source_topic,
            row.record_key.as_deref(),
            row.payload.as_deref(),
            &row.original_headers(),
        )
        .await
        .map_err(|e| Problem::unavailable(format!("the broker did not take the record: {e}")))?;
    let at = dead_letters::mark_replayed(&mut tx, id, &caller.token_name)
        .await
        .map_err(|e| internal("mark replayed", e))?;
    tx.commit().await.map_err(|e| internal("commit", e))?;
    tracing::info!(dead_letter = id, topic = %row.source_topic, partition, offset, by = %caller.token_name, "dead letter replayed");
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "id": id,
        "topic": row.source_topic,
        "partition": partition,
        "offset": offset,
        "replayed_at": at,
    })))
}
