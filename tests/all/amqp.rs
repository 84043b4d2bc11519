//! AMQP transport against a real RabbitMQ node, driven by a client that is not ours (pika):
//! confirmed outputs on the sink exchange with their ids and routing keys, poison messages on
//! the route's dead-letter queue with headers saying why, every input acknowledged.

use crate::harness::*;

/// pika: a confirming channel `ch`, and queue `out` bound to everything the route publishes.
const CONNECT: &str = "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.confirm_delivery()
ch.queue_declare('out', durable=True)
ch.queue_bind('out', 'plant-a.events', '#')
";

fn workspace(broker: &Broker) -> Workspace {
    let mes = plugin("mes-fixed-width");
    let route = route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "")
        .replace("source = \"http\"", "source = \"amqp\"")
        .replace(
            "sink = \"reply\"",
            "sink = \"amqp\"\namqp = { queue = \"plant-a.mes\", exchange = \"plant-a.events\", routing_key = \"{plant}.{type}\" }",
        );
    Workspace::new(&format!(
        "[host]\namqp = \"{}\"\n\n[plants.plant-a.lookups.work_centres]\nentries = {{ WC01 = \"ASSY-01\" }}\n\n{route}\n{}",
        broker.url(),
        mes_settings("mes")
    ))
}

#[test]
fn broker_route_publishes_confirmed_outputs_and_dead_letters_poison_with_headers() {
    let broker = Broker::start();
    let ws = workspace(&broker);
    let host = ws.start();
    let good = record("WO-1", "0000001000", "WC01");
    let bad = record("WO-2", "00001A500 ", "WC01");
    let program = format!(
        r#"
{CONNECT}for mid, body in [('m-1', {good:?}), ('m-2', {bad:?}), ('m-3', {good:?})]:
    ch.basic_publish('', 'plant-a.mes', body.encode(), pika.BasicProperties(message_id=mid, content_type='text/plain', delivery_mode=2))
outputs, dead = [], []
deadline = time.time() + 30
while (len(outputs) < 2 or len(dead) < 1) and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: outputs.append({{'key': m.routing_key, 'id': p.message_id, 'type': p.content_type, 'mode': p.delivery_mode, 'event': json.loads(b)}})
    m, p, b = ch.basic_get('millrace.mes.dead-letter', auto_ack=True)
    if m: dead.append({{'id': p.message_id, 'headers': {{k: (v.decode() if isinstance(v, bytes) else v) for k, v in p.headers.items()}}, 'body': b.decode()}})
    if not m: time.sleep(0.05)
time.sleep(0.5)
left = ch.queue_declare('plant-a.mes', passive=True).method.message_count
print(json.dumps({{'outputs': outputs, 'dead': dead, 'left': left}}))
"#
    );
    let got = broker.client(&program);
    let outputs = got["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "{got}");
    assert_eq!(outputs[0]["id"], "m-1-1");
    assert_eq!(outputs[1]["id"], "m-3-1");
    assert_eq!(
        outputs[0]["key"],
        "plant-a.millrace.production.completed.v1"
    );
    assert_eq!(outputs[0]["type"], "application/cloudevents+json");
    assert_eq!(outputs[0]["mode"], 2, "persistent");
    assert_eq!(outputs[0]["event"]["data"]["work_centre"], "ASSY-01");
    let dead = got["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{got}");
    let headers = &dead[0]["headers"];
    assert_eq!(dead[0]["id"], "m-2");
    assert_eq!(dead[0]["body"], bad.as_str());
    assert_eq!(headers["x-millrace-kind"], "rejected");
    assert_eq!(headers["x-millrace-plugin"], "mes-fixed-width");
    assert_eq!(headers["x-millrace-version"], "1.0.0");
    assert!(
        headers["x-millrace-digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(headers["x-millrace-step"], "1");
    assert_eq!(headers["x-millrace-original-routing-key"], "plant-a.mes");
    assert!(
        headers["x-millrace-reason"]
            .as_str()
            .unwrap()
            .contains("quantity")
    );
    assert!(headers["x-millrace-first-failure"].is_string());
    assert_eq!(got["left"], 0, "every input was acknowledged");
    assert!(host.stop().success(), "SIGTERM stops consuming and exits 0");
}

#[test]
fn an_unreachable_broker_fails_the_start_with_the_cause() {
    let broker = Broker::start();
    let ws = workspace(&broker);
    let port = broker.port;
    drop(broker);
    let out = ws.millrace(&["run", "--http", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("check host.amqp"),
        "{text}"
    );
}

#[test]
fn a_redelivered_message_that_was_settled_gives_no_second_output() {
    let broker = Broker::start();
    let ws = workspace(&broker);
    let _host = ws.start();
    let good = record("WO-5", "0000001000", "WC01");
    // The same message-id twice: what the broker does when a host died after settling a
    // delivery but before its ack arrived.
    let program = format!(
        r#"
{CONNECT}props = pika.BasicProperties(message_id='m-5', content_type='text/plain', delivery_mode=2)
ch.basic_publish('', 'plant-a.mes', {good:?}.encode(), props)
time.sleep(1.0)
ch.basic_publish('', 'plant-a.mes', {good:?}.encode(), props)
ch.basic_publish('', 'plant-a.mes', {good:?}.encode(), pika.BasicProperties(message_id='m-6', content_type='text/plain', delivery_mode=2))
ids = []
deadline = time.time() + 30
while 'm-6-1' not in ids and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: ids.append(p.message_id)
    else: time.sleep(0.05)
time.sleep(1.0)
while True:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if not m: break
    ids.append(p.message_id)
left = ch.queue_declare('plant-a.mes', passive=True).method.message_count
print(json.dumps({{'ids': ids, 'left': left}}))
"#
    );
    let got = broker.client(&program);
    assert_eq!(got["ids"], serde_json::json!(["m-5-1", "m-6-1"]), "{got}");
    assert_eq!(got["left"], 0, "the repeat was acknowledged");
}
