//! Monitor replicas split the instances they probe: shard leases in `monitor_shards`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use slipway_ids::{InstanceId, ReplicaId, ServiceId};
use slipway_monitor::{Application, Leases, Probing, Settings, ShardSettings, WAKE, shard_of};
use slipway_testkit::wait_until;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::helpers::{fast_check, instance, started, test_settings};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

async fn shards_of(pool: &PgPool) -> BTreeMap<String, BTreeSet<u32>> {
    let rows: Vec<(i32, String)> = sqlx::query_as(
        "SELECT shard, owner FROM monitor_shards WHERE owner IS NOT NULL AND expires_at > now()",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut owners: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (shard, owner) in rows {
        owners.entry(owner).or_default().insert(shard as u32);
    }
    owners
}

/// Whether a round was woken (a `NOTIFY` on [`WAKE`]) within half a second.
async fn woken(wakes: &mut sqlx::postgres::PgListener) -> bool {
    tokio::time::timeout(Duration::from_millis(500), wakes.recv())
        .await
        .is_ok_and(|n| n.is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_take_fair_shares_and_expired_leases_are_taken_over() {
    let db = slipway_testkit::fresh_database("monitor").await;
    let pool = db.connect_and_migrate(&MIGRATOR).await.unwrap();
    let ghost = Leases::new(
        pool.clone(),
        ReplicaId::generate("ghost"),
        16,
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    let real = Leases::new(
        pool.clone(),
        ReplicaId::generate("monitor"),
        16,
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let mut wakes = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    wakes.listen(WAKE).await.unwrap();

    assert_eq!(
        ghost.round().await.unwrap().len(),
        16,
        "alone, it takes all"
    );
    assert!(
        real.round().await.unwrap().is_empty(),
        "nothing is free: a newcomer waits for its share to be released"
    );
    assert!(!woken(&mut wakes).await, "claims wake nobody");
    let ghosts = ghost.round().await.unwrap();
    assert_eq!(ghosts.len(), 8, "two live replicas: it releases half");
    // Released shards must not wait for the newcomer's next timed round.
    assert!(woken(&mut wakes).await, "a release wakes the other rounds");
    let reals = real.round().await.unwrap();
    assert_eq!(reals.len(), 8);
    assert!(ghosts.is_disjoint(&reals));
    assert_eq!(ghosts.union(&reals).count(), 16);
    assert_eq!(
        real.round().await.unwrap(),
        reals,
        "renewal keeps the same shards"
    );

    // The ghost stops renewing (it died): its shards are taken once its leases expire, not
    // before.
    assert_eq!(real.round().await.unwrap().len(), 8);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            real.round().await.unwrap().len() == 16
        })
        .await,
        "the dead replica's shards are taken over after expiry"
    );
    // Back again (a new process under the same name would be the same): it gets its share
    // once the other releases it.
    assert!(ghost.round().await.unwrap().is_empty());
    assert_eq!(real.round().await.unwrap().len(), 8);
    assert_eq!(ghost.round().await.unwrap().len(), 8);
    assert_eq!(real.release_all().await.unwrap(), 8);
    assert_eq!(ghost.round().await.unwrap().len(), 16);
}

/// A monitor of the test's own, with a handle on what it probes.
struct Replica {
    probing: Probing,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), String>>,
}

async fn replica(settings: Settings, name: &str) -> Replica {
    let app = Application::build_as(settings, ReplicaId::generate(name))
        .await
        .expect("monitor starts");
    let probing = app.probing();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    Replica {
        probing,
        stop,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_monitors_probe_disjoint_halves_and_one_takes_all_when_the_other_stops() {
    let mut settings = test_settings().await;
    settings.shards = ShardSettings {
        count: 16,
        lease_ttl_ms: 3_000,
        reconcile_ms: 200,
    };
    // Two members of the same consumer groups in one process need their own static ids.
    settings.base.kafka.instance_id = "a".into();
    let a = replica(settings.clone(), "monitor-a").await;
    let mut other = settings.clone();
    other.base.kafka.instance_id = "b".into();
    let b = replica(other, "monitor-b").await;
    let pool = PgPool::connect_with(settings.base.database.connect_options())
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            let owners = shards_of(&pool).await;
            owners.len() == 2 && owners.values().all(|s| s.len() == 8)
        })
        .await,
        "the shards split 8/8: {:?}",
        shards_of(&pool).await
    );
    let owners: Vec<BTreeSet<u32>> = shards_of(&pool).await.into_values().collect();

    // Three instances in each replica's shards.
    let service = ServiceId::new();
    let mut halves: [Vec<_>; 2] = [Vec::new(), Vec::new()];
    while halves.iter().any(|h| h.len() < 3) {
        let i = instance(service);
        let side = usize::from(owners[1].contains(&shard_of(i.instance_id, 16)));
        if halves[side].len() < 3 {
            halves[side].push(i);
        }
    }
    let producer = slipway_testkit::signing::producer(&settings.base.kafka);
    let mut backends = Vec::new();
    let mut all = BTreeSet::new();
    for i in halves.iter().flatten() {
        let backend = Backend::start(200).await;
        let event = slipway_events::CloudEvent::new(
            slipway_events::slipway::sources::DEPLOYER,
            service,
            Some(i.instance_id.to_string()),
            &started(i, &backend.address, fast_check(), 0),
        )
        .unwrap();
        producer
            .publish(slipway_events::Topic::Instances, &event)
            .await
            .unwrap();
        backends.push(backend);
        all.insert(i.instance_id);
    }
    let (probed_a, probed_b) = (a.probing.clone(), b.probing.clone());
    assert!(
        wait_until(Duration::from_secs(30), || async {
            let (pa, pb) = (probed_a.instances(), probed_b.instances());
            pa.is_disjoint(&pb) && pa.union(&pb).copied().collect::<BTreeSet<InstanceId>>() == all
        })
        .await,
        "disjoint and complete: a {:?}, b {:?}, all {all:?}",
        probed_a.instances(),
        probed_b.instances()
    );
    let (pa, pb) = (probed_a.instances(), probed_b.instances());
    assert_eq!(pa.len(), 3, "{pa:?}");
    assert_eq!(pb.len(), 3, "{pb:?}");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            backends.iter().all(|b| b.hits() > 0)
        })
        .await,
        "every instance is probed"
    );

    // One replica stops: the other takes every shard and probes every instance.
    let _ = a.stop.send(());
    a.task.await.unwrap().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            probed_b.instances() == all
        })
        .await,
        "b probes all: {:?}",
        probed_b.instances()
    );
    assert_eq!(
        shards_of(&pool).await.into_values().next().map(|s| s.len()),
        Some(16)
    );
    let hits: Vec<usize> = backends.iter().map(Backend::hits).collect();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            backends
                .iter()
                .zip(&hits)
                .all(|(b, before)| b.hits() > *before)
        })
        .await,
        "probes go on for every instance"
    );
    let _ = b.stop.send(());
    b.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_wakes_the_replica_holding_its_shard() {
    let mut settings = test_settings().await;
    // Timed rounds never come during the test: only the wake-ups of new instances move.
    settings.shards = ShardSettings {
        count: 16,
        lease_ttl_ms: 200_000,
        reconcile_ms: 60_000,
    };
    settings.base.kafka.instance_id = "a".into();
    let a = replica(settings.clone(), "monitor-a").await;
    let mut other = settings.clone();
    other.base.kafka.instance_id = "b".into();
    let b = replica(other, "monitor-b").await;
    let pool = PgPool::connect_with(settings.base.database.connect_options())
        .await
        .unwrap();
    let producer = slipway_testkit::signing::producer(&settings.base.kafka);
    let service = ServiceId::new();
    let mut all = BTreeSet::new();
    let mut backends = Vec::new();
    for _ in 0..4 {
        let i = instance(service);
        let backend = Backend::start(200).await;
        let event = slipway_events::CloudEvent::new(
            slipway_events::slipway::sources::DEPLOYER,
            service,
            Some(i.instance_id.to_string()),
            &started(&i, &backend.address, fast_check(), 0),
        )
        .unwrap();
        producer
            .publish(slipway_events::Topic::Instances, &event)
            .await
            .unwrap();
        backends.push(backend);
        all.insert(i.instance_id);
        // The first one also waits for both consumers to join the group, slow on a busy machine.
        assert!(
            wait_until(Duration::from_secs(60), || async {
                a.probing.instances().contains(&i.instance_id)
                    || b.probing.instances().contains(&i.instance_id)
            })
            .await,
            "instance {} is probed by someone",
            i.instance_id
        );
    }
    // The wake-ups also ran the rounds that split the shards (B started with none).
    assert!(
        wait_until(Duration::from_secs(20), || async {
            let owners = shards_of(&pool).await;
            owners.len() == 2 && owners.values().all(|s| s.len() == 8)
        })
        .await,
        "{:?}",
        shards_of(&pool).await
    );
    assert!(
        wait_until(Duration::from_secs(20), || async {
            let (pa, pb) = (a.probing.instances(), b.probing.instances());
            pa.is_disjoint(&pb) && pa.union(&pb).copied().collect::<BTreeSet<InstanceId>>() == all
        })
        .await,
        "disjoint and complete: a {:?}, b {:?}",
        a.probing.instances(),
        b.probing.instances()
    );
    for r in [a, b] {
        let _ = r.stop.send(());
        r.task.await.unwrap().unwrap();
    }
}
