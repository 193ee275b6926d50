//! What the Docker target's tests share: the engine check, the test images, settings with a
//! scope and network of their own, specs, event readers and the cleanup guard.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use slipway_deployer::target::docker::{DockerSettings, DockerTarget, SCOPE_LABEL};
use slipway_deployer::target::{InstanceSpec, Lease, TargetEvent};
use slipway_ids::ServiceId;
use slipway_testkit::wait_until;
use tokio::sync::OnceCell;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;
use uuid::Uuid;

/// What every container and image of these tests carries.
pub const TEST_LABEL: &str = "dev.slipway.test=docker-target";
const APP: &str = include_str!("app.py");

/// Runs the Docker CLI; answers its stdout. Fails the test with the engine's words.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Fails with a clear message when no Docker Engine answers.
pub fn require_engine() {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "no Docker Engine answers (these tests need one): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("no Docker CLI to reach a Docker Engine (these tests need one): {e}"),
    }
}

/// The test images in the throwaway registry, pinned by digest.
pub struct Images {
    /// The app on the Debian base image.
    pub app: String,
    /// The app alone (one layer, no base): what the builder makes without a base image.
    pub service_only: String,
    /// The base image, when the build pulled it into the engine (removed at the end).
    pulled_base: Option<String>,
}

static IMAGES: OnceCell<Images> = OnceCell::const_new();
/// Tests alive: the last one to end removes the images from the engine.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

fn build_and_push(dockerfile: &str, base: &str, name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("slipway-docker-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.join("app.py"), APP).unwrap();
    let registry = slipway_testkit::oci_registry();
    let tag = format!("{registry}/test/{name}-{}:v1", Uuid::new_v4().simple());
    let base_digest = base.split_once('@').map_or("", |(_, d)| d);
    let dir_arg = dir.to_str().unwrap();
    docker(&[
        "build",
        "--quiet",
        "--label",
        TEST_LABEL,
        "--build-arg",
        &format!("BASE={base}"),
        "--build-arg",
        &format!("BASE_DIGEST={base_digest}"),
        "-t",
        &tag,
        dir_arg,
    ]);
    docker(&["push", "--quiet", &tag]);
    let repository = tag.rsplit_once(':').unwrap().0;
    let digests = docker(&[
        "image",
        "inspect",
        "--format",
        "{{join .RepoDigests \"\\n\"}}",
        &tag,
    ]);
    let pinned = digests
        .lines()
        .find(|d| d.starts_with(&format!("{repository}@")))
        .unwrap_or_else(|| panic!("no digest of {tag} after the push: {digests}"))
        .to_owned();
    // Gone from the engine: the target has to pull it.
    docker(&["rmi", "--force", &tag]);
    let _ = std::fs::remove_dir_all(&dir);
    pinned
}

pub async fn images() -> &'static Images {
    IMAGES
        .get_or_init(|| async {
            let base = std::env::var("SLIPWAY_TEST_BASE_IMAGE")
                .expect("SLIPWAY_TEST_BASE_IMAGE is set (scripts/test pushes the base image)");
            let present = Command::new("docker")
                .args(["image", "inspect", &base])
                .output()
                .is_ok_and(|o| o.status.success());
            let app = build_and_push(
                "ARG BASE\nFROM ${BASE}\nARG BASE\nARG BASE_DIGEST\n\
                 COPY --chown=10001:10001 app.py /app/app.py\nWORKDIR /app\n\
                 ENV PORT=8080 FROM_IMAGE=yes\nEXPOSE 8080\nUSER 10001:10001\n\
                 LABEL dev.slipway.port-env=PORT dev.slipway.health-path=/ \
                 org.opencontainers.image.base.name=${BASE} \
                 org.opencontainers.image.base.digest=${BASE_DIGEST}\n\
                 CMD [\"python3\", \"-u\", \"app.py\"]\n",
                &base,
                "docker-target",
            );
            let service_only = build_and_push(
                "FROM scratch\nCOPY app.py /app/app.py\nWORKDIR /app\n\
                 CMD [\"python3\", \"-u\", \"app.py\"]\n",
                &base,
                "docker-service-only",
            );
            Images {
                app,
                service_only,
                pulled_base: (!present).then_some(base),
            }
        })
        .await
}

/// Removes the scope's containers and network when the test ends, passed or not.
pub struct Cleanup {
    pub scope: String,
    pub network: String,
}

impl Cleanup {
    fn new(scope: String, network: String) -> Self {
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        Self { scope, network }
    }

    /// The containers of the scope, by id (`all`: stopped ones too).
    pub fn containers(&self, all: bool) -> Vec<String> {
        let filter = format!("label={SCOPE_LABEL}={}", self.scope);
        let mut args = vec!["ps", "-q", "--no-trunc", "--filter", &filter];
        if all {
            args.push("-a");
        }
        docker(&args).lines().map(str::to_owned).collect()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = self.containers(true);
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = Command::new("docker").args(&args).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
        if ACTIVE.fetch_sub(1, Ordering::SeqCst) == 1
            && let Some(images) = IMAGES.get()
        {
            let mut args = vec!["rmi", "--force", &images.app, &images.service_only];
            args.extend(images.pulled_base.as_deref());
            let _ = Command::new("docker").args(&args).output();
        }
    }
}

/// Settings of a scope and network of their own, with quick restarts and stops.
pub fn settings() -> (DockerSettings, Cleanup) {
    require_engine();
    let run = Uuid::new_v4().simple().to_string();
    let scope = format!("slipway-test-{}", &run[..12]);
    let network = format!("{scope}-net");
    let settings = DockerSettings {
        scope: scope.clone(),
        network: Some(network.clone()),
        labels: BTreeMap::from([("dev.slipway.test".to_owned(), "docker-target".to_owned())]),
        restart_initial_ms: 100,
        stop_grace_seconds: 2,
        log_batch_ms: 50,
        cpus: 0.5,
        memory_mb: 128,
        ..Default::default()
    };
    (settings, Cleanup::new(scope, network))
}

pub async fn connect(settings: DockerSettings) -> (DockerTarget, Events) {
    let (tx, rx) = unbounded_channel();
    let target = DockerTarget::connect(settings, tx, Lease::default(), "replica-test".into())
        .await
        .unwrap_or_else(|e| panic!("the Docker target cannot reach the engine: {e}"));
    (target, Events::new(rx))
}

pub fn spec(image: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: Uuid::new_v4(),
        service_id: ServiceId::new(),
        service_name: "pytest".into(),
        environment: "staging".into(),
        release: 3,
        config_version: 1,
        image: image.into(),
        run: None,
        env: BTreeMap::from([("GREETING".to_owned(), "hello-secret-value".to_owned())]),
    }
}

/// `GET http://{address}{path}`'s body, once the instance answers.
pub async fn get(address: &str, path: &str) -> String {
    let url = format!("http://{address}{path}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let up = wait_until(Duration::from_secs(20), || async {
        client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(up, "{url} never answered");
    client.get(&url).send().await.unwrap().text().await.unwrap()
}

/// The instance's environment as it reports it.
pub async fn env_of(address: &str) -> BTreeMap<String, String> {
    get(address, "/env")
        .await
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `docker inspect` of a container, as JSON.
pub fn inspect(container: &str) -> serde_json::Value {
    let json = docker(&["inspect", container]);
    let mut all: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    all.remove(0)
}

/// The container of `instance` in the scope.
pub fn container_of(cleanup: &Cleanup, instance: Uuid) -> String {
    let filter = format!("label=dev.slipway.instance={instance}");
    let scope = format!("label={SCOPE_LABEL}={}", cleanup.scope);
    let ids = docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &scope,
        "--filter",
        &filter,
    ]);
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 1, "one container for {instance}: {ids:?}");
    ids[0].to_owned()
}

/// The instances whose container runs in the scope, by their labels.
pub fn running_instances(cleanup: &Cleanup) -> HashSet<Uuid> {
    cleanup
        .containers(false)
        .iter()
        .map(|c| {
            inspect(c)["Config"]["Labels"]["dev.slipway.instance"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
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
        let deadline = Instant::now() + Duration::from_secs(30);
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

    /// Records what was sent so far.
    pub fn pump(&mut self) {
        while let Ok(event) = self.rx.try_recv() {
            if let TargetEvent::Logs {
                instance_id,
                first_seq,
                lines,
            } = &event
            {
                let text = lines.iter().map(|l| l.line.clone()).collect();
                self.logs.push((*instance_id, *first_seq, text));
            }
        }
    }

    /// Waits until `instance` wrote `count` lines equal to `line`.
    pub async fn lines_equal(&mut self, instance: Uuid, line: &str, count: usize) {
        while self.lines(instance).iter().filter(|l| *l == line).count() < count {
            self.next(&format!("{count} lines `{line}`"), |e| match e {
                TargetEvent::Logs { instance_id, .. } if *instance_id == instance => Some(()),
                _ => None,
            })
            .await;
        }
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

    /// `(first_seq, len)` of every batch of `instance`.
    pub fn batches(&self, instance: Uuid) -> Vec<(u64, usize)> {
        self.logs
            .iter()
            .filter(|(id, _, _)| *id == instance)
            .map(|(_, seq, lines)| (*seq, lines.len()))
            .collect()
    }

    /// The next `Exited` of `instance`: `(exit, restarts, crash_loop, last_lines)`.
    pub async fn exited(&mut self, instance: Uuid) -> (String, u32, bool, Vec<String>) {
        self.next("Exited", |e| match e {
            TargetEvent::Exited {
                instance_id,
                exit,
                restarts,
                crash_loop,
                last_lines,
                ..
            } if *instance_id == instance => {
                Some((exit.clone(), *restarts, *crash_loop, last_lines.clone()))
            }
            _ => None,
        })
        .await
    }

    /// The next `Restarted` of `instance`: `(address, restarts)`.
    pub async fn restarted(&mut self, instance: Uuid) -> (String, u32) {
        self.next("Restarted", |e| match e {
            TargetEvent::Restarted {
                instance_id,
                placement,
                restarts,
            } if *instance_id == instance => Some((placement.address.clone(), *restarts)),
            _ => None,
        })
        .await
    }
}
