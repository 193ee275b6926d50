//! A lease while it is driven: renewed every third of its time to live by a task beside the
//! driver, which stops (publishing nothing more) once the lease is lost.
//!
//! The driver also pauses on its own when renewals have not succeeded for two thirds of the
//! time to live (the database unreachable, say): by then another replica may soon take the
//! deployment over, and two drivers must not act on one deployment's instances at once. The
//! database's expiry is counted from the renewal's own statement, which runs after the moment
//! this side counts from, so this side always gives up first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::leases::{self, FencedError, Lease};

/// A lease held by this replica, kept alive by [`Held::keep_alive`].
pub struct Held {
    pub lease: Lease,
    ttl: Duration,
    /// Until when this side trusts the lease without a newer renewal.
    valid_until: Mutex<Instant>,
    /// Fired once the lease is known lost (another replica took it over).
    pub lost: CancellationToken,
}

impl Held {
    /// A lease just claimed (`claimed_at`: when the claim was sent).
    pub fn new(lease: Lease, ttl: Duration, claimed_at: Instant) -> Arc<Self> {
        Arc::new(Self {
            lease,
            ttl,
            valid_until: Mutex::new(claimed_at + Self::trusted(ttl)),
            lost: CancellationToken::new(),
        })
    }

    fn trusted(ttl: Duration) -> Duration {
        ttl * 2 / 3
    }

    /// Whether the driver may act now: the lease is not lost and was renewed recently enough.
    pub fn usable(&self) -> bool {
        !self.lost.is_cancelled()
            && self
                .valid_until
                .lock()
                .map(|t| Instant::now() < *t)
                .unwrap_or(false)
    }

    /// Renews the lease until `stop` fires or the lease is lost. Errors (the database away)
    /// are retried at the next renewal; the driver pauses meanwhile (see [`Held::usable`]).
    pub async fn keep_alive(&self, pool: &PgPool, stop: CancellationToken) {
        let every = (self.ttl / 3).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let sent = Instant::now();
            match leases::renew(pool, &self.lease, self.ttl).await {
                Ok(()) => {
                    if let Ok(mut t) = self.valid_until.lock() {
                        *t = sent + Self::trusted(self.ttl);
                    }
                }
                Err(FencedError::Lost { .. }) => {
                    tracing::warn!(deployment.id = %self.lease.deployment, epoch = self.lease.epoch,
                        "lease lost to another replica; this replica stops driving the deployment");
                    self.lost.cancel();
                    return;
                }
                Err(FencedError::Database(e)) => {
                    tracing::warn!(deployment.id = %self.lease.deployment, error = %e,
                        "lease not renewed; retrying");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_ids::ReplicaId;

    fn lease() -> Lease {
        Lease {
            deployment: uuid::Uuid::now_v7(),
            owner: ReplicaId::generate("deployer"),
            epoch: 1,
        }
    }

    #[test]
    fn a_lease_is_trusted_for_two_thirds_of_its_ttl_and_never_once_lost() {
        let ttl = Duration::from_secs(3);
        let fresh = Held::new(lease(), ttl, Instant::now());
        assert!(fresh.usable());
        fresh.lost.cancel();
        assert!(!fresh.usable(), "lost");

        // Claimed (or last renewed) 2.5 s ago: the database may expire it in half a second,
        // so the driver must not act on it any more.
        let Some(then) = Instant::now().checked_sub(Duration::from_millis(2500)) else {
            return;
        };
        assert!(!Held::new(lease(), ttl, then).usable());
        let Some(recent) = Instant::now().checked_sub(Duration::from_millis(1500)) else {
            return;
        };
        assert!(Held::new(lease(), ttl, recent).usable());
    }
}
