//! Test guest: passes `ok` through, loops forever on anything else (the host's deadline must
//! interrupt it).

use millrace_sdk::{Host, MediationError, Message, Plugin, PluginInfo};

struct Spin;

impl Plugin for Spin {
    fn describe() -> PluginInfo {
        PluginInfo::new("guest-spin", "0.1.0").accepts(["*/*"])
    }
    fn new(_host: &impl Host) -> Result<Self, String> {
        Ok(Spin)
    }
    fn mediate(&self, _host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        if input.body == b"ok" {
            return Ok(vec![input]);
        }
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

millrace_sdk::export!(Spin);
