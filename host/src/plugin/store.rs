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
    /// Log bytes the step may still write (all its instances together).
    pub log_budget: Arc<crate::plugin::bounds::LogBudget>,
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
    pub limiter: InstanceLimiter,
    /// The last error-level entry the plugin logged during the current call (e.g. the SDK's
    /// panic message), to explain a trap in the dead-letter reason.
    pub last_error_log: Option<String>,
    /// WASI state, for components that import WASI and whose step grants it only
    /// ([`crate::plugin::capability::needs_wasi`]).
    pub wasi: Option<crate::plugin::capability::wasi::Wasi>,
}

impl Invocation {
    /// After a call: log entries dropped over the step's log budget are reported (one line);
    /// what a WASI guest printed goes to the log; its last stderr line explains a trap when the
    /// plugin logged no error itself.
    pub fn flush_guest_output(&mut self) {
        self.report_log_drops();
        if let Some(wasi) = &self.wasi
            && let Some(last) = wasi.flush_to_log(&self.step, &self.message_id)
            && self.last_error_log.is_none()
        {
            self.last_error_log = Some(last);
        }
    }

    /// Entries dropped over the step's log budget since they were last reported, in one line
    /// (nothing when none were).
    pub fn report_log_drops(&self) {
        let dropped = self.step.log_budget.take_dropped();
        if dropped > 0 {
            let step = &self.step;
            tracing::warn!(target: "millrace::plugin", plant = %step.plant, route = %step.route, plugin = %step.plugin, message_id = %self.message_id, dropped, "plugin log entries dropped: over {} bytes per second", crate::plugin::bounds::LOG_BYTES_PER_SECOND);
        }
    }
}

/// What one instance may hold, all its parts together: a component is several core instances,
/// and each may define memories and tables. Every definition and every growth is counted
/// against the instance's totals (creation counts as growth from zero), so many memories each
/// under the cap are refused like one memory over it.
pub struct InstanceLimiter {
    max_memory_bytes: usize,
    /// Bytes of every linear memory the instance defined, together (memories never shrink).
    memory_bytes: usize,
    /// Elements of every table the instance defined, together.
    table_elements: usize,
    refused: Option<Refused>,
}

/// What an [`InstanceLimiter`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Linear memory past the cap (all memories together).
    Memory,
    /// Table elements past [`MAX_TABLE_ELEMENTS`] (all tables together).
    Tables,
}

/// Table elements per instance, all tables together; generous for any Rust, C, Python or JS
/// guest.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Linear memories one instance may define (core modules may declare one each: the engine
/// refuses multi-memory modules; a component of several modules defines one per module).
pub const MAX_MEMORIES: usize = 8;
/// Tables one instance may define.
pub const MAX_TABLES: usize = 64;
/// Core instances one component instance may create (one per core module it instantiates,
/// plus adapters and shims).
pub const MAX_CORE_INSTANCES: usize = 128;

impl InstanceLimiter {
    pub fn new(max_memory_bytes: usize) -> InstanceLimiter {
        InstanceLimiter {
            max_memory_bytes,
            memory_bytes: 0,
            table_elements: 0,
            refused: None,
        }
    }

    /// What was refused since the last [`InstanceLimiter::reset`].
    pub fn refused(&self) -> Option<Refused> {
        self.refused
    }

    /// Forget a refusal (the totals stay: the instance still holds what it holds).
    pub fn reset(&mut self) {
        self.refused = None;
    }

    /// The bytes of linear memory the instance holds now, all memories together.
    pub fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_bytes
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.max_memory_bytes {
            self.refused = Some(Refused::Memory);
            return Ok(false);
        }
        self.memory_bytes = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .table_elements
            .saturating_sub(current)
            .saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            self.refused = Some(Refused::Tables);
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_are_capped_together_and_growth_counts_only_the_difference() {
        let mut limiter = InstanceLimiter::new(64 << 20);
        // Three memories of 20 MiB each: 60 MiB, under the cap.
        for _ in 0..3 {
            assert!(limiter.memory_growing(0, 20 << 20, None).unwrap());
        }
        assert_eq!(limiter.memory_bytes(), 60 << 20);
        // A fourth of 20 MiB would make 80: refused, remembered, nothing counted.
        assert!(!limiter.memory_growing(0, 20 << 20, None).unwrap());
        assert_eq!(limiter.refused(), Some(Refused::Memory));
        assert_eq!(limiter.memory_bytes(), 60 << 20);
        limiter.reset();
        // One of them growing from 20 to 24 MiB adds 4.
        assert!(limiter.memory_growing(20 << 20, 24 << 20, None).unwrap());
        assert_eq!(limiter.memory_bytes(), 64 << 20);
        assert!(!limiter.memory_growing(24 << 20, 25 << 20, None).unwrap());
    }

    #[test]
    fn table_elements_are_capped_together() {
        let mut limiter = InstanceLimiter::new(64 << 20);
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
                .unwrap()
        );
        assert!(
            limiter
                .table_growing(0, MAX_TABLE_ELEMENTS / 2, None)
                .unwrap()
        );
        assert!(!limiter.table_growing(0, 1, None).unwrap());
        assert_eq!(limiter.refused(), Some(Refused::Tables));
    }
}
