//! The Kubernetes target's real kube client code against an in-memory API server ([`fake`]):
//! apply, a rollout past its progress deadline, canary weights, the blue-green switch, a
//! rollback restoring its config, scaling, pod loss and adoption by a restarted deployer. No
//! test here talks to a real cluster (none can be installed where these run).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod fake;
mod validate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use slipway_deployer::target::kubernetes::{ClusterSettings, KubernetesSettings, KubernetesTarget};
use slipway_deployer::target::{InstanceSpec, Known, Placement, Target, TargetEvent, Traffic};
use slipway_events::deploy::ReleaseWeight;
use slipway_ids::ServiceId;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use uuid::Uuid;

use fake::FakeApi;

const NS: &str = "apps";
const ENV: &str = "staging";

struct Harness {
    api: FakeApi,
    target: KubernetesTarget,
    events: UnboundedReceiver<TargetEvent>,
    settings: KubernetesSettings,
    service_id: ServiceId,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A kubeconfig naming the fake server, read by the target like any other.
fn kubeconfig(dir: &std::path::Path, url: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: elsewhere\n\
             clusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             - name: other\n  cluster:\n    server: http://127.0.0.1:1\n\
             users:\n- name: tester\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n\
             - name: elsewhere\n  context:\n    cluster: other\n    user: tester\n"
        ),
    )
    .unwrap();
    path
}

impl Harness {
    async fn new(progress_deadline_seconds: u64) -> Self {
        let api = FakeApi::start();
        let dir = std::env::temp_dir().join(format!("slipway-kube-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let settings = KubernetesSettings {
            environments: BTreeMap::from([(
                ENV.to_owned(),
                ClusterSettings {
                    namespace: NS.to_owned(),
                    kubeconfig: Some(kubeconfig(&dir, &api.url)),
                    // Not the file's current context: the setting is what picks the cluster.
                    context: Some("fake".to_owned()),
                    gateway: "edge".to_owned(),
                    gateway_namespace: Some("gateways".to_owned()),
                    hostnames: vec!["shop.example.test".to_owned()],
                },
            )]),
            progress_deadline_seconds,
            log_batch_ms: 20,
        };
        let (tx, events) = unbounded_channel();
        let target = KubernetesTarget::new(settings.clone(), tx).unwrap();
        Self {
            api,
            target,
            events,
            settings,
            service_id: ServiceId::new(),
            _dir: TempDir(dir),
        }
    }

    fn spec(&self, release: i32, config_version: i32, greeting: &str) -> InstanceSpec {
        InstanceSpec {
            instance_id: Uuid::now_v7(),
            service_id: self.service_id,
            service_name: "shop".into(),
            environment: ENV.into(),
            release,
            config_version,
            image: format!("registry.test/shop@sha256:{release:064x}"),
            run: None,
            env: BTreeMap::from([("GREETING".to_owned(), greeting.to_owned())]),
        }
    }

    async fn start(&self, spec: &InstanceSpec) -> Placement {
        tokio::time::timeout(Duration::from_secs(20), self.target.start(spec.clone()))
            .await
            .expect("start answers")
            .expect("start succeeds")
    }

    async fn weights(&self, weights: &[(i32, u32)]) {
        self.target
            .set_weights(Traffic {
                service_id: self.service_id,
                service_name: "shop".into(),
                environment: ENV.into(),
                weights: weights
                    .iter()
                    .map(|&(release, weight)| ReleaseWeight { release, weight })
                    .collect(),
            })
            .await
            .unwrap();
    }

    /// The next event `pick` accepts (others are skipped), within 15 s.
    async fn event<T>(&mut self, what: &str, mut pick: impl FnMut(&TargetEvent) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within 15 s"))
                .expect("the target keeps its sender");
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    }

    fn object(&self, plural: &str, name: &str) -> Value {
        self.api
            .get(plural, NS, name)
            .unwrap_or_else(|| panic!("no {plural}/{name} in the fake API"))
    }

    fn pods_of(&self, release: i32) -> Vec<Value> {
        self.api
            .list("pods", NS)
            .into_iter()
            .filter(|p| {
                p["metadata"]["labels"]["slipway.dev/release"] == release.to_string().as_str()
            })
            .collect()
    }
}

fn listed(deployment: &Value) -> Vec<String> {
    let raw = deployment["metadata"]["annotations"]["slipway.dev/instances"]
        .as_str()
        .unwrap();
    serde_json::from_str(raw).unwrap()
}

fn secret_value(secret: &Value, key: &str) -> String {
    let b64 = secret["data"][key].as_str().unwrap();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

fn pod_ip(placement: &Placement) -> String {
    placement.address.rsplit_once(':').unwrap().0.to_owned()
}

#[tokio::test]
async fn start_applies_the_release_and_binds_a_ready_pod_per_instance() {
    let mut h = Harness::new(600).await;
    let a = h.spec(1, 1, "hello");
    let b = InstanceSpec {
        instance_id: Uuid::now_v7(),
        ..a.clone()
    };
    let (pa, pb) = tokio::join!(h.start(&a), h.start(&b));
    assert_ne!(pa.address, pb.address, "two instances, two pods");
    assert_eq!(pa.port, 8080);
    assert!(pa.process.is_none());

    let d = h.object("deployments", "shop-staging-v1");
    assert_eq!(d["spec"]["replicas"], 2);
    let mut ids = listed(&d);
    ids.sort();
    let mut want = vec![a.instance_id.to_string(), b.instance_id.to_string()];
    want.sort();
    assert_eq!(ids, want);
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], a.image.as_str());
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"],
        "shop-staging-c1"
    );
    assert_eq!(
        container["envFrom"][1]["secretRef"]["name"],
        "shop-staging-c1"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0],
        "ALL"
    );

    // The config is a Secret only; the ConfigMap holds Slipway's markers.
    let secret = h.object("secrets", "shop-staging-c1");
    assert_eq!(secret_value(&secret, "GREETING"), "hello");
    assert_eq!(secret["immutable"], true);
    let map = h.object("configmaps", "shop-staging-c1");
    assert_eq!(map["data"]["SLIPWAY_CONFIG_VERSION"], "1");
    assert!(
        !map.to_string().contains("hello"),
        "a config value in a ConfigMap: {map}"
    );

    assert_eq!(
        h.object("services", "shop-staging-v1")["spec"]["selector"]["slipway.dev/release"],
        "1"
    );
    assert_eq!(
        h.object("services", "shop-staging")["spec"]["selector"]["slipway.dev/release"],
        "1"
    );

    // Every write is a server-side apply by `slipway`.
    let writes = h.api.state.writes.lock().unwrap().clone();
    assert!(!writes.is_empty());
    for (method, plural, name, manager) in &writes {
        assert_eq!(
            (method.as_str(), manager.as_deref()),
            ("PATCH", Some("slipway")),
            "{plural}/{name}"
        );
    }

    // Health is the pods' readiness; output is the pod log.
    let mut healthy = std::collections::HashSet::new();
    while healthy.len() < 2 {
        let id = h
            .event("health", |e| match e {
                TargetEvent::Health {
                    instance_id,
                    healthy: true,
                    ..
                } => Some(*instance_id),
                _ => None,
            })
            .await;
        healthy.insert(id);
    }
    let line = h
        .event("logs", |e| match e {
            TargetEvent::Logs {
                lines,
                first_seq: 0,
                ..
            } => Some(lines[0].line.clone()),
            _ => None,
        })
        .await;
    assert_eq!(line, "listening on :8080");
    assert_eq!(h.pods_of(1).len(), 2);
}

#[tokio::test]
async fn an_object_the_api_server_refuses_fails_the_start_without_its_values() {
    let h = Harness::new(600).await;
    let mut spec = h.spec(1, 1, "hello");
    // A space is not allowed in a Secret key: the fake answers 422 like the API server.
    spec.env.insert("BAD KEY".into(), "s3cr3t-value".into());
    let err = h.target.start(spec).await.expect_err("refused").to_string();
    assert!(
        err.contains("Secret shop-staging-c1") && err.contains("422"),
        "{err}"
    );
    assert!(
        !err.contains("s3cr3t-value"),
        "a config value in an error: {err}"
    );
    assert!(h.api.get("deployments", NS, "shop-staging-v1").is_none());
}

#[tokio::test]
async fn a_pod_that_never_becomes_ready_fails_after_the_progress_deadline_with_its_reason() {
    let mut h = Harness::new(1).await;
    let spec = h.spec(1, 1, "hello");
    h.api.never_ready(&spec.image);
    // Started (the pod exists and has an address), not healthy.
    h.start(&spec).await;
    let (detail, _) = h
        .event("unhealthy", |e| match e {
            TargetEvent::Health {
                healthy: false,
                detail,
                restarts,
                ..
            } => Some((detail.clone(), *restarts)),
            _ => None,
        })
        .await;
    assert!(detail.contains("CrashLoopBackOff"), "{detail}");
    let exit = h
        .event("deadline", |e| match e {
            TargetEvent::Exited {
                instance_id,
                exit,
                crash_loop: true,
                ..
            } if *instance_id == spec.instance_id => Some(exit.clone()),
            _ => None,
        })
        .await;
    assert!(exit.contains("not ready after 1 s"), "{exit}");
    assert!(
        exit.contains("CrashLoopBackOff: back-off 10s restarting failed container=app"),
        "{exit}"
    );
    assert_eq!(
        h.object("deployments", "shop-staging-v1")["spec"]["progressDeadlineSeconds"],
        1
    );
}

#[tokio::test]
async fn canary_weights_become_the_http_routes_backends() {
    let h = Harness::new(600).await;
    h.start(&h.spec(1, 1, "hello")).await;
    h.start(&h.spec(1, 1, "hello")).await;
    h.start(&h.spec(2, 2, "hello")).await;
    h.weights(&[(1, 90), (2, 10)]).await;

    let route = h.object("httproutes", "shop-staging");
    assert_eq!(route["apiVersion"], "gateway.networking.k8s.io/v1");
    assert_eq!(route["spec"]["parentRefs"][0]["name"], "edge");
    assert_eq!(route["spec"]["parentRefs"][0]["namespace"], "gateways");
    assert_eq!(route["spec"]["hostnames"][0], "shop.example.test");
    let backends = &route["spec"]["rules"][0]["backendRefs"];
    assert_eq!(backends.as_array().unwrap().len(), 2);
    assert_eq!(backends[0]["name"], "shop-staging-v1");
    assert_eq!(backends[0]["weight"], 90);
    assert_eq!(backends[0]["port"], 8080);
    assert_eq!(backends[1]["name"], "shop-staging-v2");
    assert_eq!(backends[1]["weight"], 10);
    // Most traffic still goes to v1: the stable Service stays there.
    assert_eq!(
        h.object("services", "shop-staging")["spec"]["selector"]["slipway.dev/release"],
        "1"
    );
    assert!(h.api.get("services", NS, "shop-staging-v2").is_some());
}

#[tokio::test]
async fn blue_green_switches_the_stable_service() {
    let h = Harness::new(600).await;
    let blue = h.spec(1, 1, "hello");
    h.start(&blue).await;
    h.weights(&[(1, 100)]).await;
    h.start(&h.spec(2, 1, "hello")).await;
    // The green release's start leaves the stable Service on blue.
    assert_eq!(
        h.object("services", "shop-staging")["spec"]["selector"]["slipway.dev/release"],
        "1"
    );
    h.weights(&[(1, 0), (2, 100)]).await;
    let stable = h.object("services", "shop-staging");
    assert_eq!(stable["spec"]["selector"]["slipway.dev/release"], "2");
    let backends =
        h.object("httproutes", "shop-staging")["spec"]["rules"][0]["backendRefs"].clone();
    assert_eq!(backends.as_array().unwrap().len(), 1, "{backends}");
    assert_eq!(backends[0]["name"], "shop-staging-v2");

    // Blue retired: its Deployment and Service go, the stable Service stays on green.
    h.target
        .stop(blue.instance_id, Duration::ZERO)
        .await
        .unwrap();
    assert!(h.api.get("deployments", NS, "shop-staging-v1").is_none());
    assert!(h.api.get("services", NS, "shop-staging-v1").is_none());
    assert!(h.pods_of(1).is_empty());
    assert_eq!(
        h.object("services", "shop-staging")["spec"]["selector"]["slipway.dev/release"],
        "2"
    );
}

#[tokio::test]
async fn rollback_runs_the_old_release_with_its_old_config() {
    let h = Harness::new(600).await;
    let v1 = h.spec(1, 1, "hello");
    h.start(&v1).await;
    let v2 = h.spec(2, 2, "bonjour");
    h.start(&v2).await;
    h.weights(&[(2, 100)]).await;
    h.target.stop(v1.instance_id, Duration::ZERO).await.unwrap();
    assert!(h.api.get("deployments", NS, "shop-staging-v1").is_none());

    // The rollback: v1 again, with config version 1.
    let back = h.spec(1, 1, "hello");
    h.start(&back).await;
    h.weights(&[(1, 100)]).await;
    h.target.stop(v2.instance_id, Duration::ZERO).await.unwrap();

    let d = h.object("deployments", "shop-staging-v1");
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["envFrom"][1]["secretRef"]["name"],
        "shop-staging-c1"
    );
    assert_eq!(container["env"][1]["value"], "v1");
    assert_eq!(
        secret_value(&h.object("secrets", "shop-staging-c1"), "GREETING"),
        "hello"
    );
    // The newer version is kept (immutable, unchanged) for a roll forward.
    assert_eq!(
        secret_value(&h.object("secrets", "shop-staging-c2"), "GREETING"),
        "bonjour"
    );
    assert_eq!(
        h.object("services", "shop-staging")["spec"]["selector"]["slipway.dev/release"],
        "1"
    );
    assert_eq!(listed(&d), vec![back.instance_id.to_string()]);
}

#[tokio::test]
async fn scaling_down_stops_exactly_the_instance_asked_for() {
    let mut h = Harness::new(600).await;
    let specs: Vec<InstanceSpec> = (0..3).map(|_| h.spec(1, 1, "hello")).collect();
    let mut placements = Vec::new();
    for s in &specs {
        placements.push(h.start(s).await);
    }
    assert_eq!(
        h.object("deployments", "shop-staging-v1")["spec"]["replicas"],
        3
    );
    h.target
        .stop(specs[1].instance_id, Duration::from_secs(5))
        .await
        .unwrap();

    let d = h.object("deployments", "shop-staging-v1");
    assert_eq!(d["spec"]["replicas"], 2);
    let mut left = listed(&d);
    left.sort();
    let mut want = vec![
        specs[0].instance_id.to_string(),
        specs[2].instance_id.to_string(),
    ];
    want.sort();
    assert_eq!(left, want);
    // Its pod went; the others still run where they ran.
    let ips: Vec<String> = h
        .pods_of(1)
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(ips.contains(&pod_ip(&placements[0])));
    assert!(ips.contains(&pod_ip(&placements[2])));
    assert!(!ips.contains(&pod_ip(&placements[1])));
    assert_eq!(h.target.supervised().len(), 2);
    // Nothing the others did looked like a loss.
    while let Ok(e) = h.events.try_recv() {
        assert!(!matches!(e, TargetEvent::Exited { .. }), "{e:?}");
    }
}

#[tokio::test]
async fn a_deleted_pod_is_reported_and_its_replacement_becomes_the_instance() {
    let mut h = Harness::new(600).await;
    let spec = h.spec(1, 1, "hello");
    let first = h.start(&spec).await;
    let pod = h.pods_of(1)[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    h.api.delete_pod(NS, &pod);

    let exit = h
        .event("exit", |e| match e {
            TargetEvent::Exited {
                instance_id,
                exit,
                crash_loop: false,
                restarts: 0,
                ..
            } if *instance_id == spec.instance_id => Some(exit.clone()),
            _ => None,
        })
        .await;
    assert_eq!(exit, format!("pod {pod} was deleted"));
    let (placement, restarts) = h
        .event("restart", |e| match e {
            TargetEvent::Restarted {
                instance_id,
                placement,
                restarts,
            } if *instance_id == spec.instance_id => Some((placement.clone(), *restarts)),
            _ => None,
        })
        .await;
    assert_eq!(restarts, 1);
    assert_ne!(placement.address, first.address);
    let pods = h.pods_of(1);
    assert_eq!(pods.len(), 1);
    assert_eq!(
        pod_ip(&placement),
        pods[0]["status"]["podIP"].as_str().unwrap()
    );
    // The restarted incarnation reports its health as such.
    h.event("health of the replacement", |e| match e {
        TargetEvent::Health {
            instance_id,
            restarts: 1,
            healthy: true,
            ..
        } if *instance_id == spec.instance_id => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test]
async fn a_restarted_deployer_adopts_its_pods_and_reports_gone_ones_dead() {
    let h = Harness::new(600).await;
    let alive = h.spec(1, 1, "hello");
    let gone = h.spec(1, 1, "hello");
    let pa = h.start(&alive).await;
    let pg = h.start(&gone).await;
    h.target.detach().await;
    drop(h.target);
    // The "gone" instance's pod vanished while no deployer watched; its replacement is not it.
    let pods = h.api.list("pods", NS);
    let gone_pod = pods
        .iter()
        .find(|p| p["status"]["podIP"] == pod_ip(&pg).as_str())
        .unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    h.api.delete_pod(NS, &gone_pod);

    let (tx, _events) = unbounded_channel();
    let again = KubernetesTarget::new(h.settings.clone(), tx).unwrap();
    let known = |spec: &InstanceSpec, placement: &Placement| Known {
        spec: spec.clone(),
        placement: placement.clone(),
        restarts: 0,
    };
    let adopted = again
        .adopt(vec![known(&alive, &pa), known(&gone, &pg)])
        .await
        .unwrap();
    assert_eq!(adopted.running, vec![(alive.instance_id, pa.clone())]);
    assert_eq!(adopted.dead, vec![gone.instance_id]);
    let d = h.api.get("deployments", NS, "shop-staging-v1").unwrap();
    assert_eq!(listed(&d), vec![alive.instance_id.to_string()]);
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(again.supervised().len(), 1);
}
