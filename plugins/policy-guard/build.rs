//! Embeds every canonical event schema of `schemas/EVENT/vN.json` into the plugin, so the
//! plugin version pins the schema versions it enforces.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut found = Vec::new();
    for event in std::fs::read_dir(&root).expect("schemas/ exists") {
        let event = event.expect("schemas/ is readable").path();
        println!("cargo:rerun-if-changed={}", event.display());
        let name = event.file_name().unwrap().to_string_lossy().into_owned();
        for file in std::fs::read_dir(&event).expect("an event folder is readable") {
            let file = file.expect("an event folder is readable").path();
            let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
            let Some(major) = stem.strip_prefix('v').and_then(|m| m.parse::<u32>().ok()) else {
                continue;
            };
            if file.extension().is_some_and(|e| e == "json") {
                found.push((name.clone(), major, file.canonicalize().unwrap()));
            }
        }
    }
    found.sort();
    let mut out = String::from(
        "/// `(event, major version, schema JSON)`, sorted.\npub const SCHEMAS: &[(&str, u32, &str)] = &[\n",
    );
    for (name, major, path) in &found {
        writeln!(
            out,
            "    ({name:?}, {major}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("schemas.rs");
    std::fs::write(dest, out).unwrap();
}
