//! Shared checks for the deployment manifests (see the tests): reading `k8s/base/` into
//! k8s-openapi types with a round trip that catches fields k8s-openapi would silently drop.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

pub use k8s_openapi::api::apps::v1::Deployment;
pub use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Secret, Service, ServiceAccount,
};
pub use k8s_openapi::api::networking::v1::NetworkPolicy;
pub use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
pub use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
pub use serde_yaml::Value;

/// The five Slipway services; each is the binary `slipway-<name>`.
pub const SERVICES: [&str; 5] = ["gateway", "builder", "registry", "deployer", "monitor"];
/// The port every service listens on inside its container.
pub const HTTP_PORT: i32 = 8080;
/// The non-root user of the runtime image (see the Dockerfile).
pub const RUNTIME_UID: i64 = 10001;

pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize()
        .unwrap_or_else(|e| panic!("repository root {}: {e}", root.display()))
}

pub fn k8s_base() -> PathBuf {
    repo_root().join("k8s/base")
}

pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

/// One document of `k8s/base/`, as its k8s-openapi type.
#[derive(Debug)]
pub enum Object {
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    NetworkPolicy(Box<NetworkPolicy>),
}

/// Where a document came from, for messages.
#[derive(Debug)]
pub struct Document {
    pub origin: String,
    pub object: Object,
}

/// All YAML files of `k8s/base/` (`.yaml` and `.yml`), by file name, sorted.
pub fn base_yaml_files() -> BTreeSet<String> {
    yaml_files(&k8s_base())
}

/// `k8s/target/`: what an application namespace needs for the Kubernetes target.
pub fn k8s_target() -> PathBuf {
    repo_root().join("k8s/target")
}

/// All YAML files of `dir` (`.yaml` and `.yml`), by file name, sorted.
pub fn yaml_files(dir: &Path) -> BTreeSet<String> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())))
        .filter(|entry| entry.path().is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect()
}

/// Splits a multi-document YAML text; empty documents (a trailing `---`) are dropped.
pub fn yaml_documents(text: &str, file: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .enumerate()
        .map(|(index, document)| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{file}: document {index} is not valid YAML: {e}"))
        })
        .filter(|value| !value.is_null())
        .collect()
}

/// The first place where `expected` (what the file says) and `actual` (what the typed object
/// serialises back to) differ, as a JSON-pointer-like path.
pub fn first_difference(
    expected: &serde_json::Value,
    actual: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value as J;
    match (expected, actual) {
        (J::Object(e), J::Object(a)) => {
            for (key, e_value) in e {
                let here = format!("{path}/{key}");
                match a.get(key) {
                    None => {
                        return Some(format!(
                            "{here} is not a field k8s-openapi knows (misspelt or misplaced?)"
                        ));
                    }
                    Some(a_value) => {
                        if let Some(difference) = first_difference(e_value, a_value, &here) {
                            return Some(difference);
                        }
                    }
                }
            }
            a.keys()
                .find(|key| !e.contains_key(*key))
                .map(|key| format!("{path}/{key} appears only after the round trip"))
        }
        (J::Array(e), J::Array(a)) if e.len() == a.len() => {
            e.iter()
                .zip(a)
                .enumerate()
                .find_map(|(index, (e_item, a_item))| {
                    first_difference(e_item, a_item, &format!("{path}/{index}"))
                })
        }
        _ if expected == actual => None,
        _ => Some(format!(
            "{path}: the file has {expected}, the typed object {actual}"
        )),
    }
}

/// Deserialises into `T`, then checks that `T` serialises back to the same document: k8s-openapi
/// silently ignores fields it does not know, so a misspelt `readinesProbe` would otherwise pass.
pub fn typed<T: DeserializeOwned + Serialize>(value: Value, origin: &str) -> Box<T> {
    let original = serde_json::to_value(&value)
        .unwrap_or_else(|e| panic!("{origin}: not representable as JSON: {e}"));
    let object: T = serde_yaml::from_value(value).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let round_trip =
        serde_json::to_value(&object).unwrap_or_else(|e| panic!("{origin}: serialising back: {e}"));
    if let Some(difference) = first_difference(&original, &round_trip, "") {
        panic!("{origin}: {difference}");
    }
    Box::new(object)
}

/// Every document of every YAML file in `k8s/base/` except `kustomization.yaml`.
pub fn load_base() -> Vec<Document> {
    load_dir(&k8s_base())
}

/// Every document of every YAML file in `dir` except `kustomization.yaml`.
pub fn load_dir(dir: &Path) -> Vec<Document> {
    let mut documents = Vec::new();
    for file in yaml_files(dir)
        .iter()
        .filter(|name| *name != "kustomization.yaml")
    {
        let values = yaml_documents(&read(&dir.join(file)), file);
        assert!(!values.is_empty(), "{file}: no YAML document");
        for (index, value) in values.into_iter().enumerate() {
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{file}: document {index} has no `kind`"))
                .to_owned();
            let name = value
                .get("metadata")
                .and_then(|metadata| metadata.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            let origin = format!("{file} #{index} ({kind} {name})");
            let object = match kind.as_str() {
                "Deployment" => Object::Deployment(typed(value, &origin)),
                "Service" => Object::Service(typed(value, &origin)),
                "ConfigMap" => Object::ConfigMap(typed(value, &origin)),
                "Secret" => Object::Secret(typed(value, &origin)),
                "Namespace" => Object::Namespace(typed(value, &origin)),
                "ServiceAccount" => Object::ServiceAccount(typed(value, &origin)),
                "Role" => Object::Role(typed(value, &origin)),
                "RoleBinding" => Object::RoleBinding(typed(value, &origin)),
                "NetworkPolicy" => Object::NetworkPolicy(typed(value, &origin)),
                other => panic!(
                    "{origin}: kind `{other}` is not one this test knows; add it here if it is intended"
                ),
            };
            documents.push(Document { origin, object });
        }
    }
    documents
}

pub fn deployments(documents: &[Document]) -> Vec<(&str, &Deployment)> {
    documents
        .iter()
        .filter_map(|d| match &d.object {
            Object::Deployment(deployment) => Some((d.origin.as_str(), deployment.as_ref())),
            _ => None,
        })
        .collect()
}

pub fn network_policies(documents: &[Document]) -> Vec<(&str, &NetworkPolicy)> {
    documents
        .iter()
        .filter_map(|d| match &d.object {
            Object::NetworkPolicy(policy) => Some((d.origin.as_str(), policy.as_ref())),
            _ => None,
        })
        .collect()
}

/// Whether `selector` selects an object with `labels`, by the Kubernetes rules (an empty
/// selector selects everything; all `matchLabels` and all `matchExpressions` must hold).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_hold = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions_hold = selector
        .match_expressions
        .iter()
        .flatten()
        .all(|expression| {
            let value = labels.get(&expression.key);
            let listed = |value: &String| expression.values.iter().flatten().any(|v| v == value);
            match expression.operator.as_str() {
                "In" => value.is_some_and(listed),
                "NotIn" => !value.is_some_and(listed),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                other => panic!("unknown label selector operator {other}"),
            }
        });
    labels_hold && expressions_hold
}

/// The labels of a Deployment's pods.
pub fn pod_labels(origin: &str, deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|metadata| metadata.labels.clone())
        .unwrap_or_else(|| panic!("{origin}: pod template without labels"))
}

pub fn pod_spec<'a>(origin: &str, deployment: &'a Deployment) -> &'a PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .unwrap_or_else(|| panic!("{origin}: no pod template spec"))
}

pub fn name_of(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    metadata.name.as_deref().unwrap_or("")
}

pub fn assert_http_get(
    origin: &str,
    container: &Container,
    which: &str,
    probe: Option<&k8s_openapi::api::core::v1::Probe>,
    path: &str,
) {
    let probe = probe.unwrap_or_else(|| {
        panic!(
            "{origin}: container `{}` has no {which} probe",
            container.name
        )
    });
    let http_get = probe.http_get.as_ref().unwrap_or_else(|| {
        panic!(
            "{origin}: {which} probe of `{}` is not an HTTP GET",
            container.name
        )
    });
    assert_eq!(
        http_get.path.as_deref(),
        Some(path),
        "{origin}: {which} probe path of `{}`",
        container.name
    );
    assert!(
        matches!(&http_get.port, IntOrString::String(name) if name == "http")
            || http_get.port == IntOrString::Int(HTTP_PORT),
        "{origin}: {which} probe of `{}` must target port `http` / {HTTP_PORT}, not {:?}",
        container.name,
        http_get.port
    );
}
