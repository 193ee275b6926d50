//! The prober tasks and their registry.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use slipway_events::deploy::{Health, InstanceHealthChanged};
use slipway_events::slipway::sources;
use slipway_events::{CloudEvent, EventData};
use slipway_ids::{InstanceId, ProjectName, ServiceId};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::machine::{self, ProbeState};
use super::probe::{self, ProbeResult};
use crate::db::probes::{self, Probe, Transition};

/// One running prober.
struct Running {
    restarts: u32,
    /// When it was started (a reconcile only stops probers older than what it read).
    started: Instant,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// The shards this replica holds ([`super::shards`]); only their instances are probed.
struct Held {
    count: u32,
    shards: BTreeSet<u32>,
}

/// The running probers, one per instance of the shards this replica holds. Cheap to clone
/// (shared).
#[derive(Clone)]
pub struct Probers {
    pool: PgPool,
    client: reqwest::Client,
    /// The service's shutdown token; each prober's token is a child of it.
    shutdown: CancellationToken,
    running: Arc<Mutex<HashMap<InstanceId, Running>>>,
    held: Arc<Mutex<Held>>,
}

impl Probers {
    /// Probers of instances split into `shard_count` shards; no shard is held until
    /// [`Probers::reconcile`] says so.
    pub fn new(
        pool: PgPool,
        client: reqwest::Client,
        shutdown: CancellationToken,
        shard_count: u32,
    ) -> Self {
        Self {
            pool,
            client,
            shutdown,
            running: Arc::default(),
            held: Arc::new(Mutex::new(Held {
                count: shard_count,
                shards: BTreeSet::new(),
            })),
        }
    }

    /// Whether instance `id` is in a shard this replica holds.
    pub fn owns(&self, id: InstanceId) -> bool {
        let held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.shards
            .contains(&super::shards::shard_of(id, held.count))
    }

    /// The instances probed now.
    pub fn instances(&self) -> BTreeSet<InstanceId> {
        self.lock().keys().copied().collect()
    }

    /// Makes the shards held `shards` and the probers match `probing` (every incarnation to
    /// probe, `(instance, restarts)`, read from the database after `loaded_at`): probers of
    /// other shards, or of instances no longer probed, stop. A prober started after
    /// `loaded_at` is left alone (the read may predate its instance). Returns the held shards'
    /// incarnations that have no prober running at them, to be loaded and [`Probers::ensure`]d;
    /// a round thus decodes whole rows only for those, not for every instance every round.
    pub async fn reconcile(
        &self,
        shards: BTreeSet<u32>,
        probing: &[(InstanceId, u32)],
        loaded_at: Instant,
    ) -> Vec<InstanceId> {
        let count = {
            let mut held = self
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            held.shards.clone_from(&shards);
            held.count
        };
        let owned = |id: InstanceId| shards.contains(&super::shards::shard_of(id, count));
        let wanted: HashMap<InstanceId, u32> = probing
            .iter()
            .filter(|(id, _)| owned(*id))
            .copied()
            .collect();
        let (stale, missing) = {
            let mut running = self.lock();
            let gone: Vec<InstanceId> = running
                .iter()
                .filter(|(id, r)| {
                    !owned(**id) || (!wanted.contains_key(id) && r.started < loaded_at)
                })
                .map(|(id, _)| *id)
                .collect();
            let stale: Vec<Running> = gone.iter().filter_map(|id| running.remove(id)).collect();
            let missing: Vec<InstanceId> = wanted
                .iter()
                .filter(|(id, restarts)| {
                    !running
                        .get(id)
                        .is_some_and(|r| r.restarts == **restarts && !r.task.is_finished())
                })
                .map(|(id, _)| *id)
                .collect();
            (stale, missing)
        };
        for r in stale {
            stop(r).await;
        }
        missing
    }

    /// Probes `probe`'s incarnation, replacing any prober of an earlier (or the same)
    /// incarnation of that instance. An instance of a shard held by another replica is left
    /// to it.
    pub async fn start(&self, probe: Probe) {
        let id = probe.instance.instance_id;
        if !self.owns(id) {
            return;
        }
        let cancel = self.shutdown.child_token();
        let task = tokio::spawn(run(
            self.pool.clone(),
            self.client.clone(),
            probe.clone(),
            cancel.clone(),
        ));
        let previous = self.lock().insert(
            id,
            Running {
                restarts: probe.restarts,
                started: Instant::now(),
                cancel,
                task,
            },
        );
        if let Some(previous) = previous {
            stop(previous).await;
        }
    }

    /// Makes sure `probe`'s incarnation is probed (if its shard is held), leaving a prober
    /// already at it alone.
    pub async fn ensure(&self, probe: Probe) {
        if !self.owns(probe.instance.instance_id) {
            return;
        }
        let running = self
            .lock()
            .get(&probe.instance.instance_id)
            .is_some_and(|r| r.restarts == probe.restarts && !r.task.is_finished());
        if !running {
            self.start(probe).await;
        }
    }

    /// Stops probing `id` if its prober is at incarnation `restarts` or earlier (`None`: any).
    pub async fn stop(&self, id: InstanceId, restarts: Option<u32>) {
        let taken = {
            let mut running = self.lock();
            match running.get(&id) {
                Some(r) if restarts.is_none_or(|n| r.restarts <= n) => running.remove(&id),
                _ => None,
            }
        };
        if let Some(r) = taken {
            stop(r).await;
        }
    }

    /// Waits for every prober to end (after the shutdown token fired).
    pub async fn drain(&self) {
        let all: Vec<Running> = self.lock().drain().map(|(_, r)| r).collect();
        for r in all {
            stop(r).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceId, Running>> {
        // A panic while holding this lock leaves the map consistent (single insert/remove).
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn stop(r: Running) {
    r.cancel.cancel();
    // A prober in the middle of writing a transition finishes it; its result is logged there.
    let _ = r.task.await;
}

/// Probes one incarnation every `interval_ms` until cancelled or found stale.
async fn run(pool: PgPool, client: reqwest::Client, probe: Probe, cancel: CancellationToken) {
    let id = probe.instance.instance_id;
    let interval = Duration::from_millis(u64::from(probe.check.interval_ms.max(1)));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = ProbeState::resumed(probe.health);
    // While starting, what the probes see is announced each time it changes (not each probe),
    // so a rollout that times out can say why its instances never became healthy.
    let mut starting_detail: Option<String> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = probe::probe(&client, &probe.address, &probe.check) => r,
        };
        let since_start = (Utc::now() - probe.started_at).to_std().unwrap_or_default();
        let (next, changed) = machine::step(state, result.outcome, since_start, &probe.check);
        let report = match changed {
            Some(health) => Some(health),
            None if next.health == Health::Starting
                && starting_detail.as_deref() != Some(result.detail.as_str()) =>
            {
                Some(Health::Starting)
            }
            None => None,
        };
        let Some(health) = report else {
            state = next;
            continue;
        };
        match record(&pool, &probe, next, &result).await {
            Ok(true) => {
                starting_detail = Some(result.detail.clone());
                tracing::info!(instance = %id, restarts = probe.restarts, health = probes::health_name(health), detail = %result.detail, "health changed");
                state = next;
            }
            Ok(false) => {
                tracing::debug!(instance = %id, restarts = probe.restarts, "incarnation replaced; prober stops");
                return;
            }
            Err(e) => {
                // The health stays as stored; the runs continue, so the next probe that
                // still warrants the transition tries to write it again.
                tracing::warn!(instance = %id, error = %e, "cannot record a health transition");
                state = ProbeState {
                    health: state.health,
                    ..next
                };
            }
        }
    }
}

/// Why a transition could not be recorded.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot encode the event: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Writes the transition to `next` and its event in one transaction; `false` when the
/// incarnation is no longer the probed one.
async fn record(
    pool: &PgPool,
    probe: &Probe,
    next: ProbeState,
    result: &ProbeResult,
) -> Result<bool, RecordError> {
    let mut tx = pool.begin().await?;
    let written = probes::transition(
        &mut tx,
        &Transition {
            id: probe.instance.instance_id,
            restarts: probe.restarts,
            health: next.health,
            successes: next.successes,
            failures: next.failures,
            detail: &result.detail,
        },
    )
    .await?;
    if !written {
        return Ok(false);
    }
    let project = project_of(&mut tx, probe.instance.service_id).await?;
    let event = health_changed(probe, next.health, &result.detail)?.with_project(project);
    slipway_outbox::enqueue(&mut tx, InstanceHealthChanged::TOPIC, &event).await?;
    tx.commit().await?;
    Ok(true)
}

/// The project of `service_id`, from the monitor's catalog (`watched_services`), for the
/// verdicts it announces.
pub async fn project_of(
    conn: &mut sqlx::PgConnection,
    service_id: ServiceId,
) -> Result<Option<ProjectName>, sqlx::Error> {
    slipway_runtime::catalog::project_of(conn, "watched_services", service_id).await
}

/// The `InstanceHealthChanged` announcing `health` for `probe`'s incarnation.
pub fn health_changed(
    probe: &Probe,
    health: Health,
    detail: &str,
) -> Result<CloudEvent, serde_json::Error> {
    let data = InstanceHealthChanged {
        instance: probe.instance.clone(),
        health,
        check: probe.check.describe(),
        detail: detail.to_owned(),
        restarts: probe.restarts,
        at: Utc::now(),
    };
    let mut event = CloudEvent::new(
        sources::MONITOR,
        probe.instance.service_id,
        Some(probe.instance.instance_id.to_string()),
        &data,
    )?;
    event.traceparent = probe.traceparent.clone();
    event.tracestate = probe.tracestate.clone();
    Ok(event)
}
