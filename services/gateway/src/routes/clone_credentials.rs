//! `PUT/DELETE /v1/services/{name}/clone-credential`: the token or SSH deploy key this
//! service's builds fetch with, forwarded to the builder, which keeps it sealed. Write-only:
//! nothing answers it back, and the body is neither logged nor audited (the audit log keeps
//! method, path and status only).
//!
//! Bodies: `{"token": "...", "username": "x-access-token"}` (HTTPS; `username` optional) or
//! `{"ssh_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n..."}` (SSH). The builder validates them.

use actix_web::{HttpResponse, web};
use slipway_http::Problem;

use crate::auth::Scoped;
use crate::upstream::{Upstream, Upstreams};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/services/{name}/clone-credential", web::put().to(put))
        .route(
            "/services/{name}/clone-credential",
            web::delete().to(delete),
        );
}

/// `PUT`: sets (or replaces) the credential; 204.
/// The guard has checked the caller's `deployer` role in the service's project (auth/rules.rs).
async fn put(
    scoped: Scoped,
    upstreams: web::Data<Upstreams>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, Problem> {
    let service = scoped.service()?;
    let path = format!("/v1/services/{}/clone-credential", service.id);
    upstreams
        .call(Upstream::Builder, reqwest::Method::PUT, &path, Some(&body))
        .await?
        .into_response()
}

/// `DELETE`: removes it; builds then fetch without one. 204, or 404 when there is none.
async fn delete(scoped: Scoped, upstreams: web::Data<Upstreams>) -> Result<HttpResponse, Problem> {
    let service = scoped.service()?;
    let path = format!("/v1/services/{}/clone-credential", service.id);
    upstreams
        .call(Upstream::Builder, reqwest::Method::DELETE, &path, None)
        .await?
        .into_response()
}
