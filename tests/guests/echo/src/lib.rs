//! Test guest: answers every message with the message itself, unchanged, and does nothing else.
//! Through the host it costs what any call costs (the message lowered into the guest, the
//! guest's bindings, the output lifted back, the instance's bookkeeping): the mediation
//! benchmark's `floor/` groups measure that against the same code called natively.

use millrace_sdk::{Host, MediationError, Message, Plugin, PluginInfo};

/// The plugin; public so that the benchmark can call it natively.
pub struct Echo;

impl Plugin for Echo {
    fn describe() -> PluginInfo {
        PluginInfo::new("guest-echo", "0.1.0").accepts(["*/*"])
    }
    fn new(_host: &impl Host) -> Result<Self, String> {
        Ok(Echo)
    }
    fn mediate(&self, _host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        Ok(vec![input])
    }
}

millrace_sdk::export!(Echo);
