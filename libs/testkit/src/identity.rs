//! Service identity for tests: one random credential per service for the whole test process,
//! settings that accept every service as a caller (each service's own rule table still decides
//! which routes a caller may use), and clients that call as a given service.

use std::sync::OnceLock;

use secrecy::SecretString;
pub use slipway_identity::ServiceCaller;
use slipway_identity::{Callers, Credential, CredentialHash, IdentitySettings};

/// The five credentials, made once per test process.
fn credentials() -> &'static [String; 5] {
    static CREDENTIALS: OnceLock<[String; 5]> = OnceLock::new();
    CREDENTIALS.get_or_init(|| {
        ServiceCaller::ALL.map(|s| {
            format!(
                "test-{s}-{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )
        })
    })
}

/// The credential `service` presents in this test process.
pub fn credential(service: ServiceCaller) -> String {
    let index = ServiceCaller::ALL
        .iter()
        .position(|s| *s == service)
        .expect("ALL lists every service");
    credentials()[index].clone()
}

/// `[identity]` of `service`: its own credential; all five services known as callers.
pub fn settings(service: ServiceCaller) -> IdentitySettings {
    settings_accepting(service, &ServiceCaller::ALL)
}

/// `[identity]` of `service` knowing only `callers` (to test a misconfigured installation).
pub fn settings_accepting(service: ServiceCaller, callers: &[ServiceCaller]) -> IdentitySettings {
    IdentitySettings {
        credential: Credential::parse(SecretString::from(credential(service)))
            .expect("test credentials are valid"),
        callers: Callers::new(
            callers
                .iter()
                .map(|s| (*s, CredentialHash::of(&credential(*s)))),
        )
        .expect("test credentials differ"),
    }
}

/// The same as `SLIPWAY_IDENTITY__*` variables (child processes, `slipway_settings::load_from`).
pub fn env(service: ServiceCaller) -> Vec<(String, String)> {
    let mut vars = vec![(
        "SLIPWAY_IDENTITY__CREDENTIAL".to_owned(),
        credential(service),
    )];
    for caller in ServiceCaller::ALL {
        vars.push((
            format!(
                "SLIPWAY_IDENTITY__CALLERS__{}",
                caller.name().to_uppercase()
            ),
            CredentialHash::of(&credential(caller)).to_hex(),
        ));
    }
    vars
}

/// A client whose every request carries `caller`'s credential.
pub fn client(caller: ServiceCaller) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(settings(caller).credential.headers())
        .build()
        .expect("build a test client")
}
