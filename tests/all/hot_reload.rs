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

pub(crate) fn activate(host: &Host, version: &str) -> Reply {
    host.admin(
        "POST",
        "/v1/plants/plant-a/plugins/stamp/activate",
        format!("{{\"version\": \"{version}\"}}").as_bytes(),
    )
}

/// Roll plant A's `stamp` back to its previous version.
pub(crate) fn rollback(host: &Host) -> Reply {
    host.admin("POST", "/v1/plants/plant-a/plugins/stamp/rollback", b"")
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
    for (status, version, ..) in &answers {
        assert_eq!(*status, 200, "every message answered: {version}");
    }
    both_versions_one_per_output(
        answers
            .iter()
            .map(|(_, version, lineage, _)| (version.as_str(), lineage.as_str())),
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

/// `guest-stamp-1` answering as `version` (five bytes, like its own `1.0.0`): distinct bytes, so
/// a distinct component with its own compiled code.
fn stamp_as(version: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(guest("guest-stamp-1")).expect("guest built");
    let at = bytes
        .windows(5)
        .position(|w| w == b"1.0.0")
        .expect("the guest holds its version string");
    bytes[at..at + 5].copy_from_slice(version.as_bytes());
    bytes
}

#[test]
fn versions_no_longer_kept_compiled_in_memory_activate_from_the_compile_cache() {
    // More versions than a host keeps compiled in memory (64 beyond its routes'): the first ones
    // uploaded are forgotten there, and activating one reads it back from the compile cache.
    let ws = workspace();
    let host = ws.start();
    host.wait_ready();
    let versions: Vec<String> = (0..70)
        .map(|i| format!("9.{}.{}", i / 10, i % 10))
        .collect();
    for version in &versions {
        let deployed = host.admin("POST", "/v1/plants/plant-a/plugins", &stamp_as(version));
        assert_eq!(deployed.status, 201, "{version}: {}", deployed.body);
        assert_eq!(deployed.json()["version"], version.as_str());
    }
    // Read back from the compile cache: a hit each time a forgotten version is activated, none
    // for one still kept (the last uploaded).
    let hits = || {
        let metrics = host.admin("GET", "/metrics", b"").body;
        crate::metrics::value(&metrics, "millrace_compile_cache", &[("outcome", "hit")])
    };
    for (version, from_cache) in [
        (&versions[0], true),
        (&versions[69], false),
        (&versions[1], true),
        (&versions[0], false),
    ] {
        let before = hits();
        let activated = activate(&host, version);
        assert_eq!(activated.status, 200, "{version}: {}", activated.body);
        assert_eq!(
            hits() > before,
            from_cache,
            "{version}: read back from the cache"
        );
        let (status, stamp, lineage, body) = stamped(&host.url, "a", 0);
        assert_eq!(status, 200, "{body}");
        assert_eq!(&stamp, version);
        assert!(
            lineage.starts_with(&format!("stamp@{version}+sha256:")),
            "{lineage}"
        );
    }
    // The other plant kept its version throughout.
    assert_eq!(stamped(&host.url, "b", 0).1, "1.0.0");
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
    // A component of another world (it exports nothing of the contract).
    refused(
        host.admin(
            "POST",
            "/v1/plants/plant-a/plugins",
            &wasm_encoder::Component::new().finish(),
        ),
        "does not implement world millrace:mediation/plugin@0.1.0",
    );
    // Asks for a capability no step of the plant is granted: refused before it is compiled,
    // and the reason names the candidate by its digest, not by a path on the host.
    let asks_state = upload(&host, "plant-a", "guest-stamp-3");
    assert!(
        !asks_state.body.contains(".millrace"),
        "{}",
        asks_state.body
    );
    refused(
        asks_state,
        "the plugin imports millrace:mediation/state@0.1.0 but no step of the plant is granted \"state\"",
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
    let back = rollback(&host);
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

/// Each output's body version (`stamp`) against its lineage: one step, that version. Both
/// versions must have served.
pub(crate) fn both_versions_one_per_output<'a>(outputs: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut seen = std::collections::BTreeMap::new();
    for (version, lineage) in outputs {
        // The body says which version ran; the lineage names the same one: one version per step.
        assert!(
            lineage.starts_with(&format!("stamp@{version}+sha256:")) && !lineage.contains(','),
            "body {version} vs lineage {lineage}"
        );
        *seen.entry(version).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        [&"1.0.0", &"2.0.0"],
        "both versions served: {seen:?}"
    );
}

/// The entry of `version` in a `GET /v1/plants/{plant}/plugins/{plugin}` answer's `versions`.
pub(crate) fn kept(doc: &serde_json::Value, version: &str) -> serde_json::Value {
    doc["versions"]
        .as_array()
        .and_then(|versions| versions.iter().find(|v| v["version"] == version))
        .cloned()
        .unwrap_or_else(|| panic!("version {version} is not kept: {doc}"))
}

/// Poll `what` until it gives `Some` (a guard against a hung host, not a timing assertion).
pub(crate) fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1200 {
        if let Some(found) = probe() {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("never happened: {what}");
}

fn active(host: &Host) -> String {
    host.admin("GET", "/v1/plants/plant-a/plugins/stamp", b"")
        .json()["active"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Keep plant A's route busy until the returned flag is set; the answers' statuses.
fn load(url: &str) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<u16>>) {
    let done = Arc::new(AtomicBool::new(false));
    let (url, stop) = (url.to_string(), Arc::clone(&done));
    let thread = std::thread::spawn(move || {
        let mut statuses = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            statuses.push(stamped(&url, "a", statuses.len()).0);
        }
        statuses
    });
    (done, thread)
}

#[test]
fn a_dropped_plugin_is_taken_only_once_written_whole_and_a_bad_one_is_refused_with_the_reason() {
    let ws = workspace();
    let config = std::fs::read_to_string(ws.config()).unwrap();
    // Long enough that the pause between the two halves below never completes a settle.
    ws.write(
        "millrace.toml",
        &config.replace("[host]\n", "[host]\ndrop_settle_ms = 3000\n"),
    );
    let host = ws.start();
    let (done, statuses) = load(&host.url);
    let plant_dir = ws.dir.path().join(".millrace/drop/plant-a");
    assert!(plant_dir.is_dir(), "a folder per plant is made");

    // Written in two halves with a pause: never read half-written.
    let bytes = std::fs::read(guest("guest-stamp-2")).unwrap();
    let target = plant_dir.join("stamp-2.wasm");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&target).unwrap();
        file.write_all(&bytes[..bytes.len() / 2]).unwrap();
        file.sync_all().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        file.write_all(&bytes[bytes.len() / 2..]).unwrap();
    }
    eventually("the dropped version is active", || {
        (active(&host) == "2.0.0").then_some(())
    });
    assert_eq!(stamped(&host.url, "a", 1).1, "2.0.0");
    // The file is moved aside once its version is active.
    eventually("the dropped file is moved to deployed/", || {
        (plant_dir.join("deployed/stamp-2.wasm").is_file() && !target.exists()).then_some(())
    });
    let doc = host
        .admin("GET", "/v1/plants/plant-a/plugins/stamp", b"")
        .json();
    let kept = kept(&doc, "2.0.0");
    assert_eq!(kept["origin"], "drop");
    assert_eq!(kept["deployed_by"], "drop:stamp-2.wasm");
    assert_eq!(
        host.admin("GET", "/v1/refusals", b"").json(),
        serde_json::json!([]),
        "the half-written file was never tried"
    );

    // Garbage, renamed into place: refused, the reason beside it, counted, the version stays.
    let part = plant_dir.join("junk.wasm.part");
    std::fs::write(&part, b"not a component").unwrap();
    std::fs::rename(&part, plant_dir.join("junk.wasm")).unwrap();
    let reason = eventually("the junk is refused", || {
        std::fs::read_to_string(plant_dir.join("refused/junk.wasm.reason")).ok()
    });
    assert!(
        reason.contains("is not a loadable Wasm component"),
        "{reason}"
    );
    assert!(plant_dir.join("refused/junk.wasm").is_file());
    let refusals = host.admin("GET", "/v1/refusals", b"").json();
    assert_eq!(refusals[0]["origin"], "drop", "{refusals}");
    assert_eq!(refusals[0]["plant"], "plant-a");
    assert_eq!(
        counter(
            &host,
            "millrace_plugin_refusals_total{plant=\"plant-a\",origin=\"drop\"}"
        ),
        1
    );
    assert_eq!(active(&host), "2.0.0");

    // Rollback restores the configured version.
    let back = rollback(&host);
    assert_eq!(back.status, 200, "{}", back.body);
    assert_eq!(stamped(&host.url, "a", 2).1, "1.0.0");
    done.store(true, Ordering::SeqCst);
    let statuses = statuses.join().unwrap();
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "the load never saw a failure"
    );
}

/// A vectors folder for `stamp`: one case whose answer names `version`.
fn stamp_vectors(ws: &Workspace, version: &str) -> std::path::PathBuf {
    let dir = ws.dir.path().join(format!("vectors-{version}"));
    std::fs::create_dir_all(dir.join("hello")).unwrap();
    std::fs::write(dir.join("hello/input.txt"), "hello").unwrap();
    let expected = serde_json::json!({
        "outputs": [{
            "id": "hello-1",
            "content_type": "application/json",
            "body": { "stamp": version, "input": "hello" }
        }]
    });
    std::fs::write(dir.join("hello/expected.json"), expected.to_string()).unwrap();
    dir
}

#[test]
fn sample_vectors_shipped_inside_a_candidate_gate_its_deployment() {
    let ws = workspace();
    let host = ws.start();
    let (done, statuses) = load(&host.url);
    let stamp_2 = guest("guest-stamp-2");

    // Vectors that pass: bundled by the CLI (which runs them first), then uploaded.
    let passing = stamp_vectors(&ws, "2.0.0");
    let bundled = ws.dir.path().join("stamp-2-with-vectors.wasm");
    let out = ws.millrace(&[
        "plugin",
        "bundle",
        stamp_2.to_str().unwrap(),
        "--vectors",
        passing.to_str().unwrap(),
        "-o",
        bundled.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The CLI does not bundle vectors the component fails.
    let failing = stamp_vectors(&ws, "1.0.0");
    let refused_bundle = ws.millrace(&[
        "plugin",
        "bundle",
        stamp_2.to_str().unwrap(),
        "--vectors",
        failing.to_str().unwrap(),
        "-o",
        ws.dir.path().join("never.wasm").to_str().unwrap(),
    ]);
    assert!(!refused_bundle.status.success());
    assert!(!ws.dir.path().join("never.wasm").exists());

    // A candidate carrying vectors it fails (packed without the CLI's check) is refused.
    let plain = std::fs::read(&stamp_2).unwrap();
    let lying = millrace_host::conformance::bundle(&plain, &failing).unwrap();
    let reply = host.admin("POST", "/v1/plants/plant-a/plugins", &lying);
    assert_eq!(reply.status, 422, "{}", reply.body);
    let detail = reply.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("1 of 1 sample vectors failed: case hello"),
        "{detail}"
    );
    assert_eq!(active(&host), "1.0.0");
    let doc = host
        .admin("GET", "/v1/plants/plant-a/plugins/stamp", b"")
        .json();
    assert_eq!(doc["versions"].as_array().unwrap().len(), 1, "not kept");

    let reply = host.admin(
        "POST",
        "/v1/plants/plant-a/plugins",
        &std::fs::read(&bundled).unwrap(),
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.json()["version"], "2.0.0");
    let on = activate(&host, "2.0.0");
    assert_eq!(on.status, 200, "{}", on.body);
    assert_eq!(stamped(&host.url, "a", 1).1, "2.0.0");
    done.store(true, Ordering::SeqCst);
    assert!(statuses.join().unwrap().iter().all(|s| *s == 200));
}

/// Write the configuration the way editors do: a new file renamed over the old one.
fn save_config(ws: &Workspace, text: &str) {
    let next = ws.dir.path().join(".millrace.toml.new");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, ws.config()).unwrap();
}

#[test]
fn a_saved_configuration_is_applied_without_restart_and_an_invalid_one_is_refused() {
    let mes = plugin("mes-fixed-width");
    let stamp = guest("guest-stamp-1");
    let config = |centre: &str, extra_route: bool, host_extra: &str| {
        let mes_route =
            route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "") + &mes_settings("mes");
        let a = if extra_route {
            route_toml("a", &stamp, r#"["log"]"#, "")
        } else {
            String::new()
        };
        format!(
            "[host]\nadmin = \"127.0.0.1:0\"\ndrop_settle_ms = 200\n{host_extra}\n[plants.plant-a.lookups.work_centres]\nentries = {{ WC01 = \"{centre}\" }}\n\n{mes_route}\n{a}\n{}",
            test_admin_tokens()
        )
    };
    let ws = Workspace::new(&config("ASSY-01", false, ""));
    let host = ws.start();
    let centre = |host: &Host| {
        let reply = host.post("mes", Some("text/plain"), record("WO-1", "1", "WC01"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["data"]["work_centre"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(centre(&host), "ASSY-01");
    assert_eq!(host.post("a", Some("text/plain"), "x").status, 404);
    let pid = host.pid();

    // A new lookup value and a new route, saved: applied, same process.
    save_config(&ws, &config("ASSY-99", true, ""));
    eventually("the reloaded route serves", || {
        (host.post("a", Some("text/plain"), "x").status == 200).then_some(())
    });
    assert_eq!(centre(&host), "ASSY-99", "the lookup table was reloaded");
    eventually("the reload is counted", || {
        (counter(&host, "millrace_config_reloads_total{outcome=\"applied\"}") >= 1).then_some(())
    });

    // An invalid one (a route of an unconfigured plant): refused, the running one stays.
    let invalid = config("ASSY-00", true, "").replace(
        "[routes.a]\nplant = \"plant-a\"",
        "[routes.a]\nplant = \"plant-z\"",
    );
    save_config(&ws, &invalid);
    eventually("the invalid file is refused", || {
        (counter(&host, "millrace_config_reloads_total{outcome=\"refused\"}") >= 1).then_some(())
    });
    assert_eq!(centre(&host), "ASSY-99");
    assert_eq!(host.post("a", Some("text/plain"), "x").status, 200);
    let asked = host.admin("POST", "/v1/config/reload", b"");
    assert_eq!(asked.status, 422, "{}", asked.body);
    let detail = asked.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("millrace.toml:") && detail.contains("plant-z"),
        "names the place: {detail}"
    );

    // A setting only a restart applies: refused, saying which.
    save_config(&ws, &config("ASSY-99", true, "max_in_flight = 3\n"));
    let asked = host.admin("POST", "/v1/config/reload", b"");
    assert_eq!(asked.status, 422, "{}", asked.body);
    assert!(
        asked.json()["detail"]
            .as_str()
            .unwrap()
            .contains("host.max_in_flight changed"),
        "{}",
        asked.body
    );

    // Put right and asked for through the admin API (the file watch may apply it first):
    // applied.
    save_config(&ws, &config("ASSY-02", false, ""));
    let asked = host.admin("POST", "/v1/config/reload", b"");
    assert_eq!(asked.status, 200, "{}", asked.body);
    assert_eq!(asked.json()["routes"], 1);
    assert_eq!(centre(&host), "ASSY-02");
    assert_eq!(host.post("a", Some("text/plain"), "x").status, 404);
    assert_eq!(host.pid(), pid, "never restarted");
}

#[test]
fn a_swap_during_a_two_step_chain_runs_each_message_on_one_version_per_step_as_its_lineage_says() {
    // Both steps run `stamp`: step 2 stamps step 1's answer, so the body holds the version of
    // each step, and the lineage names one per step.
    let stamp = guest("guest-stamp-1");
    let chain = route_toml("a", &stamp, r#"["log"]"#, "")
        + &format!(
            "\n[[routes.a.steps]]\nplugin = \"{}\"\ngrants = [\"log\"]\n",
            stamp.display()
        );
    let ws = Workspace::new(&format!(
        "[host]\nadmin = \"127.0.0.1:0\"\nmax_in_flight = 4\n\n[plants.plant-a]\n\n{chain}"
    ));
    let host = ws.start();
    assert_eq!(upload(&host, "plant-a", "guest-stamp-2").status, 201);
    let url: Arc<str> = host.url.clone().into();
    const CLIENTS: usize = 4;
    const EACH: usize = 500;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = Arc::clone(&url);
            std::thread::spawn(move || {
                (0..EACH)
                    .map(|i| {
                        let reply = request(
                            &url,
                            "POST",
                            "/v1/routes/a/messages",
                            Some("text/plain"),
                            &[],
                            format!("m{c}-{i}").as_bytes(),
                        );
                        assert_eq!(reply.status, 200, "{}", reply.body);
                        let outer = reply.json();
                        let inner: serde_json::Value =
                            serde_json::from_str(outer["input"].as_str().unwrap()).unwrap();
                        assert_eq!(inner["input"], format!("m{c}-{i}"));
                        (
                            inner["stamp"].as_str().unwrap().to_string(),
                            outer["stamp"].as_str().unwrap().to_string(),
                            reply.header("millrace-lineage").unwrap().to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut swaps = 0;
    while swaps < 20 || clients.iter().any(|c| !c.is_finished()) {
        let version = if swaps % 2 == 0 { "2.0.0" } else { "1.0.0" };
        assert_eq!(activate(&host, version).status, 200);
        swaps += 1;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let answers: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    assert_eq!(answers.len(), CLIENTS * EACH);
    let mut seen = std::collections::BTreeSet::new();
    for (step1, step2, lineage) in &answers {
        let steps: Vec<&str> = lineage.split(',').collect();
        assert_eq!(steps.len(), 2, "{lineage}");
        assert!(
            steps[0].starts_with(&format!("stamp@{step1}+sha256:"))
                && steps[1].starts_with(&format!("stamp@{step2}+sha256:")),
            "step 1 ran {step1}, step 2 ran {step2}, lineage says {lineage}"
        );
        // One activation swaps both steps of the plant at once; a message keeps the chain it
        // started on.
        assert_eq!(step1, step2, "{lineage}");
        seen.insert(step1.clone());
    }
    assert_eq!(seen.len(), 2, "both versions served: {seen:?}");
}
