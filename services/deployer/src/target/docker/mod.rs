//! The Docker target: one container per instance on one of its environment's Docker Engines
//! (spread Kamal-style: the engine with the fewest instances of that service and environment),
//! supervised by Slipway with the process target's rules (see [`supervise`]).
//!
//! A container carries labels that say what it is ([`spec`]: scope, service, environment,
//! release, instance, creating replica; never its config) and the release's config and
//! secrets in its environment only. It runs as the image's numeric non-root user (else
//! 10001), with every capability dropped, `no-new-privileges`, not privileged, a read-only
//! image with a tmpfs on `/tmp`, and the CPU, memory and process limits of the settings.
//!
//! Reached at its IP on a user-defined bridge network (`docker.network`, which the edge router
//! and the monitor share or route to) or at an ephemeral port published on one address of the
//! engine's machine (`docker.publish_host`). On such a bridge an instance reaches the other
//! containers on it and, through NAT, the outside world; it does not reach the engine
//! machine's loopback, where the platform's own services listen by default (a service bound
//! to all addresses of that machine would be reachable at the bridge's gateway address).
//!
//! After a deployer restart the labels are the record ([`adopt`]): running containers of known
//! instances are supervised again, dead ones reported, and containers of this scope that the
//! database does not know are removed as orphans.

mod adopt;
mod engine;
mod logs;
mod settings;
mod spec;
mod supervise;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bollard::query_parameters::CreateContainerOptionsBuilder;
use futures::future::BoxFuture;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::engine::Host;
pub use self::engine::REGISTRY_AUTH;
pub use self::settings::{DockerEnvironment, DockerSettings};
use self::spec::Reach;
pub use self::spec::{INSTANCE_LABEL, NO_BASE, SCOPE_LABEL};
use self::supervise::{Handle, Supervisor};
use super::{Adopted, InstanceSpec, Known, Lease, Placement, Target, TargetError, TargetEvent};

/// What the supervisors share with the target.
pub(crate) struct Context {
    settings: DockerSettings,
    events: UnboundedSender<TargetEvent>,
    lease: Lease,
    reach: Reach,
    /// The replica that creates containers (a label).
    replica: String,
}

impl Context {
    /// Pulls the image onto `host` (if missing), checks it and creates the container;
    /// answers its id. Nothing of the environment is logged or put in an error.
    async fn create(
        &self,
        host: &Host,
        spec: &InstanceSpec,
        cancel: &CancellationToken,
    ) -> Result<String, TargetError> {
        let login = self
            .settings
            .registry_auth
            .login(REGISTRY_AUTH)
            .map_err(|e| TargetError::Start(e.to_string()))?;
        let image = host
            .ensure_image(&spec.image, login, self.settings.pull_timeout(), cancel)
            .await?;
        let facts = spec::image_facts(spec, &image)?;
        if let Some(network) = &self.reach.network {
            host.ensure_network(network, &self.settings.scope).await?;
        }
        let body = spec::container(
            spec,
            &facts,
            spec::labels(spec, &self.settings, &self.replica),
            self.settings.limits_for(&spec.environment),
            &self.reach,
            self.settings.read_only_root,
        );
        let name = spec::container_name(spec, &self.settings.scope);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let mut created = host
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await;
        if let Err(e) = &created
            && engine::conflict(e)
        {
            // The remains of an earlier run of this very instance (same name): a start means
            // it does not run any more.
            tracing::warn!(instance = %spec.instance_id, container = %name,
                "removing a leftover container of the instance");
            supervise::remove(host, &name, None).await;
            created = host.docker.create_container(Some(options), body).await;
        }
        let created = created.map_err(|e| {
            TargetError::Start(format!("cannot create the container on {}: {e}", host.url))
        })?;
        Ok(created.id)
    }

    /// Where the (running) container is reached.
    async fn placement(&self, host: &Host, container: &str) -> Result<Placement, TargetError> {
        let inspect = host
            .docker
            .inspect_container(container, None)
            .await
            .map_err(|e| TargetError::Start(format!("cannot inspect the container: {e}")))?;
        spec::placement(&inspect, &self.reach, &host.machine())
    }
}

/// Instances as supervised containers on Docker Engines.
pub struct DockerTarget {
    ctx: Arc<Context>,
    hosts: Vec<Arc<Host>>,
    instances: Mutex<HashMap<Uuid, Handle>>,
    /// The containers of this scope on every engine, as last listed (see [`Target::running`]).
    seen: Arc<Mutex<HashSet<Uuid>>>,
    /// Parent of every supervisor's token: dropping the target ends supervision (never the
    /// containers).
    detach: CancellationToken,
}

impl DockerTarget {
    /// Connects to every engine of the settings (failing with the one that does not answer),
    /// reporting on `events`, restarting under `lease`; `replica` labels what it creates.
    pub async fn connect(
        settings: DockerSettings,
        events: UnboundedSender<TargetEvent>,
        lease: Lease,
        replica: String,
    ) -> Result<Self, TargetError> {
        settings
            .registry_auth
            .login(REGISTRY_AUTH)
            .map_err(|e| TargetError::Start(e.to_string()))?;
        engine::check_files(&settings)?;
        let hosts = engine::connect_all(&settings).await?;
        let detach = CancellationToken::new();
        let target = Self {
            ctx: Arc::new(Context {
                reach: Reach::of(&settings),
                settings,
                events,
                lease,
                replica,
            }),
            hosts,
            instances: Mutex::new(HashMap::new()),
            seen: Arc::default(),
            detach,
        };
        target.refresh().await;
        adopt::spawn_lister(
            target.hosts.clone(),
            target.ctx.settings.scope.clone(),
            target.seen.clone(),
            target.detach.child_token(),
        );
        Ok(target)
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Handle>> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn supervised_ids(&self) -> HashSet<Uuid> {
        self.handles().keys().copied().collect()
    }

    /// Lists the containers of this scope again now (also done every few seconds).
    pub async fn refresh(&self) {
        if let Some(found) = adopt::list_scope(&self.hosts, &self.ctx.settings.scope).await {
            *self.seen.lock().unwrap_or_else(PoisonError::into_inner) =
                found.into_iter().map(|c| c.instance).collect();
        }
    }

    /// The engine for a new instance of `spec`: among its environment's, the one with the
    /// fewest instances of the same service and environment, then the fewest in all.
    fn choose_host(&self, spec: &InstanceSpec) -> Result<usize, TargetError> {
        let urls = self.ctx.settings.hosts_for(&spec.environment);
        let handles = self.handles();
        let group = (spec.service_name.clone(), spec.environment.clone());
        self.hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| urls.contains(&h.url))
            .min_by_key(|(i, _)| {
                let mine = handles
                    .values()
                    .filter(|h| h.host == *i && h.group == group)
                    .count();
                let all = handles.values().filter(|h| h.host == *i).count();
                (mine, all)
            })
            .map(|(i, _)| i)
            .ok_or_else(|| {
                TargetError::Start(format!(
                    "no Docker host for the environment {}",
                    spec.environment
                ))
            })
    }

    async fn start_instance(&self, spec: InstanceSpec) -> Result<Placement, TargetError> {
        let id = spec.instance_id;
        if self.handles().contains_key(&id) {
            return Err(TargetError::Start(format!("instance {id} already runs")));
        }
        let index = self.choose_host(&spec)?;
        let host = self.hosts[index].clone();
        let container = self.ctx.create(&host, &spec, &self.detach).await?;
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        let started = async {
            host.docker
                .start_container(&container, None)
                .await
                .map_err(|e| TargetError::Start(format!("cannot start the container: {e}")))?;
            self.ctx.placement(&host, &container).await
        }
        .await;
        let placement = match started {
            Ok(placement) => placement,
            Err(e) => {
                supervise::remove(&host, &container, None).await;
                return Err(e);
            }
        };
        tracing::info!(instance = %id, container = %container, engine = %host.url,
            address = %placement.address, "container started");
        let supervisor = Supervisor {
            ctx: self.ctx.clone(),
            spec,
            host,
            host_index: index,
            container,
            restarts: 0,
        };
        let handle = supervisor.spawn(self.detach.child_token());
        self.handles().insert(id, handle);
        Ok(placement)
    }

    async fn stop_instance(&self, id: Uuid, grace: Duration) {
        let handle = self.handles().remove(&id);
        if let Some(handle) = handle {
            handle.stop(grace).await;
            tracing::info!(instance = %id, "container stopped and removed");
        } else {
            // Not supervised here (its replica is gone, or it was never adopted): found by
            // its labels.
            for found in adopt::find(&self.hosts, &self.ctx.settings.scope, id).await {
                supervise::remove(&found.host, &found.container, Some(grace)).await;
                tracing::info!(instance = %id, "unsupervised container stopped and removed");
            }
        }
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    async fn release_instance(&self, id: Uuid) {
        let handle = self.handles().remove(&id);
        if let Some(handle) = handle {
            handle.detach().await;
            tracing::info!(instance = %id, "no longer supervised here (another replica owns it)");
        }
    }

    async fn detach_all(&self) {
        let handles: Vec<Handle> = self.handles().drain().map(|(_, h)| h).collect();
        for handle in handles {
            handle.detach().await;
        }
    }
}

impl Drop for DockerTarget {
    fn drop(&mut self) {
        self.detach.cancel();
    }
}

impl Target for DockerTarget {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn node(&self) -> String {
        format!("docker:{}", self.ctx.settings.scope)
    }

    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Placement, TargetError>> {
        Box::pin(self.start_instance(spec))
    }

    fn stop(&self, instance_id: Uuid, grace: Duration) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async move {
            self.stop_instance(instance_id, grace).await;
            Ok(())
        })
    }

    fn adopt(&self, known: Vec<Known>) -> BoxFuture<'_, Result<Adopted, TargetError>> {
        Box::pin(self.adopt_instances(known))
    }

    fn running(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    fn sweep(&self, orphans: Vec<Uuid>) -> BoxFuture<'_, Vec<Uuid>> {
        Box::pin(self.sweep_orphans(orphans))
    }

    fn supervised(&self) -> HashSet<Uuid> {
        self.supervised_ids()
    }

    fn release(&self, instance_id: Uuid) -> BoxFuture<'_, ()> {
        Box::pin(self.release_instance(instance_id))
    }

    fn lease(&self) -> Lease {
        self.ctx.lease.clone()
    }

    fn detach(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.detach_all())
    }
}
