use slipway_events::deploy::{CanaryStep, ProbeKind, ReleaseWeight};

use super::*;

const V1: Set = Set {
    release: 1,
    config_version: 4,
};

fn running(set: Set, replicas: u32) -> Option<Current> {
    Some(Current { set, replicas })
}

fn request(kind: DeploymentKind, release: Option<i32>, strategy: &Strategy) -> Request<'_> {
    Request {
        kind,
        release,
        config_version: None,
        replicas: None,
        strategy,
        health_check: None,
    }
}

fn facts(running: Option<Current>, release: i32) -> Facts<'static> {
    Facts {
        running,
        release,
        health_path: None,
        recorded_config: Some(7),
        last_config: None,
        latest_config: None,
        default_replicas: 3,
        target: TargetKind::Docker,
    }
}

#[test]
fn the_release_is_the_named_one_what_runs_or_the_one_before() {
    let s = Strategy::default();
    let deploy = request(DeploymentKind::Deploy, Some(2), &s);
    assert_eq!(release(&deploy, running(V1, 2), None), Ok(2));
    let unnamed = request(DeploymentKind::Deploy, None, &s);
    assert_eq!(release(&unnamed, None, None), Err(Refusal::NoRelease));

    let scale = request(DeploymentKind::Scale, None, &s);
    assert_eq!(release(&scale, running(V1, 2), None), Ok(1));
    assert_eq!(release(&scale, None, None), Err(Refusal::NothingToScale));

    let back = request(DeploymentKind::Rollback, None, &s);
    assert_eq!(release(&back, running(V1, 2), Some(0)), Ok(0));
    assert_eq!(
        release(&back, running(V1, 2), None),
        Err(Refusal::NoEarlierRelease)
    );
    let named_back = request(DeploymentKind::Rollback, Some(5), &s);
    assert_eq!(release(&named_back, running(V1, 2), Some(0)), Ok(5));
}

#[test]
fn refusals_end_as_request_failures_with_their_message() {
    let reason = Refusal::NothingToScale.reason();
    assert_eq!(reason.check, "request");
    assert_eq!(reason.step, "resolve the request");
    assert!(reason.message.contains("nothing is deployed"));
    assert_eq!(
        Refusal::UnknownRelease("no release v9".into())
            .reason()
            .message,
        "no release v9"
    );
    let not_set_up = Refusal::from(NotSetUp::not_enabled("prod", TargetKind::Kubernetes)).reason();
    assert_eq!(not_set_up.check, "request");
    assert!(
        not_set_up
            .message
            .starts_with("environment `prod` is recorded on the kubernetes target"),
        "{}",
        not_set_up.message
    );
}

#[test]
fn the_config_is_the_requested_then_the_remembered_then_the_recorded_then_the_latest() {
    let s = Strategy::default();
    let mut deploy = request(DeploymentKind::Deploy, Some(2), &s);
    let mut f = facts(running(V1, 2), 2);
    assert_eq!(
        config_version(&deploy, &f),
        Some(7),
        "recorded by the release"
    );
    deploy.config_version = Some(9);
    assert_eq!(config_version(&deploy, &f), Some(9), "asked for");

    let back = request(DeploymentKind::Rollback, Some(0), &s);
    f.last_config = Some(2);
    assert_eq!(
        config_version(&back, &f),
        Some(2),
        "what the release last ran with"
    );

    let scale = request(DeploymentKind::Scale, None, &s);
    assert_eq!(config_version(&scale, &f), Some(4), "what runs");

    let fresh = request(DeploymentKind::Deploy, Some(2), &s);
    let mut f = facts(None, 2);
    f.recorded_config = None;
    assert_eq!(
        config_version(&fresh, &f),
        None,
        "the latest must be looked up"
    );
    f.latest_config = Some(Ok(11));
    assert_eq!(resolve(&fresh, &f).map(|r| r.to.config_version), Ok(11));
    f.latest_config = Some(Err("no config for staging".into()));
    assert_eq!(
        resolve(&fresh, &f),
        Err(Refusal::NoConfig("no config for staging".into()))
    );
}

#[test]
fn a_first_deploy_starts_the_default_replicas_and_routes_to_them() {
    let s = Strategy::default();
    let r = resolve(
        &request(DeploymentKind::Deploy, Some(2), &s),
        &facts(None, 2),
    )
    .unwrap();
    let to = Set {
        release: 2,
        config_version: 7,
    };
    assert_eq!(r.to, to);
    assert_eq!(
        r.target,
        TargetKind::Docker,
        "the environment's recorded target"
    );
    assert_eq!(r.replicas, 3);
    assert_eq!(r.from, None);
    assert_eq!(
        r.plan,
        vec![
            Step::Scale { set: to, count: 3 },
            Step::Route {
                weights: vec![ReleaseWeight {
                    release: 2,
                    weight: 100
                }]
            }
        ]
    );
}

#[test]
fn an_upgrade_keeps_the_running_size_and_follows_the_strategy() {
    let s = Strategy::Canary {
        steps: vec![CanaryStep {
            weight: 50,
            pause_seconds: 10,
        }],
    };
    let r = resolve(
        &request(DeploymentKind::Deploy, Some(2), &s),
        &facts(running(V1, 2), 2),
    )
    .unwrap();
    assert_eq!(r.replicas, 2, "the size of what runs");
    assert_eq!(r.from, running(V1, 2));
    assert!(
        matches!(r.plan[2], Step::Pause { seconds: 10, .. }),
        "{:?}",
        r.plan
    );

    let mut sized = request(DeploymentKind::Deploy, Some(2), &s);
    sized.replicas = Some(5);
    let r = resolve(&sized, &facts(running(V1, 2), 2)).unwrap();
    assert_eq!(r.replicas, 5, "asked for");
}

#[test]
fn a_rollback_to_another_release_switches_at_once_without_canary_steps() {
    let s = Strategy::Canary {
        steps: vec![CanaryStep {
            weight: 20,
            pause_seconds: 60,
        }],
    };
    let mut f = facts(running(V1, 2), 0);
    f.last_config = Some(1);
    let r = resolve(&request(DeploymentKind::Rollback, None, &s), &f).unwrap();
    let to = Set {
        release: 0,
        config_version: 1,
    };
    assert_eq!(r.plan, plan::immediate(V1, to, 2));
    assert!(!r.plan.iter().any(|s| matches!(s, Step::Pause { .. })));
}

#[test]
fn scaling_to_zero_routes_nothing_then_stops_everything() {
    let s = Strategy::default();
    let mut scale = request(DeploymentKind::Scale, None, &s);
    scale.replicas = Some(0);
    let r = resolve(&scale, &facts(running(V1, 2), 1)).unwrap();
    assert_eq!(r.to, V1, "the running set, its config kept");
    assert_eq!(
        r.plan,
        vec![
            Step::Route { weights: vec![] },
            Step::Scale { set: V1, count: 0 }
        ]
    );
    // Nothing asked and nothing running (scaled to zero before): the default size.
    let up = request(DeploymentKind::Scale, None, &s);
    let r = resolve(&up, &facts(running(V1, 0), 1)).unwrap();
    assert_eq!(r.replicas, 3);
}

#[test]
fn the_health_check_is_the_requested_one_else_the_release_s_path() {
    let s = Strategy::default();
    let path: ProbePath = serde_json::from_value(serde_json::json!("/ready")).unwrap();
    let mut f = facts(None, 2);
    f.health_path = Some(&path);
    let r = resolve(&request(DeploymentKind::Deploy, Some(2), &s), &f).unwrap();
    assert_eq!(r.health_check.path, path);

    let asked = HealthCheck {
        kind: ProbeKind::Tcp,
        ..HealthCheck::default()
    };
    let mut req = request(DeploymentKind::Deploy, Some(2), &s);
    req.health_check = Some(&asked);
    assert_eq!(resolve(&req, &f).unwrap().health_check, asked);
}

fn failing(status: DeploymentStatus, from: Option<Current>) -> Failing {
    Failing {
        kind: DeploymentKind::Deploy,
        status,
        auto_rollback: true,
        cancelled: false,
        to: Set {
            release: 2,
            config_version: 7,
        },
        from,
    }
}

#[test]
fn a_failed_rollout_goes_back_to_what_ran_or_stops_when_nothing_did() {
    let to = failing(DeploymentStatus::Progressing, None).to;
    assert_eq!(
        way_back(&failing(DeploymentStatus::Progressing, running(V1, 2))),
        WayBack::Back(plan::immediate(to, V1, 2))
    );
    assert_eq!(
        way_back(&failing(DeploymentStatus::Progressing, None)),
        WayBack::Back(vec![
            Step::Route { weights: vec![] },
            Step::Scale { set: to, count: 0 }
        ])
    );
    // Same release before and after: nothing to go back to.
    let same = Current {
        set: to,
        replicas: 2,
    };
    assert_eq!(
        way_back(&failing(DeploymentStatus::Progressing, Some(same))),
        WayBack::End(DeploymentStatus::Failed)
    );
}

#[test]
fn failures_on_the_way_back_of_scales_and_without_auto_rollback_end_at_once() {
    assert_eq!(
        way_back(&failing(DeploymentStatus::RollingBack, running(V1, 2))),
        WayBack::End(DeploymentStatus::Failed)
    );
    let mut scale = failing(DeploymentStatus::Progressing, running(V1, 2));
    scale.kind = DeploymentKind::Scale;
    assert_eq!(way_back(&scale), WayBack::End(DeploymentStatus::Failed));
    let mut manual = failing(DeploymentStatus::Progressing, running(V1, 2));
    manual.auto_rollback = false;
    assert_eq!(way_back(&manual), WayBack::End(DeploymentStatus::Failed));
    // A cancel goes back even without automatic rollback, and a cancelled scale just ends.
    manual.cancelled = true;
    assert!(matches!(way_back(&manual), WayBack::Back(_)));
    scale.cancelled = true;
    assert_eq!(way_back(&scale), WayBack::End(DeploymentStatus::Cancelled));
}

#[test]
fn a_plan_run_to_its_end_names_the_outcome() {
    use DeploymentStatus::*;
    assert_eq!(completed(Progressing, false, true), Succeeded);
    assert_eq!(completed(RollingBack, false, true), RolledBack);
    assert_eq!(completed(RollingBack, true, true), Cancelled);
    assert_eq!(completed(RollingBack, false, false), Failed);
}
