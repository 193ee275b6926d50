//! Releases, environments and config: owned by the registry, forwarded with role checks.
//! `If-Match` and `ETag` pass through, so optimistic concurrency works end to end.

use actix_web::{HttpRequest, HttpResponse, web};
use slipway_http::Problem;

use crate::upstream::{Upstream, Upstreams};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/services/{name}/releases", web::get().to(read))
        .route("/services/{name}/releases/{n}", web::get().to(read))
        .route("/services/{name}/environments", web::get().to(read))
        .route(
            "/services/{name}/environments/{env}/config",
            web::get().to(read),
        )
        .route("/services/{name}/environments/{env}", web::put().to(write))
        .route(
            "/services/{name}/environments/{env}/config",
            web::put().to(write),
        );
}

/// Path segments are names (DNS labels), release numbers or ids; anything else cannot exist.
/// Shared by every route that forwards its own path and query to an upstream.
pub(crate) fn safe_path(req: &HttpRequest) -> Result<String, Problem> {
    let path = req.path().strip_prefix("/v1").unwrap_or(req.path());
    let ok = path
        .split('/')
        .skip(1)
        .all(|seg| !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !ok {
        return Err(Problem::not_found(format!("no resource at {}", req.path())));
    }
    let query = req.query_string();
    Ok(if query.is_empty() {
        format!("/v1{path}")
    } else {
        format!("/v1{path}?{query}")
    })
}

async fn read(req: HttpRequest, upstreams: web::Data<Upstreams>) -> Result<HttpResponse, Problem> {
    let path = safe_path(&req)?;
    upstreams
        .call(Upstream::Registry, reqwest::Method::GET, &path, None)
        .await?
        .into_response()
}

async fn write(
    req: HttpRequest,
    upstreams: web::Data<Upstreams>,
    body: Option<web::Json<serde_json::Value>>,
) -> Result<HttpResponse, Problem> {
    let path = safe_path(&req)?;
    let if_match: Vec<(&str, String)> = req
        .headers()
        .get("if-match")
        .and_then(|v| v.to_str().ok())
        .map(|v| vec![("if-match", v.to_owned())])
        .unwrap_or_default();
    let body = body.map(|b| b.into_inner());
    upstreams
        .call_with(
            Upstream::Registry,
            reqwest::Method::PUT,
            &path,
            body.as_ref(),
            &if_match,
        )
        .await?
        .into_response()
}
