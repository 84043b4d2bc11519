//! The flows of `examples/flows/`, each run from its own configuration file (broker addresses
//! and the webhook URL replaced) against real brokers (mosquitto 2, RabbitMQ), with independent
//! clients (paho-mqtt, pika) standing in for the gateways, ERP planning and UNS consumers, and a
//! webhook receiver standing in for the CMMS.

use crate::harness::*;
use std::time::Duration;

/// `examples/flows/NAME` copied to a temporary folder, its configuration pointed at the test's
/// brokers and plugins; the folder (kept alive by the returned guard) and the config path.
fn flow(name: &str, replace: &[(&str, String)]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("examples/flows").join(name), dir.path());
    let path = dir.path().join("millrace.toml");
    let mut config = std::fs::read_to_string(&path).unwrap().replace(
        "plugin_dir = \"../../../target/plugins\"",
        &format!(
            "plugin_dir = \"{}\"",
            root().join("target/plugins").display()
        ),
    );
    for (from, to) in replace {
        assert!(config.contains(from), "{name}: no {from:?} to replace");
        config = config.replace(from, to);
    }
    std::fs::write(&path, config).unwrap();
    (dir, path)
}

/// Poll `what` until it gives at least `want` items (a guard of 60 s, not a timing assertion).
fn wait_for<T>(want: usize, mut what: impl FnMut() -> Vec<T>) -> Vec<T> {
    let started = std::time::Instant::now();
    loop {
        let got = what();
        if got.len() >= want || started.elapsed() > Duration::from_secs(60) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_flow_example_is_run_here() {
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples/flows"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["downtime-to-cmms-and-planning", "production-into-uns"],
        "a flow example without a test here"
    );
}

#[test]
fn downtime_from_mqtt_reaches_the_cmms_webhook_and_planning_over_amqp() {
    let mosquitto = Mosquitto::start();
    let rabbit = Broker::shared();
    let cmms = WebhookReceiver::start();
    let (_dir, config) = flow(
        "downtime-to-cmms-and-planning",
        &[
            ("mqtt://127.0.0.1:1883", mosquitto.url()),
            ("amqp://guest:guest@127.0.0.1:5672/%2f", rabbit.url()),
            ("http://127.0.0.1:9090/work-requests", cmms.url.clone()),
        ],
    );
    let host = Host::start(&config, &[]);
    let ready = host.wait_ready();
    assert_eq!(ready.json()["mqtt"], "connected", "{}", ready.body);
    // Provisioning, as the example's README does it: the consumers' queue and bindings.
    rabbit.client(
        "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))\nch = c.channel()\nch.queue_declare('planning.capacity', durable=True)\nch.queue_bind('planning.capacity', 'acme.events', 'millrace.planning.capacity-impact.v1')\nch.queue_bind('cmms.downtime', 'acme.events', 'millrace.machine.downtime.v1')\nprint('{}')",
    );
    // Gateways of two plants, one plant no route serves, one machine no table knows.
    let alarms = [
        (
            "acme/plant-north/line-1/alarms",
            "a-1",
            r#"{"machine":"PRS-07","alarm":"E042","started_at":"2026-11-27T07:12:00+01:00","ended_at":"2026-11-27T07:40:30+01:00"}"#,
        ),
        (
            "acme/plant-south/line-4/alarms",
            "a-2",
            r#"{"machine":"CNC-3","alarm":"M001","started_at":"2026-11-27T10:00:00Z","planned":true}"#,
        ),
        (
            "acme/plant-east/line-1/alarms",
            "a-3",
            r#"{"machine":"PRS-07","alarm":"E042","started_at":"2026-11-27T11:00:00Z"}"#,
        ),
        (
            "acme/plant-north/line-2/alarms",
            "a-4",
            r#"{"machine":"WELD-9","alarm":"E042","started_at":"2026-11-27T06:12:00Z"}"#,
        ),
    ];
    let publishes: Vec<String> = alarms
        .iter()
        .map(|(topic, id, body)| {
            format!(
                "p = Properties(PacketTypes.PUBLISH)\np.UserProperty = ('message-id', {id:?})\np.ContentType = 'application/json'\npub.publish({topic:?}, {body:?}, qos=1, properties=p).wait_for_publish()"
            )
        })
        .collect();
    mosquitto.client(&format!(
        "pub = mqtt.Client(client_id='gateways', protocol=mqtt.MQTTv5)\npub.connect('127.0.0.1', PORT)\npub.loop_start()\n{}\npub.disconnect()\nprint('{{}}')",
        publishes.join("\n")
    ));

    // The CMMS: one work request per downtime, checked by policy-guard on the way.
    let requests = wait_for(2, || cmms.received());
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let mut downtimes: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| {
            assert_eq!(
                r.header("content-type"),
                Some("application/cloudevents+json")
            );
            serde_json::from_str(&r.body).unwrap()
        })
        .collect();
    downtimes.sort_by_key(|e| e["id"].as_str().unwrap_or_default().to_string());
    assert_eq!(downtimes[0]["type"], "millrace.machine.downtime.v1");
    assert_eq!(downtimes[0]["id"], "a-1-downtime");
    assert_eq!(downtimes[0]["data"]["plant"], "plant-north");
    assert_eq!(downtimes[0]["data"]["machine"], "ASSET-PRESS-07");
    assert_eq!(downtimes[0]["data"]["ended_at"], "2026-11-27T06:40:30Z");
    assert_eq!(downtimes[1]["id"], "a-2-downtime");
    assert_eq!(
        downtimes[1]["data"]["plant"], "plant-south",
        "the plant from the topic"
    );
    assert_eq!(downtimes[1]["data"]["category"], "planned");
    assert_eq!(downtimes[1]["source"], "/plants/plant-south/iot-gateway");

    // Planning: the capacity impacts from its own queue, read by pika.
    let planning = rabbit.client(
        "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))\nch = c.channel()\ngot = []\ndeadline = time.time() + 60\nwhile len(got) < 2 and time.time() < deadline:\n    m, p, body = ch.basic_get('planning.capacity', auto_ack=True)\n    if m is None:\n        time.sleep(0.1)\n        continue\n    got.append({'type': p.content_type, 'event': json.loads(body)})\nprint(json.dumps(got))",
    );
    let mut planning: Vec<serde_json::Value> = planning.as_array().unwrap().clone();
    planning.sort_by_key(|m| m["event"]["id"].as_str().unwrap_or_default().to_string());
    assert_eq!(planning.len(), 2, "{planning:#?}");
    assert_eq!(planning[0]["type"], "application/cloudevents+json");
    assert_eq!(
        planning[0]["event"]["type"],
        "millrace.planning.capacity-impact.v1"
    );
    assert_eq!(planning[0]["event"]["data"]["lost_minutes"], 28.5);
    assert_eq!(
        planning[0]["event"]["data"]["cause"]["event_id"],
        "a-1-downtime"
    );
    assert_eq!(planning[1]["event"]["data"]["plant"], "plant-south");

    // The unknown machine is a dead letter of the plant its topic names; the plant no route
    // serves was acknowledged and dropped (logged), nothing of it anywhere.
    let listed = run_in(config.parent().unwrap(), &["dlq", "list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let dead: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["message_id"], "a-4");
    assert_eq!(dead[0]["plant"], "plant-north");
    assert_eq!(dead[0]["route"], "alarms-north");
    assert_eq!(rabbit.depth("cmms.downtime"), 0);
    assert_eq!(rabbit.depth("millrace.cmms.dead-letter"), 0);
    drop(host);
}

#[test]
fn production_completions_are_published_into_the_plants_unified_namespace() {
    let mosquitto = Mosquitto::start();
    let (dir, config) = flow(
        "production-into-uns",
        &[("mqtt://127.0.0.1:1883", mosquitto.url())],
    );
    let host = Host::start(&config, &[]);
    host.wait_ready();
    // A UNS consumer that is already there sees the stream (and the state copies).
    let live = mosquitto.spawn_client(&format!(
        "got = []\nsub = mqtt.Client(client_id='historian', protocol=mqtt.MQTTv5)\nsub.on_message = lambda c, u, m: got.append({{'topic': m.topic, 'retain': bool(m.retain), 'event': json.loads(m.payload)}})\nsub.connect('127.0.0.1', PORT)\nsub.subscribe('acme/north/#', qos=1)\nsub.loop_start()\ndeadline = time.time() + 60\nwhile len(got) < 4 and time.time() < deadline:\n    time.sleep(0.05)\nopen({out:?}, 'w').write(json.dumps(got))",
        out = dir.path().join("live.json").display().to_string()
    ));
    std::thread::sleep(Duration::from_millis(500));
    let reply = host.post(
        "mes-confirmations",
        Some("text/plain"),
        std::fs::read(dir.path().join("samples/02-batch-with-header.txt")).unwrap(),
    );
    // Taken into the durable outbox, published from there.
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["accepted"], 2);
    let mut live = live;
    assert!(live.wait().unwrap().success());
    let got: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("live.json")).unwrap())
            .unwrap();
    let kind = "millrace.production.completed.v1";
    let stream: Vec<_> = got
        .iter()
        .filter(|m| m["topic"] == format!("acme/north/assembly/line-1/{kind}"))
        .collect();
    assert_eq!(
        stream.len(),
        2,
        "two completions on the stream topic: {got:#?}"
    );
    assert!(stream.iter().all(|m| m["retain"] == false));
    let mut orders: Vec<&str> = stream
        .iter()
        .map(|m| m["event"]["subject"].as_str().unwrap_or_default())
        .collect();
    orders.sort();
    assert_eq!(orders, ["WO-1001", "WO-1002"]);

    // A consumer that comes later gets each work order's latest completion, retained.
    let retained = mosquitto.client(
        "got = []\nsub = mqtt.Client(client_id='dashboard', protocol=mqtt.MQTTv5)\nsub.on_message = lambda c, u, m: got.append({'topic': m.topic, 'retain': bool(m.retain), 'subject': json.loads(m.payload)['subject']})\nsub.connect('127.0.0.1', PORT)\nsub.subscribe('acme/north/#', qos=1)\nsub.loop_start()\ndeadline = time.time() + 10\nwhile len(got) < 2 and time.time() < deadline:\n    time.sleep(0.05)\ntime.sleep(0.5)\nprint(json.dumps(sorted(got, key=lambda m: m['topic'])))",
    );
    assert_eq!(
        retained,
        serde_json::json!([
            {"topic": format!("acme/north/assembly/line-1/{kind}/WO-1001"), "retain": true, "subject": "WO-1001"},
            {"topic": format!("acme/north/assembly/line-1/{kind}/WO-1002"), "retain": true, "subject": "WO-1002"},
        ])
    );
    drop(host);
}
