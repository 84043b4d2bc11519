//! The one `bindgen!` site of the host: Rust types and traits generated from `wit/`.
//!
//! Generated code lives in the private `generated` module; the rest of the host uses the
//! re-exports below. Capability traits are implemented in `plugin/capability/`, one file per
//! WIT interface.

mod generated {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
        anyhow: true,
        additional_derives: [PartialEq],
    });
}

pub use generated::millrace::mediation::{config, log, lookup, state, types};
pub use generated::{Plugin, PluginPre};
