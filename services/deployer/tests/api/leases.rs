//! Deployments are driven under leases: of two replicas on one database exactly one drives each
//! deployment (one owner per epoch, claims that never overlap, one "finished" event), a stale
//! owner's writes are refused, and a deployment whose owner died is taken over after the
//! lease expires and still ends (its deadlines hold), with metrics saying so.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use slipway_deployer::db::deployments::{self, Start};
use slipway_deployer::db::leases::{self, Claim, FencedError, Lease};
use slipway_deployer::domain::{DeploymentStatus, Step};
use slipway_events::EventData;
use slipway_events::deploy::{DeployKind, DeploymentFinished, HealthCheck};
use slipway_ids::{DeploymentId, ReplicaId, ServiceId};
use slipway_testkit::wait_until;
use sqlx::PgPool;

use crate::helpers::{SETTLE, request, spawn_app_on};
use crate::stand_in::StandInRegistry;

/// The lease time to live the deployers under test use (short, so takeovers are quick).
const TTL_MS: &str = "1500";

async fn pool(base: &slipway_runtime::BaseSettings) -> PgPool {
    base.database
        .connect_and_migrate(&sqlx::migrate!("./migrations"))
        .await
        .expect("the deployer's schema")
}

/// Queues a deploy request as the command consumer would; answers its id.
async fn queue(pool: &PgPool, service: ServiceId, environment: &str, release: i32) -> DeploymentId {
    let r = request(
        DeployKind::Deploy,
        service,
        "leased",
        environment,
        Some(release),
    );
    let mut conn = pool.acquire().await.unwrap();
    assert!(deployments::insert(&mut conn, &r, 20).await.unwrap());
    r.deployment_id
}

/// Claim k+1 began only after claim k was released or had expired unrenewed.
fn assert_never_overlapping(claims: &[Claim], ttl: Duration) {
    for pair in claims.windows(2) {
        let (k, next) = (&pair[0], &pair[1]);
        assert_eq!(next.epoch, k.epoch + 1, "{claims:?}");
        let free_from: DateTime<Utc> = match k.released_at {
            Some(r) => r,
            None => k.renewed_at + chrono::Duration::from_std(ttl).unwrap(),
        };
        assert!(
            next.claimed_at >= free_from,
            "claim {} began while claim {} was live: {claims:?}",
            next.epoch,
            k.epoch
        );
    }
}

async fn finished_events(pool: &PgPool, id: DeploymentId) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = $1 AND subject = $2")
        .bind(DeploymentFinished::TYPE)
        .bind(id.to_string())
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_owner_is_refused_once_another_replica_took_the_lease_over() {
    let base = slipway_testkit::base_settings("deployer").await;
    let pool = pool(&base).await;
    let (a, b) = (
        ReplicaId::generate("deployer"),
        ReplicaId::generate("deployer"),
    );
    let ttl = Duration::from_millis(300);
    let id = queue(&pool, ServiceId::new(), "staging", 1).await;

    let first = leases::claim(&pool, &a, ttl, &[], 10).await.unwrap();
    assert_eq!(first.len(), 1);
    let lease_a = first[0].lease.clone();
    assert_eq!((lease_a.deployment, lease_a.epoch), (id, 1));
    assert_eq!(first[0].taken_over_from, None, "a free lease");
    assert!(
        leases::claim(&pool, &b, ttl, &[], 10)
            .await
            .unwrap()
            .is_empty(),
        "a live lease is not claimed again"
    );
    leases::renew(&pool, &lease_a, ttl).await.unwrap();

    // A stops renewing: after the time to live, B takes the deployment over.
    let taken = std::sync::Mutex::new(Vec::new());
    let over = wait_until(Duration::from_secs(10), || async {
        let got = leases::claim(&pool, &b, ttl, &[], 10).await.unwrap();
        let some = !got.is_empty();
        *taken.lock().unwrap() = got;
        some
    })
    .await;
    assert!(over, "B never took the expired lease over");
    let taken = taken.into_inner().unwrap();
    let lease_b = taken[0].lease.clone();
    assert_eq!(lease_b.epoch, 2);
    assert_eq!(taken[0].taken_over_from.as_deref(), Some(a.as_str()));

    // Every write of A is refused now, and changes nothing.
    let lost = |r: Result<(), FencedError>| matches!(r, Err(FencedError::Lost { epoch: 1, .. }));
    assert!(lost(leases::renew(&pool, &lease_a, ttl).await));
    let check = HealthCheck::default();
    let plan = [Step::Pause {
        seconds: 1,
        gates: vec![],
    }];
    let start = Start {
        release: 1,
        config_version: 1,
        replicas: 1,
        from: None,
        plan: &plan,
        health_check: &check,
        deadline: Utc::now(),
        target: slipway_deployer::target::TargetKind::Process,
    };
    let mut tx = pool.begin().await.unwrap();
    assert!(lost(deployments::start(&mut tx, &lease_a, &start).await));
    drop(tx);
    let mut tx = pool.begin().await.unwrap();
    assert!(lost(leases::fence(&mut tx, &lease_a).await));
    drop(tx);
    let mut conn = pool.acquire().await.unwrap();
    let finish = deployments::finish(&mut conn, &lease_a, DeploymentStatus::Failed, None).await;
    assert!(lost(finish));
    let d = deployments::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(d.status, DeploymentStatus::Queued);
    assert_eq!(d.lease_owner.as_deref(), Some(b.as_str()));

    // B's writes go through, and its finish lets go of the lease.
    leases::fence(&mut conn, &lease_b).await.unwrap();
    deployments::start(&mut conn, &lease_b, &start)
        .await
        .unwrap();
    deployments::advance(&mut conn, &lease_b, 0, Utc::now())
        .await
        .unwrap();
    assert!(
        deployments::advance(&mut conn, &lease_b, 0, Utc::now())
            .await
            .is_err(),
        "a step is completed once"
    );
    deployments::finish(&mut conn, &lease_b, DeploymentStatus::Succeeded, None)
        .await
        .unwrap();
    let d = deployments::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(d.status, DeploymentStatus::Succeeded);
    assert_eq!(d.lease_owner, None);

    let claims = leases::history(&pool, id).await.unwrap();
    let owners: Vec<(i64, &str)> = claims.iter().map(|c| (c.epoch, c.owner.as_str())).collect();
    assert_eq!(owners, [(1, a.as_str()), (2, b.as_str())]);
    assert!(claims[0].released_at.is_none() && claims[1].released_at.is_some());
    assert_never_overlapping(&claims, ttl);
    assert!(
        leases::claim(&pool, &a, ttl, &[], 10)
            .await
            .unwrap()
            .is_empty(),
        "an ended deployment is claimed by nobody"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_claiming_at_once_never_take_the_same_deployment() {
    let base = slipway_testkit::base_settings("deployer").await;
    let pool = pool(&base).await;
    let service = ServiceId::new();
    let mut ids = Vec::new();
    for n in 0..24 {
        ids.push(queue(&pool, service, &format!("env-{n}"), 1).await);
    }
    let ttl = Duration::from_secs(30);
    let claimer = |pool: PgPool| async move {
        let me = ReplicaId::generate("deployer");
        let mut mine = Vec::new();
        for _ in 0..12 {
            let got = leases::claim(&pool, &me, ttl, &[], 2).await.unwrap();
            mine.extend(got.into_iter().map(|c| c.lease.deployment));
        }
        mine
    };
    let (one, two) = tokio::join!(
        tokio::spawn(claimer(pool.clone())),
        tokio::spawn(claimer(pool.clone()))
    );
    let (one, two) = (one.unwrap(), two.unwrap());
    assert!(one.iter().all(|id| !two.contains(id)), "{one:?} / {two:?}");
    let mut all: Vec<DeploymentId> = one.into_iter().chain(two).collect();
    all.sort();
    ids.sort();
    assert_eq!(all, ids, "every runnable deployment claimed, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployers_on_one_database_drive_each_deployment_once() {
    let registry = Arc::new(StandInRegistry::start().await);
    let base = slipway_testkit::base_settings("deployer").await;
    let extra = [("SLIPWAY_DEPLOY__LEASE_TTL_MS", TTL_MS)];
    let one = spawn_app_on(base.clone(), registry.clone(), &extra).await;
    let two = spawn_app_on(base.clone(), registry.clone(), &extra).await;
    let pool = pool(&base).await;

    // Releases whose artifact cannot be fetched: each deployment starts, fails its first
    // step, goes back (nothing ran before, so it stops what it started) and ends `failed`.
    let mut ids = Vec::new();
    for n in 0..4 {
        let name = format!("svc-{n}");
        registry.add_release(&name, 1, &["staging"]);
        let r = request(
            DeployKind::Deploy,
            ServiceId::new(),
            &name,
            "staging",
            Some(1),
        );
        ids.push(if n % 2 == 0 {
            one.command(&r).await
        } else {
            two.command(&r).await
        });
    }
    for id in &ids {
        let d = one.ended(*id).await;
        assert_eq!(d["status"], "failed", "{d}");
        assert_eq!(d["reason"]["check"], "artifact", "{d}");
        assert!(
            d["lease_owner"].is_null(),
            "an ended deployment holds no lease: {d}"
        );
    }
    let ttl = Duration::from_millis(TTL_MS.parse().unwrap());
    for id in &ids {
        let claims = leases::history(&pool, *id).await.unwrap();
        assert!(!claims.is_empty(), "{id} was never claimed");
        assert_never_overlapping(&claims, ttl);
        assert!(claims.last().unwrap().released_at.is_some(), "{claims:?}");
        // Both replicas saw the deployment; one finished it, and said so once.
        assert_eq!(finished_events(&pool, *id).await, 1, "{id}");
    }

    // The outcomes are counted, once, across the two replicas (counted just after commit).
    let totals = || async {
        let mut finished = 0.0;
        let mut failures = 0.0;
        for app in [&one, &two] {
            let text = app.metrics().await;
            finished += sample(
                &text,
                "slipway_deployments_finished_total",
                &[
                    ("kind", "deploy"),
                    ("strategy", "rolling"),
                    ("outcome", "failed"),
                ],
            );
            failures += sample(
                &text,
                "slipway_deployment_step_failures_total",
                &[("step", "scale"), ("check", "artifact")],
            );
            assert!(
                text.contains("slipway_deployment_leases_taken_over_total"),
                "{text}"
            );
        }
        (finished, failures)
    };
    let counted = wait_until(SETTLE, || async { totals().await == (4.0, 4.0) }).await;
    assert!(counted, "{:?}", totals().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_whose_owner_died_is_taken_over_and_still_ends_by_its_deadline() {
    let registry = Arc::new(StandInRegistry::start().await);
    registry.add_release("leased", 1, &["staging"]);
    let base = slipway_testkit::base_settings("deployer").await;
    let pool = pool(&base).await;
    let id = queue(&pool, ServiceId::new(), "staging", 1).await;

    // A replica claimed it, started it at a long hold, and died without a word.
    let dead = ReplicaId::generate("deployer");
    let ttl = Duration::from_millis(500);
    let claimed = leases::claim(&pool, &dead, ttl, &[], 10).await.unwrap();
    let lease: Lease = claimed[0].lease.clone();
    let plan = [Step::Pause {
        seconds: 3600,
        gates: vec![],
    }];
    let check = HealthCheck::default();
    let mut conn = pool.acquire().await.unwrap();
    deployments::start(
        &mut conn,
        &lease,
        &Start {
            release: 1,
            config_version: 1,
            replicas: 1,
            from: None,
            plan: &plan,
            health_check: &check,
            // The step's deadline passed while nobody drove it.
            deadline: Utc::now() - chrono::Duration::seconds(1),
            target: slipway_deployer::target::TargetKind::Process,
        },
    )
    .await
    .unwrap();
    drop(conn);

    let app = spawn_app_on(
        base.clone(),
        registry,
        &[("SLIPWAY_DEPLOY__LEASE_TTL_MS", TTL_MS)],
    )
    .await;
    let d = app.ended(id).await;
    // The new owner resumed at the stored step, found its deadline passed, went back (nothing
    // ran before, so it stopped what the deployment started) and ended it.
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["reason"]["check"], "deadline", "{d}");
    let claims = leases::history(&pool, id).await.unwrap();
    assert_eq!(claims.len(), 2, "{claims:?}");
    assert_eq!(claims[0].owner, dead.as_str());
    assert_ne!(claims[1].owner, dead.as_str());
    assert_never_overlapping(&claims, ttl);
    assert_eq!(finished_events(&pool, id).await, 1);

    let text = app.metrics().await;
    assert_eq!(
        sample(&text, "slipway_deployment_leases_taken_over_total", &[]),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "slipway_deployment_step_failures_total",
            &[("step", "pause"), ("check", "deadline")]
        ),
        1.0,
        "{text}"
    );
    let ended = wait_until(SETTLE, || async {
        sample(
            &app.metrics().await,
            "slipway_deployments_finished_total",
            &[("kind", "deploy"), ("outcome", "failed")],
        ) == 1.0
    })
    .await;
    assert!(ended, "{}", app.metrics().await);
}

/// The value of the series `name` whose labels include `labels` (0 when absent).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_whose_lease_was_taken_stops_and_writes_nothing_more() {
    let registry = Arc::new(StandInRegistry::start().await);
    registry.add_release("leased", 1, &["staging"]);
    let base = slipway_testkit::base_settings("deployer").await;
    let pool = pool(&base).await;
    let id = queue(&pool, ServiceId::new(), "staging", 1).await;
    // Started at a long hold, then handed back: the deployer claims it at once.
    let setup = ReplicaId::generate("setup");
    let claimed = leases::claim(&pool, &setup, Duration::from_secs(60), &[], 10)
        .await
        .unwrap();
    let lease = claimed[0].lease.clone();
    let plan = [Step::Pause {
        seconds: 3600,
        gates: vec![],
    }];
    let check = HealthCheck::default();
    let mut conn = pool.acquire().await.unwrap();
    let start = Start {
        release: 1,
        config_version: 1,
        replicas: 1,
        from: None,
        plan: &plan,
        health_check: &check,
        deadline: Utc::now() + chrono::Duration::hours(2),
        target: slipway_deployer::target::TargetKind::Process,
    };
    deployments::start(&mut conn, &lease, &start).await.unwrap();
    leases::release(&mut conn, &lease).await.unwrap();

    let app = spawn_app_on(
        base.clone(),
        registry,
        &[("SLIPWAY_DEPLOY__LEASE_TTL_MS", TTL_MS)],
    )
    .await;
    let d = app
        .deployment_when(id, |d| {
            d["lease_epoch"] == 2 && d["lease_owner"].is_string()
        })
        .await;
    let driver = d["lease_owner"].as_str().unwrap().to_owned();

    // Another owner takes the lease (as a takeover would), and a cancel is asked for: a driver
    // that still believed it held the deployment would turn it back now.
    sqlx::query(
        "UPDATE deployments SET lease_owner = 'thief', lease_epoch = 3, \
         lease_expires_at = now() + interval '1 hour', cancel_requested = true WHERE id = $1",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deployment_claims (deployment_id, epoch, owner) VALUES ($1, 3, 'thief')",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    let events = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE subject = $1")
            .bind(id.to_string())
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = events(pool.clone()).await;
    // Its renewals are refused from now on: the driver's claim stops being renewed.
    let renewed = |pool: PgPool| async move {
        sqlx::query_scalar::<_, DateTime<Utc>>(
            "SELECT renewed_at FROM deployment_claims WHERE deployment_id = $1 AND epoch = 2",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let last = renewed(pool.clone()).await;
    let ttl = Duration::from_millis(TTL_MS.parse().unwrap());
    let moved = wait_until(ttl * 2, || async { renewed(pool.clone()).await != last }).await;
    assert!(!moved, "the stale owner kept renewing");
    let d = deployments::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(d.status, DeploymentStatus::Progressing, "{d:?}");
    assert!(
        d.rollback_plan.0.is_empty(),
        "the stale owner turned it back: {d:?}"
    );
    assert_eq!(
        events(pool.clone()).await,
        before,
        "the stale owner published"
    );

    // The thief goes away without a word; after its lease expires the deployer takes the
    // deployment over again and honours the cancel.
    sqlx::query("UPDATE deployments SET lease_expires_at = now() WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let d = app.ended(id).await;
    assert_eq!(d["status"], "cancelled", "{d}");
    let claims = leases::history(&pool, id).await.unwrap();
    let owners: Vec<&str> = claims.iter().map(|c| c.owner.as_str()).collect();
    assert_eq!(
        owners,
        [setup.as_str(), &driver, "thief", &driver],
        "{claims:?}"
    );
}
