//! Leases on the real database: a live lease is never taken, an expired one is taken over with
//! a higher epoch, and the old owner can write nothing more; two builders on one database, the
//! first frozen mid-build, the second taking the build over and finishing it alone.

use std::time::Duration;

use serde_json::Value;
use slipway_builder::builds::lease::{self, Claimed};
use slipway_builder::builds::logs::{LogLimits, LogWriter, Stream};
use slipway_builder::builds::{self, LeaseError};
use slipway_events::slipway::{BuildRequested, BuildTrigger};
use slipway_ids::{BuildId, ReplicaId, ServiceId};
use slipway_testkit::git::{Repo, example_dir};
use sqlx::PgPool;

use crate::helpers::{spawn_configured, spawn_freezable, test_settings, workdir};

fn requested(repository: &str) -> BuildRequested {
    BuildRequested {
        build_id: BuildId::new(),
        service_id: ServiceId::new(),
        service_name: "leased".into(),
        project: None,
        repository: Some(repository.into()),
        git_ref: "refs/heads/main".into(),
        commit: None,
        upload: None,
        trigger: BuildTrigger {
            kind: "api".into(),
            delivery: None,
            actor: Some("test".into()),
        },
        requested_at: chrono::Utc::now(),
    }
}

/// A migrated builder database with no builder running on it.
async fn database() -> PgPool {
    let settings = test_settings().await;
    let pool = settings
        .base
        .database
        .connect_and_migrate(&slipway_builder::MIGRATOR)
        .await
        .unwrap();
    slipway_outbox::migrate(&pool).await.unwrap();
    pool
}

async fn claims(pool: &PgPool, id: BuildId) -> Vec<(i64, String, bool)> {
    sqlx::query_as(
        "SELECT epoch, owner, released_at IS NOT NULL FROM build_claims WHERE build_id = $1 \
         ORDER BY epoch",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn finished_events(pool: &PgPool, id: BuildId) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE event_type LIKE '%build.finished%' AND subject = $1",
    )
    .bind(id.to_string())
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_stale_owner_is_fenced() {
    let pool = database().await;
    let req = requested("file:///nowhere");
    let mut tx = pool.begin().await.unwrap();
    builds::enqueue(&mut tx, &req).await.unwrap();
    tx.commit().await.unwrap();
    let (a, b) = (
        ReplicaId::generate("builder-a"),
        ReplicaId::generate("builder-b"),
    );
    let ttl = Duration::from_millis(400);

    let Claimed {
        lease: stale,
        taken_from,
        ..
    } = lease::claim_next(&pool, &a, ttl).await.unwrap().unwrap();
    assert_eq!(stale.epoch(), 1);
    assert!(taken_from.is_none());
    // Held: nobody else gets it, and a restart's requeue leaves it alone.
    assert!(lease::claim_next(&pool, &b, ttl).await.unwrap().is_none());
    assert_eq!(builds::requeue_interrupted(&pool).await.unwrap(), 0);
    assert!(lease::renew(&pool, &stale, ttl).await.unwrap());

    let expired = slipway_testkit::wait_until(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, bool>("SELECT lease_expires_at < now() FROM builds WHERE id = $1")
            .bind(req.build_id)
            .fetch_one(&pool)
            .await
            .unwrap()
    })
    .await;
    assert!(expired, "the lease runs out without renewal");
    let taken = lease::claim_next(&pool, &b, Duration::from_secs(15))
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert_eq!(taken.lease.epoch(), 2);
    assert_eq!(taken.taken_from.as_deref(), Some(a.as_str()));
    assert_eq!(taken.build.status, "running");

    // The stale owner: every write refused.
    assert!(matches!(
        builds::set_step(&pool, &stale, "test").await,
        Err(LeaseError::Lost)
    ));
    assert!(!lease::renew(&pool, &stale, ttl).await.unwrap());
    let limits = LogLimits {
        tail_lines: 5,
        max_line_bytes: 1024,
        max_log_bytes: 1 << 20,
    };
    let mut logs = LogWriter::open(pool.clone(), stale.clone(), limits)
        .await
        .unwrap();
    logs.line("test", Stream::Stdout, "from the past")
        .await
        .unwrap();
    assert!(matches!(logs.flush().await, Err(LeaseError::Lost)));
    let end = builds::failed("test", Some(1), "stale".into(), None);
    assert!(matches!(
        builds::finish(&pool, &stale, end).await,
        Err(LeaseError::Lost)
    ));
    assert!(matches!(
        builds::requeue(&pool, &stale).await,
        Err(LeaseError::Lost)
    ));
    assert_eq!(finished_events(&pool, req.build_id).await, 0);

    // The new owner finishes it, once; a second finish (status guard) is refused too.
    let end = builds::failed("test", Some(2), "the real ending".into(), None);
    let done = builds::finish(&pool, &taken.lease, end).await.unwrap();
    assert_eq!(done.status, "failed");
    assert_eq!(done.reason.as_deref(), Some("the real ending"));
    let again = builds::failed("test", Some(3), "twice".into(), None);
    assert!(matches!(
        builds::finish(&pool, &taken.lease, again).await,
        Err(LeaseError::Lost)
    ));
    assert_eq!(finished_events(&pool, req.build_id).await, 1);
    assert_eq!(
        claims(&pool, req.build_id).await,
        [(1, a.to_string(), false), (2, b.to_string(), true)]
    );
    let ordered: bool = sqlx::query_scalar(
        "SELECT c2.claimed_at >= c1.renewed_at + interval '400 milliseconds' \
         FROM build_claims c1 JOIN build_claims c2 ON c2.build_id = c1.build_id \
         WHERE c1.build_id = $1 AND c1.epoch = 1 AND c2.epoch = 2",
    )
    .bind(req.build_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(ordered, "claim 2 started after claim 1's lease ran out");
}

#[tokio::test]
async fn a_builder_stopping_gives_its_build_back_at_once() {
    let pool = database().await;
    let req = requested("file:///nowhere");
    let mut tx = pool.begin().await.unwrap();
    builds::enqueue(&mut tx, &req).await.unwrap();
    tx.commit().await.unwrap();
    let (a, b) = (
        ReplicaId::generate("builder-a"),
        ReplicaId::generate("builder-b"),
    );
    let ttl = Duration::from_secs(60);
    let first = lease::claim_next(&pool, &a, ttl).await.unwrap().unwrap();
    builds::requeue(&pool, &first.lease).await.unwrap();
    // Released: claimed again at once, not after the ttl, and as a fresh start.
    let second = lease::claim_next(&pool, &b, ttl).await.unwrap().unwrap();
    assert_eq!(second.lease.epoch(), 2);
    assert!(second.taken_from.is_none());
    assert_eq!(
        claims(&pool, req.build_id).await,
        [(1, a.to_string(), true), (2, b.to_string(), false)]
    );
}

/// Builder A claims a build and freezes mid-step (as under SIGSTOP); its lease runs out and
/// builder B, on the same database, takes the build over and finishes it. Thawed, A stops its
/// step and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_builder_loses_its_build_to_another_replica() {
    let marker = format!("1318.{}", rand_digits());
    let flag =
        std::env::temp_dir().join(format!("slipway-lease-flag-{}", slipway_testkit::unique()));
    let repo = Repo::from_dir(&example_dir("hello-python"));
    // The first attempt waits (A's); once the flag exists, an attempt passes at once (B's).
    let commit = repo.change(
        "slipway.toml",
        &format!(
            "[test]\ncommand = \"if [ -e {} ]; then echo second attempt; else sleep {marker}; fi\"\n\
             [build]\ncommand = \"\"\n",
            flag.display()
        ),
    );
    let mut settings = test_settings().await;
    settings.builds.lease_ttl_ms = 1500;
    settings.replica = Some(ReplicaId::generate("builder-a"));
    let a = spawn_freezable(settings.clone()).await;
    let id = a.app.request(&repo.url, Some(&commit)).await;
    let sleeping = || async {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("sleep {marker}")])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    assert!(
        slipway_testkit::wait_until(Duration::from_secs(60), sleeping).await,
        "A runs the gate"
    );
    let pool = a.app.pool().await;
    let thaw = a.freeze();
    std::fs::write(&flag, "").unwrap();

    let mut other = settings.clone();
    other.builds.workdir = workdir();
    other.replica = Some(ReplicaId::generate("builder-b"));
    let b = spawn_configured(other).await;
    let build: Value = b.wait_finished(id).await;
    assert_eq!(build["status"], "succeeded", "{build}");
    assert_eq!(build["lease_epoch"], 2, "{build}");
    let logs = b.log_text(id).await;
    assert!(logs.contains("second attempt"), "{logs}");
    assert!(
        logs.contains("takes this build over from builder-a"),
        "{logs}"
    );

    drop(thaw);
    assert!(
        slipway_testkit::wait_until(Duration::from_secs(30), || async { !sleeping().await }).await,
        "A, thawed, stops its step"
    );
    let rows = claims(&pool, id).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].0, rows[1].0), (1, 2), "epochs increase: {rows:?}");
    assert!(rows[0].1.starts_with("builder-a") && rows[1].1.starts_with("builder-b"));
    assert!(rows[1].2, "B released its claim when it finished");
    // A's attempt ends without a word: one ending, B's, however long A keeps going.
    let quiet = slipway_testkit::wait_until(Duration::from_secs(3), || async {
        finished_events(&pool, id).await > 1
    })
    .await;
    assert!(!quiet, "a stale owner published an ending");
    assert_eq!(finished_events(&pool, id).await, 1);
    let now: Value = b.build(id).await.unwrap();
    assert_eq!(now["status"], "succeeded");
    assert!(
        now["lease_owner"]
            .as_str()
            .unwrap()
            .starts_with("builder-b")
    );
    let _ = std::fs::remove_file(&flag);
}

fn rand_digits() -> String {
    slipway_testkit::unique()
        .bytes()
        .map(|b| char::from(b'0' + b % 10))
        .collect()
}
