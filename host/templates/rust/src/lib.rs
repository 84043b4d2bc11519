//! {{name}}: a production report from the shop floor, one `;`-separated record
//! (`WORK_ORDER;QUANTITY;UNIT`), becomes one JSON event.

use millrace_sdk::{Host, MediationError, Message, Plugin, PluginInfo};

/// What describe() reports: the version of millrace-plugin.toml, stamped by `millrace plugin build`.
const VERSION: &str = match option_env!("MILLRACE_PLUGIN_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

pub struct Report {
    /// The step setting `source`: which system the records come from.
    source: String,
}

impl Plugin for Report {
    fn describe() -> PluginInfo {
        PluginInfo::new("{{name}}", VERSION)
            .accepts(["text/plain"])
            .emits(["production.reported"])
    }

    fn new(host: &impl Host) -> Result<Self, String> {
        let source = host.setting("source").unwrap_or_else(|| "mes".into());
        if source.is_empty() {
            return Err("the setting `source` must not be empty".into());
        }
        Ok(Report { source })
    }

    fn mediate(&self, _host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let text = input.body_str()?;
        let record = text.strip_suffix('\n').unwrap_or(text);
        let record = record.strip_suffix('\r').unwrap_or(record);
        // Fields lose the spaces and tabs around them (the same rule in every template).
        let fields: Vec<&str> = record
            .split(';')
            .map(|f| f.trim_matches([' ', '\t']))
            .collect();
        let [work_order, quantity, unit] = fields[..] else {
            return Err(MediationError::rejected(format!(
                "expected 3 fields WORK_ORDER;QUANTITY;UNIT, found {}",
                fields.len()
            )));
        };
        if work_order.is_empty() {
            return Err(MediationError::rejected("work_order is empty").field("work_order"));
        }
        let whole = !quantity.is_empty()
            && quantity.len() <= 9
            && quantity.bytes().all(|b| b.is_ascii_digit());
        let Some(quantity) = quantity.parse::<u32>().ok().filter(|_| whole) else {
            let quoted = serde_json::to_string(quantity).unwrap_or_default();
            return Err(
                MediationError::rejected(format!("quantity {quoted} is not a whole number"))
                    .field("quantity"),
            );
        };
        // Keys in this order, as the C, Python and JavaScript templates write them.
        let text = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let event = format!(
            "{{\"event\":\"production.reported\",\"plant\":{},\"source\":{},\"work_order\":{},\"quantity\":{quantity},\"unit\":{}}}",
            text(&input.plant),
            text(&self.source),
            text(work_order),
            text(unit)
        );
        let mut output = input.with_body("application/json", event.into_bytes());
        output.id = format!("{}-1", input.id);
        Ok(vec![output])
    }
}

millrace_sdk::export!(Report);

#[cfg(test)]
mod tests {
    use super::*;
    use millrace_sdk::testing::TestHost;

    #[test]
    fn a_record_becomes_an_event() {
        let host = TestHost::new();
        let out = host
            .run::<Report>(TestHost::message("text/plain", "WO-7;3;EA\n"))
            .unwrap();
        assert_eq!(out.len(), 1);
        assert!(String::from_utf8_lossy(&out[0].body).contains("\"quantity\":3"));
    }
}
