//! Targets per environment: the engine keeps one [`Target`], this router, which starts an
//! instance on the target of its environment (`[targets.environments.<env>] kind`, else
//! `[targets] default`) and sends every other call to the target that runs the instance, or
//! to all of them (each ignores instances it does not know), merging their answers.
//!
//! Every target behind the router restarts under one [`Lease`] (the replica's, which the
//! engine renews through [`Target::lease`]): the router is handed the lease they share.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use uuid::Uuid;

use super::{Adopted, InstanceSpec, Known, Lease, Placement, Target, TargetError, Traffic};

/// A kind of target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    #[default]
    Process,
    Docker,
    Kubernetes,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Process => "process",
            TargetKind::Docker => "docker",
            TargetKind::Kubernetes => "kubernetes",
        }
    }
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Section `[targets]` of the deployer's settings.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TargetsSettings {
    /// Where environments not named below run.
    #[serde(default)]
    pub default: TargetKind,
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentTarget>,
}

/// `[targets.environments.<name>]`.
#[derive(Debug, Clone, Deserialize)]
pub struct EnvironmentTarget {
    pub kind: TargetKind,
}

impl TargetsSettings {
    pub fn kind_for(&self, environment: &str) -> TargetKind {
        self.environments
            .get(environment)
            .map_or(self.default, |e| e.kind)
    }

    /// Every kind the settings use, the default first.
    pub fn kinds(&self) -> Vec<TargetKind> {
        let mut kinds = vec![self.default];
        for env in self.environments.values() {
            if !kinds.contains(&env.kind) {
                kinds.push(env.kind);
            }
        }
        kinds
    }
}

/// Why the router cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("the settings send environments to the {0} target, which is not set up")]
    Missing(TargetKind),
}

/// One [`Target`] over several, by environment.
pub struct TargetRouter {
    settings: TargetsSettings,
    targets: Vec<(TargetKind, Arc<dyn Target>)>,
    /// Which target runs each instance started or adopted through the router.
    owners: Mutex<HashMap<Uuid, TargetKind>>,
    lease: Lease,
}

impl TargetRouter {
    /// A router over `targets` (the first one's node is the router's: build the process
    /// target first when there is one), all built with `lease`.
    pub fn new(
        settings: TargetsSettings,
        targets: Vec<(TargetKind, Arc<dyn Target>)>,
        lease: Lease,
    ) -> Result<Self, RouterError> {
        for kind in settings.kinds() {
            if !targets.iter().any(|(k, _)| *k == kind) {
                return Err(RouterError::Missing(kind));
            }
        }
        Ok(Self {
            settings,
            targets,
            owners: Mutex::default(),
            lease,
        })
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, TargetKind>> {
        self.owners.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn target(&self, kind: TargetKind) -> Option<&Arc<dyn Target>> {
        self.targets
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, t)| t)
    }

    /// The targets an instance may be on: its owner if known, else all.
    fn candidates(&self, id: Uuid) -> Vec<(TargetKind, Arc<dyn Target>)> {
        let owner = self.owners().get(&id).copied();
        self.targets
            .iter()
            .filter(|(k, _)| owner.is_none_or(|o| o == *k))
            .cloned()
            .collect()
    }

    async fn start_instance(&self, spec: InstanceSpec) -> Result<Placement, TargetError> {
        let kind = self.settings.kind_for(&spec.environment);
        let Some(target) = self.target(kind) else {
            return Err(TargetError::Start(format!("no {kind} target is set up")));
        };
        let id = spec.instance_id;
        let placement = target.start(spec).await?;
        self.owners().insert(id, kind);
        Ok(placement)
    }

    async fn stop_instance(&self, id: Uuid, grace: Duration) -> Result<(), TargetError> {
        for (_, target) in self.candidates(id) {
            target.stop(id, grace).await?;
        }
        self.owners().remove(&id);
        Ok(())
    }

    async fn adopt_instances(&self, known: Vec<Known>) -> Result<Adopted, TargetError> {
        let mut by_kind: BTreeMap<TargetKind, Vec<Known>> = BTreeMap::new();
        for k in known {
            by_kind
                .entry(self.settings.kind_for(&k.spec.environment))
                .or_default()
                .push(k);
        }
        let mut adopted = Adopted::default();
        for (kind, known) in by_kind {
            let Some(target) = self.target(kind) else {
                return Err(TargetError::Start(format!("no {kind} target is set up")));
            };
            let part = target.adopt(known).await?;
            let mut owners = self.owners();
            for (id, _) in &part.running {
                owners.insert(*id, kind);
            }
            drop(owners);
            adopted.dead.extend(part.dead);
            adopted.running.extend(part.running);
        }
        Ok(adopted)
    }

    async fn sweep_orphans(&self, orphans: Vec<Uuid>) -> Vec<Uuid> {
        let mut stopped = Vec::new();
        for (_, target) in &self.targets {
            stopped.extend(target.sweep(orphans.clone()).await);
        }
        stopped.sort_unstable();
        stopped.dedup();
        stopped
    }

    async fn release_instance(&self, id: Uuid) {
        for (_, target) in self.candidates(id) {
            target.release(id).await;
        }
        self.owners().remove(&id);
    }

    async fn detach_all(&self) {
        for (_, target) in &self.targets {
            target.detach().await;
        }
    }
}

impl Target for TargetRouter {
    fn kind(&self) -> &'static str {
        self.settings.default.as_str()
    }

    fn kind_for(&self, environment: &str) -> &'static str {
        self.settings.kind_for(environment).as_str()
    }

    /// To the target of the environment: only the Kubernetes target acts on weights (the edge
    /// router applies them for the others).
    fn set_weights(&self, traffic: Traffic) -> BoxFuture<'_, Result<(), TargetError>> {
        let kind = self.settings.kind_for(&traffic.environment);
        Box::pin(async move {
            match self.target(kind) {
                Some(target) => target.set_weights(traffic).await,
                None => Err(TargetError::Start(format!("no {kind} target is set up"))),
            }
        })
    }

    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Placement, TargetError>> {
        Box::pin(self.start_instance(spec))
    }

    fn stop(&self, instance_id: Uuid, grace: Duration) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(self.stop_instance(instance_id, grace))
    }

    fn node(&self) -> String {
        self.targets
            .first()
            .map(|(_, t)| t.node())
            .unwrap_or_default()
    }

    fn adopt(&self, known: Vec<Known>) -> BoxFuture<'_, Result<Adopted, TargetError>> {
        Box::pin(self.adopt_instances(known))
    }

    fn running(&self) -> Vec<Uuid> {
        let mut all: Vec<Uuid> = self.targets.iter().flat_map(|(_, t)| t.running()).collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    fn sweep(&self, orphans: Vec<Uuid>) -> BoxFuture<'_, Vec<Uuid>> {
        Box::pin(self.sweep_orphans(orphans))
    }

    fn supervised(&self) -> HashSet<Uuid> {
        self.targets
            .iter()
            .flat_map(|(_, t)| t.supervised())
            .collect()
    }

    fn release(&self, instance_id: Uuid) -> BoxFuture<'_, ()> {
        Box::pin(self.release_instance(instance_id))
    }

    fn lease(&self) -> Lease {
        self.lease.clone()
    }

    fn detach(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.detach_all())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap as Map;

    use slipway_ids::ServiceId;

    use super::*;

    /// A target that records what it is asked (a stand-in for one piece: the router).
    #[derive(Default)]
    struct Fake {
        name: &'static str,
        running: Mutex<HashSet<Uuid>>,
        stops: Mutex<Vec<Uuid>>,
    }

    impl Target for Fake {
        fn kind(&self) -> &'static str {
            self.name
        }
        fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Placement, TargetError>> {
            self.running.lock().unwrap().insert(spec.instance_id);
            Box::pin(async move {
                Ok(Placement {
                    address: format!("{}:1", self.name),
                    port: 1,
                    process: None,
                })
            })
        }
        fn stop(&self, id: Uuid, _: Duration) -> BoxFuture<'_, Result<(), TargetError>> {
            self.stops.lock().unwrap().push(id);
            self.running.lock().unwrap().remove(&id);
            Box::pin(async { Ok(()) })
        }
        fn node(&self) -> String {
            format!("node-{}", self.name)
        }
        fn adopt(&self, known: Vec<Known>) -> BoxFuture<'_, Result<Adopted, TargetError>> {
            let running = self.running.lock().unwrap().clone();
            let (alive, dead): (Vec<Known>, Vec<Known>) = known
                .into_iter()
                .partition(|k| running.contains(&k.spec.instance_id));
            Box::pin(async move {
                Ok(Adopted {
                    dead: dead.iter().map(|k| k.spec.instance_id).collect(),
                    running: alive
                        .into_iter()
                        .map(|k| (k.spec.instance_id, k.placement))
                        .collect(),
                })
            })
        }
        fn running(&self) -> Vec<Uuid> {
            self.running.lock().unwrap().iter().copied().collect()
        }
        fn sweep(&self, orphans: Vec<Uuid>) -> BoxFuture<'_, Vec<Uuid>> {
            let mut running = self.running.lock().unwrap();
            let swept = orphans.into_iter().filter(|o| running.remove(o)).collect();
            Box::pin(async move { swept })
        }
        fn supervised(&self) -> HashSet<Uuid> {
            self.running.lock().unwrap().clone()
        }
        fn release(&self, _: Uuid) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn lease(&self) -> Lease {
            Lease::default()
        }
        fn detach(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn spec(environment: &str) -> InstanceSpec {
        InstanceSpec {
            instance_id: Uuid::new_v4(),
            service_id: ServiceId::new(),
            service_name: "shop".into(),
            environment: environment.into(),
            release: 1,
            config_version: 1,
            image: "r/shop@sha256:00".into(),
            run: None,
            env: Map::new(),
        }
    }

    #[tokio::test]
    async fn starts_go_by_environment_and_other_calls_to_the_target_running_the_instance() {
        let process = Arc::new(Fake {
            name: "process",
            ..Default::default()
        });
        let docker = Arc::new(Fake {
            name: "docker",
            ..Default::default()
        });
        let settings = TargetsSettings {
            default: TargetKind::Process,
            environments: BTreeMap::from([(
                "production".to_owned(),
                EnvironmentTarget {
                    kind: TargetKind::Docker,
                },
            )]),
        };
        let router = TargetRouter::new(
            settings,
            vec![
                (TargetKind::Process, process.clone() as Arc<dyn Target>),
                (TargetKind::Docker, docker.clone() as Arc<dyn Target>),
            ],
            Lease::default(),
        )
        .unwrap();
        assert_eq!(router.node(), "node-process", "the first target's node");
        assert_eq!(router.kind_for("production"), "docker");
        assert_eq!(router.kind_for("staging"), "process");

        let (prod, staging) = (spec("production"), spec("staging"));
        let at = router.start(prod.clone()).await.unwrap();
        assert_eq!(at.address, "docker:1");
        router.start(staging.clone()).await.unwrap();
        assert_eq!(
            router.supervised(),
            [prod.instance_id, staging.instance_id].into()
        );
        router
            .stop(prod.instance_id, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(*docker.stops.lock().unwrap(), [prod.instance_id]);
        assert!(process.stops.lock().unwrap().is_empty(), "only its owner");

        // Adoption splits by environment; orphans go to every target.
        let other = spec("production");
        docker.running.lock().unwrap().insert(other.instance_id);
        let known = |s: &InstanceSpec| Known {
            spec: s.clone(),
            placement: at.clone(),
            restarts: 0,
        };
        let adopted = router
            .adopt(vec![known(&other), known(&prod)])
            .await
            .unwrap();
        assert_eq!(adopted.dead, [prod.instance_id]);
        assert_eq!(adopted.running.len(), 1);
        let swept = router
            .sweep(vec![staging.instance_id, other.instance_id])
            .await;
        let mut expected = vec![staging.instance_id, other.instance_id];
        expected.sort_unstable();
        assert_eq!(swept, expected);
        assert!(router.running().is_empty());
    }

    #[test]
    fn environments_pick_their_kind_and_every_kind_needs_a_target() {
        let settings: TargetsSettings = toml::from_str(
            r#"
            default = "process"
            [environments.production]
            kind = "docker"
            "#,
        )
        .unwrap();
        assert_eq!(settings.kind_for("production"), TargetKind::Docker);
        assert_eq!(settings.kind_for("staging"), TargetKind::Process);
        assert_eq!(settings.kinds(), [TargetKind::Process, TargetKind::Docker]);
        let e = TargetRouter::new(settings, Vec::new(), Lease::default())
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "the settings send environments to the process target, which is not set up"
        );
        let bad = toml::from_str::<TargetsSettings>("default = \"vm\"");
        assert!(bad.is_err());
    }
}
