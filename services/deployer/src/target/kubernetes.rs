//! The Kubernetes target: instances as pods of one Deployment per release, in a namespace per
//! environment (`[kubernetes.environments.<env>]`: a kubeconfig context or the pod's own
//! service account, and a namespace), written with server-side apply as field manager
//! `slipway`.
//!
//! ## Mapping the per-instance trait onto per-release objects
//!
//! The engine starts and stops *instances*; Kubernetes runs *replicas*. Per service, environment
//! and release (names from [`objects::Names`], cut to 63 characters with a hash if longer):
//! - ConfigMap and Secret `<service>-<env>-c<config version>`, immutable: Slipway's markers
//!   and the release's config (all of it in the Secret: the deployer is not told which values
//!   are secret). A Deployment names them, so rolling back to an older release with its older
//!   config version runs exactly that config again; old versions are kept.
//! - Deployment `<service>-<env>-v<release>`: its annotation `slipway.dev/instances` lists the
//!   instance ids the engine asked for, and `replicas` is their number. [`Target::start`] adds
//!   the id and answers once a pod of that release is bound to it (its IP is the placement);
//!   [`Target::stop`] deletes the instance's own pod, then lowers `replicas` (the ReplicaSet
//!   removes the replacement it may have begun: the newest, unready pod goes first). At zero
//!   instances the Deployment and the release's Service are deleted.
//! - Service `<service>-<env>-v<release>` per release, and the stable Service `<service>-<env>`
//!   whose selector names one release: blue-green switches it (see [`Target::set_weights`]).
//! - HTTPRoute `<service>-<env>` (Gateway API) attached to the environment's Gateway, one
//!   backend per release Service with the engine's weights: canary splits.
//!
//! Writes of a Deployment carry the `resourceVersion` read (an apply with a precondition), so
//! two deployer replicas never lose each other's instances: a conflict is read again.
//!
//! Pods are the instances ([`pods`]): one watch per environment (list, then watch from its
//! `resourceVersion`) binds pods to instances (a pod is bound to at most one instance; the
//! binding lives in memory, and a restarted deployer binds its known instances again by their
//! recorded pod IP), reports readiness as health ([`TargetEvent::Health`], when it changes and
//! again on every tick: the engine may not have recorded the start yet), a pod not ready
//! within `progress_deadline_seconds` as a failed instance with the reason from the pod's
//! status ([`TargetEvent::Exited`], `crash_loop`), a deleted pod as an exit followed by a
//! restart on the pod the ReplicaSet puts in its place, and follows each bound pod's log
//! ([`TargetEvent::Logs`]). Supervision (restarts, backoff) is the cluster's.

mod cluster;
mod objects;
mod pods;
pub mod route;
mod settings;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Notify, OnceCell};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::cluster::{Cluster, api_error, is_not_found, listed, lock};
use self::objects::Names;
pub use self::settings::{ClusterSettings, KubernetesSettings};
use super::{
    Adopted, InstanceSpec, Known, Lease, Placement, Target, TargetError, TargetEvent, Traffic,
};

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "slipway";
/// How often a start looks at its binding again when no pod event woke it.
const POLL: Duration = Duration::from_millis(250);
/// How often a Deployment write is retried after a conflict with another writer.
const CONFLICT_RETRIES: usize = 5;

/// An instance this target supervises.
pub(crate) struct Instance {
    pub environment: String,
    pub names: Names,
    pub release: i32,
    /// The pod it runs as; `None` until one is bound (or after its pod was lost).
    pub pod: Option<String>,
    pub restarts: u32,
    /// Its pod was lost: the next binding is a restart, reported as one.
    pub lost: bool,
    /// Readiness last reported (`None`: nothing reported for this pod yet).
    pub ready: Option<bool>,
    /// The start answered (or it was adopted): the engine has its row, health may be sent.
    pub started: bool,
    pub bound_at: tokio::time::Instant,
    /// The progress deadline's failure was reported for this pod.
    pub overdue: bool,
    /// Lines of output sent so far (the next batch's `first_seq`).
    pub log_seq: u64,
    pub logs: Option<CancellationToken>,
}

/// What the target, its watches and log followers share.
pub(crate) struct Shared {
    pub settings: KubernetesSettings,
    pub clusters: BTreeMap<String, Cluster>,
    pub events: UnboundedSender<TargetEvent>,
    pub instances: Mutex<HashMap<Uuid, Instance>>,
    /// The spec each release was last applied with (what a stop applies again, fewer).
    specs: Mutex<HashMap<String, InstanceSpec>>,
    /// One writer per Deployment in this process.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Environments whose pod watch runs.
    watching: Mutex<HashSet<String>>,
    pub pods: Mutex<HashMap<String, HashMap<String, pods::PodInfo>>>,
    /// Woken when bindings may have changed.
    pub changed: Notify,
    pub cancel: CancellationToken,
}

/// Instances as pods of per-release Deployments (see the module's doc).
pub struct KubernetesTarget {
    shared: Arc<Shared>,
    lease: Lease,
    node: String,
}

impl KubernetesTarget {
    /// A target for the environments of `settings`, reporting on `events`. Clusters are
    /// connected to at first use.
    pub fn new(
        settings: KubernetesSettings,
        events: UnboundedSender<TargetEvent>,
    ) -> Result<Self, TargetError> {
        let mut clusters = BTreeMap::new();
        for (environment, cluster) in &settings.environments {
            if !objects::is_dns_label(&cluster.namespace) {
                return Err(TargetError::Start(format!(
                    "kubernetes.environments.{environment}.namespace: `{}` is not a namespace name",
                    cluster.namespace
                )));
            }
            clusters.insert(
                environment.clone(),
                Cluster {
                    environment: environment.clone(),
                    settings: cluster.clone(),
                    client: OnceCell::new(),
                },
            );
        }
        let node = format!(
            "kubernetes:{}",
            clusters
                .values()
                .map(|c| format!(
                    "{}={}/{}",
                    c.environment,
                    c.settings.context.as_deref().unwrap_or("in-cluster"),
                    c.settings.namespace
                ))
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                clusters,
                events,
                instances: Mutex::default(),
                specs: Mutex::default(),
                locks: Mutex::default(),
                watching: Mutex::default(),
                pods: Mutex::default(),
                changed: Notify::new(),
                cancel: CancellationToken::new(),
            }),
            lease: Lease::default(),
            node,
        })
    }

    /// Starts the environment's pod watch unless it runs.
    async fn watch(&self, environment: &str) -> Result<(), TargetError> {
        let cluster = self.shared.cluster(environment)?;
        let api: Api<Pod> = cluster.api().await?;
        if lock(&self.shared.watching).insert(environment.to_owned()) {
            let ready = pods::spawn_watch(self.shared.clone(), environment.to_owned(), api);
            // The first list is in before any binding is attempted.
            ready.notified().await;
        }
        Ok(())
    }

    fn register(&self, spec: &InstanceSpec, restarts: u32) {
        let names = Names::new(&spec.service_name, &spec.environment);
        lock(&self.shared.specs).insert(names.release(spec.release), spec.clone());
        self.shared.instances().insert(
            spec.instance_id,
            Instance {
                environment: spec.environment.clone(),
                names,
                release: spec.release,
                pod: None,
                restarts,
                lost: false,
                ready: None,
                started: false,
                bound_at: tokio::time::Instant::now(),
                overdue: false,
                log_seq: 0,
                logs: None,
            },
        );
    }

    async fn start_instance(&self, spec: InstanceSpec) -> Result<Placement, TargetError> {
        let id = spec.instance_id;
        if self.shared.instances().contains_key(&id) {
            return Err(TargetError::Start(format!("instance {id} already runs")));
        }
        self.watch(&spec.environment).await?;
        self.shared.apply_release(&spec).await?;
        self.register(&spec, 0);
        let key = id.to_string();
        if let Err(e) = self
            .shared
            .update_instances(&spec, |ids| {
                ids.insert(key.clone());
            })
            .await
        {
            self.shared.instances().remove(&id);
            return Err(e);
        }
        tracing::info!(instance = %id, deployment = %Names::new(&spec.service_name, &spec.environment).release(spec.release),
            "instance asked of the Deployment");
        let deadline = tokio::time::Instant::now() + self.shared.settings.progress_deadline();
        loop {
            pods::reconcile(&self.shared, &spec.environment, false);
            if let Some(placement) = pods::placement(&self.shared, id) {
                if let Some(instance) = self.shared.instances().get_mut(&id) {
                    instance.started = true;
                }
                // Its readiness so far, at once (and again at every tick).
                pods::reconcile(&self.shared, &spec.environment, false);
                return Ok(placement);
            }
            if tokio::time::Instant::now() >= deadline {
                let why = pods::pending_reason(&self.shared, &spec.environment, spec.release);
                self.stop_instance(id, Duration::ZERO).await?;
                return Err(TargetError::Start(format!(
                    "no pod of {} within {} s: {why}",
                    Names::new(&spec.service_name, &spec.environment).release(spec.release),
                    self.shared.settings.progress_deadline_seconds
                )));
            }
            // Made after this loop's own reconcile, which may notify: a binding by an event
            // in between is seen at the next poll.
            let woken = self.shared.changed.notified();
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(POLL) => {}
                () = self.shared.cancel.cancelled() => return Err(TargetError::Cancelled),
            }
        }
    }

    /// The spec of `id`'s release as last applied, if this target knows the instance.
    fn spec_of(&self, id: Uuid) -> Option<(InstanceSpec, Option<String>)> {
        let instances = self.shared.instances();
        let instance = instances.get(&id)?;
        let spec = lock(&self.shared.specs)
            .get(&instance.names.release(instance.release))
            .cloned()?;
        Some((spec, instance.pod.clone()))
    }

    async fn stop_instance(&self, id: Uuid, grace: Duration) -> Result<(), TargetError> {
        let Some((spec, pod)) = self.spec_of(id) else {
            tracing::info!(instance = %id, "stop of an instance this target does not know: nothing runs");
            return Ok(());
        };
        // Forgotten first: the deletion below is not a lost pod.
        if let Some(instance) = self.shared.instances().remove(&id)
            && let Some(logs) = instance.logs
        {
            logs.cancel();
        }
        let cluster = self.shared.cluster(&spec.environment)?;
        if let Some(pod) = pod {
            let pods: Api<Pod> = cluster.api().await?;
            let params = DeleteParams {
                grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
                ..DeleteParams::default()
            };
            match pods.delete(&pod, &params).await {
                Err(e) if !is_not_found(&e) => {
                    return Err(TargetError::NotStopped(id, format!("pod {pod}: {e}")));
                }
                _ => {}
            }
        }
        let key = id.to_string();
        self.shared
            .update_instances(&spec, |ids| {
                ids.remove(&key);
            })
            .await?;
        tracing::info!(instance = %id, "instance stopped");
        Ok(())
    }

    async fn adopt_instances(&self, known: Vec<Known>) -> Result<Adopted, TargetError> {
        let mut adopted = Adopted::default();
        for k in known {
            let id = k.spec.instance_id;
            if self.shared.instances().contains_key(&id) {
                continue;
            }
            self.watch(&k.spec.environment).await?;
            let names = Names::new(&k.spec.service_name, &k.spec.environment);
            let api: Api<Deployment> = self.shared.cluster(&k.spec.environment)?.api().await?;
            let listed_here = api
                .get_opt(&names.release(k.spec.release))
                .await
                .map_err(|e| api_error("cannot read the Deployment", e))?
                .is_some_and(|d| listed(&d).contains(&id.to_string()));
            self.register(&k.spec, k.restarts);
            let ip = k.placement.address.rsplit_once(':').map(|(ip, _)| ip);
            let bound = listed_here && pods::bind_by_ip(&self.shared, id, ip);
            if let Some(instance) = self.shared.instances().get_mut(&id) {
                instance.started = bound;
            }
            match bound.then(|| pods::placement(&self.shared, id)).flatten() {
                Some(placement) => adopted.running.push((id, placement)),
                None => {
                    // Its pod is gone: forgotten (and taken off the Deployment); the caller
                    // starts a new instance.
                    self.stop_instance(id, Duration::ZERO).await?;
                    adopted.dead.push(id);
                }
            }
        }
        Ok(adopted)
    }

    async fn set_traffic(&self, traffic: Traffic) -> Result<(), TargetError> {
        let Some(cluster) = self.shared.clusters.get(&traffic.environment) else {
            return Ok(());
        };
        let names = Names::new(&traffic.service_name, &traffic.environment);
        let weights: Vec<(i32, u32)> = traffic
            .weights
            .iter()
            .filter(|w| w.weight > 0)
            .map(|w| (w.release, w.weight))
            .collect();
        let route = objects::http_route(
            &names,
            &cluster.settings.gateway,
            cluster.settings.gateway_namespace.as_deref(),
            &cluster.settings.hostnames,
            &weights,
        );
        let routes: Api<route::HttpRoute> = cluster.api().await?;
        routes
            .patch(
                &names.stable(),
                &Shared::apply_params(),
                &Patch::Apply(&route),
            )
            .await
            .map_err(|e| api_error("cannot apply the HTTPRoute", e))?;
        // Blue-green: the stable Service follows the release with the most traffic (the
        // newer one on a tie); no traffic at all leaves it where it is.
        if let Some(&(release, _)) = weights.iter().max_by_key(|(r, w)| (*w, *r)) {
            let services: Api<Service> = cluster.api().await?;
            let stable = names.stable();
            services
                .patch(
                    &stable,
                    &Shared::apply_params(),
                    &Patch::Apply(&objects::service(&names, stable.clone(), release)),
                )
                .await
                .map_err(|e| api_error("cannot switch the stable Service", e))?;
        }
        Ok(())
    }

    /// Every instance listed by a Deployment of this target's environments (what runs there).
    pub async fn listed(&self) -> Result<Vec<Uuid>, TargetError> {
        let mut ids = Vec::new();
        for cluster in self.shared.clusters.values() {
            let api: Api<Deployment> = cluster.api().await?;
            let params = ListParams::default().labels(&format!("{}=slipway", objects::MANAGED_BY));
            let list = api
                .list(&params)
                .await
                .map_err(|e| api_error("cannot list Deployments", e))?;
            ids.extend(
                list.items
                    .iter()
                    .flat_map(listed)
                    .filter_map(|id| id.parse::<Uuid>().ok()),
            );
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

impl Drop for KubernetesTarget {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl Target for KubernetesTarget {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Placement, TargetError>> {
        Box::pin(self.start_instance(spec))
    }

    fn stop(&self, instance_id: Uuid, grace: Duration) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(self.stop_instance(instance_id, grace))
    }

    fn node(&self) -> String {
        self.node.clone()
    }

    fn adopt(&self, known: Vec<Known>) -> BoxFuture<'_, Result<Adopted, TargetError>> {
        Box::pin(self.adopt_instances(known))
    }

    fn running(&self) -> Vec<Uuid> {
        self.shared.instances().keys().copied().collect()
    }

    fn sweep(&self, _orphans: Vec<Uuid>) -> BoxFuture<'_, Vec<Uuid>> {
        // `running` lists only what this target supervises, so none of it is an orphan.
        // Instances a crashed deployer left in a Deployment are listed by `listed`.
        Box::pin(async { Vec::new() })
    }

    fn supervised(&self) -> HashSet<Uuid> {
        self.shared.instances().keys().copied().collect()
    }

    fn release(&self, instance_id: Uuid) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(instance) = self.shared.instances().remove(&instance_id)
                && let Some(logs) = instance.logs
            {
                logs.cancel();
            }
        })
    }

    fn lease(&self) -> Lease {
        self.lease.clone()
    }

    fn detach(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.cancel.cancel();
            self.shared.instances().clear();
        })
    }

    fn set_weights(&self, traffic: Traffic) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(self.set_traffic(traffic))
    }
}
