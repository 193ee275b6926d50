//! Retention: the gateway's tables that grow with use are pruned by age, so none grows
//! without bound. Audit entries (`retention.audit_days`), operations
//! (`retention.operations_days`), service creations (`retention.creations_hours`) and webhook
//! deliveries (`webhooks.delivery_retention_days`).
//!
//! Every replica runs the pruner. Each batch deletes at most `batch_size` rows, oldest first,
//! chosen with `FOR UPDATE SKIP LOCKED` in one short statement: replicas pruning at the same
//! time take different rows instead of waiting on each other, no transaction holds many locks,
//! and a failed batch is simply done again at the next tick. Rows pruned are counted in
//! `slipway_gateway_pruned_rows_total{table}`.
//!
//! Pruned operations do not make builds and deployments unreachable: the access guard falls
//! back to asking their owner (builder, deployer) which service they are of.

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use chrono::Utc;
use prometheus::{IntCounterVec, Opts, Registry};
use serde::Deserialize;
use sqlx::PgPool;

/// `[retention]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Days audit entries are kept.
    #[serde(default = "default_audit_days")]
    pub audit_days: NonZeroU32,
    /// Days operations (accepted builds, deploys, rollbacks, scales, cancels) are kept.
    #[serde(default = "default_operations_days")]
    pub operations_days: NonZeroU32,
    /// Hours a service creation is remembered: how long a retry with the same
    /// `Idempotency-Key` gets the first answer again.
    #[serde(default = "default_creations_hours")]
    pub creations_hours: NonZeroU32,
    /// Seconds between two pruning passes.
    #[serde(default = "default_interval")]
    pub interval_seconds: NonZeroU32,
    /// Most rows one DELETE removes.
    #[serde(default = "default_batch")]
    pub batch_size: NonZeroU32,
}

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

fn default_audit_days() -> NonZeroU32 {
    non_zero(365)
}

fn default_operations_days() -> NonZeroU32 {
    non_zero(30)
}

fn default_creations_hours() -> NonZeroU32 {
    non_zero(24)
}

fn default_interval() -> NonZeroU32 {
    non_zero(3600)
}

fn default_batch() -> NonZeroU32 {
    non_zero(1000)
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            audit_days: default_audit_days(),
            operations_days: default_operations_days(),
            creations_hours: default_creations_hours(),
            interval_seconds: default_interval(),
            batch_size: default_batch(),
        }
    }
}

/// A pruned table, and how its old rows are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    AuditLog,
    Operations,
    ServiceCreations,
    WebhookDeliveries,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::AuditLog,
        Table::Operations,
        Table::ServiceCreations,
        Table::WebhookDeliveries,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::AuditLog => "audit_log",
            Table::Operations => "operations",
            Table::ServiceCreations => "service_creations",
            Table::WebhookDeliveries => "webhook_deliveries",
        }
    }

    /// One batch: rows older than `$1`, at most `$2`, oldest first, skipping rows another
    /// replica is deleting. An operation a kept cancel points at waits until that cancel goes
    /// (cancels come after what they cancel, so they age out first).
    fn batch_sql(self) -> &'static str {
        match self {
            Table::AuditLog => {
                "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < $1 \
                 ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            Table::Operations => {
                "DELETE FROM operations WHERE id IN (SELECT o.id FROM operations o \
                 WHERE o.created_at < $1 \
                 AND NOT EXISTS (SELECT 1 FROM operations c WHERE c.cancels = o.id) \
                 ORDER BY o.created_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
            Table::ServiceCreations => {
                "DELETE FROM service_creations WHERE service_id IN (SELECT service_id \
                 FROM service_creations WHERE created_at < $1 ORDER BY created_at LIMIT $2 \
                 FOR UPDATE SKIP LOCKED)"
            }
            Table::WebhookDeliveries => {
                "DELETE FROM webhook_deliveries WHERE (provider, delivery_id) IN \
                 (SELECT provider, delivery_id FROM webhook_deliveries WHERE received_at < $1 \
                 ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            }
        }
    }
}

/// How long each table keeps its rows.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub audit: chrono::Duration,
    pub operations: chrono::Duration,
    pub creations: chrono::Duration,
    pub deliveries: chrono::Duration,
    pub batch_size: NonZeroU32,
}

impl Policy {
    pub fn new(settings: &RetentionSettings, deliveries: chrono::Duration) -> Self {
        Self {
            audit: chrono::Duration::days(i64::from(settings.audit_days.get())),
            operations: chrono::Duration::days(i64::from(settings.operations_days.get())),
            creations: chrono::Duration::hours(i64::from(settings.creations_hours.get())),
            deliveries,
            batch_size: settings.batch_size,
        }
    }

    fn keep(&self, table: Table) -> chrono::Duration {
        match table {
            Table::AuditLog => self.audit,
            Table::Operations => self.operations,
            Table::ServiceCreations => self.creations,
            Table::WebhookDeliveries => self.deliveries,
        }
    }
}

/// `slipway_gateway_pruned_rows_total{table}` (the registry adds the `slipway_` prefix).
#[derive(Clone)]
pub struct PruneMetrics {
    pruned: IntCounterVec,
}

impl PruneMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let pruned = IntCounterVec::new(
            Opts::new(
                "gateway_pruned_rows_total",
                "Rows deleted by the retention pruner, by table",
            ),
            &["table"],
        )?;
        registry.register(Box::new(pruned.clone()))?;
        for table in Table::ALL {
            // Present at 0 from the start, so a dashboard sees the series before any prune.
            pruned.with_label_values(&[table.name()]);
        }
        Ok(Self { pruned })
    }
}

/// Prunes `table` down to its retention, batch by batch, until a batch finds less than a full
/// batch; returns the rows deleted.
pub async fn prune_table(pool: &PgPool, policy: &Policy, table: Table) -> Result<u64, sqlx::Error> {
    let cutoff = Utc::now() - policy.keep(table);
    let limit = i64::from(policy.batch_size.get());
    let mut total = 0;
    loop {
        let done = sqlx::query(table.batch_sql())
            .bind(cutoff)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected();
        total += done;
        // A short batch may only mean another replica holds the rest, or that operations wait
        // for their cancels to go first; the next pass takes them.
        if done < limit.unsigned_abs() {
            return Ok(total);
        }
    }
}

/// One pass over every table; a failing table is logged and the others still pruned.
pub async fn prune_all(pool: &PgPool, policy: &Policy, metrics: Option<&PruneMetrics>) -> u64 {
    let mut total = 0;
    for table in Table::ALL {
        match prune_table(pool, policy, table).await {
            Ok(n) => {
                total += n;
                if let Some(metrics) = metrics {
                    metrics.pruned.with_label_values(&[table.name()]).inc_by(n);
                }
                if n > 0 {
                    tracing::info!(
                        table = table.name(),
                        pruned = n,
                        "pruned rows past their retention"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(table = table.name(), error = %e, "cannot prune; retrying at the next pass")
            }
        }
    }
    total
}

/// Prunes `interval` after start (a minute at most, so a replica that restarts often still
/// prunes), then every `interval`, until `stop` completes.
pub async fn prune_until(
    pool: PgPool,
    policy: Policy,
    interval: Duration,
    metrics: PruneMetrics,
    stop: impl Future<Output = ()>,
) -> Result<(), std::convert::Infallible> {
    let first = tokio::time::Instant::now() + interval.min(Duration::from_secs(60));
    let mut tick = tokio::time::interval_at(first, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = tick.tick() => {
                prune_all(&pool, &policy, Some(&metrics)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_keep_a_year_of_audit_and_a_month_of_operations() {
        let policy = Policy::new(&RetentionSettings::default(), chrono::Duration::days(7));
        assert_eq!(policy.audit, chrono::Duration::days(365));
        assert_eq!(policy.operations, chrono::Duration::days(30));
        assert_eq!(policy.creations, chrono::Duration::hours(24));
        assert_eq!(
            policy.keep(Table::WebhookDeliveries),
            chrono::Duration::days(7)
        );
    }

    #[test]
    fn settings_refuse_zero_and_unknown_keys() {
        let parse = |v| serde_json::from_value::<RetentionSettings>(v);
        assert!(parse(serde_json::json!({"audit_days": 0})).is_err());
        assert!(parse(serde_json::json!({"audit_dayz": 3})).is_err());
        let set = parse(serde_json::json!({"operations_days": 3})).unwrap_or_default();
        assert_eq!(set.operations_days.get(), 3);
    }
}
