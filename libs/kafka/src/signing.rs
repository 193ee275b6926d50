//! Event signatures (section `[signing]`): every event a service publishes is signed with its
//! Ed25519 key, and a consumer applies an event only when it verifies with the public key of
//! the service its `ce_source` names and that service owns its type
//! ([`slipway_events::trust`]). Anything else on the broker, a forged deploy command or an
//! `instance.started` pointing at a platform port, is dead-lettered unapplied.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use slipway_events::CloudEvent;
pub use slipway_events::trust::Service;
use slipway_events::trust::{Signed, canonical, owner};

/// The keys of one service (section `[signing]`).
#[derive(Debug, Clone, Deserialize)]
pub struct SigningSettings {
    /// Base64 of this service's 32-byte Ed25519 secret seed (`SLIPWAY_SIGNING__KEY`).
    #[serde(default = "empty")]
    pub key: SecretString,
    /// Service name → base64 of its 32-byte Ed25519 public key
    /// (`SLIPWAY_SIGNING__PEERS__REGISTRY`, ...). Every other service must be listed; this
    /// service's own entry may be left out (it is derived from `key`).
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
}

fn empty() -> SecretString {
    SecretString::from(String::new())
}

impl Default for SigningSettings {
    fn default() -> Self {
        Self {
            key: empty(),
            peers: BTreeMap::new(),
        }
    }
}

/// Why the signing settings are unusable (reported at start-up, before anything binds).
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(
        "signing.key (SLIPWAY_SIGNING__KEY) is not set: it must be the base64 of this service's \
         32-byte Ed25519 seed; scripts/up and scripts/signing-keys generate one"
    )]
    MissingKey,
    #[error("signing.key must be the base64 of exactly 32 bytes (an Ed25519 seed)")]
    BadKey,
    #[error("`{0}` is not a slipway service: it cannot sign events")]
    UnknownService(String),
    #[error(
        "signing.peers.{0} names no slipway service (expected gateway, builder, registry, \
         deployer, monitor)"
    )]
    UnknownPeer(String),
    #[error("signing.peers.{0} must be the base64 of a 32-byte Ed25519 public key")]
    BadPeer(&'static str),
    #[error(
        "signing.peers.{0} (SLIPWAY_SIGNING__PEERS__{upper}) is not set: events of {0} could \
         not be verified",
        upper = .0.to_uppercase()
    )]
    MissingPeer(&'static str),
    #[error("signing.peers.{0} is not the public key of signing.key: the keys are mixed up")]
    OwnKeyMismatch(&'static str),
}

/// Why an event could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("this process cannot sign events of source `{0}`: it holds no key for it")]
pub struct SignError(pub String);

/// Why a consumed record is not applied: the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("signature missing (header ce_slipwaysig)")]
    Missing,
    #[error("signature malformed: ce_slipwaysig must be the base64 of 64 bytes")]
    Malformed,
    #[error("header {0} appears more than once: a signed attribute must be unambiguous")]
    Duplicate(&'static str),
    #[error("ce_source `{0}` is not a slipway service: no key can sign for it")]
    UnknownSource(String),
    #[error("no public key configured for {0} (signing.peers.{0})")]
    NoKey(Service),
    #[error(
        "signature invalid: it does not verify with the public key of {0} (forged, altered, or \
         signed with another key)"
    )]
    BadSignature(Service),
    #[error("signed by {signer} but {owner} owns type {ty}")]
    NotOwner {
        signer: Service,
        owner: Service,
        ty: String,
    },
    #[error("signed by {signer} but no slipway service owns type {ty}")]
    Unowned { signer: Service, ty: String },
}

/// Signs events as the services whose keys it holds: one in a service; all five in the
/// stand-in publishers of tests.
#[derive(Clone)]
pub struct Signer {
    keys: Arc<BTreeMap<Service, SigningKey>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Signer")
            .field("services", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Signer {
    /// Signs as each of `keys`' services.
    pub fn new(keys: impl IntoIterator<Item = (Service, SigningKey)>) -> Self {
        Self {
            keys: Arc::new(keys.into_iter().collect()),
        }
    }

    /// Signs as each service of `seeds` (base64 seeds); `None` if one is not 32 bytes. Services
    /// use [`Keys`]; this is for key tooling and the stand-in publishers of tests.
    pub fn from_seeds<'a>(seeds: impl IntoIterator<Item = (Service, &'a str)>) -> Option<Self> {
        let keys: Option<Vec<_>> = seeds
            .into_iter()
            .map(|(s, seed)| decode32(seed.trim()).map(|b| (s, SigningKey::from_bytes(&b))))
            .collect();
        Some(Self::new(keys?))
    }

    /// The `ce_slipwaysig` value for `event`, signed with the key of its `source`.
    pub fn sign(&self, event: &CloudEvent) -> Result<String, SignError> {
        let key = Service::from_source(&event.source)
            .and_then(|s| self.keys.get(&s))
            .ok_or_else(|| SignError(event.source.clone()))?;
        Ok(STANDARD.encode(key.sign(&event.canonical_bytes()).to_bytes()))
    }
}

/// Checks signatures and ownership against the public keys of the five services.
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: Arc<BTreeMap<Service, VerifyingKey>>,
}

impl Verifier {
    pub fn new(keys: impl IntoIterator<Item = (Service, VerifyingKey)>) -> Self {
        Self {
            keys: Arc::new(keys.into_iter().collect()),
        }
    }

    /// The service that signed `signed`, if the signature is valid for the key of the service
    /// its source names and that service owns its type.
    pub fn check(
        &self,
        signed: &Signed<'_>,
        signature: Option<&[u8]>,
    ) -> Result<Service, Rejection> {
        let signature = signature.ok_or(Rejection::Missing)?;
        let signature = std::str::from_utf8(signature)
            .ok()
            .and_then(|text| STANDARD.decode(text.trim()).ok())
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or(Rejection::Malformed)?;
        let signer = Service::from_source(signed.source)
            .ok_or_else(|| Rejection::UnknownSource(signed.source.to_owned()))?;
        let key = self.keys.get(&signer).ok_or(Rejection::NoKey(signer))?;
        key.verify_strict(&canonical(signed), &signature)
            .map_err(|_| Rejection::BadSignature(signer))?;
        match owner(signed.ty) {
            Some(owner) if owner == signer => Ok(signer),
            Some(owner) => Err(Rejection::NotOwner {
                signer,
                owner,
                ty: signed.ty.to_owned(),
            }),
            None => Err(Rejection::Unowned {
                signer,
                ty: signed.ty.to_owned(),
            }),
        }
    }
}

/// A service's signer and the verifier of its consumers, from its settings.
#[derive(Debug, Clone)]
pub struct Keys {
    pub signer: Signer,
    pub verifier: Verifier,
}

impl Keys {
    /// Parses `settings` for service `name` (e.g. `registry`): the seed, and a public key for
    /// every service (its own derived from the seed).
    pub fn from_settings(settings: &SigningSettings, name: &str) -> Result<Self, SigningError> {
        let me =
            Service::from_name(name).ok_or_else(|| SigningError::UnknownService(name.into()))?;
        let seed = settings.key.expose_secret().trim();
        if seed.is_empty() {
            return Err(SigningError::MissingKey);
        }
        let key = SigningKey::from_bytes(&decode32(seed).ok_or(SigningError::BadKey)?);
        let mut public = BTreeMap::new();
        for (peer, value) in &settings.peers {
            let service = Service::from_name(&peer.to_lowercase())
                .ok_or_else(|| SigningError::UnknownPeer(peer.clone()))?;
            let verifying = decode32(value.trim())
                .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
                .ok_or(SigningError::BadPeer(service.name()))?;
            public.insert(service, verifying);
        }
        match public.get(&me) {
            Some(listed) if *listed != key.verifying_key() => {
                return Err(SigningError::OwnKeyMismatch(me.name()));
            }
            _ => {
                public.insert(me, key.verifying_key());
            }
        }
        if let Some(missing) = Service::ALL.into_iter().find(|s| !public.contains_key(s)) {
            return Err(SigningError::MissingPeer(missing.name()));
        }
        Ok(Self {
            signer: Signer::new([(me, key)]),
            verifier: Verifier::new(public),
        })
    }
}

fn decode32(text: &str) -> Option<[u8; 32]> {
    STANDARD.decode(text).ok()?.try_into().ok()
}

/// The base64 public key of a base64 seed (for key tooling and tests).
pub fn public_key_of(seed: &str) -> Option<String> {
    let key = SigningKey::from_bytes(&decode32(seed.trim())?);
    Some(STANDARD.encode(key.verifying_key().to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_events::deploy::{DeployRequested, InstanceStarted};
    use slipway_events::{EventData, slipway::sources};
    use slipway_ids::{ProjectName, ServiceId};

    fn seed(n: u8) -> String {
        STANDARD.encode([n; 32])
    }

    fn settings_for(me: Service) -> SigningSettings {
        let mut s = SigningSettings {
            key: SecretString::from(seed(me as u8 + 1)),
            peers: BTreeMap::new(),
        };
        for other in Service::ALL {
            s.peers.insert(
                other.name().into(),
                public_key_of(&seed(other as u8 + 1)).unwrap(),
            );
        }
        s
    }

    fn event(source: &str, ty: &str) -> CloudEvent {
        CloudEvent {
            id: slipway_ids::EventId::new(),
            source: source.into(),
            ty: ty.into(),
            subject: Some("hello".into()),
            time: chrono::Utc::now(),
            key: ServiceId::new(),
            project: None,
            traceparent: None,
            tracestate: None,
            data: serde_json::json!({"x": 1}),
        }
    }

    fn check(v: &Verifier, ev: &CloudEvent, sig: Option<&str>) -> Result<Service, Rejection> {
        let id = ev.id.to_string();
        let time = ev.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let key = ev.key.to_string();
        let body = ev.body();
        let project = ev.project.as_ref().map(|p| p.to_string());
        let signed = Signed {
            id: &id,
            source: &ev.source,
            ty: &ev.ty,
            subject: ev.subject.as_deref(),
            time: &time,
            key: Some(&key),
            body: &body,
            project: project.as_deref(),
        };
        v.check(&signed, sig.map(str::as_bytes))
    }

    #[test]
    fn own_events_verify_and_foreign_ones_are_refused() {
        let deployer = Keys::from_settings(&settings_for(Service::Deployer), "deployer").unwrap();
        let gateway = Keys::from_settings(&settings_for(Service::Gateway), "gateway").unwrap();
        let started = event(sources::DEPLOYER, InstanceStarted::TYPE);
        let sig = deployer.signer.sign(&started).unwrap();
        assert_eq!(
            check(&gateway.verifier, &started, Some(&sig)),
            Ok(Service::Deployer)
        );
        // A deployer cannot sign as the gateway.
        assert!(
            deployer
                .signer
                .sign(&event(sources::GATEWAY, DeployRequested::TYPE))
                .is_err()
        );
        // A deploy command signed by the deployer: valid signature, wrong owner.
        let command = event(sources::DEPLOYER, DeployRequested::TYPE);
        let sig = deployer.signer.sign(&command).unwrap();
        assert_eq!(
            check(&gateway.verifier, &command, Some(&sig))
                .unwrap_err()
                .to_string(),
            "signed by deployer but gateway owns type dev.slipway.deploy.requested.v1"
        );
    }

    #[test]
    fn missing_altered_and_foreign_signatures_are_named() {
        let keys = Keys::from_settings(&settings_for(Service::Registry), "registry").unwrap();
        let ev = event(sources::DEPLOYER, InstanceStarted::TYPE);
        assert_eq!(check(&keys.verifier, &ev, None), Err(Rejection::Missing));
        assert_eq!(
            check(&keys.verifier, &ev, Some("bm90IGEgc2lnbmF0dXJl")),
            Err(Rejection::Malformed)
        );
        // Signed with a key that is not the deployer's.
        let stranger = Signer::new([(Service::Deployer, SigningKey::from_bytes(&[42; 32]))]);
        let sig = stranger.sign(&ev).unwrap();
        assert_eq!(
            check(&keys.verifier, &ev, Some(&sig)),
            Err(Rejection::BadSignature(Service::Deployer))
        );
        // A genuine signature, then the body is altered.
        let deployer = Keys::from_settings(&settings_for(Service::Deployer), "deployer").unwrap();
        let sig = deployer.signer.sign(&ev).unwrap();
        let altered = CloudEvent {
            data: serde_json::json!({"x": 2}),
            ..ev.clone()
        };
        assert_eq!(
            check(&keys.verifier, &altered, Some(&sig)),
            Err(Rejection::BadSignature(Service::Deployer))
        );
        // The project is signed too: naming another one, or dropping it, breaks the signature.
        let payments = ev
            .clone()
            .with_project(Some(ProjectName::parse("payments").unwrap()));
        let sig = deployer.signer.sign(&payments).unwrap();
        assert_eq!(
            check(&keys.verifier, &payments, Some(&sig)),
            Ok(Service::Deployer)
        );
        for altered in [
            payments
                .clone()
                .with_project(Some(ProjectName::parse("billing").unwrap())),
            payments.clone().with_project(None),
        ] {
            assert_eq!(
                check(&keys.verifier, &altered, Some(&sig)),
                Err(Rejection::BadSignature(Service::Deployer))
            );
        }
        let unknown = event("/elsewhere", InstanceStarted::TYPE);
        assert!(matches!(
            check(&keys.verifier, &unknown, Some(&sig)),
            Err(Rejection::UnknownSource(_))
        ));
    }

    #[test]
    fn settings_are_checked_with_one_line_reasons() {
        let err =
            |s: &SigningSettings, name: &str| Keys::from_settings(s, name).unwrap_err().to_string();
        let good = settings_for(Service::Builder);
        assert!(err(&SigningSettings::default(), "builder").contains("SLIPWAY_SIGNING__KEY"));
        let mut bad = good.clone();
        bad.key = SecretString::from("c2hvcnQ=".to_owned());
        assert!(err(&bad, "builder").contains("exactly 32 bytes"));
        let mut bad = good.clone();
        bad.peers.remove("monitor");
        assert!(err(&bad, "builder").contains("SLIPWAY_SIGNING__PEERS__MONITOR"));
        let mut bad = good.clone();
        bad.peers.insert("intruder".into(), seed(9));
        assert!(err(&bad, "builder").contains("signing.peers.intruder"));
        let mut bad = good.clone();
        bad.peers.insert("registry".into(), "???".into());
        assert!(err(&bad, "builder").contains("signing.peers.registry"));
        let mut bad = good.clone();
        bad.peers
            .insert("builder".into(), public_key_of(&seed(99)).unwrap());
        assert!(err(&bad, "builder").contains("mixed up"));
        assert!(err(&good, "stranger").contains("not a slipway service"));
        // Its own public key may be left out.
        let mut own_left_out = good.clone();
        own_left_out.peers.remove("builder");
        assert!(Keys::from_settings(&own_left_out, "builder").is_ok());
        for line in [
            format!("{:?}", good),
            format!("{:?}", Keys::from_settings(&good, "builder").unwrap()),
        ] {
            assert!(!line.contains(&seed(Service::Builder as u8 + 1)), "{line}");
        }
    }
}
