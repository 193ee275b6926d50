//! The audit log: every mutating call (anything but GET, HEAD, OPTIONS) is recorded with who
//! made it, the project it touched, the role it acted with, what it was and how it ended,
//! including refusals (401, 403, 4xx).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use slipway_http::Problem;
use slipway_ids::{ProjectName, TokenId};
use sqlx::PgPool;

use crate::auth::{Caller, Scoped};

/// One audit entry.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Entry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub token_id: Option<TokenId>,
    pub token_name: Option<String>,
    /// The project the call touched, when it named one.
    pub project: Option<ProjectName>,
    /// The role it acted with there (`platform-admin` for platform admins); none when it was
    /// refused before acting.
    pub role: Option<String>,
    pub method: String,
    pub path: String,
    pub status: i32,
}

/// Middleware recording mutating requests after they are answered.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, Error> {
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let method = req.method().to_string();
    let path = req.path().to_owned();
    let pool = req.app_data::<web::Data<PgPool>>().cloned();
    let res = next.call(req).await?;
    if mutating && let Some(pool) = pool {
        let caller = res.request().extensions().get::<Caller>().cloned();
        let scoped = res.request().extensions().get::<Scoped>().cloned();
        let (project, acting) = scoped.map(|s| (s.project, s.acting)).unwrap_or_default();
        let status = i32::from(res.status().as_u16());
        let written = sqlx::query(
            "INSERT INTO audit_log (token_id, token_name, project, role, method, path, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(caller.as_ref().map(|c| c.token_id))
        .bind(caller.as_ref().map(|c| c.token_name.clone()))
        .bind(project)
        .bind(acting.map(|a| a.as_str()))
        .bind(&method)
        .bind(&path)
        .bind(status)
        .execute(pool.get_ref())
        .await;
        if let Err(e) = written {
            tracing::error!(error = %e, %method, %path, status, "audit log write failed");
        }
    }
    Ok(res)
}

/// `?limit=` of an audit listing.
#[derive(Debug, Deserialize)]
pub struct Query {
    limit: Option<i64>,
}

impl Query {
    /// 1 to 1000, default 100.
    pub fn limit(&self) -> Result<i64, Problem> {
        let limit = self.limit.unwrap_or(100);
        if (1..=1000).contains(&limit) {
            Ok(limit)
        } else {
            Err(Problem::validation("limit", "must be between 1 and 1000"))
        }
    }
}

/// The latest `limit` entries (of `project` only, when given), newest first.
pub async fn latest(
    pool: &PgPool,
    limit: i64,
    project: Option<&ProjectName>,
) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, token_id, token_name, project, role, method, path, status FROM audit_log \
         WHERE ($2::text IS NULL OR project = $2) ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .bind(project)
    .fetch_all(pool)
    .await
}
