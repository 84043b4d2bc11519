//! MQTT transport against a real mosquitto 2 broker, driven by a client that is not ours
//! (paho-mqtt, MQTT 5): outputs published to the route's topic template and acknowledged, with
//! CloudEvents attributes as user properties; poison in the local dead-letter store and
//! acknowledged (not sent again); messages published while the host is away delivered when it
//! comes (persistent session).

use crate::harness::*;

/// A topic-to-topic route `mes` with mes-fixed-width; `mqtt` adds keys to its MQTT table.
fn workspace(broker: &Mosquitto, mqtt: &str) -> Workspace {
    mes_to_mqtt(
        &format!("mqtt = \"{}\"\nid = \"mqtt-test\"", broker.url()),
        "mqtt",
        &format!(
            "topics = [\"plant-a/+/mes/confirmations\"], topic = \"uns/{{plant}}/{{type}}\"{mqtt}"
        ),
        "",
    )
}

/// paho (MQTT 5): connect the observer (a persistent session: what is published while it is
/// away waits for it), subscribe `uns/#` (QoS 1), publish
/// each (id, body) to line-1's confirmations with `message-id` user properties, then collect
/// `want` outputs (30 s at most) as {topic, event, props, content_type}.
fn publish_and_collect(messages: &[(&str, String)], want: usize) -> String {
    let messages: Vec<String> = messages
        .iter()
        .map(|(id, body)| format!("({id:?}, {body:?})"))
        .collect();
    format!(
        r#"
got = []
def on_message(c, u, m):
    props = dict(m.properties.UserProperty) if hasattr(m.properties, 'UserProperty') else {{}}
    got.append({{'topic': m.topic, 'event': json.loads(m.payload), 'props': props,
                 'content_type': getattr(m.properties, 'ContentType', None), 'retain': m.retain}})
sub = mqtt.Client(client_id='observer', protocol=mqtt.MQTTv5)
sub.on_message = on_message
session = Properties(PacketTypes.CONNECT)
session.SessionExpiryInterval = 3600
sub.connect('127.0.0.1', PORT, clean_start=False, properties=session)
sub.subscribe('uns/#', qos=1)
sub.loop_start()
time.sleep(0.5)
pub = mqtt.Client(client_id='line-1', protocol=mqtt.MQTTv5)
pub.connect('127.0.0.1', PORT)
pub.loop_start()
for mid, body in [{}]:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = ('message-id', mid)
    p.ContentType = 'text/plain'
    pub.publish('plant-a/line-1/mes/confirmations', body, qos=1, properties=p).wait_for_publish()
deadline = time.time() + 30
while len(got) < {want} and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
sub.disconnect()
pub.disconnect()
print(json.dumps(got))
"#,
        messages.join(", ")
    )
}

#[test]
fn mqtt_route_publishes_acknowledged_outputs_and_dead_letters_poison_locally() {
    let broker = Mosquitto::start();
    let ws = workspace(&broker, "");
    let host = ws.start();
    let ready = host.wait_ready();
    assert_eq!(ready.json()["mqtt"], "connected", "{}", ready.body);
    let good = record("WO-1", "0000001000", "WC01");
    let bad = record("WO-2", "00001A500 ", "WC01");
    let got = broker.client(&publish_and_collect(
        &[("m-1", good.clone()), ("m-2", bad), ("m-3", good)],
        2,
    ));
    let outputs = got.as_array().unwrap();
    assert_eq!(outputs.len(), 2, "two good records, two outputs: {got}");
    let kind = "millrace.production.completed.v1";
    for output in outputs {
        assert_eq!(output["topic"], format!("uns/plant-a/{kind}"), "{output}");
        assert_eq!(output["event"]["type"], kind);
        assert_eq!(output["event"]["data"]["work_order"], "WO-1");
        assert_eq!(output["content_type"], "application/cloudevents+json");
        // CloudEvents attributes also as MQTT 5 user properties (unchanged names).
        assert_eq!(output["props"]["type"], kind);
        assert_eq!(output["props"]["subject"], "WO-1");
        assert_eq!(output["props"]["id"], output["event"]["id"]);
        assert_eq!(output["props"]["message-id"], output["event"]["id"]);
        assert_eq!(output["props"]["millrace-plant"], "plant-a");
        assert_eq!(output["retain"], 0);
    }
    // Output ids derive from the MQTT message ids (a redelivery publishes the same ids).
    let mut ids: Vec<&str> = outputs
        .iter()
        .map(|o| o["event"]["id"].as_str().unwrap_or_default())
        .collect();
    ids.sort();
    assert_eq!(ids, ["m-1-1", "m-3-1"]);

    // The poison record is in the local store, named by its MQTT message id.
    let dead = dead_letters(&ws, 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["message_id"], "m-2");
    assert_eq!(dead[0]["kind"], "rejected");
    let headers: Vec<(String, String)> =
        serde_json::from_value(dead[0]["headers"].clone()).unwrap();
    assert!(
        headers.contains(&(
            "mqtt-topic".into(),
            "plant-a/line-1/mes/confirmations".into()
        )),
        "{headers:?}"
    );
    assert!(headers.contains(&("mqtt-level-2".into(), "line-1".into())));

    // Every input was acknowledged: a host of the same session started again gets nothing.
    assert!(host.stop().success());
    let host = ws.start();
    host.wait_ready();
    let again = broker.client(&publish_and_collect(&[], 1));
    assert_eq!(again, serde_json::json!([]), "nothing is delivered twice");
}

#[test]
fn messages_published_while_the_host_is_away_are_mediated_when_it_comes_back() {
    let broker = Mosquitto::start();
    let ws = workspace(&broker, "");
    // First run: the host's session and subscription are made at the broker, and the
    // observer's.
    let host = ws.start();
    host.wait_ready();
    assert_eq!(
        broker.client(&publish_and_collect(&[], 0)),
        serde_json::json!([])
    );
    assert!(host.stop().success());
    let good = record("WO-1", "0000001000", "WC01");
    let messages: Vec<(&str, String)> = ["a-1", "a-2", "a-3"]
        .into_iter()
        .map(|id| (id, good.clone()))
        .collect();
    // Published while no host runs: they wait in the host's session at the broker.
    let none = broker.client(&publish_and_collect(&messages, 0));
    assert_eq!(none, serde_json::json!([]), "no host, no outputs");
    let host = ws.start();
    host.wait_ready();
    let got = broker.client(&publish_and_collect(&[], 3));
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 3, "each waiting message once: {got:?}");
    let ids: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|o| o["event"]["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids.len(), 3, "three distinct outputs: {got:?}");
    drop(host);
}

#[test]
fn events_reach_the_plants_unified_namespace_with_a_retained_state_per_subject() {
    let broker = Mosquitto::start();
    let ws = mes_to_mqtt(
        &format!("mqtt = \"{}\"", broker.url()),
        "http",
        r#"topic = "uns", state_topic = "{uns}/{type}/{subject}""#,
        "[plants.plant-a.uns]\nenterprise = \"acme\"\nsite = \"north\"\narea = \"assembly\"\nline = \"line-1\"\n\n",
    );
    let host = ws.start();
    host.wait_ready();
    // HTTP in, MQTT out: accepted once in the MQTT outbox (state and stream), published from it.
    let posted = host.post(
        "mes",
        Some("text/plain"),
        record("WO-7", "0000001000", "WC01"),
    );
    assert_eq!(posted.status, 202, "{}", posted.body);
    // A subscriber arriving afterwards gets the retained current state, not the event stream.
    let got = broker.client(
        r#"
got = []
def on_message(c, u, m):
    got.append({'topic': m.topic, 'retain': m.retain, 'event': json.loads(m.payload)})
sub = mqtt.Client(client_id='late', protocol=mqtt.MQTTv5)
sub.on_message = on_message
sub.connect('127.0.0.1', PORT)
sub.subscribe('acme/#', qos=1)
sub.loop_start()
deadline = time.time() + 10
while not got and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
sub.disconnect()
print(json.dumps(got))
"#,
    );
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0]["topic"],
        "acme/north/assembly/line-1/millrace.production.completed.v1/WO-7"
    );
    assert_eq!(got[0]["retain"], 1);
    assert_eq!(got[0]["event"]["subject"], "WO-7");
}

#[test]
fn an_http_route_keeps_accepting_while_the_mqtt_broker_is_away_and_its_outputs_follow() {
    let mut broker = Mosquitto::start();
    let ws = mes_to_mqtt(
        &format!("mqtt = \"{}\"", broker.url()),
        "http",
        r#"topic = "uns/{plant}/{subject}""#,
        "",
    );
    // The observer's session exists before the broker goes away.
    assert_eq!(
        broker.client(&publish_and_collect(&[], 0)),
        serde_json::json!([])
    );
    let host = ws.start();
    host.wait_ready();
    broker.stop();
    for n in 1..=3 {
        let posted = host.post(
            "mes",
            Some("text/plain"),
            record(&format!("WO-{n}"), "0000001000", "WC01"),
        );
        assert_eq!(
            posted.status, 202,
            "accepted while the broker is away: {}",
            posted.body
        );
    }
    let waiting = host.request("GET", "/readyz", None, &[], b"");
    assert_eq!(waiting.status, 503, "{}", waiting.body);
    assert_eq!(waiting.json()["mqtt_outbox_waiting"], 3, "{}", waiting.body);
    broker.restart();
    let got = broker.client(&publish_and_collect(&[], 3));
    let mut topics: Vec<&str> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["topic"].as_str().unwrap_or_default())
        .collect();
    topics.sort();
    assert_eq!(
        topics,
        ["uns/plant-a/WO-1", "uns/plant-a/WO-2", "uns/plant-a/WO-3"]
    );
    // Each is deleted from the outbox once the broker acknowledged it (a guard, not a timing
    // assertion: the deletes follow the acknowledgements).
    let mut ready = host.wait_ready();
    for _ in 0..100 {
        if ready.json()["mqtt_outbox_waiting"] == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        ready = host.wait_ready();
    }
    assert_eq!(ready.json()["mqtt_outbox_waiting"], 0, "{}", ready.body);
}

#[test]
fn cloudevents_go_in_binary_mode_with_their_attributes_as_user_properties_when_asked() {
    let broker = Mosquitto::start();
    let ws = mes_to_mqtt(
        &format!("mqtt = \"{}\"", broker.url()),
        "http",
        r#"topic = "uns/{plant}/{subject}", cloudevents = "binary""#,
        "",
    );
    // The observer's session exists before anything is published.
    assert_eq!(
        broker.client(&publish_and_collect(&[], 0)),
        serde_json::json!([])
    );
    let host = ws.start();
    host.wait_ready();
    let posted = host.post(
        "mes",
        Some("text/plain"),
        record("WO-5", "0000001000", "WC01"),
    );
    assert_eq!(posted.status, 202, "{}", posted.body);
    let got = broker.client(&publish_and_collect(&[], 1));
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    let output = &got[0];
    assert_eq!(output["topic"], "uns/plant-a/WO-5");
    // The payload is the event's data; its attributes travel as user properties.
    assert_eq!(output["event"]["work_order"], "WO-5", "{output}");
    assert!(output["event"].get("specversion").is_none(), "{output}");
    assert_eq!(output["content_type"], "application/json");
    assert_eq!(output["props"]["specversion"], "1.0");
    assert_eq!(output["props"]["type"], "millrace.production.completed.v1");
    assert_eq!(output["props"]["subject"], "WO-5");
    assert_eq!(output["props"]["datacontenttype"], "application/json");
    assert!(
        output["props"]["id"]
            .as_str()
            .is_some_and(|id| id.ends_with("-1"))
    );
}

#[test]
fn a_message_over_the_routes_body_bound_is_dead_lettered_not_mediated() {
    let broker = Mosquitto::start();
    let ws = workspace(&broker, "");
    let text = std::fs::read_to_string(ws.config())
        .unwrap()
        .replace("sink = \"mqtt\"", "sink = \"mqtt\"\nmax_body_kib = 1");
    std::fs::write(ws.config(), text).unwrap();
    let host = ws.start();
    host.wait_ready();
    let big = format!(
        "{}{}",
        record("WO-1", "0000001000", "WC01"),
        " ".repeat(2048)
    );
    let good = record("WO-2", "0000001000", "WC01");
    let got = broker.client(&publish_and_collect(&[("big-1", big), ("m-2", good)], 1));
    let got = got.as_array().unwrap();
    assert_eq!(
        got.len(),
        1,
        "only the message within the bound is mediated: {got:?}"
    );
    assert_eq!(got[0]["event"]["data"]["work_order"], "WO-2");
    let dead = dead_letters(&ws, 1);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["message_id"], "big-1");
    assert_eq!(dead[0]["kind"], "limit");
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("max_body_kib"),
        "{}",
        dead[0]["reason"]
    );
}

/// The workspace's dead letters once there are at least `at_least` (written beside the
/// outputs, not before them).
fn dead_letters(ws: &Workspace, at_least: usize) -> Vec<serde_json::Value> {
    crate::hot_reload::eventually(&format!("{at_least} dead letters"), || {
        let listed = ws.millrace(&["dlq", "list", "--json"]);
        assert!(listed.status.success(), "{listed:?}");
        let dead: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        let dead = dead.as_array().unwrap().clone();
        (dead.len() >= at_least).then_some(dead)
    })
}

/// A route `act` from MQTT (`plant-a/+/act`) to MQTT (`out/act`), subscribed and publishing with
/// QoS `qos`, with one step of the `act` guest, slow work allowed; `host` adds keys to the host
/// table (whose id names the session).
fn act_over_mqtt(broker: &Mosquitto, qos: u8, host: &str) -> Workspace {
    let route = slow_act_route("act")
        .replacen("source = \"http\"", "source = \"mqtt\"", 1)
        .replacen(
            "sink = \"reply\"",
            &format!("sink = \"mqtt\"\nmqtt = {{ topics = [\"plant-a/+/act\"], topic = \"out/act\", qos = {qos} }}"),
            1,
        );
    Workspace::new(&format!(
        "[host]\nmqtt = \"{}\"\nid = \"mqtt-stop\"\n{host}\n\n[plants.plant-a]\n\n{route}",
        broker.url()
    ))
}

/// Publish each (id, body) to `plant-a/line-1/act` (QoS `qos`, in order, each acknowledged by
/// the broker before the next), with the id as the `message-id` user property.
fn publish_to_act(broker: &Mosquitto, qos: u8, messages: &[(&str, &str)]) {
    let messages = messages
        .iter()
        .map(|(id, body)| format!("({id:?}, {body:?})"))
        .collect::<Vec<_>>()
        .join(", ");
    broker.client(&format!(
        r#"
pub = mqtt.Client(client_id='line-1', protocol=mqtt.MQTTv5)
pub.connect('127.0.0.1', PORT)
pub.loop_start()
for mid, body in [{messages}]:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = ('message-id', mid)
    p.ContentType = 'text/plain'
    pub.publish('plant-a/line-1/act', body, qos={qos}, properties=p).wait_for_publish()
pub.disconnect()
print(json.dumps([]))
"#
    ));
}

/// A host told to stop while messages run finishes them, publishes their outputs, sends their
/// acknowledgements and then disconnects: the next host of the same session gets none of them
/// again.
#[test]
fn a_stopping_host_finishes_the_messages_running_and_none_comes_again() {
    stop_finishes_the_messages_running(1);
}

/// The same with QoS 2 (the acknowledgement a PUBREC, answered by the broker's PUBREL): none
/// comes again, and the next host's session resumes without a protocol error. The host waits
/// for the PUBREL of every PUBREC before it disconnects: a session left with one open has the
/// broker send it to the next host, whose client knows nothing of it and drops the connection,
/// again and again. Without the wait this fails only when the DISCONNECT overtakes the last
/// PUBREL (1 of 4 runs of the three stop tests together, with a wait that looked too early).
#[test]
fn a_stopping_host_settles_qos_2_messages_and_the_session_resumes_cleanly() {
    stop_finishes_the_messages_running(2);
}

fn stop_finishes_the_messages_running(qos: u8) {
    let broker = Mosquitto::start();
    let ws = act_over_mqtt(&broker, qos, "max_in_flight = 2");
    let mut host = Host::start(&ws.config(), &[("RUST_LOG", "millrace_host=debug")]);
    host.wait_ready();
    publish_to_act(&broker, qos, &[("n-0", SLOW_WORK), ("n-1", SLOW_WORK)]);
    let (log, _) = host.stop_while_mediating("act", 2);
    let has = |what: &str| log.iter().any(|l| l.contains(what));
    for id in ["n-0", "n-1"] {
        assert!(
            mediated_at(&log, "act", id).is_some(),
            "{id} finished:\n{}",
            log.join("\n")
        );
    }
    assert!(
        has("MQTT: messages in hand settled; disconnected")
            && !has("stopping with work unfinished"),
        "the session stayed up until both were settled, then disconnected:\n{}",
        log.join("\n")
    );
    // The same session again. The broker sends what it still holds for it as the session
    // resumes, before the marker published once the host is up; the source starts messages in
    // arrival order.
    let mut host = Host::start(&ws.config(), &[("RUST_LOG", "millrace_host=debug")]);
    host.wait_ready();
    publish_to_act(&broker, qos, &[("n-2", "work 1")]);
    host.wait_for_log_where(|l| says_mediated(l, "act", "n-2"), "n-2 mediated");
    let log = host.log_so_far();
    assert!(
        !log.iter().any(|l| l.contains("reconnecting")),
        "the session resumed without an error:\n{}",
        log.join("\n")
    );
    assert!(
        !log.iter()
            .any(|l| l.contains("message_id=n-0") || l.contains("message_id=n-1")),
        "n-0 and n-1 were acknowledged before the host disconnected, and do not come again:\n{}",
        log.join("\n")
    );
}

/// A host told to stop keeps its MQTT session up while the messages running finish: their
/// acknowledgements go out, so the broker does not send them again to the next session. Here
/// the stop runs out of time (`host.stop_timeout_s`) with one message still running: the one
/// that finished before it is acknowledged; the one still running comes again, and so does
/// the finished one behind it (acknowledgements go in arrival order), which is then
/// acknowledged without a second run.
#[test]
fn a_stopping_host_acknowledges_the_messages_it_finishes_before_it_disconnects() {
    let broker = Mosquitto::start();
    let ws = act_over_mqtt(&broker, 1, "max_in_flight = 3\nstop_timeout_s = 30");
    let mut host = Host::start(&ws.config(), &[("RUST_LOG", "millrace_host=debug")]);
    host.wait_ready();
    // In arrival order: `m-0` and `m-2` run a few seconds, past the signal; `m-1` until its
    // deadline (120 s), past the stop's bound.
    publish_to_act(
        &broker,
        1,
        &[
            ("m-0", SLOW_WORK),
            ("m-1", "work 1000000000000000"),
            ("m-2", SLOW_WORK),
        ],
    );
    let (log, signalled) = host.stop_while_mediating("act", 3);
    let finished = |id: &str| mediated_at(&log, "act", id);
    for id in ["m-0", "m-2"] {
        assert!(
            finished(id).is_some_and(|at| at > signalled),
            "{id} did not finish after the signal (its output goes out on the session, which \
             must stay up while it runs), or finished before it and did not test the stop:\n{}",
            log.join("\n")
        );
    }
    assert!(
        log.iter()
            .any(|l| l.contains("stopping with work unfinished")),
        "m-1 was still running when the stop's bound ended:\n{}",
        log.join("\n")
    );
    // The same session again: the broker sends what was not acknowledged, in order.
    let mut host = Host::start(&ws.config(), &[("RUST_LOG", "millrace_host=debug")]);
    // m-1 comes again and runs; m-2 comes again and is recognised. m-0 would have come first.
    let log = host.log_once(
        |log| {
            log.iter()
                .any(|l| l.contains("mediating route=act message_id=m-1"))
                && log.iter().any(|l| {
                    l.contains("already settled: acknowledged without a second run")
                        && l.contains("message_id=m-2")
                })
        },
        "m-1 run again and m-2 acknowledged without a second run",
    );
    assert!(
        !log.iter().any(|l| l.contains("message_id=m-0")),
        "m-0 was acknowledged before the host disconnected, and does not come again:\n{}",
        log.join("\n")
    );
}
