//! Every CDEvent slipway can emit validates against the official v0.5.1 JSON schema.
//!
//! The schemas live in `shared/cdevents-schemas-v0.5.1` beside the repository (or wherever
//! `CDEVENTS_SCHEMA_DIR` points); formats (`uri-reference`, `date-time`) are asserted too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::path::PathBuf;

use serde_json::Value;
use slipway_events::cdevents::{CdEvent, CdEventKind, EnvironmentRef, oci_purl};
use slipway_ids::ServiceId;

fn schema_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CDEVENTS_SCHEMA_DIR") {
        return PathBuf::from(dir);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        repo.join("../shared/cdevents-schemas-v0.5.1"),
        repo.join("shared/cdevents-schemas-v0.5.1"),
    ];
    candidates
        .into_iter()
        .find(|p| p.join("servicedeployed.json").exists())
        .expect("CDEvents schemas not found: set CDEVENTS_SCHEMA_DIR")
}

fn read(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn validator(kind: CdEventKind) -> jsonschema::Validator {
    let dir = schema_dir();
    let schema = read(dir.join(kind.schema_file()));
    let links = std::fs::read_dir(dir.join("links")).unwrap().map(|entry| {
        let link = read(entry.unwrap().path());
        (link["$id"].as_str().unwrap().to_owned(), link)
    });
    let registry = jsonschema::Registry::new()
        .extend(links)
        .unwrap()
        .prepare()
        .unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .with_registry(&registry)
        .build(&schema)
        .unwrap()
}

/// One representative event of every kind, built through the public constructors.
fn samples() -> Vec<CdEvent> {
    let src = "/slipway/test";
    let env = EnvironmentRef {
        id: "prod".into(),
        source: Some("/slipway/registry".into()),
    };
    let purl = oci_purl("hello", &"ab".repeat(32));
    vec![
        CdEvent::build_queued(src, "build-1"),
        CdEvent::build_started(src, "build-1"),
        CdEvent::build_finished(src, "build-1", Some(&purl)),
        CdEvent::build_finished(src, "build-2", None)
            .with_custom_data(serde_json::json!({"outcome": "failed", "reason": "tests failed"})),
        CdEvent::artifact_packaged(src, &purl, "0123abcd", "https://git.example/hello.git"),
        CdEvent::artifact_published(src, &purl),
        CdEvent::service_deployed(src, "hello", &env, &purl),
        CdEvent::service_upgraded(src, "hello", &env, &purl)
            .with_subject_source("/slipway/registry"),
        CdEvent::service_rolled_back(src, "hello", &env, &purl)
            .with_custom_data(serde_json::json!({"reason": "health check failed"})),
        CdEvent::service_removed(src, "hello", &env),
        CdEvent::environment_created(src, "prod", "prod", "https://slipway.example/envs/prod"),
        CdEvent::environment_modified(src, "prod", "prod", "https://slipway.example/envs/prod"),
        CdEvent::environment_deleted(src, "prod", "prod"),
        CdEvent::incident_detected(
            src,
            "inc-1",
            "error rate 12%",
            &env,
            Some("hello"),
            Some(&purl),
        ),
        CdEvent::incident_reported(
            src,
            "inc-1",
            "error rate 12%",
            &env,
            "https://tickets.example/1",
        ),
        CdEvent::incident_resolved(src, "inc-1", "recovered", &env, Some("hello"), None),
    ]
}

#[test]
fn every_kind_has_a_sample() {
    let covered: std::collections::HashSet<_> = samples().iter().map(|e| e.kind()).collect();
    for kind in CdEventKind::ALL {
        assert!(covered.contains(&kind), "no sample for {kind:?}");
    }
}

#[test]
fn every_cdevent_validates_against_the_official_schema() {
    for event in samples() {
        let kind = event.kind();
        let doc = event.to_json();
        let v = validator(kind);
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{kind:?} invalid: {errors:?}\n{doc:#}");
    }
}

#[test]
fn schema_rejects_a_broken_event() {
    // Proves the validator is really checking: drop a required field.
    let event = CdEvent::service_deployed(
        "/slipway/test",
        "hello",
        &EnvironmentRef {
            id: "prod".into(),
            source: None,
        },
        "pkg:oci/hello@sha256%3Aab",
    );
    let mut doc = event.to_json();
    doc["subject"]["content"]
        .as_object_mut()
        .unwrap()
        .remove("artifactId");
    assert!(!validator(CdEventKind::ServiceDeployed).is_valid(&doc));
}

#[test]
fn cloud_event_attributes_match_the_cdevent_context() {
    let key = ServiceId::new();
    let event = CdEvent::artifact_published("/slipway/builder", "pkg:oci/x@sha256%3Aab");
    let doc = event.to_json();
    let ce = event.into_cloud_event(key, Some("x".into()));
    assert_eq!(ce.ty, "dev.cdevents.artifact.published.0.3.0");
    assert_eq!(doc["context"]["id"], ce.id.to_string());
    assert_eq!(doc["context"]["source"], ce.source);
    assert_eq!(doc["context"]["type"], ce.ty);
    assert_eq!(ce.data, doc);
    assert_eq!(ce.key, key);
}
