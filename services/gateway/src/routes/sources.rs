//! `POST /v1/services/{name}/sources`: ship straight from a folder, without a git server.
//! The body is a `.tar.gz` of the folder (`tar czf - . | curl --data-binary @- ...`). The
//! builder checks and keeps it; the gateway then requests its build like any other.

use actix_web::{HttpResponse, web};
use futures::StreamExt;
use slipway_events::slipway::BuildTrigger;
use slipway_http::Problem;
use sqlx::PgPool;

use crate::auth::{Caller, Scoped};
use crate::commands;
use crate::upstream::{Upstream, Upstreams};

/// Largest upload accepted, compressed (the builder also limits what it unpacks to).
pub const MAX_UPLOAD: usize = 50 * 1024 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/services/{name}/sources", web::post().to(upload));
}

async fn upload(
    caller: Caller,
    scoped: Scoped,
    pool: web::Data<PgPool>,
    upstreams: web::Data<Upstreams>,
    mut payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    let service = scoped.service()?;
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| Problem::bad_request(format!("the upload was cut short: {e}")))?;
        if body.len() + chunk.len() > MAX_UPLOAD {
            return Err(Problem::new(
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                format!("uploads are limited to {MAX_UPLOAD} bytes (compressed)"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    if body.is_empty() {
        return Err(Problem::validation(
            "archive",
            "the body must be a .tar.gz of the source folder",
        ));
    }
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("service", &service.name)
        .finish();
    let answer = upstreams
        .call_bytes(Upstream::Builder, &format!("/v1/sources?{query}"), body)
        .await?;
    if answer.status != actix_web::http::StatusCode::CREATED {
        return answer.into_response(); // the builder's 422 says what is wrong with the archive
    }
    let stored = answer.ok_json()?;
    let upload: uuid::Uuid = serde_json::from_value(stored["id"].clone())
        .map_err(|e| super::internal("read upload id", e))?;
    let trigger = BuildTrigger {
        kind: "upload".into(),
        delivery: None,
        actor: Some(caller.token_name.clone()),
    };
    let id = commands::request_build(
        &pool,
        &service,
        "upload".into(),
        None,
        Some(upload),
        trigger,
    )
    .await?;
    Ok(commands::accepted(id))
}
