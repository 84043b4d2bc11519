//! Capability `log`: plugin log entries go to the host's tracing log with plant, route, plugin
//! and message id. Each entry is one line of at most [`bounds::MAX_LOG_ENTRY_BYTES`] (control
//! characters escaped, so a plugin cannot forge other lines), and a step writes at most
//! [`bounds::LOG_BYTES_PER_SECOND`] (with a burst of as much again); what is over is dropped and
//! the drop reported once the budget allows a line again. Entries below the host's log level are
//! dropped first: they cost the host no more than the call and do not count against the budget.

use super::bindings::log::{Host, Level};
use crate::plugin::bounds;
use crate::plugin::store::Invocation;

/// `$body` with `$name` the `tracing::Level` of the plugin's `$level`: tracing's macros take a
/// constant level (one callsite per level), so each level is its own arm.
macro_rules! at_level {
    ($level:expr, $name:ident => $body:expr) => {
        match $level {
            Level::Trace => {
                const $name: tracing::Level = tracing::Level::TRACE;
                $body
            }
            Level::Debug => {
                const $name: tracing::Level = tracing::Level::DEBUG;
                $body
            }
            Level::Info => {
                const $name: tracing::Level = tracing::Level::INFO;
                $body
            }
            Level::Warn => {
                const $name: tracing::Level = tracing::Level::WARN;
                $body
            }
            Level::Error => {
                const $name: tracing::Level = tracing::Level::ERROR;
                $body
            }
        }
    };
}

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
        self.report_log_drops();
        at_level!(level, LEVEL => tracing::event!(target: "millrace::plugin", LEVEL, plant = %step.plant, route = %step.route, plugin = %step.plugin, message_id = %id, "{entry}"));
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
    at_level!(level, LEVEL => tracing::event_enabled!(target: "millrace::plugin", LEVEL, plant, route, plugin, message_id, message))
}
