//! Clone credentials: per service, the one secret its builds fetch with (an HTTPS token or an
//! SSH deploy key), never the builder's own. Stored sealed with the builder's secrets key;
//! written through the internal API and never read back by any API, log or event.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use slipway_ids::ServiceId;
use slipway_secrets::{SecretBox, SecretError};
use sqlx::PgPool;

/// The user name a token is sent with when none is given: what GitHub documents for tokens
/// over HTTPS (GitLab and Gitea accept any name with a token).
pub const DEFAULT_TOKEN_USER: &str = "x-access-token";

/// A service's clone credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CloneCredential {
    /// For `https://` and `http://` repositories: sent as HTTP Basic authentication to the
    /// repository's host only.
    Token { username: String, token: String },
    /// For `ssh://` and `git@host:path` repositories: an OpenSSH private key without passphrase.
    SshKey { key: String },
}

impl std::fmt::Debug for CloneCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CloneCredential::{}(<redacted>)", self.kind())
    }
}

/// A body that is not a credential: the field and what is wrong (never the value).
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// Printable ASCII without spaces: nothing that could end or add an HTTP header line.
fn header_safe(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

impl CloneCredential {
    /// The body of `PUT .../clone-credential`: `{"token": "...", "username"?: "..."}` or
    /// `{"ssh_key": "-----BEGIN OPENSSH PRIVATE KEY-----..."}`. Parsed by hand so that no
    /// message ever quotes a value.
    pub fn parse(body: &Value) -> Result<Self, Invalid> {
        let Some(object) = body.as_object() else {
            return Err(invalid("body", "must be a JSON object"));
        };
        if let Some(other) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "token" | "username" | "ssh_key"))
        {
            return Err(invalid("body", format!("unknown field `{other}`")));
        }
        let text = |field: &'static str| -> Result<Option<&str>, Invalid> {
            match object.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(invalid(field, "must be a string")),
            }
        };
        match (text("token")?, text("ssh_key")?) {
            (Some(token), None) => {
                if !(1..=4096).contains(&token.len()) || !header_safe(token) {
                    return Err(invalid(
                        "token",
                        "must be 1 to 4096 printable ASCII characters without spaces",
                    ));
                }
                let username = text("username")?.unwrap_or(DEFAULT_TOKEN_USER);
                if !(1..=256).contains(&username.len())
                    || !header_safe(username)
                    || username.contains(':')
                {
                    return Err(invalid(
                        "username",
                        "must be 1 to 256 printable ASCII characters without spaces or `:`",
                    ));
                }
                Ok(Self::Token {
                    username: username.to_owned(),
                    token: token.to_owned(),
                })
            }
            (None, Some(key)) => {
                if object.contains_key("username") {
                    return Err(invalid("username", "only goes with a token"));
                }
                let trimmed = key.trim();
                let pem = trimmed.starts_with("-----BEGIN ")
                    && trimmed.ends_with("PRIVATE KEY-----")
                    && !trimmed.contains(['\0', '\r']);
                if trimmed.len() > 16 * 1024 || !pem {
                    return Err(invalid(
                        "ssh_key",
                        "must be a private key in OpenSSH or PEM form (-----BEGIN ... PRIVATE KEY-----), at most 16 KiB, without passphrase",
                    ));
                }
                // ssh refuses a key file without its final newline.
                Ok(Self::SshKey {
                    key: format!("{trimmed}\n"),
                })
            }
            (Some(_), Some(_)) => Err(invalid(
                "body",
                "give either `token` or `ssh_key`, not both",
            )),
            (None, None) => Err(invalid("body", "give `token` (HTTPS) or `ssh_key` (SSH)")),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Token { .. } => "token",
            Self::SshKey { .. } => "ssh_key",
        }
    }

    /// The `Authorization` header value of a token.
    pub fn authorization(&self) -> Option<String> {
        match self {
            Self::Token { username, token } => Some(format!(
                "Authorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{token}"))
            )),
            Self::SshKey { .. } => None,
        }
    }
}

/// Why a stored credential cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("reading the clone credential failed: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the stored clone credential cannot be opened: {0}")]
    Sealed(#[from] SecretError),
    #[error("the stored clone credential is malformed")]
    Malformed,
}

/// Stores (or replaces) `service`'s credential, sealed.
pub async fn put(
    pool: &PgPool,
    sealer: &SecretBox,
    service: ServiceId,
    credential: &CloneCredential,
) -> Result<(), sqlx::Error> {
    // Serialising a plain enum of strings cannot fail.
    let plain = serde_json::to_string(credential).unwrap_or_default();
    sqlx::query(
        "INSERT INTO clone_credentials (service_id, kind, sealed) VALUES ($1, $2, $3) \
         ON CONFLICT (service_id) DO UPDATE SET kind = $2, sealed = $3, updated_at = now()",
    )
    .bind(service)
    .bind(credential.kind())
    .bind(sealer.seal(&plain))
    .execute(pool)
    .await
    .map(|_| ())
}

/// Removes `service`'s credential; `false`: it had none.
pub async fn delete(pool: &PgPool, service: ServiceId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM clone_credentials WHERE service_id = $1")
        .bind(service)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// `service`'s credential, opened.
pub async fn get(
    pool: &PgPool,
    sealer: &SecretBox,
    service: ServiceId,
) -> Result<Option<CloneCredential>, CredentialError> {
    let sealed: Option<String> =
        sqlx::query_scalar("SELECT sealed FROM clone_credentials WHERE service_id = $1")
            .bind(service)
            .fetch_optional(pool)
            .await?;
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    let plain = sealer.open(&sealed)?;
    serde_json::from_str(&plain)
        .map(Some)
        .map_err(|_| CredentialError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_and_keys_parse_and_never_show() {
        let token = CloneCredential::parse(&json!({"token": "ghp_s3cret"})).unwrap();
        assert_eq!(
            token,
            CloneCredential::Token {
                username: DEFAULT_TOKEN_USER.into(),
                token: "ghp_s3cret".into()
            }
        );
        assert!(!format!("{token:?}").contains("s3cret"));
        let header = token.authorization().unwrap();
        assert_eq!(
            header,
            "Authorization: Basic eC1hY2Nlc3MtdG9rZW46Z2hwX3MzY3JldA=="
        );
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----";
        let ssh = CloneCredential::parse(&json!({"ssh_key": key})).unwrap();
        assert_eq!(
            ssh,
            CloneCredential::SshKey {
                key: format!("{key}\n")
            }
        );
        assert!(ssh.authorization().is_none());
    }

    #[test]
    fn bad_bodies_name_the_field_and_not_the_value() {
        for (body, field) in [
            (json!("ghp_s3cret"), "body"),
            (json!({}), "body"),
            (json!({"token": "ghp_s3cret", "ssh_key": "x"}), "body"),
            (json!({"token": "ghp_s3cret", "extra": 1}), "body"),
            (json!({"token": "ghp_s3cret\r\nX-Evil: 1"}), "token"),
            (json!({"token": "has s3cret space"}), "token"),
            (json!({"token": ""}), "token"),
            (json!({"token": 7}), "token"),
            (json!({"token": "t", "username": "a:b"}), "username"),
            (json!({"ssh_key": "s3cret"}), "ssh_key"),
            (
                json!({"ssh_key": "-----BEGIN OPENSSH PRIVATE KEY-----", "username": "git"}),
                "username",
            ),
        ] {
            let err = CloneCredential::parse(&body).unwrap_err();
            assert_eq!(err.field, field, "{body}");
            assert!(!err.message.contains("s3cret"), "{}", err.message);
        }
    }

    #[test]
    fn sealed_form_round_trips() {
        let sealer =
            SecretBox::from_base64("YnVpbGRlci1jbG9uZS1jcmVkZW50aWFsLXRlc3QtazE=").unwrap();
        let token =
            CloneCredential::parse(&json!({"token": "ghp_s3cret", "username": "bot"})).unwrap();
        let sealed = sealer.seal(&serde_json::to_string(&token).unwrap());
        assert!(!sealed.contains("s3cret"));
        let back: CloneCredential = serde_json::from_str(&sealer.open(&sealed).unwrap()).unwrap();
        assert_eq!(back, token);
    }
}
