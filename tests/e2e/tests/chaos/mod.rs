//! The chaos suite's parts: the matrix ([`plan`]), running a group of cells on its own stack
//! ([`run`]), the edge prober ([`prober`]), the invariants ([`checks`]) and the table.

pub mod checks;
pub mod plan;
pub mod prober;
pub mod run;
pub mod table;

use std::collections::HashSet;
use std::time::Duration;

/// Lease ttl given to builder and deployer; the one-driver check allows exactly this.
pub const LEASE_TTL_SECONDS: u64 = 6;
/// The builder's step timeout: what ends the endless-line build.
pub const BUILD_STEP_TIMEOUT_SECONDS: u64 = 40;

/// Runs `group` on a stack of its own and checks every invariant of each of its cells.
pub async fn group_rows(group: &plan::Group) -> Vec<table::Row> {
    let (mut stack, outcomes, prober) = run::group(group).await;
    // A succeeded build is done once the registry made its release from `artifact.published`:
    // after an outage that needs the registry's consumer back in its group, so it is waited
    // for (bounded) before the outboxes are drained and the releases counted.
    let mut released = Vec::new();
    for o in &outcomes {
        released.push(checks::release_made(&stack, o, Duration::from_secs(90)).await);
    }
    // Every fault is over: what was enqueued must now reach the broker.
    checks::drain_outboxes(&stack, Duration::from_secs(90)).await;
    let mut rows_of = Vec::new();
    let mut wanted = HashSet::new();
    for o in &outcomes {
        let rows = checks::outbox_rows(&stack, o.window).await;
        wanted.extend(rows.iter().map(|r| r.0.clone()));
        rows_of.push(rows);
    }
    let on_topics = checks::event_ids_on_topics(&stack, &wanted, Duration::from_secs(60)).await;
    let mut verdicts = Vec::new();
    for ((o, rows), released) in outcomes.iter().zip(&rows_of).zip(&released) {
        verdicts.push(vec![
            checks::ends(o),
            checks::outbox(rows, &on_topics),
            checks::once(&stack, o, *released).await,
            checks::one_driver(&stack, o).await,
        ]);
    }
    let edges: Vec<checks::Verdict> = outcomes.iter().map(|o| checks::edge(&prober, o)).collect();
    prober.stop().await;
    // Orphans are a property of the whole stack once it stops: every row shows the result.
    let orphans = checks::orphans(&mut stack).await;
    outcomes
        .into_iter()
        .zip(verdicts)
        .zip(edges)
        .map(|((o, mut v), edge)| {
            v.push(checks::Verdict {
                ok: orphans.ok,
                text: orphans.text.clone(),
            });
            v.push(edge);
            let fault_ok = o.fault.is_ok();
            let fault = match o.fault {
                Ok(f) => f,
                Err(e) => format!("NOT INJECTED: {e}"),
            };
            // A fault that could not be injected proves nothing: the cell fails.
            if !fault_ok {
                v[0] = checks::Verdict {
                    ok: false,
                    text: format!("fault not injected; {}", v[0].text),
                };
            }
            table::Row {
                group: group.name,
                cell: o.cell.name(),
                fault,
                verdicts: v,
            }
        })
        .collect()
}
