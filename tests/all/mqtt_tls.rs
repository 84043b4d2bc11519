//! The MQTT link over TLS (`mqtts://` with `[mqtt_tls]`) against a real mosquitto whose TLS
//! listener takes only client certificates of its CA and a user with a password: messages
//! mediated over it, the password taken from the environment and never written to the log, and
//! a wrong password reported by `/readyz` while the host keeps running.

use crate::harness::*;

const PASSWORD: &str = "s3cret-Passw0rd";

fn tls_broker(ca: &Ca, certs: &std::path::Path) -> Mosquitto {
    let (cert, key) = ca.issue("localhost", true);
    std::fs::write(certs.join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(certs.join("broker.pem"), cert).unwrap();
    std::fs::write(certs.join("broker.key"), key).unwrap();
    Mosquitto::start_tls(certs, "line-host", PASSWORD)
}

/// An HTTP-to-MQTT route `mes` over `mqtts://`, presenting `client.pem`/`client.key`, trusting
/// the broker's CA, its password from `MILLRACE_MQTT_PASSWORD`.
fn workspace(broker: &Mosquitto, ca: &Ca) -> Workspace {
    let ws = mes_to_mqtt(
        &format!(
            "mqtt = \"mqtts://line-host@localhost:{}\"\nmqtt_password_env = \"MILLRACE_MQTT_PASSWORD\"\n\n[mqtt_tls]\nca = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"",
            broker.tls_port.unwrap()
        ),
        "http",
        r#"topic = "uns/{plant}/{subject}""#,
        "",
    );
    let (cert, key) = ca.issue("line-host", false);
    ws.write("ca.pem", &ca.pem);
    ws.write("client.pem", &cert);
    ws.write("client.key", &key);
    ws
}

#[test]
fn the_mqtt_link_speaks_tls_with_a_client_certificate_and_a_password_it_never_logs() {
    let ca = Ca::new("mqtt test CA");
    let certs = tempfile::tempdir().unwrap();
    let broker = tls_broker(&ca, certs.path());
    let ws = workspace(&broker, &ca);
    let host = Host::start(&ws.config(), &[("MILLRACE_MQTT_PASSWORD", PASSWORD)]);
    let ready = host.wait_ready();
    assert_eq!(ready.json()["mqtt"], "connected", "{}", ready.body);
    // Published over TLS; read on the broker's plain listener by an independent client.
    let observer = broker.spawn_client(
        r#"
sub = mqtt.Client(client_id='observer', protocol=mqtt.MQTTv5)
session = Properties(PacketTypes.CONNECT)
session.SessionExpiryInterval = 60
sub.connect('127.0.0.1', PORT, clean_start=False, properties=session)
sub.subscribe('uns/#', qos=1)
sub.loop_start()
time.sleep(0.5)
sub.disconnect()
"#,
    );
    let mut observer = observer;
    let _ = observer.wait();
    let posted = host.post(
        "mes",
        Some("text/plain"),
        record("WO-9", "0000001000", "WC01"),
    );
    assert_eq!(posted.status, 202, "{}", posted.body);
    let got = broker.client(
        r#"
got = []
def on_message(c, u, m):
    got.append(m.topic)
sub = mqtt.Client(client_id='observer', protocol=mqtt.MQTTv5)
sub.on_message = on_message
session = Properties(PacketTypes.CONNECT)
session.SessionExpiryInterval = 60
sub.connect('127.0.0.1', PORT, clean_start=False, properties=session)
sub.loop_start()
deadline = time.time() + 10
while not got and time.time() < deadline:
    time.sleep(0.05)
sub.disconnect()
print(json.dumps(got))
"#,
    );
    assert_eq!(got, serde_json::json!(["uns/plant-a/WO-9"]));
    let mut host = host;
    let log = host.drain_log().join("\n");
    assert!(!log.contains(PASSWORD), "the password reached the log");
    drop(host);

    // A wrong password: the host runs, /readyz says why, and the password is still not logged.
    let mut host = Host::start(&ws.config(), &[("MILLRACE_MQTT_PASSWORD", "not-it")]);
    let line = host.wait_for_log("MQTT broker unavailable");
    assert!(!line.contains("not-it"), "{line}");
    let ready = host.request("GET", "/readyz", None, &[], b"");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("mqtts://line-host:***@localhost"),
        "{}",
        ready.body
    );
}
