//! What one plugin instance owns: its store data (the step it serves, the message in hand),
//! its memory cap and its deadline.
//!
//! Everything a plugin can reach from the host is in [`Invocation`]: the step's settings and the
//! plant's tables (shared, read-only), the plant's state namespace (through the `state`
//! capability, when granted) and the id of the message in hand. Nothing of another
//! plant, route or step is reachable.

use crate::lookup::Tables;
use crate::state::StateStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::ResourceLimiter;

/// The step a plugin instance serves: fixed for the instance's whole life.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub plant: String,
    pub route: String,
    /// `name@version` of the plugin, for logs.
    pub plugin: String,
    pub settings: Settings,
    pub tables: Tables,
    /// The state store; the `state` capability reads and writes `plant`'s namespace only.
    pub state: Arc<StateStore>,
}

/// A step's settings: the TOML table of the configuration, as JSON.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    values: BTreeMap<String, serde_json::Value>,
    document: String,
}

impl Settings {
    pub fn new(values: serde_json::Map<String, serde_json::Value>) -> Settings {
        let document = serde_json::Value::Object(values.clone()).to_string();
        Settings {
            values: values.into_iter().collect(),
            document,
        }
    }

    /// Strings as they are, other values as JSON text (the `config.get` contract).
    pub fn get(&self, key: &str) -> Option<String> {
        self.values.get(key).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    pub fn keys(&self) -> Vec<String> {
        self.values.keys().cloned().collect()
    }

    pub fn document(&self) -> &str {
        &self.document
    }
}

/// Store data of one plugin instance.
pub struct Invocation {
    pub step: Arc<StepContext>,
    /// Id of the message being mediated (for log entries).
    pub message_id: String,
    pub limiter: MemoryCap,
    /// The last error-level entry the plugin logged during the current call (e.g. the SDK's
    /// panic message), to explain a trap in the dead-letter reason.
    pub last_error_log: Option<String>,
    /// WASI state, for steps granted `wasi` only.
    pub wasi: Option<crate::plugin::capability::wasi::Wasi>,
}

impl Invocation {
    /// After a call: what a WASI guest printed goes to the log; its last stderr line explains a
    /// trap when the plugin logged no error itself.
    pub fn flush_guest_output(&mut self) {
        if let Some(wasi) = &self.wasi
            && let Some(last) = wasi.flush_to_log(&self.step, &self.message_id)
            && self.last_error_log.is_none()
        {
            self.last_error_log = Some(last);
        }
    }
}

/// Caps the linear memory of one instance. Growth past the cap fails (as Wasm `memory.grow`
/// returning -1) and is remembered, so the host can tell a memory-cap trap from a plugin bug.
pub struct MemoryCap {
    max_bytes: usize,
    breached: bool,
}

impl MemoryCap {
    pub fn new(max_bytes: usize) -> MemoryCap {
        MemoryCap {
            max_bytes,
            breached: false,
        }
    }

    /// Whether growth was refused since the last [`MemoryCap::reset`].
    pub fn breached(&self) -> bool {
        self.breached
    }

    pub fn reset(&mut self) {
        self.breached = false;
    }
}

/// Table elements per instance; generous for any Rust, C or JS guest.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.breached = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
