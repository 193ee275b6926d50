//! Heartbeats: per service and environment, the whole record of every instance this replica
//! supervises, so the registry can insert what it lost (see the registry's `db/heartbeats.rs`).

use std::collections::BTreeMap;

use chrono::Utc;
use slipway_events::deploy::{
    Health, HeartbeatInstance, InstanceState as HeartbeatState, InstancesHeartbeat,
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

    /// One round of heartbeats: per service and environment, the whole record of every
    /// instance this replica supervises, so the registry can insert what it lost. Every
    /// environment with a desired state gets one, even with no instance of ours there: an
    /// empty list is how the registry learns that heartbeats go on without the instances it
    /// still lists (it reaps only then, never when heartbeats stop arriving).
    async fn heartbeat_once(&self) -> Result<(), EngineError> {
        let rows = self.owned_instances().await?;
        let desired = crate::db::state::all(&self.pool).await?;
        let mut groups: BTreeMap<(ServiceId, String), (String, Vec<HeartbeatInstance>)> =
            BTreeMap::new();
        for s in desired {
            groups
                .entry((s.service_id, s.environment))
                .or_insert_with(|| (s.service_name, Vec::new()));
        }
        for row in &rows {
            let group = groups
                .entry((row.service_id, row.environment.clone()))
                .or_insert_with(|| (row.service_name.clone(), Vec::new()));
            if let Some(record) = heartbeat_record(row) {
                group.1.push(record);
            }
        }
        let mut tx = self.pool.begin().await?;
        for ((service_id, environment), (service_name, records)) in groups {
            let data = InstancesHeartbeat {
                service_id,
                service_name: service_name.clone(),
                environment: environment.clone(),
                owner: self.replica.clone(),
                instances: records,
                interval_ms: self.heartbeat.as_millis() as u64,
                at: Utc::now(),
            };
            announce(
                &mut tx,
                service_id,
                format!("{service_name}/{environment}"),
                &data,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
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
