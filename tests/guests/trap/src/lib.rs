//! Test guest: passes `ok` through, panics (a trap on wasm32) on anything else.

use millrace_sdk::{Host, MediationError, Message, Plugin, PluginInfo};

struct Trap;

impl Plugin for Trap {
    fn describe() -> PluginInfo {
        PluginInfo::new("guest-trap", "0.1.0").accepts(["*/*"])
    }
    fn new(_host: &impl Host) -> Result<Self, String> {
        Ok(Trap)
    }
    fn mediate(&self, _host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        if input.body == b"ok" {
            return Ok(vec![input]);
        }
        panic!("guest-trap was asked to fail on {} bytes", input.body.len());
    }
}

millrace_sdk::export!(Trap);
