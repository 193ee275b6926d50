//! `k8s/base/network-policies.yaml`: who may reach whom in the `slipway` namespace, evaluated
//! from the policies themselves by the Kubernetes selection rules.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use slipway_manifests::*;

/// A pod of this namespace that is not the platform's: an instance the deployer runs.
fn instance_labels() -> BTreeMap<String, String> {
    [("app.kubernetes.io/name".to_owned(), "hello".to_owned())].into()
}

fn service_labels(name: &str) -> BTreeMap<String, String> {
    [("app.kubernetes.io/name".to_owned(), name.to_owned())].into()
}

fn types(policy: &NetworkPolicy) -> Vec<&str> {
    let spec = policy.spec.as_ref().unwrap();
    spec.policy_types
        .iter()
        .flatten()
        .map(String::as_str)
        .collect()
}

/// A source that may connect: a pod of this namespace by name, or something outside.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Anyone,
    Pod(String),
    /// Another namespace (by its selector), or an address block.
    Outside(String),
}

/// Which of our pods (the five, and an instance called `hello`) a peer lets in.
fn sources(peer: &NetworkPolicyPeer) -> Vec<Source> {
    if let Some(block) = &peer.ip_block {
        return vec![Source::Outside(block.cidr.clone())];
    }
    if let Some(namespaces) = &peer.namespace_selector {
        return vec![Source::Outside(format!("{namespaces:?}"))];
    }
    let pods = peer.pod_selector.clone().unwrap_or_default();
    SERVICES
        .iter()
        .map(|name| (name.to_string(), service_labels(name)))
        .chain([("hello".to_owned(), instance_labels())])
        .filter(|(_, labels)| selects(&pods, labels))
        .map(|(name, _)| Source::Pod(name))
        .collect()
}

/// Whether a rule's ports include the services' http port (by name or number); no ports
/// means all ports.
fn opens_http(ports: Option<&Vec<NetworkPolicyPort>>) -> bool {
    ports.is_none_or(|ports| {
        ports.iter().any(|port| {
            matches!(&port.port, None | Some(IntOrString::Int(HTTP_PORT)))
                || matches!(&port.port, Some(IntOrString::String(name)) if name == "http")
        })
    })
}

/// Everyone who may open a connection to the http port of a pod with `labels`.
fn allowed_in(documents: &[Document], labels: &BTreeMap<String, String>) -> BTreeSet<Source> {
    let mut allowed = BTreeSet::new();
    for (_, policy) in network_policies(documents) {
        let spec = policy.spec.as_ref().unwrap();
        if !selects(&spec.pod_selector.clone().unwrap_or_default(), labels) {
            continue;
        }
        for rule in spec.ingress.iter().flatten() {
            if !opens_http(rule.ports.as_ref()) {
                continue;
            }
            match rule.from.as_deref() {
                None | Some([]) => {
                    allowed.insert(Source::Anyone);
                }
                Some(peers) => allowed.extend(peers.iter().flat_map(sources)),
            }
        }
    }
    allowed
}

#[test]
fn everything_is_denied_unless_a_policy_allows_it() {
    let documents = load_base();
    let deny = network_policies(&documents)
        .into_iter()
        .find(|(_, policy)| name_of(&policy.metadata) == "default-deny")
        .map(|(_, policy)| policy)
        .expect("no NetworkPolicy default-deny");
    let spec = deny.spec.as_ref().unwrap();
    assert_eq!(
        spec.pod_selector.clone().unwrap_or_default(),
        LabelSelector::default(),
        "default-deny must select every pod of the namespace"
    );
    assert_eq!(types(deny), ["Ingress", "Egress"], "default-deny types");
    assert!(
        spec.ingress.is_none() && spec.egress.is_none(),
        "default-deny allows nothing"
    );
}

#[test]
fn every_deployment_is_covered_by_a_policy_that_lets_its_callers_in() {
    let documents = load_base();
    let deployments = deployments(&documents);
    assert_eq!(deployments.len(), SERVICES.len());
    for (origin, deployment) in deployments {
        let labels = pod_labels(origin, deployment);
        let covered = network_policies(&documents).into_iter().any(|(_, policy)| {
            let spec = policy.spec.as_ref().unwrap();
            name_of(&policy.metadata) != "default-deny"
                && spec.ingress.as_ref().is_some_and(|rules| !rules.is_empty())
                && selects(&spec.pod_selector.clone().unwrap_or_default(), &labels)
        });
        assert!(
            covered,
            "{origin}: no NetworkPolicy lets anyone reach its pods"
        );
    }
}

#[test]
fn internal_ports_answer_only_their_callers() {
    let documents = load_base();
    let pod = |name: &str| Source::Pod(name.to_owned());
    let prometheus = network_policies(&documents)
        .into_iter()
        .find(|(_, policy)| name_of(&policy.metadata) == "metrics")
        .and_then(|(_, policy)| policy.spec.as_ref()?.ingress.clone())
        .and_then(|rules| rules.first()?.from.clone())
        .and_then(|peers| sources(peers.first()?).first().cloned())
        .expect("the metrics policy lets Prometheus in");
    let expected: BTreeMap<&str, BTreeSet<Source>> = [
        ("gateway", [Source::Anyone, prometheus.clone()].into()),
        ("builder", [pod("gateway"), prometheus.clone()].into()),
        ("deployer", [pod("gateway"), prometheus.clone()].into()),
        ("monitor", [pod("gateway"), prometheus.clone()].into()),
        (
            "registry",
            [pod("gateway"), pod("deployer"), prometheus.clone()].into(),
        ),
    ]
    .into();
    for (service, expected) in expected {
        assert_eq!(
            allowed_in(&documents, &service_labels(service)),
            expected,
            "who may reach the {service}'s http port"
        );
    }
    assert_eq!(
        allowed_in(&documents, &instance_labels()),
        BTreeSet::new(),
        "instances get no ingress from the platform's policies"
    );
}

#[test]
fn only_the_services_reach_postgres_and_kafka() {
    let documents = load_base();
    let dependency_ports = [5432, 9092, 9093];
    let mut opened = BTreeSet::new();
    for (origin, policy) in network_policies(&documents) {
        let spec = policy.spec.as_ref().unwrap();
        let selector = spec.pod_selector.clone().unwrap_or_default();
        for rule in spec.egress.iter().flatten() {
            let ports: Vec<i32> = rule
                .ports
                .iter()
                .flatten()
                .filter_map(|port| match &port.port {
                    Some(IntOrString::Int(number)) => Some(*number),
                    _ => None,
                })
                .collect();
            // A rule without ports opens every port, database and broker included.
            let reaches = rule.ports.is_none()
                && rule.to.as_ref().is_none_or(|to| {
                    to.iter()
                        .any(|peer| peer.namespace_selector.is_some() || peer.ip_block.is_some())
                })
                || ports.iter().any(|port| dependency_ports.contains(port));
            if !reaches {
                continue;
            }
            assert!(
                !selects(&selector, &instance_labels()),
                "{origin}: lets instances reach PostgreSQL or Kafka"
            );
            for service in SERVICES {
                if selects(&selector, &service_labels(service)) {
                    opened.insert(service);
                }
            }
        }
    }
    assert_eq!(
        opened,
        BTreeSet::from(SERVICES),
        "every service reaches PostgreSQL and Kafka"
    );
}
