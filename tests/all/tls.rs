//! TLS on the listeners (`[tls]`): certificates from PEM files, client certificates checked
//! against a CA and named by routes, files rotated without a restart, and a host that will not
//! start on TLS files that do not load. The client here is rustls over a plain socket, so what is
//! checked is the wire, not a library's convenience.

use crate::harness::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::sync::Arc;

/// One request over TLS to `url` (`https://host:port`), trusting `ca`, presenting `client`
/// (certificate and key PEM) when given. Err: the handshake or the exchange failed.
fn tls_request(
    url: &str,
    ca: &str,
    client: Option<&(String, String)>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), String> {
    let addr = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("not an https URL: {url}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    // A guard against a hung host, not a timing assertion.
    sock.set_read_timeout(Some(GUARD)).unwrap();
    sock.set_write_timeout(Some(GUARD)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        request.push_str(&format!("{n}: {v}\r\n"));
    }
    request.push_str("\r\n");
    tls.write_all(request.as_bytes())
        .and_then(|()| tls.write_all(body))
        .and_then(|()| tls.flush())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    // The host may close without close_notify once it has answered; what was read counts.
    if let Err(e) = tls.read_to_end(&mut answer)
        && answer.is_empty()
    {
        return Err(e.to_string());
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

struct Pki {
    ca: Ca,
    ws: Workspace,
}

/// A workspace with a CA, the host's certificate, and a configuration: TLS on both listeners,
/// client certificates asked (not required), route `open` for anyone, route `line` only for the
/// client certificate `line-7`.
fn pki(require_client_cert: bool) -> Pki {
    let ca = Ca::new("millrace test CA");
    let (cert, key) = ca.issue("millrace host", true);
    let config = format!(
        "[host]\nadmin = \"127.0.0.1:0\"\n\n[tls]\ncert = \"host.pem\"\nkey = \"host.key\"\nclient_ca = \"ca.pem\"\nrequire_client_cert = {require_client_cert}\n\n[plants.plant-a]\n\n{}\n{}\n[routes.line.auth]\nclients = [\"line-7\"]\n",
        act_route("open", ""),
        act_route("line", "")
    );
    let ws = Workspace::new(&config);
    ws.write("host.pem", &cert);
    ws.write("host.key", &key);
    ws.write("ca.pem", &ca.pem);
    Pki { ca, ws }
}

#[test]
fn listeners_speak_tls_and_routes_take_the_client_certificates_they_name() {
    let Pki { ca, ws } = pki(false);
    let host = ws.start();
    assert!(host.url.starts_with("https://"), "{}", host.url);
    let admin = host.admin.clone().expect("admin listener");
    assert!(admin.starts_with("https://"), "{admin}");
    let post = |route: &str, client: Option<&(String, String)>, headers: &[(&str, &str)]| {
        tls_request(
            &host.url,
            &ca.pem,
            client,
            "POST",
            &format!("/v1/routes/{route}/messages"),
            &[&[("content-type", "text/plain")], headers].concat(),
            b"headers",
        )
    };

    // Plain HTTP to a TLS listener gets no HTTP answer.
    let plain = try_request(
        &host.url.replace("https://", "http://"),
        "POST",
        "/v1/routes/open/messages",
        Some("text/plain"),
        &[],
        b"headers",
    );
    assert!(
        plain.is_err(),
        "plain HTTP answered: {:?}",
        plain.map(|r| r.status)
    );

    // Without a client certificate: the open route takes it, the named one does not.
    let (status, body) = post("open", None, &[]).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("millrace-client"), "{body}");
    let (status, body) = post("line", None, &[]).unwrap();
    assert_eq!(status, 401, "{body}");

    // The named client is taken, and the plugin sees its name, not a forged one.
    let line7 = ca.issue("line-7", false);
    let (status, body) = post("line", Some(&line7), &[("millrace-client", "forged")]).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("millrace-client: line-7"), "{body}");
    assert!(!body.contains("forged"), "{body}");

    // Another client of the same CA is not on the route's list.
    let line9 = ca.issue("line-9", false);
    let (status, body) = post("line", Some(&line9), &[]).unwrap();
    assert_eq!(status, 401, "{body}");

    // A certificate "line-7" from a CA the host does not trust does not get a conversation.
    let stranger = Ca::new("someone else's CA").issue("line-7", false);
    let forged = post("line", Some(&stranger), &[]);
    assert!(
        forged.is_err(),
        "a foreign certificate was answered: {forged:?}"
    );

    // A client that trusts another CA refuses the host.
    let wrong_trust = tls_request(
        &host.url,
        &Ca::new("unrelated").pem,
        None,
        "GET",
        "/healthz",
        &[],
        b"",
    );
    assert!(wrong_trust.is_err(), "{wrong_trust:?}");

    // The admin API over TLS, with its bearer token.
    let bearer = format!("Bearer {TEST_ADMIN_TOKEN}");
    let (status, body) = tls_request(
        &admin,
        &ca.pem,
        None,
        "GET",
        "/v1/plants",
        &[("authorization", &bearer)],
        b"",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");

    // The CLI speaks to it, trusting the CA it is told to, and refuses it otherwise.
    let versions = |ca: Option<&std::path::Path>| {
        let mut cmd = millrace();
        cmd.args([
            "plugin",
            "versions",
            "--plant",
            "plant-a",
            "--plugin",
            "guest-act",
        ])
        .args(["--admin", &admin])
        .env("MILLRACE_ADMIN_TOKEN", TEST_ADMIN_TOKEN);
        if let Some(ca) = ca {
            cmd.env("MILLRACE_ADMIN_CA", ca);
        }
        cmd.output().unwrap()
    };
    let out = versions(Some(&ws.dir.path().join("ca.pem")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("guest-act"));
    let out = versions(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_listener_that_requires_client_certificates_refuses_connections_without_one() {
    let Pki { ca, ws } = pki(true);
    let host = ws.start();
    let get = |client: Option<&(String, String)>| {
        tls_request(&host.url, &ca.pem, client, "GET", "/healthz", &[], b"")
    };
    let refused = get(None);
    assert!(
        refused.is_err(),
        "answered without a certificate: {refused:?}"
    );
    let (status, body) = get(Some(&ca.issue("any-client", false))).unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn certificates_rotate_without_a_restart_and_files_that_do_not_load_keep_the_old_one() {
    let Pki { ca, ws } = pki(false);
    let mut host = ws.start();
    let url = host.url.clone();
    let get = |ca: &Ca| tls_request(&url, &ca.pem, None, "GET", "/healthz", &[], b"");
    assert_eq!(get(&ca).unwrap().0, 200);

    // A new certificate from a new CA: key first, then certificate, as an operator copies them.
    let next = Ca::new("next CA");
    let (cert, key) = next.issue("millrace host", true);
    ws.write("host.key", &key);
    ws.write("host.pem", &cert);
    let started = std::time::Instant::now();
    loop {
        // The host looks at its files when a connection arrives, at most once a second.
        if let Ok((200, _)) = get(&next) {
            break;
        }
        assert!(
            started.elapsed() < GUARD,
            "the new certificate was never served"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    host.wait_for_log("TLS certificate reloaded");
    assert!(get(&ca).is_err(), "the old certificate is still served");

    // A key that does not load: logged, the certificate in use stays.
    ws.write(
        "host.key",
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    );
    let started = std::time::Instant::now();
    loop {
        assert_eq!(get(&next).unwrap().0, 200);
        if host
            .drain_log()
            .iter()
            .any(|l| l.contains("TLS files changed but do not load"))
        {
            break;
        }
        assert!(
            started.elapsed() < GUARD,
            "the broken key was never noticed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(get(&next).unwrap().0, 200);
}

#[test]
fn a_host_does_not_start_on_tls_files_that_do_not_load() {
    let Pki { ca, ws } = pki(false);
    // A key that belongs to another certificate.
    let (_, other_key) = ca.issue("someone", true);
    ws.write("host.key", &other_key);
    let out = ws.millrace(&["run", "--http", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("host.key") && stderr.contains("does not go with the certificate"),
        "{stderr}"
    );
    // No certificate file at all.
    std::fs::remove_file(ws.dir.path().join("host.pem")).unwrap();
    let out = ws.millrace(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("host.pem"), "{stderr}");
    // Required client certificates without a CA to check them against.
    let text = std::fs::read_to_string(ws.config()).unwrap().replace(
        "client_ca = \"ca.pem\"\nrequire_client_cert = false",
        "require_client_cert = true",
    );
    ws.write("millrace.toml", &text);
    let out = ws.millrace(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tls.require_client_cert needs tls.client_ca"),
        "{stderr}"
    );
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_cut_off_and_others_are_served() {
    let Pki { ca, ws } = pki(false);
    let text = std::fs::read_to_string(ws.config()).unwrap().replacen(
        "[host]\n",
        "[host]\nheader_timeout_s = 1\n",
        1,
    );
    ws.write("millrace.toml", &text);
    let host = ws.start();
    let addr = host.url.strip_prefix("https://").unwrap().to_string();
    // Connections that send nothing, and one that sends half a ClientHello.
    let mut stalled: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    stalled[0]
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // Meanwhile the host serves a client that does finish.
    let (status, body) =
        tls_request(&host.url, &ca.pem, None, "GET", "/healthz", &[], b"").unwrap();
    assert_eq!(status, 200, "{body}");
    // Each stalled connection is closed by the host (a guard, not a timing assertion).
    for sock in &mut stalled {
        sock.set_read_timeout(Some(GUARD)).unwrap();
        // EOF (what the host sent before closing, if anything, is read) or a reset.
        if let Err(e) = sock.read_to_end(&mut Vec::new()) {
            assert!(
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut,
                "the host kept a stalled handshake open: {e}"
            );
        }
    }
}
