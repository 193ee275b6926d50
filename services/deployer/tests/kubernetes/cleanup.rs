//! What the target removes: orphan instances after a deployer restart, with what only they
//! needed, and config versions no Deployment uses beyond the newest kept ones.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use slipway_deployer::target::kubernetes::KubernetesTarget;
use slipway_deployer::target::{InstanceSpec, Known, Target};
use tokio::sync::mpsc::unbounded_channel;
use uuid::Uuid;

use crate::fake::FakeApi;
use crate::{Harness, NS, listed, pod_ip, secret_value};

/// Old enough for anything to be collected (the target leaves younger objects alone).
const AN_HOUR: i64 = 3600;

fn of_service(spec: &InstanceSpec, service: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: Uuid::now_v7(),
        service_name: service.into(),
        ..spec.clone()
    }
}

/// The pods of one Deployment.
fn pods_of_deployment(api: &FakeApi, deployment: &str) -> Vec<Value> {
    api.list("pods", NS)
        .into_iter()
        .filter(|p| p["metadata"]["annotations"]["fake/deployment"] == deployment)
        .collect()
}

fn exists(api: &FakeApi, plural: &str, name: &str) -> bool {
    api.get(plural, NS, name).is_some()
}

fn config_exists(api: &FakeApi, name: &str) -> (bool, bool) {
    (
        exists(api, "configmaps", name),
        exists(api, "secrets", name),
    )
}

#[tokio::test]
async fn a_restarted_deployer_sweeps_orphans_and_what_only_they_needed() {
    let h = Harness::keeping(600, 1).await;
    // shop v1 runs a known instance and an orphan; shop v2 (a canary the crashed deployer
    // was rolling out) only orphans; cart is a service the database forgot altogether.
    let known = h.spec(1, 1, "hello");
    let orphan = h.spec(1, 1, "hello");
    // The orphan's pod is the older one: left to itself, the ReplicaSet would remove the
    // newest, the known instance's.
    let po = h.start(&orphan).await;
    let pk = h.start(&known).await;
    let canary = h.spec(2, 2, "bonjour");
    h.start(&canary).await;
    h.weights(&[(1, 90), (2, 10)]).await;
    // A start that died after its config and Service, before its Deployment (the API
    // server refuses a container without an image).
    let mut broken = h.spec(3, 3, "hola");
    broken.image = String::new();
    h.target.start(broken).await.expect_err("refused");
    assert!(exists(&h.api, "services", "shop-staging-v3"));
    assert!(!exists(&h.api, "deployments", "shop-staging-v3"));
    let cart = of_service(&h.spec(1, 1, "cart"), "cart");
    h.start(&cart).await;
    h.weights_of("cart", &[(1, 100)]).await;
    // Someone else's object with Slipway's other labels: not the target's.
    h.api.insert(
        "services",
        NS,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "shop-staging-v9", "labels": {
                "app.kubernetes.io/managed-by": "helm",
                "slipway.dev/environment": "staging", "slipway.dev/service": "shop",
                "slipway.dev/role": "release"}},
            "spec": {"ports": [{"port": 80}]},
        }),
    );
    h.target.detach().await;
    drop(h.target);
    h.api.age(AN_HOUR);

    let (tx, _events) = unbounded_channel();
    let again = KubernetesTarget::new(h.settings.clone(), tx).unwrap();
    let adopted = again
        .adopt(vec![Known {
            spec: known.clone(),
            placement: pk.clone(),
            restarts: 0,
        }])
        .await
        .unwrap();
    assert_eq!(adopted.running, vec![(known.instance_id, pk.clone())]);
    again.refresh().await.unwrap();
    let running: BTreeSet<Uuid> = again.running().into_iter().collect();
    let want: BTreeSet<Uuid> = [
        known.instance_id,
        orphan.instance_id,
        canary.instance_id,
        cart.instance_id,
    ]
    .into();
    assert_eq!(running, want);

    // What the engine does: what runs and the database does not know is an orphan.
    let orphans: Vec<Uuid> = running
        .into_iter()
        .filter(|id| *id != known.instance_id)
        .collect();
    let mut swept = again.sweep(orphans.clone()).await;
    swept.sort_unstable();
    let mut expected = vec![orphan.instance_id, canary.instance_id, cart.instance_id];
    expected.sort_unstable();
    assert_eq!(swept, expected);
    assert_eq!(again.running(), vec![known.instance_id]);

    // shop v1 keeps exactly the known instance, on its own pod.
    let d = h.api.get("deployments", NS, "shop-staging-v1").unwrap();
    assert_eq!(listed(&d), vec![known.instance_id.to_string()]);
    assert_eq!(d["spec"]["replicas"], 1);
    let pods = pods_of_deployment(&h.api, "shop-staging-v1");
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0]["status"]["podIP"], pod_ip(&pk).as_str());
    assert_ne!(pod_ip(&po), pod_ip(&pk));
    assert_eq!(again.supervised().len(), 1);
    // shop v2 and the broken v3 are gone; the environment still runs shop, so its stable
    // Service and route stay.
    assert!(!exists(&h.api, "deployments", "shop-staging-v2"));
    assert!(pods_of_deployment(&h.api, "shop-staging-v2").is_empty());
    assert!(!exists(&h.api, "services", "shop-staging-v2"));
    assert!(!exists(&h.api, "services", "shop-staging-v3"));
    assert!(exists(&h.api, "services", "shop-staging-v1"));
    assert!(exists(&h.api, "services", "shop-staging"));
    assert!(exists(&h.api, "httproutes", "shop-staging"));
    // Config: c1 in use; of the unused c2 and c3 the newest one is kept.
    assert_eq!(config_exists(&h.api, "shop-staging-c1"), (true, true));
    assert_eq!(config_exists(&h.api, "shop-staging-c3"), (true, true));
    assert_eq!(config_exists(&h.api, "shop-staging-c2"), (false, false));
    // cart is gone whole.
    for (plural, name) in [
        ("deployments", "cart-staging-v1"),
        ("services", "cart-staging-v1"),
        ("services", "cart-staging"),
        ("httproutes", "cart-staging"),
        ("configmaps", "cart-staging-c1"),
        ("secrets", "cart-staging-c1"),
    ] {
        assert!(!exists(&h.api, plural, name), "{plural}/{name} left");
    }
    assert!(pods_of_deployment(&h.api, "cart-staging-v1").is_empty());
    // Not the target's: untouched.
    assert!(exists(&h.api, "services", "shop-staging-v9"));
    // Secrets are deleted by name, never listed or read.
    let reads = h.api.state.reads.lock().unwrap().clone();
    assert!(
        !reads.iter().any(|(_, plural)| plural == "secrets"),
        "{reads:?}"
    );

    // A second sweep finds nothing more.
    assert!(again.sweep(orphans).await.is_empty());
    assert_eq!(
        listed(&h.api.get("deployments", NS, "shop-staging-v1").unwrap()),
        vec![known.instance_id.to_string()]
    );
}

#[tokio::test]
async fn what_was_just_applied_is_not_collected() {
    let h = Harness::keeping(600, 0).await;
    let first = h.spec(1, 1, "hello");
    h.start(&first).await;
    let second = h.spec(2, 2, "bonjour");
    h.start(&second).await;
    // Another replica's start between its Service and its Deployment looks like this.
    let mut broken = h.spec(3, 3, "hola");
    broken.image = String::new();
    h.target.start(broken).await.expect_err("refused");

    // Retiring v1 collects, but everything is younger than the grace.
    h.target
        .stop(first.instance_id, Duration::ZERO)
        .await
        .unwrap();
    assert!(!exists(&h.api, "deployments", "shop-staging-v1"));
    assert!(exists(&h.api, "services", "shop-staging-v3"));
    assert_eq!(config_exists(&h.api, "shop-staging-c1"), (true, true));
    assert_eq!(config_exists(&h.api, "shop-staging-c3"), (true, true));

    // Later, the next retirement collects them (none kept: `keep_config_versions` 0).
    h.api.age(AN_HOUR);
    let third = h.spec(4, 4, "ciao");
    h.start(&third).await;
    h.target
        .stop(second.instance_id, Duration::ZERO)
        .await
        .unwrap();
    assert!(!exists(&h.api, "services", "shop-staging-v3"));
    for version in 1..=3 {
        assert_eq!(
            config_exists(&h.api, &format!("shop-staging-c{version}")),
            (false, false),
            "c{version}"
        );
    }
    // In use, and young: kept.
    assert_eq!(config_exists(&h.api, "shop-staging-c4"), (true, true));
    assert!(exists(&h.api, "services", "shop-staging-v4"));
    assert!(exists(&h.api, "services", "shop-staging"));
}

#[tokio::test]
async fn retiring_a_release_prunes_old_config_versions_and_keeps_the_newest() {
    let h = Harness::keeping(600, 2).await;
    let mut current = h.spec(1, 1, "config 1");
    h.start(&current).await;
    for n in 2..=5 {
        let next = h.spec(n, n, &format!("config {n}"));
        h.start(&next).await;
        h.target
            .stop(current.instance_id, Duration::ZERO)
            .await
            .unwrap();
        current = next;
    }
    // Young ones are never pruned.
    for n in 1..=5 {
        assert_eq!(
            config_exists(&h.api, &format!("shop-staging-c{n}")),
            (true, true),
            "c{n}"
        );
    }
    h.api.age(AN_HOUR);
    let v6 = h.spec(6, 6, "config 6");
    h.start(&v6).await;
    h.target
        .stop(current.instance_id, Duration::ZERO)
        .await
        .unwrap();
    // c6 in use; of the unused c1..c5 the newest two stay.
    for (n, kept) in [
        (1, false),
        (2, false),
        (3, false),
        (4, true),
        (5, true),
        (6, true),
    ] {
        assert_eq!(
            config_exists(&h.api, &format!("shop-staging-c{n}")),
            (kept, kept),
            "c{n}"
        );
    }
    // A rollback to v4 finds its config as it was, and runs it.
    assert_eq!(
        secret_value(&h.object("secrets", "shop-staging-c4"), "GREETING"),
        "config 4"
    );
    let back = h.spec(4, 4, "config 4");
    h.start(&back).await;
    h.target.stop(v6.instance_id, Duration::ZERO).await.unwrap();
    let d = h.object("deployments", "shop-staging-v4");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["envFrom"][1]["secretRef"]["name"],
        "shop-staging-c4"
    );
    // c4 in use now; c6 and c5 are the two kept.
    for n in 4..=6 {
        assert_eq!(
            config_exists(&h.api, &format!("shop-staging-c{n}")),
            (true, true),
            "c{n}"
        );
    }
    assert!(exists(&h.api, "services", "shop-staging"));
}
