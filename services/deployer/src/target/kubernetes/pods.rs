//! Pods as instances: one watch per environment keeps a cache of the release pods, and every
//! change reconciles the instances with it (binding, readiness, progress deadline, pod loss)
//! and follows bound pods' logs. See the parent module's doc.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams, WatchEvent, WatchParams};
use slipway_events::deploy::LogLine;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::objects::{self, CONTAINER, PORT};
use super::{Shared, lock};
use crate::target::{Placement, TargetEvent};

/// What the target needs of a pod.
#[derive(Debug, Clone)]
pub(crate) struct PodInfo {
    pub release: Option<i32>,
    pub ip: Option<String>,
    pub ready: bool,
    /// Being deleted (`deletionTimestamp` set): no longer an instance.
    pub deleting: bool,
    /// Why it is not ready, from its status.
    pub reason: String,
}

impl PodInfo {
    fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Self {
            release: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(objects::RELEASE))
                .and_then(|r| r.parse().ok()),
            ip: status
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            ready,
            deleting: pod.metadata.deletion_timestamp.is_some(),
            reason: not_ready_reason(pod),
        }
    }
}

/// The most specific reason the pod gives: a container's waiting or terminated state, then
/// the Ready condition, then the phase.
fn not_ready_reason(pod: &Pod) -> String {
    let Some(status) = &pod.status else {
        return "no status yet".into();
    };
    for c in status.container_statuses.iter().flatten() {
        let state = c.state.as_ref();
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("waiting");
            return match &w.message {
                Some(m) => format!("container {}: {reason}: {m}", c.name),
                None => format!("container {}: {reason}", c.name),
            };
        }
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            return format!(
                "container {}: {} (exit code {})",
                c.name,
                t.reason.as_deref().unwrap_or("terminated"),
                t.exit_code
            );
        }
    }
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status != "True")
    {
        return format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("not ready"),
            c.message.as_deref().unwrap_or("no message")
        );
    }
    format!("phase {}", status.phase.as_deref().unwrap_or("unknown"))
}

/// Lists then watches `environment`'s release pods until the target is dropped; answers a
/// notification given once the first list is cached.
pub(crate) fn spawn_watch(shared: Arc<Shared>, environment: String, api: Api<Pod>) -> Arc<Notify> {
    let listed = Arc::new(Notify::new());
    let first = listed.clone();
    // A pod that stays unready sends no more events: its deadline is looked at on a tick.
    let ticking = shared.clone();
    let env = environment.clone();
    tokio::spawn(async move {
        let tick = (ticking.settings.progress_deadline() / 4).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        );
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
        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
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
                            restart_in: std::time::Duration::ZERO,
                            crash_loop: false,
                            last_lines: Vec::new(),
                        });
                        instance.pod = None;
                        instance.lost = true;
                        instance.restarts += 1;
                    }
                    Some(pod) => {
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
                        if !pod.ready
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
                                restart_in: std::time::Duration::ZERO,
                                crash_loop: true,
                                last_lines: Vec::new(),
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
                    p.release == Some(instance.release)
                        && !p.deleting
                        && p.ip.is_some()
                        && !taken.contains(*n)
                })
                .collect();
            free.sort_by_key(|(n, _)| (*n).clone());
            if let Some((name, pod)) = free.first() {
                taken.insert((*name).clone());
                instance.pod = Some((*name).clone());
                instance.bound_at = tokio::time::Instant::now();
                instance.ready = None;
                instance.overdue = false;
                let token = shared.cancel.child_token();
                instance.logs = Some(token.clone());
                follow.push((id, (*name).clone(), token));
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
    let bound = !follow.is_empty();
    for event in events {
        let _ = shared.events.send(event);
    }
    for (id, pod, token) in follow {
        tokio::spawn(follow_logs(
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
/// pod of the instance's release bound to nobody else.
pub(crate) fn bind_by_ip(shared: &Arc<Shared>, id: Uuid, ip: Option<&str>) -> bool {
    let Some(ip) = ip else { return false };
    let pods = lock(&shared.pods).clone();
    let token = shared.cancel.child_token();
    let bound = {
        let mut instances = shared.instances();
        let taken: HashSet<String> = instances.values().filter_map(|i| i.pod.clone()).collect();
        let Some(instance) = instances.get_mut(&id) else {
            return false;
        };
        let found = pods.get(&instance.environment).and_then(|cache| {
            cache.iter().find(|(n, p)| {
                p.ip.as_deref() == Some(ip)
                    && !p.deleting
                    && p.release == Some(instance.release)
                    && !taken.contains(*n)
            })
        });
        found.map(|(name, _)| {
            instance.pod = Some(name.clone());
            instance.logs = Some(token.clone());
            (instance.environment.clone(), name.clone())
        })
    };
    match bound {
        Some((environment, pod)) => {
            tokio::spawn(follow_logs(shared.clone(), environment, id, pod, token));
            true
        }
        None => false,
    }
}

/// Why no pod of `release` is there for an instance yet (for a start that timed out).
pub(crate) fn pending_reason(shared: &Shared, environment: &str, release: i32) -> String {
    let pods = lock(&shared.pods);
    let reasons: Vec<String> = pods
        .get(environment)
        .into_iter()
        .flatten()
        .filter(|(_, p)| p.release == Some(release))
        .map(|(n, p)| format!("pod {n}: {}", p.reason))
        .collect();
    if reasons.is_empty() {
        "the ReplicaSet made no pod (quota, admission or scheduling: see the namespace's events)"
            .into()
    } else {
        reasons.join("; ")
    }
}

/// Follows a bound pod's log (container `app`) as [`TargetEvent::Logs`] batches until the
/// pod or the instance goes; the sequence continues over the instance's pods.
async fn follow_logs(
    shared: Arc<Shared>,
    environment: String,
    id: Uuid,
    pod: String,
    token: CancellationToken,
) {
    let Some(cluster) = shared.clusters.get(&environment) else {
        return;
    };
    let Ok(api) = cluster.api::<Pod>().await else {
        return;
    };
    let params = LogParams {
        container: Some(CONTAINER.to_owned()),
        follow: true,
        ..LogParams::default()
    };
    let reader = tokio::select! {
        r = api.log_stream(&pod, &params) => r,
        () = token.cancelled() => return,
    };
    let reader = match reader {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(instance = %id, %pod, error = %e, "no log of the pod");
            return;
        }
    };
    let mut lines = Box::pin(reader.lines());
    let batch = shared.settings.log_batch();
    let mut pending: Vec<LogLine> = Vec::new();
    let flush = |pending: &mut Vec<LogLine>| {
        if pending.is_empty() {
            return;
        }
        let mut instances = shared.instances();
        let Some(instance) = instances.get_mut(&id) else {
            pending.clear();
            return;
        };
        let first_seq = instance.log_seq;
        instance.log_seq += pending.len() as u64;
        drop(instances);
        let _ = shared.events.send(TargetEvent::Logs {
            instance_id: id,
            first_seq,
            lines: std::mem::take(pending),
        });
    };
    loop {
        let next = tokio::select! {
            l = lines.next() => l,
            () = tokio::time::sleep(batch), if !pending.is_empty() => {
                flush(&mut pending);
                continue;
            }
            () = token.cancelled() => break,
        };
        match next {
            Some(Ok(line)) => pending.push(LogLine {
                // The pod log API merges the container's stdout and stderr.
                stream: "stdout".into(),
                line,
                at: Utc::now(),
            }),
            _ => break,
        }
    }
    flush(&mut pending);
}
