//! What the target reads of a pod's status: readiness, the reason it is not ready, and the
//! runs of its `app` container (restarts, how the last run ended, the kubelet's back-off).

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};

use super::objects::{self, CONTAINER, Names};

/// What the target needs of a pod.
#[derive(Debug, Clone)]
pub(crate) struct PodInfo {
    /// Its service and release labels (a pod of `release` of that service's Deployment).
    pub service: Option<String>,
    pub release: Option<i32>,
    pub ip: Option<String>,
    pub ready: bool,
    /// Being deleted (`deletionTimestamp` set): no longer an instance.
    pub deleting: bool,
    /// Why it is not ready, from its status.
    pub reason: String,
    /// The `app` container runs (its log can be followed).
    pub running: bool,
    /// The `app` container's `restartCount`: how often the kubelet started it again.
    pub restart_count: u32,
    /// How the current run of `app` ended, if it did (terminated, or waiting to be started
    /// again after a termination).
    pub exited: Option<String>,
    /// How the run before the current one ended (`lastState.terminated`).
    pub last_exit: Option<String>,
    /// `app` waits in `CrashLoopBackOff`: the kubelet's reason and message, and the back-off
    /// it names.
    pub back_off: Option<(String, Duration)>,
}

impl PodInfo {
    pub(crate) fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let app = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.name == CONTAINER);
        let state = app.and_then(|c| c.state.as_ref());
        let waiting = state.and_then(|s| s.waiting.as_ref());
        let last_exit = app
            .and_then(|c| c.last_state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .map(termination);
        let exited = match state.and_then(|s| s.terminated.as_ref()) {
            Some(t) => Some(termination(t)),
            None => waiting.and(last_exit.clone()),
        };
        let back_off = waiting
            .filter(|w| w.reason.as_deref() == Some("CrashLoopBackOff"))
            .map(|w| {
                let message = w.message.as_deref().unwrap_or_default();
                let wait = message
                    .split_once("back-off ")
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .and_then(go_duration)
                    .unwrap_or_default();
                (format!("CrashLoopBackOff: {message}"), wait)
            });
        let labels = pod.metadata.labels.as_ref();
        Self {
            service: labels.and_then(|l| l.get(objects::SERVICE)).cloned(),
            release: labels
                .and_then(|l| l.get(objects::RELEASE))
                .and_then(|r| r.parse().ok()),
            ip: status
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            ready,
            deleting: pod.metadata.deletion_timestamp.is_some(),
            reason: not_ready_reason(pod),
            running: state.is_some_and(|s| s.running.is_some()),
            restart_count: app.map_or(0, |c| u32::try_from(c.restart_count).unwrap_or(0)),
            exited,
            last_exit,
            back_off,
        }
    }
}

impl PodInfo {
    /// A pod of `release` of the service `names` name (in any environment: the cache is
    /// per environment).
    pub(crate) fn is_of(&self, names: &Names, release: i32) -> bool {
        self.release == Some(release)
            && self.service.as_deref() == Some(objects::fit(&names.service).as_str())
    }
}

/// How a container's run ended, in the words the process target uses.
fn termination(t: &ContainerStateTerminated) -> String {
    let reason = t.reason.as_deref().unwrap_or("terminated");
    match t.signal {
        Some(signal) if signal != 0 => format!("killed by signal {signal} ({reason})"),
        _ => format!("exit code {} ({reason})", t.exit_code),
    }
}

/// A Go duration as the kubelet writes it (`10s`, `2m40s`, `5m0s`, `1h0m0s`, `500ms`).
fn go_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(value), 2)
        } else {
            let seconds = match rest.chars().next()? {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return None,
            };
            (Duration::from_secs(value * seconds), 1)
        };
        total += unit;
        rest = &rest[len..];
    }
    Some(total)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_back_offs_are_read_as_durations() {
        assert_eq!(go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(go_duration("2m40s"), Some(Duration::from_secs(160)));
        assert_eq!(go_duration("5m0s"), Some(Duration::from_secs(300)));
        assert_eq!(go_duration("1h0m0s"), Some(Duration::from_secs(3600)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("s"), None);
        assert_eq!(go_duration("3d"), None);
    }

    #[test]
    fn a_crash_looping_container_is_read_with_its_last_exit() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": {"slipway.dev/release": "3", "slipway.dev/service": "shop"}},
            "status": {
                "podIP": "10.0.0.9",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff",
                        "message": "back-off 1m20s restarting failed container=app pod=p"}},
                    "lastState": {"terminated": {"exitCode": 3, "reason": "Error"}},
                }],
            },
        }))
        .unwrap();
        let info = PodInfo::of(&pod);
        assert_eq!(info.release, Some(3));
        assert!(info.is_of(&Names::new("Shop", "staging"), 3));
        assert!(!info.is_of(&Names::new("shop", "staging"), 2));
        assert!(!info.is_of(&Names::new("cart", "staging"), 3));
        assert!(!info.running && !info.ready);
        assert_eq!(info.restart_count, 4);
        assert_eq!(info.exited.as_deref(), Some("exit code 3 (Error)"));
        let (why, wait) = info.back_off.unwrap();
        assert!(why.starts_with("CrashLoopBackOff: back-off 1m20s"), "{why}");
        assert_eq!(wait, Duration::from_secs(80));
    }

    #[test]
    fn a_running_container_after_an_oom_kill_is_up_with_its_last_exit() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{
                "name": "app", "image": "i", "imageID": "", "ready": true, "restartCount": 1,
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
            }]},
        }))
        .unwrap();
        let info = PodInfo::of(&pod);
        assert!(info.running);
        assert_eq!(info.exited, None);
        assert_eq!(info.last_exit.as_deref(), Some("exit code 137 (OOMKilled)"));
        assert!(info.back_off.is_none());
    }
}
