//! Several deployer replicas on one database and one machine (real PostgreSQL, real child
//! processes, the process target): each supervises the instances it owns; a replica killed
//! without a goodbye has its instances adopted by a live one once its liveness expires (running
//! ones watched, dead ones restarted); two replicas never adopt the same instance; a stop asked
//! by one replica of another's instance is done by its owner; a replica that loses its lease
//! lets go of everything.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use slipway_deployer::db::instances::{self, Instance};
use slipway_deployer::domain::InstanceState;
use slipway_deployer::engine::Fleet;
use slipway_deployer::engine::fleet::{FleetSettings, Owner, ReplicaSettings};
use slipway_deployer::engine::plan::Set;
use slipway_deployer::registry::RegistryClient;
use slipway_deployer::target::process::{ProcessSettings, ProcessTarget, Users, scope_instances};
use slipway_events::deploy::HealthCheck;
use slipway_ids::{ReplicaId, ServiceId};
use slipway_testkit::identity::ServiceCaller;
use slipway_testkit::wait_until;
use sqlx::PgPool;
use tokio::sync::mpsc::unbounded_channel;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const LIVENESS: ReplicaSettings = ReplicaSettings {
    heartbeat_ms: 200,
    timeout_ms: 1_500,
    poll_ms: 100,
};
const SERVICE: &str = "sleeper";

/// A registry answering the one release the tests deploy: a shell that sleeps (its image is
/// never pulled: the run spec says what to run, and the target needs an unpacked release,
/// which `image()` pushes).
async fn registry(image: String) -> String {
    let release = serde_json::json!({
        "id": Uuid::new_v4(),
        "service_id": service_id(),
        "number": 1,
        "version": "v1",
        "build_id": Uuid::new_v4(),
        "commit": "0000000000000000000000000000000000000000",
        "created_at": "2026-12-01T00:00:00Z",
        "config": {},
        "image": image,
        "digest": image.rsplit_once('@').unwrap().1,
        "artifact_purl": "pkg:oci/sleeper",
        "run": {
            "command": ["sh", "-c", "env -i sleep 1000 & exec env -i sleep 1001"],
            "port_env": "PORT",
            "health_path": "/",
        },
    });
    let server = HttpServer::new(move || {
        let release = release.clone();
        App::new().route(
            "/v1/services/{service}/releases/{number}",
            web::get().to(move || {
                let release = release.clone();
                async move { HttpResponse::Ok().json(release) }
            }),
        )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    tokio::spawn(server.run());
    url
}

/// Pushes a minimal image (one file) and answers its pinned reference.
async fn image() -> String {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::manifest::OciImageManifest;
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "app/hi", &b"hi"[..]).unwrap();
    let raw = tar.into_inner().unwrap();
    let diff_id = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw))
    );
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "WorkingDir": "/app" },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let config = Config::oci_v1(serde_json::to_vec(&config).unwrap(), None);
    let layers = vec![ImageLayer::new(
        raw,
        "application/vnd.oci.image.layer.v1.tar".into(),
        None,
    )];
    let manifest = OciImageManifest::build(&layers, &config, None);
    let registry = slipway_testkit::oci_registry();
    let repository = format!("test/replicas-{}", Uuid::new_v4().simple());
    let reference: oci_client::Reference = format!("{registry}/{repository}:v1").parse().unwrap();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let auth = oci_client::secrets::RegistryAuth::Anonymous;
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

/// The shared workdir of the replicas (one machine), cleaned up whatever happens.
struct Workdir(PathBuf);

impl Drop for Workdir {
    fn drop(&mut self) {
        for (_, run) in scope_instances(&self.0) {
            for pid in run.members() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct World {
    /// The test's own connections (each replica has its own pool, as separate processes do).
    pool: PgPool,
    db: slipway_settings::DatabaseSettings,
    registry: String,
    workdir: Workdir,
}

async fn world() -> World {
    if std::env::var("RUST_LOG").is_ok() {
        let settings = slipway_telemetry::TelemetrySettings {
            log_level: "info".into(),
            log_format: "pretty".into(),
            otlp_endpoint: None,
        };
        std::mem::forget(slipway_telemetry::init("deployer-test", &settings));
    }
    let db = slipway_testkit::fresh_database("deployer").await;
    let pool = db
        .connect_and_migrate(&sqlx::migrate!("./migrations"))
        .await
        .unwrap();
    slipway_outbox::migrate(&pool).await.unwrap();
    let dir = std::env::temp_dir().join(format!("slipway-replicas-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    World {
        pool,
        db,
        registry: registry(image().await).await,
        workdir: Workdir(dir.canonicalize().unwrap()),
    }
}

/// One deployer replica: its fleet, its target and its loops.
struct Replica {
    fleet: Arc<Fleet>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl World {
    async fn replica(&self, name: &str) -> Replica {
        self.replica_with(name, LIVENESS).await
    }

    async fn replica_with(&self, name: &str, liveness: ReplicaSettings) -> Replica {
        let mut settings = ProcessSettings::new(&self.workdir.0);
        settings.restart_initial_ms = 100;
        settings.stop_grace_seconds = 1;
        let (tx, mut events) = unbounded_channel();
        let target = Arc::new(ProcessTarget::new(settings, tx, Users::Shared).unwrap());
        let credential = slipway_testkit::identity::settings(ServiceCaller::Deployer).credential;
        let pool = self
            .db
            .connect_and_migrate(&sqlx::migrate!("./migrations"))
            .await
            .unwrap();
        let fleet = Arc::new(Fleet::new(
            pool,
            target,
            RegistryClient::new(&self.registry, &credential).unwrap(),
            slipway_testkit::signing::producer(&slipway_testkit::kafka_settings()),
            FleetSettings {
                drain: Duration::ZERO,
                stop_grace: Duration::from_secs(1),
                heartbeat: Duration::from_secs(1),
                replica: ReplicaId::generate(name),
                replicas: liveness,
            },
        ));
        fleet.recover().await.unwrap();
        let cancel = CancellationToken::new();
        let on_events = fleet.clone();
        let events = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let _ = on_events.on_target_event(event).await;
            }
        });
        let supervising = tokio::spawn({
            let fleet = fleet.clone();
            let cancel = cancel.clone();
            async move {
                let _ = fleet.supervise(cancel).await;
            }
        });
        Replica {
            fleet,
            cancel,
            tasks: vec![events, supervising],
        }
    }
}

impl Replica {
    async fn start(&self, count: usize) {
        let owner = Owner {
            service_id: service_id(),
            service_name: SERVICE.into(),
            environment: "staging".into(),
            target: slipway_deployer::target::TargetKind::Process,
            deployment_id: None,
        };
        let set = Set {
            release: 1,
            config_version: 0,
        };
        self.fleet
            .start_many(&owner, set, &HealthCheck::default(), count)
            .await
            .unwrap();
    }

    async fn owned(&self) -> BTreeSet<Uuid> {
        let rows = self.fleet.owned_instances().await.unwrap();
        rows.into_iter().map(|r| r.id).collect()
    }

    fn supervised(&self) -> BTreeSet<Uuid> {
        self.fleet.target.supervised().into_iter().collect()
    }

    /// Gone without a goodbye, like a SIGKILL: its loops end mid-flight, its supervisors with
    /// its target, its liveness row stays behind to expire; its instances run on.
    async fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        // Its inner tasks (liveness) end with it: then this is the last handle on its target,
        // and dropping it ends supervision; the processes stay.
        let alone = wait_until(Duration::from_secs(5), || async {
            Arc::strong_count(&self.fleet) == 1
        })
        .await;
        assert!(alone, "the killed replica's tasks live on");
    }

    /// A clean shutdown: supervision ends and the replica retires its row.
    async fn shut_down(mut self) {
        self.cancel.cancel();
        let supervising = self.tasks.pop().unwrap();
        let _ = supervising.await;
        // The target's events end with the target, which the events task itself keeps.
        for task in self.tasks {
            task.abort();
        }
    }
}

fn service_id() -> ServiceId {
    static ID: std::sync::OnceLock<ServiceId> = std::sync::OnceLock::new();
    *ID.get_or_init(ServiceId::new)
}

async fn rows(pool: &PgPool) -> BTreeMap<Uuid, Instance> {
    let all = instances::all(pool).await.unwrap();
    all.into_iter().map(|r| (r.id, r)).collect()
}

/// Every claim history is sound: each claim after the first started once the one before was
/// released or had expired (its last renewal plus the liveness timeout).
async fn assert_claims_never_overlap(pool: &PgPool) {
    let overlapping: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT b.instance_id, b.epoch FROM instance_claims a JOIN instance_claims b \
         ON a.instance_id = b.instance_id AND b.epoch = a.epoch + 1 \
         WHERE b.claimed_at < LEAST(COALESCE(a.released_at, 'infinity'), \
               a.renewed_at + $1::bigint * interval '1 millisecond')",
    )
    .bind(LIVENESS.timeout_ms as i64)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(overlapping.is_empty(), "claims overlap: {overlapping:?}");
}

fn pid_of(row: &Instance) -> u32 {
    row.pid.unwrap() as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_instances_are_adopted_running_ones_kept_dead_ones_restarted() {
    let world = world().await;
    let a = world.replica("deployer-a").await;
    let b = world.replica("deployer-b").await;
    a.start(2).await;
    b.start(1).await;
    let (of_a, of_b) = (a.owned().await, b.owned().await);
    assert_eq!((of_a.len(), of_b.len()), (2, 1));
    assert_eq!(a.supervised(), of_a, "each supervises what it owns");
    assert_eq!(b.supervised(), of_b);

    let before = rows(&world.pool).await;
    let mut ids = of_a.iter();
    let (alive_id, dead_id) = (*ids.next().unwrap(), *ids.next().unwrap());
    a.kill().await;
    // While nobody supervises it, one of a's instances dies (with its child).
    let dead_pid = pid_of(&before[&dead_id]);
    killpg(Pid::from_raw(dead_pid as i32), Signal::SIGKILL).unwrap();

    let all: BTreeSet<Uuid> = before.keys().copied().collect();
    let adopted = wait_until(Duration::from_secs(20), || async {
        let restarted = rows(&world.pool).await[&dead_id]
            .pid
            .is_some_and(|p| p as u32 != dead_pid);
        b.owned().await == all && b.supervised() == all && restarted
    })
    .await;
    assert!(adopted, "b owns {:?} of {all:?}", b.owned().await);
    let after = rows(&world.pool).await;
    assert_eq!(
        pid_of(&after[&alive_id]),
        pid_of(&before[&alive_id]),
        "a running instance is adopted as it runs, not started twice"
    );
    assert_ne!(
        pid_of(&after[&dead_id]),
        dead_pid,
        "a dead one is started again"
    );
    assert_eq!(after[&dead_id].restarts, before[&dead_id].restarts + 1);
    assert_eq!(after[&alive_id].owner_epoch, 2);
    assert_eq!(
        scope_instances(&world.workdir.0).len(),
        3,
        "one process group per instance"
    );
    assert_claims_never_overlap(&world.pool).await;

    // The adopted process is not b's child; b still restarts it when it dies.
    let adopted_pid = pid_of(&after[&alive_id]);
    killpg(Pid::from_raw(adopted_pid as i32), Signal::SIGKILL).unwrap();
    let restarted = wait_until(Duration::from_secs(10), || async {
        let row = rows(&world.pool).await.remove(&alive_id);
        row.is_some_and(|r| {
            r.pid.is_some_and(|p| p as u32 != adopted_pid) && r.state == InstanceState::Running
        })
    })
    .await;
    assert!(restarted, "an adopted instance that dies is restarted");

    let everything: Vec<Instance> = rows(&world.pool).await.into_values().collect();
    b.fleet
        .retire_many(&everything, "test over", Some(Duration::ZERO))
        .await
        .unwrap();
    assert!(rows(&world.pool).await.is_empty());
    assert!(scope_instances(&world.workdir.0).is_empty());
    b.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_adopting_at_once_never_supervise_one_instance_both() {
    let world = world().await;
    let a = world.replica("deployer-a").await;
    a.start(4).await;
    let all = a.owned().await;
    let before = rows(&world.pool).await;
    let (b, c) = (
        world.replica("deployer-b").await,
        world.replica("deployer-c").await,
    );
    a.kill().await;
    let adopted = wait_until(Duration::from_secs(20), || async {
        let (sb, sc) = (b.supervised(), c.supervised());
        sb.union(&sc).copied().collect::<BTreeSet<_>>() == all
    })
    .await;
    assert!(adopted, "b: {:?}, c: {:?}", b.supervised(), c.supervised());
    let (sb, sc) = (b.supervised(), c.supervised());
    assert!(sb.is_disjoint(&sc), "supervised twice: b {sb:?}, c {sc:?}");
    let claims: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT instance_id, count(*) FROM instance_claims GROUP BY instance_id")
            .fetch_all(&world.pool)
            .await
            .unwrap();
    assert!(
        claims.iter().all(|(_, n)| *n == 2),
        "one adoption each: {claims:?}"
    );
    let after = rows(&world.pool).await;
    for id in &all {
        assert_eq!(pid_of(&after[id]), pid_of(&before[id]), "no second copy");
    }
    assert_claims_never_overlap(&world.pool).await;

    // c leaves cleanly: b adopts its share at once (no timeout to wait for).
    let c_share = c.supervised();
    c.shut_down().await;
    let taken = wait_until(Duration::from_secs(5), || async { b.supervised() == all }).await;
    assert!(taken, "b did not take over {c_share:?}");
    assert_claims_never_overlap(&world.pool).await;
    let everything: Vec<Instance> = rows(&world.pool).await.into_values().collect();
    b.fleet
        .retire_many(&everything, "test over", Some(Duration::ZERO))
        .await
        .unwrap();
    b.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_asked_of_another_replicas_instance_is_done_by_its_owner() {
    let world = world().await;
    let a = world.replica("deployer-a").await;
    let b = world.replica("deployer-b").await;
    a.start(1).await;
    let row = rows(&world.pool).await.into_values().next().unwrap();
    let pid = pid_of(&row);
    b.fleet
        .retire_many(
            std::slice::from_ref(&row),
            "scaled down",
            Some(Duration::ZERO),
        )
        .await
        .unwrap();
    assert!(
        rows(&world.pool).await.is_empty(),
        "the row goes once stopped"
    );
    assert!(scope_instances(&world.workdir.0).is_empty());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(") Z")
        }
    );
    assert!(
        a.supervised().is_empty(),
        "its owner stopped supervising it"
    );
    assert!(
        b.supervised().is_empty(),
        "the asking replica never supervised it"
    );
    a.shut_down().await;
    b.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_renew_its_liveness_lets_go_before_another_adopts() {
    let world = world().await;
    let a = world.replica("deployer-a").await;
    let b = world.replica("deployer-b").await;
    a.start(2).await;
    let all = a.owned().await;
    // a's liveness row is locked: its renewals hang (as in a database hang) while b reads it.
    let mut blocker = world.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM deployer_replicas WHERE replica = $1 FOR UPDATE")
        .bind(&a.fleet.replica)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let let_go = wait_until(Duration::from_secs(10), || async {
        a.supervised().is_empty()
    })
    .await;
    assert!(let_go, "a kept supervising with a lapsed lease");
    let adopted = wait_until(Duration::from_secs(10), || async { b.supervised() == all }).await;
    assert!(adopted, "b adopted {:?}", b.supervised());
    blocker.rollback().await.unwrap();
    // a renews again, finds nothing of its own and takes nothing back.
    tokio::time::sleep(Duration::from_millis(4 * LIVENESS.heartbeat_ms)).await;
    assert!(a.supervised().is_empty());
    assert!(a.owned().await.is_empty());
    assert_claims_never_overlap(&world.pool).await;
    let everything: Vec<Instance> = rows(&world.pool).await.into_values().collect();
    b.fleet
        .retire_many(&everything, "test over", Some(Duration::ZERO))
        .await
        .unwrap();
    a.shut_down().await;
    b.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopting_replica_never_takes_a_reused_pid_for_the_instance() {
    use std::os::unix::process::CommandExt;
    let world = world().await;
    let a = world.replica("deployer-a").await;
    a.start(1).await;
    let row = rows(&world.pool).await.into_values().next().unwrap();
    a.kill().await;
    let old = pid_of(&row);
    killpg(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    // Another process leading its own group now, recorded as if it were the instance's (its
    // pid reused), with its own start time differing from the recorded one.
    let mut stranger = std::process::Command::new("sleep")
        .arg("1000")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = stranger.id();
    let record = world
        .workdir
        .0
        .join(format!("instances/{}/instance.json", row.id));
    let text = std::fs::read_to_string(&record).unwrap();
    let text = text
        .replace(&format!("\"pid\": {old}"), &format!("\"pid\": {pid}"))
        .replace(&format!("\"pgid\": {old}"), &format!("\"pgid\": {pid}"));
    std::fs::write(&record, text).unwrap();
    sqlx::query("UPDATE instances SET pid = $2, pgid = $2 WHERE id = $1")
        .bind(row.id)
        .bind(pid as i32)
        .execute(&world.pool)
        .await
        .unwrap();

    let b = world.replica("deployer-b").await;
    let restarted = wait_until(Duration::from_secs(20), || async {
        let now = rows(&world.pool).await.remove(&row.id);
        now.is_some_and(|r| {
            r.pid.is_some_and(|p| p as u32 != pid) && r.state == InstanceState::Running
        })
    })
    .await;
    assert!(restarted, "the instance was not started again");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(!stat.contains(") Z"), "the unrelated process was signalled");
    assert_eq!(b.supervised(), BTreeSet::from([row.id]));
    let everything: Vec<Instance> = rows(&world.pool).await.into_values().collect();
    b.fleet
        .retire_many(&everything, "test over", Some(Duration::ZERO))
        .await
        .unwrap();
    assert!(std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z")));
    stranger.kill().unwrap();
    let _ = stranger.wait();
    b.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_on_the_same_machine_is_seen_dead_without_waiting_for_its_timeout() {
    // A timeout far beyond the test: only seeing the process dead can explain an adoption.
    let patient = ReplicaSettings {
        timeout_ms: 600_000,
        ..LIVENESS
    };
    let world = world().await;
    let a = world.replica_with("deployer-a", patient.clone()).await;
    a.start(1).await;
    let all = a.owned().await;
    let replica = a.fleet.replica.clone();
    a.kill().await;
    let b = world.replica_with("deployer-b", patient).await;
    // a's row names a live process (this test's): nothing is adopted.
    tokio::time::sleep(Duration::from_millis(6 * LIVENESS.poll_ms)).await;
    assert!(
        b.owned().await.is_empty(),
        "a live replica's instances were taken"
    );

    // Now it names a process that ended, as after a SIGKILL.
    let mut ended = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let pid = ended.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start: i64 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    ended.kill().unwrap();
    ended.wait().unwrap();
    sqlx::query("UPDATE deployer_replicas SET pid = $2, start_time = $3 WHERE replica = $1")
        .bind(&replica)
        .bind(pid as i32)
        .bind(start)
        .execute(&world.pool)
        .await
        .unwrap();
    let adopted = wait_until(Duration::from_secs(10), || async {
        b.owned().await == all && b.supervised() == all
    })
    .await;
    assert!(adopted, "b owns {:?}", b.owned().await);
    let everything: Vec<Instance> = rows(&world.pool).await.into_values().collect();
    b.fleet
        .retire_many(&everything, "test over", Some(Duration::ZERO))
        .await
        .unwrap();
    b.shut_down().await;
}
