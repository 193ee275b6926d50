//! Secret values at rest: AES-256-GCM with a random 96-bit nonce per value, stored as
//! base64(nonce || ciphertext). The key comes from settings (`secrets.key`, base64 of 32 bytes)
//! and never from the database, so a copy of the database alone reveals nothing.

use aes_gcm::aead::{Aead, KeyInit, OsRng, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The key setting (section `[secrets]`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SecretSettings {
    /// Base64 of 32 random bytes; required. Never stored in the database.
    pub key: secrecy::SecretString,
}

/// The cipher, built from the configured key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

/// Why a key or a stored value is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "secrets.key must be the base64 of exactly 32 random bytes (e.g. `openssl rand -base64 32`)"
    )]
    BadKey,
    #[error(
        "secrets.key is a published example or a trivial key (one byte repeated); make your own with `openssl rand -base64 32`"
    )]
    KnownKey,
    #[error("a stored secret cannot be decrypted (wrong key, or the value was altered)")]
    Corrupt,
}

/// Keys that are, or were, printed in this repository (docker-compose.yml's old fallback, the
/// examples of tests and docs): anyone can read them, so they protect nothing. The manifests
/// tests check that every key-shaped value in the docs and manifests is refused.
const PUBLISHED_KEYS: [&[u8; 32]; 3] = [
    b"slipway-development-key-32-bytes",
    b"0123456789abcdef0123456789abcdef",
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ456789",
];

/// A key anyone could guess: published, or one byte 32 times (all zeros from an empty
/// variable run through a tool, `AAAA...=`).
fn is_known(key: &[u8]) -> bool {
    PUBLISHED_KEYS
        .iter()
        .any(|published| published.as_slice() == key)
        || key.windows(2).all(|pair| pair[0] == pair[1])
}

impl SecretBox {
    pub fn from_settings(settings: &SecretSettings) -> Result<Self, SecretError> {
        Self::from_base64(secrecy::ExposeSecret::expose_secret(&settings.key))
    }

    pub fn from_base64(key: &str) -> Result<Self, SecretError> {
        let bytes = STANDARD
            .decode(key.trim())
            .map_err(|_| SecretError::BadKey)?;
        if bytes.len() == 32 && is_known(&bytes) {
            return Err(SecretError::KnownKey);
        }
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SecretError::BadKey)?;
        Ok(Self { cipher })
    }

    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        // Encryption with a valid key and nonce cannot fail for in-memory input.
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce), plaintext.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        STANDARD.encode(out)
    }

    pub fn open(&self, stored: &str) -> Result<String, SecretError> {
        let bytes = STANDARD.decode(stored).map_err(|_| SecretError::Corrupt)?;
        if bytes.len() < 12 {
            return Err(SecretError::Corrupt);
        }
        let (nonce, sealed) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| SecretError::Corrupt)?;
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce), sealed)
            .map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(plain).map_err(|_| SecretError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh random key, as `openssl rand -base64 32` makes.
    fn key() -> String {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        STANDARD.encode(bytes)
    }

    #[test]
    fn values_round_trip_and_never_appear_in_storage() {
        let b = SecretBox::from_base64(&key()).unwrap();
        let stored = b.seal("hunter2-very-secret");
        assert!(!stored.contains("hunter2"));
        assert_ne!(
            stored,
            b.seal("hunter2-very-secret"),
            "a fresh nonce each time"
        );
        assert_eq!(b.open(&stored).unwrap(), "hunter2-very-secret");
    }

    #[test]
    fn wrong_keys_and_tampering_are_detected() {
        let b = SecretBox::from_base64(&key()).unwrap();
        let other = SecretBox::from_base64(&key()).unwrap();
        let stored = b.seal("value");
        assert!(other.open(&stored).is_err());
        let mut bytes = STANDARD.decode(&stored).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        assert!(b.open(&STANDARD.encode(bytes)).is_err());
        assert!(SecretBox::from_base64("too-short").is_err());
    }

    #[test]
    fn published_and_trivial_keys_are_refused() {
        for refused in [
            // docker-compose.yml's fallback until it required SLIPWAY_SECRETS_KEY
            "c2xpcHdheS1kZXZlbG9wbWVudC1rZXktMzItYnl0ZXM=",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=",
            &STANDARD.encode([0u8; 32]),
            &STANDARD.encode([0xffu8; 32]),
            &STANDARD.encode([b'a'; 32]),
        ] {
            let error = SecretBox::from_base64(refused).err();
            assert!(
                matches!(error, Some(SecretError::KnownKey)),
                "{refused}: {error:?}"
            );
        }
        let message = SecretError::KnownKey.to_string();
        assert!(!message.contains('\n') && message.contains("openssl rand -base64 32"));
        // One repeated byte is refused; a key that merely starts with a run is not.
        let mut almost = [0u8; 32];
        almost[31] = 1;
        assert!(SecretBox::from_base64(&STANDARD.encode(almost)).is_ok());
    }
}
