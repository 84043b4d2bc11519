//! The admin API's access control against a running host: no request without a known token,
//! roles and plants enforced on every endpoint, no way in from a browser page (foreign Host or
//! Origin, untyped bodies), the actor taken from the credential and never from a header, every
//! change and refusal in the audit log, tokens rotated without a restart, and a host that will
//! not serve an admin API without credentials.

use crate::harness::*;
use sha2::Digest;

fn hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Plants a and b each with a `stamp` route; tokens: an operator of a, a viewer of every plant,
/// and (through `admin.tokens_file`) whatever `tokens.toml` holds.
fn workspace() -> Workspace {
    let stamp = guest("guest-stamp-1");
    let a = route_toml("a", &stamp, r#"["log"]"#, "");
    let b = route_toml("b", &stamp, r#"["log"]"#, "").replace("plant-a", "plant-b");
    let ws = Workspace::new(&format!(
        "[host]\nadmin = \"127.0.0.1:0\"\n\n[admin]\ntokens_file = \"tokens.toml\"\n\n[[admin.tokens]]\nname = \"ops-a\"\nsha256 = \"{}\"\nrole = \"operator\"\nplants = [\"plant-a\"]\n\n[[admin.tokens]]\nname = \"watcher\"\nsha256 = \"{}\"\nrole = \"viewer\"\n\n[plants.plant-a]\n[plants.plant-b]\n\n{a}\n{b}",
        hash("token-ops-a"),
        hash("token-watcher"),
    ));
    ws.write(
        "tokens.toml",
        &format!(
            "[[tokens]]\nname = \"root\"\nsha256 = \"{}\"\nrole = \"operator\"\n",
            hash("token-root-1")
        ),
    );
    ws
}

/// One admin request with `token` (none: no Authorization) and extra headers.
fn call(
    host: &Host,
    token: Option<&str>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(b) = &bearer {
        headers.push(("authorization", b));
    }
    request(
        host.admin.as_deref().unwrap(),
        method,
        path,
        content_type,
        &headers,
        body,
    )
}

/// Every endpoint: (method, path, content type, body).
fn endpoints(component: &[u8]) -> Vec<(&'static str, &'static str, Option<&'static str>, Vec<u8>)> {
    vec![
        ("GET", "/v1/plants", None, vec![]),
        ("GET", "/v1/plants/plant-a/plugins/stamp", None, vec![]),
        (
            "POST",
            "/v1/plants/plant-a/plugins",
            Some("application/wasm"),
            component.to_vec(),
        ),
        (
            "POST",
            "/v1/plants/plant-a/plugins/stamp/activate",
            Some("application/json"),
            br#"{"version": "1.0.0"}"#.to_vec(),
        ),
        (
            "POST",
            "/v1/plants/plant-a/plugins/stamp/rollback",
            None,
            vec![],
        ),
        ("GET", "/v1/refusals", None, vec![]),
        ("GET", "/v1/quarantine", None, vec![]),
        (
            "POST",
            "/v1/plants/plant-a/plugins/stamp/quarantine/reset",
            None,
            vec![],
        ),
        ("POST", "/v1/config/reload", None, vec![]),
        ("GET", "/v1/audit", None, vec![]),
        ("GET", "/metrics", None, vec![]),
        ("GET", "/v1/overview", None, vec![]),
        ("GET", "/v1/messages?plant=plant-b", None, vec![]),
        ("GET", "/v1/dead-letters", None, vec![]),
        (
            "POST",
            "/v1/dead-letters/1/replay",
            Some("application/json"),
            br#"{"dry_run": true}"#.to_vec(),
        ),
    ]
}

#[test]
fn every_endpoint_needs_a_known_token_and_the_right_role_and_plant() {
    let ws = workspace();
    let host = ws.start();
    let component = std::fs::read(guest("guest-stamp-2")).unwrap();
    for (method, path, ct, body) in endpoints(&component) {
        for token in [None, Some("not-a-token")] {
            let reply = call(&host, token, method, path, ct, &[], &body);
            assert_eq!(
                reply.status, 401,
                "{method} {path} with {token:?}: {}",
                reply.body
            );
            assert_eq!(reply.json()["type"], "urn:millrace:problem:unauthenticated");
        }
    }
    // The console's own files hold no data: served without a token, with a strict policy.
    let page = call(&host, None, "GET", "/console/", None, &[], b"");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("millrace console"));
    assert!(
        page.header("content-security-policy")
            .is_some_and(|p| p.contains("default-src 'none'")),
        "{page:?}"
    );
    // The viewer reads everything and changes nothing.
    for (method, path, ct, body) in endpoints(&component) {
        let reply = call(&host, Some("token-watcher"), method, path, ct, &[], &body);
        if method == "GET" {
            assert_eq!(reply.status, 200, "viewer {method} {path}: {}", reply.body);
        } else {
            assert_eq!(reply.status, 403, "viewer {method} {path}: {}", reply.body);
            assert_eq!(reply.json()["type"], "urn:millrace:problem:forbidden");
        }
    }
    // The operator of plant-a acts on plant-a only, and may not reload (every plant's).
    let other_plant = call(
        &host,
        Some("token-ops-a"),
        "POST",
        "/v1/plants/plant-b/plugins",
        Some("application/wasm"),
        &[],
        &component,
    );
    assert_eq!(other_plant.status, 403, "{}", other_plant.body);
    assert!(other_plant.body.contains("may not act on plant plant-b"));
    let reload = call(
        &host,
        Some("token-ops-a"),
        "POST",
        "/v1/config/reload",
        None,
        &[],
        b"",
    );
    assert_eq!(reload.status, 403, "{}", reload.body);
    // It sees only its plants.
    let plants = call(
        &host,
        Some("token-ops-a"),
        "GET",
        "/v1/plants",
        None,
        &[],
        b"",
    )
    .json();
    assert_eq!(plants.as_array().unwrap().len(), 1, "{plants}");
    assert_eq!(plants[0]["plant"], "plant-a");
    let up = call(
        &host,
        Some("token-ops-a"),
        "POST",
        "/v1/plants/plant-a/plugins",
        Some("application/wasm"),
        &[],
        &component,
    );
    assert_eq!(up.status, 201, "{}", up.body);
}

#[test]
fn a_browser_page_cannot_drive_the_admin_api_and_the_actor_comes_from_the_token() {
    let ws = workspace();
    let host = ws.start();
    let component = std::fs::read(guest("guest-stamp-2")).unwrap();
    let upload = |ct: Option<&str>, extra: &[(&str, &str)]| {
        call(
            &host,
            Some("token-ops-a"),
            "POST",
            "/v1/plants/plant-a/plugins",
            ct,
            extra,
            &component,
        )
    };
    // What a form or a simple cross-origin request can send: refused before anything is done.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let reply = upload(ct, &[]);
        assert_eq!(reply.status, 415, "{ct:?}: {}", reply.body);
    }
    let activate = call(
        &host,
        Some("token-ops-a"),
        "POST",
        "/v1/plants/plant-a/plugins/stamp/activate",
        Some("text/plain"),
        &[],
        br#"{"version": "1.0.0"}"#,
    );
    assert_eq!(activate.status, 415, "{}", activate.body);
    // DNS rebinding: the page's own name in Host. A foreign Origin.
    let rebound = upload(
        Some("application/wasm"),
        &[("host", "attacker.example:9090")],
    );
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    assert_eq!(
        rebound.json()["type"],
        "urn:millrace:problem:foreign-request"
    );
    let foreign = upload(
        Some("application/wasm"),
        &[("origin", "http://attacker.example")],
    );
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    // A header naming someone else is ignored: the token's name is the actor.
    let kept = upload(
        Some("application/wasm"),
        &[("millrace-deployed-by", "mallory")],
    );
    assert_eq!(kept.status, 201, "{}", kept.body);
    assert_eq!(kept.json()["deployed_by"], "ops-a");
    let versions = call(
        &host,
        Some("token-watcher"),
        "GET",
        "/v1/plants/plant-a/plugins/stamp",
        None,
        &[],
        b"",
    );
    assert!(!versions.body.contains("mallory"), "{}", versions.body);
    // The audit log: the refusals (anonymous or named) and the upload, with where they came from.
    let audit = call(
        &host,
        Some("token-watcher"),
        "GET",
        "/v1/audit",
        None,
        &[],
        b"",
    )
    .json();
    let entries = audit.as_array().unwrap();
    let statuses: Vec<u64> = entries
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [415, 415, 415, 415, 415, 403, 403, 201],
        "{audit}"
    );
    let last = entries.last().unwrap();
    assert_eq!(last["who"], "ops-a");
    assert_eq!(last["plant"], "plant-a");
    assert_eq!(last["method"], "POST");
    assert!(last["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(
        entries[5]["detail"]
            .as_str()
            .unwrap()
            .contains("attacker.example")
    );
}

#[test]
fn tokens_in_the_tokens_file_rotate_without_a_restart() {
    let ws = workspace();
    let host = ws.start();
    let root = |token: &str| {
        call(
            &host,
            Some(token),
            "POST",
            "/v1/config/reload",
            None,
            &[],
            b"",
        )
        .status
    };
    assert_eq!(root("token-root-1"), 200);
    ws.write(
        "tokens.toml",
        &format!(
            "[[tokens]]\nname = \"root\"\nsha256 = \"{}\"\nrole = \"operator\"\n",
            hash("token-root-2")
        ),
    );
    // The file is looked at again at most once a second: a guard, not a timing assertion.
    let mut rotated = false;
    for _ in 0..100 {
        if root("token-root-2") == 200 {
            rotated = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(rotated, "the new token was never accepted");
    assert_eq!(root("token-root-1"), 401, "the old token is gone");
}

#[test]
fn a_host_will_not_serve_an_admin_api_without_credentials_unless_told_it_is_local() {
    let stamp = guest("guest-stamp-1");
    let route = route_toml("a", &stamp, r#"["log"]"#, "");
    // No [admin] tokens at all (written directly: the harness would add its own).
    let ws = Workspace::new("");
    ws.write(
        "millrace.toml",
        &format!("[host]\nadmin = \"127.0.0.1:0\"\n\n[plants.plant-a]\n\n{route}"),
    );
    let refused = ws.millrace(&["run", "--http", "127.0.0.1:0"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("the admin API needs credentials"),
        "{stderr}"
    );
    // --insecure-admin only on loopback.
    let beyond = ws.millrace(&[
        "run",
        "--http",
        "127.0.0.1:0",
        "--admin",
        "0.0.0.0:0",
        "--insecure-admin",
    ]);
    assert_eq!(beyond.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&beyond.stderr)
            .contains("--insecure-admin is for local development only"),
        "{}",
        String::from_utf8_lossy(&beyond.stderr)
    );
    let host = Host::start_with(&ws.config(), &[], &["--insecure-admin"]);
    let open = request(
        host.admin.as_deref().unwrap(),
        "GET",
        "/v1/plants",
        None,
        &[],
        b"",
    );
    assert_eq!(open.status, 200, "{}", open.body);
}
