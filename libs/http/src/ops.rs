//! Operational endpoints: `/healthz` (the process is alive), `/readyz` (it can do its job: its
//! database and broker answer) and `/metrics` (Prometheus text).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures::future::BoxFuture;
use serde::Serialize;

use crate::Metrics;

/// One dependency check for `/readyz`: its name and an async probe returning why it failed
/// (e.g. `database`, or `consumer slipway-builder-events` waiting out an outage).
#[derive(Clone)]
pub struct ReadinessCheck {
    pub name: Cow<'static, str>,
    pub probe: Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
}

impl ReadinessCheck {
    pub fn new<F, Fut>(name: impl Into<Cow<'static, str>>, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name: name.into(),
            probe: Arc::new(move || Box::pin(probe())),
        }
    }
}

/// The checks `/readyz` runs, each under a timeout.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<ReadinessCheck>,
}

#[derive(Serialize)]
struct CheckResult {
    name: Cow<'static, str>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Readiness {
    pub fn with(mut self, check: ReadinessCheck) -> Self {
        self.checks.push(check);
        self
    }

    async fn run(&self) -> Vec<CheckResult> {
        let runs = self.checks.iter().map(|c| async move {
            let outcome = tokio::time::timeout(Duration::from_secs(3), (c.probe)()).await;
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("timed out after 3s".to_owned()),
            };
            CheckResult {
                name: c.name.clone(),
                ok: error.is_none(),
                error,
            }
        });
        futures::future::join_all(runs).await
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let checks = readiness.run().await;
    let ready = checks.iter().all(|c| c.ok);
    let body = serde_json::json!({ "status": if ready { "ready" } else { "not ready" }, "checks": checks });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(metrics.render())
}

/// Mounts the three endpoints; expects `Data<Readiness>` and `Data<Metrics>` on the app.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

#[cfg(test)]
mod tests {
    use actix_web::{App, test};

    use super::*;

    #[actix_web::test]
    async fn readyz_reports_each_failing_check() {
        let readiness = Readiness::default()
            .with(ReadinessCheck::new("database", || async { Ok(()) }))
            .with(ReadinessCheck::new("kafka", || async {
                Err("no brokers".to_owned())
            }))
            .with(ReadinessCheck::new(
                format!("consumer {}", "slipway-deployer-commands"),
                || async {
                    Err(
                        "consumer group slipway-deployer-commands: waiting out a database \
                         outage since 2026-12-01T10:00:00Z: pool timed out"
                            .to_owned(),
                    )
                },
            ));
        let app = test::init_service(
            App::new()
                .app_data(web::Data::new(readiness))
                .app_data(web::Data::new(Metrics::new("t")))
                .configure(routes),
        )
        .await;
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/readyz").to_request()).await;
        assert_eq!(res.status(), 503);
        let body: serde_json::Value = test::read_body_json(res).await;
        assert_eq!(body["checks"][0]["ok"], true);
        assert_eq!(body["checks"][1]["error"], "no brokers");
        assert_eq!(
            body["checks"][2]["name"],
            "consumer slipway-deployer-commands"
        );
        assert!(
            body["checks"][2]["error"]
                .as_str()
                .unwrap_or_default()
                .contains("waiting out a database outage since")
        );

        let res =
            test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
        assert_eq!(res.status(), 200);
        let res =
            test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
        assert_eq!(res.status(), 200);
    }
}
