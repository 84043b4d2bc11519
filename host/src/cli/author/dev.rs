//! `millrace plugin dev DIR --admin URL --plant P`: watch the plugin's sources; on every change
//! build, run the vectors and, all passing, bundle them, deploy and activate the build on a
//! running host, printing each step's result and time. A failed build or vector deploys nothing:
//! the plant keeps its active version. Each build carries its own development version
//! (`VERSION-dev.N`), so the host never sees two components under one version.

use super::Manifest;
use super::build::{self, GENERATED, Options};
use crate::cli::admin;
use crate::conformance;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Folders at the top of a plugin's folder that are build output or tools' caches, not sources.
const IGNORED: &[&str] = &["target", "types", "node_modules", "__pycache__"];

/// How deep below the plugin's folder sources are looked for.
const MAX_DEPTH: usize = 8;

/// `millrace plugin dev`. Runs until interrupted; returns only when the folder is not a plugin.
pub fn run(dir: &Path, admin: &str, plant: &str, interval: Duration) -> i32 {
    if let Err(e) = Manifest::read(dir) {
        eprintln!("error: {e}");
        return 1;
    }
    println!(
        "watching {} (every {} ms); each green build goes to plant {plant} at {admin}",
        dir.display(),
        interval.as_millis()
    );
    let mut seen = BTreeMap::new();
    let mut last_stamp = 0;
    loop {
        let now = sources(dir);
        if now != seen {
            let changed: Vec<&PathBuf> = now
                .iter()
                .filter(|(path, time)| seen.get(*path) != Some(*time))
                .map(|(path, _)| path)
                .chain(seen.keys().filter(|p| !now.contains_key(*p)))
                .collect();
            if seen.is_empty() {
                println!("-- first build");
            } else {
                let names: Vec<String> = changed
                    .iter()
                    .map(|p| p.strip_prefix(dir).unwrap_or(p).display().to_string())
                    .collect();
                println!("-- changed: {}", names.join(", "));
            }
            seen = now;
            // A development version per build: seconds since the epoch, never reused.
            let epoch = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            last_stamp = epoch.max(last_stamp + 1);
            round(dir, admin, plant, last_stamp);
            // Changes made during the round are seen on the next pass.
        }
        std::thread::sleep(interval);
    }
}

/// One build → vectors → deploy → activate, each step printed with its time; a failed step
/// ends the round with why and what is still active.
fn round(dir: &Path, admin: &str, plant: &str, stamp: u64) {
    if let Err(failed) = steps(dir, admin, plant, stamp) {
        println!("{failed}");
    }
}

/// A step's result, or the lines saying that it failed, after how long, and why.
fn step<T>(name: &str, started: Instant, result: Result<T, String>) -> Result<T, String> {
    const KEEPS: &str = "not deployed: the plant keeps its active version";
    result.map_err(|e| format!("{name:<8} FAILED  {}\n{e}\n{KEEPS}", took(started)))
}

fn steps(dir: &Path, admin: &str, plant: &str, stamp: u64) -> Result<(), String> {
    let started = Instant::now();
    let manifest = step("manifest", started, Manifest::read(dir))?;
    let options = Options {
        version: Some(format!("{}-dev.{stamp}", manifest.version)),
        output: Some(
            dir.join("target/dev")
                .join(format!("{}.wasm", manifest.name)),
        ),
        // Each save builds again: the seconds of `wasm-opt` are left to `plugin build`.
        unoptimised: true,
    };
    let built = step("build", started, build::build(dir, &options))?;
    println!(
        "build    ok      {}  {} {} ({} bytes)",
        took(started),
        built.manifest.name,
        built.version,
        built.size
    );

    // The vectors run against the bytes deployed next (bundled with them): with a shared compile
    // cache the host then takes the code compiled here.
    let started = Instant::now();
    let vectors = dir.join("vectors");
    let bundled = std::fs::read(&built.path)
        .map_err(|e| format!("{}: {e}", built.path.display()))
        .and_then(|bytes| conformance::bundle(&bytes, &vectors));
    let bundled = step("vectors", started, bundled)?;
    let cache = crate::config::compile_cache_from_env();
    let results = step(
        "vectors",
        started,
        conformance::run_bytes(&built.path, &bundled, &vectors, cache.as_deref()),
    )?;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|c| {
            let why = c.failure.as_deref()?;
            Some(format!("  FAIL {}\n       {why}", c.name))
        })
        .collect();
    if !failed.is_empty() {
        let counts = format!(
            "{} passed, {} failed\n{}",
            results.len() - failed.len(),
            failed.len(),
            failed.join("\n")
        );
        return step("vectors", started, Err(counts));
    }
    println!(
        "vectors  ok      {}  {} passed",
        took(started),
        results.len()
    );

    let started = Instant::now();
    let kept = step("deploy", started, admin::upload(admin, plant, bundled))?;
    println!(
        "deploy   ok      {}  {} {} kept by the gate ({})",
        took(started),
        kept.plugin,
        kept.version,
        kept.digest
    );

    let started = Instant::now();
    admin::activate_version(admin, plant, &kept.plugin, &kept.version).map_err(|e| {
        format!(
            "activate FAILED  {}\n{e}\nthe plant keeps its active version",
            took(started)
        )
    })?;
    println!(
        "activate ok      {}  {} {} is active on plant {plant}",
        took(started),
        kept.plugin,
        kept.version
    );
    Ok(())
}

fn took(started: Instant) -> String {
    format!("{:>6.1} s", started.elapsed().as_secs_f64())
}

/// Every source file of the plugin with its modification time and size.
fn sources(dir: &Path) -> BTreeMap<PathBuf, (SystemTime, u64)> {
    let mut found = BTreeMap::new();
    // Links are followed (a twin's vectors/ is one), to a bounded depth so a link to a parent
    // cannot make the walk endless.
    let mut pending = vec![(dir.to_path_buf(), 0)];
    while let Some((at, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            // Hidden files and folders (editor swap files, .git) and editors' backup and
            // autosave files are not sources.
            let scratch = name.starts_with('.')
                || name.ends_with('~')
                || (name.starts_with('#') && name.ends_with('#'))
                || name == "4913";
            if scratch {
                continue;
            }
            if meta.is_dir() {
                let output = depth == 0 && IGNORED.contains(&name.as_ref());
                if !output && depth < MAX_DEPTH {
                    pending.push((path, depth + 1));
                }
            } else if !(depth == 0 && GENERATED.contains(&name.as_ref())) && name != "Cargo.lock" {
                let time = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                found.insert(path, (time, meta.len()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_leave_out_build_output_and_generated_files_and_a_link_loop_ends() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for file in [
            "plugin.js",
            "version.js",
            "target/dev/p.wasm",
            "types/p.d.ts",
            "vectors/case/input.txt",
            "src/types/mod.rs",
            ".plugin.js.swp",
            "#plugin.js#",
        ] {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x").unwrap();
        }
        std::os::unix::fs::symlink(root, root.join("loop")).unwrap();
        let found: Vec<String> = sources(root)
            .keys()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert!(found.contains(&"plugin.js".to_string()), "{found:?}");
        assert!(found.contains(&"vectors/case/input.txt".to_string()));
        assert!(
            found.contains(&"src/types/mod.rs".to_string()),
            "only the top folder's types/ is output"
        );
        assert!(!found.iter().any(|p| p.contains(".swp") || p.contains('#')));
        assert!(
            found.contains(&"loop/plugin.js".to_string()),
            "links are followed"
        );
        // In the folder itself; below the link, the same names are just deeper folders.
        let top: Vec<&String> = found.iter().filter(|p| !p.starts_with("loop/")).collect();
        assert!(
            !top.iter().any(|p| p.as_str() == "version.js"
                || p.starts_with("target/")
                || p.starts_with("types/")),
            "{top:?}"
        );
        // The loop is walked to the depth bound, not forever.
        let copies = found.iter().filter(|p| p.ends_with("plugin.js")).count();
        assert_eq!(copies, MAX_DEPTH + 1, "{found:?}");
    }
}
