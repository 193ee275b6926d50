//! Running a group: its stack, the sample service with releases v1 and v2 on two instances,
//! then each cell: start the work, inject the fault at its moment, wait for the work to end.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use slipway_testkit::git::Repo;

use super::plan::{Cell, Fault, Group, Work};
use crate::support::deploy::SECRET;
use crate::support::{Stack, StackOptions};

/// What happened in one cell, for the checks.
pub struct Outcome {
    pub cell: Cell,
    /// What was done (`Ok`), or why the fault could not be injected (`Err`).
    pub fault: Result<String, String>,
    /// The deployment's or build's id (empty when the work never started).
    pub id: String,
    /// Its final status, if it reached one within the deadline.
    pub status: Option<String>,
    /// The reason it records with that status (a failed or rolled-back one's), if any.
    pub reason: Option<String>,
    pub took: Duration,
    /// The cell's time span, in the database's clock and in ours.
    pub window: (DateTime<Utc>, DateTime<Utc>),
    pub instants: (Instant, Instant),
    /// Instance processes running once a deployment ended.
    pub instances: Option<usize>,
    /// After an outage: how long, from 30 s after the work ended, until the edge answered 20
    /// requests in a row (`None`: not within a minute).
    pub healed: Option<Duration>,
}

/// Health checks quick enough for a test (as tests/deploy.rs).
fn quick_check() -> Value {
    json!({"interval_ms": 300, "timeout_ms": 500, "failure_threshold": 2, "grace_seconds": 10})
}

/// The stack every group runs on: two replicas of builder, deployer, monitor and gateway, its
/// own PostgreSQL and broker, short leases and build steps.
pub async fn stack() -> Stack {
    let ttl = (super::LEASE_TTL_SECONDS * 1000).to_string();
    let step = super::BUILD_STEP_TIMEOUT_SECONDS.to_string();
    let options = StackOptions::default()
        .own_infra()
        .replicas("builder", 2)
        .replicas("deployer", 2)
        .replicas("monitor", 2)
        .replicas("gateway", 2)
        // The lease settings of builder and deployer (default 15 s).
        .env("SLIPWAY_BUILDS__LEASE_TTL_MS", &ttl)
        .env("SLIPWAY_DEPLOY__LEASE_TTL_MS", &ttl)
        .env("SLIPWAY_BUILDS__STEP_TIMEOUT_SECONDS", &step);
    Stack::start_with(options).await
}

/// Sets up `hello` in `prod`: v1 and v2 built, v1 deployed on two instances.
pub async fn prepare(stack: &Stack) -> Repo {
    let repo = stack.hello_service(SECRET).await;
    let res = stack
        .put(
            "/v1/services/hello/environments/prod",
            json!({"target": "process"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    stack.release(&repo, 1).await;
    repo.change("NOTES.md", "v2\n");
    stack.release(&repo, 2).await;
    let id = stack
        .deploy(
            "prod",
            json!({"release": "v1", "replicas": 2, "health_check": quick_check()}),
        )
        .await;
    let d = stack.finished(&id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "succeeded", "setting up v1: {d}");
    stack.serves_only("prod", "v1").await;
    repo
}

async fn db_now(stack: &Stack) -> DateTime<Utc> {
    loop {
        if let Ok(now) = sqlx::query_scalar("SELECT now()")
            .fetch_one(stack.db())
            .await
        {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Status and step of a deployment or build (`None`: no row yet or the database is away).
async fn progress(stack: &Stack, work: Work, id: &str) -> Option<(String, i32, usize)> {
    let query = match work {
        Work::Deploy(_) => {
            "SELECT status, step_index, jsonb_array_length(plan) FROM deployer.deployments \
             WHERE id::text = $1"
        }
        Work::Build(_) => "SELECT status, 0, 0 FROM builder.builds WHERE id::text = $1",
    };
    let row: (String, i32, i32) = sqlx::query_as(query)
        .bind(id)
        .fetch_optional(stack.db())
        .await
        .ok()
        .flatten()?;
    Some((row.0, row.1, row.2 as usize))
}

/// The reason the deployment or build records (`reason` as text), if any.
async fn reason(stack: &Stack, work: Work, id: &str) -> Option<String> {
    let query = match work {
        Work::Deploy(_) => "SELECT reason::text FROM deployer.deployments WHERE id::text = $1",
        Work::Build(_) => "SELECT reason FROM builder.builds WHERE id::text = $1",
    };
    sqlx::query_scalar::<_, Option<String>>(query)
        .bind(id)
        .fetch_optional(stack.db())
        .await
        .ok()
        .flatten()
        .flatten()
}

fn is_final(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "rolled_back" | "cancelled")
}

/// Starts the cell's work; answers its id, or why it did not start (a cell result, not a
/// panic: a platform that stopped consuming is what the suite is there to find).
async fn start_work(stack: &Stack, repo: &Repo, work: Work, n: usize) -> Result<String, String> {
    match work {
        Work::Deploy(strategy) => {
            let current: Option<i32> = sqlx::query_scalar(
                "SELECT release FROM deployer.environment_state \
                 WHERE service_name = 'hello' AND environment = 'prod'",
            )
            .fetch_optional(stack.db())
            .await
            .map_err(|e| format!("reading the environment: {e}"))?
            .flatten();
            let to = if current == Some(1) { 2 } else { 1 };
            let body = json!({"release": format!("v{to}"), "replicas": 2, "strategy": strategy.body(),
                              "health_check": quick_check(), "step_timeout_seconds": 60});
            let res = stack
                .post(
                    "/v1/services/hello/environments/prod/deployments",
                    &stack.admin_token,
                    body,
                )
                .await;
            let status = res.status();
            let answer: Value = res.json().await.unwrap_or_default();
            match answer["id"].as_str() {
                Some(id) if status == 202 => Ok(id.to_owned()),
                _ => Err(format!("deploy answered {status}: {answer}")),
            }
        }
        Work::Build(fixture) => {
            // A line of its own per cell, so that the same fixture twice is still a commit.
            let commit = repo.change(
                "slipway.toml",
                &format!("{}# chaos cell {n}\n", fixture.recipe()),
            );
            let (headers, body) = crate::support::github_push(&repo.url, &commit, SECRET);
            let res = stack.webhook("/v1/webhooks/github", &headers, body).await;
            if res.status() != 202 {
                return Err(format!("the push answered {}", res.status()));
            }
            let found = slipway_testkit::wait_until(Duration::from_secs(60), || async {
                build_of(stack, &commit).await.is_some()
            })
            .await;
            if !found {
                return Err(format!(
                    "no build of the push within 60s (commit {commit:.8})"
                ));
            }
            build_of(stack, &commit)
                .await
                .ok_or_else(|| "the build vanished".to_owned())
        }
    }
}

async fn build_of(stack: &Stack, commit: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT id::text FROM builder.builds WHERE commit_requested = $1 OR commit_built = $1 \
         ORDER BY queued_at LIMIT 1",
    )
    .bind(commit)
    .fetch_optional(stack.db())
    .await
    .ok()
    .flatten()
}

/// The replica of `service` to kill: the deployment's lease owner for the deployer (when the
/// lease column exists), else the next one in turn.
async fn victim(stack: &Stack, service: &str, id: &str, turn: usize) -> usize {
    let replicas = stack.replicas(service);
    if service == "deployer" {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT lease_owner FROM deployer.deployments WHERE id::text = $1")
                .bind(id)
                .fetch_optional(stack.db())
                .await
                .ok()
                .flatten()
                .flatten();
        if let Some(i) = owner.and_then(|o| replicas.iter().position(|r| r.id == o)) {
            return i;
        }
    }
    turn % replicas.len()
}

/// Waits until the work is at the fault's moment, then injects it.
async fn inject(stack: &mut Stack, cell: &Cell, id: &str, turn: usize) -> Result<String, String> {
    let (aim, limit) = match (cell.fault, cell.work) {
        (Fault::None, _) => return Ok("none".to_owned()),
        (Fault::Kill { step, .. }, _) => (step as i32, Duration::from_secs(90)),
        // Mid-deployment: once its first step runs; mid-build: once it runs.
        (_, Work::Deploy(_)) => (0, Duration::from_secs(90)),
        (_, Work::Build(_)) => (0, Duration::from_secs(120)),
    };
    let deadline = Instant::now() + limit;
    let at = loop {
        match progress(stack, cell.work, id).await {
            Some((status, step, steps)) if matches!(cell.work, Work::Deploy(_)) => {
                if steps > 0 && aim as usize >= steps {
                    return Err(format!("plan has only {steps} steps"));
                }
                if is_final(&status) {
                    return Err(format!("{status} before step {aim}"));
                }
                if status == "progressing" && step >= aim {
                    // A quick step (a route) may pass between two polls: say so.
                    break if step == aim {
                        format!("step {step}/{steps}")
                    } else {
                        format!("step {step}/{steps} (aimed at {aim}, passed by)")
                    };
                }
            }
            Some((status, ..)) => {
                if is_final(&status) {
                    return Err(format!("build {status} before the fault"));
                }
                if status == "running" {
                    break "running".to_owned();
                }
            }
            None => {}
        }
        if Instant::now() > deadline {
            return Err(format!("work not under way within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    match cell.fault {
        Fault::Kill { service, .. } => {
            let index = victim(stack, service, id, turn).await;
            let killed = stack.kill_replica(service, index);
            // As an orchestrator restarts a crashed pod: a moment later, as a new replica.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let started = stack.start_replica(service, index).await;
            Ok(format!("killed {killed} at {at}, then {started}"))
        }
        Fault::BrokerHang(d) => {
            stack
                .infra
                .as_ref()
                .expect("chaos stacks have their own")
                .broker
                .hang();
            tokio::time::sleep(d).await;
            stack
                .infra
                .as_ref()
                .expect("chaos stacks have their own")
                .broker
                .resume();
            Ok(format!("broker hung {}s at {at}", d.as_secs()))
        }
        Fault::PostgresStop(d) => {
            stack
                .infra
                .as_ref()
                .expect("chaos stacks have their own")
                .postgres
                .stop();
            tokio::time::sleep(d).await;
            stack
                .infra
                .as_ref()
                .expect("chaos stacks have their own")
                .postgres
                .start_again();
            Ok(format!("postgres stopped {}s at {at}", d.as_secs()))
        }
        Fault::None => unreachable!("handled above"),
    }
}

/// Runs one cell to its end (or deadline).
pub async fn cell(
    stack: &mut Stack,
    repo: &Repo,
    prober: &super::prober::Prober,
    cell: &Cell,
    n: usize,
) -> Outcome {
    let from = (db_now(stack).await, Instant::now());
    let (id, fault) = match start_work(stack, repo, cell.work, n).await {
        Ok(id) => {
            let fault = inject(stack, cell, &id, n).await;
            (id, fault)
        }
        Err(e) => (String::new(), Err(format!("work never started: {e}"))),
    };
    let deadline = from.1 + cell.deadline();
    let mut status = None;
    while !id.is_empty() && Instant::now() < deadline {
        if let Some((s, ..)) = progress(stack, cell.work, &id).await
            && is_final(&s)
        {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = from.1.elapsed();
    let reason = match status {
        Some(_) => reason(stack, cell.work, &id).await,
        None => None,
    };
    let mut instances = None;
    if matches!(cell.work, Work::Deploy(_)) && status.is_some() {
        // Retired instances stop within the drain and grace times after the last step.
        let count = || {
            stack
                .stack_processes()
                .iter()
                .filter(|p| !p.cwd.starts_with(&*stack.builds_dir.to_string_lossy()))
                .count()
        };
        slipway_testkit::wait_until(Duration::from_secs(20), || async { count() == 2 }).await;
        instances = Some(count());
    }
    // After an outage, first outlast the registry's stale window (12 heartbeats of 2 s): an
    // edge that still serves its old table right after the outage may lose it to a reap then.
    if !cell.edge_required() {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let healed_from = Instant::now();
    let healed =
        slipway_testkit::wait_until(Duration::from_secs(60), || async { prober.last_ok(20) })
            .await
            .then(|| healed_from.elapsed());
    // The edge is watched for 3 s at least (60 probes), also when the work ends at once (a
    // build failing in a second): too few probes would say nothing about it.
    tokio::time::sleep_until((from.1 + Duration::from_secs(3)).into()).await;
    let to = (db_now(stack).await, Instant::now());
    Outcome {
        cell: cell.clone(),
        fault,
        id,
        status,
        reason,
        took,
        window: (from.0, to.0),
        instants: (from.1, to.1),
        instances,
        healed,
    }
}

/// The group's stack, set up, and every cell run on it.
pub async fn group(group: &Group) -> (Stack, Vec<Outcome>, super::prober::Prober) {
    let mut stack = stack().await;
    let repo = prepare(&stack).await;
    let ports = stack.replicas("gateway").iter().map(|r| r.port()).collect();
    let prober = super::prober::Prober::start(ports, "hello", "prod");
    let mut outcomes = Vec::new();
    for (n, c) in group.cells.iter().enumerate() {
        println!("chaos [{}] cell {}: {}", group.name, n + 1, c.name());
        let outcome = cell(&mut stack, &repo, &prober, c, n).await;
        println!(
            "chaos [{}] cell {}: {:?} after {:.0?} ({}){}",
            group.name,
            n + 1,
            outcome.status,
            outcome.took,
            outcome.fault.as_ref().unwrap_or_else(|e| e),
            outcome
                .reason
                .as_ref()
                .map(|r| format!("; reason: {r}"))
                .unwrap_or_default()
        );
        outcomes.push(outcome);
    }
    (stack, outcomes, prober)
}
