//! Heartbeats: per service, each environment with the whole record of every instance this
//! replica supervises there, so the registry can insert what it lost (see the registry's
//! `db/heartbeats.rs`).

use std::collections::BTreeMap;

use chrono::Utc;
use slipway_events::deploy::{
    EnvironmentInstances, Health, HeartbeatInstance, InstanceState as HeartbeatState,
    InstancesHeartbeat,
};
use slipway_ids::{InstanceId, ServiceId};
use tokio_util::sync::CancellationToken;

use super::{Fleet, announce};
use crate::db::instances::Instance;
use crate::domain::{InstanceHealth, InstanceState};
use crate::engine::EngineError;

impl Fleet {
    /// Announces the live instances this replica owns periodically, so the registry can reap
    /// instances whose deployer vanished.
    pub async fn heartbeats(&self, cancel: CancellationToken) -> Result<(), EngineError> {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.heartbeat) => {}
            }
            if let Err(e) = self.heartbeat_once().await {
                tracing::warn!(error = %e, "heartbeat not sent");
            }
        }
    }

    /// One round of heartbeats: per service, every environment with a desired state or an
    /// instance of ours, each with the whole record of every instance this replica supervises
    /// there (possibly none), so the registry can insert what it lost and reap what is gone.
    /// An empty environment is how the registry learns that heartbeats go on without the
    /// instances it still lists (it reaps only then, never when heartbeats stop arriving).
    async fn heartbeat_once(&self) -> Result<(), EngineError> {
        let rows = self.owned_instances().await?;
        let desired = crate::db::state::all(&self.pool).await?;
        let mut services: BTreeMap<ServiceId, (String, BTreeMap<String, Vec<HeartbeatInstance>>)> =
            BTreeMap::new();
        for s in desired {
            services
                .entry(s.service_id)
                .or_insert_with(|| (s.service_name, BTreeMap::new()))
                .1
                .entry(s.environment)
                .or_default();
        }
        for row in &rows {
            let records = services
                .entry(row.service_id)
                .or_insert_with(|| (row.service_name.clone(), BTreeMap::new()))
                .1
                .entry(row.environment.clone())
                .or_default();
            records.extend(heartbeat_record(row));
        }
        let mut tx = self.pool.begin().await?;
        for (service_id, (service_name, environments)) in services {
            for environments in chunks(environments) {
                let data = InstancesHeartbeat {
                    service_id,
                    service_name: service_name.clone(),
                    owner: self.replica.clone(),
                    environments,
                    interval_ms: self.heartbeat.as_millis() as u64,
                    at: Utc::now(),
                };
                announce(&mut tx, service_id, service_name.clone(), &data).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The most instances one heartbeat carries (about 400 bytes each), and the most environments
/// (about 50 bytes each empty): an event stays well under the broker's message limit.
const CHUNK_INSTANCES: usize = 500;
const CHUNK_ENVIRONMENTS: usize = 2_000;

/// A service's environments cut into heartbeats of whole environments (reaping is per listed
/// environment, so one is never split), each within the limits above; an environment larger
/// than the instance limit goes alone in its own.
fn chunks(
    environments: BTreeMap<String, Vec<HeartbeatInstance>>,
) -> Vec<Vec<EnvironmentInstances>> {
    let mut out: Vec<Vec<EnvironmentInstances>> = Vec::new();
    let mut current: Vec<EnvironmentInstances> = Vec::new();
    let mut weight = 0;
    for (environment, instances) in environments {
        let full = current.len() >= CHUNK_ENVIRONMENTS
            || (weight + instances.len() > CHUNK_INSTANCES && !current.is_empty());
        if full {
            out.push(std::mem::take(&mut current));
            weight = 0;
        }
        weight += instances.len();
        current.push(EnvironmentInstances {
            environment,
            instances,
        });
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// What a heartbeat says of `row`; `None` for an instance the registry must learn of from its
/// own events only: one not started yet (no address) or being stopped, which a heartbeat must
/// not (re)insert.
fn heartbeat_record(row: &Instance) -> Option<HeartbeatInstance> {
    let state = match row.state {
        InstanceState::Running => HeartbeatState::Running,
        InstanceState::Draining => HeartbeatState::Draining,
        InstanceState::Down => HeartbeatState::Down,
        InstanceState::Starting | InstanceState::Stopping => return None,
    };
    let address = row.address.clone()?;
    let health = Some(match row.health {
        InstanceHealth::Starting => Health::Starting,
        InstanceHealth::Healthy => Health::Healthy,
        InstanceHealth::Unhealthy => Health::Unhealthy,
    });
    Some(HeartbeatInstance {
        instance_id: InstanceId::from_uuid(row.id),
        release: row.release,
        address,
        target: row.target.to_string(),
        state,
        health,
        health_check: row.health_check.0.clone(),
        detail: row.health_detail.clone().or_else(|| row.last_exit.clone()),
        restarts: u32::try_from(row.restarts).unwrap_or(0),
        started_at: row.created_at,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use slipway_events::deploy::HealthCheck;
    use uuid::Uuid;

    fn row(state: InstanceState, health: InstanceHealth, address: Option<&str>) -> Instance {
        Instance {
            id: Uuid::now_v7(),
            service_id: ServiceId::new(),
            service_name: "hello".into(),
            environment: "prod".into(),
            release: 2,
            config_version: 1,
            image: "img".into(),
            run: None,
            health_check: sqlx::types::Json(HealthCheck::default()),
            target: slipway_wire::releases::TargetKind::Process,
            deployment_id: None,
            address: address.map(str::to_owned),
            port: None,
            pid: None,
            state,
            health,
            health_detail: None,
            restarts: 3,
            crash_loop: false,
            last_exit: Some("exit code 1".into()),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            owner: None,
            owner_epoch: 0,
            node: None,
            pgid: None,
            start_time: None,
            boot_id: None,
        }
    }

    fn records(n: usize) -> Vec<HeartbeatInstance> {
        (0..n)
            .filter_map(|_| {
                heartbeat_record(&row(
                    InstanceState::Running,
                    InstanceHealth::Healthy,
                    Some("127.0.0.1:4000"),
                ))
            })
            .collect()
    }

    #[test]
    fn heartbeats_cut_a_service_into_whole_environments_within_the_limits() {
        // Thousands of empty environments and a few with instances: few events, none split.
        let mut environments: BTreeMap<String, Vec<HeartbeatInstance>> = (0..3_000)
            .map(|i| (format!("empty-{i:04}"), Vec::new()))
            .collect();
        environments.insert("a-big".into(), records(CHUNK_INSTANCES + 10));
        environments.insert("b-small".into(), records(3));
        environments.insert("c-mid".into(), records(CHUNK_INSTANCES - 2));
        let chunks = chunks(environments);
        let names: Vec<Vec<&str>> = chunks
            .iter()
            .map(|c| c.iter().map(|e| e.environment.as_str()).collect())
            .collect();
        // The big one alone (over the limit by itself), then b-small until c-mid would pass
        // the instance limit, then the empty ones up to the environment limit.
        assert_eq!(names[0], ["a-big"]);
        assert_eq!(names[1], ["b-small"]);
        assert_eq!(names[2].len(), CHUNK_ENVIRONMENTS);
        assert_eq!(names[2][0], "c-mid");
        assert_eq!(names.len(), 4);
        let listed: usize = chunks.iter().map(Vec::len).sum();
        assert_eq!(listed, 3_003, "every environment in exactly one chunk");
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|c| c.iter().map(|e| e.instances.len()).sum())
            .collect();
        assert_eq!(sizes, [CHUNK_INSTANCES + 10, 3, CHUNK_INSTANCES - 2, 0]);
        assert!(super::chunks(BTreeMap::new()).is_empty());
    }

    #[test]
    fn heartbeats_carry_placed_instances_whole_and_leave_out_starting_and_stopping_ones() {
        let running = heartbeat_record(&row(
            InstanceState::Running,
            InstanceHealth::Healthy,
            Some("127.0.0.1:4000"),
        ))
        .unwrap();
        assert_eq!(
            (
                running.state,
                running.health,
                running.restarts,
                running.release
            ),
            (HeartbeatState::Running, Some(Health::Healthy), 3, 2)
        );
        assert_eq!(running.address, "127.0.0.1:4000");
        assert_eq!(running.detail.as_deref(), Some("exit code 1"));
        let down = heartbeat_record(&row(
            InstanceState::Down,
            InstanceHealth::Unhealthy,
            Some("127.0.0.1:4001"),
        ))
        .unwrap();
        assert_eq!(down.state, HeartbeatState::Down);
        for (state, address) in [
            (InstanceState::Starting, None),
            (InstanceState::Running, None),
            (InstanceState::Stopping, Some("127.0.0.1:4002")),
        ] {
            assert!(
                heartbeat_record(&row(state, InstanceHealth::Starting, address)).is_none(),
                "{state:?} {address:?}"
            );
        }
    }
}
