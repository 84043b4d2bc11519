//! Sparkplug B over a real broker: payloads written by an independent encoder (Google's
//! protobuf runtime with Eclipse Tahu's schema, `plugins/sparkplug-b/encoder/encode.py`),
//! published by paho, decoded by the `sparkplug-b` component inside the sandbox, and the
//! canonical events read back by paho. The host only moves bytes.

use crate::harness::*;

fn encoder() -> std::path::PathBuf {
    root().join("plugins/sparkplug-b/encoder")
}

#[test]
fn the_vector_payloads_are_what_the_independent_encoder_writes() {
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(encoder().join("encode.py"))
        .arg("--check")
        .arg(root().join("plugins/sparkplug-b/vectors"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// paho: subscribe `events/#`, publish `messages` ((topic, description) pairs, encoded by
/// encode.py) back to back with QoS 1, then collect `want` events (60 s at most).
fn publish_sparkplug(messages: &[(String, serde_json::Value)], want: usize) -> String {
    format!(
        r#"
import sys
sys.path.insert(0, {encoder:?})
import encode
got = []
sub = mqtt.Client(client_id='scada-observer', protocol=mqtt.MQTTv5)
sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
sub.connect('127.0.0.1', PORT)
sub.subscribe('events/#', qos=1)
sub.loop_start()
time.sleep(0.5)
pub = mqtt.Client(client_id='gateway-1', protocol=mqtt.MQTTv5)
pub.connect('127.0.0.1', PORT)
pub.loop_start()
for topic, spec in json.loads({messages:?}):
    pub.publish(topic, encode.encode(spec), qos=1).wait_for_publish()
deadline = time.time() + 60
while len(got) < {want} and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
print(json.dumps(got))
"#,
        encoder = encoder().to_string_lossy(),
        messages = serde_json::to_string(messages).unwrap(),
    )
}

#[test]
fn sparkplug_b_payloads_from_an_independent_encoder_become_canonical_events_in_order() {
    let broker = Mosquitto::start();
    let ws = Workspace::new(&format!(
        r#"[host]
mqtt = "{url}"
id = "spb-test"

[plants.plant-north.lookups.machines]
entries = {{ "press-07" = "ASSET-PRESS-07", "gateway-1" = "GW-NORTH-1" }}

[routes.sparkplug]
plant = "plant-north"
source = "mqtt"
sink = "mqtt"
mqtt = {{ topics = ["spBv1.0/plant-north/#"], topic = "events/{{plant}}/{{type}}", order_levels = [2, 4, 5] }}

[[routes.sparkplug.steps]]
plugin = "{plugin}"
grants = ["log", "config", "lookup", "state"]
settings = {{ machines_table = "machines", state_metric = "Machine/State", down_values = ["FAULT"], reason_metric = "Machine/Alarm" }}
"#,
        url = broker.url(),
        plugin = plugin("sparkplug-b").display()
    ));
    let host = ws.start();
    host.wait_ready();
    let t: u64 = 1_764_583_200_000;
    let node = "spBv1.0/plant-north/{}/gateway-1";
    let device = "spBv1.0/plant-north/{}/gateway-1/press-07";
    let mut messages = vec![
        (
            node.replace("{}", "NBIRTH"),
            serde_json::json!({"timestamp": t, "seq": 0, "metrics": [
                {"name": "bdSeq", "datatype": "Int64", "value": 0},
                {"name": "Uptime", "datatype": "UInt64", "value": 1234, "properties": {"engUnit": "s"}}]}),
        ),
        (
            device.replace("{}", "DBIRTH"),
            serde_json::json!({"timestamp": t + 10, "seq": 1, "metrics": [
                {"name": "Machine/State", "alias": 1, "datatype": "String", "value": "RUNNING"},
                {"name": "Machine/Alarm", "alias": 2, "datatype": "String", "value": ""},
                {"name": "Temperature", "alias": 3, "datatype": "Int16", "value": -12, "properties": {"engUnit": "degC"}},
                {"name": "Motor/Speed RPM", "alias": 4, "datatype": "Float", "value": 1450.5},
                {"name": "Counters/Parts", "alias": 5, "datatype": "UInt32", "value": 4000000000u64},
                {"name": "Recipe", "alias": 6, "datatype": "DataSet", "value": {"columns": ["step", "bar"], "types": ["Int32", "Double"], "rows": [[-1, 180.5]]}},
                {"name": "Inputs", "alias": 7, "datatype": "BooleanArray", "value": [true, false, true]}]}),
        ),
    ];
    // Down and up again, back to back: only mediated in arrival order do they pair up.
    let rounds = 25u64;
    for i in 0..rounds {
        let at = t + 1000 * (i + 1);
        messages.push((
            device.replace("{}", "DDATA"),
            serde_json::json!({"timestamp": at, "seq": 2 + 2 * i, "metrics": [
                {"alias": 1, "datatype": "String", "omit_datatype": true, "value": "FAULT"},
                {"alias": 2, "datatype": "String", "omit_datatype": true, "value": format!("E{i:03}")}]}),
        ));
        messages.push((
            device.replace("{}", "DDATA"),
            serde_json::json!({"timestamp": at + 500, "seq": 3 + 2 * i, "metrics": [
                {"alias": 1, "datatype": "String", "omit_datatype": true, "value": "RUNNING"},
                {"alias": 3, "datatype": "Int16", "omit_datatype": true, "value": -40}]}),
        ));
    }
    // Two births (measured), then per round two measured events and two downtime events.
    let want = 2 + 4 * rounds as usize;
    let got = broker.client(&publish_sparkplug(&messages, want));
    let events = got.as_array().unwrap();
    assert_eq!(events.len(), want, "{got:#}");
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["type"] == kind).collect()
    };
    let measured = of("millrace.process.measured.v1");
    assert_eq!(measured.len(), 2 + 2 * rounds as usize);
    let node_birth = measured
        .iter()
        .find(|e| e["data"]["attributes"]["sparkplug"]["message_type"] == "NBIRTH")
        .expect("the node's birth");
    assert_eq!(node_birth["data"]["device"], "GW-NORTH-1");
    assert_eq!(
        node_birth["data"]["values"],
        serde_json::json!({"uptime": 1234})
    );
    assert_eq!(
        node_birth["data"]["units"],
        serde_json::json!({"uptime": "s"})
    );
    let birth = measured
        .iter()
        .find(|e| e["data"]["attributes"]["sparkplug"]["message_type"] == "DBIRTH")
        .expect("the device's birth");
    assert_eq!(birth["data"]["device"], "ASSET-PRESS-07");
    assert_eq!(birth["data"]["measured_at"], "2025-12-01T10:00:00.010Z");
    assert_eq!(
        birth["data"]["values"],
        serde_json::json!({"machine_state": "RUNNING", "machine_alarm": "", "temperature": -12,
            "motor_speed_rpm": 1450.5, "counters_parts": 4_000_000_000u64})
    );
    assert_eq!(
        birth["data"]["attributes"]["Recipe"],
        serde_json::json!({"columns": ["step", "bar"], "types": ["Int32", "Double"], "rows": [[-1, 180.5]]})
    );
    assert_eq!(
        birth["data"]["attributes"]["Inputs"],
        serde_json::json!([true, false, true])
    );
    // DATA by alias only: names and datatypes from the birth (Int16 -40 signed).
    let cold = measured
        .iter()
        .filter(|e| e["data"]["values"]["temperature"] == -40)
        .count();
    assert_eq!(cold, rounds as usize, "every RUNNING sample's temperature");

    let downtime = of("millrace.machine.downtime.v1");
    assert_eq!(downtime.len(), 2 * rounds as usize);
    for i in 0..rounds {
        let started = format!("2025-12-01T10:00:{:02}.000Z", i + 1);
        let ended = format!("2025-12-01T10:00:{:02}.500Z", i + 1);
        let here: Vec<_> = downtime
            .iter()
            .filter(|e| e["data"]["started_at"] == started.as_str())
            .collect();
        assert_eq!(here.len(), 2, "round {i}: opened and finished: {here:#?}");
        assert!(here.iter().any(|e| e["data"].get("ended_at").is_none()));
        assert!(here.iter().any(|e| e["data"]["ended_at"] == ended.as_str()));
        for e in here {
            assert_eq!(e["data"]["machine"], "ASSET-PRESS-07");
            assert_eq!(e["data"]["reason_code"], format!("E{i:03}"));
            assert_eq!(e["subject"], "ASSET-PRESS-07");
        }
    }
    let ids: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "no event twice");
    drop(host);
}
