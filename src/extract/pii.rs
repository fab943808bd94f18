//! Personal data: columns marked `hash` are stored only as HMAC-SHA256 under the key in
//! `PARSTAT_PII_KEY`, so that equal values still join and count while the clear value never
//! reaches the warehouse, the quarantine or a log.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const KEY_VAR: &str = "PARSTAT_PII_KEY";

#[derive(Clone)]
pub struct Hasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher(***)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PiiError {
    #[error("dataset `{dataset}` has personal-data columns to hash ({columns}) but {KEY_VAR} is not set; set it to a secret of at least 16 characters (the same key on every run, so hashes stay comparable)")]
    MissingKey { dataset: String, columns: String },
    #[error("{KEY_VAR} is too short: use at least 16 characters")]
    ShortKey,
}

impl Hasher {
    pub fn new(key: &[u8]) -> Result<Hasher, PiiError> {
        if key.len() < 16 {
            return Err(PiiError::ShortKey);
        }
        Ok(Hasher {
            mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length"),
        })
    }

    /// The key from the environment, required when `columns` is not empty.
    pub fn from_env(dataset: &str, columns: &[String]) -> Result<Option<Hasher>, PiiError> {
        if columns.is_empty() {
            return Ok(None);
        }
        match std::env::var(KEY_VAR) {
            Ok(k) if !k.is_empty() => Hasher::new(k.as_bytes()).map(Some),
            _ => Err(PiiError::MissingKey {
                dataset: dataset.to_string(),
                columns: columns.join(", "),
            }),
        }
    }

    /// Lower-case hex of HMAC-SHA256(key, value).
    pub fn hash(&self, value: &str) -> String {
        hex::encode(self.digest(value))
    }

    /// HMAC-SHA256(key, value), the digest `hash` writes as hex.
    pub fn digest(&self, value: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_with_the_key_and_refuses_short_keys() {
        let h = Hasher::new(b"0123456789abcdef").unwrap();
        let a = h.hash("042190012345");
        assert_eq!(a.len(), 64);
        assert_eq!(a, h.hash("042190012345"), "stable");
        assert_ne!(
            a,
            Hasher::new(b"fedcba9876543210")
                .unwrap()
                .hash("042190012345"),
            "keyed"
        );
        assert!(!a.contains("042190012345"));
        assert!(Hasher::new(b"short").is_err());
    }
}
