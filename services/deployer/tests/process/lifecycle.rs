//! Start, output, restart, crash loop, cache, recovery and stop.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use slipway_deployer::target::process::{ProcessTarget, Users, scope_instances};
use slipway_deployer::target::{InstanceSpec, Known, Placement, Target, TargetEvent};
use slipway_testkit::wait_until;
use tokio::sync::mpsc::unbounded_channel;
use tokio::time::Instant;
use uuid::Uuid;

use crate::support::*;

#[tokio::test]
async fn an_instance_serves_logs_restarts_after_a_kill_and_stops() {
    let image = push_image().await;
    let (settings, cleanup) = workdir();
    let (tx, rx) = unbounded_channel();
    let target = ProcessTarget::new(settings, tx, Users::Shared).unwrap();
    let mut events = Events::new(rx);
    assert_eq!(target.kind(), slipway_deployer::target::TargetKind::Process);

    let spec = spec(&image, None);
    let id = spec.instance_id;
    let placement = target.start(spec).await.unwrap();
    assert_eq!(placement.address, format!("127.0.0.1:{}", placement.port));

    let env = env_of(&placement.address).await;
    assert_eq!(env["SLIPWAY_RELEASE"], "v3");
    assert_eq!(env["GREETING"], "hello", "config reaches the instance");
    assert_eq!(env["FROM_IMAGE"], "yes", "the image's Env too");
    assert_eq!(
        env["PORT"],
        placement.port.to_string(),
        "PORT overrides the image's"
    );
    assert_eq!(env["SLIPWAY_INSTANCE"], id.to_string());
    assert!(
        !env.contains_key("SLIPWAY_TARGET_SCOPE"),
        "the deployer's workdir is not the instance's business"
    );
    assert!(
        !env.contains_key("SLIPWAY_TEST_OCI_REGISTRY"),
        "the environment is cleared"
    );

    events.line(id, "served /env").await;
    let lines = events.lines(id);
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("listening on {}", placement.port)),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == "ready"),
        "stderr is captured: {lines:?}"
    );
    let mut expected = 0;
    for (first_seq, len) in events.batches(id) {
        assert_eq!(
            first_seq, expected,
            "batches follow each other without gaps"
        );
        expected += len as u64;
    }

    // A crash: reported with its signal and the last output, then a restart on a new port.
    let first_pid = pid(&placement);
    kill(Pid::from_raw(first_pid as i32), Signal::SIGKILL).unwrap();
    let (exit, restarts, last_lines) = events
        .next("Exited", |e| match e {
            TargetEvent::Exited {
                instance_id,
                exit,
                restarts,
                last_lines,
                ..
            } if *instance_id == id => Some((exit.clone(), *restarts, last_lines.clone())),
            _ => None,
        })
        .await;
    assert_eq!(exit, "killed by signal 9");
    assert_eq!(restarts, 0);
    assert!(
        last_lines.iter().any(|l| l.starts_with("served")),
        "{last_lines:?}"
    );
    let (again, restarts) = events
        .next("Restarted", |e| match e {
            TargetEvent::Restarted {
                instance_id,
                placement,
                restarts,
            } if *instance_id == id => Some((placement.clone(), *restarts)),
            _ => None,
        })
        .await;
    assert_eq!(restarts, 1);
    assert_ne!(pid(&again), first_pid);
    assert_eq!(
        env_of(&again.address).await["SLIPWAY_INSTANCE"],
        id.to_string()
    );
    let record = cleanup.scope.join(format!("instances/{id}/instance.json"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(json["pid"], pid(&again));
    assert_eq!(json["pgid"], pid(&again), "each run leads its own group");
    assert_eq!(
        json["start_time"],
        again.process.as_ref().unwrap().start_time
    );
    assert!(json["boot_id"].as_str().is_some_and(|b| !b.is_empty()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&record).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the run record is the deployer's alone"
    );

    // Stop: the whole group is gone, the run record too, the output stays, nothing restarts.
    target.stop(id, Duration::from_secs(5)).await.unwrap();
    events.drain();
    assert!(!alive(pid(&again)));
    assert!(scope_instances(&cleanup.scope).is_empty());
    assert!(!record.exists());
    assert!(
        cleanup
            .scope
            .join(format!("instances/{id}/stdout.log"))
            .exists()
    );
    let after = events.others_within(Duration::from_millis(800)).await;
    assert!(after.is_empty(), "nothing follows a stop: {after:?}");
    // Stopping what does not run is fine.
    target
        .stop(Uuid::new_v4(), Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn one_digest_is_pulled_once() {
    let image = push_image().await;
    let (settings, cleanup) = workdir();
    let (tx, _rx) = unbounded_channel();
    let target = ProcessTarget::new(settings, tx, Users::Shared).unwrap();

    let (a, b) = (spec(&image, None), spec(&image, None));
    let (ids, started) = (
        (a.instance_id, b.instance_id),
        tokio::join!(target.start(a), target.start(b)),
    );
    let (pa, pb) = (started.0.unwrap(), started.1.unwrap());
    assert_eq!(
        target.pulls(),
        1,
        "concurrent starts of one digest pull once"
    );
    let third = spec(&image, None);
    let third_id = third.instance_id;
    target.start(third).await.unwrap();
    assert_eq!(target.pulls(), 1, "a cached release is not pulled again");
    assert_ne!(pa.port, pb.port);
    assert_eq!(instances(&cleanup.scope).len(), 3);

    for id in [ids.0, ids.1, third_id] {
        target.stop(id, Duration::from_secs(5)).await.unwrap();
    }
    assert!(scope_instances(&cleanup.scope).is_empty());
}

#[tokio::test]
async fn a_crashing_instance_backs_off_into_a_crash_loop_without_spinning() {
    let image = push_image().await;
    let (mut settings, cleanup) = workdir();
    settings.restart_initial_ms = 50;
    settings.restart_max_ms = 400;
    settings.crash_loop_restarts = 4;
    settings.crash_loop_window_seconds = 30;
    let (tx, rx) = unbounded_channel();
    let target = ProcessTarget::new(settings, tx, Users::Shared).unwrap();
    let mut events = Events::new(rx);

    let spec = spec(&image, Some(&["sh", "-c", "echo boom; exit 3"]));
    let id = spec.instance_id;
    target.start(spec).await.unwrap();
    let mut exits = Vec::new();
    for _ in 0..4 {
        exits.push(
            events
                .next("Exited", |e| match e {
                    TargetEvent::Exited {
                        exit,
                        restart_in,
                        crash_loop,
                        last_lines,
                        restarts,
                        ..
                    } => Some((
                        exit.clone(),
                        *restart_in,
                        *crash_loop,
                        last_lines.clone(),
                        *restarts,
                    )),
                    _ => None,
                })
                .await,
        );
    }
    let ms = Duration::from_millis;
    let delays: Vec<_> = exits.iter().map(|e| (e.1, e.2)).collect();
    assert_eq!(
        delays,
        vec![
            (ms(50), false),
            (ms(100), false),
            (ms(200), false),
            (ms(400), true)
        ]
    );
    assert!(exits.iter().all(|e| e.0 == "exit code 3"));
    assert_eq!(
        exits.iter().map(|e| e.4).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(exits[0].3, vec!["boom".to_owned()]);

    // In the loop: restarts go on, at most one per 400 ms.
    let window = events.others_within(Duration::from_millis(1300)).await;
    let looped: Vec<_> = window
        .iter()
        .filter_map(|e| match e {
            TargetEvent::Exited {
                restart_in,
                crash_loop,
                ..
            } => Some((*restart_in, *crash_loop)),
            _ => None,
        })
        .collect();
    assert!((2..=4).contains(&looped.len()), "{looped:?}");
    assert!(looped.iter().all(|l| *l == (ms(400), true)));

    target.stop(id, Duration::from_secs(1)).await.unwrap();
    events.drain();
    let after = events.others_within(Duration::from_millis(700)).await;
    assert!(after.is_empty(), "no restart after a stop: {after:?}");
    assert!(scope_instances(&cleanup.scope).is_empty());
}

#[tokio::test]
async fn a_new_target_adopts_known_instances_kills_orphans_and_reports_the_dead() {
    let image = push_image().await;
    let (settings, cleanup) = workdir();
    let (tx, _old_events) = unbounded_channel();
    let before = ProcessTarget::new(settings.clone(), tx, Users::Shared).unwrap();
    let (keep, dead, orphan) = (spec(&image, None), spec(&image, None), spec(&image, None));
    let keep_at = before.start(keep.clone()).await.unwrap();
    let dead_at = before.start(dead.clone()).await.unwrap();
    let orphan_at = before.start(orphan.clone()).await.unwrap();
    env_of(&keep_at.address).await;
    // The deployer goes away; one of its instances dies meanwhile.
    before.detach().await;
    drop(before);
    assert_eq!(
        instances(&cleanup.scope).len(),
        3,
        "detaching leaves instances running"
    );
    kill(Pid::from_raw(pid(&dead_at) as i32), Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || async { !alive(pid(&dead_at)) }).await);

    let (tx, rx) = unbounded_channel();
    let after = ProcessTarget::new(settings, tx, Users::Shared).unwrap();
    let mut events = Events::new(rx);
    let known = |spec: &InstanceSpec, placement: &Placement| Known {
        spec: spec.clone(),
        placement: placement.clone(),
        restarts: 2,
    };
    let adopted = after
        .adopt(vec![known(&keep, &keep_at), known(&dead, &dead_at)])
        .await
        .unwrap();
    assert_eq!(adopted.dead, vec![dead.instance_id]);
    assert_eq!(adopted.running, vec![(keep.instance_id, keep_at.clone())]);
    let orphans: Vec<Uuid> = after
        .running()
        .into_iter()
        .filter(|id| *id != keep.instance_id)
        .collect();
    assert_eq!(after.sweep(orphans).await, vec![orphan.instance_id]);
    let left: Vec<(Uuid, u32)> = scope_instances(&cleanup.scope)
        .into_iter()
        .map(|(id, p)| (id, p.pid))
        .collect();
    assert_eq!(
        left,
        vec![(keep.instance_id, pid(&keep_at))],
        "the known one is adopted (no second copy), the orphan is stopped"
    );
    assert!(!alive(pid(&orphan_at)));
    assert_eq!(after.pulls(), 0, "adopting needs no artifact");
    assert_eq!(
        env_of(&keep_at.address).await["SLIPWAY_INSTANCE"],
        keep.instance_id.to_string()
    );

    // Its output is read again from the start, with the same numbering.
    events.line(keep.instance_id, "listening on").await;
    assert_eq!(events.batches(keep.instance_id)[0].0, 0);

    // An adopted instance that dies is restarted like any other.
    kill(Pid::from_raw(pid(&keep_at) as i32), Signal::SIGKILL).unwrap();
    let (exit, restarts) = events
        .next("Exited", |e| match e {
            TargetEvent::Exited { exit, restarts, .. } => Some((exit.clone(), *restarts)),
            _ => None,
        })
        .await;
    assert_eq!(
        exit,
        "exited (status unknown: adopted after a deployer restart)"
    );
    assert_eq!(restarts, 2, "the count continues from the known one");
    let (placement, restarts) = events
        .next("Restarted", |e| match e {
            TargetEvent::Restarted {
                placement,
                restarts,
                ..
            } => Some((placement.clone(), *restarts)),
            _ => None,
        })
        .await;
    assert_eq!(restarts, 3);
    env_of(&placement.address).await;
    assert_eq!(after.pulls(), 0, "the release was still unpacked");

    after
        .stop(keep.instance_id, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(scope_instances(&cleanup.scope).is_empty());
}

#[tokio::test]
async fn a_stop_kills_a_group_that_ignores_sigterm_after_the_grace() {
    let image = push_image().await;
    let (settings, cleanup) = workdir();
    let (tx, rx) = unbounded_channel();
    let target = ProcessTarget::new(settings, tx, Users::Shared).unwrap();
    let mut events = Events::new(rx);

    // The shell ignores SIGTERM and keeps a child (`sleep`) in its group.
    let script = "trap '' TERM; echo up; while true; do sleep 0.1; done";
    let spec = spec(&image, Some(&["sh", "-c", script]));
    let id = spec.instance_id;
    target.start(spec).await.unwrap();
    events.line(id, "up").await;

    let asked = Instant::now();
    target.stop(id, Duration::from_millis(600)).await.unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "the grace is given: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "then the group is killed: {took:?}"
    );
    assert!(
        instances(&cleanup.scope).is_empty(),
        "children of the group are gone too"
    );
    events.drain();
    let after = events.others_within(Duration::from_millis(500)).await;
    assert!(after.is_empty(), "no crash report for a stop: {after:?}");
}

/// A "registry" that accepts connections and never answers.
fn hanging_registry() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    format!("{address}/test/hangs@sha256:{}", "a".repeat(64))
}

#[tokio::test]
async fn a_pull_from_a_registry_that_hangs_fails_in_time_and_a_cancelled_one_frees_the_digest() {
    let (mut settings, _cleanup) = workdir();
    settings.pull_timeout_seconds = 1;
    let (tx, _rx) = unbounded_channel();
    let target = ProcessTarget::new(settings, tx, Users::Shared).unwrap();
    let image = hanging_registry();

    let asked = Instant::now();
    let err = target.start(spec(&image, None)).await.unwrap_err();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert!(err.to_string().contains(&image), "{err}");

    // A start given up by its caller (a cancelled deployment drops it) ends its pull and
    // leaves nothing locked: the next start of the same digest gets its own answer.
    let cancelled =
        tokio::time::timeout(Duration::from_millis(200), target.start(spec(&image, None)));
    assert!(cancelled.await.is_err(), "the hanging pull was still going");
    let asked = Instant::now();
    assert!(target.start(spec(&image, None)).await.is_err());
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(target.supervised().is_empty());
}
