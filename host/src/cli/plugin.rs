//! `millrace plugin ...`: inspect, test, vectors, bundle, keygen, sign, verify — a plugin file
//! on its own, without a running host.

use crate::conformance;
use crate::lookup::{self, Tables};
use crate::plugin::capability::Capability;
use crate::plugin::engine::PluginEngine;
use crate::plugin::store::Settings;
use crate::plugin::{
    self, Artifact, StepFailure, StepLimits, StepRuntime, StepSpec, bindings::types::Message,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `millrace plugin inspect FILE.wasm`.
pub fn inspect(file: &Path) -> i32 {
    let engine = match PluginEngine::new(None) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let artifact = match Artifact::load(&engine, file) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    println!("file:    {}", artifact.path.display());
    println!("size:    {} bytes", artifact.size);
    println!("digest:  {}", artifact.digest);
    let described = plugin::describe(&engine, &artifact);
    match &described {
        Ok(_) => println!(
            "world:   {}/plugin@{} (conforms)",
            plugin::capability::PACKAGE,
            plugin::capability::VERSION
        ),
        Err(e) => println!("world:   does not conform: {e}"),
    }
    if let Ok(info) = &described {
        println!("plugin:  {} {}", info.name, info.version);
        println!("accepts: {}", info.accepts.join(", "));
        println!("emits:   {}", info.emits.join(", "));
    }
    println!("imports (capabilities it asks for; its step must grant each):");
    for import in &artifact.imports {
        match Capability::of_import(import) {
            Ok(Some(cap)) => println!("  {import:<40} grant \"{cap}\""),
            Ok(None) => println!("  {import:<40} types only, always provided"),
            Err(e) => println!("  {import:<40} NOT PROVIDED: {e}"),
        }
    }
    println!("exports:");
    for export in &artifact.exports {
        println!("  {export}");
    }
    if described.is_ok() { 0 } else { 1 }
}

/// Options of `millrace plugin test`.
pub struct TestRun {
    pub file: PathBuf,
    pub input: PathBuf,
    pub content_type: Option<String>,
    pub settings_file: Option<PathBuf>,
    pub set: Vec<String>,
    pub lookups: Vec<String>,
    pub deadline_ms: u64,
    pub memory_mib: u32,
    /// Where compiled plugins are kept between runs (`--compile-cache`); none: compile each time.
    pub compile_cache: Option<PathBuf>,
}

/// `millrace plugin test`: one message through one plugin, every capability granted.
/// Exit 0 with the outputs, 1 on rejection or any other failure.
pub fn test(run: TestRun) -> i32 {
    match test_inner(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn test_inner(run: TestRun) -> Result<i32, String> {
    let mut settings = match &run.settings_file {
        Some(path) => conformance::read_settings(path)?
            .ok_or_else(|| format!("settings file {} does not exist", path.display()))?,
        None => serde_json::Map::new(),
    };
    for pair in &run.set {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--set {pair:?}: expected KEY=VALUE"))?;
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        settings.insert(key.to_string(), value);
    }
    let mut tables = HashMap::new();
    for pair in &run.lookups {
        let (name, file) = pair
            .split_once('=')
            .ok_or_else(|| format!("--lookup {pair:?}: expected TABLE=FILE.csv"))?;
        tables.insert(
            name.to_string(),
            lookup::read_csv(Path::new(file), None, None)?,
        );
    }
    let body = std::fs::read(&run.input)
        .map_err(|e| format!("cannot read input {}: {e}", run.input.display()))?;

    let engine = PluginEngine::new(run.compile_cache.as_deref()).map_err(|e| format!("{e:#}"))?;
    let artifact = Artifact::load(&engine, &run.file).map_err(|e| e.to_string())?;
    if let (Some(dir), Some((hits, _))) = (&run.compile_cache, engine.cache_stats()) {
        let how = if hits > 0 {
            "taken from"
        } else {
            "compiled, kept (if writable) in"
        };
        eprintln!("compile cache: {how} {}", dir.display());
    }
    let limits = StepLimits {
        deadline: Duration::from_millis(run.deadline_ms),
        memory_bytes: run.memory_mib as usize * 1024 * 1024,
        instance_reuse: 1,
        ..StepLimits::default()
    };
    let spec = StepSpec {
        plant: "local",
        route: "local",
        grants: Capability::ALL.to_vec(),
        settings: Settings::new(settings),
        tables: Tables::new(tables),
        state: Arc::new(crate::state::StateStore::in_memory()),
        limits,
        quarantines: Arc::new(crate::quarantine::Quarantines::disabled()),
    };
    let step = StepRuntime::load(&engine, &artifact, spec).map_err(|e| e.to_string())?;
    let by_extension = crate::conformance::content_type_of(&run.input);
    let content_type = run
        .content_type
        .or_else(|| (by_extension != "application/octet-stream").then(|| by_extension.into()))
        .or_else(|| step.info.accepts.first().cloned())
        .unwrap_or_else(|| "application/octet-stream".into());
    let input = Message {
        id: "test-1".into(),
        plant: "local".into(),
        route: "local".into(),
        content_type,
        headers: Vec::new(),
        body,
    };
    match step.mediate(&input) {
        Ok(outputs) if outputs.is_empty() => {
            println!(
                "filtered: {}@{} produced no output",
                step.id.name, step.id.version
            );
            Ok(0)
        }
        Ok(outputs) => {
            for (i, out) in outputs.iter().enumerate() {
                println!(
                    "--- output {} of {}: id {} ({})",
                    i + 1,
                    outputs.len(),
                    out.id,
                    out.content_type
                );
                match serde_json::from_slice::<serde_json::Value>(&out.body) {
                    Ok(json) => println!(
                        "{}",
                        serde_json::to_string_pretty(&json).expect("a JSON value prints")
                    ),
                    Err(_) => println!("{}", String::from_utf8_lossy(&out.body)),
                }
            }
            Ok(0)
        }
        Err(failure) => {
            match failure {
                StepFailure::Rejected(r) => {
                    println!("rejected: {}", r.reason);
                    if let Some(field) = r.field {
                        println!("field:    {field}");
                    }
                    if let Some(position) = r.position {
                        println!("position: {position}");
                    }
                }
                StepFailure::RetryLater(r) => println!("retry later: {}", r.reason),
                StepFailure::Deadline(d) => {
                    println!("deadline: stopped after {} ms", d.as_millis())
                }
                StepFailure::MemoryCap(b) => println!("memory cap: stopped at {} MiB", b >> 20),
                StepFailure::Trap(t) => println!("trap: {t}"),
                StepFailure::Limit(breach) => println!("limit: {}", breach.reason()),
                StepFailure::Quarantined(why) => println!("quarantined: {why}"),
            }
            Ok(1)
        }
    }
}

/// `millrace plugin test FILE.wasm --vectors DIR [--bless]`: every case, one line each, then
/// `N passed, M failed`; exit 1 if any failed.
pub fn vectors(file: &Path, dir: &Path, bless: bool, compile_cache: Option<&Path>) -> i32 {
    let results = match conformance::run(file, dir, bless, compile_cache) {
        Ok(results) => results,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut failed = 0;
    for case in &results {
        match &case.failure {
            None if bless => println!("BLESSED {}", case.name),
            None => println!("PASS {}", case.name),
            Some(diff) => {
                failed += 1;
                println!(
                    "FAIL {}
     {diff}",
                    case.name
                );
            }
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    i32::from(failed > 0)
}

/// `millrace plugin bundle FILE.wasm --vectors DIR -o OUT.wasm`: the vectors are run against
/// the component first (a failing case is not bundled), then packed into it.
pub fn bundle(file: &Path, dir: &Path, output: &Path) -> i32 {
    let bundled = bundled(file, dir).and_then(|(cases, bytes)| {
        std::fs::write(output, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
        Ok((cases, bytes))
    });
    match bundled {
        Ok((cases, bytes)) => {
            println!(
                "{}: {} with {cases} case(s), digest {}",
                output.display(),
                file.display(),
                crate::plugin::digest(&bytes)
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `file` with the vector folder `dir` inside, once every case passes against those bundled bytes
/// (what a host then compiles: with a shared compile cache, `$MILLRACE_COMPILE_CACHE`, a deploy
/// of them takes the code compiled here); the number of cases and the bundled bytes. A failing
/// case is named, with the command that shows why.
pub fn bundled(file: &Path, dir: &Path) -> Result<(usize, Vec<u8>), String> {
    if !dir.is_dir() {
        return Err(format!(
            "{} does not exist: nothing to bundle (a plugin's cases live in its vectors/ folder)",
            dir.display()
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let bundled = conformance::bundle(&bytes, dir)?;
    let cache = crate::config::compile_cache_from_env();
    let results = conformance::run_bytes(file, &bundled, dir, cache.as_deref())?;
    let failed: Vec<&str> = results
        .iter()
        .filter(|c| c.failure.is_some())
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        return Err(format!(
            "{} of {} cases fail ({}), so nothing was bundled; run `millrace plugin test {} --vectors {}` to see why",
            failed.len(),
            results.len(),
            failed.join(", "),
            file.display(),
            dir.display()
        ));
    }
    Ok((results.len(), bundled))
}

/// `millrace plugin keygen --out BASE`: BASE.key (secret, mode 600) and BASE.pub.
pub fn keygen(base: &Path) -> i32 {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (secret_path, public_path) = crate::plugin::signature::key_files(base);
    let (secret, public) = match crate::plugin::signature::generate() {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: no random source for the key: {e}");
            return 1;
        }
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .and_then(|mut f| f.write_all(&secret))
        .and_then(|()| std::fs::write(&public_path, &public));
    match written {
        Ok(()) => {
            println!(
                "secret key: {} (keep it; mode 600)\npublic key: {} (name it in [plants.P.trust] keys)",
                secret_path.display(),
                public_path.display()
            );
            0
        }
        Err(e) => {
            eprintln!(
                "error: cannot write {}: {e} (an existing key is never overwritten)",
                secret_path.display()
            );
            1
        }
    }
}

/// `millrace plugin sign FILE --key SECRET -o OUT`.
pub fn sign(file: &Path, key: &Path, output: &Path) -> i32 {
    let signed = std::fs::read(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|bytes| {
            let key = crate::plugin::signature::read_secret_key(key)?;
            crate::plugin::signature::sign(&bytes, &key).map_err(|e| e.to_string())
        })
        .and_then(|signed| {
            std::fs::write(output, &signed)
                .map_err(|e| format!("cannot write {}: {e}", output.display()))
        });
    match signed {
        Ok(()) => {
            println!("signed: {}", output.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `millrace plugin verify FILE --key PUBLIC ... [--min-signatures N]`.
pub fn verify(file: &Path, keys: &[PathBuf], min_signatures: usize) -> i32 {
    let checked = (|| {
        let bytes =
            std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let mut public = Vec::new();
        for key in keys {
            public.push(crate::plugin::signature::read_public_key(key)?);
        }
        let signers =
            crate::plugin::signature::signers(&bytes, &public).map_err(|e| e.to_string())?;
        Ok::<_, String>(
            keys.iter()
                .zip(&public)
                .filter(|(_, k)| signers.contains(k))
                .map(|(path, _)| path.display().to_string())
                .collect::<Vec<_>>(),
        )
    })();
    match checked {
        Ok(signed_by) if signed_by.len() >= min_signatures.max(1) => {
            println!("valid: signed by {}", signed_by.join(", "));
            0
        }
        Ok(signed_by) => {
            eprintln!(
                "error: signed by {} of the given keys ({}), {} needed",
                signed_by.len(),
                signed_by.join(", "),
                min_signatures.max(1)
            );
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
