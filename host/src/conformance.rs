//! Conformance vectors: a folder of cases, each an input and the outputs (or the rejection) one
//! plugin must give for it. Run by `millrace plugin test FILE.wasm --vectors DIR`; the same
//! folder serves every implementation of a plugin, in any language.
//!
//! ```text
//! vectors/
//!   settings.toml            step settings for every case (optional)
//!   lookups/TABLE.csv        lookup tables for every case (optional; header row, key, value)
//!   CASE/
//!     input.EXT              the message body; EXT gives the content type (txt, csv, json, ...)
//!     content-type           overrides the content type (optional)
//!     headers.json           the message's headers, {"NAME": "VALUE", ...} (optional; e.g. the
//!                            `mqtt-topic` an MQTT source sets)
//!     settings.toml          settings for this case only (optional, replaces the shared ones)
//!     state.json             the plant's state before the case, {"KEY": VALUE, ...} (optional;
//!                            a VALUE that is not a string is stored as its JSON text)
//!     expected.json          {"outputs": [{"content_type": ..., "body": ...}, ...]}
//!                            or {"rejected": {"reason": ..., "field": ..., "position": ...}}
//!                            or {"retry_later": {"reason": ...}}
//!                            plus "state": {...}, the plant's state after the case, when it is
//!                            not empty (values that are JSON objects or arrays shown as JSON)
//! ```
//!
//! Every case starts from its own `state.json` (or an empty state) in a fresh in-memory store.
//!
//! Locally (`plugin test`, `plugin bundle`, `plugin dev`) every case runs a second time on the
//! instance that ran it, its state set back to `state.json`, and must give the same answer: the
//! host reuses an instance for many messages (`instance_reuse`), so what an instance keeps
//! between calls (parsed settings, cached lookups) must not change what it answers. Not a case
//! whose call failed (a trap, the deadline, a limit): its instance is gone. `--bless` writes
//! nothing for a case whose two answers differ. The deploy gate runs each case once, within its
//! time budget.
//!
//! A case's message has id `CASE`, plant `test-plant`, route `test-route` (the SDK's
//! `TestHost::message` uses the same plant and route, so native tests can share expectations).
//! Bodies of JSON outputs are compared as JSON, others as text.

use crate::config::toml_to_json;
use crate::lookup::{self, Tables};
use crate::plugin::bindings::types::Message;
use crate::plugin::capability::Capability;
use crate::plugin::engine::PluginEngine;
use crate::plugin::store::Settings;
use crate::plugin::{Artifact, StepFailure, StepLimits, StepRuntime, StepSpec};
use crate::state::StateStore;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Plant and route of every vector message.
pub const PLANT: &str = "test-plant";
pub const ROUTE: &str = "test-route";

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    /// `None`: passed. `Some(text)`: what differed.
    pub failure: Option<String>,
}

/// What the cases of a vector folder run with.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The capabilities linked (a case's plugin gets nothing else).
    pub grants: Vec<Capability>,
    /// The limits of every call.
    pub limits: StepLimits,
    /// When the run must stop (the gate's budget), if ever.
    pub until: Option<std::time::Instant>,
    /// Run each case a second time on the instance that ran it (module notes); needs
    /// `limits.instance_reuse` ≥ 2.
    pub warm_repeat: bool,
}

impl Sandbox {
    /// Locally (`millrace plugin test --vectors`, `plugin bundle`): every capability, 5 s per
    /// call, 256 MiB, each case run again on its warm instance.
    pub fn local() -> Sandbox {
        Sandbox {
            grants: Capability::ALL.to_vec(),
            limits: StepLimits {
                deadline: Duration::from_secs(5),
                memory_bytes: 256 << 20,
                // The case's own instance, then once more for the warm repeat.
                instance_reuse: 2,
                ..StepLimits::default()
            },
            until: None,
            warm_repeat: true,
        }
    }
}

/// Run every case of `dir` against `plugin`, compiled into or taken from `compile_cache` when one
/// is given. With `bless`, write each case's `expected.json` from what the plugin gives instead
/// of comparing.
pub fn run(
    plugin: &Path,
    dir: &Path,
    bless: bool,
    compile_cache: Option<&Path>,
) -> Result<Vec<CaseResult>, String> {
    let engine = PluginEngine::new(compile_cache).map_err(|e| format!("{e:#}"))?;
    let artifact = Artifact::load(&engine, plugin).map_err(|e| e.to_string())?;
    run_artifact(&engine, &artifact, dir, bless, &Sandbox::local())
}

/// [`run`] against a component's `bytes` (named `plugin` in messages), not a file's.
pub fn run_bytes(
    plugin: &Path,
    bytes: &[u8],
    dir: &Path,
    compile_cache: Option<&Path>,
) -> Result<Vec<CaseResult>, String> {
    let engine = PluginEngine::new(compile_cache).map_err(|e| format!("{e:#}"))?;
    let artifact = Artifact::from_bytes(&engine, plugin, bytes).map_err(|e| e.to_string())?;
    run_artifact(&engine, &artifact, dir, false, &Sandbox::local())
}

/// Run every case of `dir` against a loaded component, in `sandbox`.
pub fn run_artifact(
    engine: &PluginEngine,
    artifact: &Artifact,
    dir: &Path,
    bless: bool,
    sandbox: &Sandbox,
) -> Result<Vec<CaseResult>, String> {
    if sandbox.warm_repeat && sandbox.limits.instance_reuse < 2 {
        return Err(format!(
            "running each case again on its instance needs instance_reuse of at least 2, not {}",
            sandbox.limits.instance_reuse
        ));
    }
    let shared_settings = read_settings(&dir.join("settings.toml"))?;
    let tables = read_tables(&dir.join("lookups"))?;
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read vectors folder {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "lookups"))
        .collect();
    cases.sort();
    if cases.is_empty() {
        return Err(format!("{} has no case folders", dir.display()));
    }
    let mut results = Vec::new();
    let total = cases.len();
    for case in cases {
        if sandbox
            .until
            .is_some_and(|until| std::time::Instant::now() >= until)
        {
            return Err(format!(
                "the gate's time budget ran out after {} of {total} sample cases (host.gate_budget_s)",
                results.len()
            ));
        }
        let name = case
            .file_name()
            .expect("a case folder has a name")
            .to_string_lossy()
            .into_owned();
        let settings = match read_settings(&case.join("settings.toml"))? {
            Some(own) => Some(own),
            None => shared_settings.clone(),
        };
        let failure = run_case(
            engine,
            artifact,
            &case,
            settings.unwrap_or_default(),
            tables.clone(),
            bless,
            sandbox,
        )?;
        results.push(CaseResult { name, failure });
    }
    Ok(results)
}

fn run_case(
    engine: &PluginEngine,
    artifact: &Artifact,
    case: &Path,
    settings: serde_json::Map<String, Value>,
    tables: Tables,
    bless: bool,
    sandbox: &Sandbox,
) -> Result<Option<String>, String> {
    let name = case
        .file_name()
        .expect("a case folder has a name")
        .to_string_lossy();
    let (input_path, content_type) = find_input(case)?;
    let body = std::fs::read(&input_path)
        .map_err(|e| format!("cannot read {}: {e}", input_path.display()))?;
    let headers = read_headers(&case.join("headers.json"))?;
    let state = Arc::new(StateStore::in_memory());
    let before = read_state(&case.join("state.json"))?;
    set_state(&state, &before)?;
    let spec = StepSpec {
        plant: PLANT,
        route: ROUTE,
        grants: sandbox.grants.clone(),
        settings: Settings::new(settings),
        tables,
        state: Arc::clone(&state),
        limits: sandbox.limits,
        quarantines: Arc::new(crate::quarantine::Quarantines::disabled()),
    };
    let step = match StepRuntime::load(engine, artifact, spec) {
        Ok(step) => step,
        Err(e) => return Ok(Some(format!("the plugin did not load: {e}"))),
    };
    let input = Message {
        id: name.to_string(),
        plant: PLANT.into(),
        route: ROUTE.into(),
        content_type,
        headers,
        body,
    };
    let got = observe(&step, &input, &state)?;
    let print = |v: &Value| serde_json::to_string(v).expect("JSON values print");
    // The second run, on the instance that ran the first (`None`: not run, or the same answer).
    let again = || -> Result<Option<String>, String> {
        if !sandbox.warm_repeat || got.get("failed").is_some() {
            return Ok(None);
        }
        set_state(&state, &before)?;
        let again = observe(&step, &input, &state)?;
        Ok((again != got).then(|| {
            format!(
                "run again on the instance that ran it (the host reuses instances: instance_reuse), its state set back, it gave\n     {}\n     not {}",
                print(&again),
                print(&got)
            )
        }))
    };
    let expected_path = case.join("expected.json");
    if bless {
        if let Some(differs) = again()? {
            return Ok(Some(format!("not blessed: {differs}")));
        }
        let text = serde_json::to_string_pretty(&got).expect("JSON values print") + "\n";
        std::fs::write(&expected_path, text)
            .map_err(|e| format!("cannot write {}: {e}", expected_path.display()))?;
        return Ok(None);
    }
    let text = std::fs::read_to_string(&expected_path).map_err(|e| {
        format!(
            "cannot read {}: {e} (write it, or run with --bless)",
            expected_path.display()
        )
    })?;
    let expected: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", expected_path.display()))?;
    if got != expected {
        return Ok(Some(format!(
            "expected {}\n     got {}",
            print(&expected),
            print(&got)
        )));
    }
    again()
}

/// Make `plant`'s state in `state` exactly `entries`.
fn set_state(state: &StateStore, entries: &[(String, String)]) -> Result<(), String> {
    for (key, _) in state.entries(PLANT).map_err(|e| e.to_string())? {
        state.delete(PLANT, &key).map_err(|e| e.to_string())?;
    }
    for (key, value) in entries {
        state.put(PLANT, key, value).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What one call of `step` on `input` gave, in the `expected.json` shape, with the plant's
/// state after it when not empty.
fn observe(step: &StepRuntime, input: &Message, state: &StateStore) -> Result<Value, String> {
    let mut got = outcome(step.mediate(input));
    let after = state.entries(PLANT).map_err(|e| e.to_string())?;
    if !after.is_empty() {
        let shown = after
            .into_iter()
            .map(|(key, value)| {
                let value = match serde_json::from_str::<Value>(&value) {
                    Ok(v @ (Value::Object(_) | Value::Array(_))) => v,
                    _ => Value::String(value),
                };
                (key, value)
            })
            .collect();
        got["state"] = Value::Object(shown);
    }
    Ok(got)
}

/// What a call gave, in the `expected.json` shape.
fn outcome(result: Result<Vec<Message>, StepFailure>) -> Value {
    match result {
        Ok(outputs) => json!({ "outputs": outputs.iter().map(output_json).collect::<Vec<_>>() }),
        Err(StepFailure::Rejected(r)) => {
            json!({ "rejected": { "reason": r.reason, "field": r.field, "position": r.position } })
        }
        Err(StepFailure::RetryLater(r)) => json!({ "retry_later": { "reason": r.reason } }),
        Err(StepFailure::Deadline(_)) => json!({ "failed": "deadline" }),
        Err(StepFailure::MemoryCap(_)) => json!({ "failed": "memory-cap" }),
        Err(StepFailure::Trap(t)) => json!({ "failed": t }),
        Err(StepFailure::Limit(breach)) => json!({ "failed": breach.reason() }),
        Err(StepFailure::Quarantined(why)) => json!({ "failed": why }),
    }
}

fn output_json(m: &Message) -> Value {
    let media = m
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let body = if media == "application/json" || media.ends_with("+json") {
        serde_json::from_slice(&m.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&m.body).into_owned()))
    } else {
        Value::String(String::from_utf8_lossy(&m.body).into_owned())
    };
    json!({ "id": m.id, "content_type": m.content_type, "body": body })
}

fn find_input(case: &Path) -> Result<(PathBuf, String), String> {
    let input = std::fs::read_dir(case)
        .map_err(|e| format!("cannot read {}: {e}", case.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_stem().is_some_and(|s| s == "input"))
        .ok_or_else(|| format!("{} has no input.* file", case.display()))?;
    let content_type = match std::fs::read_to_string(case.join("content-type")) {
        Ok(ct) => ct.trim().to_string(),
        Err(_) => content_type_of(&input).to_string(),
    };
    Ok((input, content_type))
}

/// Content type by file extension; `NAME.ce.json` is a CloudEvent in structured mode.
pub fn content_type_of(path: &Path) -> &'static str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.ends_with(".ce.json") {
        return "application/cloudevents+json";
    }
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "txt" | "dat" | "idoc" => "text/plain",
        "csv" => "text/csv",
        "json" => "application/json",
        "x12" | "edi" => "application/edi-x12",
        "xml" => "application/xml",
        _ => "application/octet-stream",
    }
}

/// Step settings from a TOML file; `Ok(None)` if there is no such file.
pub fn read_settings(path: &Path) -> Result<Option<serde_json::Map<String, Value>>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(
        table
            .iter()
            .map(|(k, v)| (k.clone(), toml_to_json(v)))
            .collect(),
    ))
}

/// A JSON object file of a case (`what` says what its entries are); empty if there is no such
/// file.
fn read_object(path: &Path, what: &str) -> Result<serde_json::Map<String, Value>, String> {
    if !path.exists() {
        return Ok(serde_json::Map::new());
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{}: expected a JSON object of {what}: {e}", path.display()))
}

/// A case's message headers (`headers.json`), names lower-cased; none if there is no such file.
fn read_headers(path: &Path) -> Result<Vec<(String, String)>, String> {
    read_object(path, "header names and values")?
        .into_iter()
        .map(|(name, value)| match value {
            Value::String(v) => Ok((name.to_ascii_lowercase(), v)),
            other => Err(format!(
                "{}: header {name:?} is {other}, not a string",
                path.display()
            )),
        })
        .collect()
}

/// A case's initial state (`state.json`); empty if there is no such file.
fn read_state(path: &Path) -> Result<Vec<(String, String)>, String> {
    Ok(read_object(path, "keys and values")?
        .into_iter()
        .map(|(key, value)| match value {
            Value::String(s) => (key, s),
            other => (key, other.to_string()),
        })
        .collect())
}

/// The lookup tables of a vectors folder (`lookups/TABLE.csv`).
pub fn read_tables(dir: &Path) -> Result<Tables, String> {
    let mut tables = HashMap::new();
    if dir.is_dir() {
        for entry in
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_some_and(|e| e == "csv") {
                let name = path
                    .file_stem()
                    .expect("a csv file has a stem")
                    .to_string_lossy()
                    .into_owned();
                tables.insert(name, lookup::read_csv(&path, None, None)?);
            }
        }
    }
    Ok(Tables::new(tables))
}

// ---- vectors shipped inside the component --------------------------------------------------

/// The custom section that carries a component's own vectors folder (see [`bundle`]).
pub const SECTION: &str = "millrace:vectors";

/// `component` with the vectors folder `dir` appended as a top-level custom section
/// ([`SECTION`]): one file, one digest, and the deploy gate runs its cases. Every file of the
/// folder must be UTF-8 text; a component that already carries vectors is refused.
pub fn bundle(component: &[u8], dir: &Path) -> Result<Vec<u8>, String> {
    use wasm_encoder::ComponentSection;
    if embedded(component)?.is_some() {
        return Err("the component already carries vectors; bundle the plain build".into());
    }
    let mut files = serde_json::Map::new();
    pack(dir, dir, &mut files)?;
    if files.is_empty() {
        return Err(format!("{} has no files", dir.display()));
    }
    let data = serde_json::to_vec(&Value::Object(files)).expect("JSON values print");
    let mut out = component.to_vec();
    wasm_encoder::CustomSection {
        name: SECTION.into(),
        data: data.into(),
    }
    .append_to_component(&mut out);
    Ok(out)
}

fn pack(root: &Path, dir: &Path, files: &mut serde_json::Map<String, Value>) -> Result<(), String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read vectors folder {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            pack(root, &path, files)?;
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: vectors files must be UTF-8 text: {e}", path.display()))?;
        let relative = path
            .strip_prefix(root)
            .expect("walked from the root")
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        files.insert(relative, Value::String(text));
    }
    Ok(())
}

/// The vectors a component carries (the payload of its top-level [`SECTION`]), if any.
pub fn embedded(component: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.map_err(|e| format!("not a Wasm binary: {e}"))? {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::CustomSection(section)
                if depth == 1 && section.name() == SECTION =>
            {
                return Ok(Some(section.data().to_vec()));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Write packed vectors (from [`embedded`]) as a folder under `into`.
fn unpack(packed: &[u8], into: &Path) -> Result<(), String> {
    let files: serde_json::Map<String, Value> = serde_json::from_slice(packed)
        .map_err(|e| format!("the embedded vectors are not a JSON object of files: {e}"))?;
    for (name, text) in files {
        let relative = Path::new(&name);
        let safe = relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        let Some(text) = text.as_str().filter(|_| safe) else {
            return Err(format!("the embedded vectors have a bad entry {name:?}"));
        };
        let path = into.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Run the vectors `component` carries against it (compiled as `artifact`): `Ok(None)` when it
/// carries none, `Ok(Some(n))` when all `n` cases pass, else why not (each failing case).
pub fn run_embedded(
    engine: &PluginEngine,
    artifact: &Artifact,
    component: &[u8],
    sandbox: &Sandbox,
) -> Result<Option<usize>, String> {
    let Some(packed) = embedded(component)? else {
        return Ok(None);
    };
    let dir = tempfile::tempdir().map_err(|e| format!("a folder for the vectors: {e}"))?;
    unpack(&packed, dir.path())?;
    let results = run_artifact(engine, artifact, dir.path(), false, sandbox)?;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|c| {
            c.failure
                .as_ref()
                .map(|diff| format!("case {}: {diff}", c.name))
        })
        .collect();
    if failed.is_empty() {
        Ok(Some(results.len()))
    } else {
        Err(format!(
            "{} of {} sample vectors failed: {}",
            failed.len(),
            results.len(),
            failed.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_vectors_come_back_out_of_the_component() {
        let component = wasm_encoder::Component::new().finish();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("case-1")).unwrap();
        std::fs::write(dir.path().join("case-1/input.txt"), "A|1\n").unwrap();
        std::fs::write(dir.path().join("settings.toml"), "x = 1\n").unwrap();
        let bundled = bundle(&component, dir.path()).unwrap();
        assert_eq!(embedded(&component).unwrap(), None);
        let packed = embedded(&bundled).unwrap().expect("the section is there");
        let out = tempfile::tempdir().unwrap();
        unpack(&packed, out.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("case-1/input.txt")).unwrap(),
            "A|1\n"
        );
        assert!(bundle(&bundled, dir.path()).is_err(), "bundled twice");
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&bundled)
            .expect("still a valid component");
    }

    #[test]
    fn embedded_vectors_cannot_write_outside_their_folder() {
        let out = tempfile::tempdir().unwrap();
        let err = unpack(br#"{"../escape.txt": "x"}"#, out.path()).unwrap_err();
        assert!(err.contains("bad entry"), "{err}");
        assert!(!out.path().join("../escape.txt").exists());
    }
}
