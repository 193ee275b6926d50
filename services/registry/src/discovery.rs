//! Discovery's background work: the index watcher that wakes blocking queries, and the
//! housekeeping that forgets old stopped-instance marks and routers long gone. Reaping is not
//! here: it happens only when heartbeats arrive (see `db::heartbeats`), so an outage that
//! stops them reaps nothing.
//!
//! Blocking queries wait on a `tokio::sync::watch` of the latest index rather than polling the
//! database. The watch is fed by `LISTEN slipway_discovery`: every change, made by any registry
//! replica, bumps the index and notifies in its transaction, so all replicas wake at once.
//! The same listener keeps the answers of `crate::answers` honest about heartbeats.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::answers::AnswerCache;
use crate::db::{heartbeats, instances, routers};

/// How stopped-instance marks are kept, and how long a silent router is remembered.
const KEEP_SECONDS: i64 = 3600;

/// How stale instances and routers are recognised (section `[discovery]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverySettings {
    /// An instance is reaped when heartbeats for its environment went on for this many
    /// intervals without listing it.
    pub stale_after_intervals: u32,
    /// The heartbeat interval assumed when a heartbeat announces none, milliseconds.
    pub default_heartbeat_ms: u64,
    /// How often housekeeping runs (old stopped-instance marks, routers gone for an hour),
    /// milliseconds.
    pub reap_every_ms: u64,
    /// A router counts as live for its poll's wait plus this, milliseconds; route steps wait
    /// for live routers only.
    pub router_grace_ms: u64,
    /// How long an answer of a service's instances is kept in memory at most, milliseconds.
    /// Changes and heartbeats drop answers at once (see `answers`); this bounds what nothing
    /// notifies, such as rows changed by hand. 0: every read goes to the database.
    pub answer_ttl_ms: u64,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            stale_after_intervals: 12,
            default_heartbeat_ms: 10_000,
            reap_every_ms: 1_000,
            router_grace_ms: 10_000,
            answer_ttl_ms: 5_000,
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
        if !(100..=600_000).contains(&self.router_grace_ms) {
            return bad("router_grace_ms", "must be 100 to 600000");
        }
        if self.answer_ttl_ms > 60_000 {
            return bad("answer_ttl_ms", "must be 0 to 60000");
        }
        Ok(())
    }
}

/// How long past its poll's wait a router still counts as live (`router_grace_ms`).
#[derive(Clone, Copy)]
pub struct RouterGrace(pub Duration);

/// The latest discovery index known to this replica, shared with the HTTP handlers.
#[derive(Clone)]
pub struct IndexWatch(pub watch::Receiver<i64>);

impl IndexWatch {
    /// The index as last notified (it may trail the table by a notification in flight).
    pub fn current(&self) -> i64 {
        *self.0.borrow()
    }
}

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

/// Feeds `sender` from `LISTEN slipway_discovery` until `cancel` fires, and drops the answers
/// of a service from `answers` when `slipway_discovery_seen` names it (a heartbeat moved its
/// `last_seen`). After each (re)connect it reads the index from the table, so a change made
/// while it was not listening still wakes the waiters, and it drops every kept answer, since a
/// seen-notification may have been missed. Dropping `sender` at the end wakes every waiter,
/// which then answers.
pub async fn watch_index(
    pool: PgPool,
    sender: watch::Sender<i64>,
    answers: Arc<AnswerCache>,
    cancel: CancellationToken,
) -> Result<(), Infallible> {
    let retry = Duration::from_secs(1);
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen_all([instances::CHANNEL, instances::SEEN_CHANNEL])
                .await?;
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
        answers.clear();
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
                Ok(Some(n)) if n.channel() == instances::SEEN_CHANNEL => {
                    answers.forget(n.payload());
                }
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

/// Housekeeping every `reap_every_ms` until `cancel` fires. Database errors are logged and the
/// next round tries again: a registry that exits while the database blinks helps nobody.
pub async fn housekeeping(
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
        if let Err(e) = housekeeping_once(&pool).await {
            tracing::warn!(error = %e, "discovery housekeeping failed; retrying next round");
        }
    }
}

async fn housekeeping_once(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    heartbeats::prune_stopped(&mut conn, KEEP_SECONDS).await?;
    routers::prune(&mut conn, KEEP_SECONDS).await?;
    Ok(())
}
