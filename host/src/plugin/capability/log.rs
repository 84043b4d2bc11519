//! Capability `log`: plugin log entries go to the host's tracing log with plant, route, plugin
//! and message id. Each entry is one line of at most [`bounds::MAX_LOG_ENTRY_BYTES`] (control
//! characters escaped, so a plugin cannot forge other lines), and a step writes at most
//! [`bounds::LOG_BYTES_PER_SECOND`] (with a burst of as much again); what is over is dropped and
//! the drop reported once the budget allows a line again. Entries below the host's log level are
//! dropped first: they cost the host no more than the call and do not count against the budget.

use super::bindings::log::{Host, Level};
use crate::plugin::bounds;
use crate::plugin::store::Invocation;

impl Host for Invocation {
    fn write(&mut self, level: Level, message: String) {
        // An entry the host's log level drops costs nothing more and does not count against
        // the budget. An error is still kept to explain a failure of the call.
        if !enabled(level) {
            if level == Level::Error {
                self.last_error_log = Some(bounds::log_entry(&message));
            }
            return;
        }
        let step = &self.step;
        let id = self.message_id.as_str();
        let entry = bounds::log_entry(&message);
        if !step.log_budget.take(entry.len()) {
            if level == Level::Error {
                self.last_error_log = Some(entry);
            }
            return;
        }
        let dropped = step.log_budget.take_dropped();
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

/// Whether the host's log writes plugin entries of `level`: asked as for the event `write`
/// emits, with its target and field names, so a filter that selects on fields (e.g.
/// `millrace::plugin[{stream}]=warn`, which only the lines WASI guests print carry) answers as
/// it will for the entry.
fn enabled(level: Level) -> bool {
    macro_rules! on {
        ($lvl:expr) => {
            tracing::event_enabled!(target: "millrace::plugin", $lvl, plant, route, plugin, message_id, message)
        };
    }
    match level {
        Level::Trace => on!(tracing::Level::TRACE),
        Level::Debug => on!(tracing::Level::DEBUG),
        Level::Info => on!(tracing::Level::INFO),
        Level::Warn => on!(tracing::Level::WARN),
        Level::Error => on!(tracing::Level::ERROR),
    }
}
