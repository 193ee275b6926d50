//! The platform in containers, really started: `scripts/compose up` (docker-compose.yml with
//! docker-compose.local.yml, every image built here from Debian packages and the binaries this
//! test run built), the sample app (examples/hello-python) deployed through the gateway as
//! `scripts/deploy-sample` does onto the Docker target (a container per instance, on the
//! Python base the stack's registry holds), answering through the edge router, then `down -v`.
//!
//! Its own compose project and published ports, so it cannot collide with another run or a
//! developer's stack; the images stay (content-tagged), so a second run builds nothing that did
//! not change. Needs a Docker Engine: without one it fails saying so, it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `target/<profile>/`, where `cargo build --workspace --bins` put the service binaries.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/compose-<hash>
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"))
}

fn text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Fails the test, clearly, when no Docker Engine answers.
fn engine_answers() {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "no Docker Engine answers (`docker version` failed): this test starts the platform \
             with docker-compose and needs one; it does not skip.\n{}",
            text(&output)
        ),
        Err(e) => panic!(
            "the docker command is not installed ({e}): this test starts the platform with \
             docker-compose on a Docker Engine; it does not skip"
        ),
    }
}

/// One stack: its project name, ports and env file. Dropping it runs `scripts/compose down -v`
/// (containers, networks and volumes of this project; images are kept).
struct ComposeStack {
    project: String,
    dir: PathBuf,
    gateway_port: u16,
    ports: Vec<(&'static str, u16)>,
    down: bool,
}

impl ComposeStack {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let project = format!("slipway-e2e-{}-{nanos:x}", std::process::id());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&project);
        std::fs::create_dir_all(&dir).unwrap();
        let gateway_port = free_port();
        let ports = vec![
            ("SLIPWAY_GATEWAY_PORT", gateway_port),
            ("SLIPWAY_IMAGE_REGISTRY_PORT", free_port()),
            ("SLIPWAY_PROMETHEUS_PORT", free_port()),
            ("SLIPWAY_JAEGER_PORT", free_port()),
        ];
        Self {
            project,
            dir,
            gateway_port,
            ports,
            down: false,
        }
    }

    fn env_file(&self) -> PathBuf {
        self.dir.join("env")
    }

    /// `scripts/compose ARGS` for this stack.
    fn script(&self, args: &[&str]) -> Command {
        let mut command = Command::new(repo_root().join("scripts/compose"));
        command
            .args(args)
            .current_dir(repo_root())
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .env("SLIPWAY_COMPOSE_ENV_FILE", self.env_file())
            .env("SLIPWAY_COMPOSE_BIN_DIR", bin_dir())
            .env("SLIPWAY_SKIP_SAMPLE", "1")
            .env("SLIPWAY_COMPOSE_WAIT", "240");
        for (variable, port) in &self.ports {
            command.env(variable, port.to_string());
        }
        command
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    fn token(&self) -> String {
        let env = std::fs::read_to_string(self.env_file()).unwrap();
        env.lines()
            .filter_map(|line| line.strip_prefix("SLIPWAY_TOKEN="))
            .next_back()
            .expect("scripts/compose writes SLIPWAY_TOKEN into the env file")
            .to_owned()
    }

    /// `scripts/compose down -v`; whether it succeeded, and what it said.
    fn down(&mut self) -> (bool, String) {
        self.down = true;
        let output = run(&mut self.script(&["down", "-v"]));
        (output.status.success(), text(&output))
    }

    /// The running containers the deployer's Docker target made for this stack (its scope is
    /// the project name) for the sample app, one line each.
    fn instances(&self) -> String {
        let scope = format!("label=dev.slipway.scope={}", self.project);
        let output = run(Command::new("docker").args([
            "ps",
            "-q",
            "--filter",
            &scope,
            "--filter",
            "label=dev.slipway.service=hello",
        ]));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// What docker lists of this project: `docker ARGS... --filter label=<project>`.
    fn leftovers(&self, args: &[&str]) -> String {
        let filter = format!("label=com.docker.compose.project={}", self.project);
        let output = run(Command::new("docker")
            .args(args)
            .args(["--filter", &filter]));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for ComposeStack {
    fn drop(&mut self) {
        if !self.down {
            let (ok, said) = self.down();
            if !ok {
                eprintln!("scripts/compose down -v failed:\n{said}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_runs_in_compose_and_deploys_the_sample_app_through_the_gateway() {
    engine_answers();
    let started = Instant::now();
    let mut stack = ComposeStack::new();

    let up = run(&mut stack.script(&["up"]));
    if !up.status.success() {
        let logs = run(&mut stack.script(&["logs", "--tail", "40"]));
        panic!(
            "scripts/compose up failed ({}):\n{}\n--- logs ---\n{}",
            up.status,
            text(&up),
            text(&logs)
        );
    }
    eprintln!("stack up after {:?}", started.elapsed());

    // The sample app, through the gateway, as scripts/up deploys it.
    let sample = run(Command::new(repo_root().join("scripts/deploy-sample"))
        .env("SLIPWAY_URL", stack.url())
        .env("SLIPWAY_TOKEN", stack.token())
        .env("SLIPWAY_SAMPLE_TARGET", "docker"));
    if !sample.status.success() {
        let logs = run(&mut stack.script(&["logs", "--tail", "60", "builder", "deployer"]));
        panic!(
            "scripts/deploy-sample failed ({}):\n{}\n--- logs ---\n{}",
            sample.status,
            text(&sample),
            text(&logs)
        );
    }
    eprintln!("sample deployed after {:?}", started.elapsed());

    // It answers through the edge router, from the release just deployed.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body: Value = loop {
        let answer = client
            .get(format!("{}/apps/hello/dev/", stack.url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(res) = answer
            && res.status() == 200
        {
            break res.json().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the sample app does not answer through the edge router"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["message"], "hello from slipway", "{body}");
    assert_eq!(body["release"], "v1", "{body}");

    let state: Value = client
        .get(format!(
            "{}/v1/services/hello/environments/dev/state",
            stack.url()
        ))
        .bearer_auth(stack.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        state["instances"].as_array().map(Vec::len),
        Some(2),
        "{state}"
    );
    // On the Docker target: one running container per instance, in this stack's scope.
    let containers = stack.instances();
    assert_eq!(
        containers.lines().count(),
        2,
        "the instance containers of {}: {containers:?}\n{state}",
        stack.project
    );

    // Down with its volumes: nothing of the project is left.
    let (ok, said) = stack.down();
    assert!(ok, "scripts/compose down -v failed:\n{said}");
    let project = &stack.project;
    assert_eq!(
        stack.leftovers(&["ps", "-aq"]),
        "",
        "containers of {project}"
    );
    assert_eq!(
        stack.leftovers(&["volume", "ls", "-q"]),
        "",
        "volumes of {project}"
    );
    assert_eq!(
        stack.leftovers(&["network", "ls", "-q"]),
        "",
        "networks of {project}"
    );
    assert_eq!(stack.instances(), "", "instance containers of {project}");
    eprintln!("done after {:?}", started.elapsed());
}
