//! CDEvents v0.5.1 payloads for the events the CD Foundation defines.
//!
//! A CDEvent is the CloudEvent's data: `{"context": {...}, "subject": {...}, "customData": ...}`.
//! Its `context.id`, `context.type`, `context.source` and `context.timestamp` equal the
//! CloudEvent's `id`, `type`, `source` and `time` (the CDEvents CloudEvents binding), so
//! [`CdEvent::into_cloud_event`] builds the envelope from the payload and never disagrees with it.
//! Slipway-specific details (a failure reason, a build's step) go in `customData`, which the
//! schemas allow to be any object.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use slipway_ids::{EventId, ServiceId};

use crate::{CloudEvent, Topic};

/// The CDEvents specification version slipway writes in `context.specversion`.
pub const SPEC_VERSION: &str = "0.5.1";

/// Every CDEvent kind slipway emits (or will emit), with its exact type string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CdEventKind {
    BuildQueued,
    BuildStarted,
    BuildFinished,
    ArtifactPackaged,
    ArtifactPublished,
    ServiceDeployed,
    ServiceUpgraded,
    ServiceRolledBack,
    ServiceRemoved,
    EnvironmentCreated,
    EnvironmentModified,
    EnvironmentDeleted,
    IncidentDetected,
    IncidentReported,
    IncidentResolved,
}

impl CdEventKind {
    pub const ALL: [CdEventKind; 15] = [
        CdEventKind::BuildQueued,
        CdEventKind::BuildStarted,
        CdEventKind::BuildFinished,
        CdEventKind::ArtifactPackaged,
        CdEventKind::ArtifactPublished,
        CdEventKind::ServiceDeployed,
        CdEventKind::ServiceUpgraded,
        CdEventKind::ServiceRolledBack,
        CdEventKind::ServiceRemoved,
        CdEventKind::EnvironmentCreated,
        CdEventKind::EnvironmentModified,
        CdEventKind::EnvironmentDeleted,
        CdEventKind::IncidentDetected,
        CdEventKind::IncidentReported,
        CdEventKind::IncidentResolved,
    ];

    /// The CloudEvents `type` (and CDEvents `context.type`).
    pub fn type_str(self) -> &'static str {
        use CdEventKind::*;
        match self {
            BuildQueued => "dev.cdevents.build.queued.0.3.0",
            BuildStarted => "dev.cdevents.build.started.0.3.0",
            BuildFinished => "dev.cdevents.build.finished.0.3.0",
            ArtifactPackaged => "dev.cdevents.artifact.packaged.0.3.0",
            ArtifactPublished => "dev.cdevents.artifact.published.0.3.0",
            ServiceDeployed => "dev.cdevents.service.deployed.0.3.0",
            ServiceUpgraded => "dev.cdevents.service.upgraded.0.3.0",
            ServiceRolledBack => "dev.cdevents.service.rolledback.0.3.0",
            ServiceRemoved => "dev.cdevents.service.removed.0.3.0",
            EnvironmentCreated => "dev.cdevents.environment.created.0.3.0",
            EnvironmentModified => "dev.cdevents.environment.modified.0.3.0",
            EnvironmentDeleted => "dev.cdevents.environment.deleted.0.3.0",
            IncidentDetected => "dev.cdevents.incident.detected.0.3.0",
            IncidentReported => "dev.cdevents.incident.reported.0.3.0",
            IncidentResolved => "dev.cdevents.incident.resolved.0.3.0",
        }
    }

    /// The topic events of this kind are published on.
    pub fn topic(self) -> Topic {
        use CdEventKind::*;
        match self {
            BuildQueued | BuildStarted | BuildFinished | ArtifactPackaged | ArtifactPublished => {
                Topic::Builds
            }
            ServiceDeployed | ServiceUpgraded | ServiceRolledBack | ServiceRemoved => {
                Topic::Deployments
            }
            EnvironmentCreated | EnvironmentModified | EnvironmentDeleted => Topic::Services,
            IncidentDetected | IncidentReported | IncidentResolved => Topic::Monitoring,
        }
    }

    /// The official schema's file name in the CDEvents v0.5.1 schema folder.
    pub fn schema_file(self) -> String {
        // "dev.cdevents.build.queued.0.3.0" -> "buildqueued.json"
        let mut parts = self.type_str().split('.').skip(2);
        let subject = parts.next().unwrap_or_default();
        let predicate = parts.next().unwrap_or_default();
        format!("{subject}{predicate}.json")
    }
}

/// A reference to an environment inside a CDEvent subject.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentRef {
    /// The environment's id, e.g. `prod`.
    pub id: String,
    /// Where it is defined, e.g. `/slipway/registry`.
    pub source: Option<String>,
}

impl EnvironmentRef {
    fn to_json(&self) -> Value {
        match &self.source {
            Some(source) => json!({ "id": self.id, "source": source }),
            None => json!({ "id": self.id }),
        }
    }
}

/// The package URL of an OCI artifact: `pkg:oci/<name>@sha256%3A<hex digest>`.
pub fn oci_purl(name: &str, sha256_hex: &str) -> String {
    format!("pkg:oci/{name}@sha256%3A{sha256_hex}")
}

/// A CDEvent ready to be wrapped in a CloudEvent.
#[derive(Debug, Clone, PartialEq)]
pub struct CdEvent {
    kind: CdEventKind,
    id: EventId,
    source: String,
    timestamp: DateTime<Utc>,
    subject_id: String,
    subject_source: Option<String>,
    content: Value,
    custom_data: Option<Value>,
}

impl CdEvent {
    fn new(kind: CdEventKind, source: &str, subject_id: impl Into<String>, content: Value) -> Self {
        Self {
            kind,
            id: EventId::new(),
            source: source.to_owned(),
            timestamp: Utc::now(),
            subject_id: subject_id.into(),
            subject_source: None,
            content,
            custom_data: None,
        }
    }

    pub fn build_queued(source: &str, build_id: &str) -> Self {
        Self::new(CdEventKind::BuildQueued, source, build_id, json!({}))
    }

    pub fn build_started(source: &str, build_id: &str) -> Self {
        Self::new(CdEventKind::BuildStarted, source, build_id, json!({}))
    }

    /// `artifact_id` is the purl of what the build produced; `None` when it failed.
    pub fn build_finished(source: &str, build_id: &str, artifact_id: Option<&str>) -> Self {
        let content = match artifact_id {
            Some(a) => json!({ "artifactId": a }),
            None => json!({}),
        };
        Self::new(CdEventKind::BuildFinished, source, build_id, content)
    }

    /// `change_id` is the commit the artifact was built from, found at `change_source`.
    pub fn artifact_packaged(
        source: &str,
        purl: &str,
        change_id: &str,
        change_source: &str,
    ) -> Self {
        let content = json!({ "change": { "id": change_id, "source": change_source } });
        Self::new(CdEventKind::ArtifactPackaged, source, purl, content)
    }

    pub fn artifact_published(source: &str, purl: &str) -> Self {
        Self::new(CdEventKind::ArtifactPublished, source, purl, json!({}))
    }

    fn service(
        kind: CdEventKind,
        source: &str,
        service: &str,
        env: &EnvironmentRef,
        purl: &str,
    ) -> Self {
        let content = json!({ "environment": env.to_json(), "artifactId": purl });
        Self::new(kind, source, service, content)
    }

    /// First deployment of `service` to `env`.
    pub fn service_deployed(source: &str, service: &str, env: &EnvironmentRef, purl: &str) -> Self {
        Self::service(CdEventKind::ServiceDeployed, source, service, env, purl)
    }

    /// A new release of `service` replaced the running one in `env`.
    pub fn service_upgraded(source: &str, service: &str, env: &EnvironmentRef, purl: &str) -> Self {
        Self::service(CdEventKind::ServiceUpgraded, source, service, env, purl)
    }

    /// `service` in `env` went back to the release whose artifact is `purl`.
    pub fn service_rolled_back(
        source: &str,
        service: &str,
        env: &EnvironmentRef,
        purl: &str,
    ) -> Self {
        Self::service(CdEventKind::ServiceRolledBack, source, service, env, purl)
    }

    pub fn service_removed(source: &str, service: &str, env: &EnvironmentRef) -> Self {
        let content = json!({ "environment": env.to_json() });
        Self::new(CdEventKind::ServiceRemoved, source, service, content)
    }

    pub fn environment_created(source: &str, env_id: &str, name: &str, uri: &str) -> Self {
        let content = json!({ "name": name, "uri": uri });
        Self::new(CdEventKind::EnvironmentCreated, source, env_id, content)
    }

    pub fn environment_modified(source: &str, env_id: &str, name: &str, uri: &str) -> Self {
        let content = json!({ "name": name, "uri": uri });
        Self::new(CdEventKind::EnvironmentModified, source, env_id, content)
    }

    pub fn environment_deleted(source: &str, env_id: &str, name: &str) -> Self {
        let content = json!({ "name": name });
        Self::new(CdEventKind::EnvironmentDeleted, source, env_id, content)
    }

    fn incident(
        kind: CdEventKind,
        source: &str,
        incident_id: &str,
        description: &str,
        env: &EnvironmentRef,
        service: Option<&str>,
        purl: Option<&str>,
    ) -> Self {
        let mut content = json!({ "description": description, "environment": env.to_json() });
        if let Some(s) = service {
            content["service"] = json!({ "id": s });
        }
        if let Some(a) = purl {
            content["artifactId"] = json!(a);
        }
        Self::new(kind, source, incident_id, content)
    }

    pub fn incident_detected(
        source: &str,
        incident_id: &str,
        description: &str,
        env: &EnvironmentRef,
        service: Option<&str>,
        purl: Option<&str>,
    ) -> Self {
        let kind = CdEventKind::IncidentDetected;
        Self::incident(kind, source, incident_id, description, env, service, purl)
    }

    /// An incident reported to a ticketing system at `ticket_uri`.
    pub fn incident_reported(
        source: &str,
        incident_id: &str,
        description: &str,
        env: &EnvironmentRef,
        ticket_uri: &str,
    ) -> Self {
        let kind = CdEventKind::IncidentReported;
        let mut ev = Self::incident(kind, source, incident_id, description, env, None, None);
        ev.content["ticketURI"] = json!(ticket_uri);
        ev
    }

    pub fn incident_resolved(
        source: &str,
        incident_id: &str,
        description: &str,
        env: &EnvironmentRef,
        service: Option<&str>,
        purl: Option<&str>,
    ) -> Self {
        let kind = CdEventKind::IncidentResolved;
        Self::incident(kind, source, incident_id, description, env, service, purl)
    }

    /// Sets `subject.source` (where the subject is defined, when not the event's source).
    pub fn with_subject_source(mut self, source: impl Into<String>) -> Self {
        self.subject_source = Some(source.into());
        self
    }

    /// Attaches slipway's details (e.g. `{"reason": ...}`) as `customData`.
    pub fn with_custom_data(mut self, data: Value) -> Self {
        self.custom_data = Some(data);
        self
    }

    pub fn kind(&self) -> CdEventKind {
        self.kind
    }

    /// The CDEvent document (the CloudEvent's data).
    pub fn to_json(&self) -> Value {
        let mut subject = json!({ "id": self.subject_id, "content": self.content });
        if let Some(s) = &self.subject_source {
            subject["source"] = json!(s);
        }
        let mut doc = json!({
            "context": {
                "specversion": SPEC_VERSION,
                "id": self.id.to_string(),
                "source": self.source,
                "type": self.kind.type_str(),
                "timestamp": self.timestamp.to_rfc3339_opts(SecondsFormat::Micros, true),
            },
            "subject": subject,
        });
        if let Some(custom) = &self.custom_data {
            doc["customData"] = custom.clone();
            doc["customDataContentType"] = json!("application/json");
        }
        doc
    }

    /// The CloudEvent carrying this CDEvent, keyed by `key` (the service it concerns).
    pub fn into_cloud_event(self, key: ServiceId, subject: Option<String>) -> CloudEvent {
        CloudEvent {
            id: self.id,
            source: self.source.clone(),
            ty: self.kind.type_str().to_owned(),
            subject,
            time: self.timestamp,
            key,
            project: None,
            traceparent: None,
            tracestate: None,
            data: self.to_json(),
        }
    }
}
