use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_ids::{ProjectName, ServiceId};
use sqlx::{PgConnection, PgPool};

use crate::domain::NewService;

/// A stored service, as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Service {
    pub id: ServiceId,
    pub name: String,
    /// The project it belongs to (the gateway checks callers' roles there).
    pub project: ProjectName,
    /// Shown redacted: a URL stored before credentials in URLs were refused may still hold one,
    /// and every reader (viewers, the gateway's build requests, events) gets this form.
    #[serde(serialize_with = "redacted")]
    pub repository: Option<String>,
    pub branch: String,
    pub created_at: DateTime<Utc>,
}

fn redacted<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    url.as_deref()
        .map(slipway_events::repository::redact)
        .serialize(s)
}

/// Why an insert failed.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("a service named `{0}` already exists")]
    NameTaken(String),
    #[error("a service with id {0} already exists")]
    IdTaken(ServiceId),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub async fn insert(conn: &mut PgConnection, new: &NewService) -> Result<Service, InsertError> {
    sqlx::query_as(
        "INSERT INTO services (id, name, project, repository, repository_key, branch) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, name, project, repository, branch, created_at",
    )
    .bind(new.id)
    .bind(new.name.as_str())
    .bind(&new.project)
    .bind(new.repository.as_ref().map(|r| r.as_str()))
    .bind(new.repository.as_ref().map(|r| r.key()))
    .bind(new.branch.as_str())
    .fetch_one(conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            if db.constraint() == Some("services_pkey") {
                InsertError::IdTaken(new.id)
            } else {
                InsertError::NameTaken(new.name.as_str().to_owned())
            }
        }
        _ => InsertError::Database(e),
    })
}

/// The project of service `id`, read in the caller's transaction (for the events it enqueues).
pub async fn project_of(
    conn: &mut PgConnection,
    id: ServiceId,
) -> Result<Option<ProjectName>, sqlx::Error> {
    sqlx::query_scalar("SELECT project FROM services WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await
}

pub async fn by_name(pool: &PgPool, name: &str) -> Result<Option<Service>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, project, repository, branch, created_at FROM services WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
}

/// Which services to list.
#[derive(Debug, Default)]
pub struct Filter<'a> {
    /// Only names sorting after this one (keyset pagination).
    pub after: Option<&'a str>,
    /// Only services whose repository has this key (see `Repository::key`).
    pub repository_key: Option<String>,
    /// Only services of these projects (the gateway's view of what the caller may see).
    pub projects: Option<Vec<ProjectName>>,
}

/// Services ordered by name.
pub async fn list(
    pool: &PgPool,
    filter: &Filter<'_>,
    limit: i64,
) -> Result<Vec<Service>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, project, repository, branch, created_at FROM services \
         WHERE ($1::text IS NULL OR name > $1) AND ($2::text IS NULL OR repository_key = $2) \
         AND ($4::text[] IS NULL OR project = ANY($4)) ORDER BY name LIMIT $3",
    )
    .bind(filter.after)
    .bind(filter.repository_key.as_deref())
    .bind(limit)
    .bind(filter.projects.as_deref())
    .fetch_all(pool)
    .await
}
