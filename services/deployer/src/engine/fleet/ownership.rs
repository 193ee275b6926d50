//! Which replica supervises which instance, and what happens when a replica is gone.
//!
//! Every replica renews its liveness row (`deployer_replicas`) every `heartbeat_ms`; one whose
//! row is missing or older than `timeout_ms` is gone, and so is one of the same node whose
//! recorded process (pid, start time, boot, pid namespace) is seen dead. Then:
//! - **Adoption.** A live replica on the same node claims each of its instances (compare-and-
//!   set on the owner's epoch, so of two replicas adopting at once one wins), checks its
//!   process by its recorded identity (pid, start time, boot), keeps a running one under its
//!   supervision (watching the pid, which is not its child), starts a dead one again, finishes
//!   a stop that was asked for, and forgets one that never got a process.
//! - **Fencing.** A replica acts on its instances (restarts) only under a lease that ends
//!   before its liveness row can expire in the others' eyes (`timeout_ms` × 3/4 after the last
//!   renewal was *sent*). When it lapses (database unreachable, the process was frozen), the
//!   replica lets go of every instance without stopping any; once it renews again it adopts
//!   what is still its own like any other instance. So an instance never has two supervisors,
//!   and a SIGKILLed replica's instances are supervised again within `timeout_ms` and a round.
//! - **Stop requests.** A replica that wants an instance of another replica stopped sets its
//!   state to `stopping`; the owner's loop sees it and stops it; the asking replica waits for
//!   the row to go.
//! - **Orphans.** Processes of this node with a run record and no row are stopped.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{EngineError, Fleet, TargetError};
use crate::db::instances::{self, Instance};
use crate::db::replicas;
use crate::domain::InstanceState;
use crate::target::{Known, Placement, ProcessIdentity};

/// How long a take-over that failed waits before the next try.
const RETRY_TAKE_OVER: Duration = Duration::from_secs(5);

/// Section `[replicas]` of the deployer's settings: how replicas tell each other they live.
#[derive(Debug, Clone, Deserialize)]
pub struct ReplicaSettings {
    /// How often a replica renews its liveness row.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A replica not heard of for this long is gone: its instances are adopted.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How often a replica looks for instances to adopt, stop requests and orphans.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    2_000
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_poll_ms() -> u64 {
    500
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: default_heartbeat_ms(),
            timeout_ms: default_timeout_ms(),
            poll_ms: default_poll_ms(),
        }
    }
}

impl ReplicaSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(3 * self.heartbeat_ms).max(300))
    }
    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(50))
    }
    fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms.max(20))
    }
    /// How long after a renewal was sent this replica may act: well before the others may
    /// take its instances over.
    fn fence_after(&self) -> Duration {
        self.timeout() * 3 / 4
    }
}

/// This process, as its liveness row records it.
pub(super) fn this_process() -> Option<replicas::ReplicaProcess> {
    let identity = ProcessIdentity::of(std::process::id(), None)?;
    Some(replicas::ReplicaProcess {
        pid: i32::try_from(identity.pid).ok()?,
        start_time: i64::try_from(identity.start_time).ok()?,
        boot_id: identity.boot_id,
        pid_ns: std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .map(|l| l.to_string_lossy().into_owned()),
    })
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one adoption round did (for logs and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Instances claimed from a gone replica (or taken back after fencing).
    pub adopted: Vec<Uuid>,
    /// Of those, the ones found dead and started again.
    pub restarted: Vec<Uuid>,
    /// Orphan processes stopped.
    pub orphans: Vec<Uuid>,
}

impl Fleet {
    /// The instances this replica owns (what its heartbeats announce).
    pub async fn owned_instances(&self) -> Result<Vec<Instance>, EngineError> {
        Ok(instances::owned(&self.pool, &self.replica).await?)
    }

    /// Renews this replica's liveness row and, with it, its lease. If the row had expired
    /// (this replica was away longer than the timeout, or a neighbour saw its process dead),
    /// others may have adopted its instances: it lets go of all of them first (they keep
    /// running; what is still its own is taken back by the next round).
    async fn try_renew(&self) -> Result<(), sqlx::Error> {
        let sent = Instant::now();
        let ttl_ms = self.replicas.timeout().as_millis() as i64;
        let renewal = replicas::renew(
            &self.liveness,
            &self.replica,
            &self.node,
            self.process.as_ref(),
            ttl_ms,
        );
        // A database that hangs must not hold the fence back: a renewal that does not answer
        // within the heartbeat counts as failed.
        let lost = tokio::time::timeout(self.replicas.heartbeat(), renewal)
            .await
            .map_err(|_| {
                sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "liveness renewal took longer than the heartbeat",
                ))
            })??;
        if lost {
            tracing::warn!(replica = %self.replica, "liveness had expired; letting go of every instance");
            self.target.detach().await;
        }
        self.target
            .lease()
            .renew_until(sent + self.replicas.fence_after());
        Ok(())
    }

    /// Declares gone the replicas of this node whose process is dead (killed, then restarted
    /// as a new replica), so their instances are adopted now rather than after the timeout.
    /// Only within one boot and one pid namespace, where a pid and start time name a process.
    async fn bury_dead_neighbours(&self) -> Result<(), EngineError> {
        let Some(mine) = self.process.as_ref().filter(|p| p.pid_ns.is_some()) else {
            return Ok(());
        };
        let ttl_ms = self.replicas.timeout().as_millis() as i64;
        for n in replicas::neighbours(&self.pool, &self.replica, &self.node, ttl_ms).await? {
            if n.process.pid_ns != mine.pid_ns || n.process.boot_id != mine.boot_id {
                continue;
            }
            let (Ok(pid), Ok(start_time)) = (
                u32::try_from(n.process.pid),
                u64::try_from(n.process.start_time),
            ) else {
                continue;
            };
            let identity = ProcessIdentity {
                pid,
                pgid: n.process.pid,
                start_time,
                boot_id: n.process.boot_id.clone(),
                uid: None,
            };
            if !identity.is_running() && replicas::declare_gone(&self.pool, &n, ttl_ms).await? {
                tracing::warn!(replica = %n.replica, pid, "replica's process is dead: its instances are adopted now");
            }
        }
        Ok(())
    }

    /// [`Self::try_renew`], a failure logged; answers whether it renewed.
    async fn renew(&self) -> bool {
        match self.try_renew().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, replica = %self.replica, "liveness not renewed");
                false
            }
        }
    }

    /// At start-up: announces this replica and adopts what it may adopt right away, so a
    /// resumed rollout sees what runs.
    pub async fn recover(&self) -> Result<(), EngineError> {
        self.try_renew().await?;
        self.reconcile().await.map(|_| ())
    }

    /// The replica's loops until `cancel`: liveness (with fencing) and reconciliation. On
    /// cancel, supervision ends without stopping anything and the replica retires its row, so
    /// the others adopt its instances at once.
    pub async fn supervise(self: Arc<Self>, cancel: CancellationToken) -> Result<(), EngineError> {
        let mut liveness = {
            let fleet = self.clone();
            let cancel = cancel.clone();
            // Ends with this future, however it ends: a replica whose supervision stopped
            // must not go on looking alive.
            AbortOnDrop(tokio::spawn(async move { fleet.liveness(cancel).await }))
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.replicas.poll()) => {}
            }
            if !self.target.lease().valid() {
                continue;
            }
            if let Err(e) = self.clone().round().await {
                tracing::warn!(error = %e, "instance reconciliation failed; retrying");
            }
        }
        let _ = (&mut liveness.0).await;
        self.target.detach().await;
        if let Err(e) = replicas::retire(&self.pool, &self.replica).await {
            tracing::warn!(error = %e, "replica not retired; its instances wait for its timeout");
        }
        Ok(())
    }

    async fn liveness(&self, cancel: CancellationToken) {
        let mut fenced = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.replicas.heartbeat()) => {}
            }
            let renewed = self.renew().await;
            if renewed {
                // Rows of replicas long gone that own nothing any more are only noise.
                let long_gone = 10 * self.replicas.timeout().as_millis() as i64;
                if let Err(e) = replicas::forget_gone(&self.pool, long_gone).await {
                    tracing::debug!(error = %e, "gone replicas not forgotten");
                }
            }
            if renewed && fenced {
                tracing::info!(replica = %self.replica, "liveness renewed; adopting own instances again");
                fenced = false;
            }
            if !renewed && !fenced && !self.target.lease().valid() {
                // Others may adopt our instances from now on: let go of all of them (they keep
                // running) rather than risk a second supervisor.
                tracing::warn!(replica = %self.replica, "lease lapsed; letting go of every instance");
                self.target.detach().await;
                fenced = true;
            }
        }
    }

    /// One round: stop requests, releases, adoption and orphans. Stops run in the background.
    async fn round(self: Arc<Self>) -> Result<Round, EngineError> {
        let owned = self.owned_instances().await?;
        let supervised = self.target.supervised();
        let owned_ids: HashSet<Uuid> = owned.iter().map(|r| r.id).collect();
        for id in supervised.difference(&owned_ids) {
            if !self.is_busy(*id) {
                self.target.release(*id).await;
            }
        }
        for row in owned {
            if row.state == InstanceState::Stopping
                && supervised.contains(&row.id)
                && !self.is_busy(row.id)
            {
                let fleet = self.clone();
                tokio::spawn(async move {
                    let Some(_busy) = fleet.busy(row.id) else {
                        return;
                    };
                    if let Err(e) = fleet
                        .stop_owned(&row, "stopped (asked by another replica)")
                        .await
                    {
                        tracing::warn!(instance.id = %row.id, error = %e, "stop request failed");
                    }
                });
            }
        }
        self.reconcile().await
    }

    /// Adopts what may be adopted and stops orphans (also the first pass at start-up).
    pub async fn reconcile(&self) -> Result<Round, EngineError> {
        let mut round = Round::default();
        self.bury_dead_neighbours().await?;
        let timeout = self.replicas.timeout();
        let candidates =
            instances::adoptable(&self.pool, &self.replica, timeout, &self.node).await?;
        let supervised = self.target.supervised();
        for row in candidates {
            if supervised.contains(&row.id) || self.backing_off(row.id) {
                continue;
            }
            let Some(_busy) = self.busy(row.id) else {
                continue;
            };
            // Already ours (taken back after fencing, or a take-over that failed): no new
            // claim, so a retry does not grow the claim history.
            let epoch = if row.owner.as_ref() == Some(&self.replica) {
                row.owner_epoch
            } else {
                let claimed =
                    instances::claim(&self.pool, row.id, row.owner_epoch, &self.replica, timeout)
                        .await?;
                let Some(epoch) = claimed else {
                    continue;
                };
                epoch
            };
            tracing::info!(instance.id = %row.id, from = ?row.owner, epoch, "instance adopted");
            round.adopted.push(row.id);
            match self.take_over(row.id).await {
                Ok(true) => round.restarted.push(row.id),
                Ok(false) => {}
                Err(e) => {
                    // Ours now; retried a little later (a registry or an image may be away).
                    tracing::warn!(instance.id = %row.id, error = %e, "adopted instance not taken over yet");
                    self.back_off(row.id);
                }
            }
        }

        // Orphans: read the records first, the rows second (a row is written before its
        // process is spawned, so a record never belongs to a row not yet visible).
        let running = self.target.running();
        if !running.is_empty() {
            let known = instances::existing(&self.pool, &running).await?;
            let orphans: Vec<Uuid> = running
                .into_iter()
                .filter(|id| !known.contains(id) && !self.is_busy(*id))
                .collect();
            round.orphans = self.target.sweep(orphans).await;
        }
        Ok(round)
    }

    /// Supervises an instance just claimed; answers whether it had to be started again.
    async fn take_over(&self, id: Uuid) -> Result<bool, EngineError> {
        let row = {
            let mut conn = self.pool.acquire().await?;
            instances::get(&mut conn, id).await?
        };
        let Some(row) = row else {
            return Ok(false);
        };
        if row.state == InstanceState::Stopping {
            self.stop_owned(&row, "stopped (resumed by another replica)")
                .await?;
            return Ok(false);
        }
        let known = Known {
            spec: self.spec(&row).await?,
            placement: Placement {
                address: row.address.clone().unwrap_or_default(),
                port: row.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
                process: row.process(),
            },
            restarts: row.restarts as u32,
        };
        let adopted = self.target.adopt(vec![known.clone()]).await?;
        if let Some((_, placement)) = adopted.running.into_iter().next() {
            // The run record is the truth: the old owner may have restarted it and died
            // before its row caught up.
            let same = row.address.as_deref() == Some(placement.address.as_str())
                && row.process().map(|p| (p.pid, p.start_time))
                    == placement.process.as_ref().map(|p| (p.pid, p.start_time));
            if !same {
                self.record_start(&row, &placement, row.restarts as u32)
                    .await?;
            }
            return Ok(false);
        }
        if row.process().is_none() && row.address.is_none() {
            // Never got a process: forget it (a deployment that wanted it starts another).
            let mut conn = self.pool.acquire().await?;
            instances::delete(&mut conn, id).await?;
            return Ok(false);
        }
        if row.state == InstanceState::Draining {
            self.stop_owned(&row, "stopped (found dead while draining)")
                .await?;
            return Ok(false);
        }
        tracing::warn!(instance.id = %id, "adopted instance found dead; starting it again");
        let placement = self.target.start(known.spec).await?;
        self.record_start(&row, &placement, row.restarts as u32 + 1)
            .await?;
        Ok(true)
    }

    /// Whether a failed take-over of `id` waits a little before the next try.
    fn backing_off(&self, id: Uuid) -> bool {
        let mut retries = self.retries.lock().unwrap_or_else(PoisonError::into_inner);
        retries.retain(|_, at| *at > Instant::now());
        retries.contains_key(&id)
    }

    fn back_off(&self, id: Uuid) {
        let at = Instant::now() + RETRY_TAKE_OVER;
        let mut retries = self.retries.lock().unwrap_or_else(PoisonError::into_inner);
        retries.insert(id, at);
    }

    /// Waits until the instance's row is gone (its owner stopped it), up to the time its owner
    /// needs to be declared gone, adopted and to stop it.
    pub(super) async fn await_stop(&self, id: Uuid) -> Result<(), EngineError> {
        let patience = self.replicas.timeout() * 2 + self.stop_grace + Duration::from_secs(30);
        let deadline = Instant::now() + patience;
        loop {
            let row = {
                let mut conn = self.pool.acquire().await?;
                instances::get(&mut conn, id).await?
            };
            if row.is_none() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(EngineError::Target(TargetError::NotStopped(
                    id,
                    format!("still there after {} s", patience.as_secs()),
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
