//! The canonical event schemas (`schemas/EVENT/vN.json`) are valid JSON Schema 2020-12, and
//! every event the project documents as an output (plugin conformance vectors, example expected
//! outputs) names its schema in `dataschema` and validates against it.

use crate::harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `urn:millrace:schema:EVENT:vN` → compiled validator, for every schema file.
fn schemas() -> BTreeMap<String, jsonschema::Validator> {
    let mut out = BTreeMap::new();
    for event in std::fs::read_dir(root().join("schemas")).unwrap() {
        let event = event.unwrap().path();
        for file in std::fs::read_dir(&event).unwrap() {
            let file = file.unwrap().path();
            let schema: Value =
                serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            jsonschema::meta::validate(&schema)
                .unwrap_or_else(|e| panic!("{}: not a valid schema: {e}", file.display()));
            let name = event.file_name().unwrap().to_str().unwrap();
            let version = file.file_stem().unwrap().to_str().unwrap();
            let id = format!("urn:millrace:schema:{name}:{version}");
            assert_eq!(schema["$id"], id.as_str(), "{}", file.display());
            assert_eq!(
                schema["$schema"],
                "https://json-schema.org/draft/2020-12/schema",
                "{}",
                file.display()
            );
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap();
            out.insert(id, validator);
        }
    }
    out
}

fn json_files(dir: &Path, name: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, name, found);
        } else if path.file_name().is_some_and(|n| n == name)
            || (name == "*.json" && path.extension().is_some_and(|e| e == "json"))
        {
            found.push(path);
        }
    }
}

/// Every CloudEvent object anywhere inside `value`.
fn events<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) if map.get("specversion") == Some(&Value::String("1.0".into())) => {
            out.push(value)
        }
        Value::Object(map) => map.values().for_each(|v| events(v, out)),
        Value::Array(items) => items.iter().for_each(|v| events(v, out)),
        _ => {}
    }
}

#[test]
fn every_documented_event_names_and_matches_its_schema() {
    let schemas = schemas();
    assert_eq!(
        schemas.len(),
        12,
        "the taxonomy has eleven factory events and the finance review request: {:?}",
        schemas.keys().collect::<Vec<_>>()
    );
    let mut files = Vec::new();
    json_files(&root().join("plugins"), "expected.json", &mut files);
    // Example outputs; samples may be wrong on purpose (an unknown major version, say).
    let mut example_files = Vec::new();
    json_files(&root().join("examples"), "*.json", &mut example_files);
    files.extend(
        example_files
            .into_iter()
            .filter(|f| f.components().any(|c| c.as_os_str() == "expected")),
    );
    let mut checked = 0;
    for file in files {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let mut found = Vec::new();
        events(&doc, &mut found);
        for event in found {
            let ty = event["type"].as_str().unwrap_or_default();
            let (name, version) = ty
                .strip_prefix("millrace.")
                .and_then(|t| t.rsplit_once(".v"))
                .unwrap_or_else(|| {
                    panic!("{}: type {ty:?} is not millrace.EVENT.vN", file.display())
                });
            let id = format!("urn:millrace:schema:{name}:v{version}");
            assert_eq!(
                event["dataschema"],
                id.as_str(),
                "{}: event {}",
                file.display(),
                event["id"]
            );
            let validator = schemas
                .get(&id)
                .unwrap_or_else(|| panic!("{}: no schema {id}", file.display()));
            if let Err(e) = validator.validate(&event["data"]) {
                panic!(
                    "{}: event {} does not match {id}: {e}",
                    file.display(),
                    event["id"]
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no documented events found to check");
}

#[test]
fn a_schema_refuses_data_that_breaks_it() {
    let schemas = schemas();
    let completed = &schemas["urn:millrace:schema:production.completed:v1"];
    let good = serde_json::json!({
        "work_order": "WO-1", "material": "M", "quantity": 1, "unit": "EA", "plant": "p", "completed_at": "2026-11-27T05:30:00Z"
    });
    assert!(completed.is_valid(&good));
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("unit");
    assert!(!completed.is_valid(&missing));
    let mut local_time = good.clone();
    local_time["completed_at"] = "2026-11-27T06:30:00+01:00".into();
    assert!(!completed.is_valid(&local_time), "times are UTC");
    let mut unknown = good;
    unknown["colour"] = "red".into();
    assert!(
        !completed.is_valid(&unknown),
        "no unknown fields outside attributes"
    );
}
