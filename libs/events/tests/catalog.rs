//! `docs/events.md` is the contract outside teams code against: it must name every event type
//! and topic the code defines, verbatim.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use slipway_events::cdevents::CdEventKind;
use slipway_events::deploy::{
    DeployCancelRequested, DeployRequested, DeploymentFinished, DeploymentStarted, DeploymentStep,
    InstanceDraining, InstanceExited, InstanceHealthChanged, InstanceLogs, InstanceStarted,
    InstanceStopped, InstancesHeartbeat, InstancesHeartbeatV1, InstancesHeartbeatV2,
    TrafficChanged,
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
        InstancesHeartbeatV2::TYPE,
        InstancesHeartbeatV1::TYPE,
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

#[test]
fn the_catalog_names_each_types_owner_as_its_producer() {
    // The owner table decides whose signature a consumer accepts; the catalog tells outside
    // teams the same thing in its "producer" column.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/events.md");
    let catalog = std::fs::read_to_string(path).expect("docs/events.md exists");
    let mut rows = 0;
    for line in catalog.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `type` | `topic` | producer | status |
        let [_, ty, topic, producer, _, _] = cells.as_slice() else {
            continue;
        };
        let (Some(ty), true) = (
            ty.strip_prefix('`').and_then(|t| t.strip_suffix('`')),
            topic.starts_with("`slipway."),
        ) else {
            continue;
        };
        rows += 1;
        let owner = slipway_events::trust::owner(ty)
            .unwrap_or_else(|| panic!("{ty} is in the catalog but has no owner"));
        assert_eq!(*producer, owner.name(), "{ty}");
    }
    assert!(
        rows >= 30,
        "found only {rows} rows of the event types table"
    );
}
