//! Section `[kubernetes]` of the deployer's settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Section `[kubernetes]`: one cluster and namespace per environment, and how rollouts are
/// watched.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KubernetesSettings {
    /// `[kubernetes.environments.<env>]`: where each environment's releases run.
    #[serde(default)]
    pub environments: BTreeMap<String, ClusterSettings>,
    /// How long a pod may take to become ready before its instance is reported failed (also
    /// the Deployments' `progressDeadlineSeconds`).
    #[serde(default = "default_progress_deadline_seconds")]
    pub progress_deadline_seconds: u64,
    /// How long output lines are collected before they are sent as one batch.
    #[serde(default = "default_log_batch_ms")]
    pub log_batch_ms: u64,
}

/// One environment's cluster.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterSettings {
    /// The namespace releases are applied in (the deployer's Role must be bound there).
    pub namespace: String,
    /// A kubeconfig file; empty: in-cluster (the pod's service account) unless `context` is
    /// set, then `KUBECONFIG` or `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; empty: the file's current context.
    #[serde(default)]
    pub context: Option<String>,
    /// The Gateway the releases' `HTTPRoute`s attach to (`parentRefs`).
    #[serde(default = "default_gateway")]
    pub gateway: String,
    /// The Gateway's namespace; empty: `namespace`.
    #[serde(default)]
    pub gateway_namespace: Option<String>,
    /// Host names the routes answer for; empty: every host the Gateway listens on.
    #[serde(default)]
    pub hostnames: Vec<String>,
}

fn default_progress_deadline_seconds() -> u64 {
    600
}
fn default_log_batch_ms() -> u64 {
    200
}
fn default_gateway() -> String {
    "slipway".into()
}

impl KubernetesSettings {
    pub(crate) fn progress_deadline(&self) -> Duration {
        Duration::from_secs(self.progress_deadline_seconds.max(1))
    }
    pub(crate) fn log_batch(&self) -> Duration {
        Duration::from_millis(self.log_batch_ms.max(1))
    }
}
