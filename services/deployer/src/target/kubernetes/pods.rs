//! Pods as instances: one watch per environment keeps a cache of the release pods, and every
//! change reconciles the instances with it (binding, readiness, progress deadline, pod loss,
//! the runs of the pod's container) and follows the current run's log. See the parent
//! module's doc.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::objects::{self, CONTAINER, PORT};
pub(crate) use super::status::PodInfo;
use super::{Instance, Shared, lock, logs};
use crate::target::{Placement, TargetEvent};

/// Lists then watches `environment`'s release pods until the target is dropped; answers a
/// notification given once the first list is cached.
pub(crate) fn spawn_watch(shared: Arc<Shared>, environment: String, api: Api<Pod>) -> Arc<Notify> {
    let listed = Arc::new(Notify::new());
    let first = listed.clone();
    // A pod that stays unready sends no more events: its deadline is looked at on a tick.
    let ticking = shared.clone();
    let env = environment.clone();
    tokio::spawn(async move {
        let tick = (ticking.settings.progress_deadline() / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => reconcile(&ticking, &env, true),
                () = ticking.cancel.cancelled() => return,
            }
        }
    });
    tokio::spawn(async move {
        let selector = format!(
            "{}=slipway,{}={}",
            objects::MANAGED_BY,
            objects::ENVIRONMENT,
            objects::fit(&environment)
        );
        let mut announced = false;
        let mut version = None::<String>;
        while !shared.cancel.is_cancelled() {
            let from = match version.clone() {
                Some(v) => v,
                None => match api.list(&ListParams::default().labels(&selector)).await {
                    Ok(list) => {
                        let cache = list
                            .items
                            .iter()
                            .filter_map(|p| Some((p.metadata.name.clone()?, PodInfo::of(p))))
                            .collect();
                        lock(&shared.pods).insert(environment.clone(), cache);
                        reconcile(&shared, &environment, false);
                        if !announced {
                            announced = true;
                            first.notify_one();
                        }
                        list.metadata.resource_version.unwrap_or_default()
                    }
                    Err(e) => {
                        tracing::warn!(%environment, error = %e, "cannot list pods");
                        pause(&shared).await;
                        continue;
                    }
                },
            };
            version = watch_from(&shared, &environment, &api, &selector, from).await;
            if version.is_none() {
                pause(&shared).await;
            }
        }
    });
    listed
}

async fn pause(shared: &Shared) {
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
        () = shared.cancel.cancelled() => {}
    }
}

/// Applies the watch's events from `from`; answers the version to resume at, `None` to list
/// again (the version is too old, or the watch failed).
async fn watch_from(
    shared: &Arc<Shared>,
    environment: &str,
    api: &Api<Pod>,
    selector: &str,
    from: String,
) -> Option<String> {
    let params = WatchParams::default().labels(selector).timeout(290);
    let mut stream = match api.watch(&params, &from).await {
        Ok(s) => s.boxed(),
        Err(e) => {
            tracing::warn!(%environment, error = %e, "cannot watch pods");
            return None;
        }
    };
    let mut version = from;
    loop {
        let event = tokio::select! {
            e = stream.try_next() => e,
            () = shared.cancel.cancelled() => return None,
        };
        let (pod, gone) = match event {
            Ok(Some(WatchEvent::Added(p) | WatchEvent::Modified(p))) => (p, false),
            Ok(Some(WatchEvent::Deleted(p))) => (p, true),
            Ok(Some(WatchEvent::Bookmark(b))) => {
                version = b.metadata.resource_version;
                continue;
            }
            // 410 Gone and friends: list again.
            Ok(Some(WatchEvent::Error(status))) => {
                tracing::info!(%environment, code = status.code, "pod watch ended: {}", status.message);
                return None;
            }
            Ok(None) => return Some(version),
            Err(e) => {
                tracing::warn!(%environment, error = %e, "pod watch failed");
                return None;
            }
        };
        if let Some(v) = &pod.metadata.resource_version {
            version.clone_from(v);
        }
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        {
            let mut pods = lock(&shared.pods);
            let cache = pods.entry(environment.to_owned()).or_default();
            if gone {
                cache.remove(&name);
            } else {
                cache.insert(name, PodInfo::of(&pod));
            }
        }
        reconcile(shared, environment, false);
    }
}

/// Brings `environment`'s instances in line with its pods (see the parent module's doc).
/// `tick`: health is sent again even where it did not change.
pub(crate) fn reconcile(shared: &Arc<Shared>, environment: &str, tick: bool) {
    let pods = lock(&shared.pods)
        .get(environment)
        .cloned()
        .unwrap_or_default();
    let mut events = Vec::new();
    let mut follow = Vec::new();
    let mut bound = false;
    let deadline = shared.settings.progress_deadline();
    {
        let mut instances = shared.instances();
        let mut taken: HashSet<String> = instances.values().filter_map(|i| i.pod.clone()).collect();
        let mut ids: Vec<Uuid> = instances
            .iter()
            .filter(|(_, i)| i.environment == environment)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            let Some(instance) = instances.get_mut(&id) else {
                continue;
            };
            if let Some(name) = instance.pod.clone() {
                match pods.get(&name).filter(|p| !p.deleting) {
                    None => {
                        // Pod loss: the ReplicaSet replaces it; the replacement is bound
                        // below (or at a later event) and reported as a restart.
                        tracing::warn!(instance = %id, pod = %name, "pod lost");
                        if let Some(logs) = instance.logs.take() {
                            logs.cancel();
                        }
                        events.push(TargetEvent::Exited {
                            instance_id: id,
                            exit: format!("pod {name} was deleted"),
                            restarts: instance.restarts,
                            restart_in: Duration::ZERO,
                            crash_loop: false,
                            last_lines: instance.recent.iter().cloned().collect(),
                        });
                        instance.pod = None;
                        instance.lost = true;
                        instance.restarts += 1;
                    }
                    Some(pod) => {
                        if instance.started {
                            observe_container(id, &name, instance, pod, &mut events);
                        }
                        follow_run(shared, id, &name, instance, pod, &mut follow);
                        if instance.started && (tick || instance.ready != Some(pod.ready)) {
                            instance.ready = Some(pod.ready);
                            events.push(TargetEvent::Health {
                                instance_id: id,
                                restarts: instance.restarts,
                                healthy: pod.ready,
                                detail: if pod.ready {
                                    format!("pod {name} ready")
                                } else {
                                    format!("pod {name} not ready: {}", pod.reason)
                                },
                            });
                        }
                        instance.ever_ready |= pod.ready;
                        // The deadline is for becoming ready (after binding or a restart of
                        // the container), not for staying ready.
                        if !pod.ready
                            && !instance.ever_ready
                            && !instance.overdue
                            && instance.bound_at.elapsed() >= deadline
                        {
                            instance.overdue = true;
                            events.push(TargetEvent::Exited {
                                instance_id: id,
                                exit: format!(
                                    "pod {name} not ready after {} s: {}",
                                    deadline.as_secs(),
                                    pod.reason
                                ),
                                restarts: instance.restarts,
                                restart_in: Duration::ZERO,
                                crash_loop: true,
                                last_lines: instance.recent.iter().cloned().collect(),
                            });
                        }
                        continue;
                    }
                }
            }
            // Unbound: the oldest free pod of its release that has an address.
            let mut free: Vec<(&String, &PodInfo)> = pods
                .iter()
                .filter(|(n, p)| {
                    p.is_of(&instance.names, instance.release)
                        && !p.deleting
                        && p.ip.is_some()
                        && !taken.contains(*n)
                })
                .collect();
            free.sort_by_key(|(n, _)| (*n).clone());
            if let Some((name, pod)) = free.first() {
                taken.insert((*name).clone());
                instance.bind(name, pod);
                bound = true;
                follow_run(shared, id, name, instance, pod, &mut follow);
                if instance.lost {
                    instance.lost = false;
                    events.push(TargetEvent::Restarted {
                        instance_id: id,
                        placement: placement_of(pod),
                        restarts: instance.restarts,
                    });
                }
            }
        }
    }
    for event in events {
        let _ = shared.events.send(event);
    }
    for (id, pod, token) in follow {
        tokio::spawn(logs::follow_logs(
            shared.clone(),
            environment.to_owned(),
            id,
            pod,
            token,
        ));
    }
    if bound {
        shared.changed.notify_waiters();
    }
}

/// Reports what happened to the bound pod's `app` container since last looked at: a run
/// that ended ([`TargetEvent::Exited`], a crash loop when the kubelet backs off), a run the
/// kubelet started again ([`TargetEvent::Restarted`], at the same address).
fn observe_container(
    id: Uuid,
    name: &str,
    instance: &mut Instance,
    pod: &PodInfo,
    events: &mut Vec<TargetEvent>,
) {
    let exited = |instance: &Instance, how: String, crash_loop: bool, restart_in: Duration| {
        TargetEvent::Exited {
            instance_id: id,
            exit: format!("container {CONTAINER} of pod {name}: {how}"),
            restarts: instance.restarts,
            restart_in,
            crash_loop,
            last_lines: instance.recent.iter().cloned().collect(),
        }
    };
    if pod.restart_count > instance.pod_restarts {
        // Restarted since: its exit is reported first if it was not seen ending.
        if !instance.exit_reported {
            let how = pod.last_exit.clone().unwrap_or_else(|| "exited".into());
            events.push(exited(instance, how, false, Duration::ZERO));
        }
        instance.restarts += pod.restart_count - instance.pod_restarts;
        instance.pod_restarts = pod.restart_count;
        instance.exit_reported = false;
        instance.crash_reported = false;
        instance.ready = None;
        instance.ever_ready = false;
        instance.overdue = false;
        instance.bound_at = tokio::time::Instant::now();
        tracing::warn!(instance = %id, pod = %name, restarts = instance.restarts, "container restarted");
        events.push(TargetEvent::Restarted {
            instance_id: id,
            placement: placement_of(pod),
            restarts: instance.restarts,
        });
    }
    let crash_loop = pod.back_off.is_some();
    let down = pod
        .exited
        .clone()
        .or_else(|| crash_loop.then(|| "exited".to_owned()));
    if let Some(how) = down
        && (!instance.exit_reported || (crash_loop && !instance.crash_reported))
    {
        let (how, restart_in) = match &pod.back_off {
            Some((why, wait)) => (format!("{how}; {why}"), *wait),
            None => (how, Duration::ZERO),
        };
        events.push(exited(instance, how, crash_loop, restart_in));
        instance.exit_reported = true;
        instance.crash_reported |= crash_loop;
    }
}

/// Follows the log of the bound pod's current run of `app` unless it is followed already
/// (a container's log can be read once it runs; each run has its own stream).
fn follow_run(
    shared: &Shared,
    id: Uuid,
    name: &str,
    instance: &mut Instance,
    pod: &PodInfo,
    follow: &mut Vec<(Uuid, String, CancellationToken)>,
) {
    if !pod.running || instance.log_run == Some(pod.restart_count) {
        return;
    }
    if let Some(old) = instance.logs.take() {
        old.cancel();
    }
    let token = shared.cancel.child_token();
    instance.logs = Some(token.clone());
    instance.log_run = Some(pod.restart_count);
    follow.push((id, name.to_owned(), token));
}

fn placement_of(pod: &PodInfo) -> Placement {
    Placement {
        address: format!("{}:{PORT}", pod.ip.as_deref().unwrap_or_default()),
        port: PORT,
        process: None,
    }
}

/// Where `id` runs, once bound to a pod with an address.
pub(crate) fn placement(shared: &Shared, id: Uuid) -> Option<Placement> {
    let instances = shared.instances();
    let instance = instances.get(&id)?;
    let name = instance.pod.as_ref()?;
    let pods = lock(&shared.pods);
    pods.get(&instance.environment)?.get(name).map(placement_of)
}

/// Binds `id` to the pod at `ip` (an adopted instance's recorded address) if it is a live
/// pod of the instance's release bound to nobody else. Its log is followed from the next
/// [`reconcile`] on.
pub(crate) fn bind_by_ip(shared: &Shared, id: Uuid, ip: Option<&str>) -> bool {
    let Some(ip) = ip else { return false };
    let pods = lock(&shared.pods).clone();
    let mut instances = shared.instances();
    let taken: HashSet<String> = instances.values().filter_map(|i| i.pod.clone()).collect();
    let Some(instance) = instances.get_mut(&id) else {
        return false;
    };
    let found = pods.get(&instance.environment).and_then(|cache| {
        cache.iter().find(|(n, p)| {
            p.ip.as_deref() == Some(ip)
                && !p.deleting
                && p.is_of(&instance.names, instance.release)
                && !taken.contains(*n)
        })
    });
    match found {
        Some((name, pod)) => {
            instance.bind(name, pod);
            true
        }
        None => false,
    }
}

/// Why no pod of `release` is there for an instance yet (for a start that timed out).
pub(crate) fn pending_reason(
    shared: &Shared,
    environment: &str,
    names: &objects::Names,
    release: i32,
) -> String {
    let pods = lock(&shared.pods);
    let reasons: Vec<String> = pods
        .get(environment)
        .into_iter()
        .flatten()
        .filter(|(_, p)| p.is_of(names, release))
        .map(|(n, p)| format!("pod {n}: {}", p.reason))
        .collect();
    if reasons.is_empty() {
        "the ReplicaSet made no pod (quota, admission or scheduling: see the namespace's events)"
            .into()
    } else {
        reasons.join("; ")
    }
}
