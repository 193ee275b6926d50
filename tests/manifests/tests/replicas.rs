//! Every service runs as two replicas on Kubernetes, each naming itself by its pod: the
//! guarantees of README "Guarantees" (leases, consumer groups, instance ownership) are only
//! exercised when there is more than one, and a replica's id must change when its pod does.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::BTreeSet;

use slipway_manifests::*;

#[test]
fn every_service_runs_two_replicas_named_by_their_pod() {
    let documents = load_base();
    let mut seen = BTreeSet::new();
    for (origin, deployment) in deployments(&documents) {
        let name = name_of(&deployment.metadata);
        let replicas = deployment.spec.as_ref().and_then(|s| s.replicas);
        assert_eq!(replicas, Some(2), "{origin}: replicas of {name}");
        let container = &pod_spec(origin, deployment).containers[0];
        let field = container
            .env
            .iter()
            .flatten()
            .find(|v| v.name == "SLIPWAY_REPLICA_ID")
            .and_then(|v| v.value_from.as_ref())
            .and_then(|from| from.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(
            field,
            Some("metadata.name"),
            "{origin}: SLIPWAY_REPLICA_ID comes from the pod name (downward API)"
        );
        seen.insert(name.to_owned());
    }
    let expected: BTreeSet<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(seen, expected, "every service checked");
}
