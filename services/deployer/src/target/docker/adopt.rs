//! Recovery from the labels: the containers of this scope on every engine are the record of
//! what runs. [`DockerTarget::adopt`](super::DockerTarget) supervises the running containers
//! of known instances again and reports the dead ones (removing their containers, so the
//! caller's new start does not meet them); `running` lists every container of the scope (a
//! stopped one too: an orphan's remains are removed as well) and `sweep` removes orphans.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::ListContainersOptionsBuilder;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::DockerTarget;
use super::engine::Host;
use super::spec::{INSTANCE_LABEL, SCOPE_LABEL};
use super::supervise::{self, Supervisor};
use crate::target::{Adopted, Known, TargetError};

/// How often the containers of the scope are listed for [`Target::running`].
///
/// [`Target::running`]: crate::target::Target::running
const LIST_EVERY: Duration = Duration::from_secs(2);

/// A container of this scope.
pub(crate) struct Found {
    pub host: Arc<Host>,
    pub host_index: usize,
    pub container: String,
    pub instance: Uuid,
    pub running: bool,
}

async fn list(
    hosts: &[Arc<Host>],
    filters: HashMap<String, Vec<String>>,
) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for (index, host) in hosts.iter().enumerate() {
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = host
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| format!("{}: {e}", host.url))?;
        for c in containers {
            let instance = c
                .labels
                .as_ref()
                .and_then(|l| l.get(INSTANCE_LABEL))
                .and_then(|v| v.parse::<Uuid>().ok());
            let (Some(instance), Some(container)) = (instance, c.id) else {
                continue;
            };
            let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
            found.push(Found {
                host: host.clone(),
                host_index: index,
                container,
                instance,
                running,
            });
        }
    }
    Ok(found)
}

fn scope_filter(scope: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{SCOPE_LABEL}={scope}")])])
}

/// Every container of the scope; `None` when an engine does not answer.
pub(crate) async fn list_scope(hosts: &[Arc<Host>], scope: &str) -> Option<Vec<Found>> {
    match list(hosts, scope_filter(scope)).await {
        Ok(found) => Some(found),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the containers of the Docker target");
            None
        }
    }
}

/// The containers of `instance` (normally one).
pub(crate) async fn find(hosts: &[Arc<Host>], scope: &str, instance: Uuid) -> Vec<Found> {
    let mut filters = scope_filter(scope);
    if let Some(labels) = filters.get_mut("label") {
        labels.push(format!("{INSTANCE_LABEL}={instance}"));
    }
    list(hosts, filters).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, instance = %instance, "cannot look for the instance's container");
        Vec::new()
    })
}

/// Keeps `seen` up to date until `cancel`.
pub(crate) fn spawn_lister(
    hosts: Vec<Arc<Host>>,
    scope: String,
    seen: Arc<Mutex<HashSet<Uuid>>>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(LIST_EVERY) => {}
            }
            if let Some(found) = list_scope(&hosts, &scope).await {
                *seen.lock().unwrap_or_else(PoisonError::into_inner) =
                    found.into_iter().map(|f| f.instance).collect();
            }
        }
    });
}

impl DockerTarget {
    pub(super) async fn adopt_instances(&self, known: Vec<Known>) -> Result<Adopted, TargetError> {
        let mut adopted = Adopted::default();
        let scope = self.ctx.settings.scope.clone();
        for k in known {
            let id = k.spec.instance_id;
            if self.handles().contains_key(&id) {
                continue;
            }
            let found = list(&self.hosts, {
                let mut filters = scope_filter(&scope);
                if let Some(labels) = filters.get_mut("label") {
                    labels.push(format!("{INSTANCE_LABEL}={id}"));
                }
                filters
            })
            .await
            .map_err(|e| TargetError::Start(format!("cannot look for the containers: {e}")))?;
            let (running, dead): (Vec<Found>, Vec<Found>) =
                found.into_iter().partition(|f| f.running);
            for f in dead {
                supervise::remove(&f.host, &f.container, None).await;
            }
            let mut running = running.into_iter();
            let Some(live) = running.next() else {
                tracing::info!(instance = %id, "known instance's container is gone");
                adopted.dead.push(id);
                continue;
            };
            // Never two: a second running copy is stopped.
            for extra in running {
                supervise::remove(
                    &extra.host,
                    &extra.container,
                    Some(self.ctx.settings.stop_grace()),
                )
                .await;
            }
            let placement = self.ctx.placement(&live.host, &live.container).await?;
            tracing::info!(instance = %id, container = %live.container, engine = %live.host.url,
                "adopting a running container");
            let supervisor = Supervisor {
                ctx: self.ctx.clone(),
                spec: k.spec,
                host: live.host,
                host_index: live.host_index,
                container: live.container,
                restarts: k.restarts,
            };
            let handle = supervisor.spawn(self.detach.child_token());
            self.handles().insert(id, handle);
            adopted.running.push((id, placement));
        }
        Ok(adopted)
    }

    pub(super) async fn sweep_orphans(&self, orphans: Vec<Uuid>) -> Vec<Uuid> {
        let supervised = self.supervised_ids();
        let orphans: HashSet<Uuid> = orphans
            .into_iter()
            .filter(|id| !supervised.contains(id))
            .collect();
        if orphans.is_empty() {
            return Vec::new();
        }
        let Some(found) = list_scope(&self.hosts, &self.ctx.settings.scope).await else {
            return Vec::new();
        };
        let grace = self.ctx.settings.stop_grace();
        let mut removed = Vec::new();
        for f in found.into_iter().filter(|f| orphans.contains(&f.instance)) {
            tracing::warn!(instance = %f.instance, container = %f.container, engine = %f.host.url,
                "removing an orphan container");
            supervise::remove(&f.host, &f.container, f.running.then_some(grace)).await;
            removed.push(f.instance);
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        for id in &removed {
            seen.remove(id);
        }
        removed.sort_unstable();
        removed.dedup();
        removed
    }
}
