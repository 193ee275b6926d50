//! Checks of the deployment manifests, without a cluster or a Docker engine:
//!
//! - `k8s/base/`: every document deserialises into its k8s-openapi type (unknown kinds and
//!   fields k8s-openapi does not know are errors), the Deployments carry the probes, limits and
//!   security settings the platform relies on, references between objects resolve, and
//!   `kustomization.yaml` lists exactly the YAML files of the folder.
//! - `docker-compose.yml`: the expected services with health checks, and Debian's
//!   `docker-compose` 1.29 accepts the file (`docker-compose config -q`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// The five Slipway services; each is the binary `slipway-<name>`.
const SERVICES: [&str; 5] = ["gateway", "builder", "registry", "deployer", "monitor"];
/// The port every service listens on inside its container.
const HTTP_PORT: i32 = 8080;
/// The non-root user of the runtime image (see the Dockerfile).
const RUNTIME_UID: i64 = 10001;

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize()
        .unwrap_or_else(|e| panic!("repository root {}: {e}", root.display()))
}

fn k8s_base() -> PathBuf {
    repo_root().join("k8s/base")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------------

/// One document of `k8s/base/`, as its k8s-openapi type.
#[derive(Debug)]
enum Object {
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    Namespace(Box<Namespace>),
    ServiceAccount(Box<ServiceAccount>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
}

/// Where a document came from, for messages.
#[derive(Debug)]
struct Document {
    origin: String,
    object: Object,
}

/// All YAML files of `k8s/base/` (`.yaml` and `.yml`), by file name, sorted.
fn base_yaml_files() -> BTreeSet<String> {
    let dir = k8s_base();
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()));
    entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("listing {}: {e}", dir.display())))
        .filter(|entry| entry.path().is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect()
}

/// Splits a multi-document YAML text; empty documents (a trailing `---`) are dropped.
fn yaml_documents(text: &str, file: &str) -> Vec<Value> {
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
fn first_difference(
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
fn typed<T: DeserializeOwned + Serialize>(value: Value, origin: &str) -> Box<T> {
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
fn load_base() -> Vec<Document> {
    let dir = k8s_base();
    let mut documents = Vec::new();
    for file in base_yaml_files()
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
                other => panic!(
                    "{origin}: kind `{other}` is not one this test knows; add it here if it is intended"
                ),
            };
            documents.push(Document { origin, object });
        }
    }
    documents
}

fn deployments(documents: &[Document]) -> Vec<(&str, &Deployment)> {
    documents
        .iter()
        .filter_map(|d| match &d.object {
            Object::Deployment(deployment) => Some((d.origin.as_str(), deployment.as_ref())),
            _ => None,
        })
        .collect()
}

fn pod_spec<'a>(origin: &str, deployment: &'a Deployment) -> &'a PodSpec {
    deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .unwrap_or_else(|| panic!("{origin}: no pod template spec"))
}

fn name_of(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    metadata.name.as_deref().unwrap_or("")
}

fn assert_http_get(
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

#[test]
fn every_document_is_a_known_kubernetes_object() {
    let documents = load_base();
    let kinds: BTreeSet<&str> = documents
        .iter()
        .map(|d| match d.object {
            Object::Deployment(_) => "Deployment",
            Object::Service(_) => "Service",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
        })
        .collect();
    let expected: BTreeSet<&str> = [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
    ]
    .into();
    assert_eq!(kinds, expected, "kinds present in k8s/base");
}

#[test]
fn deployments_have_probes_limits_and_run_as_non_root() {
    let documents = load_base();
    let deployments = deployments(&documents);
    assert!(!deployments.is_empty(), "no Deployment in k8s/base");
    for (origin, deployment) in deployments {
        let pod = pod_spec(origin, deployment);
        let pod_security = pod.security_context.as_ref();
        assert!(!pod.containers.is_empty(), "{origin}: no container");
        for container in &pod.containers {
            let name = &container.name;
            assert_http_get(
                origin,
                container,
                "liveness",
                container.liveness_probe.as_ref(),
                "/healthz",
            );
            assert_http_get(
                origin,
                container,
                "readiness",
                container.readiness_probe.as_ref(),
                "/readyz",
            );

            let limits = container
                .resources
                .as_ref()
                .and_then(|resources| resources.limits.as_ref())
                .unwrap_or_else(|| panic!("{origin}: container `{name}` has no resource limits"));
            for resource in ["cpu", "memory"] {
                assert!(
                    limits.contains_key(resource),
                    "{origin}: container `{name}` has no {resource} limit"
                );
            }
            let requests = container
                .resources
                .as_ref()
                .and_then(|resources| resources.requests.as_ref());
            assert!(
                requests.is_some_and(|r| !r.is_empty()),
                "{origin}: container `{name}` has no resource requests"
            );

            // Container settings win over the pod's; either may carry them.
            let security = container.security_context.as_ref();
            let run_as_non_root = security
                .and_then(|s| s.run_as_non_root)
                .or_else(|| pod_security.and_then(|s| s.run_as_non_root));
            assert_eq!(
                run_as_non_root,
                Some(true),
                "{origin}: container `{name}` must set runAsNonRoot: true"
            );
            let run_as_user = security
                .and_then(|s| s.run_as_user)
                .or_else(|| pod_security.and_then(|s| s.run_as_user));
            assert_eq!(
                run_as_user,
                Some(RUNTIME_UID),
                "{origin}: container `{name}` runAsUser"
            );
            let seccomp = security
                .and_then(|s| s.seccomp_profile.as_ref())
                .or_else(|| pod_security.and_then(|s| s.seccomp_profile.as_ref()));
            assert_eq!(
                seccomp.map(|profile| profile.type_.as_str()),
                Some("RuntimeDefault"),
                "{origin}: container `{name}` seccomp profile"
            );
            let security = security
                .unwrap_or_else(|| panic!("{origin}: container `{name}` has no securityContext"));
            assert_eq!(
                security.read_only_root_filesystem,
                Some(true),
                "{origin}: `{name}` readOnlyRootFilesystem"
            );
            assert_eq!(
                security.allow_privilege_escalation,
                Some(false),
                "{origin}: `{name}` allowPrivilegeEscalation"
            );
            let dropped = security.capabilities.as_ref().and_then(|c| c.drop.as_ref());
            assert!(
                dropped.is_some_and(|drop| drop.iter().any(|c| c == "ALL")),
                "{origin}: container `{name}` must drop ALL capabilities"
            );
        }
    }
}

#[test]
fn each_service_has_a_deployment_and_a_matching_service() {
    let documents = load_base();
    let deployments: BTreeMap<&str, (&str, &Deployment)> = deployments(&documents)
        .into_iter()
        .map(|(origin, deployment)| (name_of(&deployment.metadata), (origin, deployment)))
        .collect();
    let services: BTreeMap<&str, &Service> = documents
        .iter()
        .filter_map(|d| match &d.object {
            Object::Service(service) => Some((name_of(&service.metadata), service.as_ref())),
            _ => None,
        })
        .collect();
    let expected: BTreeSet<&str> = SERVICES.into();
    assert_eq!(
        deployments.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "Deployments in k8s/base"
    );
    assert_eq!(
        services.keys().copied().collect::<BTreeSet<_>>(),
        expected,
        "Services in k8s/base"
    );

    for name in SERVICES {
        let (origin, deployment) = deployments[name];
        let spec = deployment
            .spec
            .as_ref()
            .unwrap_or_else(|| panic!("{origin}: no spec"));
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        assert!(!selector.is_empty(), "{origin}: empty selector");
        assert!(
            selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{origin}: the selector {selector:?} does not match the pod labels {pod_labels:?}"
        );

        let pod = pod_spec(origin, deployment);
        let [container] = pod.containers.as_slice() else {
            panic!("{origin}: expected exactly one container");
        };
        let binary = format!("slipway-{name}");
        assert_eq!(
            container.command.as_deref(),
            Some([binary].as_slice()),
            "{origin}: command"
        );
        let http = container
            .ports
            .iter()
            .flatten()
            .find(|port| port.name.as_deref() == Some("http"))
            .unwrap_or_else(|| panic!("{origin}: no container port named `http`"));
        assert_eq!(http.container_port, HTTP_PORT, "{origin}: the `http` port");

        let service = services[name];
        let service_spec = service
            .spec
            .as_ref()
            .unwrap_or_else(|| panic!("Service {name}: no spec"));
        let service_selector = service_spec.selector.clone().unwrap_or_default();
        assert!(
            !service_selector.is_empty(),
            "Service {name}: empty selector"
        );
        assert!(
            service_selector
                .iter()
                .all(|(k, v)| pod_labels.get(k) == Some(v)),
            "Service {name}: selector {service_selector:?} does not select the pods of Deployment {name}"
        );
        let ports = service_spec.ports.as_deref().unwrap_or_default();
        assert!(
            ports.iter().any(|port| port.port == HTTP_PORT
                && port.target_port == Some(IntOrString::String("http".to_owned()))),
            "Service {name}: no port {HTTP_PORT} targeting `http`"
        );
    }
}

#[test]
fn deployer_has_its_service_account_and_role() {
    let documents = load_base();
    let account = "slipway-deployer";
    assert!(
        documents.iter().any(
            |d| matches!(&d.object, Object::ServiceAccount(sa) if name_of(&sa.metadata) == account)
        ),
        "no ServiceAccount {account}"
    );

    // Only the deployer talks to the Kubernetes API.
    for (origin, deployment) in deployments(&documents) {
        let pod = pod_spec(origin, deployment);
        if name_of(&deployment.metadata) == "deployer" {
            assert_eq!(
                pod.service_account_name.as_deref(),
                Some(account),
                "{origin}: serviceAccountName"
            );
        } else {
            assert_eq!(
                pod.service_account_name, None,
                "{origin}: serviceAccountName"
            );
            assert_eq!(
                pod.automount_service_account_token,
                Some(false),
                "{origin}: automountServiceAccountToken"
            );
        }
    }

    let role = documents
        .iter()
        .find_map(|d| match &d.object {
            Object::Role(role) if name_of(&role.metadata) == account => Some(role),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Role {account}"));
    let rules = role.rules.as_deref().unwrap_or_default();
    let allows = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|rule| {
            rule.api_groups.iter().flatten().any(|g| g == group)
                && rule.resources.iter().flatten().any(|r| r == resource)
                && rule.verbs.iter().any(|v| v == verb || v == "*")
        })
    };
    let manage = ["get", "list", "watch", "create", "patch", "delete"];
    for (group, resource, verbs) in [
        ("apps", "deployments", manage.as_slice()),
        ("", "services", manage.as_slice()),
        ("", "configmaps", manage.as_slice()),
        ("gateway.networking.k8s.io", "httproutes", manage.as_slice()),
        ("", "pods", ["get", "list", "watch"].as_slice()),
        ("", "pods/log", ["get"].as_slice()),
    ] {
        for verb in verbs {
            assert!(
                allows(group, resource, verb),
                "Role {account} does not allow {verb} on {group}/{resource}"
            );
        }
    }

    let binding = documents
        .iter()
        .find_map(|d| match &d.object {
            Object::RoleBinding(binding) if binding.role_ref.name == account => Some(binding),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no RoleBinding to Role {account}"));
    assert_eq!(binding.role_ref.kind, "Role");
    assert!(
        binding
            .subjects
            .iter()
            .flatten()
            .any(|subject| subject.kind == "ServiceAccount" && subject.name == account),
        "RoleBinding {} does not bind ServiceAccount {account}",
        name_of(&binding.metadata)
    );
}

#[test]
fn config_map_and_secret_references_resolve() {
    let documents = load_base();
    let config_maps: BTreeSet<&str> = documents
        .iter()
        .filter_map(|d| match &d.object {
            Object::ConfigMap(config_map) => Some(name_of(&config_map.metadata)),
            _ => None,
        })
        .collect();
    let secret_keys: BTreeMap<&str, BTreeSet<&str>> = documents
        .iter()
        .filter_map(|d| match &d.object {
            Object::Secret(secret) => {
                let keys = secret
                    .string_data
                    .iter()
                    .flat_map(BTreeMap::keys)
                    .chain(secret.data.iter().flat_map(BTreeMap::keys))
                    .map(String::as_str)
                    .collect();
                Some((name_of(&secret.metadata), keys))
            }
            _ => None,
        })
        .collect();

    for (origin, deployment) in deployments(&documents) {
        for container in &pod_spec(origin, deployment).containers {
            for source in container.env_from.iter().flatten() {
                if let Some(reference) = &source.config_map_ref {
                    assert!(
                        config_maps.contains(reference.name.as_str()),
                        "{origin}: no ConfigMap {}",
                        reference.name
                    );
                }
                if let Some(reference) = &source.secret_ref {
                    assert!(
                        secret_keys.contains_key(reference.name.as_str()),
                        "{origin}: no Secret {}",
                        reference.name
                    );
                }
            }
            for variable in container.env.iter().flatten() {
                let Some(reference) = variable
                    .value_from
                    .as_ref()
                    .and_then(|from| from.secret_key_ref.as_ref())
                else {
                    continue;
                };
                let keys = secret_keys.get(reference.name.as_str()).unwrap_or_else(|| {
                    panic!(
                        "{origin}: {} refers to missing Secret {}",
                        variable.name, reference.name
                    )
                });
                assert!(
                    keys.contains(reference.key.as_str()),
                    "{origin}: {} refers to missing key {} of Secret {}",
                    variable.name,
                    reference.key,
                    reference.name
                );
            }
        }
    }
}

#[test]
fn kustomization_lists_exactly_the_yaml_files() {
    let dir = k8s_base();
    let kustomization: Value = serde_yaml::from_str(&read(&dir.join("kustomization.yaml")))
        .unwrap_or_else(|e| panic!("kustomization.yaml: {e}"));
    assert_eq!(
        kustomization["kind"].as_str(),
        Some("Kustomization"),
        "kustomization.yaml: kind"
    );
    let resources: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap_or_else(|| panic!("kustomization.yaml: `resources` is not a list"))
        .iter()
        .map(|resource| {
            resource.as_str().unwrap_or_else(|| {
                panic!("kustomization.yaml: resource {resource:?} is not a string")
            })
        })
        .collect();

    let listed: BTreeSet<&str> = resources.iter().copied().collect();
    assert_eq!(
        listed.len(),
        resources.len(),
        "kustomization.yaml lists a resource twice: {resources:?}"
    );
    for resource in &resources {
        assert!(
            dir.join(resource).is_file(),
            "kustomization.yaml lists {resource}, which does not exist in k8s/base"
        );
    }
    for file in base_yaml_files()
        .iter()
        .filter(|name| *name != "kustomization.yaml")
    {
        assert!(
            listed.contains(file.as_str()),
            "k8s/base/{file} is not listed in kustomization.yaml `resources`"
        );
    }
}

#[test]
fn namespace_is_the_kustomization_namespace_and_restricted() {
    let kustomization: Value = serde_yaml::from_str(&read(&k8s_base().join("kustomization.yaml")))
        .unwrap_or_else(|e| panic!("kustomization.yaml: {e}"));
    let namespace = kustomization["namespace"]
        .as_str()
        .unwrap_or_else(|| panic!("kustomization.yaml: no `namespace`"));
    let documents = load_base();
    let namespaces: Vec<&Namespace> = documents
        .iter()
        .filter_map(|d| match &d.object {
            Object::Namespace(namespace) => Some(namespace.as_ref()),
            _ => None,
        })
        .collect();
    let [object] = namespaces.as_slice() else {
        panic!(
            "expected exactly one Namespace in k8s/base, found {}",
            namespaces.len()
        );
    };
    assert_eq!(
        name_of(&object.metadata),
        namespace,
        "the Namespace object and kustomization.yaml `namespace`"
    );
    // Every pod of the base is built to pass the Pod Security "restricted" level.
    let labels = object.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted"),
        "Namespace {namespace}: Pod Security enforce label"
    );
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml
// ---------------------------------------------------------------------------------------------

fn compose_file() -> PathBuf {
    repo_root().join("docker-compose.yml")
}

#[test]
fn docker_compose_defines_the_platform() {
    let mut compose: Value = serde_yaml::from_str(&read(&compose_file()))
        .unwrap_or_else(|e| panic!("docker-compose.yml: {e}"));
    // The file shares settings through YAML merge keys (`<<: *anchor`); resolve them as compose does.
    compose
        .apply_merge()
        .unwrap_or_else(|e| panic!("docker-compose.yml: merge keys: {e}"));
    let services = compose["services"]
        .as_mapping()
        .unwrap_or_else(|| panic!("docker-compose.yml: no `services` mapping"));
    for name in SERVICES.iter().chain(&[
        "kafka",
        "postgres",
        "prometheus",
        "jaeger",
        "image-registry",
    ]) {
        assert!(
            services.contains_key(*name),
            "docker-compose.yml: no service `{name}`"
        );
    }
    for name in ["kafka", "postgres"] {
        assert!(
            services[name]["healthcheck"]["test"].is_sequence(),
            "docker-compose.yml: `{name}` has no healthcheck"
        );
    }

    for name in SERVICES {
        let service = &services[name];
        assert_eq!(
            service["command"].as_sequence().map(Vec::as_slice),
            Some([Value::from(format!("slipway-{name}"))].as_slice()),
            "docker-compose.yml: command of `{name}`"
        );
        assert!(
            service["build"].is_mapping(),
            "docker-compose.yml: `{name}` is not built from the Dockerfile"
        );
        let test = service["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("docker-compose.yml: `{name}` has no healthcheck"));
        assert!(
            !test.is_empty(),
            "docker-compose.yml: empty healthcheck test for `{name}`"
        );
        let environment = &service["environment"];
        for variable in [
            "SLIPWAY_HTTP__PORT",
            "SLIPWAY_DATABASE__HOST",
            "SLIPWAY_DATABASE__PASSWORD",
            "SLIPWAY_KAFKA__BOOTSTRAP_SERVERS",
            "SLIPWAY_TELEMETRY__OTLP_ENDPOINT",
        ] {
            assert!(
                !environment[variable].is_null(),
                "docker-compose.yml: `{name}` does not set {variable}"
            );
        }
        for dependency in ["kafka", "postgres"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"].as_str(),
                Some("service_healthy"),
                "docker-compose.yml: `{name}` must wait for a healthy {dependency}"
            );
        }
    }
    let gateway = &services["gateway"];
    for variable in [
        "SLIPWAY_UPSTREAMS__REGISTRY",
        "SLIPWAY_AUTH__BOOTSTRAP_TOKEN",
    ] {
        assert!(
            !gateway["environment"][variable].is_null(),
            "docker-compose.yml: the gateway does not set {variable}"
        );
    }
    assert_eq!(
        gateway["depends_on"]["registry"]["condition"].as_str(),
        Some("service_healthy")
    );

    // Prometheus scrapes every service on its container port.
    let prometheus_config: Value =
        serde_yaml::from_str(&read(&repo_root().join("deploy/prometheus/prometheus.yml")))
            .unwrap_or_else(|e| panic!("deploy/prometheus/prometheus.yml: {e}"));
    let targets: BTreeSet<&str> = prometheus_config["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|job| job["static_configs"].as_sequence().into_iter().flatten())
        .flat_map(|group| group["targets"].as_sequence().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    for name in SERVICES {
        let target = format!("{name}:{HTTP_PORT}");
        assert!(
            targets.contains(target.as_str()),
            "prometheus.yml does not scrape {target}"
        );
    }
}

#[test]
fn docker_compose_config_accepts_the_file() {
    let file = compose_file();
    let output = match Command::new("docker-compose")
        .arg("-f")
        .arg(&file)
        .args(["config", "-q"])
        .current_dir(repo_root())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`docker-compose` is not on PATH: this test needs it to validate docker-compose.yml \
             (scripts/test installs it: `apt-get install -y docker-compose`); it does not skip"
        ),
        Err(e) => panic!("running docker-compose: {e}"),
    };
    assert!(
        output.status.success(),
        "`docker-compose -f {} config -q` failed ({}):\n{}{}",
        file.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
