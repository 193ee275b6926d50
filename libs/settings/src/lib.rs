//! Layered configuration: built-in defaults, then an optional file, then environment variables.
//!
//! Each service embeds a TOML file of defaults. `SLIPWAY_CONFIG` may name a further TOML file
//! (e.g. a mounted ConfigMap). Environment variables come last and win: `SLIPWAY_` followed by
//! the path with `__` between levels, e.g. `SLIPWAY_DATABASE__PORT=5433` or
//! `SLIPWAY_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092`.
//!
//! Settings are validated into typed values before any port is bound, so a bad value stops the
//! process with one clear line instead of failing later.

mod database;
mod registry_auth;

pub use database::{DatabaseError, DatabaseSettings, side_pool};
pub use registry_auth::{RegistryAuthError, RegistryAuthSettings, RegistryLogin};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
}

/// Loads settings of type `T` from `defaults` (TOML text), `$SLIPWAY_CONFIG`, and the environment.
pub fn load<T: DeserializeOwned>(defaults: &str) -> Result<T, SettingsError> {
    load_from(defaults, std::env::vars())
}

/// Like [`load`], with the environment given explicitly (for tests).
pub fn load_from<T: DeserializeOwned>(
    defaults: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, SettingsError> {
    let env: std::collections::HashMap<String, String> = env.into_iter().collect();
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(defaults, config::FileFormat::Toml));
    if let Some(path) = env.get("SLIPWAY_CONFIG") {
        builder = builder.add_source(config::File::with_name(path).required(true));
    }
    let environment = config::Environment::with_prefix("SLIPWAY")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(env));
    Ok(builder.add_source(environment).build()?.try_deserialize()?)
}

/// Where a service's HTTP API listens.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    /// Address to bind, e.g. `127.0.0.1` or `0.0.0.0`.
    pub host: String,
    /// Port to bind; `0` picks a free one (tests).
    pub port: u16,
}

impl HttpSettings {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Example {
        http: HttpSettings,
        database: DatabaseSettings,
    }

    const DEFAULTS: &str = r#"
        [http]
        host = "127.0.0.1"
        port = 8080
        [database]
        host = "localhost"
        port = 5432
        username = "postgres"
        password = ""
        database = "slipway"
        schema = "example"
    "#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_environment() {
        let s: Example = load_from(DEFAULTS, env(&[])).unwrap();
        assert_eq!(s.http.port, 8080);
        assert_eq!(s.database.schema, "example");
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let s: Example = load_from(
            DEFAULTS,
            env(&[
                ("SLIPWAY_HTTP__PORT", "9000"),
                ("SLIPWAY_DATABASE__HOST", "db.internal"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.port, 9000);
        assert_eq!(s.database.host, "db.internal");
    }

    #[test]
    fn numeric_looking_text_stays_text() {
        // `try_parsing` turns "12345" into a number; string fields must still accept it.
        let s: Example =
            load_from(DEFAULTS, env(&[("SLIPWAY_DATABASE__PASSWORD", "12345")])).unwrap();
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&s.database.password),
            "12345"
        );
        let s: Example = load_from(DEFAULTS, env(&[("SLIPWAY_DATABASE__PASSWORD", "")])).unwrap();
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&s.database.password),
            ""
        );
    }

    #[test]
    fn a_bad_value_names_the_key() {
        let err = load_from::<Example>(DEFAULTS, env(&[("SLIPWAY_HTTP__PORT", "eighty")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }
}
