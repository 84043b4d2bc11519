//! Masking: configured fields replaced by a keyed hash, `hmac-sha256:HEX`.
//!
//! The same value under the same key always gives the same token, so downstream can still
//! group by operator without learning who it was; without the key the token cannot be
//! reversed by hashing candidate ids.

use hmac::{Hmac, Mac};
use millrace_sdk::MediationError;
use serde_json::Value;
use sha2::Sha256;

/// Prefix of a masked value.
pub const PREFIX: &str = "hmac-sha256:";
/// Shortest key accepted.
pub const MIN_KEY_CHARS: usize = 16;

pub struct Masker {
    paths: Vec<Vec<String>>,
    mac: Hmac<Sha256>,
}

impl Masker {
    /// `None` when there is nothing to mask.
    pub fn new(paths: &[String], key: Option<&str>) -> Result<Option<Masker>, String> {
        if paths.is_empty() {
            return Ok(None);
        }
        let key = key.unwrap_or_default();
        if key.chars().count() < MIN_KEY_CHARS {
            return Err(format!(
                "mask is set, so mask_key must be at least {MIN_KEY_CHARS} characters"
            ));
        }
        let mut parsed = Vec::new();
        for path in paths {
            let segments: Vec<String> = path.split('.').map(str::to_string).collect();
            if segments.len() < 2 || segments[0] != "data" || segments.iter().any(String::is_empty)
            {
                return Err(format!(
                    "mask path {path:?} must be a dotted path inside data, e.g. \"data.operator\""
                ));
            }
            parsed.push(segments);
        }
        let mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
        Ok(Some(Masker { paths: parsed, mac }))
    }

    /// The token of one value.
    pub fn token(&self, value: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Mask every configured field of `event`; `true` if anything changed.
    pub fn apply(&self, event: &mut Value) -> Result<bool, MediationError> {
        let mut changed = false;
        for path in &self.paths {
            changed |= self.mask_at(event, path, &path.join("."))?;
        }
        Ok(changed)
    }

    fn mask_at(
        &self,
        value: &mut Value,
        path: &[String],
        full: &str,
    ) -> Result<bool, MediationError> {
        match (path.split_first(), value) {
            (None, Value::String(s)) => {
                if s.starts_with(PREFIX) {
                    return Ok(false);
                }
                *s = self.token(s);
                Ok(true)
            }
            (None, Value::Null) => Ok(false),
            (None, Value::Array(items)) => {
                let mut changed = false;
                for item in items {
                    changed |= self.mask_at(item, &[], full)?;
                }
                Ok(changed)
            }
            (None, other) => Err(MediationError::rejected(format!(
                "{full} is configured to be masked but holds {other}, not a string"
            ))
            .field(full)),
            (Some((head, rest)), Value::Object(map)) => match map.get_mut(head) {
                Some(child) => self.mask_at(child, rest, full),
                None => Ok(false),
            },
            (Some(_), Value::Array(items)) => {
                let mut changed = false;
                for item in items {
                    changed |= self.mask_at(item, path, full)?;
                }
                Ok(changed)
            }
            (Some(_), _) => Ok(false),
        }
    }
}
