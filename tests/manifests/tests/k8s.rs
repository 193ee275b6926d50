//! Checks of the deployment manifests, without a cluster or a Docker engine:
//!
//! - `k8s/base/`: every document deserialises into its k8s-openapi type (unknown kinds and
//!   fields k8s-openapi does not know are errors), the Deployments carry the probes, limits and
//!   security settings the platform relies on, references between objects resolve, and
//!   `kustomization.yaml` lists exactly the YAML files of the folder.
//! - `docker-compose.yml`: see `compose.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::{BTreeMap, BTreeSet};

use slipway_manifests::*;

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
            Object::NetworkPolicy(_) => "NetworkPolicy",
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
        "NetworkPolicy",
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

    let binding = role_and_binding(&documents, account, "k8s/base");
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

/// The Role `account` grants what the deployer's Kubernetes target does (and Secrets are
/// never listed or read); answers its RoleBinding.
fn role_and_binding<'a>(documents: &'a [Document], account: &str, place: &str) -> &'a RoleBinding {
    let role = documents
        .iter()
        .find_map(|d| match &d.object {
            Object::Role(role) if name_of(&role.metadata) == account => Some(role),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{place}: no Role {account}"));
    let rules = role.rules.as_deref().unwrap_or_default();
    let allows = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|rule| {
            rule.api_groups.iter().flatten().any(|g| g == group)
                && rule
                    .resources
                    .iter()
                    .flatten()
                    .any(|r| r == resource || r == "*")
                && rule.verbs.iter().any(|v| v == verb || v == "*")
        })
    };
    let manage = ["get", "list", "watch", "create", "patch", "delete"];
    let read = ["get", "list", "watch"];
    for (group, resource, verbs) in [
        ("apps", "deployments", manage.as_slice()),
        ("apps", "replicasets", read.as_slice()),
        ("", "services", manage.as_slice()),
        ("", "configmaps", ["create", "patch"].as_slice()),
        ("", "secrets", ["create", "patch"].as_slice()),
        ("gateway.networking.k8s.io", "httproutes", manage.as_slice()),
        ("", "pods", ["get", "list", "watch", "delete"].as_slice()),
        ("", "pods/log", ["get"].as_slice()),
    ] {
        for verb in verbs {
            assert!(
                allows(group, resource, verb),
                "{place}: Role {account} does not allow {verb} on {group}/{resource}"
            );
        }
    }
    for verb in ["get", "list", "watch"] {
        assert!(
            !allows("", "secrets", verb),
            "{place}: Role {account} may {verb} Secrets: it only writes config versions"
        );
    }
    documents
        .iter()
        .find_map(|d| match &d.object {
            Object::RoleBinding(binding) if binding.role_ref.name == account => Some(binding),
            _ => None,
        })
        .map(|binding| {
            assert_eq!(binding.role_ref.kind, "Role", "{place}");
            binding.as_ref()
        })
        .unwrap_or_else(|| panic!("{place}: no RoleBinding to Role {account}"))
}

#[test]
fn application_namespaces_grant_the_deployer_the_same_rights() {
    let documents = load_dir(&k8s_target());
    let account = "slipway-deployer";
    let binding = role_and_binding(&documents, account, "k8s/target");
    let namespace = binding.metadata.namespace.as_deref();
    assert!(
        namespace.is_some(),
        "k8s/target: the RoleBinding names its namespace"
    );
    for d in &documents {
        let meta = match &d.object {
            Object::Role(r) => &r.metadata,
            Object::RoleBinding(b) => &b.metadata,
            _ => panic!(
                "{}: only a Role and its RoleBinding belong in k8s/target",
                d.origin
            ),
        };
        assert_eq!(meta.namespace.as_deref(), namespace, "{}", d.origin);
    }
    assert!(
        binding
            .subjects
            .iter()
            .flatten()
            .any(|s| s.kind == "ServiceAccount"
                && s.name == account
                && s.namespace.as_deref() == Some("slipway")),
        "k8s/target: the RoleBinding must bind the deployer's ServiceAccount in `slipway`"
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

/// The value source of environment variable `name` in a Deployment's only container.
fn secret_ref<'a>(
    origin: &str,
    deployment: &'a Deployment,
    name: &str,
) -> &'a k8s_openapi::api::core::v1::SecretKeySelector {
    pod_spec(origin, deployment).containers[0]
        .env
        .iter()
        .flatten()
        .find(|variable| variable.name == name)
        .and_then(|variable| variable.value_from.as_ref())
        .and_then(|from| from.secret_key_ref.as_ref())
        .unwrap_or_else(|| panic!("{origin}: {name} does not come from a Secret"))
}

#[test]
fn every_service_logs_in_to_the_database_as_its_own_role() {
    let documents = load_base();
    let config: BTreeMap<String, String> = documents
        .iter()
        .find_map(|d| match &d.object {
            Object::ConfigMap(config_map) => config_map.data.clone(),
            _ => None,
        })
        .unwrap_or_default();
    assert!(
        !config.contains_key("SLIPWAY_DATABASE__USERNAME"),
        "the shared ConfigMap must not name one database user for every service"
    );
    let usernames: BTreeMap<&str, &str> = documents
        .iter()
        .filter_map(|d| match &d.object {
            Object::Secret(secret) => secret
                .string_data
                .as_ref()
                .and_then(|data| data.get("username"))
                .map(|user| (name_of(&secret.metadata), user.as_str())),
            _ => None,
        })
        .collect();
    let mut seen = BTreeSet::new();
    for (origin, deployment) in deployments(&documents) {
        let service = name_of(&deployment.metadata);
        let user = secret_ref(origin, deployment, "SLIPWAY_DATABASE__USERNAME");
        let password = secret_ref(origin, deployment, "SLIPWAY_DATABASE__PASSWORD");
        assert_eq!(
            user.name, password.name,
            "{origin}: username and password from one Secret"
        );
        assert_eq!(
            user.name,
            format!("slipway-db-{service}"),
            "{origin}: its own Secret"
        );
        let username = usernames
            .get(user.name.as_str())
            .unwrap_or_else(|| panic!("{origin}: Secret {} has no username", user.name));
        assert_eq!(
            *username, service,
            "{origin}: the role is named like the service (deploy/postgres/roles.sql)"
        );
        assert!(seen.insert(*username), "{origin}: role {username} shared");
    }
    assert_eq!(seen.len(), SERVICES.len(), "a role for each service");
}
