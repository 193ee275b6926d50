//! The matrix: which faults hit which work, grouped by the stack they run on.
//!
//! `SLIPWAY_CHAOS=full` (what `scripts/chaos` sets) runs every cell; otherwise a quick slice
//! runs (what `scripts/test` covers on every run).

use std::time::Duration;

use serde_json::{Value, json};

/// The services a kill hits.
pub const KILLED: [&str; 5] = ["deployer", "builder", "monitor", "registry", "gateway"];

/// How a deployment rolls out (two instances from two, the plans of `engine/plan.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Rolling,
    BlueGreen,
    Canary,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::BlueGreen => "blue-green",
            Strategy::Canary => "canary",
        }
    }

    pub fn body(self) -> Value {
        match self {
            Strategy::Rolling => json!({"type": "rolling", "max_surge": 1, "max_unavailable": 0}),
            Strategy::BlueGreen => json!({"type": "blue_green"}),
            Strategy::Canary => {
                json!({"type": "canary", "steps": [{"weight": 50, "pause_seconds": 5}]})
            }
        }
    }

    /// Steps of its plan for 2 instances replacing 2 (scale, route, scale, ... as
    /// `engine/plan.rs` makes them); a kill aimed past the end is reported, never skipped.
    pub fn steps(self) -> usize {
        match self {
            Strategy::Rolling => 6,
            Strategy::BlueGreen => 3,
            Strategy::Canary => 6,
        }
    }
}

/// Which build recipe a build runs (`tests/e2e/fixtures/chaos/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    Slow,
    LongLine,
    EndlessLine,
}

impl Fixture {
    pub fn recipe(self) -> &'static str {
        match self {
            Fixture::Slow => include_str!("../../fixtures/chaos/slow-build.toml"),
            Fixture::LongLine => include_str!("../../fixtures/chaos/long-line.toml"),
            Fixture::EndlessLine => include_str!("../../fixtures/chaos/endless-line.toml"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fixture::Slow => "slow build",
            Fixture::LongLine => "2 MB line build",
            Fixture::EndlessLine => "endless line build",
        }
    }
}

/// What a cell makes the platform do.
#[derive(Debug, Clone, Copy)]
pub enum Work {
    Deploy(Strategy),
    Build(Fixture),
}

/// What goes wrong meanwhile.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Nothing (the work itself is the trouble: the build fixtures).
    None,
    /// SIGKILL of one replica of `service` when the deployment reaches step `step`; the
    /// replica starts again (as a new replica id) 2 s later.
    Kill { service: &'static str, step: usize },
    /// The broker hangs (SIGSTOP) this long once the work runs, then resumes (SIGCONT).
    BrokerHang(Duration),
    /// PostgreSQL is stopped this long once the work runs, then started again.
    PostgresStop(Duration),
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub work: Work,
    pub fault: Fault,
}

impl Cell {
    pub fn name(&self) -> String {
        let work = match self.work {
            Work::Deploy(s) => s.name().to_owned(),
            Work::Build(f) => f.name().to_owned(),
        };
        match self.fault {
            Fault::None => work,
            Fault::Kill { service, step } => format!("kill {service} @ {work} step {step}"),
            Fault::BrokerHang(d) => format!("broker hung {}s mid-{}", d.as_secs(), mid(self.work)),
            Fault::PostgresStop(d) => {
                format!("postgres down {}s mid-{}", d.as_secs(), mid(self.work))
            }
        }
    }

    /// Whether the edge must answer every request throughout: the kill cases, and the cells
    /// with no fault at all. Through an outage it must heal afterwards (see `checks::edge`).
    pub fn edge_required(&self) -> bool {
        matches!(self.fault, Fault::Kill { .. } | Fault::None)
    }

    /// The final status the work must end in, when only one is right: a killed replica is
    /// replaced without the rollout noticing, a build waits an outage out, the misbehaving
    /// builds fail. A deployment through an outage may end either way (its step deadline may
    /// pass while the broker hangs), as long as it ends.
    pub fn expected(&self) -> Option<&'static str> {
        match (self.work, self.fault) {
            (Work::Build(Fixture::LongLine | Fixture::EndlessLine), _) => Some("failed"),
            (Work::Build(Fixture::Slow), _) => Some("succeeded"),
            (Work::Deploy(_), Fault::Kill { .. } | Fault::None) => Some("succeeded"),
            (Work::Deploy(_), _) => None,
        }
    }

    /// How long the work may take to end, the fault included.
    pub fn deadline(&self) -> Duration {
        let fault = match self.fault {
            Fault::BrokerHang(d) | Fault::PostgresStop(d) => d,
            // A takeover waits out the killed driver's lease.
            Fault::Kill { .. } => Duration::from_secs(30),
            Fault::None => Duration::ZERO,
        };
        let work = match self.work {
            Work::Deploy(_) => Duration::from_secs(150),
            Work::Build(Fixture::EndlessLine) => {
                Duration::from_secs(super::BUILD_STEP_TIMEOUT_SECONDS + 90)
            }
            Work::Build(_) => Duration::from_secs(150),
        };
        work + fault
    }
}

fn mid(work: Work) -> &'static str {
    match work {
        Work::Deploy(_) => "deployment",
        Work::Build(_) => "build",
    }
}

/// Cells sharing one stack.
pub struct Group {
    pub name: &'static str,
    pub cells: Vec<Cell>,
}

/// A few cells, one of each kind, under ~3 minutes: what `scripts/test` runs.
pub fn quick() -> Vec<Group> {
    vec![Group {
        name: "quick slice",
        cells: vec![
            Cell {
                work: Work::Deploy(Strategy::Rolling),
                fault: Fault::Kill {
                    service: "deployer",
                    step: 2,
                },
            },
            Cell {
                work: Work::Build(Fixture::LongLine),
                fault: Fault::None,
            },
            Cell {
                work: Work::Deploy(Strategy::BlueGreen),
                fault: Fault::BrokerHang(Duration::from_secs(15)),
            },
        ],
    }]
}

/// Every cell: each service killed at each step of each strategy, the outages mid-deployment
/// and mid-build, and the two misbehaving builds.
pub fn full() -> Vec<Group> {
    let mut groups = Vec::new();
    for strategy in [Strategy::Rolling, Strategy::BlueGreen, Strategy::Canary] {
        let mut cells = Vec::new();
        for step in 0..strategy.steps() {
            for service in KILLED {
                cells.push(Cell {
                    work: Work::Deploy(strategy),
                    fault: Fault::Kill { service, step },
                });
            }
        }
        groups.push(Group {
            name: strategy.name(),
            cells,
        });
    }
    // Each outage on a stack of its own: a platform deaf after the first must not hide
    // whether it waits out the next.
    let broker = Fault::BrokerHang(Duration::from_secs(90));
    let postgres = Fault::PostgresStop(Duration::from_secs(60));
    for (name, work, fault) in [
        ("broker/deploy", Work::Deploy(Strategy::Rolling), broker),
        ("broker/build", Work::Build(Fixture::Slow), broker),
        ("postgres/deploy", Work::Deploy(Strategy::Rolling), postgres),
        ("postgres/build", Work::Build(Fixture::Slow), postgres),
    ] {
        groups.push(Group {
            name,
            cells: vec![Cell { work, fault }],
        });
    }
    groups.push(Group {
        name: "build output",
        cells: vec![
            Cell {
                work: Work::Build(Fixture::LongLine),
                fault: Fault::None,
            },
            Cell {
                work: Work::Build(Fixture::EndlessLine),
                fault: Fault::None,
            },
        ],
    });
    groups
}
