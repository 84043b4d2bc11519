//! Glue between the generated exports and a [`Plugin`]: one plugin value per instance, panics
//! forwarded to the host log. Used by [`crate::export!`]; not part of the public API.

use crate::{MediationError, Message, Plugin};
use std::sync::OnceLock;

/// The plugin value of this instance, built on first use from the step's settings.
pub type Slot<P> = OnceLock<Result<P, String>>;

fn host() -> crate::host::WasmHost {
    crate::host::WasmHost
}

/// Route panic messages to the host log: on `wasm32-unknown-unknown` stderr goes nowhere and a
/// panic is otherwise a silent trap.
fn forward_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload_as_str().unwrap_or("(no message)");
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            crate::bindings::millrace::mediation::log::write(
                crate::Level::Error,
                &format!("plugin panicked{at}: {payload}"),
            );
        }))
    });
}

fn instance<P: Plugin>(slot: &Slot<P>) -> &Result<P, String> {
    forward_panics();
    slot.get_or_init(|| P::new(&host()))
}

/// Export `check-settings`: build the plugin and report what its settings lack.
pub fn check_settings<P: Plugin>(slot: &Slot<P>) -> Result<(), String> {
    instance(slot).as_ref().map(|_| ()).map_err(Clone::clone)
}

/// Export `mediate`.
pub fn mediate<P: Plugin>(slot: &Slot<P>, input: Message) -> Result<Vec<Message>, MediationError> {
    match instance(slot) {
        Ok(plugin) => plugin.mediate(&host(), input),
        Err(e) => Err(MediationError::rejected(format!(
            "step settings are invalid: {e}"
        ))),
    }
}
