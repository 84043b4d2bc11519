//! HTTP ingress: statuses, problem documents, dead letters that survive a restart.

use crate::harness::*;

fn workspace() -> Workspace {
    let mes = plugin("mes-fixed-width");
    let lookups = format!(
        "[plants.plant-a.lookups.work_centres]\ncsv = \"{}\"\nkey_column = \"local\"\nvalue_column = \"canonical\"\n\n",
        root()
            .join("examples/quickstart/work-centres.csv")
            .display()
    );
    let route =
        route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "") + &mes_settings("mes");
    let small = format!(
        "[routes.small]\nplant = \"plant-a\"\nsource = \"http\"\nsink = \"reply\"\nmax_body_kib = 1\n\n[[routes.small.steps]]\nplugin = \"{}\"\ngrants = [\"log\", \"config\", \"lookup\"]\n",
        mes.display()
    ) + &mes_settings("small");
    Workspace::new(&format!("{lookups}{route}\n{small}"))
}

#[test]
fn production_confirmations_become_events_single_and_batched() {
    let ws = workspace();
    let host = ws.start();
    let one = host.post_with_key(
        "mes",
        "text/plain",
        "k-1",
        record("WO-1", "0000012500", "WC01"),
    );
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.content_type, "application/cloudevents+json");
    let event = one.json();
    assert_eq!(event["id"], "k-1-1");
    assert_eq!(event["type"], "millrace.production.completed.v1");
    assert_eq!(event["data"]["work_centre"], "ASSY-01");
    assert_eq!(event["data"]["quantity"], 12.5);
    assert_eq!(event["time"], "2026-11-27T05:30:00Z");

    let batch = format!(
        "{}\n{}\n",
        record("WO-1", "1", "WC01"),
        record("WO-2", "2", "WC02")
    );
    let two = host.post("mes", Some("text/plain; charset=us-ascii"), batch);
    assert_eq!(two.status, 200, "{}", two.body);
    assert_eq!(two.content_type, "application/cloudevents-batch+json");
    let events = two.json();
    assert_eq!(events.as_array().map(Vec::len), Some(2));
    assert_eq!(events[1]["subject"], "WO-2");

    let filtered = host.post(
        "mes",
        Some("text/plain"),
        format!("HD{:<78}\n", "header only"),
    );
    assert_eq!(filtered.status, 204);
}

#[test]
fn every_error_status_is_a_problem_document() {
    let ws = workspace();
    let host = ws.start();
    let problem = |reply: &Reply, status: u16, kind: &str| {
        assert_eq!(reply.status, status, "{}", reply.body);
        assert_eq!(reply.content_type, "application/problem+json");
        let doc = reply.json();
        assert_eq!(doc["type"], format!("urn:millrace:problem:{kind}"));
        assert_eq!(doc["status"], status);
        assert!(doc["detail"].as_str().is_some_and(|d| !d.is_empty()));
        doc
    };

    problem(
        &host.post("nope", Some("text/plain"), "x"),
        404,
        "unknown-route",
    );
    problem(
        &host.request("GET", "/v1/routes/mes/messages", None, &[], b""),
        405,
        "method-not-allowed",
    );
    problem(
        &host.request("POST", "/elsewhere", Some("text/plain"), &[], b"x"),
        404,
        "not-found",
    );
    let big = "x".repeat(2048);
    let doc = problem(
        &host.post("small", Some("text/plain"), &big),
        413,
        "message-too-large",
    );
    assert_eq!(doc["limit_bytes"], 1024);
    // Far over the limit, more than the sockets' buffers hold: the sender, which writes its whole
    // body before reading the answer, still gets the 413 (the host reads the rest and drops
    // it), not a connection reset under it.
    let huge = "x".repeat(16 << 20);
    problem(
        &host.post("small", Some("text/plain"), &huge),
        413,
        "message-too-large",
    );
    // Answered before the body is read at all (no such resource, a media type the route does
    // not take): the sender of a large body sees the answer too.
    problem(
        &host.request(
            "POST",
            "/elsewhere",
            Some("text/plain"),
            &[],
            huge.as_bytes(),
        ),
        404,
        "not-found",
    );
    problem(
        &host.post("mes", Some("application/json"), &huge),
        415,
        "unsupported-content-type",
    );
    let doc = problem(
        &host.post("mes", Some("application/json"), "{}"),
        415,
        "unsupported-content-type",
    );
    assert_eq!(doc["accepted"][0], "text/plain");
    problem(
        &host.post("mes", None, "x"),
        415,
        "unsupported-content-type",
    );
    problem(
        &host.request(
            "POST",
            "/v1/routes/mes/messages",
            Some("text/plain"),
            &[("idempotency-key", "")],
            b"x",
        ),
        400,
        "bad-request",
    );

    let doc = problem(
        &host.post(
            "mes",
            Some("text/plain"),
            record("WO-9", "00001A500", "WC01"),
        ),
        422,
        "rejected",
    );
    assert_eq!(doc["field"], "quantity");
    assert_eq!(doc["position"], 33);
    assert_eq!(doc["plugin"], "mes-fixed-width");
    assert_eq!(doc["version"], "1.1.0");
    assert!(doc["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(doc["dead_letter"].as_i64().is_some());

    // Garbage never crashes the host: it still answers.
    let garbage: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    problem(
        &host.post("mes", Some("application/octet-stream"), garbage),
        422,
        "rejected",
    );
    assert_eq!(host.request("GET", "/healthz", None, &[], b"").status, 200);
}

#[test]
fn dead_letters_are_written_and_listed_after_a_restart() {
    let ws = workspace();
    let host = ws.start();
    let reply = host.post_with_key(
        "mes",
        "text/plain",
        "bad-1",
        record("WO-7", "0000001000", "WC99"),
    );
    assert_eq!(reply.status, 422);
    assert!(host.stop().success(), "SIGTERM exits 0");

    // A new host on the same data directory; list while it runs.
    let host = ws.start();
    let out = ws.millrace(&["dlq", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = &entries[0];
    assert_eq!(entry["message_id"], "bad-1");
    assert_eq!(entry["route"], "mes");
    assert_eq!(entry["kind"], "rejected");
    assert_eq!(entry["plugin"]["name"], "mes-fixed-width");
    assert_eq!(entry["plugin"]["version"], "1.1.0");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("\"WC99\" is not in lookup table work_centres")
    );
    assert_eq!(entry["body"], record("WO-7", "0000001000", "WC99"));

    let table = ws.millrace(&["dlq", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("mes-fixed-width@1.1.0"), "{text}");
    assert!(text.contains("1 dead letter(s)"), "{text}");
    drop(host);
}

#[test]
fn a_repeated_request_gets_the_kept_answer_without_running_the_chain_again() {
    let ws = workspace();
    let host = ws.start();
    let good = record("WO-8", "0000002000", "WC01");
    let first = host.post_with_key("mes", "text/plain", "good-1", &good);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("millrace-replayed"), None);
    let again = host.post_with_key("mes", "text/plain", "good-1", &good);
    assert_eq!(again.status, 200);
    assert_eq!(again.header("millrace-replayed"), Some("true"));
    assert_eq!(again.body, first.body, "the same events, the same ids");
    assert_eq!(again.content_type, first.content_type);

    let bad = record("WO-9", "0000001000", "WC99");
    let rejected = host.post_with_key("mes", "text/plain", "bad-2", &bad);
    assert_eq!(rejected.status, 422);
    let reused = host.post_with_key("mes", "text/plain", "good-1", &bad);
    assert_eq!(reused.status, 422);
    assert_eq!(
        reused.json()["type"],
        "urn:millrace:problem:idempotency-key-reused"
    );
    assert!(host.stop().success());

    // Kept answers survive a restart; the repeat is not dead-lettered a second time.
    let host = ws.start();
    let repeat = host.post_with_key("mes", "text/plain", "bad-2", &bad);
    assert_eq!(repeat.status, 422);
    assert_eq!(repeat.header("millrace-replayed"), Some("true"));
    assert_eq!(repeat.body, rejected.body);
    let unkeyed = host.post("mes", Some("text/plain"), &bad);
    assert_eq!(unkeyed.status, 422);
    assert_eq!(unkeyed.header("millrace-replayed"), None);
    let out = ws.millrace(&["dlq", "list", "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        2,
        "bad-2 once, the unkeyed request once: {ids:?}"
    );
    assert_eq!(ids[0], "bad-2");
    drop(host);
}

#[test]
fn a_keyed_request_still_being_mediated_is_answered_409_and_then_its_answer() {
    let ws = Workspace::new(&format!("[plants.plant-a]\n\n{}", slow_act_route("act")));
    let mut host = Host::start(&ws.config(), &[("RUST_LOG", "millrace_host=debug")]);
    let url = host.url.clone();
    let first = std::thread::spawn(move || {
        request(
            &url,
            "POST",
            "/v1/routes/act/messages",
            Some("text/plain"),
            &[("idempotency-key", "k-slow")],
            SLOW_WORK.as_bytes(),
        )
    });
    host.wait_for_log("mediating route=act message_id=k-slow");
    let again = host.post_with_key("act", "text/plain", "k-slow", SLOW_WORK);
    let first = first.join().unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(
        again.json()["type"],
        "urn:millrace:problem:idempotency-key-in-progress"
    );
    assert_eq!(again.header("retry-after"), Some("1"));
    // The 409 came while the first was in flight: before the chain finished.
    let received = "message received route=act message_id=k-slow";
    let log = host.log_once(
        |log| {
            log.iter().filter(|l| l.contains(received)).count() >= 2
                && log
                    .iter()
                    .any(|l| l.contains("mediated route=act message_id=k-slow"))
        },
        "both requests with the key and the first one's end",
    );
    let conflict = log
        .iter()
        .position(|l| l.contains("message received route=act message_id=k-slow"))
        .and_then(|first| {
            log.iter()
                .skip(first + 1)
                .position(|l| l.contains("message received route=act message_id=k-slow"))
                .map(|n| n + first + 1)
        })
        .expect("two requests with the key arrived");
    let finished = log
        .iter()
        .position(|l| l.contains("mediated route=act message_id=k-slow"))
        .expect("the first finished");
    assert!(conflict < finished, "{}", log.join("\n"));
    // Retried after the first finished: its kept answer, not a second run.
    let retried = host.post_with_key("act", "text/plain", "k-slow", SLOW_WORK);
    assert_eq!(retried.status, 200);
    assert_eq!(retried.header("millrace-replayed"), Some("true"));
    assert_eq!(retried.body, first.body);
}

#[test]
fn a_plugin_asking_to_retry_later_is_answered_503_with_retry_after_and_not_dead_lettered() {
    let ws = Workspace::new(&format!("[plants.plant-a]\n\n{}", act_route("act", "")));
    let host = ws.start();
    let reply = host.post_with_key("act", "text/plain", "r-1", "retry 2500");
    assert_eq!(reply.status, 503, "{}", reply.body);
    let doc = reply.json();
    assert_eq!(doc["type"], "urn:millrace:problem:retry-later");
    assert_eq!(doc["detail"], "asked to retry in 2500 ms");
    assert_eq!(doc["plugin"], "guest-act");
    assert!(doc.get("dead_letter").is_none(), "{doc}");
    // 2500 ms, rounded up to whole seconds.
    assert_eq!(reply.header("retry-after"), Some("3"));
    // Transient: the same key is mediated again (nothing was kept), and nothing dead-lettered.
    let again = host.post_with_key("act", "text/plain", "r-1", "retry 2500");
    assert_eq!(again.status, 503);
    assert_eq!(again.header("millrace-replayed"), None);
    let out = ws.millrace(&["dlq", "list", "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn a_route_with_auth_takes_only_senders_it_knows_and_plugins_never_see_their_credentials() {
    use sha2::Digest;
    let hash = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
    let ws = Workspace::new(&format!(
        "[plants.plant-a]\n\n{}\n[routes.act.auth]\ntokens = [{{ name = \"erp-1\", sha256 = \"{}\" }}]\n",
        act_route("act", ""),
        hash("erp-secret")
    ));
    let host = ws.start();
    let post = |headers: &[(&str, &str)]| {
        host.request(
            "POST",
            "/v1/routes/act/messages",
            Some("text/plain"),
            headers,
            b"headers",
        )
    };
    for headers in [vec![], vec![("authorization", "Bearer wrong")]] {
        let refused = post(&headers);
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert_eq!(
            refused.json()["type"],
            "urn:millrace:problem:unauthenticated"
        );
    }
    let taken = post(&[
        ("authorization", "Bearer erp-secret"),
        ("cookie", "session=1"),
        ("millrace-client", "forged"),
        ("x-plant-line", "L3"),
    ]);
    assert_eq!(taken.status, 200, "{}", taken.body);
    // The plugin sees who sent it, and the sender's own headers, not its credentials.
    assert!(
        taken.body.contains("millrace-client: erp-1"),
        "{}",
        taken.body
    );
    assert!(taken.body.contains("x-plant-line: L3"), "{}", taken.body);
    for secret in ["erp-secret", "session=1", "forged"] {
        assert!(!taken.body.contains(secret), "{}", taken.body);
    }
    // Refused senders are not dead letters.
    let out = ws.millrace(&["dlq", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}
