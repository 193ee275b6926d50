//! The targets this deployer set up, behind one [`Target`]: the engine keeps this router,
//! which starts an instance on the target its spec names (its deployment's, the one the
//! registry records for the environment) and sends every other call to the target that runs
//! the instance, or to all of them (each ignores instances it does not know), merging their
//! answers. Adoption goes by the target each instance's row recorded, weights by the
//! deployment's.
//!
//! Which targets are set up is the deployer's `[targets] enabled` (the process target always
//! is); where an environment runs is not the deployer's business.
//!
//! Every target behind the router restarts under one [`Lease`] (the replica's, which the
//! engine renews through [`Target::lease`]): the router is handed the lease they share.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use super::{
    Adopted, InstanceSpec, Known, Lease, NotSetUp, Placement, Target, TargetError, TargetKind,
    Traffic,
};

/// Section `[targets]` of the deployer's settings: which targets it sets up.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetsSettings {
    /// The targets set up besides the process target (always set up): `docker` (the engines of
    /// `[docker]`), `kubernetes` (the clusters of `[kubernetes.environments]`). A list, or one
    /// string with commas (as an environment variable gives it); `process` may be named.
    #[serde(default = "default_enabled", deserialize_with = "kind_list")]
    pub enabled: Vec<TargetKind>,
    /// `[targets] default` of before: where environments run is the registry's record now.
    #[serde(default)]
    default: Option<IgnoredAny>,
    /// `[targets.environments.<env>] kind` of before, likewise.
    #[serde(default)]
    environments: Option<IgnoredAny>,
}

fn default_enabled() -> Vec<TargetKind> {
    vec![TargetKind::Process]
}

fn kind_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TargetKind>, D::Error> {
    super::comma_list(d)?
        .iter()
        .map(|n| {
            n.parse::<TargetKind>()
                .map_err(|e| serde::de::Error::custom(format!("targets.enabled: {e}")))
        })
        .collect()
}

impl Default for TargetsSettings {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            default: None,
            environments: None,
        }
    }
}

impl TargetsSettings {
    /// Every kind set up, the process target first.
    pub fn kinds(&self) -> Vec<TargetKind> {
        let mut kinds = vec![TargetKind::Process];
        for kind in &self.enabled {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        kinds
    }

    /// Refuses the settings of before, saying where they went (checked before anything binds).
    pub fn validate(&self) -> Result<(), RouterError> {
        if self.default.is_some() {
            return Err(RouterError::Moved("targets.default"));
        }
        if self.environments.is_some() {
            return Err(RouterError::Moved("targets.environments"));
        }
        Ok(())
    }
}

/// Why the targets' settings are refused.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(
        "`{0}` is no longer a deployer setting: an environment runs on the target the registry \
         records for it (PUT /v1/services/{{name}}/environments/{{env}} {{\"target\": ...}}; \
         the registry's `[services] default_target` for new environments); the deployer's \
         `[targets] enabled` lists the targets it sets up (e.g. SLIPWAY_TARGETS__ENABLED=docker)"
    )]
    Moved(&'static str),
}

/// One [`Target`] over several, by the target each instance or deployment recorded.
pub struct TargetRouter {
    targets: Vec<(TargetKind, Arc<dyn Target>)>,
    /// Which target runs each instance started or adopted through the router.
    owners: Mutex<HashMap<Uuid, TargetKind>>,
    lease: Lease,
}

impl TargetRouter {
    /// A router over `targets` (the first one's node is the router's: build the process
    /// target first), all built with `lease`.
    pub fn new(targets: Vec<(TargetKind, Arc<dyn Target>)>, lease: Lease) -> Self {
        Self {
            targets,
            owners: Mutex::default(),
            lease,
        }
    }

    /// The target of `kind`, or why there is none for `environment`.
    fn of(&self, kind: TargetKind, environment: &str) -> Result<&Arc<dyn Target>, TargetError> {
        self.target(kind)
            .ok_or_else(|| TargetError::Start(NotSetUp::not_enabled(environment, kind).to_string()))
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
        let kind = spec.target;
        let target = self.of(kind, &spec.environment)?;
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
            by_kind.entry(k.spec.target).or_default().push(k);
        }
        let mut adopted = Adopted::default();
        for (kind, known) in by_kind {
            let environment = known.first().map_or("", |k| k.spec.environment.as_str());
            let target = self.of(kind, environment)?;
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
    fn kind(&self) -> TargetKind {
        self.targets
            .first()
            .map_or(TargetKind::Process, |(kind, _)| *kind)
    }

    /// Asks the target of that kind, if it is set up.
    fn serves(&self, target: TargetKind, environment: &str) -> Result<(), NotSetUp> {
        match self.target(target) {
            Some(t) => t.serves(target, environment),
            None => Err(NotSetUp::not_enabled(environment, target)),
        }
    }

    /// To the deployment's target: only the Kubernetes target acts on weights (the edge
    /// router applies them for the others).
    fn set_weights(&self, traffic: Traffic) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async move {
            let target = self.of(traffic.target, &traffic.environment)?;
            target.set_weights(traffic).await
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
    struct Fake {
        kind: TargetKind,
        running: Mutex<HashSet<Uuid>>,
        stops: Mutex<Vec<Uuid>>,
        weights: Mutex<Vec<String>>,
    }

    fn fake(kind: TargetKind) -> Arc<Fake> {
        Arc::new(Fake {
            kind,
            running: Mutex::default(),
            stops: Mutex::default(),
            weights: Mutex::default(),
        })
    }

    impl Target for Fake {
        fn kind(&self) -> TargetKind {
            self.kind
        }
        fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Placement, TargetError>> {
            self.running.lock().unwrap().insert(spec.instance_id);
            Box::pin(async move {
                Ok(Placement {
                    address: format!("{}:1", self.kind),
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
            format!("node-{}", self.kind)
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
        fn set_weights(&self, traffic: Traffic) -> BoxFuture<'_, Result<(), TargetError>> {
            self.weights.lock().unwrap().push(traffic.environment);
            Box::pin(async { Ok(()) })
        }
    }

    fn spec(environment: &str, target: TargetKind) -> InstanceSpec {
        InstanceSpec {
            instance_id: Uuid::new_v4(),
            service_id: ServiceId::new(),
            service_name: "shop".into(),
            environment: environment.into(),
            target,
            release: 1,
            config_version: 1,
            image: "r/shop@sha256:00".into(),
            run: None,
            env: Map::new(),
        }
    }

    fn traffic(environment: &str, target: TargetKind) -> Traffic {
        Traffic {
            service_id: ServiceId::new(),
            service_name: "shop".into(),
            environment: environment.into(),
            target,
            weights: Vec::new(),
        }
    }

    #[tokio::test]
    async fn starts_go_to_the_recorded_target_and_other_calls_to_the_one_running_the_instance() {
        let (process, docker) = (fake(TargetKind::Process), fake(TargetKind::Docker));
        let router = TargetRouter::new(
            vec![
                (TargetKind::Process, process.clone() as Arc<dyn Target>),
                (TargetKind::Docker, docker.clone() as Arc<dyn Target>),
            ],
            Lease::default(),
        );
        assert_eq!(router.node(), "node-process", "the first target's node");
        assert_eq!(router.kind(), TargetKind::Process);

        // The spec's target decides, not the environment's name: one environment may have
        // instances on two targets (recorded on another target between two deployments).
        let (prod, staging) = (
            spec("production", TargetKind::Docker),
            spec("production", TargetKind::Process),
        );
        let at = router.start(prod.clone()).await.unwrap();
        assert_eq!(at.address, "docker:1");
        let there = router.start(staging.clone()).await.unwrap();
        assert_eq!(there.address, "process:1");
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

        // Weights go to the deployment's target.
        router
            .set_weights(traffic("production", TargetKind::Docker))
            .await
            .unwrap();
        router
            .set_weights(traffic("qa", TargetKind::Process))
            .await
            .unwrap();
        assert_eq!(*docker.weights.lock().unwrap(), ["production"]);
        assert_eq!(*process.weights.lock().unwrap(), ["qa"]);

        // Adoption splits by each instance's recorded target; orphans go to every target.
        let other = spec("production", TargetKind::Docker);
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

    #[tokio::test]
    async fn a_target_not_set_up_is_refused_with_the_settings_to_add() {
        let process = fake(TargetKind::Process);
        let router = TargetRouter::new(
            vec![(TargetKind::Process, process.clone() as Arc<dyn Target>)],
            Lease::default(),
        );
        assert_eq!(router.serves(TargetKind::Process, "prod"), Ok(()));
        let refused = router.serves(TargetKind::Docker, "prod").unwrap_err();
        let shown = refused.to_string();
        assert!(
            shown.starts_with(
                "environment `prod` is recorded on the docker target, which this deployer has \
                 not set up: add `docker` to the deployer's `[targets] enabled`"
            ),
            "{shown}"
        );
        let e = router
            .start(spec("prod", TargetKind::Kubernetes))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("[kubernetes.environments.prod]"),
            "{e}"
        );
        assert!(
            process.running.lock().unwrap().is_empty(),
            "nothing started"
        );
        let e = router
            .set_weights(traffic("prod", TargetKind::Docker))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not set up"), "{e}");
    }

    #[test]
    fn the_settings_list_the_targets_set_up_and_refuse_those_of_before() {
        let settings: TargetsSettings = toml::from_str(r#"enabled = ["docker"]"#).unwrap();
        assert_eq!(settings.kinds(), [TargetKind::Process, TargetKind::Docker]);
        assert!(settings.validate().is_ok());
        let settings: TargetsSettings =
            toml::from_str(r#"enabled = "process, kubernetes,docker""#).unwrap();
        assert_eq!(
            settings.kinds(),
            [
                TargetKind::Process,
                TargetKind::Kubernetes,
                TargetKind::Docker
            ]
        );
        assert_eq!(TargetsSettings::default().kinds(), [TargetKind::Process]);
        let bad = toml::from_str::<TargetsSettings>(r#"enabled = "docker,vm""#).unwrap_err();
        assert!(bad.to_string().contains("targets.enabled: `vm`"), "{bad}");

        let old: TargetsSettings = toml::from_str(
            r#"
            default = "docker"
            [environments.production]
            kind = "docker"
            "#,
        )
        .unwrap();
        let e = old.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("`targets.default` is no longer a deployer setting"),
            "{e}"
        );
        assert!(e.contains("default_target"), "{e}");
        let old: TargetsSettings =
            toml::from_str("[environments.production]\nkind = \"docker\"").unwrap();
        assert!(old.validate().is_err());
    }
}
