//! The `instance_logs` table: what instances wrote, one row per line.

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_events::deploy::InstanceLogs;
use sqlx::PgPool;
use uuid::Uuid;

/// Stores a batch; lines already stored (a redelivered batch) are skipped. Returns the number
/// of lines newly stored.
pub async fn store(pool: &PgPool, batch: &InstanceLogs) -> Result<u64, sqlx::Error> {
    if batch.lines.is_empty() {
        return Ok(0);
    }
    let first = i64::try_from(batch.first_seq).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut seqs = Vec::with_capacity(batch.lines.len());
    let mut streams = Vec::with_capacity(batch.lines.len());
    let mut lines = Vec::with_capacity(batch.lines.len());
    let mut ats = Vec::with_capacity(batch.lines.len());
    for (offset, l) in (0_i64..).zip(&batch.lines) {
        seqs.push(first.saturating_add(offset));
        streams.push(l.stream.as_str());
        // PostgreSQL text cannot hold NUL; an instance may still write one.
        lines.push(l.line.replace('\0', "\u{FFFD}"));
        ats.push(l.at);
    }
    let i = &batch.instance;
    let done = sqlx::query(
        "INSERT INTO instance_logs (instance_id, seq, stream, line, at, service_id, \
         service_name, environment, release) \
         SELECT $1, s, st, l, a, $6, $7, $8, $9 \
         FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::timestamptz[]) AS t(s, st, l, a) \
         ON CONFLICT (instance_id, seq) DO NOTHING",
    )
    .bind(i.instance_id)
    .bind(&seqs)
    .bind(&streams)
    .bind(&lines)
    .bind(&ats)
    .bind(i.service_id)
    .bind(&i.service_name)
    .bind(&i.environment)
    .bind(i.release)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// One stored line as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Line {
    pub instance_id: Uuid,
    pub seq: i64,
    pub stream: String,
    pub line: String,
    pub at: DateTime<Utc>,
    pub release: i32,
}

/// Which lines to read.
pub struct Page<'a> {
    pub service: &'a str,
    pub environment: &'a str,
    pub instance: Option<Uuid>,
    /// Lines of `instance` after this sequence number, oldest first; absent: the newest
    /// `limit` lines.
    pub since_seq: Option<i64>,
    pub limit: i64,
}

/// A page of lines, oldest first.
pub async fn page(pool: &PgPool, page: &Page<'_>) -> Result<Vec<Line>, sqlx::Error> {
    let filter = "service_name = $1 AND environment = $2 \
                  AND ($3::uuid IS NULL OR instance_id = $3)";
    let sql = match page.since_seq {
        Some(_) => format!(
            "SELECT instance_id, seq, stream, line, at, release FROM instance_logs \
             WHERE {filter} AND seq > $4 ORDER BY at, instance_id, seq LIMIT $5"
        ),
        // The newest lines, turned back to oldest first.
        None => format!(
            "SELECT * FROM (SELECT instance_id, seq, stream, line, at, release \
             FROM instance_logs WHERE {filter} AND $4::bigint IS NULL \
             ORDER BY at DESC, instance_id DESC, seq DESC LIMIT $5) newest \
             ORDER BY at, instance_id, seq"
        ),
    };
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.service)
        .bind(page.environment)
        .bind(page.instance)
        .bind(page.since_seq)
        .bind(page.limit)
        .fetch_all(pool)
        .await
}

/// Deletes lines written before `before`; returns how many.
pub async fn prune(pool: &PgPool, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM instance_logs WHERE at < $1")
        .bind(before)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
}
