//! The invariants, checked per cell from the stack's tables, its topics and the processes
//! left on the machine. Each answers a [`Verdict`]: holds or not, and a short reason.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;

use super::plan::Work;
use super::prober::Prober;
use super::run::Outcome;
use crate::support::{SERVICES, Stack};

pub struct Verdict {
    pub ok: bool,
    pub text: String,
}

fn pass(text: impl Into<String>) -> Verdict {
    Verdict {
        ok: true,
        text: text.into(),
    }
}

fn fail(text: impl Into<String>) -> Verdict {
    Verdict {
        ok: false,
        text: text.into(),
    }
}

/// Every deployment and build ends in a final state within its deadline (the one right for
/// the cell, where only one is).
pub fn ends(o: &Outcome) -> Verdict {
    match &o.status {
        Some(s) if o.cell.expected().is_some_and(|want| want != s) => fail(format!(
            "{s} in {:.0?}, want {}{}",
            o.took,
            o.cell.expected().unwrap_or_default(),
            o.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )),
        Some(s) => pass(format!("{s} in {:.0?}", o.took)),
        None if o.id.is_empty() => fail("never started"),
        None => fail(format!("not final after {:.0?}", o.cell.deadline())),
    }
}

/// Waits until no service has an unpublished outbox row (or `within` passes).
pub async fn drain_outboxes(stack: &Stack, within: Duration) {
    slipway_testkit::wait_until(within, || async {
        let mut pending = 0i64;
        for schema in SERVICES {
            let q = format!("SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL");
            pending += sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(q))
                .fetch_one(stack.db())
                .await
                .unwrap_or(1);
        }
        pending == 0
    })
    .await;
}

/// The `ce_id` of every record on the stack's topics, read from the start until `wanted` are
/// all seen or `within` passes.
pub async fn event_ids_on_topics(
    stack: &Stack,
    wanted: &HashSet<String>,
    within: Duration,
) -> HashSet<String> {
    let topics: Vec<String> = [
        "slipway.commands",
        "slipway.services",
        "slipway.builds",
        "slipway.deployments",
        "slipway.instances",
        "slipway.monitoring",
    ]
    .iter()
    .map(|t| stack.topic(t))
    .collect();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let consumer: StreamConsumer = slipway_testkit::plain_consumer(&stack.kafka, &refs);
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + within;
    while !wanted.is_subset(&seen) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Ok(m)) = tokio::time::timeout(left, consumer.recv()).await else {
            break;
        };
        if let Some(id) = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "ce_id")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        }) {
            seen.insert(id);
        }
    }
    consumer.unsubscribe();
    seen
}

/// Outbox rows (every service) made during a window: (event id, published).
pub async fn outbox_rows(
    stack: &Stack,
    window: (DateTime<Utc>, DateTime<Utc>),
) -> Vec<(String, bool)> {
    let mut rows = Vec::new();
    for schema in SERVICES {
        let q = format!(
            "SELECT event_id::text, published_at IS NOT NULL FROM {schema}.outbox \
             WHERE created_at >= $1 AND created_at <= $2"
        );
        let found: Vec<(String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(q))
            .bind(window.0)
            .bind(window.1)
            .fetch_all(stack.db())
            .await
            .unwrap_or_default();
        rows.extend(found);
    }
    rows
}

/// Every outbox row of the cell was published, and its event id is on a topic.
pub fn outbox(rows: &[(String, bool)], on_topics: &HashSet<String>) -> Verdict {
    let unpublished = rows.iter().filter(|r| !r.1).count();
    let missing = rows.iter().filter(|r| !on_topics.contains(&r.0)).count();
    match (unpublished, missing) {
        (0, 0) => pass(format!("{} rows, all on Kafka", rows.len())),
        (0, m) => fail(format!("{m} of {} published rows not on Kafka", rows.len())),
        (u, _) => fail(format!("{u} of {} rows unpublished", rows.len())),
    }
}

async fn count(stack: &Stack, query: &str, id: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned()))
        .bind(id)
        .fetch_one(stack.db())
        .await
        .unwrap_or(-1)
}

/// For a build that succeeded: how long after its cell ended its release appeared in the registry
/// (`None`: not within `within`, or not a succeeded build).
pub async fn release_made(stack: &Stack, o: &Outcome, within: Duration) -> Option<Duration> {
    if !matches!(o.cell.work, Work::Build(_)) || o.status.as_deref() != Some("succeeded") {
        return None;
    }
    let query = "SELECT count(*) FROM registry.releases WHERE build_id::text = $1";
    let made =
        slipway_testkit::wait_until(within, || async { count(stack, query, &o.id).await >= 1 })
            .await;
    made.then(|| o.instants.1.elapsed())
}

/// No event applied twice: one started and one finished event per deployment, its replicas
/// running once; one finished event per build, one release per successful build (`released`:
/// how long after the cell's end the release appeared, see [`release_made`]).
pub async fn once(stack: &Stack, o: &Outcome, released: Option<Duration>) -> Verdict {
    if o.id.is_empty() {
        return fail("no work");
    }
    match o.cell.work {
        Work::Deploy(_) => {
            let of = |ty: &str| {
                format!(
                    "SELECT count(*) FROM deployer.outbox WHERE event_type = '{ty}' \
                     AND data->>'deployment_id' = $1"
                )
            };
            let started = count(stack, &of("dev.slipway.deployment.started.v1"), &o.id).await;
            let finished = count(stack, &of("dev.slipway.deployment.finished.v1"), &o.id).await;
            let mut wrong = Vec::new();
            if started != 1 {
                wrong.push(format!("{started} started events"));
            }
            if finished != 1 {
                wrong.push(format!("{finished} finished events"));
            }
            if let Some(n) = o.instances
                && n != 2
            {
                wrong.push(format!("{n} instances run for 2 replicas"));
            }
            if wrong.is_empty() {
                pass("1 start, 1 finish, 2 instances")
            } else {
                fail(wrong.join(", "))
            }
        }
        Work::Build(_) => {
            let finished = count(
                stack,
                "SELECT count(*) FROM builder.outbox WHERE event_type LIKE 'dev.cdevents.build.finished.%' \
                 AND data->'subject'->>'id' = $1",
                &o.id,
            )
            .await;
            let releases = count(
                stack,
                "SELECT count(*) FROM registry.releases WHERE build_id::text = $1",
                &o.id,
            )
            .await;
            let want = i64::from(o.status.as_deref() == Some("succeeded"));
            let after = released.map_or(String::new(), |d| {
                format!(" (made {d:.0?} after the cell ended)")
            });
            if finished == 1 && releases == want {
                pass(format!("1 finish, {releases} release{after}"))
            } else {
                fail(format!(
                    "{finished} finished events, {releases} releases (want {want})"
                ))
            }
        }
    }
}

/// One claim of the contract's claim history tables.
type Claim = (
    i64,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// No build or deployment driven by two replicas: claim k+1 began after claim k was released
/// or after its last renewal plus the lease ttl.
pub async fn one_driver(stack: &Stack, o: &Outcome) -> Verdict {
    if o.id.is_empty() {
        return fail("no work");
    }
    let query = match o.cell.work {
        Work::Deploy(_) => {
            "SELECT epoch, owner, claimed_at, renewed_at, released_at FROM deployer.deployment_claims \
             WHERE deployment_id::text = $1 ORDER BY epoch"
        }
        Work::Build(_) => {
            "SELECT epoch, owner, claimed_at, renewed_at, released_at FROM builder.build_claims \
             WHERE build_id::text = $1 ORDER BY epoch"
        }
    };
    let claims: Vec<Claim> = match sqlx::query_as(query)
        .bind(&o.id)
        .fetch_all(stack.db())
        .await
    {
        Ok(claims) => claims,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
            return fail("claims table missing");
        }
        Err(e) => return fail(format!("claims unreadable: {e}")),
    };
    if claims.is_empty() {
        return fail("no claim recorded");
    }
    let ttl = chrono::Duration::seconds(super::LEASE_TTL_SECONDS as i64);
    for pair in claims.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let released = before.4.is_some_and(|r| after.2 >= r);
        let expired = after.2 >= before.3 + ttl;
        if !released && !expired {
            let early = (before.3 + ttl - after.2).num_milliseconds() as f64 / 1000.0;
            return fail(format!(
                "epoch {} ({}) began {early:.1}s before epoch {} ({}) expired",
                after.0, after.1, before.0, before.1
            ));
        }
    }
    let owners: Vec<&str> = claims.iter().map(|c| c.1.as_str()).collect();
    pass(format!("{} claim(s): {}", claims.len(), owners.join(" → ")))
}

/// The edge router answered every probe of the cell (kill cases, and cells without a fault),
/// or, through an outage, answers again soon after it.
pub fn edge(prober: &Prober, o: &Outcome) -> Verdict {
    let (made, failed) = prober.between(o.instants.0, o.instants.1);
    let text = if failed.is_empty() {
        format!("{made} requests, all 200")
    } else {
        format!("{} of {made} failed, e.g. {}", failed.len(), failed[0])
    };
    if !o.cell.edge_required() {
        // Through an outage the edge may refuse; afterwards discovery must heal.
        return match o.healed {
            Some(after) => pass(format!("answers 30s after (+{after:.0?}); {text}")),
            None => fail(format!("not healed 90s after the outage; {text}")),
        };
    }
    if made < 20 {
        return fail(format!("only {made} requests made"));
    }
    Verdict {
        ok: failed.is_empty(),
        text,
    }
}

/// No orphan process: every instance process is one the deployer knows; stopping the stack
/// (its services, then the instances the deployer recorded, by process group, as
/// `scripts/down` does) leaves no process of its instances or builds behind.
pub async fn orphans(stack: &mut Stack) -> Verdict {
    let known: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM deployer.instances WHERE pid IS NOT NULL AND state <> 'stopped'",
    )
    .fetch_all(stack.db())
    .await
    .unwrap_or_default();
    let group_of = |pid: u32| -> i32 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(") ")?.1.to_owned();
                rest.split(' ').nth(2)?.parse().ok()
            })
            .unwrap_or(-1)
    };
    let unknown: Vec<String> = stack
        .stack_processes()
        .iter()
        .filter(|p| !known.contains(&(p.pid as i32)) && !known.contains(&group_of(p.pid)))
        .map(|p| format!("{} `{}` in {}", p.pid, p.command, p.cwd))
        .collect();
    for service in SERVICES {
        for index in 0..stack.replicas(service).len() {
            if stack.replicas(service)[index].running() {
                stack.kill_replica(service, index);
            }
        }
    }
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for pid in &known {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGTERM);
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let stopped = slipway_testkit::wait_until(Duration::from_secs(10), || async {
        stack.stack_processes().is_empty()
    })
    .await;
    if !stopped {
        for pid in &known {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        }
        slipway_testkit::wait_until(Duration::from_secs(3), || async {
            stack.stack_processes().is_empty()
        })
        .await;
    }
    let left: Vec<String> = stack
        .stack_processes()
        .iter()
        .map(|p| format!("{} `{}` in {}", p.pid, p.command, p.cwd))
        .collect();
    match (unknown.is_empty(), left.is_empty()) {
        (true, true) => pass(format!("none ({} instances stopped)", known.len())),
        (false, _) => fail(format!(
            "{} unknown to the deployer, e.g. {}",
            unknown.len(),
            unknown[0]
        )),
        (true, false) => fail(format!("{} left after stop, e.g. {}", left.len(), left[0])),
    }
}
