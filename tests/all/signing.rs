//! Signed plugins: keys made, components signed and verified with the `millrace` command, and a
//! plant whose trust policy accepts only components signed by its keys — refusing unsigned,
//! wrongly signed and tampered candidates from uploads, from its configuration and from other
//! hosts on the broker.

use crate::harness::*;
use std::path::{Path, PathBuf};

/// `millrace plugin keygen --out DIR/NAME`: (secret, public).
fn keygen(ws: &Workspace, name: &str) -> (PathBuf, PathBuf) {
    let base = ws.dir.path().join(name);
    let out = ws.millrace(&["plugin", "keygen", "--out", base.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (base.with_extension("key"), base.with_extension("pub"))
}

/// `millrace plugin sign FILE --key KEY -o DIR/OUT`.
fn sign(ws: &Workspace, file: &Path, key: &Path, out: &str) -> PathBuf {
    let target = ws.dir.path().join(out);
    let done = ws.millrace(&[
        "plugin",
        "sign",
        file.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-o",
        target.to_str().unwrap(),
    ]);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    target
}

fn plant_config(trust: &str, plugin_a: &Path) -> String {
    let a = route_toml("a", plugin_a, r#"["log"]"#, "");
    let b =
        route_toml("b", &guest("guest-stamp-1"), r#"["log"]"#, "").replace("plant-a", "plant-b");
    format!(
        "[host]\nadmin = \"127.0.0.1:0\"\n\n[plants.plant-a]\n{trust}\n[plants.plant-b]\n\n{a}\n{b}"
    )
}

#[test]
fn a_plant_that_trusts_only_its_keys_takes_only_what_they_signed() {
    let ws = Workspace::new("");
    let (a_key, a_pub) = keygen(&ws, "release");
    let (b_key, _) = keygen(&ws, "stranger");
    let signed_1 = sign(&ws, &guest("guest-stamp-1"), &a_key, "stamp-1.signed.wasm");
    let trust = format!("trust = {{ keys = [\"{}\"] }}\n", a_pub.display());
    ws.write(
        "millrace.toml",
        &(plant_config(&trust, &signed_1) + &test_admin_tokens()),
    );
    let host = ws.start();
    let upload = |plant: &str, bytes: &[u8]| {
        host.admin("POST", &format!("/v1/plants/{plant}/plugins"), bytes)
    };
    let refused = |reply: Reply, why: &str| {
        assert_eq!(reply.status, 422, "{}", reply.body);
        let detail = reply.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(why), "{why:?} not in {detail}");
    };
    let stamp_2 = guest("guest-stamp-2");
    refused(
        upload("plant-a", &std::fs::read(&stamp_2).unwrap()),
        "carries no signature",
    );
    let by_stranger = sign(&ws, &stamp_2, &b_key, "stamp-2.stranger.wasm");
    refused(
        upload("plant-a", &std::fs::read(&by_stranger).unwrap()),
        "0 valid signature(s) by trusted keys, 1 needed",
    );
    let by_release = sign(&ws, &stamp_2, &a_key, "stamp-2.signed.wasm");
    let mut tampered = std::fs::read(&by_release).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    refused(
        upload("plant-a", &tampered),
        "does not match its signatures",
    );
    let kept = upload("plant-a", &std::fs::read(&by_release).unwrap());
    assert_eq!(kept.status, 201, "{}", kept.body);
    let on = host.admin(
        "POST",
        "/v1/plants/plant-a/plugins/stamp/activate",
        br#"{"version": "2.0.0"}"#,
    );
    assert_eq!(on.status, 200, "{}", on.body);
    // A plant without a policy takes unsigned components.
    assert_eq!(
        upload("plant-b", &std::fs::read(&stamp_2).unwrap()).status,
        201
    );
    // The command checks signatures the same way.
    let verified = ws.millrace(&[
        "plugin",
        "verify",
        by_release.to_str().unwrap(),
        "--key",
        a_pub.to_str().unwrap(),
    ]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let not_by_stranger = ws.millrace(&[
        "plugin",
        "verify",
        by_stranger.to_str().unwrap(),
        "--key",
        a_pub.to_str().unwrap(),
    ]);
    assert_eq!(not_by_stranger.status.code(), Some(1));
}

#[test]
fn unsigned_configured_plugins_and_policies_without_usable_keys_fail_closed() {
    let ws = Workspace::new("");
    let (a_key, a_pub) = keygen(&ws, "release");
    // The configuration names an unsigned plugin on a plant that requires signatures.
    ws.write(
        "millrace.toml",
        &plant_config(
            &format!("trust = {{ keys = [\"{}\"] }}\n", a_pub.display()),
            &guest("guest-stamp-1"),
        ),
    );
    let check = ws.millrace(&["check"]);
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains(
            "refused by plant plant-a's trust policy: the component carries no signature"
        ),
        "{stderr}"
    );
    // A key file that is not a key is a configuration error at its place.
    ws.write("bogus.pub", "not a key");
    assert!(ws.config().exists());
    ws.write(
        "millrace.toml",
        &plant_config(
            "trust = { keys = [\"bogus.pub\"] }\n",
            &guest("guest-stamp-1"),
        ),
    );
    let check = ws.millrace(&["check"]);
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("bogus.pub is not an Ed25519 public key"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // A policy naming no key refuses everything, signed or not.
    let signed_1 = sign(&ws, &guest("guest-stamp-1"), &a_key, "stamp-1.signed.wasm");
    ws.write(
        "millrace.toml",
        &(plant_config("trust = { keys = [] }\n", &signed_1) + &test_admin_tokens()),
    );
    let check = ws.millrace(&["check"]);
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("names no usable key"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_host_that_requires_signatures_refuses_an_unsigned_version_broadcast_by_another() {
    let broker = Broker::shared();
    let ws_b = Workspace::new("");
    let (a_key, a_pub) = keygen(&ws_b, "release");
    let signed_1 = sign(
        &ws_b,
        &guest("guest-stamp-1"),
        &a_key,
        "stamp-1.signed.wasm",
    );
    // Each host also has a broker route: a host follows other hosts' activations on its
    // broker session.
    let host_config = |id: &str, trust: &str, plugin: &Path| {
        let a = route_toml("a", plugin, r#"["log"]"#, "");
        let q = route_toml("q", plugin, r#"["log"]"#, "")
            .replace("source = \"http\"", "source = \"amqp\"")
            .replace(
                "sink = \"reply\"",
                &format!("sink = \"amqp\"\namqp = {{ queue = \"plant-a.{id}\", exchange = \"plant-a.events\" }}"),
            );
        format!(
            "[host]\nid = \"{id}\"\namqp = \"{}\"\nadmin = \"127.0.0.1:0\"\n\n[plants.plant-a]\n{trust}\n\n{a}\n{q}\n{}",
            broker.url(),
            test_admin_tokens()
        )
    };
    let ws_a = Workspace::new(&host_config("host-a", "", &guest("guest-stamp-1")));
    ws_b.write(
        "millrace.toml",
        &host_config(
            "host-b",
            &format!("trust = {{ keys = [\"{}\"] }}", a_pub.display()),
            &signed_1,
        ),
    );
    let a = ws_a.start();
    let mut b = ws_b.start();
    a.wait_ready();
    b.wait_ready();
    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    assert_eq!(
        a.admin("POST", "/v1/plants/plant-a/plugins", &stamp_2)
            .status,
        201
    );
    let on = a.admin(
        "POST",
        "/v1/plants/plant-a/plugins/stamp/activate",
        br#"{"version": "2.0.0"}"#,
    );
    assert_eq!(on.status, 200, "{}", on.body);
    // Host B receives it, refuses it, and keeps serving 1.0.0.
    let mut refusal = serde_json::Value::Null;
    // A guard against a broadcast that never comes, not a timing assertion.
    for _ in 0..600 {
        let refusals = b.admin("GET", "/v1/refusals", b"").json();
        if let Some(found) = refusals
            .as_array()
            .and_then(|r| r.iter().find(|x| x["origin"] == "broadcast").cloned())
        {
            refusal = found;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        !refusal.is_null(),
        "host B never refused the broadcast version; its log:\n{}",
        b.drain_log().join("\n")
    );
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap()
            .contains("carries no signature"),
        "{refusal}"
    );
    let served = b.post("a", Some("text/plain"), "x");
    assert_eq!(served.json()["stamp"], "1.0.0");
    let served_a = a.post("a", Some("text/plain"), "x");
    assert_eq!(served_a.json()["stamp"], "2.0.0");
}
