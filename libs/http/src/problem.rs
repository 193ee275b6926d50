//! RFC 9457 problem details.
//!
//! Every error a slipway API answers is `application/problem+json`: `type` (a stable URI naming
//! the kind of problem), `title` (its summary), `status`, `detail` (what is wrong with this
//! request, for a person) and, where useful, extension members such as `errors`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, error, web};
use serde::{Deserialize, Serialize};

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Problem `type` URIs are this prefix plus a short slug.
pub const TYPE_BASE: &str = "https://slipway.dev/problems/";

/// A problem document; also an actix error, so handlers can `?` it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{status} {title}: {detail}")]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Field-level errors: `[{"field": "name", "message": "..."}]`.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub errors: Vec<FieldError>,
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl Problem {
    /// A problem with a slug (`not-found` → `https://slipway.dev/problems/not-found`).
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Self {
        Self {
            type_uri: format!("{TYPE_BASE}{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            instance: None,
            errors: Vec::new(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    /// 422: the request is well-formed but a field is invalid.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut p = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            format!("`{field}`: {message}"),
        );
        p.errors.push(FieldError {
            field: field.to_owned(),
            message,
        });
        p
    }

    /// 500 with a detail that says nothing of internals; the cause is logged by the caller.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an unexpected error occurred; it has been logged",
        )
    }

    /// 503: a dependency is down.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    pub fn with_instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }
}

/// Logs an unexpected error (with what was being done) and answers a sanitised 500: the one
/// way every service's handlers turn a database or I/O failure into a problem.
pub fn unexpected(context: &str, error: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %error, "{context}");
    Problem::internal()
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        // Serialising this plain struct cannot fail.
        let body = serde_json::to_string(self).unwrap_or_default();
        HttpResponse::build(self.status_code())
            .content_type(PROBLEM_JSON)
            .body(body)
    }
}

/// JSON bodies: size limit, and problems for every way a body can be wrong.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, req| json_problem(err, req).into())
}

fn json_problem(err: error::JsonPayloadError, req: &HttpRequest) -> Problem {
    use error::JsonPayloadError as E;
    let problem = match &err {
        E::ContentType => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "the body must be JSON with `content-type: application/json`",
        ),
        E::OverflowKnownLength { length, limit } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the body is {length} bytes; the limit is {limit}"),
        ),
        E::Overflow { limit } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            format!("the body exceeds the limit of {limit} bytes"),
        ),
        E::Deserialize(e) if e.is_data() => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            format!("the JSON body does not have the expected shape: {e}"),
        ),
        E::Deserialize(e) => Problem::bad_request(format!("the body is not valid JSON: {e}")),
        other => Problem::bad_request(format!("cannot read the body: {other}")),
    };
    problem.with_instance(req.path().to_owned())
}

/// Path parameters that do not parse (e.g. a malformed id) answer 404 with a reason.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, req| {
        Problem::not_found(format!("no such resource: {err}"))
            .with_instance(req.path().to_owned())
            .into()
    })
}

/// Query strings that do not parse answer 400 with a reason.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, req| {
        Problem::bad_request(format!("invalid query string: {err}"))
            .with_instance(req.path().to_owned())
            .into()
    })
}

/// The default service: unknown routes and methods answer a problem, not an empty 404.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    Problem::not_found(format!("no route for {} {}", req.method(), req.path()))
        .with_instance(req.path().to_owned())
        .error_response()
}

/// Registers the JSON/path/query configs and the default service on an app.
pub fn configure(json_limit: usize) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(json_config(json_limit))
            .app_data(path_config())
            .app_data(query_config());
    }
}

#[cfg(test)]
mod tests {
    use actix_web::{App, test, web};
    use serde_json::Value;

    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
    }

    async fn echo(body: web::Json<Body>) -> HttpResponse {
        HttpResponse::Ok().body(body.name.clone())
    }

    async fn call(req: test::TestRequest) -> (u16, String, Value) {
        let app = test::init_service(
            App::new()
                .configure(configure(64))
                .route("/echo", web::post().to(echo))
                .default_service(web::to(not_found)),
        )
        .await;
        let res = test::call_service(&app, req.to_request()).await;
        let status = res.status().as_u16();
        let ct = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        let body = test::read_body(res).await;
        (
            status,
            ct,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    #[actix_web::test]
    async fn every_bad_body_is_a_problem() {
        let cases = [
            (
                test::TestRequest::post()
                    .uri("/echo")
                    .set_payload("{}")
                    .insert_header(("content-type", "text/plain")),
                415,
            ),
            (
                test::TestRequest::post()
                    .uri("/echo")
                    .set_payload("{oops")
                    .insert_header(("content-type", "application/json")),
                400,
            ),
            (
                test::TestRequest::post()
                    .uri("/echo")
                    .set_payload("{\"name\": 3}")
                    .insert_header(("content-type", "application/json")),
                422,
            ),
            (
                test::TestRequest::post()
                    .uri("/echo")
                    .set_payload(format!("{{\"name\": \"{}\"}}", "x".repeat(100)))
                    .insert_header(("content-type", "application/json")),
                413,
            ),
            (test::TestRequest::get().uri("/nowhere"), 404),
        ];
        for (req, want) in cases {
            let (status, ct, body) = call(req).await;
            assert_eq!(status, want, "{body}");
            assert_eq!(ct, PROBLEM_JSON);
            assert_eq!(body["status"], want);
            assert!(body["type"].as_str().unwrap().starts_with(TYPE_BASE));
            assert!(!body["detail"].as_str().unwrap().is_empty());
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let p = Problem::validation("name", "must be a DNS label");
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].field, "name");
        assert!(p.detail.contains("name"));
    }
}
