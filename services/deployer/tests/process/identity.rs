//! Instances are found by what they cannot rewrite: their run record (pid, process group, start
//! time, boot). An instance that clears its environment and forks is still adopted, swept and
//! stopped with its children, by a new target and by `scripts/down`'s shell functions; a pid
//! reused by an unrelated process is never taken for one.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use slipway_deployer::target::process::{ProcessIdentity, ProcessTarget, Users, scope_instances};
use slipway_deployer::target::{Known, Placement, Target};
use slipway_testkit::wait_until;
use tokio::sync::mpsc::unbounded_channel;
use uuid::Uuid;

use crate::support::*;

/// A shell that forks a child, then both drop their environment (`env -i`), as a program that
/// rewrites its process title overwrites the memory `/proc/<pid>/environ` shows.
const REWRITES: &[&str] = &["sh", "-c", "env -i sleep 1000 & exec env -i sleep 1001"];

/// Waits until the instance's leader has cleared its environment and its child runs; answers
/// every process of its group.
async fn rewritten(placement: &Placement) -> BTreeSet<u32> {
    let run = placement.process.clone().unwrap();
    let ready = wait_until(Duration::from_secs(10), || {
        let run = run.clone();
        async move {
            let environ = std::fs::read(format!("/proc/{}/environ", run.pid)).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", run.pid)).unwrap_or_default();
            environ.is_empty() && cmdline.starts_with(b"sleep") && run.members().len() == 2
        }
    })
    .await;
    assert!(
        ready,
        "the instance never rewrote itself: {:?}",
        run.members()
    );
    run.members().into_iter().collect()
}

fn all_gone(pids: &BTreeSet<u32>) -> bool {
    pids.iter().all(|p| !alive(*p))
}

/// An unrelated process leading its own group, as a pid reused after an instance ended would.
fn unrelated() -> std::process::Child {
    std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Writes a run record for `id` naming `process`, as the deployer does.
fn forge_record(scope: &Path, id: Uuid, process: &ProcessIdentity) {
    let dir = scope.join("instances").join(id.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let record = serde_json::json!({
        "instance": id,
        "pid": process.pid,
        "pgid": process.pgid,
        "start_time": process.start_time,
        "boot_id": process.boot_id,
        "uid": process.uid,
        "port": 1,
        "address": "127.0.0.1:1",
        "started_at": "2026-12-01T00:00:00Z",
    });
    let text = serde_json::to_vec_pretty(&record).unwrap();
    std::fs::write(dir.join("instance.json"), text).unwrap();
}

fn stat_start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned()
}

/// Runs `stop_instances` of `scripts/lib.sh` (what `scripts/down` runs) on `scope`.
fn shell_stop_instances(scope: &Path) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let status = std::process::Command::new("bash")
        .args([
            "-c",
            "set -euo pipefail; source \"$1/scripts/lib.sh\"; stop_instances \"$2\" 2",
            "stop_instances",
        ])
        .arg(&root)
        .arg(scope)
        .status()
        .unwrap();
    assert!(status.success(), "stop_instances failed: {status}");
}

#[tokio::test]
async fn an_instance_that_rewrites_its_environment_is_adopted_swept_and_stopped_with_its_children()
{
    let image = push_image().await;
    let (settings, cleanup) = workdir();
    let (tx, _events) = unbounded_channel();
    let before = ProcessTarget::new(settings.clone(), tx, Users::Shared).unwrap();
    let (kept, orphan) = (spec(&image, Some(REWRITES)), spec(&image, Some(REWRITES)));
    let kept_at = before.start(kept.clone()).await.unwrap();
    let orphan_at = before.start(orphan.clone()).await.unwrap();
    let kept_pids = rewritten(&kept_at).await;
    let orphan_pids = rewritten(&orphan_at).await;
    before.detach().await;
    drop(before);

    let (tx, _events) = unbounded_channel();
    let after = ProcessTarget::new(settings, tx, Users::Shared).unwrap();
    assert_eq!(
        after.running().into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([kept.instance_id, orphan.instance_id]),
        "both are found by their run records"
    );
    let known = Known {
        spec: kept.clone(),
        placement: kept_at.clone(),
        restarts: 0,
    };
    let adopted = after.adopt(vec![known]).await.unwrap();
    assert!(adopted.dead.is_empty(), "{adopted:?}");
    assert_eq!(adopted.running[0].0, kept.instance_id);
    assert!(after.supervised().contains(&kept.instance_id));

    let swept = after.sweep(vec![orphan.instance_id]).await;
    assert_eq!(swept, vec![orphan.instance_id]);
    assert!(all_gone(&orphan_pids), "the orphan's child is gone too");
    assert!(
        kept_pids.iter().all(|p| alive(*p)),
        "the adopted one runs on"
    );

    after
        .stop(kept.instance_id, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(all_gone(&kept_pids), "a stop ends the whole group");
    assert!(scope_instances(&cleanup.scope).is_empty());
}

#[tokio::test]
async fn a_reused_pid_is_never_taken_for_an_instance() {
    let image = push_image().await;
    let (settings, cleanup) = workdir();
    let (tx, _events) = unbounded_channel();
    let target = ProcessTarget::new(settings, tx, Users::Shared).unwrap();
    let mut stranger = unrelated();
    let pid = stranger.id();
    assert!(wait_until(Duration::from_secs(5), || async { alive(pid) }).await);
    let real = ProcessIdentity {
        pid,
        pgid: pid as i32,
        start_time: stat_start_time(pid),
        boot_id: Some(boot_id()),
        uid: None,
    };
    // The pid of an instance that ended, now another process's: another start time; or the
    // same start time counted in another boot.
    let reused = ProcessIdentity {
        start_time: real.start_time - 1,
        ..real.clone()
    };
    let other_boot = ProcessIdentity {
        boot_id: Some(Uuid::new_v4().to_string()),
        ..real.clone()
    };
    let (a, b) = (spec(&image, None), spec(&image, None));
    forge_record(&cleanup.scope, a.instance_id, &reused);
    forge_record(&cleanup.scope, b.instance_id, &other_boot);

    assert!(scope_instances(&cleanup.scope).is_empty());
    assert!(target.running().is_empty());
    assert!(
        target
            .sweep(vec![a.instance_id, b.instance_id])
            .await
            .is_empty()
    );
    let known = |spec: &slipway_deployer::target::InstanceSpec, process: &ProcessIdentity| Known {
        spec: spec.clone(),
        placement: Placement {
            address: "127.0.0.1:1".into(),
            port: 1,
            process: Some(process.clone()),
        },
        restarts: 0,
    };
    // The database's copy alone (no record) must not fool it either.
    std::fs::remove_file(
        cleanup
            .scope
            .join(format!("instances/{}/instance.json", b.instance_id)),
    )
    .unwrap();
    let adopted = target
        .adopt(vec![known(&a, &reused), known(&b, &other_boot)])
        .await
        .unwrap();
    assert_eq!(adopted.dead, vec![a.instance_id, b.instance_id]);
    assert!(adopted.running.is_empty());
    forge_record(&cleanup.scope, a.instance_id, &reused);
    target
        .stop(a.instance_id, Duration::from_millis(200))
        .await
        .unwrap();
    forge_record(&cleanup.scope, b.instance_id, &other_boot);
    shell_stop_instances(&cleanup.scope);
    assert!(alive(pid), "the unrelated process was never signalled");

    // The same process recorded exactly is an instance's: found and stopped.
    forge_record(&cleanup.scope, a.instance_id, &real);
    assert_eq!(target.running(), vec![a.instance_id]);
    shell_stop_instances(&cleanup.scope);
    let _ = stranger.wait();
}

#[tokio::test]
async fn scripts_down_stops_title_rewriting_instances_and_their_children_without_a_deployer() {
    let image = push_image().await;
    let (settings, cleanup) = workdir();
    let (tx, _events) = unbounded_channel();
    let target = ProcessTarget::new(settings, tx, Users::Shared).unwrap();
    let plain = target.start(spec(&image, None)).await.unwrap();
    let rewriting = target.start(spec(&image, Some(REWRITES))).await.unwrap();
    let mut pids = rewritten(&rewriting).await;
    env_of(&plain.address).await;
    pids.insert(pid(&plain));
    // The deployer goes (as `scripts/down` stops it first); the instances stay.
    target.detach().await;
    drop(target);
    assert!(pids.iter().all(|p| alive(*p)));

    shell_stop_instances(&cleanup.scope);
    assert!(all_gone(&pids), "left: {pids:?}");
    assert!(scope_instances(&cleanup.scope).is_empty());
}
