//! The chaos suite: faults injected into the real stack (two replicas of builder, deployer,
//! monitor and gateway; its own PostgreSQL and broker) while it deploys and builds, and the
//! platform's guarantees checked afterwards, cell by cell (README "Guarantees"):
//!
//! - every deployment and build ends in a final state within its deadline;
//! - every outbox row reaches Kafka (published, its event id on the topics);
//! - no event is applied twice (one start and one finish per deployment, its replicas running
//!   once; one finish per build and one release per successful build);
//! - no build or deployment is driven by two replicas at once (the claim history tables);
//! - no orphan process is left (every instance is the deployer's, none survives the stop);
//! - the edge router answers throughout the kill cases.
//!
//! `SLIPWAY_CHAOS=full` (`scripts/chaos`) runs the whole matrix: SIGKILL of each service at
//! each step of a rolling, a blue-green and a canary deployment; the broker hung for 90 s and
//! PostgreSQL stopped for 60 s, each mid-deployment and mid-build; a build printing a 2 MB line
//! and one printing forever without a newline. Otherwise a quick slice runs (`scripts/test`).
//! The table is printed, and the test fails if any cell fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

// The suite's modules live in `chaos/` beside this file.
#[path = "chaos/mod.rs"]
mod suite;
mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_matrix_holds_every_guarantee() {
    let full = std::env::var("SLIPWAY_CHAOS").is_ok_and(|v| v == "full");
    let mut groups = if full {
        suite::plan::full()
    } else {
        suite::plan::quick()
    };
    // SLIPWAY_CHAOS_CELLS=<text>[,<text>...]: only the cells whose name contains one of them
    // (to rerun a few).
    if let Ok(only) = std::env::var("SLIPWAY_CHAOS_CELLS") {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        for group in &mut groups {
            group
                .cells
                .retain(|c| wanted.iter().any(|w| c.name().contains(w)));
        }
        groups.retain(|g| !g.cells.is_empty());
        assert!(
            !groups.is_empty(),
            "no cell matches SLIPWAY_CHAOS_CELLS={only}"
        );
    }
    let mut rows = Vec::new();
    for group in &groups {
        rows.extend(suite::group_rows(group).await);
    }
    let table = suite::table::render(&rows);
    println!("\n{table}");
    // scripts/chaos keeps the table (target/chaos/table.md).
    if let Ok(path) = std::env::var("SLIPWAY_CHAOS_TABLE") {
        std::fs::write(&path, &table).unwrap();
    }
    // Full reasons, which the table cuts.
    for row in rows.iter().filter(|r| !r.passed()) {
        for (column, v) in suite::table::COLUMNS.iter().zip(&row.verdicts) {
            if !v.ok {
                println!("✗ {} / {column}: {}", row.cell, v.text);
            }
        }
    }
    assert!(
        rows.iter().all(|r| r.passed()),
        "chaos cells failed:\n{table}"
    );
}
