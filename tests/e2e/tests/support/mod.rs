//! Starts and stops the five service binaries as real child processes.

#![allow(dead_code)]

pub mod balancer;
pub mod deploy;
pub mod infra;
pub mod procs;
pub mod replicas;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

pub const SERVICES: [&str; 5] = ["registry", "builder", "deployer", "monitor", "gateway"];

/// How to start a [`Stack`]: replicas per service, extra settings, own infrastructure.
#[derive(Default)]
pub struct StackOptions {
    replicas: HashMap<&'static str, usize>,
    env: Vec<(String, String)>,
    own_infra: bool,
    /// The services started (all when empty); the others keep their ports, unanswered.
    only: Vec<&'static str>,
}

impl StackOptions {
    /// Runs `n` replicas of `service` behind a [`balancer::Balancer`] (default 1, no front).
    pub fn replicas(mut self, service: &'static str, n: usize) -> Self {
        self.replicas.insert(service, n.max(1));
        self
    }

    /// An extra setting for every service (wins over the stack's own).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts only `services` (a bench of one service needs only its binary built).
    pub fn only(mut self, services: &[&'static str]) -> Self {
        self.only = services.to_vec();
        self
    }

    /// A PostgreSQL and a broker of the stack's own ([`infra::OwnInfra`]), which it may stop
    /// and hang; and instance uids of its own, so that its processes are told from others'.
    pub fn own_infra(mut self) -> Self {
        self.own_infra = true;
        self
    }
}

/// One running (or killed) process of a service.
pub struct Replica {
    /// `SLIPWAY_REPLICA_ID`: `<service>-<slot>`, `-<generation>` from the second start on.
    pub id: String,
    slot: char,
    generation: u32,
    port: u16,
    child: Option<Child>,
}

/// The five services (one process or more each), their ports, and where they log.
pub struct Stack {
    /// The deployer's process-target workdir: its `instances/<id>/instance.json` run records
    /// name the instances' processes.
    pub scope: PathBuf,
    /// Where builds run (the builder's workdir).
    pub builds_dir: PathBuf,
    pub kafka: String,
    pub admin_token: String,
    prefix: String,
    env: HashMap<String, String>,
    /// The port clients use: the only replica's, or the balancer's in front of several.
    ports: HashMap<&'static str, u16>,
    replicas: HashMap<&'static str, Vec<Replica>>,
    balancers: Vec<balancer::Balancer>,
    logs: PathBuf,
    client: reqwest::Client,
    admin_db: sqlx::PgPool,
    /// Each service's own role in the stack's database (deploy/postgres/roles.sql).
    pub db_roles: HashMap<&'static str, slipway_testkit::Database>,
    /// Instance uids of this stack alone (own infrastructure only).
    pub uid_range: Option<(u32, u32)>,
    /// Dropped last: the services go before their database and broker.
    pub infra: Option<infra::OwnInfra>,
}

/// `target/<profile>/`, where `cargo build --workspace --bins` put the service binaries.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/stack-<hash>
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// A port for a service of the stack to listen on, picked before the service starts: below
/// the kernel's ephemeral range (32768 and up on Linux), so no `bind(0)` in the meantime (the
/// gateway's API behind its edge router, instances, clients) can take it, and never one this
/// process handed out before (a port picked by binding 0 and closing it came back twice, and two
/// replicas were given the same one).
pub(crate) fn free_port() -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..10_000 {
        let port = 20_000 + fastrand::u16(..12_000);
        if given.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return port;
    }
    panic!("no free port below the ephemeral range after 10,000 tries");
}

/// A fresh database on the cluster of `superuser` (same shape as `fresh_database`).
async fn database_on(superuser: &slipway_testkit::Database) -> slipway_testkit::Database {
    use sqlx::ConnectOptions;
    let name = format!("test_{}", slipway_testkit::unique());
    let mut conn = superuser.server_options().connect().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    slipway_testkit::Database {
        database: name,
        ..superuser.clone()
    }
}

impl Stack {
    /// Starts every service on a fresh database and topic prefix; waits until all are ready.
    pub async fn start() -> Self {
        Self::start_with(StackOptions::default()).await
    }

    /// [`Stack::start`] with extra settings for every service.
    pub async fn start_with_env(env: &[(&str, &str)]) -> Self {
        let options = env
            .iter()
            .fold(StackOptions::default(), |o, (k, v)| o.env(k, v));
        Self::start_with(options).await
    }

    /// [`Stack::start`] as `options` say.
    pub async fn start_with(options: StackOptions) -> Self {
        let infra = options.own_infra.then(infra::OwnInfra::start);
        let (db, bootstrap, topic_prefix) = match &infra {
            Some(own) => (
                database_on(&own.postgres.superuser()).await,
                own.broker.bootstrap(),
                format!("t{}.", slipway_testkit::unique()),
            ),
            None => {
                let kafka = slipway_testkit::kafka_settings();
                (
                    slipway_testkit::fresh_database("unused").await,
                    kafka.bootstrap_servers,
                    kafka.topic_prefix,
                )
            }
        };
        let db_roles = slipway_testkit::roles::service_roles(&db).await;
        let admin_token = format!("slw_{}", slipway_testkit::unique().repeat(6));
        // The stack's own state (its logs) is the platform's: owner only, as scripts/up keeps
        // .slipway/. Builds and instances get directories of their own beside it, outside it.
        let logs = std::env::temp_dir().join(format!("slipway-e2e-{}", slipway_testkit::unique()));
        std::fs::create_dir_all(&logs).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let outside = |what: &str| PathBuf::from(format!("{}-{what}", logs.display()));

        let mut env = HashMap::new();
        for (k, v) in [
            ("SLIPWAY_HTTP__HOST", "127.0.0.1".to_owned()),
            ("SLIPWAY_DATABASE__HOST", db.host.clone()),
            ("SLIPWAY_DATABASE__PORT", db.port.to_string()),
            ("SLIPWAY_DATABASE__DATABASE", db.database.clone()),
            ("SLIPWAY_KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("SLIPWAY_KAFKA__TOPIC_PREFIX", topic_prefix.clone()),
            ("SLIPWAY_KAFKA__PARTITIONS", "2".to_owned()),
            (
                "SLIPWAY_TELEMETRY__LOG_LEVEL",
                "info,sqlx=warn,rdkafka=warn".to_owned(),
            ),
            ("SLIPWAY_AUTH__BOOTSTRAP_TOKEN", admin_token.clone()),
        ] {
            env.insert(k.to_owned(), v);
        }
        // Replica ports first; a service with several gets a balancer in front, whose port is
        // the one everybody else (upstreams, the test's client) uses.
        let mut replicas: HashMap<&'static str, Vec<Replica>> = HashMap::new();
        let mut ports: HashMap<&'static str, u16> = HashMap::new();
        let mut balancers = Vec::new();
        for service in SERVICES {
            let n = options.replicas.get(service).copied().unwrap_or(1);
            let list: Vec<Replica> = (0..n)
                .map(|i| Replica::new(service, (b'a' + i as u8) as char, free_port()))
                .collect();
            if n > 1 {
                let front = balancer::Balancer::start(list.iter().map(|r| r.port).collect()).await;
                ports.insert(service, front.port);
                balancers.push(front);
            } else {
                ports.insert(service, list[0].port);
            }
            replicas.insert(service, list);
        }
        env.insert(
            "SLIPWAY_UPSTREAMS__REGISTRY".to_owned(),
            format!("http://127.0.0.1:{}", ports["registry"]),
        );
        env.insert(
            "SLIPWAY_UPSTREAMS__BUILDER".to_owned(),
            format!("http://127.0.0.1:{}", ports["builder"]),
        );
        env.insert(
            "SLIPWAY_BUILDS__WORKDIR".to_owned(),
            outside("builds").display().to_string(),
        );
        env.insert(
            "SLIPWAY_REGISTRY__ADDRESS".to_owned(),
            slipway_testkit::oci_registry(),
        );
        let repository_prefix = format!("{}/", topic_prefix.trim_end_matches('.'));
        env.insert(
            "SLIPWAY_REGISTRY__REPOSITORY_PREFIX".to_owned(),
            repository_prefix,
        );
        env.insert(
            "SLIPWAY_SECRETS__KEY".to_owned(),
            slipway_testkit::secrets_key(),
        );
        // The tests' repositories are `file://` bare repositories (registry and builder).
        env.insert(
            "SLIPWAY_SERVICES__ALLOW_LOCAL_REPOSITORIES".to_owned(),
            "true".to_owned(),
        );
        env.insert(
            "SLIPWAY_UPSTREAMS__DEPLOYER".to_owned(),
            format!("http://127.0.0.1:{}", ports["deployer"]),
        );
        env.insert(
            "SLIPWAY_UPSTREAMS__MONITOR".to_owned(),
            format!("http://127.0.0.1:{}", ports["monitor"]),
        );
        let instances = outside("instances");
        std::fs::create_dir_all(&instances).unwrap();
        let scope = instances.canonicalize().unwrap();
        env.insert(
            "SLIPWAY_PROCESS__WORKDIR".to_owned(),
            scope.display().to_string(),
        );
        // Short drains and heartbeats keep the tests quick; production defaults are longer.
        env.insert("SLIPWAY_DEPLOY__DRAIN_MS".to_owned(), "1000".to_owned());
        env.insert("SLIPWAY_DEPLOY__HEARTBEAT_MS".to_owned(), "2000".to_owned());
        // A SIGKILLed deployer's instances are adopted after its liveness times out.
        env.insert(
            "SLIPWAY_REPLICAS__HEARTBEAT_MS".to_owned(),
            "500".to_owned(),
        );
        env.insert("SLIPWAY_REPLICAS__TIMEOUT_MS".to_owned(), "3000".to_owned());
        env.insert(
            "SLIPWAY_DEPLOY__STOP_GRACE_SECONDS".to_owned(),
            "5".to_owned(),
        );
        // A stack on its own infrastructure also gets instance uids of its own (a random block
        // of 10), so that its processes are told apart from those of stacks running beside it.
        let uid_range = options.own_infra.then(|| {
            let base = 20_000 + (uuid::Uuid::new_v4().as_u128() % 4_000) as u32 * 10;
            (base, base + 9)
        });
        if let Some((low, high)) = uid_range {
            env.insert(
                "SLIPWAY_PROCESS__UID_RANGE".to_owned(),
                format!("{low}-{high}"),
            );
        }
        for (k, v) in &options.env {
            env.insert(k.clone(), v.clone());
        }
        let admin_db = sqlx::PgPool::connect_with(db.server_options())
            .await
            .unwrap();
        let mut stack = Self {
            scope,
            builds_dir: outside("builds"),
            kafka: bootstrap,
            admin_token,
            prefix: topic_prefix,
            env,
            ports,
            replicas,
            balancers,
            logs,
            client: reqwest::Client::new(),
            admin_db,
            db_roles,
            uid_range,
            infra,
        };
        let started: Vec<&'static str> = SERVICES
            .into_iter()
            .filter(|s| options.only.is_empty() || options.only.contains(s))
            .collect();
        for service in started.iter().copied() {
            for i in 0..stack.replicas[service].len() {
                stack.spawn(service, i);
            }
        }
        for service in started {
            stack.wait_ready(service).await;
        }
        stack
    }

    /// Starts replica `index` of `service` (again: a new generation, so a new replica id).
    fn spawn(&mut self, service: &'static str, index: usize) {
        let binary = bin_dir().join(format!("slipway-{service}"));
        assert!(
            binary.exists(),
            "{} is missing: build the binaries first (`cargo build --workspace --bins`, which scripts/test runs)",
            binary.display()
        );
        let replica = &self.replicas[service][index];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(replica.log_name(service)))
            .unwrap();
        let role = &self.db_roles[service];
        // Each service its own credential, knowing the others' by their hashes (the Stack's
        // credentials are random per test process, as scripts/up generates them per machine).
        let identity =
            slipway_testkit::identity::env(service.parse().expect("SERVICES are service names"));
        let child = Command::new(binary)
            .envs(&self.env)
            .envs(identity)
            // As deployed: its own role, which owns its schema only.
            .env("SLIPWAY_DATABASE__USERNAME", &role.username)
            .env(
                "SLIPWAY_DATABASE__PASSWORD",
                slipway_testkit::password(role),
            )
            .env("SLIPWAY_HTTP__PORT", replica.port.to_string())
            .env("SLIPWAY_REPLICA_ID", &replica.id)
            // Static group membership per slot, as a pod keeps its name through a container
            // restart: two replicas on one host must not share it.
            .env(
                "SLIPWAY_KAFKA__INSTANCE_ID",
                format!("{service}-{}", replica.slot),
            )
            // Its own Ed25519 seed and every service's public key (made once per test process).
            .envs(slipway_testkit::signing::env(service))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.replicas.get_mut(service).unwrap()[index].child = Some(child);
    }

    /// The port `service` listens on.
    pub fn port(&self, service: &str) -> u16 {
        self.ports[service]
    }

    /// The stack's own directory (logs, state): the platform's, never an instance's.
    pub fn state_dir(&self) -> &Path {
        &self.logs
    }

    /// PostgreSQL as an attacker would aim at it: address, database, and every role name the
    /// stack uses (plus the superuser's).
    pub fn postgres_target(&self) -> Value {
        let mut users: Vec<String> = self.db_roles.values().map(|r| r.username.clone()).collect();
        users.push("postgres".to_owned());
        users.sort();
        users.dedup();
        serde_json::json!({
            "host": self.env["SLIPWAY_DATABASE__HOST"],
            "port": self.env["SLIPWAY_DATABASE__PORT"].parse::<u16>().unwrap(),
            "database": self.env["SLIPWAY_DATABASE__DATABASE"],
            "users": users,
        })
    }

    pub fn topic(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    pub fn url(&self, service: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[service])
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        let mut req = self.client.post(self.url("gateway", path)).json(&body);
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        req.send().await.unwrap()
    }

    /// Sends `body` to a webhook endpoint with the given headers (no bearer token).
    pub async fn webhook(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("gateway", path))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url("gateway", path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// A new token with `role`, made with the admin token.
    pub async fn token(&self, role: &str) -> String {
        let res = self
            .post(
                "/v1/tokens",
                &self.admin_token,
                serde_json::json!({"name": role, "role": role}),
            )
            .await;
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    /// How many "service created" events `service` reports as applied in its metrics.
    pub async fn applied(&self, service: &str) -> u64 {
        let text = self
            .client
            .get(self.url(service, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("slipway_events_consumed_total{")
                    && l.contains(r#"type="dev.slipway.service.created.v1""#)
                    && l.contains(r#"outcome="applied""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Waits until `service` has applied `n` events; fails with its log otherwise.
    pub async fn wait_applied(&self, service: &str, n: usize) {
        let ok = slipway_testkit::wait_until(Duration::from_secs(60), || async {
            self.applied(service).await >= n as u64
        })
        .await;
        assert!(
            ok,
            "{service} applied {} of {n}:\n{}",
            self.applied(service).await,
            self.log_tail(service)
        );
    }

    /// The stack's database as its superuser (every service's schema).
    pub fn db(&self) -> &sqlx::PgPool {
        &self.admin_db
    }

    /// `SELECT count(*) FROM <from>` in the stack's database.
    pub async fn count(&self, from: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {from}")))
            .fetch_one(&self.admin_db)
            .await
            .unwrap()
    }
}

/// A GitHub `push` delivery of `commit` to `main` of `repository`, signed exactly as GitHub
/// signs it (HMAC-SHA256 of the raw body with `secret`): headers and body.
pub fn github_push(
    repository: &str,
    commit: &str,
    secret: &str,
) -> (Vec<(&'static str, String)>, Vec<u8>) {
    use hmac::Mac;
    let body = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/main",
        "after": commit,
        "repository": {"clone_url": repository},
        "pusher": {"name": "e2e"}
    }))
    .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let headers = vec![
        ("x-github-event", "push".to_owned()),
        ("x-github-delivery", slipway_testkit::unique()),
        ("x-hub-signature-256", signature),
    ];
    (headers, body)
}

impl Stack {
    /// A git repository holding `examples/hello-python`, registered as service `hello` with the
    /// webhook secret `secret`.
    pub async fn hello_service(&self, secret: &str) -> slipway_testkit::git::Repo {
        use slipway_testkit::git::{Repo, example_dir};
        let repo = Repo::from_dir(&example_dir("hello-python"));
        let body =
            serde_json::json!({"name": "hello", "repository": repo.url, "webhook_secret": secret});
        let res = self.post("/v1/services", &self.admin_token, body).await;
        assert_eq!(res.status(), 201);
        repo
    }
}

impl Stack {
    /// The live instances of the stack's process target and the pid leading each: read from the
    /// run records the deployer keeps in its work directory (`instances/<id>/instance.json`),
    /// each checked against `/proc` (same start time and boot), as `scripts/down` finds them.
    pub fn instance_processes(&self) -> Vec<(u32, String)> {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.scope.join("instances")) else {
            return found;
        };
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read(entry.path().join("instance.json")) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(&text) else {
                continue;
            };
            let (Some(pid), Some(start)) = (record["pid"].as_u64(), record["start_time"].as_u64())
            else {
                continue;
            };
            if record["boot_id"].as_str().is_some_and(|b| b != boot.trim()) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // Field 3 (state) and 22 (start time): a live process, the very one recorded.
            let live = fields.first().is_some_and(|s| *s != "Z");
            if live && fields.get(19) == Some(&start.to_string().as_str()) {
                let instance = entry.file_name().to_string_lossy().into_owned();
                found.push((pid as u32, instance));
            }
        }
        found
    }
}

impl Drop for Stack {
    /// Instances outlive their deployer by design; a test must not leave them behind.
    fn drop(&mut self) {
        // Each run leads its own process group: the group goes, children included.
        for (pid, _) in self.instance_processes() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // And whatever else runs in the stack's instance and build dirs or as its uids.
        for pid in self.stack_processes().iter().map(|p| p.pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A .tar.gz of `files` (name, contents), names written as given (even malicious ones).
pub fn tarball(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    let mut gz = builder.into_inner().unwrap();
    std::io::Write::flush(&mut gz).unwrap();
    gz.finish().unwrap()
}
