//! The health state machine: a pure function from (state, probe outcome, time since start) to
//! the next state, so every rule is unit-tested without a network or a clock.
//!
//! Rules (thresholds from the instance's [`HealthCheck`]):
//! - `starting` → `healthy` after `success_threshold` consecutive successes; a success counts
//!   at once, even during the grace period.
//! - `starting` → `unhealthy` after `failure_threshold` consecutive failures, counting only
//!   failures seen once `grace_seconds` since the start have passed (slow starters).
//! - `healthy` → `unhealthy` after `failure_threshold` consecutive failures (no grace: the
//!   instance has proven it can answer).
//! - `unhealthy` → `healthy` after `success_threshold` consecutive successes.
//!
//! A success resets the failure run and a failure the success run, so "consecutive" holds.

use std::time::Duration;

use slipway_events::deploy::{Health, HealthCheck};

/// Where an incarnation's health stands, with the current runs of outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeState {
    pub health: Health,
    /// Consecutive successes so far (0 after any failure).
    pub successes: u32,
    /// Consecutive failures counted so far (0 after any success; failures in grace while
    /// `starting` are not counted).
    pub failures: u32,
}

impl ProbeState {
    /// A state at `health` with no runs yet: a fresh incarnation (`starting`), or one read back
    /// from storage after a monitor restart (runs start over).
    pub fn resumed(health: Health) -> Self {
        Self {
            health,
            successes: 0,
            failures: 0,
        }
    }
}

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// The state after `outcome`, observed `since_start` after the incarnation started, and the
/// new health when it changed.
pub fn step(
    state: ProbeState,
    outcome: Outcome,
    since_start: Duration,
    check: &HealthCheck,
) -> (ProbeState, Option<Health>) {
    let mut next = state;
    match outcome {
        Outcome::Success => {
            next.failures = 0;
            next.successes = state.successes.saturating_add(1);
            if state.health != Health::Healthy && next.successes >= check.success_threshold {
                next.health = Health::Healthy;
            }
        }
        Outcome::Failure => {
            next.successes = 0;
            let in_grace = since_start < Duration::from_secs(u64::from(check.grace_seconds));
            if state.health == Health::Starting && in_grace {
                next.failures = 0;
            } else {
                next.failures = state.failures.saturating_add(1);
            }
            if state.health != Health::Unhealthy && next.failures >= check.failure_threshold {
                next.health = Health::Unhealthy;
            }
        }
    }
    let changed = (next.health != state.health).then_some(next.health);
    (next, changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::{Healthy, Starting, Unhealthy};
    use Outcome::{Failure, Success};

    fn check(success: u32, failure: u32, grace: u32) -> HealthCheck {
        HealthCheck {
            success_threshold: success,
            failure_threshold: failure,
            grace_seconds: grace,
            ..HealthCheck::default()
        }
    }

    const AFTER_GRACE: Duration = Duration::from_secs(3600);
    const IN_GRACE: Duration = Duration::from_secs(1);

    /// Runs `outcomes` from `health` and returns the healths after each step.
    fn run(health: Health, outcomes: &[Outcome], at: Duration, c: &HealthCheck) -> Vec<Health> {
        let mut state = ProbeState::resumed(health);
        outcomes
            .iter()
            .map(|o| {
                state = step(state, *o, at, c).0;
                state.health
            })
            .collect()
    }

    #[test]
    fn starting_becomes_healthy_after_success_threshold_successes() {
        let c = check(3, 2, 0);
        assert_eq!(
            run(Starting, &[Success, Success, Success], AFTER_GRACE, &c),
            [Starting, Starting, Healthy]
        );
        // A failure breaks the run of successes.
        assert_eq!(
            run(
                Starting,
                &[Success, Success, Failure, Success, Success, Success],
                IN_GRACE,
                &check(3, 2, 10)
            ),
            [Starting, Starting, Starting, Starting, Starting, Healthy]
        );
    }

    #[test]
    fn a_success_counts_at_once_during_grace() {
        let c = check(1, 3, 60);
        assert_eq!(run(Starting, &[Success], IN_GRACE, &c), [Healthy]);
    }

    #[test]
    fn failures_during_grace_are_not_counted_while_starting() {
        let c = check(1, 2, 60);
        let (state, changed) = (0..50).fold((ProbeState::resumed(Starting), None), |(s, _), _| {
            step(s, Failure, IN_GRACE, &c)
        });
        assert_eq!(state.health, Starting);
        assert_eq!(state.failures, 0);
        assert_eq!(changed, None);
        // Once the grace is over, failures count from zero.
        let (state, changed) = step(state, Failure, AFTER_GRACE, &c);
        assert_eq!((state.health, state.failures, changed), (Starting, 1, None));
        let (state, changed) = step(state, Failure, AFTER_GRACE, &c);
        assert_eq!((state.health, changed), (Unhealthy, Some(Unhealthy)));
    }

    #[test]
    fn grace_ends_exactly_at_grace_seconds() {
        let c = check(1, 1, 5);
        let just_before = Duration::from_millis(4999);
        assert_eq!(
            step(ProbeState::resumed(Starting), Failure, just_before, &c).1,
            None
        );
        let at = Duration::from_secs(5);
        assert_eq!(
            step(ProbeState::resumed(Starting), Failure, at, &c).1,
            Some(Unhealthy)
        );
    }

    #[test]
    fn starting_becomes_unhealthy_after_failure_threshold_without_grace() {
        let c = check(1, 3, 0);
        assert_eq!(
            run(Starting, &[Failure, Failure, Failure], Duration::ZERO, &c),
            [Starting, Starting, Unhealthy]
        );
    }

    #[test]
    fn healthy_becomes_unhealthy_after_consecutive_failures_even_in_grace() {
        let c = check(1, 3, 60);
        assert_eq!(
            run(
                Healthy,
                &[Failure, Failure, Success, Failure, Failure, Failure],
                IN_GRACE,
                &c
            ),
            [Healthy, Healthy, Healthy, Healthy, Healthy, Unhealthy]
        );
    }

    #[test]
    fn unhealthy_recovers_after_success_threshold_successes() {
        let c = check(2, 1, 0);
        assert_eq!(
            run(
                Unhealthy,
                &[Success, Failure, Success, Success],
                AFTER_GRACE,
                &c
            ),
            [Unhealthy, Unhealthy, Unhealthy, Healthy]
        );
    }

    #[test]
    fn steady_states_report_no_change() {
        let c = check(1, 1, 0);
        let healthy = ProbeState::resumed(Healthy);
        assert_eq!(step(healthy, Success, AFTER_GRACE, &c).1, None);
        let unhealthy = ProbeState::resumed(Unhealthy);
        assert_eq!(step(unhealthy, Failure, AFTER_GRACE, &c).1, None);
        // Further failures while unhealthy keep counting but change nothing.
        let (s, changed) = step(
            step(unhealthy, Failure, AFTER_GRACE, &c).0,
            Failure,
            AFTER_GRACE,
            &c,
        );
        assert_eq!((s.health, s.failures, changed), (Unhealthy, 2, None));
    }

    #[test]
    fn every_transition_is_reported_once() {
        // Exhaustive over small thresholds and sequences: a change is reported exactly when
        // the health differs, and the health only moves along the allowed edges.
        for success in 1..=3 {
            for failure in 1..=3 {
                for grace in [0, 60] {
                    let c = check(success, failure, grace);
                    for bits in 0u32..(1 << 8) {
                        for at in [IN_GRACE, AFTER_GRACE] {
                            let mut s = ProbeState::resumed(Starting);
                            for i in 0..8 {
                                let o = if bits & (1 << i) == 0 {
                                    Success
                                } else {
                                    Failure
                                };
                                let (n, changed) = step(s, o, at, &c);
                                assert_eq!(changed.is_some(), n.health != s.health);
                                match (s.health, n.health) {
                                    (a, b) if a == b => {}
                                    (_, Healthy) => {
                                        assert_eq!(o, Success);
                                        assert_eq!(n.successes, success);
                                    }
                                    (_, Unhealthy) => {
                                        assert_eq!(o, Failure);
                                        assert_eq!(n.failures, failure);
                                    }
                                    (a, b) => panic!("illegal edge {a:?} -> {b:?}"),
                                }
                                s = n;
                            }
                        }
                    }
                }
            }
        }
    }
}
