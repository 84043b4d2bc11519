//! Test guest: passes `ok` through, otherwise keeps allocating and touching 1 MiB blocks (the
//! host's memory cap must stop it).

use millrace_sdk::{Host, MediationError, Message, Plugin, PluginInfo};

struct Grow;

impl Plugin for Grow {
    fn describe() -> PluginInfo {
        PluginInfo::new("guest-grow", "0.1.0").accepts(["*/*"])
    }
    fn new(_host: &impl Host) -> Result<Self, String> {
        Ok(Grow)
    }
    fn mediate(&self, _host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        if input.body == b"ok" {
            return Ok(vec![input]);
        }
        let mut blocks = Vec::new();
        loop {
            blocks.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

millrace_sdk::export!(Grow);
