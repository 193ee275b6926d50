//! `docs/events.md` is the contract outside teams code against: it must name every event type
//! and topic the code defines, verbatim.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use slipway_events::cdevents::CdEventKind;
use slipway_events::deploy::{
    DeployCancelRequested, DeployRequested, DeploymentFinished, DeploymentStarted, DeploymentStep,
    InstanceDraining, InstanceExited, InstanceHealthChanged, InstanceLogs, InstanceStarted,
    InstanceStopped, InstancesHeartbeat, TrafficChanged,
};
use slipway_events::slipway::{BuildRequested, ReleaseCreated, ServiceCreated};
use slipway_events::{EventData, Topic};

#[test]
fn the_catalog_names_every_type_and_topic() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.md");
    let catalog = std::fs::read_to_string(path).expect("docs/events.md exists");
    let mut names: Vec<&str> = CdEventKind::ALL.iter().map(|k| k.type_str()).collect();
    names.push(ServiceCreated::TYPE);
    names.push(BuildRequested::TYPE);
    names.push(ReleaseCreated::TYPE);
    names.extend([
        DeployRequested::TYPE,
        DeployCancelRequested::TYPE,
        DeploymentStarted::TYPE,
        DeploymentStep::TYPE,
        DeploymentFinished::TYPE,
        TrafficChanged::TYPE,
        InstanceStarted::TYPE,
        InstanceDraining::TYPE,
        InstanceExited::TYPE,
        InstanceStopped::TYPE,
        InstancesHeartbeat::TYPE,
        InstanceLogs::TYPE,
        InstanceHealthChanged::TYPE,
    ]);
    names.extend(Topic::ALL.iter().map(|t| t.base()));
    let missing: Vec<&str> = names
        .into_iter()
        .filter(|n| !catalog.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/events.md does not mention: {missing:?}"
    );
}
