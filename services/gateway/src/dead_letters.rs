//! Dead letters kept for platform admins: every record any service's consumer dead-lettered
//! (see `slipway_kafka::dead_letter`), stored from the dead-letter topic by [`Store`], listed and
//! replayed by `routes/dead_letters.rs`. The original record is kept byte for byte, so a replay
//! publishes exactly it again and its signature is checked again.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_kafka::dead_letter::{DeadLetter, DeadLetterSink};
use sqlx::{PgConnection, PgPool};

/// Stores what the dead-letter topic carries (idempotent: a redelivered record inserts nothing).
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl DeadLetterSink for Store {
    async fn store(&self, letter: &DeadLetter) -> anyhow::Result<()> {
        insert(&self.pool, letter).await?;
        Ok(())
    }
}

/// PostgreSQL text cannot hold NUL; a record written by anyone may.
fn text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// The same dead-letter record (same place on the dead-letter topic, same content) hashes the
/// same; another one at a reused offset (a broker that lost its data) does not.
fn fingerprint(letter: &DeadLetter) -> Vec<u8> {
    let mut h = Sha256::new();
    let mut part = |bytes: Option<&[u8]>| match bytes {
        Some(b) => {
            h.update([1]);
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        }
        None => h.update([0]),
    };
    part(Some(&letter.dlq_partition.to_be_bytes()));
    part(Some(&letter.dlq_offset.to_be_bytes()));
    part(letter.key.as_deref());
    part(letter.payload.as_deref());
    part(Some(letter.reason.as_bytes()));
    part(Some(letter.group.as_bytes()));
    for (name, value) in &letter.original_headers {
        part(Some(name.as_bytes()));
        part(value.as_deref());
    }
    h.finalize().to_vec()
}

/// Headers as stored: `[[name, base64 value or null], ...]`, in order.
fn headers_json(headers: &[(String, Option<Vec<u8>>)]) -> serde_json::Value {
    headers
        .iter()
        .map(|(name, value)| {
            serde_json::json!([text(name), value.as_ref().map(|v| STANDARD.encode(v))])
        })
        .collect()
}

/// Inserts `letter` unless it is there already; `true` when inserted.
pub async fn insert(pool: &PgPool, letter: &DeadLetter) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO dead_letters (fingerprint, source_topic, source_partition, source_offset, \
         record_key, headers, payload, event_type, event_id, event_source, reason, \
         consumer_group, attempts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (fingerprint) DO NOTHING",
    )
    .bind(fingerprint(letter))
    .bind(text(&letter.topic))
    .bind(letter.partition)
    .bind(letter.offset)
    .bind(letter.key.as_deref())
    .bind(headers_json(&letter.original_headers))
    .bind(letter.payload.as_deref())
    .bind(letter.header("ce_type").map(text))
    .bind(letter.header("ce_id").map(text))
    .bind(letter.header("ce_source").map(text))
    .bind(text(&letter.reason))
    .bind(text(&letter.group))
    .bind(letter.attempts)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        tracing::warn!(
            group = %letter.group,
            topic = %letter.topic,
            partition = letter.partition,
            offset = letter.offset,
            reason = %letter.reason,
            "dead letter stored; list it with GET /v1/admin/dead-letters"
        );
    }
    Ok(inserted == 1)
}

/// One stored dead letter.
#[derive(Debug, sqlx::FromRow)]
pub struct Row {
    pub id: i64,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub record_key: Option<Vec<u8>>,
    pub headers: serde_json::Value,
    pub payload: Option<Vec<u8>>,
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    pub event_source: Option<String>,
    pub reason: String,
    pub consumer_group: String,
    pub attempts: i32,
    pub dead_lettered_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replayed_by: Option<String>,
}

impl Row {
    /// The original headers, decoded from their stored form.
    pub fn original_headers(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let Some(items) = self.headers.as_array() else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|pair| {
                let name = pair.get(0)?.as_str()?.to_owned();
                let value = match pair.get(1)? {
                    serde_json::Value::String(b64) => Some(STANDARD.decode(b64).ok()?),
                    _ => None,
                };
                Some((name, value))
            })
            .collect()
    }

    /// The answer shape: bytes shown as (lossy) text, which all slipway records are.
    pub fn view(&self) -> View {
        let lossy = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into());
        View {
            id: self.id,
            consumer_group: self.consumer_group.clone(),
            reason: self.reason.clone(),
            attempts: self.attempts,
            topic: self.source_topic.clone(),
            partition: self.source_partition,
            offset: self.source_offset,
            event_type: self.event_type.clone(),
            event_id: self.event_id.clone(),
            event_source: self.event_source.clone(),
            key: lossy(&self.record_key),
            headers: self
                .original_headers()
                .into_iter()
                .map(|(name, value)| (name, value.map(|v| String::from_utf8_lossy(&v).into())))
                .collect(),
            payload: lossy(&self.payload),
            dead_lettered_at: self.dead_lettered_at,
            replayed_at: self.replayed_at,
            replayed_by: self.replayed_by.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct View {
    pub id: i64,
    pub consumer_group: String,
    pub reason: String,
    pub attempts: i32,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    pub event_source: Option<String>,
    pub key: Option<String>,
    pub headers: Vec<(String, Option<String>)>,
    pub payload: Option<String>,
    pub dead_lettered_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replayed_by: Option<String>,
}

/// What a listing asks for.
#[derive(Debug, Default)]
pub struct Filter {
    pub group: Option<String>,
    /// A topic's name, with or without the installation's prefix.
    pub topic: Option<String>,
    pub event_type: Option<String>,
    /// Only ids below this (the previous page's `next`).
    pub before: Option<i64>,
    pub limit: i64,
}

const COLUMNS: &str = "id, source_topic, source_partition, source_offset, record_key, headers, \
     payload, event_type, event_id, event_source, reason, consumer_group, attempts, \
     dead_lettered_at, replayed_at, replayed_by";

/// Newest first.
pub async fn list(pool: &PgPool, filter: &Filter) -> Result<Vec<Row>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters \
         WHERE ($1::text IS NULL OR consumer_group = $1) \
           AND ($2::text IS NULL OR right(source_topic, length($2)) = $2) \
           AND ($3::text IS NULL OR event_type = $3) \
           AND ($4::bigint IS NULL OR id < $4) \
         ORDER BY id DESC LIMIT $5"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(&filter.group)
        .bind(&filter.topic)
        .bind(&filter.event_type)
        .bind(filter.before)
        .bind(filter.limit)
        .fetch_all(pool)
        .await
}

/// The row `id`, locked until the caller's transaction ends (two replays of one dead letter
/// queue up, and the second sees the first's mark).
pub async fn lock(conn: &mut PgConnection, id: i64) -> Result<Option<Row>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1 FOR UPDATE");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// Marks `id` replayed by `by`; returns when.
pub async fn mark_replayed(
    conn: &mut PgConnection,
    id: i64,
    by: &str,
) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE dead_letters SET replayed_at = now(), replayed_by = $2 WHERE id = $1 \
         RETURNING replayed_at",
    )
    .bind(id)
    .bind(by)
    .fetch_one(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_fingerprints_tell_records_apart() {
        let letter = DeadLetter {
            dlq_partition: 0,
            dlq_offset: 3,
            topic: "slipway.services".into(),
            partition: 1,
            offset: 9,
            group: "g".into(),
            reason: "r".into(),
            attempts: 1,
            key: Some(b"k".to_vec()),
            payload: Some(vec![0, 255]),
            original_headers: vec![
                ("ce_id".into(), Some(b"1".to_vec())),
                ("empty".into(), None),
            ],
        };
        let row = Row {
            id: 1,
            source_topic: letter.topic.clone(),
            source_partition: 1,
            source_offset: 9,
            record_key: letter.key.clone(),
            headers: headers_json(&letter.original_headers),
            payload: letter.payload.clone(),
            event_type: None,
            event_id: None,
            event_source: None,
            reason: "r".into(),
            consumer_group: "g".into(),
            attempts: 1,
            dead_lettered_at: Utc::now(),
            replayed_at: None,
            replayed_by: None,
        };
        assert_eq!(row.original_headers(), letter.original_headers);
        let mut other = letter.clone();
        other.payload = Some(vec![0, 254]);
        assert_ne!(fingerprint(&letter), fingerprint(&other));
        assert_eq!(fingerprint(&letter), fingerprint(&letter.clone()));
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
    }
}
