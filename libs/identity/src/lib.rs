//! Service identity: which slipway service is calling an internal API.
//!
//! Every service has a credential of its own (`[identity] credential`), which it presents as
//! `Authorization: Bearer <credential>` whenever it calls another service, and a table of the
//! services that may call it (`[identity.callers]`: service name -> lowercase hex SHA-256 of
//! that service's credential). A service stores only *hashes* of the others' credentials, so
//! whoever reads one service's settings (or its process environment) can act as that service
//! and no other.
//!
//! Authentication makes a [`ServiceCaller`]; authorisation is a table of [`Rule`]s each
//! service declares next to its routes (route pattern -> callers), deny by default (see
//! [`rules`]).
//!
//! Layout:
//! - this file: [`ServiceCaller`], [`Credential`], [`CredentialHash`], [`Callers`] and the
//!   `[identity]` settings they are parsed from ([`IdentitySettings`]).
//! - [`rules`]: the per-service rule table and its decision.

pub mod rules;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use rules::{AccessRules, Decision, Rule};

/// One of slipway's own services, as a caller of another one's internal API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceCaller {
    Gateway,
    Builder,
    Registry,
    Deployer,
    Monitor,
}

impl ServiceCaller {
    pub const ALL: [ServiceCaller; 5] = [
        ServiceCaller::Gateway,
        ServiceCaller::Builder,
        ServiceCaller::Registry,
        ServiceCaller::Deployer,
        ServiceCaller::Monitor,
    ];

    /// The service's name, as in `[identity.callers]` and the binaries' names.
    pub fn name(self) -> &'static str {
        match self {
            ServiceCaller::Gateway => "gateway",
            ServiceCaller::Builder => "builder",
            ServiceCaller::Registry => "registry",
            ServiceCaller::Deployer => "deployer",
            ServiceCaller::Monitor => "monitor",
        }
    }
}

impl fmt::Display for ServiceCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ServiceCaller {
    type Err = IdentityError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| IdentityError::UnknownService(name.to_owned()))
    }
}

/// Why `[identity]` settings are refused (one line each, naming the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "`identity.credential` is empty: every service needs a credential of its own \
         (e.g. `openssl rand -hex 32`; scripts/up, compose and k8s generate one)"
    )]
    EmptyCredential,
    #[error(
        "`identity.credential` is too short ({0} characters): use at least {MIN_CREDENTIAL_LEN} \
         random characters, e.g. `openssl rand -hex 32`"
    )]
    ShortCredential(usize),
    #[error(
        "`identity.credential` holds whitespace or control characters: it is sent in an \
         HTTP header, so only visible ASCII is allowed"
    )]
    CredentialCharacters,
    #[error("`identity.callers.{0}`: no slipway service has that name")]
    UnknownService(String),
    #[error(
        "`identity.callers.{0}` is not a SHA-256 in lowercase hex (64 digits, e.g. from \
         `printf %s \"$credential\" | sha256sum`)"
    )]
    BadHash(String),
    #[error(
        "`identity.callers.{0}` and `identity.callers.{1}` hold the same hash: each service needs its own credential"
    )]
    SharedHash(String, String),
}

/// Shorter credentials are refused: they could be guessed, and a placeholder such as
/// `change-me` must not start a service.
pub const MIN_CREDENTIAL_LEN: usize = 32;

/// The secret a service presents to others; never printed (`Debug` hides it).
#[derive(Clone)]
pub struct Credential(SecretString);

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential([redacted])")
    }
}

impl Credential {
    pub fn parse(secret: SecretString) -> Result<Self, IdentityError> {
        let text = secret.expose_secret();
        if text.is_empty() {
            return Err(IdentityError::EmptyCredential);
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(IdentityError::CredentialCharacters);
        }
        if text.len() < MIN_CREDENTIAL_LEN {
            return Err(IdentityError::ShortCredential(text.len()));
        }
        Ok(Self(secret))
    }

    /// What the services called with this credential store about it.
    pub fn hash(&self) -> CredentialHash {
        CredentialHash::of(self.0.expose_secret())
    }

    /// `Bearer <credential>`, marked sensitive so that reqwest and `Debug` never show it.
    pub fn authorization(&self) -> reqwest::header::HeaderValue {
        // `parse` allowed visible ASCII only, which is always a valid header value.
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.0.expose_secret()))
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static("Bearer"));
        value.set_sensitive(true);
        value
    }

    /// Default headers for a client calling other services as this one.
    pub fn headers(&self) -> reqwest::header::HeaderMap {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, self.authorization());
        headers
    }
}

/// The SHA-256 of a credential: how a service knows its callers without holding their secrets.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CredentialHash([u8; 32]);

impl fmt::Debug for CredentialHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialHash({})", self.to_hex())
    }
}

impl CredentialHash {
    pub fn of(credential: &str) -> Self {
        Self(Sha256::digest(credential.as_bytes()).into())
    }

    /// Exactly 64 lowercase hex digits, as `sha256sum` prints them.
    pub fn parse_hex(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut bytes = [0_u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// The services allowed to call this one, by the hash of their credential.
#[derive(Debug, Clone, Default)]
pub struct Callers(Vec<(ServiceCaller, CredentialHash)>);

impl Callers {
    pub fn new(
        entries: impl IntoIterator<Item = (ServiceCaller, CredentialHash)>,
    ) -> Result<Self, IdentityError> {
        let mut callers: Vec<(ServiceCaller, CredentialHash)> = Vec::new();
        for (service, hash) in entries {
            if let Some((other, _)) = callers.iter().find(|(_, h)| *h == hash) {
                return Err(IdentityError::SharedHash(
                    other.name().to_owned(),
                    service.name().to_owned(),
                ));
            }
            callers.retain(|(s, _)| *s != service);
            callers.push((service, hash));
        }
        Ok(Self(callers))
    }

    /// The service whose credential is `presented`, if any. Every entry is compared, in
    /// constant time, so the answer's timing tells nothing about which hash came close.
    pub fn identify(&self, presented: &str) -> Option<ServiceCaller> {
        let presented = CredentialHash::of(presented);
        let mut found = None;
        for (service, hash) in &self.0 {
            if bool::from(hash.0.ct_eq(&presented.0)) {
                found = Some(*service);
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The `[identity]` section, parsed: a service with it cannot hold an empty credential or a
/// malformed hash.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawIdentity")]
pub struct IdentitySettings {
    /// What this service presents when it calls another one.
    pub credential: Credential,
    /// Who may call this service.
    pub callers: Callers,
}

#[derive(Deserialize)]
struct RawIdentity {
    credential: SecretString,
    #[serde(default)]
    callers: BTreeMap<String, String>,
}

impl TryFrom<RawIdentity> for IdentitySettings {
    type Error = IdentityError;

    fn try_from(raw: RawIdentity) -> Result<Self, Self::Error> {
        let credential = Credential::parse(raw.credential)?;
        let mut entries = Vec::new();
        for (name, hash) in &raw.callers {
            let service = name.parse::<ServiceCaller>()?;
            let hash = CredentialHash::parse_hex(hash)
                .ok_or_else(|| IdentityError::BadHash(name.clone()))?;
            entries.push((service, hash));
        }
        Ok(Self {
            credential,
            callers: Callers::new(entries)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const CREDENTIAL: &str = "0123456789abcdef0123456789abcdef-gateway";

    fn parse(value: serde_json::Value) -> Result<IdentitySettings, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_a_credential_and_callers_and_identifies_them() {
        let gateway_hash = CredentialHash::of(CREDENTIAL).to_hex();
        let deployer = "d".repeat(40);
        let settings = parse(serde_json::json!({
            "credential": "r".repeat(32),
            "callers": {"gateway": gateway_hash, "deployer": CredentialHash::of(&deployer).to_hex()}
        }))
        .unwrap();
        assert_eq!(
            settings.callers.identify(CREDENTIAL),
            Some(ServiceCaller::Gateway)
        );
        assert_eq!(
            settings.callers.identify(&deployer),
            Some(ServiceCaller::Deployer)
        );
        assert_eq!(settings.callers.identify("someone else"), None);
        assert_eq!(settings.callers.identify(""), None);
        assert_eq!(
            settings.credential.hash(),
            CredentialHash::of(&"r".repeat(32))
        );
    }

    #[test]
    fn the_hash_is_what_sha256sum_prints() {
        // printf %s abc | sha256sum
        assert_eq!(
            CredentialHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn callers_are_optional() {
        let settings = parse(serde_json::json!({"credential": CREDENTIAL})).unwrap();
        assert!(settings.callers.is_empty());
        assert_eq!(settings.callers.identify(CREDENTIAL), None);
    }

    #[test]
    fn refuses_empty_short_and_unprintable_credentials() {
        let err = parse(serde_json::json!({"credential": ""})).unwrap_err();
        assert!(err.contains("`identity.credential` is empty"), "{err}");
        let err = parse(serde_json::json!({"credential": "change-me"})).unwrap_err();
        assert!(err.contains("too short (9 characters)"), "{err}");
        let err = parse(serde_json::json!({"credential": format!("{CREDENTIAL}\n")})).unwrap_err();
        assert!(err.contains("whitespace or control"), "{err}");
        let err = parse(serde_json::json!({"callers": {}})).unwrap_err();
        assert!(err.contains("credential"), "{err}");
    }

    #[test]
    fn refuses_bad_hashes_and_unknown_services() {
        let good = CredentialHash::of(CREDENTIAL).to_hex();
        for bad in [
            "".to_owned(),
            "abc".to_owned(),
            good.to_uppercase(),
            format!("{good}0"),
            format!("sha256:{}", &good[7..]),
            good.replace('a', "g"),
        ] {
            let err = parse(serde_json::json!({
                "credential": CREDENTIAL, "callers": {"gateway": bad}
            }))
            .unwrap_err();
            assert!(
                err.contains("`identity.callers.gateway` is not a SHA-256"),
                "{err}"
            );
        }
        let err = parse(serde_json::json!({
            "credential": CREDENTIAL, "callers": {"ci": good}
        }))
        .unwrap_err();
        assert!(
            err.contains("`identity.callers.ci`: no slipway service"),
            "{err}"
        );
    }

    #[test]
    fn refuses_two_callers_with_one_credential() {
        let hash = CredentialHash::of(CREDENTIAL).to_hex();
        let err = parse(serde_json::json!({
            "credential": CREDENTIAL, "callers": {"gateway": hash, "deployer": hash}
        }))
        .unwrap_err();
        assert!(err.contains("the same hash"), "{err}");
    }

    #[test]
    fn the_credential_never_shows_in_debug_output() {
        let settings = parse(serde_json::json!({"credential": CREDENTIAL})).unwrap();
        let debug = format!("{settings:?} {:?}", settings.credential.headers());
        assert!(!debug.contains(CREDENTIAL), "{debug}");
        assert!(settings.credential.authorization().is_sensitive());
        assert_eq!(
            settings.credential.authorization().to_str().unwrap(),
            format!("Bearer {CREDENTIAL}")
        );
    }

    #[test]
    fn service_names_round_trip() {
        for service in ServiceCaller::ALL {
            assert_eq!(service.name().parse::<ServiceCaller>(), Ok(service));
        }
        assert!("Gateway".parse::<ServiceCaller>().is_err());
    }
}
