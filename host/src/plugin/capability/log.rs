//! Capability `log`: plugin log entries go to the host's tracing log with plant, route, plugin
//! and message id. Each entry is one line of at most [`bounds::MAX_LOG_ENTRY_BYTES`] (control
//! characters escaped, so a plugin cannot forge other lines), and a step writes at most
//! [`bounds::LOG_BYTES_PER_SECOND`] (with a burst of as much again); what is over is dropped and
//! the drop reported once the budget allows a line again.

use super::bindings::log::{Host, Level};
use crate::plugin::bounds;
use crate::plugin::store::Invocation;

impl Host for Invocation {
    fn write(&mut self, level: Level, message: String) {
        let step = &self.step;
        let id = self.message_id.as_str();
        let entry = bounds::log_entry(&message);
        let dropped = {
            let mut budget = step.log_budget.lock().expect("log budget lock");
            if !budget.take(entry.len()) {
                None
            } else {
                Some(std::mem::take(&mut budget.dropped))
            }
        };
        let Some(dropped) = dropped else {
            if level == Level::Error {
                self.last_error_log = Some(entry);
            }
            return;
        };
        if dropped > 0 {
            tracing::warn!(target: "millrace::plugin", plant = %step.plant, route = %step.route, plugin = %step.plugin, dropped, "plugin log entries dropped: over {} bytes per second", bounds::LOG_BYTES_PER_SECOND);
        }
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(target: "millrace::plugin", $lvl, plant = %step.plant, route = %step.route, plugin = %step.plugin, message_id = %id, "{entry}")
            };
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            Level::Error => emit!(tracing::Level::ERROR),
        }
        if level == Level::Error {
            self.last_error_log = Some(entry);
        }
    }
}
