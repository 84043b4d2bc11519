//! WASI for guests whose runtime needs it (the `wasi` grant): a real Python component that
//! tries files, directories, environment, TCP, UDP and name lookup finds every door shut, and
//! what it prints reaches the host log with the message id.

use crate::harness::*;
use std::io::ErrorKind;
use std::net::TcpListener;

#[test]
fn a_wasi_guest_gets_no_ambient_authority_and_its_output_is_logged() {
    let probe = guest("guest-wasi-probe");
    let ws = Workspace::new(&format!(
        "[plants.plant-a]\n\n{}",
        // componentize-py imports every interface of the world, used or not.
        route_toml(
            "probe",
            &probe,
            r#"["log", "config", "lookup", "state", "wasi"]"#,
            "memory_mib = 128\ndeadline_ms = 5000"
        )
    ));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();

    let mut host = Host::start(&ws.config(), &[("MILLRACE_CANARY", "visible-if-leaked")]);
    let reply = host.post(
        "probe",
        Some("application/json"),
        format!("{{\"port\": {port}}}"),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let report = reply.json();
    println!("{report:#}");
    for door in [
        "read_file",
        "list_root",
        "list_cwd",
        "write_file",
        "tcp_connect",
        "tcp_connect_raw",
        "udp_send",
        "name_lookup",
    ] {
        // The system refused (an OSError), not any exception: a bug in the probe or the
        // runtime reports `error: ...` and fails here.
        let outcome = report[door].as_str().unwrap_or_default();
        assert!(
            outcome.starts_with("denied: "),
            "{door}: {outcome}\n{report:#}"
        );
    }
    assert!(
        report["control"]
            .as_str()
            .unwrap_or_default()
            .starts_with("error: ValueError"),
        "a non-denial is reported as such: {}",
        report["control"]
    );
    assert_eq!(
        report["environment"],
        serde_json::json!({}),
        "empty environment"
    );
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "nothing reached the listener"
    );
    let line = host.wait_for_log("probe stdout: hello from python");
    assert!(line.contains("stream=\"stdout\""), "{line}");
    assert!(line.contains("plugin=wasi-probe@0.1.0"), "{line}");
    host.wait_for_log("probe stderr: about to knock on every door");
}

#[test]
fn a_wasi_guest_without_the_grant_is_refused_at_load_naming_it() {
    let ws = Workspace::new(&format!(
        "[plants.plant-a]\n\n{}",
        route_toml(
            "probe",
            &guest("guest-wasi-probe"),
            r#"["log", "config", "lookup", "state"]"#,
            ""
        )
    ));
    let out = ws.millrace(&["check"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("imports wasi:") && text.contains("does not grant \"wasi\""),
        "{text}"
    );
}
