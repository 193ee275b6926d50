//! What the process target's tests share: the test image, workdirs, specs and event readers.

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
use slipway_deployer::target::process::{ProcessSettings, scope_instances};
use slipway_deployer::target::{InstanceSpec, Placement, TargetEvent};
use slipway_events::slipway::{Command, RunSpec};
use slipway_ids::ServiceId;
use slipway_testkit::wait_until;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;
use uuid::Uuid;

/// Serves its environment as JSON and says so on stdout (and once on stderr).
pub const APP: &str = r#"
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
pub async fn push_image() -> String {
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

/// Pushes the test app the way the builder makes an image on a base: a "base" layer (a root
/// filesystem the host must not get) + the service layer annotated `dev.slipway.layer:
/// service`, under a config carrying the base's `PATH` and the base label.
pub async fn push_based_image() -> String {
    fn gzip_tar(files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, *data).unwrap();
        }
        let raw = tar.into_inner().unwrap();
        let diff_id = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw))
        );
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&raw).unwrap();
        (gz.finish().unwrap(), diff_id)
    }
    let registry = slipway_testkit::oci_registry();
    let (base, base_id) = gzip_tar(&[
        ("base-only.txt", b"from the base"),
        ("usr/bin/tool", b"#!/bin/sh\n"),
        (
            "app/app.py",
            b"raise SystemExit('the base layer was unpacked')",
        ),
    ]);
    let (service, service_id) = gzip_tar(&[("app/app.py", APP.as_bytes())]);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": ["python3", "-u", "app.py"],
            "Env": ["PATH=/base/only/bin", "PORT=8080", "FROM_IMAGE=yes"],
            "WorkingDir": "/app",
            "User": "10001:10001",
            "Labels": { "org.opencontainers.image.base.digest": format!("sha256:{}", "b".repeat(64)) },
        },
        "rootfs": { "type": "layers", "diff_ids": [base_id, service_id] },
    });
    let config = Config::oci_v1(serde_json::to_vec(&config).unwrap(), None);
    let annotated =
        std::collections::BTreeMap::from([("dev.slipway.layer".to_owned(), "service".to_owned())]);
    let layers = vec![
        ImageLayer::oci_v1_gzip(base, None),
        ImageLayer::oci_v1_gzip(service, Some(annotated)),
    ];
    let manifest = OciImageManifest::build(&layers, &config, None);
    let repository = format!("test/based-{}", Uuid::new_v4().simple());
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
pub struct Cleanup {
    pub scope: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (_, run) in scope_instances(&self.scope) {
            for pid in run.members() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.scope);
    }
}

/// A fresh workdir and its guard.
pub fn workdir() -> (ProcessSettings, Cleanup) {
    let dir = std::env::temp_dir().join(format!("slipway-process-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let scope = dir.canonicalize().unwrap();
    let mut settings = ProcessSettings::new(&scope);
    settings.restart_initial_ms = 100;
    settings.stop_grace_seconds = 2;
    settings.log_batch_ms = 50;
    (settings, Cleanup { scope })
}

pub fn spec(image: &str, command: Option<&[&str]>) -> InstanceSpec {
    InstanceSpec {
        instance_id: Uuid::new_v4(),
        service_id: ServiceId::new(),
        service_name: "pytest".into(),
        environment: "staging".into(),
        release: 3,
        config_version: 1,
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
pub struct Events {
    rx: UnboundedReceiver<TargetEvent>,
    /// `(instance, first_seq, lines)` per batch.
    pub logs: Vec<(Uuid, u64, Vec<String>)>,
}

impl Events {
    pub fn new(rx: UnboundedReceiver<TargetEvent>) -> Self {
        Self {
            rx,
            logs: Vec::new(),
        }
    }

    /// The next event `pick` accepts (log batches are recorded on the way).
    pub async fn next<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&TargetEvent) -> Option<T>,
    ) -> T {
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
    pub fn drain(&mut self) {
        while self.rx.try_recv().is_ok() {}
    }

    /// Events other than log batches received within `window`.
    pub async fn others_within(&mut self, window: Duration) -> Vec<TargetEvent> {
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
    pub async fn line(&mut self, instance: Uuid, needle: &str) {
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

    pub fn lines(&self, instance: Uuid) -> Vec<String> {
        self.logs
            .iter()
            .filter(|(id, _, _)| *id == instance)
            .flat_map(|(_, _, lines)| lines.clone())
            .collect()
    }

    /// The `first_seq` of every batch of `instance`, with the batch's length.
    pub fn batches(&self, instance: Uuid) -> Vec<(u64, usize)> {
        self.logs
            .iter()
            .filter(|(id, _, _)| *id == instance)
            .map(|(_, seq, lines)| (*seq, lines.len()))
            .collect()
    }
}

/// The instance's environment, as its HTTP server reports it (waits for it to listen).
pub async fn env_of(address: &str) -> HashMap<String, String> {
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

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The instances with a running process in `scope`, by their run records.
pub fn instances(scope: &Path) -> std::collections::BTreeSet<Uuid> {
    scope_instances(scope)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

pub fn pid(placement: &Placement) -> u32 {
    placement.pid().unwrap()
}
