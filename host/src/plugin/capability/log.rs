//! Capability `log`: plugin log entries go to the host's tracing log with plant, route, plugin
//! and message id.

use super::bindings::log::{Host, Level};
use crate::plugin::store::Invocation;

impl Host for Invocation {
    fn write(&mut self, level: Level, message: String) {
        let step = &self.step;
        let id = self.message_id.as_str();
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(target: "millrace::plugin", $lvl, plant = %step.plant, route = %step.route, plugin = %step.plugin, message_id = %id, "{message}")
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
            self.last_error_log = Some(message);
        }
    }
}
