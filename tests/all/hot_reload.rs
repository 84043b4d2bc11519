//! Plugin versions per plant through the admin API, on a running host: uploads gated against the
//! plant's steps, activations swapped under load without losing a message or mixing versions
//! within one, plant isolation, refusals that leave the active version serving, rollback, and
//! the active version surviving a restart. The `stamp` guests (tests/guests/stamp-*) answer with
//! their own version, so each answer says which version made it.

use crate::harness::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn workspace() -> Workspace {
    let stamp = guest("guest-stamp-1");
    let a = route_toml("a", &stamp, r#"["log"]"#, "");
    let b = route_toml("b", &stamp, r#"["log"]"#, "").replace("plant-a", "plant-b");
    Workspace::new(&format!(
        "[host]\nadmin = \"127.0.0.1:0\"\n\n[plants.plant-a]\n[plants.plant-b]\n\n{a}\n{b}"
    ))
}

fn upload(host: &Host, plant: &str, name: &str) -> Reply {
    let bytes = std::fs::read(guest(name)).expect("guest built");
    host.admin("POST", &format!("/v1/plants/{plant}/plugins"), &bytes)
}

fn activate(host: &Host, version: &str) -> Reply {
    host.admin(
        "POST",
        "/v1/plants/plant-a/plugins/stamp/activate",
        format!("{{\"version\": \"{version}\"}}").as_bytes(),
    )
}

/// One message to `route`: the version in the answer's body and in its lineage header.
fn stamped(base: &str, route: &str, n: usize) -> (u16, String, String, String) {
    let reply = request(
        base,
        "POST",
        &format!("/v1/routes/{route}/messages"),
        Some("text/plain"),
        &[],
        format!("m{n}").as_bytes(),
    );
    if reply.status != 200 {
        return (reply.status, reply.body, String::new(), String::new());
    }
    let body = reply.json();
    assert_eq!(body["input"], format!("m{n}"));
    let lineage = reply
        .header("millrace-lineage")
        .unwrap_or_default()
        .to_string();
    (
        reply.status,
        body["stamp"].as_str().unwrap_or_default().to_string(),
        lineage,
        reply.body,
    )
}

#[test]
fn swapping_versions_under_load_loses_nothing_mixes_nothing_and_leaves_other_plants_alone() {
    let ws = workspace();
    let host = ws.start();
    let url: Arc<str> = host.url.clone().into();
    let (_, _, _, plant_b_before) = stamped(&host.url, "b", 0);
    let deployed = upload(&host, "plant-a", "guest-stamp-2");
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    assert_eq!(deployed.json()["version"], "2.0.0");

    const MESSAGES: usize = 10_000;
    const CLIENTS: usize = 4;
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = Arc::clone(&url);
            std::thread::spawn(move || {
                (0..MESSAGES / CLIENTS)
                    .map(|i| stamped(&url, "a", c * MESSAGES + i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    // Plant B, meanwhile: the same input must keep giving the same bytes.
    let plant_b = {
        let (url, done) = (Arc::clone(&url), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !done.load(Ordering::SeqCst) {
                answers.push(stamped(&url, "b", 0));
            }
            answers
        })
    };
    let mut swaps = 0;
    while swaps < 20 {
        let version = if swaps % 2 == 0 { "2.0.0" } else { "1.0.0" };
        let swapped = activate(&host, version);
        assert_eq!(swapped.status, 200, "{}", swapped.body);
        assert_eq!(swapped.json()["routes"], serde_json::json!(["a"]));
        swaps += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let answers: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    done.store(true, Ordering::SeqCst);
    let plant_b = plant_b.join().expect("plant b client");

    assert_eq!(answers.len(), MESSAGES);
    let mut seen = std::collections::BTreeMap::new();
    for (status, version, lineage, _) in &answers {
        assert_eq!(*status, 200, "every message answered: {version}");
        // The body says which version ran; the lineage names the same one: one version per step.
        assert!(
            lineage.starts_with(&format!("stamp@{version}+sha256:")) && !lineage.contains(','),
            "{version} vs {lineage}"
        );
        *seen.entry(version.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["1.0.0", "2.0.0"],
        "both versions served: {seen:?}"
    );
    assert!(!plant_b.is_empty());
    for (status, version, _, body) in &plant_b {
        assert_eq!((*status, version.as_str()), (200, "1.0.0"));
        assert_eq!(*body, plant_b_before, "plant B's answers byte-identical");
    }
    let versions = host.admin("GET", "/v1/plants/plant-a/plugins/stamp", b"");
    let doc = versions.json();
    assert_eq!(doc["history"].as_array().unwrap().len(), 20, "{doc}");
    assert_eq!(doc["active"]["version"], "1.0.0");
    let b = host.admin("GET", "/v1/plants/plant-b/plugins/stamp", b"");
    assert_eq!(
        b.json()["history"],
        serde_json::json!([]),
        "plant B never swapped"
    );
}

#[test]
fn bad_candidates_are_refused_with_the_reason_while_the_active_version_serves() {
    let ws = workspace();
    let host = ws.start();
    let url: Arc<str> = host.url.clone().into();
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (url, done) = (Arc::clone(&url), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut n = 0;
            let mut answers = Vec::new();
            while !done.load(Ordering::SeqCst) {
                answers.push(stamped(&url, "a", n));
                n += 1;
            }
            answers
        })
    };
    let refused = |reply: Reply, why: &str| {
        assert_eq!(reply.status, 422, "{}", reply.body);
        let detail = reply.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(detail.contains(why), "{why:?} not in {detail:?}");
    };
    refused(
        host.admin(
            "POST",
            "/v1/plants/plant-a/plugins",
            b"not a component at all",
        ),
        "is not a loadable Wasm component",
    );
    // A core module, not a component.
    refused(
        host.admin("POST", "/v1/plants/plant-a/plugins", b"\0asm\x01\0\0\0"),
        "is not a loadable Wasm component",
    );
    // Asks for a capability the plant does not grant its step.
    refused(
        upload(&host, "plant-a", "guest-stamp-3"),
        "route a, step 1: the plugin imports millrace:mediation/state@0.1.0 but its step does not grant \"state\"",
    );
    // Another plugin: nothing on the plant runs it.
    refused(
        upload(&host, "plant-a", "guest-trap"),
        "no route of plant plant-a runs plugin guest-trap",
    );
    let unknown = activate(&host, "9.9.9");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let state = host.admin("GET", "/v1/plants/plant-a/plugins/stamp", b"");
    assert_eq!(state.json()["active"]["version"], "1.0.0");
    assert_eq!(
        state.json()["versions"].as_array().unwrap().len(),
        1,
        "refused candidates are not kept: {}",
        state.body
    );

    // A good one, activated, then rolled back in one call.
    assert_eq!(upload(&host, "plant-a", "guest-stamp-2").status, 201);
    assert_eq!(activate(&host, "2.0.0").status, 200);
    assert_eq!(stamped(&host.url, "a", 1).1, "2.0.0");
    let back = host.admin("POST", "/v1/plants/plant-a/plugins/stamp/rollback", b"");
    assert_eq!(back.status, 200, "{}", back.body);
    assert_eq!(back.json()["activation"]["version"], "1.0.0");
    assert_eq!(back.json()["activation"]["action"], "rollback");
    assert_eq!(stamped(&host.url, "a", 2).1, "1.0.0");

    done.store(true, Ordering::SeqCst);
    let answers = load.join().expect("load");
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|(status, ..)| *status == 200),
        "the load never saw a failure"
    );
}

#[test]
fn the_active_version_survives_a_restart_and_the_cli_drives_the_admin_api() {
    let ws = workspace();
    let host = ws.start();
    let admin = host.admin.clone().expect("admin");
    let deploy = ws.millrace(&[
        "plugin",
        "deploy",
        guest("guest-stamp-2").to_str().unwrap(),
        "--admin",
        &admin,
        "--plant",
        "plant-a",
        "--activate",
    ]);
    assert!(
        deploy.status.success(),
        "{}",
        String::from_utf8_lossy(&deploy.stderr)
    );
    assert_eq!(stamped(&host.url, "a", 1).1, "2.0.0");
    assert!(host.stop().success());

    let host = ws.start();
    assert_eq!(
        stamped(&host.url, "a", 2).1,
        "2.0.0",
        "active after a restart"
    );
    let admin = host.admin.clone().expect("admin");
    let versions = ws.millrace(&[
        "plugin", "versions", "--admin", &admin, "--plant", "plant-a", "--plugin", "stamp",
    ]);
    let text = String::from_utf8_lossy(&versions.stdout);
    assert!(versions.status.success(), "{text}");
    assert!(
        text.contains("\"2.0.0\"") && text.contains("\"config\""),
        "{text}"
    );
    let rollback = ws.millrace(&[
        "plugin", "rollback", "--admin", &admin, "--plant", "plant-a", "--plugin", "stamp",
    ]);
    assert!(rollback.status.success());
    assert_eq!(stamped(&host.url, "a", 3).1, "1.0.0");
    let again = ws.millrace(&[
        "plugin",
        "activate",
        "--admin",
        &admin,
        "--plant",
        "plant-a",
        "--plugin",
        "stamp",
        "--version",
        "7.0.0",
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("has no version 7.0.0"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
