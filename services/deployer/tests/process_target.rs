//! The process target against a real OCI registry and real child processes: an image with a tiny
//! Python HTTP server is pushed, then started, killed, crash-looped, stopped and recovered by a
//! second target on the same workdir (a deployer restart).
//!
//! Every test owns a fresh workdir and a [`Cleanup`] guard that SIGKILLs whatever still runs in
//! its scope, so a failing test leaves no process behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use slipway_deployer::target::process::{ProcessSettings, ProcessTarget, Users, scope_processes};
use slipway_deployer::target::{InstanceSpec, Known, Placement, Target, TargetEvent};
use slipway_events::slipway::{Command, RunSpec};
use slipway_ids::ServiceId;
use slipway_testkit::wait_until;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;
use uuid::Uuid;

/// Serves its environment as JSON and says so on stdout (and once on stderr).
const APP: &str = r#"
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(dict(os.environ)).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        print("served " + self.path, flush=True)

    def log_message(self, *args):
        pass

port = int(os.environ["PORT"])
print("listening on %d" % port, flush=True)
print("ready", file=sys.stderr, flush=True)
HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

/// Pushes the test app as an image shaped like the builder's; answers the pinned reference.
async fn push_image() -> String {
    let registry = slipway_testkit::oci_registry();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(APP.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "app/app.py", APP.as_bytes())
        .unwrap();
    let raw = tar.into_inner().unwrap();
    let diff_id = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw))
    );
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&raw).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": ["python3", "-u", "app.py"],
            "Env": ["SLIPWAY_SERVICE=pytest", "PORT=8080", "FROM_IMAGE=yes"],
            "WorkingDir": "/app",
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let config = Config::oci_v1(serde_json::to_vec(&config).unwrap(), None);
    let layers = vec![ImageLayer::oci_v1_gzip(gz.finish().unwrap(), None)];
    let manifest = OciImageManifest::build(&layers, &config, None);
    let repository = format!("test/process-{}", Uuid::new_v4().simple());
    let reference: Reference = format!("{registry}/{repository}:v1").parse().unwrap();
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let auth = RegistryAuth::Anonymous;
    client
        .push(&reference, &layers, config, &auth, Some(manifest))
        .await
        .unwrap();
    let digest = client
        .fetch_manifest_digest(&reference, &auth)
        .await
        .unwrap();
    format!("{registry}/{repository}@{digest}")
}

/// Kills every process of the scope and removes the workdir when the test ends, passed or not.
struct Cleanup {
    scope: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (pid, _) in scope_processes(&self.scope) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.scope);
    }
}

/// A fresh workdir and its guard.
fn workdir() -> (ProcessSettings, Cleanup) {
    let dir = std::env::temp_dir().join(format!("slipway-process-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let scope = dir.canonicalize().unwrap();
    let mut settings = ProcessSettings::new(&scope);
    settings.restart_initial_ms = 100;
    settings.stop_grace_seconds = 2;
    settings.log_batch_ms = 50;
    (settings, Cleanup { scope })
}

fn spec(image: &str, command: Option<&[&str]>) -> InstanceSpec {
    InstanceSpec {
        instance_id: Uuid::new_v4(),
        service_id: ServiceId::new(),
        service_name: "pytest".into(),
        environment: "staging".into(),
        release: 3,
        image: image.into(),
        run: command.map(|c| RunSpec {
            command: Command::new(c.iter().map(|s| s.to_string()).collect()).unwrap(),
            port_env: "PORT".parse().unwrap(),
            health_path: "/".parse().unwrap(),
        }),
        env: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
    }
}

/// What a target reported, kept so that lines can be checked after the fact.
struct Events {
    rx: UnboundedReceiver<TargetEvent>,
    /// `(instance, first_seq, lines)` per batch.
    logs: Vec<(Uuid, u64, Vec<String>)>,
}

impl Events {
    fn new(rx: UnboundedReceiver<TargetEvent>) -> Self {
        Self {
            rx,
            logs: Vec::new(),
        }
    }

    /// The next event `pick` accepts (log batches are recorded on the way).
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(&TargetEvent) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(event)) => {
                    if let TargetEvent::Logs {
                        instance_id,
                        first_seq,
                        lines,
                    } = &event
                    {
                        let text = lines.iter().map(|l| l.line.clone()).collect();
                        self.logs.push((*instance_id, *first_seq, text));
                    }
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                }
                _ => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Forgets what was sent so far (e.g. before a stop returned).
    fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Events other than log batches received within `window`.
    async fn others_within(&mut self, window: Duration) -> Vec<TargetEvent> {
        let deadline = Instant::now() + window;
        let mut seen = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if !matches!(event, TargetEvent::Logs { .. }) {
                seen.push(event);
            }
        }
        seen
    }

    /// Waits until `instance` wrote a line containing `needle`.
    async fn line(&mut self, instance: Uuid, needle: &str) {
        if self.lines(instance).iter().any(|l| l.contains(needle)) {
            return;
        }
        self.next(&format!("a line with `{needle}`"), |e| match e {
            TargetEvent::Logs {
                instance_id, lines, ..
            } if *instance_id == instance => {
                lines.iter().any(|l| l.line.contains(needle)).then_some(())
            }
            _ => None,
        })
        .await
    }

    fn lines(&self, instance: Uuid) -> Vec<String> {
        self.logs
            .iter()
            .filter(|(id, _, _)| *id == instance)
            .flat_map(|(_, _, lines)| lines.clone())
            .collect()
    }

    /// The `first_seq` of every batch of `instance`, with the batch's length.
    fn batches(&self, instance: Uuid) -> Vec<(u64, usize)> {
        self.logs
            .iter()
            .filter(|(id, _, _)| *id == instance)
            .map(|(_, seq, lines)| (*seq, lines.len()))
            .collect()
    }
}

/// The instance's environment, as its HTTP server reports it (waits for it to listen).
async fn env_of(address: &str) -> HashMap<String, String> {
    let url = format!("http://{address}/env");
    let up = wait_until(Duration::from_secs(15), || async {
        reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(up, "{url} never answered");
    reqwest::get(&url).await.unwrap().json().await.unwrap()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The instances with a process in `scope` (an instance may briefly have several processes
/// while it starts: `python3` here is a pyenv shim that forks helpers before it execs).
fn instances(scope: &Path) -> std::collections::BTreeSet<Uuid> {
    scope_processes(scope)
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

fn pid(placement: &Placement) -> u32 {
    placement.pid.unwrap()
}

#[tokio::test]
async fn an_instance_serves_logs_restarts_after_a_kill_and_stops() {
    let image = push_image().await;
    let (settings, cleanup) = workdir();
    let (tx, rx) = unbounded_channel();
    let target = ProcessTarget::new(settings, tx, Users::Shared).unwrap();
    let mut events = Events::new(rx);
    assert_eq!(target.kind(), "process");

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
    assert_eq!(Path::new(&env["SLIPWAY_TARGET_SCOPE"]), cleanup.scope);
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

    // Stop: the whole group is gone, the run record too, the output stays, nothing restarts.
    target.stop(id, Duration::from_secs(5)).await.unwrap();
    events.drain();
    assert!(!alive(pid(&again)));
    assert!(scope_processes(&cleanup.scope).is_empty());
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
    assert!(scope_processes(&cleanup.scope).is_empty());
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
    assert!(scope_processes(&cleanup.scope).is_empty());
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
    let gone = after
        .recover(vec![known(&keep, &keep_at), known(&dead, &dead_at)])
        .await
        .unwrap();
    assert_eq!(gone, vec![dead.instance_id]);
    assert_eq!(
        scope_processes(&cleanup.scope),
        vec![(pid(&keep_at), keep.instance_id)],
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
    assert!(scope_processes(&cleanup.scope).is_empty());
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
