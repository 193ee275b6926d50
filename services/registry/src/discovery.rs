//! Discovery's background work: the index watcher that wakes blocking queries, and the reaper
//! that forgets instances whose deployer stopped vouching for them.
//!
//! Blocking queries wait on a `tokio::sync::watch` of the latest index rather than polling the
//! database. The watch is fed by `LISTEN slipway_discovery`: every change, made by any registry
//! replica, bumps the index and notifies in its transaction, so all replicas wake at once.

use std::convert::Infallible;
use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db::instances;

/// How stale instances are recognised (section `[discovery]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverySettings {
    /// An instance unseen for this many heartbeat intervals is reaped.
    pub stale_after_intervals: u32,
    /// The heartbeat interval assumed until a heartbeat announces one, milliseconds.
    pub default_heartbeat_ms: u64,
    /// How often the reaper looks, milliseconds.
    pub reap_every_ms: u64,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            stale_after_intervals: 12,
            default_heartbeat_ms: 10_000,
            reap_every_ms: 1_000,
        }
    }
}

/// A `[discovery]` value that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid [discovery] setting `{field}`: {message}")]
pub struct InvalidDiscoverySettings {
    pub field: &'static str,
    pub message: &'static str,
}

impl DiscoverySettings {
    /// The `[discovery]` section from the same layers as the rest of the settings.
    pub fn load() -> Result<Self, slipway_settings::SettingsError> {
        #[derive(Deserialize)]
        struct Section {
            #[serde(default)]
            discovery: DiscoverySettings,
        }
        let section: Section = slipway_settings::load(include_str!("../config/default.toml"))?;
        Ok(section.discovery)
    }

    /// Checked before the service starts.
    pub fn validate(&self) -> Result<(), InvalidDiscoverySettings> {
        let bad = |field, message| Err(InvalidDiscoverySettings { field, message });
        if !(1..=100).contains(&self.stale_after_intervals) {
            return bad("stale_after_intervals", "must be 1 to 100");
        }
        if !(10..=3_600_000).contains(&self.default_heartbeat_ms) {
            return bad("default_heartbeat_ms", "must be 10 to 3600000");
        }
        if !(10..=600_000).contains(&self.reap_every_ms) {
            return bad("reap_every_ms", "must be 10 to 600000");
        }
        Ok(())
    }
}

/// The latest discovery index known to this replica, shared with the HTTP handlers.
#[derive(Clone)]
pub struct IndexWatch(pub watch::Receiver<i64>);

/// Raises the watched index to `index` (never lowers it: notifications may arrive late).
fn publish(sender: &watch::Sender<i64>, index: i64) {
    sender.send_if_modified(|current| {
        let newer = index > *current;
        if newer {
            *current = index;
        }
        newer
    });
}

/// Feeds `sender` from `LISTEN slipway_discovery` until `cancel` fires. After each (re)connect
/// it reads the index from the table, so a change made while it was not listening still wakes
/// the waiters. Dropping `sender` at the end wakes every waiter, which then answers.
pub async fn watch_index(
    pool: PgPool,
    sender: watch::Sender<i64>,
    cancel: CancellationToken,
) -> Result<(), Infallible> {
    let retry = Duration::from_secs(1);
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(instances::CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for discovery changes; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(()),
                        () = tokio::time::sleep(retry) => continue,
                    }
                }
            },
        };
        // Listening now: whatever committed before is in the table, whatever after, notified.
        match sqlx::query_scalar::<_, i64>("SELECT value FROM discovery_index")
            .fetch_one(&pool)
            .await
        {
            Ok(index) => publish(&sender, index),
            Err(e) => tracing::warn!(error = %e, "cannot read the discovery index"),
        }
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                n = listener.try_recv() => n,
            };
            match next {
                Ok(Some(n)) => match n.payload().parse::<i64>() {
                    Ok(index) => publish(&sender, index),
                    Err(_) => tracing::warn!(payload = n.payload(), "odd discovery notification"),
                },
                // Reconnected after a lost connection: changes in between were not notified.
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "discovery listener failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Deletes stale instances every `reap_every_ms` until `cancel` fires. Database errors are
/// logged and the next round tries again: a reaper that stops would leave dead addresses
/// routable, but so would a registry that exits while the database blinks.
pub async fn reap(
    pool: PgPool,
    settings: DiscoverySettings,
    cancel: CancellationToken,
) -> Result<(), Infallible> {
    let mut tick = tokio::time::interval(Duration::from_millis(settings.reap_every_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(e) = reap_once(&pool, &settings).await {
            tracing::warn!(error = %e, "reaping stale instances failed; retrying next round");
        }
    }
}

/// One round: delete, bump the index if anything went, commit.
async fn reap_once(pool: &PgPool, settings: &DiscoverySettings) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let reaped = instances::reap(
        &mut tx,
        i64::try_from(settings.default_heartbeat_ms).unwrap_or(i64::MAX),
        i64::from(settings.stale_after_intervals),
    )
    .await?;
    if reaped.is_empty() {
        return Ok(());
    }
    instances::bump(&mut tx).await?;
    tx.commit().await?;
    for r in &reaped {
        tracing::info!(
            instance = %r.id,
            service = %r.service_name,
            environment = %r.environment,
            "stale instance reaped (no heartbeat)"
        );
    }
    Ok(())
}
