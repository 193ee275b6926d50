//! Who may say what: the owning service of every event type, and the byte string its signature
//! covers.
//!
//! A command or fact changes state wherever it is consumed (a deploy command starts a rollout;
//! an `instance.started` puts an address in the edge router's table). Anyone who can publish
//! on the broker could forge one, so every slipway producer signs its events (Ed25519, header
//! [`SIGNATURE_HEADER`]) and every slipway consumer applies an event only when it is signed by
//! the service named in `ce_source` *and* that service owns `ce_type` ([`owner`]). The keys
//! and the check itself live in `slipway-kafka`; this module is the contract both sides share.

use std::fmt;

use chrono::SecondsFormat;

use crate::cdevents::CdEventKind;
use crate::deploy::{
    DeployCancelRequested, DeployRequested, DeploymentFinished, DeploymentStarted, DeploymentStep,
    InstanceDraining, InstanceExited, InstanceHealthChanged, InstanceLogs, InstanceStarted,
    InstanceStopped, InstancesHeartbeat, InstancesHeartbeatV1, InstancesHeartbeatV2,
    TrafficChanged,
};
use crate::slipway::{BuildRequested, ReleaseCreated, ServiceCreated, sources};
use crate::{CloudEvent, EventData};

/// The record header carrying the signature: base64 (standard, padded) of the 64-byte Ed25519
/// signature over [`canonical`]. A CloudEvents extension attribute (`slipwaysig`), so
/// consumers that do not check it just see one more header.
pub const SIGNATURE_HEADER: &str = "ce_slipwaysig";

/// Tags the signed byte string so a signature over it can never be replayed as one over
/// anything else a key might sign later; the version changes if the layout does.
const DOMAIN: &[u8] = b"slipway-event-signature-v1\0";

/// The five slipway services, the only producers whose events slipway applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Gateway,
    Builder,
    Registry,
    Deployer,
    Monitor,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Service::Gateway,
        Service::Builder,
        Service::Registry,
        Service::Deployer,
        Service::Monitor,
    ];

    /// The short name: settings keys (`signing.peers.<name>`), file names, messages.
    pub fn name(self) -> &'static str {
        match self {
            Service::Gateway => "gateway",
            Service::Builder => "builder",
            Service::Registry => "registry",
            Service::Deployer => "deployer",
            Service::Monitor => "monitor",
        }
    }

    /// The `ce_source` of the events it publishes.
    pub fn source(self) -> &'static str {
        match self {
            Service::Gateway => sources::GATEWAY,
            Service::Builder => sources::BUILDER,
            Service::Registry => sources::REGISTRY,
            Service::Deployer => sources::DEPLOYER,
            Service::Monitor => sources::MONITOR,
        }
    }

    pub fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn from_source(source: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.source() == source)
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Slipway's own types and their owners. CDEvents types are in [`cdevent_owner`], whose match
/// is exhaustive so a new kind cannot be added without deciding its owner.
const OWNERS: [(&str, Service); 18] = [
    // Commands: only the gateway turns an authorised API call into one.
    (BuildRequested::TYPE, Service::Gateway),
    (DeployRequested::TYPE, Service::Gateway),
    (DeployCancelRequested::TYPE, Service::Gateway),
    // Registry facts.
    (ServiceCreated::TYPE, Service::Registry),
    (ReleaseCreated::TYPE, Service::Registry),
    // Deployment and instance lifecycle: the deployer runs them.
    (DeploymentStarted::TYPE, Service::Deployer),
    (DeploymentStep::TYPE, Service::Deployer),
    (DeploymentFinished::TYPE, Service::Deployer),
    (TrafficChanged::TYPE, Service::Deployer),
    (InstanceStarted::TYPE, Service::Deployer),
    (InstanceDraining::TYPE, Service::Deployer),
    (InstanceExited::TYPE, Service::Deployer),
    (InstanceStopped::TYPE, Service::Deployer),
    (InstancesHeartbeat::TYPE, Service::Deployer),
    (InstancesHeartbeatV2::TYPE, Service::Deployer),
    (InstancesHeartbeatV1::TYPE, Service::Deployer),
    (InstanceLogs::TYPE, Service::Deployer),
    // Health verdicts: the monitor probes.
    (InstanceHealthChanged::TYPE, Service::Monitor),
];

fn cdevent_owner(kind: CdEventKind) -> Service {
    use CdEventKind::*;
    match kind {
        BuildQueued | BuildStarted | BuildFinished | ArtifactPackaged | ArtifactPublished => {
            Service::Builder
        }
        ServiceDeployed | ServiceUpgraded | ServiceRolledBack | ServiceRemoved => Service::Deployer,
        EnvironmentCreated | EnvironmentModified | EnvironmentDeleted => Service::Registry,
        IncidentDetected | IncidentReported | IncidentResolved => Service::Monitor,
    }
}

/// The only service whose events of type `ty` slipway applies; `None` for a type slipway does
/// not define (never applied either).
pub fn owner(ty: &str) -> Option<Service> {
    OWNERS
        .iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, s)| *s)
        .or_else(|| {
            CdEventKind::ALL
                .into_iter()
                .find(|k| k.type_str() == ty)
                .map(cdevent_owner)
        })
}

/// The signed attributes of a record, as the header texts and body bytes travel (never
/// re-serialised, so producer and consumer sign and check exactly the same bytes).
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub ty: &'a str,
    pub subject: Option<&'a str>,
    pub time: &'a str,
    /// The record key (the service id): signed too, so a signed event cannot be re-keyed.
    pub key: Option<&'a str>,
    pub body: &'a [u8],
    /// `ce_slipwayproject`, the one extension attribute signed besides the core ones.
    pub project: Option<&'a str>,
}

/// The byte string a signature covers: a domain tag, then `ce_id`, `ce_source`, `ce_type`,
/// `ce_subject`, `ce_time` and the record key, each as a presence byte (0 absent, 1 present) followed, when
/// present, by its length (u32, big-endian) and its UTF-8 bytes, then the body's length (u64,
/// big-endian) and the body. Lengths make it unambiguous: no choice of values makes two
/// different records sign the same bytes.
///
/// `ce_slipwayproject`, when present, follows the body in the same presence/length/text form.
/// When absent nothing follows, so events signed before the attribute existed (and events
/// without it) still verify; the body's length prefix keeps the two cases apart.
pub fn canonical(signed: &Signed<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(DOMAIN.len() + 160 + signed.body.len());
    out.extend_from_slice(DOMAIN);
    for field in [
        Some(signed.id),
        Some(signed.source),
        Some(signed.ty),
        signed.subject,
        Some(signed.time),
        signed.key,
    ] {
        match field {
            None => out.push(0),
            Some(text) => push_text(&mut out, text),
        }
    }
    out.extend_from_slice(&(signed.body.len() as u64).to_be_bytes());
    out.extend_from_slice(signed.body);
    if let Some(project) = signed.project {
        push_text(&mut out, project);
    }
    out
}

/// A present field: 1, its length (u32, big-endian), its UTF-8 bytes.
fn push_text(out: &mut Vec<u8>, text: &str) {
    out.push(1);
    // Header values are far below 4 GiB; saturating keeps this total anyway.
    let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

impl CloudEvent {
    /// The bytes a producer signs for this event: the same header texts and body it sends.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let id = self.id.to_string();
        let time = self.time.to_rfc3339_opts(SecondsFormat::Micros, true);
        let key = self.key.to_string();
        let body = self.body();
        let project = self.project.as_ref().map(|p| p.to_string());
        canonical(&Signed {
            id: &id,
            source: &self.source,
            ty: &self.ty,
            subject: self.subject.as_deref(),
            time: &time,
            key: Some(&key),
            body: &body,
            project: project.as_deref(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Signed<'static> {
        Signed {
            id: "0190a1b2-0000-7000-8000-000000000001",
            source: "/slipway/registry",
            ty: "dev.slipway.service.created.v1",
            subject: Some("hello"),
            time: "2026-01-01T00:00:00.000000Z",
            key: Some("0190a1b2-0000-7000-8000-0000000000aa"),
            body: br#"{"name":"hello"}"#,
            project: None,
        }
    }

    #[test]
    fn canonical_form_is_length_prefixed_and_tagged() {
        let bytes = canonical(&sample());
        assert!(bytes.starts_with(b"slipway-event-signature-v1\0"));
        let after_tag = &bytes[DOMAIN.len()..];
        assert_eq!(after_tag[0], 1);
        assert_eq!(&after_tag[1..5], &36u32.to_be_bytes());
        assert_eq!(&after_tag[5..41], sample().id.as_bytes());
        assert!(bytes.ends_with(br#"{"name":"hello"}"#));
    }

    #[test]
    fn every_signed_field_changes_the_bytes() {
        let base = canonical(&sample());
        let variants = [
            Signed {
                id: "0190a1b2-0000-7000-8000-000000000002",
                ..sample()
            },
            Signed {
                source: "/slipway/deployer",
                ..sample()
            },
            Signed {
                ty: "dev.slipway.release.created.v1",
                ..sample()
            },
            Signed {
                subject: None,
                ..sample()
            },
            Signed {
                subject: Some(""),
                ..sample()
            },
            Signed {
                time: "2026-01-01T00:00:00.000001Z",
                ..sample()
            },
            Signed {
                key: Some("0190a1b2-0000-7000-8000-0000000000ab"),
                ..sample()
            },
            Signed {
                body: br#"{"name":"hellp"}"#,
                ..sample()
            },
            Signed {
                project: Some("payments"),
                ..sample()
            },
            Signed {
                project: Some("billing"),
                ..sample()
            },
        ];
        let mut seen = vec![base];
        for v in variants {
            let bytes = canonical(&v);
            assert!(
                !seen.contains(&bytes),
                "{v:?} signs the same bytes as another"
            );
            seen.push(bytes);
        }
    }

    #[test]
    fn without_a_project_the_bytes_are_those_of_before() {
        // The layout before `ce_slipwayproject` existed: signatures made then still verify.
        let bytes = canonical(&sample());
        assert!(bytes.ends_with(br#"{"name":"hello"}"#));
        let with = canonical(&Signed {
            project: Some("payments"),
            ..sample()
        });
        assert!(with.starts_with(&bytes));
        assert_eq!(&with[bytes.len()..], b"\x01\x00\x00\x00\x08payments");
        // A body that ends like a project suffix still differs: the body length says where
        // the body stops.
        let mut body = br#"{"name":"hello"}"#.to_vec();
        body.extend_from_slice(b"\x01\x00\x00\x00\x08payments");
        let shifted = canonical(&Signed {
            body: &body,
            ..sample()
        });
        assert_ne!(shifted, with);
    }

    #[test]
    fn shifting_text_between_fields_changes_the_bytes() {
        // Without lengths, ("ab", "c") and ("a", "bc") would concatenate alike.
        let a = canonical(&Signed {
            source: "/slipway/registry",
            ty: "x.y",
            ..sample()
        });
        let b = canonical(&Signed {
            source: "/slipway/registryx",
            ty: ".y",
            ..sample()
        });
        assert_ne!(a, b);
    }

    #[test]
    fn an_event_signs_the_texts_it_sends() {
        let data = ServiceCreated {
            service_id: slipway_ids::ServiceId::new(),
            name: "hello".into(),
            project: slipway_ids::ProjectName::default(),
            repository: None,
            branch: "main".into(),
            created_at: chrono::Utc::now(),
        };
        let ev = CloudEvent::new(
            sources::REGISTRY,
            data.service_id,
            Some("hello".into()),
            &data,
        )
        .unwrap()
        .with_project(Some(data.project.clone()));
        let headers: std::collections::HashMap<_, _> = ev.headers().into_iter().collect();
        let body = ev.body();
        let key = ev.key.to_string();
        let expected = canonical(&Signed {
            id: &headers["ce_id"],
            source: &headers["ce_source"],
            ty: &headers["ce_type"],
            subject: headers.get("ce_subject").map(String::as_str),
            time: &headers["ce_time"],
            key: Some(&key),
            body: &body,
            project: headers.get(crate::PROJECT_HEADER).map(String::as_str),
        });
        assert!(headers.contains_key(crate::PROJECT_HEADER));
        assert_eq!(ev.canonical_bytes(), expected);
    }

    #[test]
    fn ownership_follows_the_topics() {
        assert_eq!(owner(DeployRequested::TYPE), Some(Service::Gateway));
        assert_eq!(owner(BuildRequested::TYPE), Some(Service::Gateway));
        assert_eq!(
            owner(CdEventKind::ArtifactPublished.type_str()),
            Some(Service::Builder)
        );
        assert_eq!(owner(InstanceStarted::TYPE), Some(Service::Deployer));
        assert_eq!(owner(InstanceHealthChanged::TYPE), Some(Service::Monitor));
        assert_eq!(
            owner(CdEventKind::EnvironmentCreated.type_str()),
            Some(Service::Registry)
        );
        assert_eq!(owner("dev.slipway.unknown.v1"), None);
        // Every command comes from the gateway, and only commands do.
        for (ty, service) in OWNERS {
            let command = [
                BuildRequested::TYPE,
                DeployRequested::TYPE,
                DeployCancelRequested::TYPE,
            ]
            .contains(&ty);
            assert_eq!(service == Service::Gateway, command, "{ty}");
        }
        let mut types: Vec<&str> = OWNERS.iter().map(|(t, _)| *t).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), OWNERS.len(), "a type listed twice");
    }

    #[test]
    fn names_and_sources_round_trip() {
        for s in Service::ALL {
            assert_eq!(Service::from_name(s.name()), Some(s));
            assert_eq!(Service::from_source(s.source()), Some(s));
            assert_eq!(s.source(), format!("/slipway/{s}"));
        }
        assert_eq!(Service::from_source("/slipway/test"), None);
    }
}
