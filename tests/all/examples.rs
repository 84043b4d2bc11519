//! Every example gives exactly its documented outputs: for `examples/EX/samples/ROUTE/CASE.EXT`,
//! the answer of route ROUTE is `examples/EX/expected/ROUTE/CASE.json` (sent with
//! `Idempotency-Key: EX-CASE`, so ids are stable). Samples are sent in the order of their case
//! names across all routes of the example (`01-…`, `02-…`), so an example can show one route's
//! message changing what another route does. Set `MILLRACE_BLESS=1` to rewrite them (refused in CI).

use crate::harness::*;
use std::path::Path;

fn sorted(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    entries
}

#[test]
fn every_example_gives_its_expected_outputs() {
    let bless = blessing();
    let mut checked = std::collections::BTreeMap::new();
    for example in sorted(&root().join("examples")) {
        let name = example.file_name().unwrap().to_str().unwrap().to_string();
        if name == "flows" {
            continue; // flows through brokers: tests/all/mqtt_flows.rs
        }
        checked.insert(name.clone(), 0);
        let work = tempfile::tempdir().unwrap();
        copy_dir(&example, work.path());
        let config = std::fs::read_to_string(work.path().join("millrace.toml"))
            .unwrap()
            .replace(
                "plugin_dir = \"../../target/plugins\"",
                &format!(
                    "plugin_dir = \"{}\"",
                    root().join("target/plugins").display()
                ),
            );
        std::fs::write(work.path().join("millrace.toml"), config).unwrap();
        let host = Host::start(&work.path().join("millrace.toml"), &[]);
        let mut samples = Vec::new();
        for route_dir in sorted(&example.join("samples")) {
            let route = route_dir.file_name().unwrap().to_str().unwrap().to_string();
            for sample in sorted(&route_dir) {
                let file = sample.file_name().unwrap().to_str().unwrap();
                let case = file.split('.').next().unwrap().to_string();
                samples.push((case, route.clone(), sample));
            }
        }
        samples.sort();
        for (case, route, sample) in samples {
            let content_type = millrace_host::conformance::content_type_of(&sample);
            let reply = host.post_with_key(
                &route,
                content_type,
                &format!("{name}-{case}"),
                std::fs::read(&sample).unwrap(),
            );
            let body = if reply.body.is_empty() {
                serde_json::Value::Null
            } else {
                reply.json()
            };
            let mut got = serde_json::json!({ "status": reply.status, "content_type": reply.content_type, "body": body });
            // The digest changes with every plugin build; other tests check it.
            if got["body"].get("digest").is_some() {
                got["body"]["digest"] = "sha256:…".into();
            }
            let expected_path = example
                .join("expected")
                .join(&route)
                .join(format!("{case}.json"));
            if bless {
                std::fs::create_dir_all(expected_path.parent().unwrap()).unwrap();
                std::fs::write(
                    &expected_path,
                    serde_json::to_string_pretty(&got).unwrap() + "\n",
                )
                .unwrap();
                continue;
            }
            let text = std::fs::read_to_string(&expected_path)
                .unwrap_or_else(|_| panic!("missing {}", expected_path.display()));
            let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(got, expected, "{name}/{route}/{case}");
            *checked.get_mut(&name).unwrap() += 1;
        }
    }
    // Every example folder had its samples checked (none silently skipped or emptied).
    for (name, count) in &checked {
        assert!(bless || *count > 0, "example {name}: no sample checked");
    }
    for name in [
        "machine-downtime",
        "material-consumption",
        "quality-hold",
        "quickstart",
        "supplier-asn",
        "wms-inventory",
        "work-order-release",
    ] {
        assert!(
            checked.contains_key(name),
            "example {name} missing: {checked:?}"
        );
    }
}
