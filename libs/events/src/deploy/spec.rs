//! Strategies and health checks: shared by the gateway (validation) and the deployer
//! (execution), carried in deploy commands and instance facts.

use serde::{Deserialize, Deserializer, Serialize};

use crate::inputs::ProbePath;

/// How a release replaces the one running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Stop every old instance, then start the new ones (downtime; for dev environments).
    /// A struct variant (not a unit one) so that unknown fields are refused here too: serde
    /// ignores `deny_unknown_fields` on unit variants of an internally tagged enum.
    Recreate {},
    /// Replace instances in batches. `max_surge`: new instances started above the replica
    /// count at once; `max_unavailable`: old instances stopped before their replacement is
    /// healthy. At least one of the two is positive.
    Rolling {
        #[serde(default = "one")]
        max_surge: u32,
        #[serde(default)]
        max_unavailable: u32,
    },
    /// Start the whole new set, wait until healthy, switch traffic atomically, drain the old set
    /// for `drain_seconds`, then stop it.
    BlueGreen {
        #[serde(default)]
        drain_seconds: Option<u32>,
    },
    /// Shift traffic to the new release in steps of weight; each step holds for its pause while
    /// its gate is checked. A final full promotion follows the last step.
    Canary { steps: Vec<CanaryStep> },
}

fn one() -> u32 {
    1
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::Rolling {
            max_surge: 1,
            max_unavailable: 0,
        }
    }
}

/// One canary step: send `weight` percent of traffic to the new release for `pause_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percent of requests for the canary, 1–100.
    pub weight: u32,
    /// How long the step holds (and its gate is watched) before the next one.
    #[serde(default)]
    pub pause_seconds: u32,
}

impl Strategy {
    /// The strategy's name as shown in APIs (`rolling`, `blue_green`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Recreate {} => "recreate",
            Strategy::Rolling { .. } => "rolling",
            Strategy::BlueGreen { .. } => "blue_green",
            Strategy::Canary { .. } => "canary",
        }
    }

    /// Checks the parameters; `Err((field, why))` names the offending field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self {
            Strategy::Recreate {} | Strategy::BlueGreen { .. } => Ok(()),
            Strategy::Rolling {
                max_surge,
                max_unavailable,
            } => {
                if *max_surge == 0 && *max_unavailable == 0 {
                    Err((
                        "strategy.max_surge",
                        "max_surge and max_unavailable cannot both be 0".into(),
                    ))
                } else if *max_surge > 100 || *max_unavailable > 100 {
                    Err(("strategy.max_surge", "must be at most 100".into()))
                } else {
                    Ok(())
                }
            }
            Strategy::Canary { steps } => {
                if steps.is_empty() || steps.len() > 20 {
                    return Err(("strategy.steps", "must have 1 to 20 steps".into()));
                }
                let mut last = 0;
                for (i, s) in steps.iter().enumerate() {
                    if s.weight == 0 || s.weight > 100 {
                        return Err((
                            "strategy.steps",
                            format!("step {i}: weight must be 1..=100"),
                        ));
                    }
                    if s.weight < last {
                        return Err((
                            "strategy.steps",
                            format!("step {i}: weights must not decrease"),
                        ));
                    }
                    if s.pause_seconds > 86_400 {
                        return Err((
                            "strategy.steps",
                            format!("step {i}: pause_seconds must be at most 86400"),
                        ));
                    }
                    last = s.weight;
                }
                Ok(())
            }
        }
    }
}

/// How the monitor probes an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http` (GET `path`, healthy on 2xx/3xx) or `tcp` (connect).
    #[serde(default = "http_kind")]
    pub kind: ProbeKind,
    /// The HTTP path (and query), for `http` probes: always on the instance's own address.
    #[serde(default, deserialize_with = "health_check_path")]
    pub path: ProbePath,
    #[serde(default = "interval_ms")]
    pub interval_ms: u32,
    #[serde(default = "timeout_ms")]
    pub timeout_ms: u32,
    /// Consecutive failures that make a healthy instance unhealthy.
    #[serde(default = "three")]
    pub failure_threshold: u32,
    /// Consecutive successes that make an instance healthy.
    #[serde(default = "one")]
    pub success_threshold: u32,
    /// After a start, failures are not counted for this long (slow starters); a success still
    /// counts at once.
    #[serde(default = "grace_seconds")]
    pub grace_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    Http,
    Tcp,
}

fn http_kind() -> ProbeKind {
    ProbeKind::Http
}
fn health_check_path<'de, D: Deserializer<'de>>(d: D) -> Result<ProbePath, D::Error> {
    ProbePath::named("health_check.path", d)
}
fn interval_ms() -> u32 {
    1000
}
fn timeout_ms() -> u32 {
    1000
}
fn three() -> u32 {
    3
}
fn grace_seconds() -> u32 {
    30
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            kind: ProbeKind::Http,
            path: ProbePath::default(),
            interval_ms: interval_ms(),
            timeout_ms: timeout_ms(),
            failure_threshold: three(),
            success_threshold: one(),
            grace_seconds: grace_seconds(),
        }
    }
}

impl HealthCheck {
    /// Checks the parameters; `Err((field, why))` names the offending field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(100..=600_000).contains(&self.interval_ms) {
            return Err(("health_check.interval_ms", "must be 100..=600000".into()));
        }
        if !(50..=60_000).contains(&self.timeout_ms) {
            return Err(("health_check.timeout_ms", "must be 50..=60000".into()));
        }
        if !(1..=100).contains(&self.failure_threshold) {
            return Err(("health_check.failure_threshold", "must be 1..=100".into()));
        }
        if !(1..=100).contains(&self.success_threshold) {
            return Err(("health_check.success_threshold", "must be 1..=100".into()));
        }
        if self.grace_seconds > 3600 {
            return Err(("health_check.grace_seconds", "must be at most 3600".into()));
        }
        Ok(())
    }

    /// A short human description, e.g. `http GET /healthz`, used in reasons.
    pub fn describe(&self) -> String {
        match self.kind {
            ProbeKind::Http => format!("http GET {}", self.path),
            ProbeKind::Tcp => "tcp connect".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_with_defaults_and_refuse_unknown_fields() {
        let s: Strategy = serde_json::from_value(serde_json::json!({"type": "rolling"})).unwrap();
        assert_eq!(
            s,
            Strategy::Rolling {
                max_surge: 1,
                max_unavailable: 0
            }
        );
        let c: Strategy = serde_json::from_value(serde_json::json!({
            "type": "canary", "steps": [{"weight": 20, "pause_seconds": 5}, {"weight": 50}]
        }))
        .unwrap();
        assert!(c.validate().is_ok());
        assert!(
            serde_json::from_value::<Strategy>(serde_json::json!({"type": "rolling", "surge": 1}))
                .is_err()
        );
        let recreate: Strategy =
            serde_json::from_value(serde_json::json!({"type": "recreate"})).unwrap();
        assert_eq!(recreate, Strategy::Recreate {});
        assert_eq!(
            serde_json::to_value(&recreate).unwrap(),
            serde_json::json!({"type": "recreate"})
        );
        assert!(
            serde_json::from_value::<Strategy>(serde_json::json!({"type": "recreate", "speed": 3}))
                .is_err()
        );
        let bad = Strategy::Canary {
            steps: vec![
                CanaryStep {
                    weight: 50,
                    pause_seconds: 0,
                },
                CanaryStep {
                    weight: 20,
                    pause_seconds: 0,
                },
            ],
        };
        assert_eq!(bad.validate().unwrap_err().0, "strategy.steps");
        let none = Strategy::Rolling {
            max_surge: 0,
            max_unavailable: 0,
        };
        assert!(none.validate().is_err());
    }

    #[test]
    fn health_checks_default_and_validate() {
        let h: HealthCheck = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(h, HealthCheck::default());
        assert_eq!(h.describe(), "http GET /healthz");
        let bad = HealthCheck {
            interval_ms: 10,
            ..HealthCheck::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "health_check.interval_ms");
    }

    #[test]
    fn health_check_paths_are_parsed_and_named_in_errors() {
        let h: HealthCheck =
            serde_json::from_value(serde_json::json!({"path": "/ready?deep=1"})).unwrap();
        assert_eq!(h.path, "/ready?deep=1");
        assert_eq!(serde_json::to_value(&h).unwrap()["path"], "/ready?deep=1");
        for bad in [
            "@169.254.169.254/latest",
            "//evil/x",
            "/x y",
            "http://evil/",
        ] {
            let err = serde_json::from_value::<HealthCheck>(serde_json::json!({"path": bad}))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("health_check.path: "), "{bad}: {err}");
        }
    }
}
