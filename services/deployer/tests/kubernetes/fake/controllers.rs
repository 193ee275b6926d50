//! The controllers and the kubelet of the fake cluster: the Deployment (and ReplicaSet)
//! controller runs on every write of a Deployment and deletion of a pod; the kubelet runs each
//! pod's `app` container the way its image is marked ([`Behaviour`]) and, when a test asks,
//! ends a run the way a crashing process would, restarting it at once or backing off
//! (`CrashLoopBackOff`), with the status fields the kubelet writes.

use serde_json::{Value, json};

use super::{State, lock, now};

/// How the pods of an image behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// The container runs and its readiness probe passes at once.
    #[default]
    Ready,
    /// The container runs; its readiness probe never passes.
    NeverReady,
    /// The container exits with code 1 at once, is restarted once, exits again and the
    /// kubelet backs off.
    Crashing,
}

impl State {
    pub(super) fn owned(&self, ns: &str, deployment: &str) -> Vec<Value> {
        lock(&self.store)
            .objects
            .iter()
            .filter(|((p, n, _), v)| {
                p == "pods"
                    && n == ns
                    && v["metadata"]["annotations"]["fake/deployment"] == deployment
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The Deployment controller (and the ReplicaSet's) for one Deployment.
    pub(super) fn reconcile(&self, ns: &str, name: &str) {
        let Some(d) = lock(&self.store)
            .objects
            .get(&("deployments".into(), ns.into(), name.into()))
            .cloned()
        else {
            return;
        };
        let template = d["spec"]["template"].clone();
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            template.to_string().hash(&mut h);
            format!("{:08x}", h.finish() as u32)
        };
        let want = d["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let mut pods = self.owned(ns, name);
        // A new template: the old pods go (the fake rolls all at once).
        for old in pods
            .iter()
            .filter(|p| p["metadata"]["labels"]["pod-template-hash"] != hash.as_str())
        {
            self.remove(
                "pods",
                ns,
                old["metadata"]["name"].as_str().unwrap_or_default(),
            );
        }
        pods.retain(|p| p["metadata"]["labels"]["pod-template-hash"] == hash.as_str());
        if pods.len() > want {
            // Unready first, then the newest.
            pods.sort_by_key(|p| {
                (
                    is_ready(p),
                    std::cmp::Reverse(
                        p["metadata"]["annotations"]["fake/ordinal"]
                            .as_str()
                            .and_then(|o| o.parse::<u64>().ok()),
                    ),
                )
            });
            for extra in &pods[..pods.len() - want] {
                self.remove(
                    "pods",
                    ns,
                    extra["metadata"]["name"].as_str().unwrap_or_default(),
                );
            }
        }
        for _ in pods.len()..want {
            self.make_pod(ns, name, &template, &hash);
        }
    }

    fn make_pod(&self, ns: &str, deployment: &str, template: &Value, hash: &str) {
        let image = template["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let behaviour = lock(&self.images).get(&image).copied().unwrap_or_default();
        let name = {
            let mut store = lock(&self.store);
            store.pods_made += 1;
            let n = store.pods_made;
            let name = format!("{deployment}-{hash}-p{n}");
            let mut labels = template["metadata"]["labels"].clone();
            labels["pod-template-hash"] = hash.into();
            store.rv += 1;
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": name, "namespace": ns, "labels": labels, "uid": format!("pod-{n}"),
                    "resourceVersion": store.rv.to_string(), "creationTimestamp": now(0),
                    "annotations": {"fake/deployment": deployment, "fake/ordinal": n.to_string()},
                },
                "spec": template["spec"].clone(),
                "status": {
                    "phase": "Pending", "podIP": format!("10.1.0.{n}"),
                    "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                                    "message": "containers with unready status: [app]"}],
                    "containerStatuses": [{"name": "app", "image": image, "imageID": "", "ready": false,
                                           "restartCount": 0,
                                           "state": {"waiting": {"reason": "ContainerCreating"}}}],
                },
            });
            store
                .objects
                .insert(("pods".into(), ns.into(), name.clone()), pod.clone());
            self.record(&mut store, "pods", ns, "ADDED", pod);
            name
        };
        self.start_container(ns, &name, behaviour);
        if behaviour == Behaviour::Crashing {
            self.end_run(ns, &name, 1, "Error", true);
            self.end_run(ns, &name, 1, "Error", false);
        }
    }

    /// Changes a pod's status as the kubelet reports it (one event); false if it is gone.
    fn kubelet(&self, ns: &str, name: &str, change: impl FnOnce(&mut Value)) -> bool {
        let mut store = lock(&self.store);
        let key = ("pods".to_owned(), ns.to_owned(), name.to_owned());
        let Some(mut pod) = store.objects.get(&key).cloned() else {
            return false;
        };
        store.rv += 1;
        pod["metadata"]["resourceVersion"] = store.rv.to_string().into();
        change(&mut pod["status"]);
        store.objects.insert(key, pod.clone());
        self.record(&mut store, "pods", ns, "MODIFIED", pod);
        true
    }

    /// What run `run` of the pod's container prints (its log from then on).
    fn print(&self, pod: &Value, run: u64) {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let release = pod["metadata"]["labels"]["slipway.dev/release"]
            .as_str()
            .unwrap_or_default();
        let second = if run == 0 {
            format!("release v{release} up")
        } else {
            format!("release v{release} up again (restart {run})")
        };
        lock(&self.store).logs.insert(
            name.to_owned(),
            vec!["listening on :8080".to_owned(), second],
        );
    }

    /// Starts the first run of `app`, then (a second event, as the kubelet reports it) marks
    /// the pod ready unless its image never is.
    fn start_container(&self, ns: &str, name: &str, behaviour: Behaviour) {
        let Some(pod) = self.object("pods", ns, name) else {
            return;
        };
        self.print(&pod, 0);
        self.kubelet(ns, name, |status| {
            status["phase"] = "Running".into();
            status["containerStatuses"][0]["state"] = json!({"running": {"startedAt": now(0)}});
        });
        self.probe(ns, name, behaviour);
    }

    fn probe(&self, ns: &str, name: &str, behaviour: Behaviour) {
        if behaviour != Behaviour::Ready {
            return;
        }
        self.kubelet(ns, name, |status| {
            status["conditions"] = json!([{"type": "Ready", "status": "True"}]);
            status["containerStatuses"][0]["ready"] = true.into();
        });
    }

    /// The run of `app` ends with `exit_code` (`reason`: `Error`, `OOMKilled`, ...). The
    /// kubelet starts it again at once (`restart`: its restartCount goes up, the run that
    /// ended becomes `lastState`) or backs off (`CrashLoopBackOff`, 10 s doubled per
    /// restart up to 5 min, as the kubelet does).
    pub(super) fn end_run(
        &self,
        ns: &str,
        name: &str,
        exit_code: i32,
        reason: &str,
        restart: bool,
    ) {
        let terminated = json!({"exitCode": exit_code, "reason": reason, "finishedAt": now(0)});
        let ended = self.kubelet(ns, name, |status| {
            status["conditions"] = json!([{"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                                           "message": "containers with unready status: [app]"}]);
            let app = &mut status["containerStatuses"][0];
            app["ready"] = false.into();
            app["state"] = json!({"terminated": terminated.clone()});
        });
        if !ended {
            return;
        }
        if restart {
            // A new container: its run counted, the one that ended kept as `lastState`.
            let Some(pod) = self.object("pods", ns, name) else {
                return;
            };
            let app = &pod["status"]["containerStatuses"][0];
            let run = app["restartCount"].as_u64().unwrap_or(0) + 1;
            let image = app["image"].as_str().unwrap_or_default().to_owned();
            self.print(&pod, run);
            self.kubelet(ns, name, |status| {
                let app = &mut status["containerStatuses"][0];
                app["restartCount"] = run.into();
                app["lastState"] = json!({"terminated": terminated.clone()});
                app["state"] = json!({"running": {"startedAt": now(0)}});
            });
            let behaviour = lock(&self.images).get(&image).copied().unwrap_or_default();
            self.probe(ns, name, behaviour);
            return;
        }
        let uid = self
            .object("pods", ns, name)
            .map(|p| p["metadata"]["uid"].clone())
            .unwrap_or_default();
        self.kubelet(ns, name, |status| {
            let app = &mut status["containerStatuses"][0];
            let restarts = app["restartCount"].as_u64().unwrap_or(0).min(5);
            let back_off = (10u64 << restarts.saturating_sub(1)).min(300);
            app["lastState"] = json!({"terminated": terminated.clone()});
            app["state"] = json!({"waiting": {
                "reason": "CrashLoopBackOff",
                "message": format!("back-off {}s restarting failed container=app pod={name}_{ns}({})",
                    back_off, uid.as_str().unwrap_or_default()),
            }});
        });
    }
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}
