//! One environment's cluster (its client, made at first use) and the writes of a release's
//! objects: ConfigMap, Secret, Services, and the Deployment's instance list under a
//! `resourceVersion` precondition.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::OnceCell;
use uuid::Uuid;

use super::objects::{self, Names};
use super::{CONFLICT_RETRIES, ClusterSettings, FIELD_MANAGER, Instance, Shared};
use crate::target::{InstanceSpec, TargetError};

/// One environment's cluster and namespace; the client is made at first use (loading a
/// kubeconfig is asynchronous).
pub(crate) struct Cluster {
    pub environment: String,
    pub settings: ClusterSettings,
    pub(super) client: OnceCell<kube::Client>,
}

impl Cluster {
    pub(crate) async fn client(&self) -> Result<kube::Client, TargetError> {
        let client = self
            .client
            .get_or_try_init(|| async {
                let config = match (&self.settings.kubeconfig, &self.settings.context) {
                    (None, None) => kube::Config::incluster().map_err(|e| e.to_string())?,
                    (file, context) => {
                        let options = KubeConfigOptions {
                            context: context.clone(),
                            ..KubeConfigOptions::default()
                        };
                        match file {
                            Some(file) => {
                                let kubeconfig =
                                    Kubeconfig::read_from(file).map_err(|e| e.to_string())?;
                                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                                    .await
                                    .map_err(|e| e.to_string())?
                            }
                            None => kube::Config::from_kubeconfig(&options)
                                .await
                                .map_err(|e| e.to_string())?,
                        }
                    }
                };
                kube::Client::try_from(config).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e: String| {
                TargetError::Start(format!(
                    "no Kubernetes client for environment `{}`: {e}",
                    self.environment
                ))
            })?;
        Ok(client.clone())
    }

    pub(crate) async fn api<K>(&self) -> Result<Api<K>, TargetError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Ok(Api::namespaced(
            self.client().await?,
            &self.settings.namespace,
        ))
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn api_error(what: &str, e: kube::Error) -> TargetError {
    TargetError::Start(format!("{what}: {e}"))
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

pub(super) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Shared {
    pub(crate) fn instances(&self) -> MutexGuard<'_, HashMap<Uuid, Instance>> {
        lock(&self.instances)
    }

    pub(super) fn cluster(&self, environment: &str) -> Result<&Cluster, TargetError> {
        self.clusters.get(environment).ok_or_else(|| {
            TargetError::Start(format!(
                "no Kubernetes cluster for environment `{environment}` \
                 (set [kubernetes.environments.{environment}])"
            ))
        })
    }

    fn writer(&self, deployment: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks)
            .entry(deployment.to_owned())
            .or_default()
            .clone()
    }

    pub(super) fn apply_params() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    /// Reads the Deployment of `spec`'s release, changes its instance list with `change`, and
    /// applies it (or deletes it and the release's Service at zero), retrying on conflicts.
    pub(super) async fn update_instances(
        &self,
        spec: &InstanceSpec,
        change: impl Fn(&mut BTreeSet<String>),
    ) -> Result<(), TargetError> {
        let cluster = self.cluster(&spec.environment)?;
        let names = Names::new(&spec.service_name, &spec.environment);
        let name = names.release(spec.release);
        let writer = self.writer(&name);
        let _guard = writer.lock().await;
        let api: Api<Deployment> = cluster.api().await?;
        for _ in 0..CONFLICT_RETRIES {
            let current = api
                .get_opt(&name)
                .await
                .map_err(|e| api_error("cannot read the Deployment", e))?;
            let mut ids = current.as_ref().map(listed).unwrap_or_default();
            change(&mut ids);
            if ids.is_empty() {
                if current.is_some() {
                    delete_release(cluster, &names, spec.release).await?;
                }
                return Ok(());
            }
            let version = current.and_then(|d| d.metadata.resource_version);
            let deadline = i32::try_from(self.settings.progress_deadline_seconds).unwrap_or(600);
            let object = objects::deployment(&names, spec, &ids, deadline, version);
            match api
                .patch(&name, &Self::apply_params(), &Patch::Apply(&object))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(api_error("cannot apply the Deployment", e)),
            }
        }
        Err(TargetError::Start(format!(
            "the Deployment {name} kept changing under this deployer ({CONFLICT_RETRIES} conflicts)"
        )))
    }

    pub(super) async fn apply_release(&self, spec: &InstanceSpec) -> Result<(), TargetError> {
        let cluster = self.cluster(&spec.environment)?;
        let names = Names::new(&spec.service_name, &spec.environment);
        let params = Self::apply_params();
        let config = names.config(spec.config_version);
        let maps: Api<ConfigMap> = cluster.api().await?;
        maps.patch(
            &config,
            &params,
            &Patch::Apply(&objects::config_map(&names, spec)),
        )
        .await
        .map_err(|e| api_error("cannot apply the ConfigMap", e))?;
        let secrets: Api<Secret> = cluster.api().await?;
        // The error names the object only: the API server's message might quote values.
        secrets
            .patch(
                &config,
                &params,
                &Patch::Apply(&objects::secret(&names, spec)),
            )
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) => TargetError::Start(format!(
                    "cannot apply the Secret {config}: {} ({})",
                    s.reason, s.code
                )),
                _ => TargetError::Start(format!("cannot apply the Secret {config}")),
            })?;
        let services: Api<Service> = cluster.api().await?;
        let own = names.release(spec.release);
        services
            .patch(
                &own,
                &params,
                &Patch::Apply(&objects::service(&names, own.clone(), spec.release)),
            )
            .await
            .map_err(|e| api_error("cannot apply the release's Service", e))?;
        // The stable Service is made once, selecting the first release; after that only
        // set_weights moves it (an apply here would undo a blue-green switch).
        let stable = names.stable();
        let exists = services
            .get_opt(&stable)
            .await
            .map_err(|e| api_error("cannot read the stable Service", e))?
            .is_some();
        if !exists {
            services
                .patch(
                    &stable,
                    &params,
                    &Patch::Apply(&objects::service(&names, stable.clone(), spec.release)),
                )
                .await
                .map_err(|e| api_error("cannot apply the stable Service", e))?;
        }
        Ok(())
    }
}

/// The instance ids a Deployment lists.
pub(super) fn listed(d: &Deployment) -> BTreeSet<String> {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(objects::INSTANCES))
        .and_then(|raw| serde_json::from_str(raw).ok())
        .unwrap_or_default()
}

async fn delete_release(cluster: &Cluster, names: &Names, release: i32) -> Result<(), TargetError> {
    let name = names.release(release);
    let deployments: Api<Deployment> = cluster.api().await?;
    match deployments.delete(&name, &DeleteParams::foreground()).await {
        Err(e) if !is_not_found(&e) => return Err(api_error("cannot delete the Deployment", e)),
        _ => {}
    }
    let services: Api<Service> = cluster.api().await?;
    match services.delete(&name, &DeleteParams::default()).await {
        Err(e) if !is_not_found(&e) => Err(api_error("cannot delete the release's Service", e)),
        _ => Ok(()),
    }
}
