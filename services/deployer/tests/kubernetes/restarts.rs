//! Runs of a pod's container: a restart by the kubelet is reported like the process and
//! Docker targets report theirs (an exit with its reason, then a restart), a crash loop as
//! one, long before the progress deadline.

use std::time::Duration;

use slipway_deployer::target::{Target, TargetEvent};

use crate::{Harness, NS};

/// Waits until `count` lines of the instance's output were sent.
async fn lines_sent(h: &mut Harness, count: u64) {
    let mut sent = 0;
    while sent < count {
        sent = h
            .event("logs", |e| match e {
                TargetEvent::Logs {
                    first_seq, lines, ..
                } => Some(first_seq + lines.len() as u64),
                _ => None,
            })
            .await
            .max(sent);
    }
}

#[tokio::test]
async fn a_container_restart_is_reported_with_its_exit_and_its_next_run_followed() {
    let mut h = Harness::new(600).await;
    let spec = h.spec(1, 1, "hello");
    let placement = h.start(&spec).await;
    lines_sent(&mut h, 2).await;
    let pod = h.pods_of(1)[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();

    h.api.crash(NS, &pod, 137, "OOMKilled");
    let (exit, last_lines) = h
        .event("exit", |e| match e {
            TargetEvent::Exited {
                instance_id,
                exit,
                restarts: 0,
                crash_loop: false,
                restart_in,
                last_lines,
            } if *instance_id == spec.instance_id && restart_in.is_zero() => {
                Some((exit.clone(), last_lines.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(
        exit,
        format!("container app of pod {pod}: exit code 137 (OOMKilled)")
    );
    assert_eq!(last_lines, vec!["listening on :8080", "release v1 up"]);
    let restarted = h
        .event("restart", |e| match e {
            TargetEvent::Restarted {
                instance_id,
                placement,
                restarts,
            } if *instance_id == spec.instance_id => Some((placement.clone(), *restarts)),
            _ => None,
        })
        .await;
    // The same pod: the same address.
    assert_eq!(restarted, (placement, 1));
    h.event("health of the new run", |e| match e {
        TargetEvent::Health {
            instance_id,
            restarts: 1,
            healthy: true,
            ..
        } if *instance_id == spec.instance_id => Some(()),
        _ => None,
    })
    .await;
    // The new run's log is followed, its lines numbered after the first run's.
    let (first_seq, lines) = h
        .event("the new run's output", |e| match e {
            TargetEvent::Logs {
                first_seq, lines, ..
            } if lines
                .iter()
                .any(|l| l.line == "release v1 up again (restart 1)") =>
            {
                Some((*first_seq, lines.clone()))
            }
            _ => None,
        })
        .await;
    assert_eq!(first_seq, 2, "{lines:?}");
    assert_eq!(lines[0].line, "listening on :8080");
    // Still one instance on one pod.
    assert_eq!(h.pods_of(1).len(), 1);
    assert_eq!(h.target.supervised().len(), 1);

    // Its next exit makes the kubelet back off: a crash loop, with the exit and the back-off.
    h.api.crash_loop(NS, &pod, 3);
    let (exit, restart_in) = h
        .event("crash loop", |e| match e {
            TargetEvent::Exited {
                instance_id,
                exit,
                restarts: 1,
                crash_loop: true,
                restart_in,
                ..
            } if *instance_id == spec.instance_id => Some((exit.clone(), *restart_in)),
            _ => None,
        })
        .await;
    assert!(
        exit.starts_with(&format!(
            "container app of pod {pod}: exit code 3 (Error); CrashLoopBackOff: back-off 10s"
        )),
        "{exit}"
    );
    assert_eq!(restart_in, Duration::from_secs(10));
}

#[tokio::test]
async fn a_crash_looping_pod_fails_its_instance_long_before_the_progress_deadline() {
    // Ten minutes of deadline; the events are waited for 15 s at most.
    let mut h = Harness::new(600).await;
    let spec = h.spec(1, 1, "hello");
    h.api.crashing(&spec.image);
    h.start(&spec).await;
    let exit = h
        .event("crash loop", |e| match e {
            TargetEvent::Exited {
                instance_id,
                exit,
                crash_loop: true,
                ..
            } if *instance_id == spec.instance_id => Some(exit.clone()),
            _ => None,
        })
        .await;
    assert!(exit.contains("exit code 1 (Error)"), "{exit}");
    assert!(exit.contains("CrashLoopBackOff: back-off"), "{exit}");
    assert!(!exit.contains("not ready after"), "{exit}");
    let detail = h
        .event("unhealthy", |e| match e {
            // Sent on a change and on every tick (with the pod's latest reason).
            TargetEvent::Health {
                instance_id,
                healthy: false,
                detail,
                ..
            } if *instance_id == spec.instance_id && detail.contains("CrashLoopBackOff") => {
                Some(detail.clone())
            }
            _ => None,
        })
        .await;
    assert!(
        detail.contains("container app: CrashLoopBackOff"),
        "{detail}"
    );
}
