//! A built component's code through Binaryen's `wasm-opt -O3`: the component's largest core
//! module (the plugin's code; the others are the toolchain's few-byte shims) is optimised and put
//! back in place, every other section kept byte for byte. 5–8 % less time per message for most of
//! the repository's plugins, 5–6 % more for csv-records' vectors (docs/performance.md, "Levers
//! tried on 2026-12-05"). `scripts/build-plugins` does the same with
//! `scripts/optimise-component`, which runs before this binary exists; both read their `wasm-opt`
//! arguments from `wasm-opt-args` beside this file.

use std::path::Path;
use std::process::Command;

/// Binaryen's optimiser, found on PATH (`scripts/setup` installs Debian's `binaryen`).
const WASM_OPT: &str = "wasm-opt";

/// The arguments of `wasm-opt`, one per line of `wasm-opt-args` (lines starting with `#` are
/// notes, and say why each is there); `scripts/optimise-component` reads the same file.
pub fn args() -> impl Iterator<Item = &'static str> {
    include_str!("wasm-opt-args")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

/// What optimising did.
#[derive(Debug)]
pub enum Optimised {
    /// The plugin's core module went from `before` to `after` bytes.
    Done { before: usize, after: usize },
    /// No `wasm-opt` on PATH: the component is as its toolchain linked it.
    NotInstalled,
    /// `wasm-opt` refused the module: the component is as its toolchain linked it.
    Refused(String),
}

impl std::fmt::Display for Optimised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Optimised::Done { before, after } => {
                write!(f, "wasm-opt -O3: code {before} → {after} bytes")
            }
            Optimised::NotInstalled => write!(
                f,
                "not optimised: no wasm-opt (Debian's binaryen) on PATH; run {}",
                super::setup_command(true)
            ),
            Optimised::Refused(why) => write!(f, "not optimised: {why}"),
        }
    }
}

/// Optimise the component at `path` in place. An error is a component that cannot be read or
/// written; wasm-opt's absence or refusal leaves the component as it was and says so.
pub fn component(path: &Path) -> Result<Optimised, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let sections = sections(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let Some(code) = sections
        .iter()
        .filter(|s| s.id == CORE_MODULE)
        .max_by_key(|s| s.content.len())
    else {
        return Ok(Optimised::Refused(
            "the component has no core module".into(),
        ));
    };
    // A folder of its own, removed when done: builds may run side by side.
    let scratch = tempfile::Builder::new()
        .prefix("millrace-wasm-opt-")
        .tempdir()
        .map_err(|e| format!("a scratch folder for wasm-opt: {e}"))?;
    let (input, output) = (
        scratch.path().join("code.wasm"),
        scratch.path().join("code.opt.wasm"),
    );
    std::fs::write(&input, &bytes[code.content.clone()])
        .map_err(|e| format!("{}: {e}", input.display()))?;
    let run = Command::new(WASM_OPT)
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .args(args())
        .output();
    let run = match run {
        Ok(run) => run,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Optimised::NotInstalled),
        Err(e) => return Ok(Optimised::Refused(format!("cannot run {WASM_OPT}: {e}"))),
    };
    if !run.status.success() {
        let said = String::from_utf8_lossy(&run.stderr);
        let last = said.lines().rev().find(|l| !l.trim().is_empty());
        return Ok(Optimised::Refused(format!(
            "{WASM_OPT} failed ({}): {}",
            run.status,
            last.unwrap_or("no message")
        )));
    }
    let optimised = std::fs::read(&output).map_err(|e| format!("{}: {e}", output.display()))?;
    let replaced = splice(&bytes, &sections, code.content.start, &optimised);
    // What wasm-opt wrote must still be a valid component before it replaces the build (the
    // host's engine, which enables fewer proposals, checks it again at `plugin test` and deploy).
    if let Err(e) = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&replaced)
    {
        return Ok(Optimised::Refused(format!(
            "{WASM_OPT}'s module does not validate: {e}"
        )));
    }
    std::fs::write(path, &replaced).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Optimised::Done {
        before: code.content.len(),
        after: optimised.len(),
    })
}

/// A component's core module section.
const CORE_MODULE: u8 = 1;
/// A component's preamble: magic and the component encoding's version and layer.
const PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// A top-level section: its id and where its content is.
struct Section {
    id: u8,
    content: std::ops::Range<usize>,
}

/// The top-level sections of a component, in order.
fn sections(bytes: &[u8]) -> Result<Vec<Section>, String> {
    if !bytes.starts_with(&PREAMBLE) {
        return Err("not a component".into());
    }
    let mut reader = wasmparser::BinaryReader::new(&bytes[PREAMBLE.len()..], PREAMBLE.len());
    let mut sections = Vec::new();
    while !reader.eof() {
        sections.push(section(&mut reader).map_err(|e| e.to_string())?);
    }
    Ok(sections)
}

/// The section at `reader`'s position: its id, its length, then as many bytes.
fn section(reader: &mut wasmparser::BinaryReader<'_>) -> wasmparser::Result<Section> {
    let id = reader.read_u8()?;
    let len = reader.read_var_u32()? as usize;
    let start = reader.original_position();
    reader.read_bytes(len)?;
    Ok(Section {
        id,
        content: start..start + len,
    })
}

/// `bytes` with the content of the section starting at `at` replaced by `with`.
fn splice(bytes: &[u8], sections: &[Section], at: usize, with: &[u8]) -> Vec<u8> {
    use wasm_encoder::Encode;
    let mut out = Vec::with_capacity(bytes.len() + with.len());
    out.extend_from_slice(&PREAMBLE);
    for section in sections {
        let content = if section.content.start == at {
            with
        } else {
            &bytes[section.content.clone()]
        };
        out.push(section.id);
        (content.len() as u32).encode(&mut out);
        out.extend_from_slice(content);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component of a custom section, a small and a large core module (each a bare module
    /// header with some padding in a custom section of its own).
    fn component(small: usize, large: usize) -> Vec<u8> {
        use wasm_encoder::{Component, CustomSection, Module, ModuleSection};
        let module = |pad: usize| {
            let mut m = Module::new();
            m.section(&CustomSection {
                name: "pad".into(),
                data: vec![7; pad].into(),
            });
            m
        };
        let mut c = Component::new();
        c.section(&CustomSection {
            name: "note".into(),
            data: b"kept".as_slice().into(),
        });
        c.section(&ModuleSection(&module(small)));
        c.section(&ModuleSection(&module(large)));
        c.finish()
    }

    #[test]
    fn the_largest_core_module_is_replaced_and_every_other_section_kept() {
        let bytes = component(10, 300);
        let sections = sections(&bytes).expect("sections");
        assert_eq!(sections.iter().map(|s| s.id).collect::<Vec<_>>(), [0, 1, 1]);
        let largest = sections
            .iter()
            .filter(|s| s.id == CORE_MODULE)
            .max_by_key(|s| s.content.len())
            .expect("a module");
        // A module of another size: the section's length prefix must change with it.
        let mut replacement = wasm_encoder::Module::new();
        replacement.section(&wasm_encoder::CustomSection {
            name: "new".into(),
            data: vec![9; 5].into(),
        });
        let replacement = replacement.finish();
        let out = splice(&bytes, &sections, largest.content.start, &replacement);
        let after = super::sections(&out).expect("sections after");
        assert_eq!(after.len(), 3);
        assert_eq!(
            &out[after[0].content.clone()],
            &bytes[sections[0].content.clone()]
        );
        assert_eq!(
            &out[after[1].content.clone()],
            &bytes[sections[1].content.clone()]
        );
        assert_eq!(&out[after[2].content.clone()], replacement.as_slice());
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&out)
            .expect("still a component");
    }

    #[test]
    fn a_truncated_component_is_an_error_not_a_short_read() {
        let bytes = component(10, 300);
        assert!(sections(&bytes[..bytes.len() - 1]).is_err());
        assert!(sections(&bytes[..4]).is_err());
    }
}
