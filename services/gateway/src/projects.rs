//! Projects and the grants of roles in them: the gateway's tables (`projects`, `grants`).
//! Which project a service belongs to is the registry's; the gateway checks it on every call.

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_ids::{ProjectName, TokenId};
use sqlx::{PgConnection, PgPool};

use crate::auth::Role;

/// A project as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Project {
    pub name: ProjectName,
    pub created_at: DateTime<Utc>,
}

/// Creates a project; `None` if one of that name exists.
pub async fn create(
    pool: &PgPool,
    name: &ProjectName,
    by: TokenId,
) -> Result<Option<Project>, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO projects (name, created_by) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING \
         RETURNING name, created_at",
    )
    .bind(name)
    .bind(by)
    .fetch_optional(pool)
    .await
}

pub async fn get(
    conn: &mut PgConnection,
    name: &ProjectName,
) -> Result<Option<Project>, sqlx::Error> {
    sqlx::query_as("SELECT name, created_at FROM projects WHERE name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await
}

/// Projects by name: all of them, or only those in `only`.
pub async fn list(
    pool: &PgPool,
    only: Option<&[&ProjectName]>,
) -> Result<Vec<Project>, sqlx::Error> {
    let only: Option<Vec<&str>> = only.map(|o| o.iter().map(|p| p.as_str()).collect());
    sqlx::query_as(
        "SELECT name, created_at FROM projects WHERE ($1::text[] IS NULL OR name = ANY($1)) \
         ORDER BY name",
    )
    .bind(only)
    .fetch_all(pool)
    .await
}

/// A grant as a project's admins see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Grant {
    pub project: ProjectName,
    pub token_id: TokenId,
    pub token_name: String,
    pub role: String,
    pub granted_at: DateTime<Utc>,
}

const GRANT: &str = "SELECT g.project, g.token_id, t.name AS token_name, g.role, g.granted_at \
     FROM grants g JOIN api_tokens t ON t.id = g.token_id";

/// The grants of live tokens in `project`, by token name.
pub async fn grants(pool: &PgPool, project: &ProjectName) -> Result<Vec<Grant>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{GRANT} WHERE g.project = $1 AND t.revoked_at IS NULL ORDER BY t.name, g.token_id"
    )))
    .bind(project)
    .fetch_all(pool)
    .await
}

/// What [`grant`] did.
#[derive(Debug)]
pub enum Granted {
    /// The token had no role in the project before.
    New(Grant),
    /// Its role there is now this one.
    Changed(Grant),
    /// No live token has that id.
    NoSuchToken,
}

/// Gives `token` the role `role` in `project` (which must exist), replacing any role it had.
pub async fn grant(
    conn: &mut PgConnection,
    project: &ProjectName,
    token: TokenId,
    role: Role,
    by: TokenId,
) -> Result<Granted, sqlx::Error> {
    let live: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE id = $1 AND revoked_at IS NULL)",
    )
    .bind(token)
    .fetch_one(&mut *conn)
    .await?;
    if !live {
        return Ok(Granted::NoSuchToken);
    }
    // `xmax = 0` only for a row this statement inserted (not one it updated).
    let (inserted,): (bool,) = sqlx::query_as(
        "INSERT INTO grants (token_id, project, role, granted_by) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (token_id, project) DO UPDATE SET role = EXCLUDED.role, \
         granted_by = EXCLUDED.granted_by, granted_at = now() RETURNING (xmax = 0)",
    )
    .bind(token)
    .bind(project)
    .bind(role.as_str())
    .bind(by)
    .fetch_one(&mut *conn)
    .await?;
    let grant: Grant = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{GRANT} WHERE g.project = $1 AND g.token_id = $2"
    )))
    .bind(project)
    .bind(token)
    .fetch_one(&mut *conn)
    .await?;
    Ok(if inserted {
        Granted::New(grant)
    } else {
        Granted::Changed(grant)
    })
}

/// Takes `token`'s role in `project` away; `false` if it had none.
pub async fn revoke(
    pool: &PgPool,
    project: &ProjectName,
    token: TokenId,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM grants WHERE project = $1 AND token_id = $2")
        .bind(project)
        .bind(token)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
