//! Capabilities: the WIT interfaces a route grants to a step, one file per interface.
//!
//! A step's linker holds exactly the granted interfaces; `check_grants` explains a refusal in
//! words before wasmtime would report a missing import.

mod config;
mod log;
mod lookup;
mod state;
pub mod wasi;

use super::bindings;
use super::store::Invocation;
use std::fmt;
use wasmtime::component::{HasSelf, Linker};

/// One capability a step can be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `millrace:mediation/log`: write to the host log.
    Log,
    /// `millrace:mediation/config`: read the step's settings.
    Config,
    /// `millrace:mediation/lookup`: read the plant's reference tables.
    Lookup,
    /// `millrace:mediation/state`: read and write the plant's durable key-value state.
    State,
    /// WASI 0.2 (`wasi:*`) with no ambient authority, for guests whose runtime needs it.
    Wasi,
}

/// WIT package of every interface the host provides.
pub const PACKAGE: &str = "millrace:mediation";
/// Version of the WIT package the host implements.
pub const VERSION: &str = "0.1.0";

impl Capability {
    /// Every capability, in grant order.
    pub const ALL: [Capability; 5] = [
        Capability::Log,
        Capability::Config,
        Capability::Lookup,
        Capability::State,
        Capability::Wasi,
    ];

    /// The name used in `grants = [...]`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Config => "config",
            Capability::Lookup => "lookup",
            Capability::State => "state",
            Capability::Wasi => "wasi",
        }
    }

    /// Whether a call of it may block its thread: `state` (a write waits for the store) and
    /// WASI (`poll` can sleep). A chain with a step whose component imports such a capability
    /// never runs on an async worker ([`imports_blocking`]).
    pub fn may_block(self) -> bool {
        match self {
            Capability::Log | Capability::Config | Capability::Lookup => false,
            Capability::State | Capability::Wasi => true,
        }
    }

    /// Parse a grant name.
    pub fn from_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The capability an import name (`millrace:mediation/log@0.1.0`, `wasi:io/streams@0.2.6`)
    /// stands for. `Ok(None)` for the type-only `types` interface, `Err` for anything the host
    /// does not offer.
    pub fn of_import(import: &str) -> Result<Option<Capability>, String> {
        if import.starts_with("wasi:") {
            return Ok(Some(Capability::Wasi));
        }
        let unversioned = import.split('@').next().unwrap_or(import);
        match unversioned
            .strip_prefix(PACKAGE)
            .and_then(|s| s.strip_prefix('/'))
        {
            Some("types") => Ok(None),
            Some(interface) => Capability::from_name(interface)
                .map(Some)
                .ok_or_else(|| format!("imports {import}, an interface millrace does not provide")),
            None => Err(format!(
                "imports {import}, which millrace does not provide (plugins get millrace:mediation and, when granted, WASI 0.2)"
            )),
        }
    }

    /// Add this capability's interface to a step's linker.
    pub fn add_to_linker(self, linker: &mut Linker<Invocation>) -> wasmtime::Result<()> {
        match self {
            Capability::Log => {
                bindings::log::add_to_linker::<_, HasSelf<Invocation>>(linker, |s| s)
            }
            Capability::Config => {
                bindings::config::add_to_linker::<_, HasSelf<Invocation>>(linker, |s| s)
            }
            Capability::Lookup => {
                bindings::lookup::add_to_linker::<_, HasSelf<Invocation>>(linker, |s| s)
            }
            Capability::State => {
                bindings::state::add_to_linker::<_, HasSelf<Invocation>>(linker, |s| s)
            }
            Capability::Wasi => wasi::add_to_linker(linker),
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `types` interface has no functions; it is linked for its types alone.
impl bindings::types::Host for Invocation {}

/// A linker with exactly `grants` (and the type-only `types` interface).
pub fn linker(
    engine: &wasmtime::Engine,
    grants: &[Capability],
) -> wasmtime::Result<Linker<Invocation>> {
    let mut linker = Linker::new(engine);
    bindings::types::add_to_linker::<_, HasSelf<Invocation>>(&mut linker, |s| s)?;
    for grant in grants {
        grant.add_to_linker(&mut linker)?;
    }
    Ok(linker)
}

/// Why a component cannot load with `grants`: each import it asks for that is not granted or
/// not provided, one line each.
pub fn check_grants(imports: &[String], grants: &[Capability]) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for import in imports {
        match Capability::of_import(import) {
            Ok(Some(cap)) if !grants.contains(&cap) => problems.push(format!(
                "the plugin imports {import} but its step does not grant \"{cap}\"; add \"{cap}\" to the step's grants if the plugin should have it"
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("the plugin {e}")),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The capabilities a component with `imports` calls ([`Capability::of_import`]; imports of
/// no capability, or of none millrace provides, left out: [`check_grants`] refuses the latter).
fn imported(imports: &[String]) -> impl Iterator<Item = Capability> + '_ {
    imports
        .iter()
        .filter_map(|import| Capability::of_import(import).ok().flatten())
}

/// Whether a component with `imports` may block its thread in a call: it imports a capability
/// that may ([`Capability::may_block`]). What a step grants beyond its component's imports
/// cannot be called, so it does not count.
pub fn imports_blocking(imports: &[String]) -> bool {
    imported(imports).any(Capability::may_block)
}

/// Whether instances of a component with `imports`, granted `grants`, get WASI state: only when
/// WASI is granted and the component imports some of it. One that imports none cannot call it,
/// so it pays for none of it (no WASI context per instance, no deadline or captured output to
/// keep per call), whatever its step grants.
pub fn needs_wasi(imports: &[String], grants: &[Capability]) -> bool {
    grants.contains(&Capability::Wasi) && imported(imports).any(|cap| cap == Capability::Wasi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_component_importing_wasi_and_granted_it_gets_wasi_state() {
        let rust = ["millrace:mediation/log@0.1.0".to_string()];
        let python = [
            "millrace:mediation/log@0.1.0".to_string(),
            "wasi:cli/stdout@0.2.6".to_string(),
        ];
        assert!(
            !needs_wasi(&rust, &Capability::ALL),
            "granted, not imported"
        );
        assert!(needs_wasi(&python, &Capability::ALL));
        assert!(
            !needs_wasi(&python, &[Capability::Log]),
            "imported, not granted"
        );
    }

    #[test]
    fn only_an_imported_capability_that_may_block_makes_a_component_blocking() {
        let log = "millrace:mediation/log@0.1.0".to_string();
        let state = "millrace:mediation/state@0.1.0".to_string();
        let clocks = "wasi:clocks/monotonic-clock@0.2.6".to_string();
        assert!(!imports_blocking(std::slice::from_ref(&log)));
        assert!(imports_blocking(&[log.clone(), state]));
        assert!(imports_blocking(&[log, clocks]));
        assert!(!imports_blocking(&[]));
    }

    #[test]
    fn import_names_map_to_capabilities() {
        assert_eq!(
            Capability::of_import("millrace:mediation/log@0.1.0"),
            Ok(Some(Capability::Log))
        );
        assert_eq!(
            Capability::of_import("millrace:mediation/types@0.1.0"),
            Ok(None)
        );
        assert_eq!(
            Capability::of_import("wasi:filesystem/types@0.2.6"),
            Ok(Some(Capability::Wasi))
        );
        assert!(
            Capability::of_import("acme:net/http@1.0.0")
                .unwrap_err()
                .contains("does not provide")
        );
        assert_eq!(
            Capability::of_import("millrace:mediation/state@0.1.0"),
            Ok(Some(Capability::State))
        );
        assert!(Capability::of_import("millrace:mediation/clock@0.1.0").is_err());
    }

    #[test]
    fn ungranted_import_is_named_with_the_fix() {
        let imports = vec![
            "millrace:mediation/log@0.1.0".to_string(),
            "millrace:mediation/lookup@0.1.0".to_string(),
        ];
        let err = check_grants(&imports, &[Capability::Log]).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].contains("does not grant \"lookup\""), "{}", err[0]);
        assert!(check_grants(&imports, &[Capability::Log, Capability::Lookup]).is_ok());
    }
}
