//! Capability `config`: the step's settings from the host configuration, read-only.

use super::bindings::config::Host;
use crate::plugin::store::Invocation;

impl Host for Invocation {
    fn get(&mut self, key: String) -> Option<String> {
        self.step.settings.get(&key)
    }

    fn keys(&mut self) -> Vec<String> {
        self.step.settings.keys()
    }

    fn document(&mut self) -> String {
        self.step.settings.document().to_string()
    }
}
