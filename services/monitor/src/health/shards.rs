//! Shards: monitor replicas split the instances they probe.
//!
//! Every instance falls in one of `count` shards (a stable hash of its id, [`shard_of`]). A
//! replica probes only the instances of the shards it leases in `monitor_shards`
//! (`shard, owner, expires_at`). Each round ([`Leases::round`], every `reconcile_ms`) it
//! renews its presence (`monitor_replicas`) and its leases, works out its fair share,
//! `ceil(count / live replicas)` where the live replicas are those whose presence has not
//! expired (itself included; a newcomer holding no shard yet counts), releases what it
//! holds beyond that and claims free or expired shards up to it. So a new replica gets its
//! share within a couple of rounds, and the shards of a replica that died are taken over once
//! its leases expire (`lease_ttl_ms`). A replica that stops on purpose releases its shards at
//! once ([`Leases::release_all`]).
//!
//! The replica that consumes an instance's start is not always the one holding its shard: it
//! `NOTIFY`s [`WAKE`] and every replica runs a round at once, so the holder starts probing
//! without waiting for its next timed round. A round that releases shards `NOTIFY`s too, so a
//! replica with room claims them at once rather than at its next timed round.
//!
//! A replica that cannot renew (database unreachable) stops probing once its leases may have
//! expired, so two replicas never both believe they own a shard for longer than a round.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Deserialize;
use slipway_ids::{InstanceId, ReplicaId};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::Probers;
use crate::db::probes;

/// The channel `NOTIFY`'d when an incarnation to probe is stored (by whichever replica
/// consumed its start), waking the replicas' rounds.
pub const WAKE: &str = "monitor_probes";

/// Section `[shards]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSettings {
    /// How many shards the instances are split into. Every replica must use the same value;
    /// more shards than replicas lets the work spread evenly.
    #[serde(default = "default_count")]
    pub count: u32,
    /// How long a lease lasts without renewal: a replica that died loses its shards after it.
    #[serde(default = "default_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// How often leases are renewed and the probers matched to the shards held (also how long
    /// a new instance seen by another replica may wait for its first probe).
    #[serde(default = "default_reconcile_ms")]
    pub reconcile_ms: u64,
}

fn default_count() -> u32 {
    16
}
fn default_ttl_ms() -> u64 {
    15_000
}
fn default_reconcile_ms() -> u64 {
    1_000
}

impl Default for ShardSettings {
    fn default() -> Self {
        Self {
            count: default_count(),
            lease_ttl_ms: default_ttl_ms(),
            reconcile_ms: default_reconcile_ms(),
        }
    }
}

/// Why the shard settings cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardSettingsError {
    #[error("shards.count must be between 1 and 4096, not {0}")]
    Count(u32),
    #[error(
        "shards.reconcile_ms ({reconcile_ms}) must be under a third of shards.lease_ttl_ms \
         ({lease_ttl_ms}), or leases expire between renewals"
    )]
    Renewal {
        reconcile_ms: u64,
        lease_ttl_ms: u64,
    },
}

impl ShardSettings {
    pub fn validate(&self) -> Result<(), ShardSettingsError> {
        if !(1..=4096).contains(&self.count) {
            return Err(ShardSettingsError::Count(self.count));
        }
        if self.reconcile_ms == 0 || self.reconcile_ms.saturating_mul(3) > self.lease_ttl_ms {
            return Err(ShardSettingsError::Renewal {
                reconcile_ms: self.reconcile_ms,
                lease_ttl_ms: self.lease_ttl_ms,
            });
        }
        Ok(())
    }
}

/// The shard of `instance` among `count`: FNV-1a over the id's bytes, so every replica (and
/// every version) computes the same.
pub fn shard_of(instance: InstanceId, count: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in instance.as_uuid().as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // `count` is at least 1 (validated); `max` keeps a zero from panicking anyway.
    (hash % u64::from(count.max(1))) as u32
}

/// The fair share of each of `live` replicas among `count` shards.
pub fn fair_share(count: u32, live: u32) -> u32 {
    count.div_ceil(live.max(1))
}

/// One replica's leases in `monitor_shards`.
#[derive(Debug, Clone)]
pub struct Leases {
    pool: PgPool,
    owner: ReplicaId,
    count: u32,
    ttl: Duration,
}

impl Leases {
    /// Leases of `owner`; creates the shard rows `0..count` if missing.
    pub async fn new(
        pool: PgPool,
        owner: ReplicaId,
        count: u32,
        ttl: Duration,
    ) -> Result<Self, sqlx::Error> {
        sqlx::query(
            "INSERT INTO monitor_shards (shard) SELECT generate_series(0, $1 - 1) \
             ON CONFLICT (shard) DO NOTHING",
        )
        .bind(i32::try_from(count).unwrap_or(i32::MAX))
        .execute(&pool)
        .await?;
        Ok(Self {
            pool,
            owner,
            count,
            ttl,
        })
    }

    pub fn owner(&self) -> &ReplicaId {
        &self.owner
    }

    /// Renews, releases beyond the fair share and claims up to it; returns the shards held.
    pub async fn round(&self) -> Result<BTreeSet<u32>, sqlx::Error> {
        let count = i32::try_from(self.count).unwrap_or(i32::MAX);
        let ttl = self.ttl.as_secs_f64();
        let owner = self.owner.as_str();
        let mut tx = self.pool.begin().await?;
        // Present first, so the others count this replica even while it holds nothing.
        sqlx::query(
            "INSERT INTO monitor_replicas (owner, expires_at) \
             VALUES ($1, now() + make_interval(secs => $2)) \
             ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at",
        )
        .bind(owner)
        .bind(ttl)
        .execute(&mut *tx)
        .await?;
        let live: i64 =
            sqlx::query_scalar("SELECT count(*) FROM monitor_replicas WHERE expires_at > now()")
                .fetch_one(&mut *tx)
                .await?;
        let fair = fair_share(self.count, u32::try_from(live).unwrap_or(u32::MAX));
        let mut held: Vec<i32> = sqlx::query_scalar(
            "UPDATE monitor_shards SET expires_at = now() + make_interval(secs => $3) \
             WHERE shard < $1 AND owner = $2 RETURNING shard",
        )
        .bind(count)
        .bind(owner)
        .bind(ttl)
        .fetch_all(&mut *tx)
        .await?;
        held.sort_unstable();
        let fair = usize::try_from(fair).unwrap_or(usize::MAX);
        if held.len() > fair {
            let extra = held.split_off(fair);
            sqlx::query(
                "UPDATE monitor_shards SET owner = NULL, expires_at = NULL \
                 WHERE shard = ANY($1) AND owner = $2",
            )
            .bind(&extra)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
            // Wake the rounds (on commit) so that a replica with room claims them now: without
            // it their instances go unprobed until its next timed round.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(WAKE)
                .execute(&mut *tx)
                .await?;
            tracing::info!(owner, released = ?extra, fair, "released shards beyond the fair share");
        } else if held.len() < fair {
            let want = i64::try_from(fair - held.len()).unwrap_or(i64::MAX);
            let claimed: Vec<i32> = sqlx::query_scalar(
                "UPDATE monitor_shards SET owner = $2, expires_at = now() + make_interval(secs => $3) \
                 WHERE shard IN (SELECT shard FROM monitor_shards WHERE shard < $1 \
                   AND (owner IS NULL OR expires_at IS NULL OR expires_at < now()) \
                   ORDER BY shard LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 RETURNING shard",
            )
            .bind(count)
            .bind(owner)
            .bind(ttl)
            .bind(want)
            .fetch_all(&mut *tx)
            .await?;
            if !claimed.is_empty() {
                tracing::info!(owner, claimed = ?claimed, fair, "claimed shards");
            }
            held.extend(claimed);
        }
        // Replicas gone long ago only clutter the table.
        sqlx::query("DELETE FROM monitor_replicas WHERE expires_at < now() - interval '1 hour'")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(held
            .into_iter()
            .filter_map(|s| u32::try_from(s).ok())
            .collect())
    }

    /// Gives every shard of this replica up (it is stopping): others claim them at their next
    /// round instead of waiting for the leases to expire.
    pub async fn release_all(&self) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE monitor_shards SET owner = NULL, expires_at = NULL WHERE owner = $1",
        )
        .bind(self.owner.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM monitor_replicas WHERE owner = $1")
            .bind(self.owner.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

/// One round: leases renewed and claimed, then the probers matched to the shards held.
pub async fn reconcile_once(leases: &Leases, probers: &Probers) -> Result<(), sqlx::Error> {
    let held = leases.round().await?;
    // Taken before the read: a prober started after it may be missing from what is read.
    let loaded_at = Instant::now();
    let probing = probes::probing(&leases.pool).await?;
    let missing = probers.reconcile(held, &probing, loaded_at).await;
    if !missing.is_empty() {
        for probe in probes::probing_of(&leases.pool, &missing).await? {
            probers.ensure(probe).await;
        }
    }
    Ok(())
}

/// Runs a round every `every` until `cancel` fires, then stops the probers and releases the
/// shards. After failed rounds for `ttl` (less one round) the leases may have been taken over:
/// probing stops until a round succeeds again.
pub async fn run(
    leases: Leases,
    probers: Probers,
    every: Duration,
    cancel: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    let give_up = leases.ttl.saturating_sub(every);
    let mut renewed = Instant::now();
    // Woken early when any replica stores a new incarnation, so this one (if it holds the
    // shard) starts probing at once rather than at its next round. Without it: every round.
    let mut listener = match PgListener::connect_with(&leases.pool).await {
        Ok(mut l) => match l.listen(WAKE).await {
            Ok(()) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for new instances; polling only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for new instances; polling only");
            None
        }
    };
    loop {
        let woken = async {
            match listener.as_mut() {
                // An error (the connection is re-established on the next call) waits a round,
                // so a database outage does not spin this loop.
                Some(l) => {
                    if l.recv().await.is_err() {
                        tokio::time::sleep(every).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(every) => {}
            () = woken => {}
        }
        match reconcile_once(&leases, &probers).await {
            Ok(()) => renewed = Instant::now(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the shard leases");
                if renewed.elapsed() >= give_up {
                    tracing::warn!("shard leases may have expired: probing nothing until renewed");
                    probers
                        .reconcile(BTreeSet::new(), &[], Instant::now())
                        .await;
                }
            }
        }
    }
    probers.drain().await;
    match leases.release_all().await {
        Ok(n) => tracing::info!(released = n, "shards released"),
        Err(e) => tracing::warn!(error = %e, "cannot release the shards; they expire"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        let id: InstanceId = "0192f0c4-7a3e-7cc1-9d3a-5b1f2e4d6a80".parse().unwrap();
        // Pinned: replicas of different versions must agree on every instance's shard.
        assert_eq!(shard_of(id, 16), 7);
        assert!(shard_of(id, 16) < 16);
        assert_eq!(shard_of(id, 1), 0);
        // Time-ordered ids created together must not all land in one shard.
        let seen: BTreeSet<u32> = (0..200).map(|_| shard_of(InstanceId::new(), 16)).collect();
        assert!(seen.len() >= 12, "{seen:?}");
    }

    #[test]
    fn the_fair_share_rounds_up() {
        assert_eq!(fair_share(16, 1), 16);
        assert_eq!(fair_share(16, 2), 8);
        assert_eq!(fair_share(16, 3), 6);
        assert_eq!(fair_share(16, 40), 1);
        assert_eq!(fair_share(16, 0), 16);
    }

    #[test]
    fn settings_that_let_leases_lapse_are_refused() {
        assert_eq!(ShardSettings::default().validate(), Ok(()));
        let zero = ShardSettings {
            count: 0,
            ..ShardSettings::default()
        };
        assert_eq!(zero.validate(), Err(ShardSettingsError::Count(0)));
        let slow = ShardSettings {
            reconcile_ms: 6_000,
            ..ShardSettings::default()
        };
        assert!(matches!(
            slow.validate(),
            Err(ShardSettingsError::Renewal { .. })
        ));
    }
}
