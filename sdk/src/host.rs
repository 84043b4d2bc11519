//! What a plugin may ask of its host: the capability calls, behind one trait.

use crate::{Level, LookupError, MediationError, StateError};
use serde::de::DeserializeOwned;

/// The capabilities a plugin can use. On `wasm32` each method is an import of the `plugin`
/// world that the route must grant (`log`, `config`, `lookup`, `state`); natively,
/// [`crate::TestHost`] implements it in memory.
pub trait Host {
    /// Write one entry to the host log (capability `log`).
    fn log(&self, level: Level, message: &str);

    /// One top-level setting of this step: strings as they are, other values as JSON text
    /// (capability `config`).
    fn setting(&self, key: &str) -> Option<String>;

    /// The names of this step's top-level settings, sorted (capability `config`).
    fn setting_keys(&self) -> Vec<String>;

    /// All settings of this step as a JSON object (capability `config`).
    fn settings_json(&self) -> String;

    /// A value from one of the plant's reference tables (capability `lookup`).
    fn lookup(&self, table: &str, key: &str) -> Result<Option<String>, LookupError>;

    /// The value stored under `key` in the plant's durable state (capability `state`).
    fn state_get(&self, key: &str) -> Result<Option<String>, StateError>;

    /// Store `value` under `key` in the plant's durable state, durable when this returns
    /// (capability `state`). Not undone if the message later fails: write idempotently.
    fn state_put(&self, key: &str, value: &str) -> Result<(), StateError>;

    /// Remove `key` from the plant's durable state; `true` if it was there (capability `state`).
    fn state_delete(&self, key: &str) -> Result<bool, StateError>;

    /// The value of `key` in `table`, for a code that must be known: an unknown key is rejected
    /// as `FIELD "KEY" is not in lookup table TABLE` (with `field` as the field at fault), a
    /// table the plant does not have as `lookup table TABLE is missing for this plant`.
    fn code(&self, table: &str, key: &str, field: &str) -> Result<String, MediationError> {
        match self.lookup(table, key) {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(MediationError::rejected(format!(
                "{field} {key:?} is not in lookup table {table}"
            ))
            .field(field)),
            Err(_) => Err(MediationError::rejected(format!(
                "lookup table {table} is missing for this plant"
            ))),
        }
    }

    /// Every table of `tables` is configured for this plant (a step's load check: a missing
    /// table fails the load, naming it).
    fn require_tables<'a>(
        &self,
        tables: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), String> {
        for table in tables {
            self.lookup(table, "")
                .map_err(|_| format!("lookup table {table:?} is not configured for this plant"))?;
        }
        Ok(())
    }

    /// All settings deserialized into `T`; the error names the setting at fault.
    fn settings<T: DeserializeOwned>(&self) -> Result<T, String> {
        let text = self.settings_json();
        serde_json::from_str(&text).map_err(|e| format!("invalid step settings: {e}"))
    }
}

/// The real host, reached through the component's imports.
#[cfg(target_arch = "wasm32")]
pub(crate) struct WasmHost;

#[cfg(target_arch = "wasm32")]
impl Host for WasmHost {
    fn log(&self, level: Level, message: &str) {
        crate::bindings::millrace::mediation::log::write(level, message)
    }

    fn setting(&self, key: &str) -> Option<String> {
        crate::bindings::millrace::mediation::config::get(key)
    }

    fn setting_keys(&self) -> Vec<String> {
        crate::bindings::millrace::mediation::config::keys()
    }

    fn settings_json(&self) -> String {
        crate::bindings::millrace::mediation::config::document()
    }

    fn lookup(&self, table: &str, key: &str) -> Result<Option<String>, LookupError> {
        if let Some(value) = found::get(table, key) {
            return Ok(Some(value));
        }
        let answer = crate::bindings::millrace::mediation::lookup::get(table, key)?;
        if let Some(value) = &answer {
            found::keep(table, key, value);
        }
        Ok(answer)
    }

    fn state_get(&self, key: &str) -> Result<Option<String>, StateError> {
        crate::bindings::millrace::mediation::state::get(key)
    }

    fn state_put(&self, key: &str, value: &str) -> Result<(), StateError> {
        crate::bindings::millrace::mediation::state::put(key, value)
    }

    fn state_delete(&self, key: &str) -> Result<bool, StateError> {
        crate::bindings::millrace::mediation::state::delete(key)
    }
}

/// The values this instance found in the plant's tables. A table does not change during the life
/// of an instance (the host gives a step with other tables new instances: `wit/`, `lookup`), so
/// a value found once is that key's value for good, and a repeat costs no call to the host. Only
/// values found are kept — keys the operator's tables hold, not whatever a message names — at
/// most `MAX_ENTRIES` and `MAX_BYTES` of them; past either it starts over.
#[cfg(target_arch = "wasm32")]
mod found {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    pub const MAX_ENTRIES: usize = 4096;
    pub const MAX_BYTES: usize = 1 << 20;

    #[derive(Default)]
    struct Found {
        tables: BTreeMap<String, BTreeMap<String, String>>,
        entries: usize,
        bytes: usize,
    }

    thread_local! {
        static FOUND: RefCell<Found> = RefCell::default();
    }

    pub fn get(table: &str, key: &str) -> Option<String> {
        FOUND.with(|found| {
            found
                .borrow()
                .tables
                .get(table)
                .and_then(|rows| rows.get(key))
                .cloned()
        })
    }

    pub fn keep(table: &str, key: &str, value: &str) {
        FOUND.with(|found| {
            let mut found = found.borrow_mut();
            let bytes = table.len() + key.len() + value.len();
            if found.entries >= MAX_ENTRIES || found.bytes + bytes > MAX_BYTES {
                *found = Found::default();
            }
            found
                .tables
                .entry(table.to_string())
                .or_default()
                .insert(key.to_string(), value.to_string());
            found.entries += 1;
            found.bytes += bytes;
        });
    }
}
