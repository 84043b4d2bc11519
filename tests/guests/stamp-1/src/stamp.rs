// Shared by the stamp guests: plugin `stamp`, its version from the crate's.

use millrace_sdk::{Host, MediationError, Message, Plugin, PluginInfo};

struct Stamp;

impl Plugin for Stamp {
    fn describe() -> PluginInfo {
        PluginInfo::new("stamp", env!("CARGO_PKG_VERSION")).accepts(["*/*"])
    }
    fn new(_host: &impl Host) -> Result<Self, String> {
        Ok(Stamp)
    }
    fn mediate(&self, host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        extra(host)?;
        let body = serde_json::json!({
            "stamp": env!("CARGO_PKG_VERSION"),
            "input": String::from_utf8_lossy(&input.body),
        });
        Ok(vec![Message {
            id: format!("{}-1", input.id),
            content_type: "application/json".into(),
            body: body.to_string().into_bytes(),
            ..input
        }])
    }
}

millrace_sdk::export!(Stamp);
