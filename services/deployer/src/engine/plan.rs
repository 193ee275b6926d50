//! Plans: a strategy turned into a list of idempotent steps. Pure; the engine executes them.
//!
//! Every step can be executed again after a crash with the same effect, which is what lets a
//! restarted deployer resume a rollout at the step it was on.

use slipway_events::deploy::{ReleaseWeight, Strategy};

pub use crate::domain::{Current, Gate, Set, Step};

fn route(parts: &[(i32, u32)]) -> Step {
    Step::Route {
        weights: parts
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|&(release, weight)| ReleaseWeight { release, weight })
            .collect(),
    }
}

/// The steps that roll `to` out with `replicas` instances, replacing `from`.
pub fn rollout(strategy: &Strategy, from: Option<Current>, to: Set, replicas: u32) -> Vec<Step> {
    let n = replicas;
    let old = match from {
        // Same release: only its size changes (weights are per release).
        Some(c) if c.set.release == to.release => {
            return vec![
                Step::Scale { set: to, count: n },
                route(&[(to.release, 100)]),
            ];
        }
        Some(c) if c.replicas > 0 => c,
        _ => {
            return vec![
                Step::Scale { set: to, count: n },
                route(&[(to.release, 100)]),
            ];
        }
    };
    let o = old.set;
    match strategy {
        Strategy::Recreate {} => vec![
            route(&[]),
            Step::Scale { set: o, count: 0 },
            Step::Scale { set: to, count: n },
            route(&[(to.release, 100)]),
        ],
        Strategy::BlueGreen { .. } => immediate(o, to, n),
        Strategy::Rolling {
            max_surge,
            max_unavailable,
        } => rolling(o, old.replicas, to, n, *max_surge, *max_unavailable),
        Strategy::Canary { steps } => {
            let mut plan = Vec::new();
            for s in steps {
                let count = (n * s.weight).div_ceil(100).clamp(1, n.max(1));
                plan.push(Step::Scale { set: to, count });
                plan.push(route(&[
                    (o.release, 100 - s.weight),
                    (to.release, s.weight),
                ]));
                plan.push(Step::Pause {
                    seconds: s.pause_seconds,
                    gates: vec![Gate::Health {
                        release: to.release,
                    }],
                });
            }
            plan.extend(immediate(o, to, n));
            plan
        }
    }
}

/// Start the whole new set, switch all traffic at once, retire the old set: blue-green, and
/// the shape of every rollback (no canary steps on the way back).
pub fn immediate(from: Set, to: Set, n: u32) -> Vec<Step> {
    vec![
        Step::Scale { set: to, count: n },
        route(&[(to.release, 100)]),
        Step::Scale {
            set: from,
            count: 0,
        },
    ]
}

/// Rolling replacement in rounds: retire up to `unavailable` old instances, start up to
/// `surge + retired` new ones and wait for them, shift weights by instance counts, retire the
/// old instances now surplus.
fn rolling(o: Set, old_n: u32, to: Set, n: u32, surge: u32, unavailable: u32) -> Vec<Step> {
    let mut plan = Vec::new();
    let (mut old, mut new) = (old_n, 0u32);
    // Each round makes progress (surge or unavailable is positive), so this ends.
    while new < n || old > 0 {
        let before = (old, new);
        let a = unavailable.min(old);
        if a > 0 && new < n {
            old -= a;
            plan.push(route(&[(o.release, old), (to.release, new)]));
            plan.push(Step::Scale { set: o, count: old });
        }
        let b = (n - new).min(surge + a);
        if b > 0 {
            new += b;
            plan.push(Step::Scale {
                set: to,
                count: new,
            });
        }
        let c = (old + new).saturating_sub(n).min(old);
        let c = if new >= n { old } else { c };
        old -= c;
        plan.push(route(&[(o.release, old), (to.release, new)]));
        if c > 0 {
            plan.push(Step::Scale { set: o, count: old });
        }
        if (old, new) == before {
            break;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_events::deploy::CanaryStep;

    const V1: Set = Set {
        release: 1,
        config_version: 1,
    };
    const V2: Set = Set {
        release: 2,
        config_version: 3,
    };

    /// Replays a plan, checking the invariants of a rolling update at every step.
    fn replay(plan: &[Step], old_n: u32, n: u32, surge: u32, unavailable: u32) -> (u32, u32) {
        let (mut old, mut new) = (old_n, 0);
        for step in plan {
            if let Step::Scale { set, count } = step {
                if set.release == 1 {
                    old = *count;
                } else {
                    new = *count;
                }
                assert!(old + new <= n + surge, "surge exceeded at {step:?}");
                // Instances of the new set count as available once their Scale step ends.
                assert!(
                    old + new >= n.saturating_sub(unavailable),
                    "too few available at {step:?}"
                );
            }
        }
        (old, new)
    }

    #[test]
    fn rolling_respects_surge_and_unavailability_and_ends_on_the_new_set() {
        for (n, surge, unavailable) in [(3, 1, 0), (3, 0, 1), (5, 2, 1), (1, 1, 0), (4, 1, 1)] {
            let plan = rolling(V1, n, V2, n, surge, unavailable);
            assert_eq!(
                replay(&plan, n, n, surge, unavailable),
                (0, n),
                "n={n} surge={surge} unavailable={unavailable}: {plan:#?}"
            );
            let last_route = plan
                .iter()
                .rev()
                .find(|s| matches!(s, Step::Route { .. }))
                .map(Step::describe);
            assert_eq!(last_route.as_deref(), Some("route v2 100%"));
        }
    }

    #[test]
    fn rolling_shifts_weights_by_instance_counts() {
        let plan = rollout(
            &Strategy::Rolling {
                max_surge: 1,
                max_unavailable: 0,
            },
            Some(Current {
                set: V1,
                replicas: 3,
            }),
            V2,
            3,
        );
        let routes: Vec<String> = plan
            .iter()
            .filter(|s| matches!(s, Step::Route { .. }))
            .map(Step::describe)
            .collect();
        assert_eq!(
            routes,
            [
                "route v1 66% / v2 33%",
                "route v1 33% / v2 66%",
                "route v2 100%"
            ]
        );
    }

    #[test]
    fn blue_green_switches_once_then_retires() {
        let plan = rollout(
            &Strategy::BlueGreen {
                drain_seconds: None,
            },
            Some(Current {
                set: V1,
                replicas: 3,
            }),
            V2,
            3,
        );
        assert_eq!(plan, immediate(V1, V2, 3));
        assert_eq!(plan[1].describe(), "route v2 100%");
    }

    #[test]
    fn canary_steps_scale_route_and_gate_then_promote() {
        let strategy = Strategy::Canary {
            steps: vec![
                CanaryStep {
                    weight: 20,
                    pause_seconds: 5,
                },
                CanaryStep {
                    weight: 50,
                    pause_seconds: 5,
                },
            ],
        };
        let plan = rollout(
            &strategy,
            Some(Current {
                set: V1,
                replicas: 3,
            }),
            V2,
            3,
        );
        assert_eq!(plan[0], Step::Scale { set: V2, count: 1 });
        assert_eq!(plan[1].describe(), "route v1 80% / v2 20%");
        assert!(
            matches!(&plan[2], Step::Pause { seconds: 5, gates } if gates == &[Gate::Health { release: 2 }])
        );
        assert_eq!(plan[3], Step::Scale { set: V2, count: 2 });
        assert_eq!(&plan[6..], immediate(V1, V2, 3).as_slice());
    }

    #[test]
    fn first_deployment_and_same_release_only_scale() {
        let first = rollout(&Strategy::default(), None, V2, 3);
        assert_eq!(
            first,
            vec![Step::Scale { set: V2, count: 3 }, route(&[(2, 100)])]
        );
        let same = rollout(
            &Strategy::Recreate {},
            Some(Current {
                set: V2,
                replicas: 3,
            }),
            V2,
            5,
        );
        assert_eq!(same[0], Step::Scale { set: V2, count: 5 });
    }

    #[test]
    fn recreate_stops_before_starting() {
        let plan = rollout(
            &Strategy::Recreate {},
            Some(Current {
                set: V1,
                replicas: 2,
            }),
            V2,
            2,
        );
        assert_eq!(plan[1], Step::Scale { set: V1, count: 0 });
        assert_eq!(plan[2], Step::Scale { set: V2, count: 2 });
    }
}
