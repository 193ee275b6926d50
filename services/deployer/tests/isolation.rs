//! Instances of two services on the process target, with uids from the deployer's database as
//! when the deployer runs as root: each service runs as its own uid with no supplementary
//! groups, and an instance can read neither the other service's files (its home, its unpacked
//! release, the deployer's output files) nor any other process's environment; its own
//! environment holds nothing of the deployer's.
//!
//! The deployer's environment is this test process's. To have a secret in it that the test
//! knows, the isolation test runs itself again as a child process with a marker variable set
//! (the workspace forbids `unsafe`, so `set_var` is not an option).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;
use slipway_deployer::db::uids::PgUids;
use slipway_deployer::target::process::{
    ProcessSettings, ProcessTarget, UidRange, Users, running_as_root, scope_instances,
};
use slipway_deployer::target::{InstanceSpec, Placement, Target};
use slipway_ids::ServiceId;
use slipway_testkit::wait_until;
use sqlx::PgPool;
use tokio::sync::mpsc::unbounded_channel;
use uuid::Uuid;

/// Set in the child run's environment, i.e. the deployer's: must never reach an instance.
const MARKER: &str = "SLIPWAY_ISOLATION_TEST_SECRET";
const TEST: &str = "instances_of_two_services_cannot_see_each_other_or_the_deployer";
/// Far from the default range, so other tests' services do not share these uids.
const RANGE: &str = "64100-64199";

/// Answers who it runs as, its environment, and whether it can read a path.
const APP: &str = r#"
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import urlparse, parse_qs

def attempt(path):
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        return {"ok": True}
    except OSError as e:
        return {"ok": False, "errno": e.errno, "error": e.strerror}

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/id":
            body = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
        elif url.path == "/env":
            body = dict(os.environ)
        else:
            body = attempt(parse_qs(url.query)["path"][0])
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

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
        "config": {"Cmd": ["python3", "-u", "app.py"], "Env": ["FROM_IMAGE=yes"], "WorkingDir": "/app"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let config = Config::oci_v1(serde_json::to_vec(&config).unwrap(), None);
    let layers = vec![ImageLayer::oci_v1_gzip(gz.finish().unwrap(), None)];
    let manifest = OciImageManifest::build(&layers, &config, None);
    let repository = format!("test/isolation-{}", Uuid::new_v4().simple());
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

/// Kills whatever still runs in the scope and removes the workdir, passed or not.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (_, run) in scope_instances(&self.0) {
            for pid in run.members() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn workdir() -> (ProcessSettings, Cleanup) {
    let dir = std::env::temp_dir().join(format!("slipway-isolation-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let scope = dir.canonicalize().unwrap();
    let mut settings = ProcessSettings::new(&scope);
    settings.uid_range = RANGE.parse().unwrap();
    settings.stop_grace_seconds = 2;
    (settings, Cleanup(scope))
}

async fn database() -> PgPool {
    slipway_testkit::fresh_database("deployer")
        .await
        .connect_and_migrate(&sqlx::migrate!("./migrations"))
        .await
        .unwrap()
}

fn spec(image: &str, service_id: ServiceId, name: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: Uuid::new_v4(),
        service_id,
        service_name: name.into(),
        environment: "prod".into(),
        release: 1,
        config_version: 1,
        image: image.into(),
        run: None,
        env: BTreeMap::from([("SERVICE_SECRET".to_owned(), format!("{name}-secret"))]),
    }
}

/// `GET <path>` on the instance, once it listens.
async fn ask(placement: &Placement, path: &str) -> Value {
    let url = format!("http://{}{path}", placement.address);
    let up = wait_until(Duration::from_secs(15), || async {
        reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(up, "{url} never answered");
    reqwest::get(&url).await.unwrap().json().await.unwrap()
}

/// Whether the instance can read `path` (a file or a directory listing).
async fn can_read(placement: &Placement, path: &Path) -> bool {
    let encoded: String = url_escape(&path.to_string_lossy());
    let answer = ask(placement, &format!("/read?path={encoded}")).await;
    if answer["ok"] == false {
        assert_eq!(
            answer["errno"], 13,
            "refused for lack of permission: {answer}"
        );
    }
    answer["ok"] == true
}

fn url_escape(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn instances_of_two_services_cannot_see_each_other_or_the_deployer() {
    let Some(marker) = std::env::var_os(MARKER) else {
        // Again, as a child whose environment (the deployer's) holds the marker.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(MARKER, format!("secret-{}", Uuid::new_v4()))
            .status()
            .unwrap();
        assert!(status.success(), "the isolation test failed: {status}");
        return;
    };
    let marker = marker.into_string().unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            if running_as_root() {
                isolated(&marker).await;
            } else {
                shared_without_root().await;
            }
        });
}

async fn isolated(marker: &str) {
    let image = push_image().await;
    let hex = image.rsplit_once("sha256:").unwrap().1.to_owned();
    let (settings, cleanup) = workdir();
    let scope = cleanup.0.clone();
    let range: UidRange = RANGE.parse().unwrap();
    let uids = Arc::new(PgUids::new(database().await, range));
    let (tx, _rx) = unbounded_channel();
    let target = ProcessTarget::new(settings, tx, Users::PerService(uids.clone())).unwrap();

    let (alpha, beta) = (ServiceId::new(), ServiceId::new());
    let a_spec = spec(&image, alpha, "alpha");
    let b_spec = spec(&image, beta, "beta");
    let (a_id, b_id) = (a_spec.instance_id, b_spec.instance_id);
    let a = target.start(a_spec).await.unwrap();
    let b = target.start(b_spec).await.unwrap();

    // Different uids from the range, gid = uid, none of root's groups; the same uid next time.
    let (a_who, b_who) = (ask(&a, "/id").await, ask(&b, "/id").await);
    let uid = |who: &Value| who["uid"].as_u64().unwrap() as u32;
    assert_ne!(uid(&a_who), uid(&b_who), "{a_who} {b_who}");
    for who in [&a_who, &b_who] {
        assert!(range.contains(uid(who)), "{who}");
        assert_eq!(who["gid"], who["uid"], "{who}");
        let groups: Vec<u64> = serde_json::from_value(who["groups"].clone()).unwrap();
        assert!(
            groups.iter().all(|g| *g == who["gid"]),
            "no supplementary groups: {who}"
        );
    }
    assert_eq!(
        uids.uid(alpha).await.unwrap(),
        uid(&a_who),
        "kept per service"
    );
    let b_proc = PathBuf::from(format!("/proc/{}", b.pid().unwrap()));
    assert_eq!(std::fs::metadata(&b_proc).unwrap().uid(), uid(&b_who));

    // Private directories: 0700 and the service's own.
    let home = |id: Uuid| scope.join("homes").join(id.to_string());
    let b_home = std::fs::metadata(home(b_id)).unwrap();
    assert_eq!((b_home.uid(), b_home.mode() & 0o777), (uid(&b_who), 0o700));
    let release = |name: &str| scope.join("releases").join(name).join(&hex);

    // Positive controls: its own home and its own code.
    assert!(can_read(&a, &home(a_id)).await);
    assert!(can_read(&a, &release("alpha").join("app/app.py")).await);
    // Nothing of the other service's, nor of the deployer's.
    let out_of_reach = [
        home(b_id),
        release("beta").join("app/app.py"),
        release("beta"),
        b_proc.join("environ"),
        PathBuf::from(format!("/proc/{}/environ", std::process::id())),
        scope
            .join("instances")
            .join(b_id.to_string())
            .join("stdout.log"),
        scope
            .join("instances")
            .join(a_id.to_string())
            .join("instance.json"),
        scope.join("releases"),
    ];
    for path in out_of_reach {
        assert!(!can_read(&a, &path).await, "alpha read {}", path.display());
    }

    // The environment: the release's config and what the target sets; none of the deployer's.
    let env: HashMap<String, String> = serde_json::from_value(ask(&a, "/env").await).unwrap();
    assert_eq!(env["SERVICE_SECRET"], "alpha-secret");
    assert_eq!(env["HOME"], home(a_id).display().to_string());
    assert_eq!(env["PATH"], ProcessSettings::new("/").path);
    assert_eq!(env["SLIPWAY_INSTANCE"], a_id.to_string());
    assert!(
        !env.values().any(|v| v == marker),
        "the marker leaked: {env:?}"
    );
    let deployers: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("SLIPWAY_"))
        .collect();
    assert!(deployers.iter().any(|k| k == MARKER));
    for name in &deployers {
        assert!(!env.contains_key(name), "{name} leaked from the deployer");
    }
    let mut names: Vec<&str> = env.keys().map(String::as_str).collect();
    names.sort_unstable();
    let expected = [
        "FROM_IMAGE",
        "HOME",
        "PATH",
        "PORT",
        "SERVICE_SECRET",
        "SLIPWAY_ENVIRONMENT",
        "SLIPWAY_INSTANCE",
        "SLIPWAY_RELEASE",
        "SLIPWAY_SERVICE",
    ];
    // Python itself may add `LC_CTYPE` when it coerces the C locale.
    names.retain(|n| *n != "LC_CTYPE");
    assert_eq!(names, expected);

    target.stop(a_id, Duration::from_secs(2)).await.unwrap();
    target.stop(b_id, Duration::from_secs(2)).await.unwrap();
    assert!(!home(a_id).exists(), "a stopped instance's home is removed");
}

/// Without root there is one user for all: the target refuses per-service users, and instances
/// run as the deployer's own user (what the start-up warning says).
async fn shared_without_root() {
    let image = push_image().await;
    let (settings, _cleanup) = workdir();
    let uids = Arc::new(PgUids::new(database().await, RANGE.parse().unwrap()));
    let (tx, _rx) = unbounded_channel();
    let refused = ProcessTarget::new(settings.clone(), tx.clone(), Users::PerService(uids));
    assert!(refused.err().unwrap().to_string().contains("root"));
    let target = ProcessTarget::new(settings, tx, Users::Shared).unwrap();
    let a = target
        .start(spec(&image, ServiceId::new(), "alpha"))
        .await
        .unwrap();
    let who = ask(&a, "/id").await;
    assert_eq!(who["uid"], u64::from(nix::unistd::getuid().as_raw()));
}

#[tokio::test]
async fn uids_are_allocated_once_per_service_and_never_shared() {
    let pool = database().await;
    let range: UidRange = "64200-64207".parse().unwrap();
    let services: Vec<ServiceId> = (0..6).map(|_| ServiceId::new()).collect();
    // Concurrent allocations, each service asked for twice at once.
    let mut tasks = Vec::new();
    for service in services.iter().chain(services.iter()) {
        let uids = PgUids::new(pool.clone(), range);
        let service = *service;
        tasks.push(tokio::spawn(async move {
            (service, uids.uid(service).await.unwrap())
        }));
    }
    let mut given: HashMap<ServiceId, u32> = HashMap::new();
    for task in tasks {
        let (service, uid) = task.await.unwrap();
        assert!(range.contains(uid), "{uid}");
        let first = *given.entry(service).or_insert(uid);
        assert_eq!(first, uid, "one uid per service");
    }
    let mut distinct: Vec<u32> = given.values().copied().collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), services.len(), "no uid shared: {given:?}");

    // The range runs out: a clear error, not a shared uid.
    let uids = PgUids::new(pool.clone(), range);
    let mut last = Ok(0);
    for _ in 0..4 {
        last = uids.uid(ServiceId::new()).await;
    }
    assert!(last.unwrap_err().contains("uid_range"));
}
