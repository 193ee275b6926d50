//! Signing keys for tests: one key pair per slipway service, made once per test process, so
//! every service under test and every stand-in publisher agree on them.
//!
//! A test that plays a service on the broker (a gateway publishing a deploy command, a
//! deployer announcing an instance) publishes with [`producer`], which signs each event as
//! the service its `source` names, as the real one would.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::SecretString;
use slipway_kafka::signing::{Keys, Service, Signer, SigningSettings, Verifier, public_key_of};
use slipway_kafka::{EventProducer, KafkaSettings};

/// The base64 seed of each service.
fn seeds() -> &'static BTreeMap<Service, String> {
    static SEEDS: OnceLock<BTreeMap<Service, String>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        Service::ALL
            .into_iter()
            .map(|s| {
                let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
                bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                (s, STANDARD.encode(bytes))
            })
            .collect()
    })
}

/// The base64 seed of `service`.
pub fn seed(service: Service) -> String {
    seeds()[&service].clone()
}

/// The base64 public key of `service`.
pub fn public_key(service: Service) -> String {
    public_key_of(&seeds()[&service]).expect("a generated seed is 32 bytes")
}

/// `[signing]` of the service named `name` (`registry`, ...), with every peer's public key.
/// Another name gets no key, which start-up refuses.
pub fn settings(name: &str) -> SigningSettings {
    let key = Service::from_name(name).map(seed).unwrap_or_default();
    SigningSettings {
        key: SecretString::from(key),
        peers: Service::ALL
            .into_iter()
            .map(|s| (s.name().to_owned(), public_key(s)))
            .collect(),
    }
}

/// The `SLIPWAY_SIGNING__*` variables of the service named `name`, for child processes.
pub fn env(name: &str) -> Vec<(String, String)> {
    let settings = settings(name);
    let mut env = vec![(
        "SLIPWAY_SIGNING__KEY".to_owned(),
        secrecy::ExposeSecret::expose_secret(&settings.key).to_owned(),
    )];
    env.extend(settings.peers.into_iter().map(|(peer, key)| {
        (
            format!("SLIPWAY_SIGNING__PEERS__{}", peer.to_uppercase()),
            key,
        )
    }));
    env
}

/// Signs as any of the five services: the stand-ins' signer.
pub fn impersonator() -> Signer {
    Signer::from_seeds(seeds().iter().map(|(s, seed)| (*s, seed.as_str())))
        .expect("generated seeds are 32 bytes")
}

/// What every service's consumers check against.
pub fn verifier() -> Verifier {
    Keys::from_settings(&settings("registry"), "registry")
        .expect("test keys are valid")
        .verifier
}

/// A producer that signs every event as the service its `source` names.
pub fn producer(kafka: &KafkaSettings) -> EventProducer {
    EventProducer::new(kafka, impersonator()).expect("create the test producer")
}
