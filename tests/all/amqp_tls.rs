//! The broker link over TLS (`amqps://` with `[amqp_tls]`) against a real RabbitMQ node that
//! takes only client certificates of its CA: messages mediated over it, the login made with the
//! certificate (SASL EXTERNAL), and a host that does not start when the broker's certificate is
//! not one it trusts or the broker refuses its certificate.

use crate::harness::*;

struct TlsBroker {
    broker: Broker,
    ca: Ca,
    certs: tempfile::TempDir,
}

/// A node with a TLS listener whose certificate `ca` issued; clients need a certificate of `ca`.
fn tls_broker() -> TlsBroker {
    let ca = Ca::new("broker test CA");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = ca.issue("localhost", true);
    std::fs::write(certs.path().join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(certs.path().join("broker.pem"), cert).unwrap();
    std::fs::write(certs.path().join("broker.key"), key).unwrap();
    TlsBroker {
        broker: Broker::start_tls(certs.path()),
        ca,
        certs,
    }
}

/// A queue-to-exchange route `act` of the act guest over `amqps://`, logging in with the
/// client certificate in `client.pem`/`client.key` and trusting `trust.pem`.
fn workspace(tls: &TlsBroker, trust: &str, client: &(String, String)) -> Workspace {
    let route = act_route("act", "")
        .replace("source = \"http\"", "source = \"amqp\"")
        .replace(
            "sink = \"reply\"",
            "sink = \"amqp\"\namqp = { queue = \"plant-a.in\", exchange = \"plant-a.events\", routing_key = \"done\" }",
        );
    let ws = Workspace::new(&format!(
        "[host]\namqp = \"amqps://127.0.0.1:{}/%2f?auth_mechanism=external\"\n\n[amqp_tls]\nca = \"trust.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\n\n[plants.plant-a]\n\n{route}",
        tls.broker.tls_port.unwrap()
    ));
    ws.write("trust.pem", trust);
    ws.write("client.pem", &client.0);
    ws.write("client.key", &client.1);
    ws
}

#[test]
fn the_broker_link_speaks_tls_and_logs_in_with_its_client_certificate() {
    let tls = tls_broker();
    // The broker's default user, named by the certificate: no password anywhere.
    let ws = workspace(&tls, &tls.ca.pem, &tls.ca.issue("guest", false));
    let host = ws.start();
    host.wait_ready();
    let got = tls.broker.client(
        r#"c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.confirm_delivery()
ch.exchange_declare('plant-a.events', 'topic', durable=True)
ch.queue_declare('out', durable=True)
ch.queue_bind('out', 'plant-a.events', '#')
ch.basic_publish('', 'plant-a.in', b'count', pika.BasicProperties(message_id='m-1', content_type='text/plain', delivery_mode=2))
bodies = []
deadline = time.time() + 30
while not bodies and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: bodies.append(b.decode())
    else: time.sleep(0.05)
print(json.dumps(bodies))
"#,
    );
    assert_eq!(got.as_array().map(Vec::len), Some(1), "{got}");
    // The broker says how the host is connected: TLS, EXTERNAL, as the certificate's name.
    let connections = tls.broker.ctl(&[
        "list_connections",
        "--formatter",
        "json",
        "ssl",
        "auth_mechanism",
        "user",
        "client_properties",
    ]);
    let connections: serde_json::Value = serde_json::from_str(&connections).unwrap();
    let host_links: Vec<_> = connections
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.to_string().contains("millrace"))
        .collect();
    assert!(!host_links.is_empty(), "{connections}");
    for link in host_links {
        assert_eq!(link["ssl"], true, "{link}");
        assert_eq!(link["auth_mechanism"], "EXTERNAL", "{link}");
        assert_eq!(link["user"], "guest", "{link}");
    }
}

/// Run the host, which must exit (not serve) within the guard; its stderr.
fn refused_start(ws: &Workspace) -> String {
    let mut child = millrace()
        .current_dir(ws.dir.path())
        .args(["run", "--http", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success());
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return stderr;
        }
        if started.elapsed() > GUARD {
            let _ = child.kill();
            panic!("the host started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_host_does_not_start_when_the_broker_certificate_or_its_own_is_not_accepted() {
    let tls = tls_broker();
    let client = tls.ca.issue("guest", false);
    // Trusting another CA: the broker's certificate is unknown.
    let ws = workspace(&tls, &Ca::new("not the broker's CA").pem, &client);
    let stderr = refused_start(&ws);
    assert!(
        stderr.contains("TLS") && stderr.contains("invalid peer certificate"),
        "{stderr}"
    );
    // A client certificate the broker's CA did not issue: the broker refuses the handshake.
    let stranger = Ca::new("someone else's CA").issue("guest", false);
    let ws = workspace(&tls, &tls.ca.pem, &stranger);
    let stderr = refused_start(&ws);
    assert!(stderr.contains("TLS"), "{stderr}");
    // A key that does not load is a configuration error, before anything connects.
    let ws = workspace(&tls, &tls.ca.pem, &client);
    ws.write("client.key", "not a key");
    let out = ws.millrace(&["check"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("client key"), "{stderr}");
    drop(tls.certs);
}
