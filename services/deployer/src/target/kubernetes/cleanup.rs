//! What the target removes of what it manages (labelled `app.kubernetes.io/managed-by:
//! slipway` in an environment's namespace):
//! - orphans ([`KubernetesTarget::sweep_orphans`]): instances a Deployment lists that the
//!   deployer's database no longer knows (the engine's orphans, found among [`refresh`]'s
//!   list after a restart). A Deployment listing only orphans is deleted with its Service;
//!   else the orphans' pods (pods of the release no instance is bound to) are deleted and
//!   the Deployment lists the others only.
//! - what no Deployment needs ([`collect`]), after a sweep, after a release is retired and
//!   every [`COLLECT_EVERY`]: a release's Service without its Deployment; the stable Service
//!   and the `HTTPRoute` of a service with no Deployment left in the environment; config
//!   versions no Deployment uses except the newest `keep_config_versions` of a service still
//!   deployed.
//!
//! Nothing younger than [`COLLECT_GRACE`] is collected: another deployer replica may be
//! between applying a release's objects and its Deployment. In this process, starts hold the
//! read side of `Shared::collecting` from their first apply to their Deployment write, and a
//! collection the write side. Secrets are never listed or read (the Role does not allow it):
//! a config version's Secret is deleted by the name of its ConfigMap, which is applied first.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use uuid::Uuid;

use super::cluster::{Cluster, api_error, is_conflict, is_not_found, listed, lock};
use super::objects::{self, CONFIG_VERSION, Names, ROLE, SERVICE};
use super::route::HttpRoute;
use super::{KubernetesTarget, Shared};

/// How often the instances Deployments list are listed again (what [`Target::running`]
/// answers).
///
/// [`Target::running`]: crate::target::Target::running
const LIST_EVERY: Duration = Duration::from_secs(5);
/// How often what no Deployment needs is collected besides after sweeps and retired releases.
const COLLECT_EVERY: Duration = Duration::from_secs(60);
/// The age below which an object is never collected.
pub const COLLECT_GRACE: Duration = Duration::from_secs(60);

/// What the environments' Deployments listed.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub ids: HashMap<String, HashSet<Uuid>>,
    /// Raised by every sweep: a list begun before it is not stored (it may name what the
    /// sweep removed).
    epoch: u64,
}

/// The selector of what the target manages in `environment`.
pub(crate) fn selector(environment: &str) -> String {
    format!(
        "{}=slipway,{}={}",
        objects::MANAGED_BY,
        objects::ENVIRONMENT,
        objects::fit(environment)
    )
}

/// Lists the Deployments every [`LIST_EVERY`] and collects every [`COLLECT_EVERY`] until the
/// target is dropped or detached (nothing without a Tokio runtime).
pub(super) fn spawn_lister(shared: Arc<Shared>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut collected: Option<tokio::time::Instant> = None;
        loop {
            for (environment, cluster) in &shared.clusters {
                if let Err(e) = refresh(&shared, environment, cluster).await {
                    tracing::warn!(%environment, error = %e, "cannot list the Deployments");
                }
            }
            if collected.is_none_or(|at| at.elapsed() >= COLLECT_EVERY) {
                collected = Some(tokio::time::Instant::now());
                for cluster in shared.clusters.values() {
                    collect(&shared, cluster).await;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(LIST_EVERY) => {}
                () = shared.cancel.cancelled() => return,
            }
        }
    });
}

/// Lists `environment`'s Deployments: the instances they name become what runs there.
pub(super) async fn refresh(
    shared: &Shared,
    environment: &str,
    cluster: &Cluster,
) -> Result<(), super::TargetError> {
    let epoch = lock(&shared.seen).epoch;
    let api: Api<Deployment> = cluster.api().await?;
    let list = api
        .list(&ListParams::default().labels(&selector(environment)))
        .await
        .map_err(|e| api_error("cannot list Deployments", e))?;
    let ids = list
        .items
        .iter()
        .flat_map(listed)
        .filter_map(|id| id.parse::<Uuid>().ok())
        .collect();
    let mut seen = lock(&shared.seen);
    if seen.epoch == epoch {
        seen.ids.insert(environment.to_owned(), ids);
    }
    Ok(())
}

impl KubernetesTarget {
    pub(super) async fn sweep_orphans(&self, orphans: Vec<Uuid>) -> Vec<Uuid> {
        let supervised = self
            .shared
            .instances()
            .keys()
            .copied()
            .collect::<HashSet<_>>();
        let orphans: BTreeSet<String> = orphans
            .into_iter()
            .filter(|id| !supervised.contains(id))
            .map(|id| id.to_string())
            .collect();
        if orphans.is_empty() {
            return Vec::new();
        }
        let _exclusive = self.shared.collecting.write().await;
        let mut removed = BTreeSet::new();
        for (environment, cluster) in &self.shared.clusters {
            match self.sweep_environment(environment, cluster, &orphans).await {
                Ok(ids) if ids.is_empty() => {}
                Ok(ids) => {
                    removed.extend(ids);
                    if let Err(e) = collect_environment(&self.shared, cluster).await {
                        tracing::warn!(%environment, error = %e, "cannot collect unused objects");
                    }
                }
                Err(e) => {
                    tracing::warn!(%environment, error = %e, "cannot remove orphan instances");
                }
            }
        }
        let removed: Vec<Uuid> = removed.iter().filter_map(|id| id.parse().ok()).collect();
        let mut seen = lock(&self.shared.seen);
        seen.epoch += 1;
        for ids in seen.ids.values_mut() {
            ids.retain(|id| !removed.contains(id));
        }
        removed
    }

    /// Takes `orphans` off `environment`'s Deployments; answers those taken off.
    async fn sweep_environment(
        &self,
        environment: &str,
        cluster: &Cluster,
        orphans: &BTreeSet<String>,
    ) -> Result<Vec<String>, super::TargetError> {
        let api: Api<Deployment> = cluster.api().await?;
        let list = api
            .list(&ListParams::default().labels(&selector(environment)))
            .await
            .map_err(|e| api_error("cannot list Deployments", e))?;
        let mut removed = Vec::new();
        for d in list.items {
            let ids = listed(&d);
            let gone: BTreeSet<String> = ids.intersection(orphans).cloned().collect();
            let Some(name) = d.metadata.name.clone() else {
                continue;
            };
            if gone.is_empty() {
                continue;
            }
            tracing::warn!(deployment = %name, orphans = ?gone, "removing orphan instances");
            if gone.len() == ids.len() {
                // Only orphans: the release goes, unless it changed since it was listed.
                if delete(&api, &d.metadata, DeleteParams::foreground()).await? {
                    let services: Api<Service> = cluster.api().await?;
                    delete_named(&services, &name).await?;
                    removed.extend(gone);
                } else {
                    tracing::info!(deployment = %name,
                        "orphan release changed since listed: left for the next sweep");
                }
                continue;
            }
            let Some(spec) = lock(&self.shared.specs).get(&name).cloned() else {
                // Its other instances are supervised elsewhere (or not adopted yet): the
                // replica that runs them knows the release and sweeps it.
                tracing::info!(deployment = %name, "release not run here: orphans left for its replica");
                continue;
            };
            let names = Names::new(&spec.service_name, &spec.environment);
            self.delete_free_pods(environment, cluster, &names, spec.release, gone.len())
                .await?;
            self.shared
                .update_instances(&spec, |ids| ids.retain(|id| !gone.contains(id)))
                .await?;
            removed.extend(gone);
        }
        Ok(removed)
    }

    /// Deletes up to `count` pods of `release` that no instance is bound to (the orphans').
    async fn delete_free_pods(
        &self,
        environment: &str,
        cluster: &Cluster,
        names: &Names,
        release: i32,
        count: usize,
    ) -> Result<(), super::TargetError> {
        let bound: HashSet<String> = self
            .shared
            .instances()
            .values()
            .filter_map(|i| i.pod.clone())
            .collect();
        let mut free: Vec<String> = lock(&self.shared.pods)
            .get(environment)
            .into_iter()
            .flatten()
            .filter(|(n, p)| p.is_of(names, release) && !p.deleting && !bound.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        free.sort_unstable();
        let pods: Api<Pod> = cluster.api().await?;
        for pod in free.into_iter().take(count) {
            tracing::info!(%pod, "deleting an orphan instance's pod");
            delete_named(&pods, &pod).await?;
        }
        Ok(())
    }
}

/// [`collect_environment`] under the write side of `collecting`, a failure logged.
pub(super) async fn collect(shared: &Shared, cluster: &Cluster) {
    let _exclusive = shared.collecting.write().await;
    if let Err(e) = collect_environment(shared, cluster).await {
        tracing::warn!(environment = %cluster.environment, error = %e, "cannot collect unused objects");
    }
}

/// Deletes what no Deployment of the environment needs (see the module's doc).
async fn collect_environment(shared: &Shared, cluster: &Cluster) -> Result<(), super::TargetError> {
    let params = ListParams::default().labels(&selector(&cluster.environment));
    let deployments: Api<Deployment> = cluster.api().await?;
    let services: Api<Service> = cluster.api().await?;
    let maps: Api<ConfigMap> = cluster.api().await?;
    let secrets: Api<Secret> = cluster.api().await?;
    let routes: Api<HttpRoute> = cluster.api().await?;
    let deployed = deployments
        .list(&params)
        .await
        .map_err(|e| api_error("cannot list Deployments", e))?
        .items;
    let names: HashSet<&str> = deployed
        .iter()
        .filter_map(|d| d.metadata.name.as_deref())
        .collect();
    let groups: HashSet<&str> = deployed
        .iter()
        .filter_map(|d| label(&d.metadata, SERVICE))
        .collect();
    let used: HashSet<String> = deployed.iter().flat_map(config_names).collect();

    for s in services
        .list(&params)
        .await
        .map_err(|e| api_error("cannot list Services", e))?
        .items
    {
        let needed = match label(&s.metadata, ROLE) {
            Some("release") => names.contains(s.metadata.name.as_deref().unwrap_or_default()),
            Some("stable") => label(&s.metadata, SERVICE).is_some_and(|g| groups.contains(g)),
            _ => true,
        };
        if !needed && old(&s.metadata) {
            tracing::info!(service = ?s.metadata.name, "deleting a Service no Deployment needs");
            delete(&services, &s.metadata, DeleteParams::default()).await?;
        }
    }
    // Without the Gateway API's CRD there are no routes (and nothing to list).
    let listed_routes = match routes.list(&params).await {
        Ok(list) => list.items,
        Err(e) if is_not_found(&e) => Vec::new(),
        Err(e) => return Err(api_error("cannot list HTTPRoutes", e)),
    };
    for r in listed_routes {
        let needed = label(&r.metadata, SERVICE).is_some_and(|g| groups.contains(g));
        if !needed && old(&r.metadata) {
            tracing::info!(route = ?r.metadata.name, "deleting an HTTPRoute of a service no longer deployed");
            delete(&routes, &r.metadata, DeleteParams::default()).await?;
        }
    }

    // Config versions per service, newest first.
    let mut versions: BTreeMap<String, Vec<(i32, ObjectMeta)>> = BTreeMap::new();
    for m in maps
        .list(&params)
        .await
        .map_err(|e| api_error("cannot list ConfigMaps", e))?
        .items
    {
        let version = label(&m.metadata, CONFIG_VERSION).and_then(|v| v.parse::<i32>().ok());
        if let (Some(group), Some(version)) = (label(&m.metadata, SERVICE), version) {
            versions
                .entry(group.to_owned())
                .or_default()
                .push((version, m.metadata.clone()));
        }
    }
    for (group, mut list) in versions {
        list.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
        // A service no longer deployed keeps none.
        let keep = if groups.contains(group.as_str()) {
            shared.settings.keep_config_versions
        } else {
            0
        };
        let unused = list
            .into_iter()
            .filter(|(_, m)| !used.contains(m.name.as_deref().unwrap_or_default()));
        for (version, meta) in unused.skip(keep).filter(|(_, m)| old(m)) {
            let Some(name) = meta.name.as_deref() else {
                continue;
            };
            tracing::info!(config = %name, version, "deleting a config version no Deployment uses");
            // The Secret first: a ConfigMap left behind is found again by the next pass.
            delete_named(&secrets, name).await?;
            delete(&maps, &meta, DeleteParams::default()).await?;
        }
    }
    Ok(())
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Older than [`COLLECT_GRACE`] (an object without a creation time is taken as new).
fn old(meta: &ObjectMeta) -> bool {
    meta.creation_timestamp.as_ref().is_some_and(|t| {
        let age = k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second();
        u64::try_from(age).is_ok_and(|age| age >= COLLECT_GRACE.as_secs())
    })
}

/// The ConfigMaps and Secrets a Deployment's pods take their environment from.
fn config_names(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|c| c.env_from.iter().flatten())
        .filter_map(|e| {
            e.config_map_ref
                .as_ref()
                .map(|r| r.name.clone())
                .or_else(|| e.secret_ref.as_ref().map(|r| r.name.clone()))
        })
        .collect()
}

/// Deletes the object `meta` describes if it is still that object at that version; answers
/// false when it changed since (409: someone wrote it, it is left alone). Already gone counts
/// as deleted.
async fn delete<K>(
    api: &Api<K>,
    meta: &ObjectMeta,
    mut params: DeleteParams,
) -> Result<bool, super::TargetError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(name) = meta.name.as_deref() else {
        return Ok(false);
    };
    params.preconditions = Some(Preconditions {
        resource_version: meta.resource_version.clone(),
        uid: meta.uid.clone(),
    });
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(api_error(&format!("cannot delete {name}"), e)),
    }
}

/// Deletes `name`; already gone is not an error.
async fn delete_named<K>(api: &Api<K>, name: &str) -> Result<(), super::TargetError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Err(e) if !is_not_found(&e) => Err(api_error(&format!("cannot delete {name}"), e)),
        _ => Ok(()),
    }
}
