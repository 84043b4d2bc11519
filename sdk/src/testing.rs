//! An in-memory host double, so plugin logic runs natively under `cargo test` and `cargo bench`.

use crate::{Host, Level, LookupError, MediationError, Message, Plugin, StateError};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// A [`Host`] held in memory: settings, lookup tables, the plant's state and a captured log.
///
/// Settings follow the real host's rules: [`Host::setting`] returns strings as they are and
/// other values as JSON text.
#[derive(Debug, Default)]
pub struct TestHost {
    settings: serde_json::Map<String, serde_json::Value>,
    tables: BTreeMap<String, BTreeMap<String, String>>,
    state: RefCell<BTreeMap<String, String>>,
    log: RefCell<Vec<(Level, String)>>,
}

impl TestHost {
    /// A host with no settings and no tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replace the settings with a JSON object (panics if `settings` is not an object).
    pub fn with_settings(mut self, settings: serde_json::Value) -> Self {
        match settings {
            serde_json::Value::Object(map) => self.settings = map,
            other => panic!("settings must be a JSON object, got {other}"),
        }
        self
    }

    /// Set one setting.
    pub fn with_setting(mut self, key: &str, value: serde_json::Value) -> Self {
        self.settings.insert(key.to_string(), value);
        self
    }

    /// Add a lookup table.
    pub fn with_table<I, K, V>(mut self, name: &str, rows: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let rows = rows
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self.tables.insert(name.to_string(), rows);
        self
    }

    /// Set one entry of the plant's state.
    pub fn with_state(self, key: &str, value: &str) -> Self {
        self.state
            .borrow_mut()
            .insert(key.to_string(), value.to_string());
        self
    }

    /// The plant's state now, sorted by key.
    pub fn state(&self) -> BTreeMap<String, String> {
        self.state.borrow().clone()
    }

    /// Everything logged so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.log.borrow().clone()
    }

    /// Build `P` from these settings and mediate one message with it, as the host would on a
    /// fresh instance; like the host, every output gets the input's plant and route.
    pub fn run<P: Plugin>(&self, input: Message) -> Result<Vec<Message>, MediationError> {
        let plugin = P::new(self)
            .map_err(|e| MediationError::rejected(format!("step settings are invalid: {e}")))?;
        let (plant, route) = (input.plant.clone(), input.route.clone());
        let mut outputs = plugin.mediate(self, input)?;
        for output in &mut outputs {
            output.plant.clone_from(&plant);
            output.route.clone_from(&route);
        }
        Ok(outputs)
    }

    /// A message for tests: id `test-1`, plant `test-plant`, route `test-route`.
    pub fn message(content_type: &str, body: impl Into<Vec<u8>>) -> Message {
        Message {
            id: "test-1".into(),
            plant: "test-plant".into(),
            route: "test-route".into(),
            content_type: content_type.into(),
            headers: Vec::new(),
            body: body.into(),
        }
    }
}

/// The rejection in `result`; panics (failing the test) on outputs or a retry-later.
pub fn expect_rejected(result: Result<Vec<Message>, MediationError>) -> crate::Rejection {
    match result {
        Err(MediationError::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The body of `message` as JSON; panics (failing the test) if it is not JSON.
pub fn body_value(message: &Message) -> serde_json::Value {
    serde_json::from_slice(&message.body)
        .unwrap_or_else(|e| panic!("output {} is not JSON: {e}", message.id))
}

impl Host for TestHost {
    fn log(&self, level: Level, message: &str) {
        self.log.borrow_mut().push((level, message.to_string()));
    }

    fn setting(&self, key: &str) -> Option<String> {
        self.settings.get(key).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    fn setting_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.settings.keys().cloned().collect();
        keys.sort();
        keys
    }

    fn settings_json(&self) -> String {
        serde_json::Value::Object(self.settings.clone()).to_string()
    }

    fn lookup(&self, table: &str, key: &str) -> Result<Option<String>, LookupError> {
        let rows = self
            .tables
            .get(table)
            .ok_or_else(|| LookupError::NoSuchTable(table.to_string()))?;
        Ok(rows.get(key).cloned())
    }

    fn state_get(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self.state.borrow().get(key).cloned())
    }

    fn state_put(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.state
            .borrow_mut()
            .insert(key.to_string(), value.to_string());
        Ok(())
    }

    fn state_delete(&self, key: &str) -> Result<bool, StateError> {
        Ok(self.state.borrow_mut().remove(key).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CloudEvent, Host, LookupError, MediationError};
    use serde_json::json;

    #[test]
    fn settings_follow_the_host_rules_for_strings_and_other_values() {
        let host = TestHost::new()
            .with_settings(json!({ "name": "north", "length": 80, "fields": [1, 2] }));
        assert_eq!(host.setting("name").as_deref(), Some("north"));
        assert_eq!(host.setting("length").as_deref(), Some("80"));
        assert_eq!(host.setting("fields").as_deref(), Some("[1,2]"));
        assert_eq!(host.setting("missing"), None);
        assert_eq!(host.setting_keys(), ["fields", "length", "name"]);
    }

    #[test]
    fn lookups_distinguish_a_missing_key_from_a_missing_table() {
        let host = TestHost::new().with_table("units", [("ST", "PCE")]);
        assert_eq!(host.lookup("units", "ST"), Ok(Some("PCE".to_string())));
        assert_eq!(host.lookup("units", "KG"), Ok(None));
        assert_eq!(
            host.lookup("plants", "x"),
            Err(LookupError::NoSuchTable("plants".into()))
        );
    }

    /// A plugin whose one output is an event of its input.
    struct Evented;

    impl crate::Plugin for Evented {
        fn describe() -> crate::PluginInfo {
            crate::PluginInfo::new("evented", "0.1.0")
        }
        fn new(_host: &impl Host) -> Result<Self, String> {
            Ok(Evented)
        }
        fn mediate(
            &self,
            _host: &impl Host,
            input: Message,
        ) -> Result<Vec<Message>, MediationError> {
            let event = CloudEvent::new("e-1", "/plants/x/y", "millrace.test.v1", json!({}));
            Ok(vec![event.into_message(&input)])
        }
    }

    #[test]
    fn run_gives_every_output_the_input_plant_and_route_as_the_host_does() {
        let mut input = TestHost::message("text/plain", "x");
        input.plant = "plant-north".into();
        input.route = "downtime".into();
        let out = TestHost::new().run::<Evented>(input).unwrap();
        assert_eq!(
            (out[0].plant.as_str(), out[0].route.as_str()),
            ("plant-north", "downtime")
        );
    }

    #[test]
    fn cloudevent_is_structured_mode_json_and_leaves_plant_and_route_to_the_host() {
        let input = TestHost::message("text/plain", "x");
        let out = CloudEvent::new(
            "e-1",
            "/plants/test-plant/mes",
            "millrace.test.v1",
            json!({ "a": 1 }),
        )
        .subject("WO-1")
        .into_message(&input);
        assert_eq!(out.content_type, "application/cloudevents+json");
        assert_eq!(
            (out.plant.as_str(), out.route.as_str(), out.id.as_str()),
            ("", "", "e-1")
        );
        let event: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            event,
            json!({
                "specversion": "1.0", "id": "e-1", "source": "/plants/test-plant/mes", "type": "millrace.test.v1",
                "subject": "WO-1", "datacontenttype": "application/json", "data": { "a": 1 }
            })
        );
    }

    #[test]
    fn body_helpers_reject_with_a_position() {
        let bad = TestHost::message("text/plain", vec![b'o', b'k', 0xff]);
        match bad.body_str() {
            Err(MediationError::Rejected(r)) => assert_eq!(r.position, Some(3)),
            other => panic!("{other:?}"),
        }
        let json = TestHost::message("application/json", "{\n\"a\": }");
        assert!(
            matches!(json.body_json::<serde_json::Value>(), Err(MediationError::Rejected(r)) if r.position == Some(2))
        );
        assert_eq!(
            TestHost::message("Text/Plain; charset=utf-8", "").media_type(),
            "text/plain"
        );
    }

    #[test]
    fn error_builders_only_annotate_rejections() {
        let r = MediationError::rejected("bad").field("qty").position(4);
        assert!(
            matches!(&r, MediationError::Rejected(x) if x.field.as_deref() == Some("qty") && x.position == Some(4))
        );
        let t = MediationError::retry_later("busy").field("qty");
        assert!(matches!(&t, MediationError::RetryLater(x) if x.reason == "busy"));
        assert_eq!(t.reason(), "busy");
    }
}
