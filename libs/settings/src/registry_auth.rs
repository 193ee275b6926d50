//! Credentials for an OCI image registry, shared by the builder (push) and the deployer (pull).

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// `username` + `password` (HTTP basic, or the token service's login), or a bearer `token`;
/// all empty: anonymous. Password and token are never logged.
#[derive(Debug, Clone, Deserialize)]
pub struct RegistryAuthSettings {
    #[serde(default)]
    pub username: String,
    #[serde(default = "empty")]
    pub password: SecretString,
    #[serde(default = "empty")]
    pub token: SecretString,
}

fn empty() -> SecretString {
    SecretString::from(String::new())
}

impl Default for RegistryAuthSettings {
    fn default() -> Self {
        Self {
            username: String::new(),
            password: empty(),
            token: empty(),
        }
    }
}

/// How to log in, as the settings say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryLogin<'a> {
    Anonymous,
    Basic {
        username: &'a str,
        password: &'a str,
    },
    Bearer(&'a str),
}

/// Why the credentials do not make one way to log in. `{0}` is the settings section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryAuthError {
    #[error("{0}.username and {0}.token are both set: use a username and password, or a token")]
    Both(&'static str),
    #[error("{0}.username is set without {0}.password")]
    NoPassword(&'static str),
    #[error("{0}.password is set without {0}.username")]
    NoUsername(&'static str),
}

impl RegistryAuthSettings {
    /// The login these settings describe; `section` names them in errors (e.g. `registry.auth`).
    pub fn login(&self, section: &'static str) -> Result<RegistryLogin<'_>, RegistryAuthError> {
        let password = self.password.expose_secret();
        let token = self.token.expose_secret();
        match (
            self.username.is_empty(),
            password.is_empty(),
            token.is_empty(),
        ) {
            (true, true, true) => Ok(RegistryLogin::Anonymous),
            (true, true, false) => Ok(RegistryLogin::Bearer(token)),
            (false, false, true) => Ok(RegistryLogin::Basic {
                username: &self.username,
                password,
            }),
            (false, _, false) => Err(RegistryAuthError::Both(section)),
            (false, true, true) => Err(RegistryAuthError::NoPassword(section)),
            (true, false, _) => Err(RegistryAuthError::NoUsername(section)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(username: &str, password: &str, token: &str) -> RegistryAuthSettings {
        RegistryAuthSettings {
            username: username.into(),
            password: SecretString::from(password.to_owned()),
            token: SecretString::from(token.to_owned()),
        }
    }

    #[test]
    fn each_combination_is_one_login_or_a_named_error() {
        let s = "registry.auth";
        assert_eq!(auth("", "", "").login(s), Ok(RegistryLogin::Anonymous));
        assert_eq!(
            auth("ci", "pw", "").login(s),
            Ok(RegistryLogin::Basic {
                username: "ci",
                password: "pw"
            })
        );
        assert_eq!(
            auth("", "", "tok").login(s),
            Ok(RegistryLogin::Bearer("tok"))
        );
        assert_eq!(
            auth("ci", "pw", "tok").login(s),
            Err(RegistryAuthError::Both(s))
        );
        assert_eq!(
            auth("ci", "", "").login(s),
            Err(RegistryAuthError::NoPassword(s))
        );
        assert_eq!(
            auth("", "pw", "").login(s),
            Err(RegistryAuthError::NoUsername(s))
        );
        assert_eq!(
            auth("", "pw", "").login(s).unwrap_err().to_string(),
            "registry.auth.password is set without registry.auth.username"
        );
        let debug = format!("{:?}", auth("ci", "pw-secret", "tok-secret"));
        assert!(
            !debug.contains("pw-secret") && !debug.contains("tok-secret"),
            "{debug}"
        );
    }
}
