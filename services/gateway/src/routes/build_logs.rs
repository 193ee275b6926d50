//! `GET /v1/builds/{id}/logs`: a build's output. `?follow=true` streams it as Server-Sent
//! Events while the build runs and ends the stream when the build ends; `Last-Event-ID` (or
//! `?after=`) resumes after a line already seen.
//!
//! Each line is one event: `id:` its sequence number, `event: line`, `data:` a JSON object
//! `{seq, step, stream, line, at}`. The last event is `event: end` with `{"status": ...}`.

use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::Value;
use slipway_http::Problem;
use slipway_ids::BuildId;
use sqlx::PgPool;

use crate::upstream::{Upstream, Upstreams};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/builds/{id}/logs", web::get().to(logs));
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    follow: bool,
    after: Option<i64>,
}

/// How often a follower asks the builder for new lines.
const POLL: Duration = Duration::from_millis(250);
/// A followed build that no builder has picked up gives up after this long.
const NOT_QUEUED_LIMIT: Duration = Duration::from_secs(300);

async fn page(upstreams: &Upstreams, id: BuildId, after: i64) -> Result<Option<Value>, Problem> {
    let answer = upstreams
        .call(
            Upstream::Builder,
            reqwest::Method::GET,
            &format!("/v1/builds/{id}/logs?after={after}"),
            None,
        )
        .await?;
    if answer.status == actix_web::http::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    answer.ok_json().map(Some)
}

async fn logs(
    req: HttpRequest,
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    id: web::Path<BuildId>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, Problem> {
    let id = *id;
    let resume = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let after = resume.or(query.after).unwrap_or(-1);
    let known = super::builds::requested(&pool, id).await?.is_some();
    let first = page(&upstreams, id, after).await?;
    if first.is_none() && !known {
        return Err(Problem::not_found(format!("no build with id {id}")));
    }
    if !query.follow {
        let body = first.unwrap_or_else(
            || serde_json::json!({ "status": "requested", "finished": false, "lines": [] }),
        );
        return Ok(HttpResponse::Ok().json(body));
    }

    let upstreams = upstreams.into_inner();
    let state = Follow {
        upstreams,
        id,
        after,
        pending: first,
        waited: Duration::ZERO,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<Bytes, actix_web::Error>(chunk), state))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(stream))
}

/// The state of one follower.
struct Follow {
    upstreams: std::sync::Arc<Upstreams>,
    id: BuildId,
    after: i64,
    pending: Option<Value>,
    waited: Duration,
    done: bool,
}

impl Follow {
    /// The next bytes to send, or `None` when the stream is over.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            let page = match self.pending.take() {
                Some(p) => Some(p),
                None => {
                    tokio::time::sleep(POLL).await;
                    match page(&self.upstreams, self.id, self.after).await {
                        Ok(p) => p,
                        Err(problem) => {
                            self.done = true;
                            return Some(event(
                                "error",
                                None,
                                &serde_json::json!({ "detail": problem.detail }),
                            ));
                        }
                    }
                }
            };
            let Some(page) = page else {
                self.waited += POLL;
                if self.waited > NOT_QUEUED_LIMIT {
                    self.done = true;
                    return Some(event(
                        "error",
                        None,
                        &serde_json::json!({ "detail": "no builder picked the build up" }),
                    ));
                }
                continue;
            };
            let lines = page["lines"].as_array().cloned().unwrap_or_default();
            let mut out = String::new();
            for line in &lines {
                let seq = line["seq"].as_i64().unwrap_or(self.after);
                self.after = self.after.max(seq);
                out.push_str(&event_text("line", Some(seq), line));
            }
            // The builder reads the status before the lines: when it says finished, every line
            // was in this page (or a later one, if the page was full).
            if page["finished"].as_bool() == Some(true) && lines.len() < 1000 {
                self.done = true;
                out.push_str(&event_text(
                    "end",
                    None,
                    &serde_json::json!({ "status": page["status"] }),
                ));
            }
            if !out.is_empty() {
                return Some(Bytes::from(out));
            }
        }
    }
}

fn event_text(name: &str, id: Option<i64>, data: &Value) -> String {
    let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
    format!("{id}event: {name}\ndata: {data}\n\n")
}

fn event(name: &str, id: Option<i64>, data: &Value) -> Bytes {
    Bytes::from(event_text(name, id, data))
}
