//! Capability `lookup`: the plant's reference tables, read-only.

use super::bindings::lookup::{Host, LookupError};
use crate::plugin::store::Invocation;

impl Host for Invocation {
    fn get(&mut self, table: String, key: String) -> Result<Option<String>, LookupError> {
        match self.step.tables.get(&table) {
            Some(rows) => Ok(rows.get(&key).cloned()),
            None => Err(LookupError::NoSuchTable(table)),
        }
    }
}
