//! Sandbox limits over real HTTP: a trapping guest, a guest that never returns and a guest that
//! grows its memory are each stopped and dead-lettered, and other routes keep serving meanwhile.

use crate::harness::*;

fn workspace() -> Workspace {
    let mes = plugin("mes-fixed-width");
    let good = route_toml("good", &mes, r#"["log", "config", "lookup"]"#, "")
        + &mes_settings("good").replace("work_centre_table = \"work_centres\"\n", "");
    let trap = route_toml("trap", &guest("guest-trap"), r#"["log"]"#, "");
    let spin = route_toml(
        "spin",
        &guest("guest-spin"),
        r#"["log"]"#,
        "deadline_ms = 200",
    );
    let grow = route_toml(
        "grow",
        &guest("guest-grow"),
        r#"["log"]"#,
        "memory_mib = 16",
    );
    Workspace::new(&format!(
        "[plants.plant-a]\n\n{good}\n{trap}\n{spin}\n{grow}"
    ))
}

#[test]
fn trapping_and_spinning_guests_are_contained_while_other_routes_keep_succeeding() {
    let ws = workspace();
    let mut host = ws.start();
    let good = || host.post("good", Some("text/plain"), record("WO-1", "1", "WC01"));

    let url = host.url.as_str();
    let post = move |route: &str, body: &[u8]| {
        request(
            url,
            "POST",
            &format!("/v1/routes/{route}/messages"),
            Some("text/plain"),
            &[],
            body,
        )
    };
    std::thread::scope(|s| {
        let spinner = s.spawn(move || (0..3).map(|_| post("spin", b"loop")).collect::<Vec<_>>());
        let trapper = s.spawn(move || (0..3).map(|_| post("trap", b"boom")).collect::<Vec<_>>());
        for _ in 0..20 {
            let reply = good();
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        for reply in spinner.join().unwrap() {
            assert_eq!(reply.status, 503, "{}", reply.body);
            assert_eq!(reply.kind(), "plugin-deadline");
        }
        for reply in trapper.join().unwrap() {
            assert_eq!(reply.status, 502, "{}", reply.body);
            assert_eq!(reply.kind(), "plugin-trap");
            assert!(
                reply.json()["detail"]
                    .as_str()
                    .unwrap()
                    .contains("wasm trap"),
                "{}",
                reply.body
            );
        }
    });
    // The trapped and interrupted instances were discarded; fresh ones serve.
    assert_eq!(host.post("trap", Some("text/plain"), "ok").status, 200);
    assert_eq!(host.post("spin", Some("text/plain"), "ok").status, 200);
    assert_eq!(good().status, 200);
    host.wait_for_log("guest-trap was asked to fail on 4 bytes");

    let out = ws.millrace(&["dlq", "list", "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "deadline").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "trap").count(),
        3,
        "{kinds:?}"
    );
}

#[test]
fn memory_growth_guest_hits_the_cap_and_the_route_recovers() {
    let ws = workspace();
    let host = ws.start();
    let reply = host.post("grow", Some("text/plain"), "grow");
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.kind(), "plugin-memory-cap");
    assert!(reply.json()["detail"].as_str().unwrap().contains("16 MiB"));
    assert_eq!(host.post("grow", Some("text/plain"), "ok").status, 200);

    let out = ws.millrace(&["dlq", "list", "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries[0]["kind"], "memory-cap");
    assert_eq!(entries[0]["plugin"]["name"], "guest-grow");
}

/// `signal` while a slow message is being mediated: that message is finished and answered 200,
/// a new connection is refused once the host has stopped accepting, and the host exits 0.
fn in_flight_message_finishes_after(signal: &str) {
    let ws = Workspace::new(&format!("[plants.plant-a]\n\n{}", slow_act_route("act")));
    let mut host = Host::start(&ws.config(), &[("RUST_LOG", "millrace_host=debug")]);
    let url = host.url.clone();
    let in_flight = std::thread::spawn(move || {
        request(
            &url,
            "POST",
            "/v1/routes/act/messages",
            Some("text/plain"),
            &[("idempotency-key", "slow-1")],
            SLOW_WORK.as_bytes(),
        )
    });
    host.wait_for_log("mediating route=act message_id=slow-1");
    host.signal(signal);
    host.wait_for_log("stopped accepting");
    // Not accepted: the listener is closed while the slow message still runs.
    let after = try_request(&host.url, "GET", "/healthz", None, &[], b"");
    let refused = match &after {
        Err(ureq::Error::Io(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    };
    assert!(
        refused,
        "a request after {signal} was not refused: {after:?}"
    );
    let reply = in_flight.join().unwrap();
    assert_eq!(
        reply.status, 200,
        "the in-flight message finished: {}",
        reply.body
    );
    assert_eq!(reply.body, SLOW_WORK.replace("work", "worked"));
    assert!(host.wait_exit().success(), "exit status 0 after {signal}");
    // The message was still being mediated when the signal arrived (else this proves nothing).
    let log = host.drain_log();
    let at = |needle: &str| {
        log.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{}", log.join("\n")))
    };
    let signalled = at(&format!("SIG{signal} received"));
    assert!(
        at("mediating route=act message_id=slow-1") < signalled
            && signalled < at("mediated route=act message_id=slow-1"),
        "the slow message was not in flight at the signal:\n{}",
        log.join("\n")
    );
}

#[test]
fn sigterm_finishes_the_in_flight_message_refuses_new_ones_and_exits_zero() {
    in_flight_message_finishes_after("TERM");
}

#[test]
fn sigint_finishes_the_in_flight_message_refuses_new_ones_and_exits_zero() {
    in_flight_message_finishes_after("INT");
}

#[test]
fn max_in_flight_makes_later_messages_wait_for_a_slot() {
    let mes = plugin("mes-fixed-width");
    let good = route_toml("good", &mes, r#"["log", "config", "lookup"]"#, "")
        + &mes_settings("good").replace("work_centre_table = \"work_centres\"\n", "");
    let spin = route_toml(
        "spin",
        &guest("guest-spin"),
        r#"["log"]"#,
        "deadline_ms = 1000",
    );
    let ws = Workspace::new(&format!(
        "[host]\nmax_in_flight = 1\n\n[plants.plant-a]\n\n{good}\n{spin}"
    ));
    let mut host = Host::start(&ws.config(), &[("RUST_LOG", "millrace_host=debug")]);
    let url = host.url.clone();
    let slow = std::thread::spawn(move || {
        request(
            &url,
            "POST",
            "/v1/routes/spin/messages",
            Some("text/plain"),
            &[("idempotency-key", "slow")],
            b"loop",
        )
    });
    host.wait_for_log("mediating route=spin message_id=slow");
    let url = host.url.clone();
    let fast = std::thread::spawn(move || {
        let body = record("WO-1", "1", "WC01");
        request(
            &url,
            "POST",
            "/v1/routes/good/messages",
            Some("text/plain"),
            &[("idempotency-key", "fast")],
            body.as_bytes(),
        )
    });
    host.wait_for_log("message received route=good message_id=fast");
    // The only slot is taken: the fast message is mediated after the slow one was dead-lettered.
    let started = host.wait_for_log("mediating route=good message_id=fast");
    let log = host.log_so_far();
    let dead = log
        .iter()
        .position(|l| l.contains("dead-lettered") && l.contains("message_id=slow"))
        .expect("slow dead-lettered");
    let fast_at = log.iter().position(|l| *l == started).unwrap();
    assert!(
        dead < fast_at,
        "fast started before slow finished:\n{}",
        log.join("\n")
    );
    assert_eq!(slow.join().unwrap().status, 503);
    assert_eq!(fast.join().unwrap().status, 200);
}
