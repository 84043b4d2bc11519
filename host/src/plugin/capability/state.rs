//! Capability `state`: durable key-value state in the namespace of the step's plant.

use super::bindings::state::{Host, StateError};
use crate::plugin::store::Invocation;
use crate::state::StateError as StoreError;

fn to_wit(error: StoreError) -> StateError {
    match error {
        e @ (StoreError::TooLarge { .. } | StoreError::Quota { .. }) => {
            StateError::TooLarge(e.to_string())
        }
        other => {
            tracing::error!(error = %other, "state store call failed");
            StateError::Unavailable(other.to_string())
        }
    }
}

impl Host for Invocation {
    fn get(&mut self, key: String) -> Result<Option<String>, StateError> {
        self.step.state.get(&self.step.plant, &key).map_err(to_wit)
    }

    fn put(&mut self, key: String, value: String) -> Result<(), StateError> {
        self.step
            .state
            .put(&self.step.plant, &key, &value)
            .map_err(to_wit)
    }

    fn delete(&mut self, key: String) -> Result<bool, StateError> {
        self.step
            .state
            .delete(&self.step.plant, &key)
            .map_err(to_wit)
    }
}
