//! AMQP transport against a real RabbitMQ node, driven by a client that is not ours (pika):
//! confirmed outputs on the sink exchange with their ids and routing keys, poison messages on
//! the route's dead-letter queue with headers saying why, every input acknowledged; retries
//! through the delay queues; replay from the dead-letter queue; a host that starts without its
//! broker and connects when it comes, and one whose broker node never answers; the outbox of an
//! HTTP route while the broker is away.

use crate::harness::*;

/// pika: a confirming channel `ch`, and queue `out` bound to everything the route publishes.
const CONNECT: &str = "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.confirm_delivery()
ch.exchange_declare('plant-a.events', 'topic', durable=True)
ch.queue_declare('out', durable=True)
ch.queue_bind('out', 'plant-a.events', '#')
";

/// A queue-to-exchange route `mes` with mes-fixed-width; `amqp` adds keys to its broker table,
/// `entries` are the work centres its lookup table knows.
fn workspace_with(broker: &Broker, amqp: &str, entries: &str) -> Workspace {
    let mes = plugin("mes-fixed-width");
    let route = route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "")
        .replace("source = \"http\"", "source = \"amqp\"")
        .replace(
            "sink = \"reply\"",
            &format!("sink = \"amqp\"\namqp = {{ queue = \"plant-a.mes\", exchange = \"plant-a.events\", routing_key = \"{{plant}}.{{type}}\"{amqp} }}"),
        );
    Workspace::new(&format!(
        "[host]\namqp = \"{}\"\n\n[plants.plant-a.lookups.work_centres]\nentries = {{ {entries} }}\n\n{route}\n{}",
        broker.url(),
        mes_settings("mes")
    ))
}

/// pika: publish `body` as `id` to the route's queue, then wait (30 s at most) for the first
/// output and leave its id in `ids`.
fn publish_and_take_output(id: &str, body: &str) -> String {
    format!(
        r#"{CONNECT}ch.basic_publish('', 'plant-a.mes', {body:?}.encode(), pika.BasicProperties(message_id='{id}', content_type='text/plain', delivery_mode=2))
ids = []
deadline = time.time() + 30
while not ids and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: ids.append(p.message_id)
    else: time.sleep(0.05)
"#
    )
}

/// A good record published as `id` comes out of the route as output `id-1`.
fn assert_mediated(broker: &Broker, id: &str) {
    let good = record("WO-7", "0000001000", "WC01");
    let got = broker.client(&format!(
        "{}print(json.dumps({{'ids': ids}}))\n",
        publish_and_take_output(id, &good)
    ));
    assert_eq!(got["ids"], serde_json::json!([format!("{id}-1")]), "{got}");
}

/// `(id, body)` pairs as the items of a Python list literal.
fn python_pairs(messages: &[(impl AsRef<str>, impl AsRef<str>)]) -> String {
    messages
        .iter()
        .map(|(id, body)| format!("({:?}, {:?})", id.as_ref(), body.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// pika: publish `messages` (id, body) to the route's queue, then take outputs from `out` and
/// dead letters from the route's dead-letter queue until there are `outputs` and `dead` of them
/// (30 s at most): `{"outputs": [{key, id, type, mode, headers (null when none), event}],
/// "dead": [{id, headers, body}]}`, header values as text.
fn publish_and_collect(
    broker: &Broker,
    messages: &[(&str, &str)],
    outputs: usize,
    dead: usize,
) -> serde_json::Value {
    let list = python_pairs(messages);
    broker.client(&format!(
        r#"
{CONNECT}def text(headers):
    return None if headers is None else {{k: (v.decode() if isinstance(v, bytes) else v) for k, v in headers.items()}}
for mid, body in [{list}]:
    ch.basic_publish('', 'plant-a.mes', body.encode(), pika.BasicProperties(message_id=mid, content_type='text/plain', delivery_mode=2))
outputs, dead = [], []
deadline = time.time() + 30
while (len(outputs) < {outputs} or len(dead) < {dead}) and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: outputs.append({{'key': m.routing_key, 'id': p.message_id, 'type': p.content_type, 'mode': p.delivery_mode, 'headers': text(p.headers), 'event': json.loads(b)}})
    m, p, b = ch.basic_get('millrace.mes.dead-letter', auto_ack=True)
    if m: dead.append({{'id': p.message_id, 'headers': text(p.headers) or {{}}, 'body': b.decode()}})
    if not m: time.sleep(0.05)
print(json.dumps({{'outputs': outputs, 'dead': dead}}))
"#
    ))
}

/// Replace the first `from` in the workspace configuration with `to`.
fn edit_config(ws: &Workspace, from: &str, to: &str) {
    let config = std::fs::read_to_string(ws.config()).unwrap();
    assert!(config.contains(from), "{from:?} is in the configuration");
    ws.write("millrace.toml", &config.replacen(from, to, 1));
}

/// Add `line` to the workspace configuration's `[host]` section.
fn host_setting(ws: &Workspace, line: &str) {
    edit_config(ws, "[host]\n", &format!("[host]\n{line}\n"));
}

fn workspace(broker: &Broker) -> Workspace {
    workspace_with(broker, "", "WC01 = \"ASSY-01\"")
}

#[test]
fn broker_route_publishes_confirmed_outputs_and_dead_letters_poison_with_headers() {
    let broker = Broker::shared();
    let ws = workspace(&broker);
    let host = ws.start();
    host.wait_ready();
    let good = record("WO-1", "0000001000", "WC01");
    let bad = record("WO-2", "00001A500 ", "WC01");
    let messages = [("m-1", good.as_str()), ("m-2", &bad), ("m-3", &good)];
    let got = publish_and_collect(&broker, &messages, 2, 1);
    let outputs = got["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "{got}");
    // Deliveries are mediated concurrently (prefetch 32): the two may come in either order.
    let mut ids: Vec<&str> = outputs.iter().map(|o| o["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["m-1-1", "m-3-1"]);
    assert_eq!(
        outputs[0]["key"],
        "plant-a.millrace.production.completed.v1"
    );
    assert_eq!(outputs[0]["type"], "application/cloudevents+json");
    assert_eq!(outputs[0]["mode"], 2, "persistent");
    assert_eq!(outputs[0]["event"]["data"]["work_centre"], "ASSY-01");
    let headers = &outputs[0]["headers"];
    assert_eq!(headers["millrace-plant"], "plant-a", "{got}");
    assert_eq!(headers["millrace-route"], "mes");
    assert!(
        headers["millrace-lineage"]
            .as_str()
            .unwrap()
            .starts_with("mes-fixed-width@1.1.0+sha256:"),
        "{got}"
    );
    let dead = got["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{got}");
    let headers = &dead[0]["headers"];
    assert_eq!(dead[0]["id"], "m-2");
    assert_eq!(dead[0]["body"], bad.as_str());
    assert_eq!(headers["x-millrace-kind"], "rejected");
    assert_eq!(headers["x-millrace-plugin"], "mes-fixed-width");
    assert_eq!(headers["x-millrace-version"], "1.1.0");
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
    assert_eq!(headers["x-millrace-attempts"], 1);
    assert!(host.stop().success(), "SIGTERM stops consuming and exits 0");
    // With the host gone, a delivery it never acknowledged would be back in the queue.
    assert_eq!(
        broker.depth("plant-a.mes"),
        0,
        "every input was acknowledged"
    );
    assert_eq!(broker.depth("out"), 0, "no output beyond the two");
    assert_eq!(
        broker.depth("millrace.mes.dead-letter"),
        0,
        "one dead letter"
    );
}

/// With the headers off and the provenance in the event, an output has no header table and
/// says where it came from in its own attributes.
#[test]
fn with_output_headers_off_an_output_has_no_header_table_and_a_dead_letter_keeps_its_headers() {
    let broker = Broker::shared();
    let ws = workspace(&broker);
    host_setting(&ws, "amqp_output_headers = false");
    host_setting(&ws, "amqp_event_provenance = true");
    let host = ws.start();
    host.wait_ready();
    let good = record("WO-1", "0000001000", "WC01");
    let bad = record("WO-2", "00001A500 ", "WC01");
    let got = publish_and_collect(&broker, &[("m-1", &good), ("m-2", &bad)], 1, 1);
    let outputs = got["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{got}");
    assert_eq!(outputs[0]["id"], "m-1-1");
    assert_eq!(outputs[0]["event"]["data"]["work_centre"], "ASSY-01");
    assert!(
        outputs[0]["headers"].is_null(),
        "no header table on the output: {got}"
    );
    // Dead letters say why whatever the setting.
    let dead = got["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{got}");
    assert!(
        dead[0]["headers"].get("x-millrace-reason").is_some(),
        "{got}"
    );
    let event = &outputs[0]["event"];
    assert_eq!(event["millraceplant"], "plant-a", "{got}");
    assert_eq!(event["millraceroute"], "mes", "{got}");
    let lineage = event["millracelineage"].as_str().unwrap_or_default();
    assert!(lineage.starts_with("mes-fixed-width@"), "{got}");
    assert_eq!(lineage, dead[0]["headers"]["x-millrace-lineage"], "{got}");
    assert!(host.stop().success());
}

#[test]
fn a_delivery_over_the_routes_max_body_is_dead_lettered_unmediated_and_the_next_is_served() {
    let broker = Broker::shared();
    let ws = workspace(&broker);
    edit_config(&ws, "sink = \"amqp\"", "max_body_kib = 1\nsink = \"amqp\"");
    let host = ws.start();
    host.wait_ready();
    let good = record("WO-1", "0000001000", "WC01");
    // 26 good records, 2 KiB: mediated, it would give 26 outputs.
    let big = vec![good.clone(); 26].join("\n");
    assert!(big.len() > 1024);
    let got = publish_and_collect(&broker, &[("m-big", &big), ("m-1", &good)], 1, 1);
    let outputs: Vec<&serde_json::Value> = got["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["id"])
        .collect();
    assert_eq!(outputs, ["m-1-1"], "{got}");
    let dead = got["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{got}");
    assert_eq!(dead[0]["id"], "m-big");
    assert_eq!(dead[0]["body"], big.as_str(), "the message kept whole");
    let headers = &dead[0]["headers"];
    assert_eq!(headers["x-millrace-kind"], "limit", "{got}");
    assert_eq!(headers["x-millrace-plugin"], "", "no step ran: {got}");
    let reason = headers["x-millrace-reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("{} bytes", big.len())) && reason.contains("max_body_kib (1 KiB)"),
        "{reason}"
    );
    assert!(host.stop().success());
    assert_eq!(broker.depth("plant-a.mes"), 0, "both acknowledged");
    assert_eq!(broker.depth("out"), 0, "no output of the big one");
}

#[test]
fn a_host_started_without_its_broker_is_not_ready_then_connects_and_consumes() {
    let mut broker = Broker::start();
    let ws = workspace(&broker);
    broker.stop();
    let host = ws.start();
    // Until the first try has failed the reason is "not connected yet"; then it names the broker.
    let mut detail = String::new();
    for _ in 0..600 {
        let waiting = host.request("GET", "/readyz", None, &[], b"");
        assert_eq!(waiting.status, 503, "{}", waiting.body);
        detail = waiting.json()["detail"].as_str().unwrap().to_string();
        if detail.contains("127.0.0.1") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        detail.contains(&format!("127.0.0.1:{}", broker.port)) && !detail.contains(":guest@"),
        "names the broker without its password: {detail}"
    );
    assert_eq!(
        host.request("GET", "/healthz", None, &[], b"").status,
        200,
        "alive while not ready"
    );
    broker.restart();
    let ready = host.wait_ready();
    assert_eq!(ready.json()["broker"], "connected");
    assert_mediated(&broker, "m-7");
}

/// A node that takes the TCP connection and never answers (hung, or a proxy in front of a dead
/// node): a host told to stop while it connects there stops without waiting for it, and a host
/// with another node in `host.amqp` gives the silent one up and connects to the next.
#[test]
fn a_node_that_takes_the_connection_and_never_answers_holds_neither_the_stop_nor_the_next_node() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let silent_url = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        silent.local_addr().unwrap().port()
    );
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in silent.incoming().map_while(Result::ok) {
            held.push(connection);
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });

    // Only the silent node: stopped while its first connection is being opened.
    let ws = crate::amqp_faults::mes_stream_workspace(&format!("amqp = {silent_url:?}"), 16);
    let mut host = ws.start();
    // A guard against a host that never connects, not a timing assertion.
    for _ in 0..1200 {
        if accepted.load(Ordering::SeqCst) > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(accepted.load(Ordering::SeqCst) > 0, "the host connects");
    assert!(host.stop_in_place().success(), "exit 0 after SIGTERM");
    let log = host.drain_log();
    assert!(
        !log.iter()
            .any(|l| l.contains("stopping with work unfinished")),
        "the stop did not wait for the connection being opened:\n{}",
        log.join("\n")
    );

    // The silent node first, then a real one: given up for the real one, which serves.
    let broker = Broker::shared();
    let ws = crate::amqp_faults::mes_stream_workspace(
        &format!("amqp = [{silent_url:?}, {:?}]", broker.url()),
        16,
    );
    let mut host = ws.start();
    let ready = host.wait_ready();
    assert_eq!(ready.json()["broker"], "connected");
    host.wait_for_log("the connection did not open within");
    assert_mediated(&broker, "m-8");
    assert!(host.stop().success());
}

/// A broker that stops answering (its process frozen with SIGSTOP: connections stay open, nothing
/// is answered) does not hold a host's stop: the host gives up waiting for the close of its
/// channels and its connection and exits.
#[test]
fn a_host_whose_broker_stops_answering_still_stops() {
    let broker = Broker::start();
    let ws = workspace(&broker);
    let mut host = ws.start();
    host.wait_ready();
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill")
            .args([name, &broker.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill {name}");
    };
    signal("-STOP");
    let stopped = host.stop_in_place();
    signal("-CONT");
    assert!(stopped.success(), "exit 0 after SIGTERM");
    let log = host.drain_log();
    assert!(
        log.iter()
            .any(|l| l.contains("the broker did not answer the connection's close")),
        "the close was not answered, and not waited for past its bound:\n{}",
        log.join("\n")
    );
    assert!(
        !log.iter()
            .any(|l| l.contains("stopping with work unfinished")),
        "stopping needed no more than its own bounds:\n{}",
        log.join("\n")
    );
}

#[test]
fn a_redelivered_message_that_was_settled_gives_no_second_output() {
    let broker = Broker::shared();
    let ws = workspace(&broker);
    host_setting(&ws, "admin = \"127.0.0.1:0\"");
    let config = std::fs::read_to_string(ws.config()).unwrap();
    std::fs::write(ws.config(), config + &test_admin_tokens()).unwrap();
    let mut host = ws.start();
    host.wait_ready();
    let good = record("WO-5", "0000001000", "WC01");
    let collect = |until: &str| {
        format!(
            r#"
deadline = time.time() + 30
while '{until}' not in ids and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: ids.append(p.message_id)
    else: time.sleep(0.05)
"#
        )
    };
    // The same message-id twice: what the broker does when a host died after settling a
    // delivery but before its ack arrived.
    let first = broker.client(&format!(
        r#"
{CONNECT}props = pika.BasicProperties(message_id='m-5', content_type='text/plain', delivery_mode=2)
ch.basic_publish('', 'plant-a.mes', {good:?}.encode(), props)
ids = []
{}
print(json.dumps({{'ids': ids}}))
"#,
        collect("m-5-1")
    ));
    assert_eq!(first["ids"], serde_json::json!(["m-5-1"]), "{first}");
    // Settled: the input's latency is counted once its id is recorded and it is acknowledged.
    crate::hot_reload::eventually("m-5 settled", || {
        let text = host.admin("GET", "/metrics", b"").body;
        (crate::metrics::value(&text, "input_latency_ns_count", &[("route", "mes")]) >= 1.0)
            .then_some(())
    });
    let program = format!(
        r#"
{CONNECT}props = pika.BasicProperties(message_id='m-5', content_type='text/plain', delivery_mode=2)
ch.basic_publish('', 'plant-a.mes', {good:?}.encode(), props)
ch.basic_publish('', 'plant-a.mes', {good:?}.encode(), pika.BasicProperties(message_id='m-6', content_type='text/plain', delivery_mode=2))
ids = []
{}
time.sleep(1.0)
while True:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if not m: break
    ids.append(p.message_id)
print(json.dumps({{'ids': ids}}))
"#,
        collect("m-6-1")
    );
    let got = broker.client(&program);
    assert_eq!(got["ids"], serde_json::json!(["m-6-1"]), "{got}");
    assert!(host.stop_in_place().success());
    assert_eq!(
        broker.depth("plant-a.mes"),
        0,
        "the repeat was acknowledged, not left unacknowledged"
    );
    assert_eq!(
        broker.depth("out"),
        0,
        "and made no output after the host stopped"
    );
    host.wait_for_log("already settled: acknowledged without a second run");
    // A host started again on the same data reads the settled ids into its filter of them, and
    // a repeat then is still known without a second run.
    let mut again = ws.start();
    again.wait_ready();
    again.wait_for_log("settled ids read into the filter");
    let got = broker.client(&program.replace("m-6", "m-7"));
    assert_eq!(got["ids"], serde_json::json!(["m-7-1"]), "{got}");
    again.wait_for_log("already settled: acknowledged without a second run");
    assert!(again.stop().success());
    assert_eq!(broker.depth("plant-a.mes"), 0);
}

#[test]
fn transient_failures_are_retried_through_the_delay_queues_then_dead_lettered_when_attempts_run_out()
 {
    let broker = Broker::shared();
    let webhook = WebhookReceiver::start();
    let mes = plugin("mes-fixed-width");
    let route = route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "")
        .replace("source = \"http\"", "source = \"amqp\"")
        .replace(
            "sink = \"reply\"",
            "sink = \"http\"\namqp = { queue = \"plant-a.mes\", max_attempts = 3, retry_delay_ms = 100 }",
        );
    let ws = Workspace::new(&format!(
        "[host]\namqp = \"{}\"\n\n[plants.plant-a.lookups.work_centres]\nentries = {{ WC01 = \"ASSY-01\" }}\n\n{route}\n[routes.mes.webhook]\nurl = \"{}\"\ntimeout_ms = 2000\n\n{}",
        broker.url(),
        webhook.url,
        mes_settings("mes")
    ));
    webhook.answer_with(503);
    let mut host = ws.start();
    host.wait_ready();
    let good = |wo: &str| record(wo, "0000001000", "WC01");
    // m-1: the webhook refuses every attempt; the third goes to the dead-letter queue.
    let got = broker.client(&format!(
        r#"
{CONNECT}ch.basic_publish('', 'plant-a.mes', {:?}.encode(), pika.BasicProperties(message_id='m-1', content_type='text/plain', delivery_mode=2))
dead = []
deadline = time.time() + 60
while not dead and time.time() < deadline:
    m, p, b = ch.basic_get('millrace.mes.dead-letter', auto_ack=True)
    if m: dead.append({{k: (v.decode() if isinstance(v, bytes) else v) for k, v in p.headers.items() if k != 'x-death'}})
    else: time.sleep(0.05)
print(json.dumps({{'dead': dead}}))
"#,
        good("WO-1")
    ));
    let dead = &got["dead"][0];
    assert_eq!(dead["x-millrace-kind"], "attempts-exhausted", "{got}");
    assert_eq!(dead["x-millrace-attempts"], 3);
    assert!(
        dead["x-millrace-reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempt(s)"),
        "{got}"
    );
    assert_eq!(dead["x-millrace-original-routing-key"], "plant-a.mes");
    // Every attempt reached the webhook and was refused; none was taken.
    let attempts: Vec<u16> = webhook.requests().iter().map(|r| r.status).collect();
    assert_eq!(attempts, [503, 503, 503], "one request per attempt");
    assert!(webhook.received().is_empty());
    // Attempts 1 and 2 were parked for a retry; the third was dead-lettered.
    host.wait_for_log_where(
        |l| l.contains("attempts used up") && l.contains("message_id=m-1"),
        "m-1 dead-lettered",
    );
    let waits: Vec<String> = host
        .drain_log()
        .into_iter()
        .filter(|l| l.contains("retrying later") && l.contains("message_id=m-1"))
        .collect();
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert!(
        waits[0].contains("attempt=1") && waits[1].contains("attempt=2"),
        "{waits:?}"
    );

    // m-2: refused once, then the webhook is back; the retry delivers it, once. (Set before
    // m-2 is sent: the retry comes 100 ms after the refusal.)
    webhook.refuse_next(1, 503);
    webhook.answer_with(200);
    broker.client(&format!(
        r#"
{CONNECT}ch.basic_publish('', 'plant-a.mes', {:?}.encode(), pika.BasicProperties(message_id='m-2', content_type='text/plain', delivery_mode=2))
print('{{}}')
"#,
        good("WO-2")
    ));
    let line = host.wait_for_log_where(
        |l| l.contains("retrying later") && l.contains("message_id=m-2"),
        "m-2 parked for a retry",
    );
    assert!(line.contains("attempt=1"), "{line}");
    // A guard against a lost message, not a timing assertion.
    for _ in 0..600 {
        if !webhook.received().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Once the host has stopped nothing more can arrive: exactly one delivery was taken.
    assert!(host.stop_in_place().success());
    let received = webhook.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].header("idempotency-key"), Some("m-2-1"));
    let m2: Vec<u16> = webhook
        .requests()
        .iter()
        .filter(|r| r.header("idempotency-key") == Some("m-2-1"))
        .map(|r| r.status)
        .collect();
    assert_eq!(m2, [503, 200], "refused once, then taken by the retry");
    assert_eq!(broker.depth("plant-a.mes"), 0, "both inputs acknowledged");
    assert_eq!(
        broker.depth("millrace.mes.dead-letter"),
        0,
        "m-1's dead letter was read"
    );
}

#[test]
fn dead_letters_are_replayed_from_the_broker_after_the_chain_is_fixed() {
    let broker = Broker::shared();
    // WC02 is not in the table yet: its message is rejected.
    let ws = workspace(&broker);
    let host = ws.start();
    host.wait_ready();
    let unknown = record("WO-8", "0000001000", "WC02");
    let count = |queue: &str| {
        broker.client(&format!(
            "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))\nprint(c.channel().queue_declare('{queue}', passive=True).method.message_count)"
        ))
    };
    broker.client(&format!(
        r#"
{CONNECT}ch.basic_publish('', 'plant-a.mes', {unknown:?}.encode(), pika.BasicProperties(message_id='m-8', content_type='text/plain', delivery_mode=2))
deadline = time.time() + 30
while ch.queue_declare('millrace.mes.dead-letter', passive=True).method.message_count < 1 and time.time() < deadline:
    time.sleep(0.05)
print('{{}}')
"#
    ));
    assert!(host.stop().success());
    // The table gains WC02.
    let fixed = workspace_with(&broker, "", "WC01 = \"ASSY-01\", WC02 = \"ASSY-02\"");
    std::fs::copy(fixed.config(), ws.config()).unwrap();

    let dry = ws.millrace(&["dlq", "replay", "--route", "mes", "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{text}");
    assert!(text.contains("would deliver 1 output(s)"), "{text}");
    assert!(text.contains("ASSY-02"), "{text}");
    assert_eq!(
        count("millrace.mes.dead-letter"),
        1,
        "a dry run takes nothing"
    );

    let replay = ws.millrace(&["dlq", "replay", "--route", "mes"]);
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{text}");
    assert!(text.contains("1 replayed into plant-a.mes"), "{text}");
    assert_eq!(count("millrace.mes.dead-letter"), 0);

    // The host, started with the fixed table, mediates the replayed message: the output has
    // the id a first delivery would have had.
    let host = ws.start();
    host.wait_ready();
    let got = broker.client(&format!(
        r#"
{CONNECT}ids, keys = [], []
deadline = time.time() + 30
while not ids and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m:
        ids.append(p.message_id)
        keys.append(json.loads(b)['data']['work_centre'])
    else: time.sleep(0.05)
print(json.dumps({{'ids': ids, 'centres': keys}}))
"#
    ));
    assert_eq!(got["ids"], serde_json::json!(["m-8-1"]), "{got}");
    assert_eq!(got["centres"], serde_json::json!(["ASSY-02"]));
    assert_eq!(
        count("millrace.mes.dead-letter"),
        0,
        "it did not fail again"
    );
    drop(host);
}

#[test]
fn a_wasi_step_waiting_on_the_clock_runs_in_a_dry_run_of_dead_letters_and_in_plugin_test() {
    use crate::hostile::{WatPlugin, clock_wait};
    let broker = Broker::shared();
    let dir = tempfile::tempdir().unwrap();
    let config = |plugin: &std::path::Path| {
        let route = route_toml("wat", plugin, r#"["wasi"]"#, "")
            .replace("source = \"http\"", "source = \"amqp\"")
            .replace(
                "sink = \"reply\"",
                "sink = \"amqp\"\namqp = { queue = \"plant-a.wat\", exchange = \"plant-a.events\" }",
            );
        format!(
            "[host]\namqp = \"{}\"\n\n[plants.plant-a]\n\n{route}",
            broker.url()
        )
    };
    // A step that traps: the message is dead-lettered.
    let traps = WatPlugin {
        mediate_traps: true,
        ..WatPlugin::default()
    }
    .write(dir.path(), "traps.wasm");
    let ws = Workspace::new(&config(&traps));
    let host = ws.start();
    host.wait_ready();
    let dead = broker.client(&format!(
        r#"
{CONNECT}ch.basic_publish('', 'plant-a.wat', b'x', pika.BasicProperties(message_id='m-1', content_type='text/plain', delivery_mode=2))
deadline = time.time() + 30
while ch.queue_declare('millrace.wat.dead-letter', passive=True).method.message_count < 1 and time.time() < deadline:
    time.sleep(0.05)
print(json.dumps(ch.queue_declare('millrace.wat.dead-letter', passive=True).method.message_count))
"#
    ));
    assert_eq!(dead, 1, "the message is dead-lettered");
    assert!(host.stop().success());

    // The fixed step is a WASI guest that waits on the clock (1 ms) in every call, as a
    // runtime's `sleep` does: its dry run must run the chain, not fail on the CLI's runtime.
    let waits = WatPlugin {
        extra: clock_wait(1_000_000),
        mediate_calls: Some("block"),
        ..WatPlugin::default()
    }
    .write(dir.path(), "waits.wasm");
    ws.write("millrace.toml", &config(&waits));
    let dry = ws.millrace(&["dlq", "replay", "--route", "wat", "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    let errors = String::from_utf8_lossy(&dry.stderr);
    assert!(dry.status.success(), "{text}\n{errors}");
    assert!(text.contains("would deliver 1 output(s)"), "{text}");
    let left = broker.client(
        "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))\nprint(c.channel().queue_declare('millrace.wat.dead-letter', passive=True).method.message_count)",
    );
    assert_eq!(left, 1, "a dry run takes nothing");

    // So does a local run of the same component.
    std::fs::write(dir.path().join("in.txt"), "x").unwrap();
    let local = ws.millrace(&[
        "plugin",
        "test",
        waits.to_str().unwrap(),
        "--input",
        dir.path().join("in.txt").to_str().unwrap(),
    ]);
    let errors = String::from_utf8_lossy(&local.stderr);
    assert!(local.status.success(), "{errors}");
}

/// pika with header values written as given bytes (`Raw`), for headers no client library
/// would make.
const RAW_HEADERS: &str = "import pika.data, struct
class Raw:
    def __init__(s, b): s.b = b
_encode = pika.data.encode_value
def _raw(pieces, value):
    if isinstance(value, Raw):
        pieces.append(value.b)
        return len(value.b)
    return _encode(pieces, value)
pika.data.encode_value = _raw
";

#[test]
fn headers_nested_as_deep_as_a_frame_allows_neither_crash_the_host_nor_stall_its_route() {
    let broker = Broker::shared();
    let ws = workspace(&broker);
    let host = ws.start();
    host.wait_ready();
    // One header: arrays nested as deep as a 128 KiB frame (the broker's default frame_max,
    // which the host never exceeds) holds, 5 bytes a level; then a table nested likewise, 7
    // bytes a level. A parser or a drop that recurses per level without bound overflows its
    // thread's stack and aborts the process.
    let good = record("WO-9", "0000001000", "WC01");
    let got = broker.client(&format!(
        r#"{RAW_HEADERS}
def arrays(depth):
    inner = b''
    for _ in range(depth):
        inner = b'A' + struct.pack('>I', len(inner)) + inner
    return b'A' + struct.pack('>I', len(inner)) + inner
def tables(depth):
    inner = b''
    for _ in range(depth):
        inner = b'\x01kF' + struct.pack('>I', len(inner)) + inner
    return b'F' + struct.pack('>I', len(inner)) + inner
c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT, frame_max=131072))
ch = c.channel()
ch.confirm_delivery()
ch.exchange_declare('plant-a.events', 'topic', durable=True)
ch.queue_declare('out', durable=True)
ch.queue_bind('out', 'plant-a.events', '#')
for n, deep in enumerate([arrays(26000), tables(18500)]):
    ch.basic_publish('', 'plant-a.mes', b'x', pika.BasicProperties(message_id='deep-%d' % n, headers={{'deep': Raw(deep)}}, delivery_mode=2))
ch.basic_publish('', 'plant-a.mes', {good:?}.encode(), pika.BasicProperties(message_id='m-9', content_type='text/plain', delivery_mode=2))
ids = []
deadline = time.time() + 60
while not ids and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: ids.append(p.message_id)
    else: time.sleep(0.05)
print(json.dumps(ids))
"#
    ));
    assert_eq!(got, serde_json::json!(["m-9-1"]), "the route goes on");
    // Both were taken and answered like any message the plugin refuses: dead letters.
    let dead = (0..100)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            broker.depth("millrace.mes.dead-letter")
        })
        .find(|&n| n >= 2);
    assert_eq!(dead, Some(2), "both dead-lettered");
    assert_eq!(broker.depth("plant-a.mes"), 0, "every input acknowledged");
    assert!(host.stop().success(), "the host exits cleanly");
}

#[test]
fn an_http_route_keeps_accepting_into_the_outbox_while_the_broker_is_away_and_across_a_restart() {
    let mut broker = Broker::start();
    // The consumer's queue exists before the broker goes away (durable, bound).
    broker.client(&format!("{CONNECT}print('{{}}')"));
    let mes = plugin("mes-fixed-width");
    let route = route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "").replace(
        "sink = \"reply\"",
        "sink = \"amqp\"\namqp = { exchange = \"plant-a.events\" }",
    );
    let ws = Workspace::new(&format!(
        "[host]\namqp = \"{}\"\noutbox_max_messages = 4\n\n[plants.plant-a.lookups.work_centres]\nentries = {{ WC01 = \"ASSY-01\" }}\n\n{route}\n{}",
        broker.url(),
        mes_settings("mes")
    ));
    broker.stop();
    let host = ws.start();
    let post = |host: &Host, n: u32| {
        host.post_with_key(
            "mes",
            "text/plain",
            &format!("k-{n}"),
            record(&format!("WO-{n}"), "0000001000", "WC01"),
        )
    };
    for n in 1..=3 {
        let accepted = post(&host, n);
        assert_eq!(accepted.status, 202, "{}", accepted.body);
        assert_eq!(accepted.json()["accepted"], 1);
        assert_eq!(accepted.json()["waiting"], n);
    }
    assert!(host.stop().success());
    // Restarted, the broker still away: what was accepted is still waiting, and more is taken.
    let host = ws.start();
    let not_ready = host.request("GET", "/readyz", None, &[], b"");
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.json()["outbox_waiting"], 3);
    assert_eq!(post(&host, 4).status, 202);
    let full = post(&host, 5);
    assert_eq!(full.status, 503, "{}", full.body);
    assert_eq!(full.json()["type"], "urn:millrace:problem:outbox-full");
    assert!(full.header("retry-after").is_some());

    broker.restart();
    host.wait_ready();
    let got = broker.client(&format!(
        r#"
{CONNECT}ids = []
deadline = time.time() + 30
while len(ids) < 4 and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: ids.append(p.message_id)
    else: time.sleep(0.05)
time.sleep(1.0)
while True:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if not m: break
    ids.append(p.message_id)
print(json.dumps({{'ids': ids}}))
"#
    ));
    // The message id is the Idempotency-Key: every output once, in the order accepted.
    assert_eq!(
        got["ids"],
        serde_json::json!(["k-1-1", "k-2-1", "k-3-1", "k-4-1"]),
        "{got}"
    );
    // Each output leaves the outbox once the broker confirms it, which may be after the
    // consumer above got it.
    crate::hot_reload::eventually("the outbox emptied", || {
        (host.wait_ready().json()["outbox_waiting"] == 0).then_some(())
    });
    // Room again: the fifth is accepted now.
    assert_eq!(post(&host, 5).status, 202);
}

#[test]
fn with_declaring_off_a_missing_queue_keeps_the_host_not_ready_until_it_is_provisioned() {
    let broker = Broker::shared();
    let ws = workspace(&broker);
    host_setting(&ws, "amqp_declare = false");
    let host = ws.start();
    // The host does not create the queue: consuming fails, the host says why and retries.
    let mut reason = String::new();
    for _ in 0..600 {
        let reply = host.request("GET", "/readyz", None, &[], b"");
        assert_eq!(reply.status, 503, "not ready without its queue");
        reason = reply.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if reason.contains("plant-a.mes") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(reason.contains("cannot consume plant-a.mes"), "{reason}");
    // Provisioned by someone else (no dead-letter arguments: the host imposes none).
    broker.client(&format!(
        "{CONNECT}ch.queue_declare('plant-a.mes', durable=True)\nprint('{{}}')"
    ));
    host.wait_ready();
    let good = record("WO-9", "0000001000", "WC01");
    let got = broker.client(&format!(
        r#"
{}names = []
for q in ['millrace.mes.dead-letter', 'plant-a.mes.retry.1000ms']:
    probe = c.channel()
    try:
        probe.queue_declare(q, passive=True)
        names.append(q)
    except pika.exceptions.ChannelClosedByBroker:
        pass
print(json.dumps({{'ids': ids, 'declared_by_host': names}}))
"#,
        publish_and_take_output("m-9", &good)
    ));
    assert_eq!(got["ids"], serde_json::json!(["m-9-1"]), "{got}");
    assert_eq!(got["declared_by_host"], serde_json::json!([]), "{got}");
}

#[test]
fn an_output_no_queue_takes_is_retried_then_dead_lettered_not_dropped() {
    let broker = Broker::shared();
    // The route publishes to an exchange nobody bound a queue to.
    let ws = workspace_with(
        &broker,
        ", max_attempts = 2, retry_delay_ms = 100",
        "WC01 = \"ASSY-01\"",
    );
    edit_config(
        &ws,
        "exchange = \"plant-a.events\"",
        "exchange = \"unbound.events\"",
    );
    let host = ws.start();
    host.wait_ready();
    let good = record("WO-10", "0000001000", "WC01");
    let got = broker.client(&format!(
        r#"
c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.basic_publish('', 'plant-a.mes', {good:?}.encode(), pika.BasicProperties(message_id='m-10', content_type='text/plain', delivery_mode=2))
dead = []
deadline = time.time() + 30
while not dead and time.time() < deadline:
    m, p, b = ch.basic_get('millrace.mes.dead-letter', auto_ack=True)
    if m: dead.append({{k: (v.decode() if isinstance(v, bytes) else v) for k, v in p.headers.items() if k != 'x-death'}})
    else: time.sleep(0.05)
print(json.dumps({{'dead': dead}}))
"#
    ));
    let dead = &got["dead"][0];
    assert_eq!(dead["x-millrace-kind"], "attempts-exhausted", "{got}");
    assert_eq!(dead["x-millrace-attempts"], 2);
    assert!(
        dead["x-millrace-reason"]
            .as_str()
            .unwrap()
            .contains("no queue takes message m-10-1 (exchange \"unbound.events\""),
        "{got}"
    );
    assert!(
        dead["x-millrace-lineage"]
            .as_str()
            .unwrap()
            .starts_with("mes-fixed-width@1.1.0+sha256:")
    );
}

/// Outputs that a queue takes and outputs none takes, published side by side on one host: each
/// is judged by its own fate. lapin hands a `basic.return` to whichever confirm resolves next,
/// so with publishes sharing a channel some unroutable outputs read as confirmed (never
/// dead-lettered: lost) and some routed ones as returned; this fails then.
#[test]
fn routed_and_unroutable_outputs_published_side_by_side_are_each_judged_by_their_own_fate() {
    const EACH: usize = 1000;
    let broker = Broker::shared();
    // `out` takes the events of work order WO-1 only; WO-2's have no queue.
    let ws = workspace_with(
        &broker,
        ", prefetch = 256, max_attempts = 2, retry_delay_ms = 100",
        "WC01 = \"ASSY-01\"",
    );
    edit_config(
        &ws,
        "routing_key = \"{plant}.{type}\"",
        "routing_key = \"{subject}\"",
    );
    let host = ws.start();
    host.wait_ready();
    let (routed, unroutable) = (
        record("WO-1", "0000001000", "WC01"),
        record("WO-2", "0000001000", "WC01"),
    );
    // The usual client, with `out` bound to WO-1's key only.
    let connect = CONNECT.replace("'plant-a.events', '#'", "'plant-a.events', 'WO-1'");
    let got = broker.client(&format!(
        r#"
{connect}for i in range({EACH}):
    for mid, body in [('r-%d' % i, {routed:?}), ('u-%d' % i, {unroutable:?})]:
        ch.basic_publish('', 'plant-a.mes', body.encode(), pika.BasicProperties(message_id=mid, content_type='text/plain', delivery_mode=2))
outputs, dead = set(), set()
deadline = time.time() + 120
while (len(outputs) < {EACH} or len(dead) < {EACH}) and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: outputs.add(p.message_id)
    d, q, _ = ch.basic_get('millrace.mes.dead-letter', auto_ack=True)
    if d: dead.add(q.message_id)
    if not m and not d: time.sleep(0.05)
print(json.dumps({{'outputs': sorted(outputs), 'dead': sorted(dead)}}))
"#
    ));
    assert!(host.stop().success());
    let ids = |key: &str| -> Vec<String> {
        got[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let (outputs, dead) = (ids("outputs"), ids("dead"));
    let routed_lost: Vec<String> = (0..EACH)
        .map(|i| format!("r-{i}-1"))
        .filter(|id| !outputs.contains(id))
        .take(5)
        .collect();
    let unroutable_lost: Vec<String> = (0..EACH)
        .map(|i| format!("u-{i}"))
        .filter(|id| !dead.contains(id))
        .take(5)
        .collect();
    assert!(
        routed_lost.is_empty() && unroutable_lost.is_empty(),
        "routed outputs missing from `out`, e.g. {routed_lost:?}; unroutable inputs never dead-lettered (taken as delivered), e.g. {unroutable_lost:?}"
    );
    assert!(
        dead.iter().all(|id| id.starts_with("u-")),
        "only inputs whose output no queue takes are dead-lettered: {:?}",
        dead.iter()
            .filter(|id| !id.starts_with("u-"))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(broker.depth("plant-a.mes"), 0);
}

/// A queue-to-exchange route `act` (queue `plant-a.act`) running the `act` guest; `amqp` adds
/// keys to its broker table, `host` to the host table.
fn act_workspace(broker: &Broker, host: &str, amqp: &str) -> Workspace {
    queue_route_workspace(broker, &slow_act_route("act"), host, amqp)
}

/// `route` (an HTTP-to-reply route `act`, first of the routes it may hold) turned into queue
/// `plant-a.act` to exchange `plant-a.events`; `amqp` adds keys to its broker table, `host` to
/// the host table.
fn queue_route_workspace(broker: &Broker, route: &str, host: &str, amqp: &str) -> Workspace {
    let route = route
        .replacen("source = \"http\"", "source = \"amqp\"", 1)
        .replacen(
            "sink = \"reply\"",
            &format!("sink = \"amqp\"\namqp = {{ queue = \"plant-a.act\", exchange = \"plant-a.events\"{amqp} }}"),
            1,
        );
    Workspace::new(&format!(
        "[host]\namqp = \"{}\"\n{host}\n[plants.plant-a]\n\n{route}",
        broker.url()
    ))
}

/// An output whose id, content type or routing key is longer than an AMQP short string (255
/// bytes) cannot be framed: published, it would corrupt the frame, and the broker would close
/// the connection every route of the host shares (and again after every redelivery). Such an
/// output fails its own message; the connection stays up and the rest are delivered.
#[test]
fn outputs_with_names_past_amqps_short_strings_fail_their_message_not_the_connection() {
    let broker = Broker::shared();
    let hostile = guest("guest-hostile");
    // `act` takes from a queue; `web` takes HTTP requests and publishes through the outbox.
    let route = route_toml("act", &hostile, r#"["log", "state"]"#, "")
        + &route_toml("web", &hostile, r#"["log", "state"]"#, "").replace(
            "sink = \"reply\"",
            "sink = \"amqp\"\namqp = { exchange = \"plant-a.events\", routing_key = \"{subject}\" }",
        );
    let ws = queue_route_workspace(
        &broker,
        &route,
        "",
        ", routing_key = \"{subject}\", max_attempts = 1",
    );
    let mut host = ws.start();
    host.wait_ready();
    let long_subject = format!("{{\"subject\": \"{}\"}}", "s".repeat(300));
    publish_to_act(
        &broker,
        &[
            // id and content type of 255 bytes each: the most that fits.
            ("l-255".to_string(), "long 255".to_string()),
            // 256: one byte past it.
            ("l-256".to_string(), "long 256".to_string()),
            // Echoed: its routing key (the event's subject) is 300 bytes.
            ("k-300".to_string(), long_subject.clone()),
            ("ok-1".to_string(), r#"{"subject": "fine"}"#.to_string()),
        ],
    );
    let got = broker.client(&format!(
        r#"
{CONNECT}outputs, dead = [], []
deadline = time.time() + 60
while (len(outputs) < 2 or len(dead) < 2) and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: outputs.append({{'id': p.message_id, 'type': p.content_type, 'key': m.routing_key}})
    m, p, b = ch.basic_get('millrace.act.dead-letter', auto_ack=True)
    if m: dead.append({{'id': p.message_id, **{{k: (v.decode() if isinstance(v, bytes) else v) for k, v in p.headers.items() if k in ('x-millrace-kind', 'x-millrace-reason')}}}})
    if not m: time.sleep(0.05)
print(json.dumps({{'outputs': outputs, 'dead': sorted(dead, key=lambda d: d['id'])}}))
"#
    ));
    let outputs = got["outputs"].as_array().unwrap();
    let mut ids: Vec<&str> = outputs.iter().map(|o| o["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["i".repeat(255).as_str(), "ok-1"], "{got}");
    let longest = outputs.iter().find(|o| o["id"] != "ok-1").unwrap();
    assert_eq!(longest["type"].as_str().unwrap().len(), 255, "{got}");
    let dead = got["dead"].as_array().unwrap();
    assert_eq!(dead.len(), 2, "{got}");
    let reason = |i: usize| dead[i]["x-millrace-reason"].as_str().unwrap_or_default();
    assert_eq!(dead[0]["id"], "k-300", "{got}");
    assert!(reason(0).contains("routing key is 300 bytes"), "{got}");
    assert_eq!(dead[1]["id"], "l-256", "{got}");
    assert_eq!(dead[1]["x-millrace-kind"], "limit", "{got}");
    assert!(reason(1).contains("must be 1 to 255 bytes"), "{got}");
    // One session from start to end: the broker never closed the host's connection.
    let log = host.log_once(
        |log| {
            log.iter()
                .any(|l| l.contains("connected to the broker; consuming"))
        },
        "the session",
    );
    let sessions = log
        .iter()
        .filter(|l| l.contains("connected to the broker; consuming"))
        .count();
    let dropped: Vec<&String> = log.iter().filter(|l| l.contains("reconnecting")).collect();
    assert!(
        sessions == 1 && dropped.is_empty(),
        "{sessions} sessions; {dropped:?}"
    );
    // Over HTTP: refused before anything is held (held, it would stop the outbox, which
    // publishes in order); the next request goes through the outbox to the broker.
    let refused = host.post_with_key("web", "application/json", "w-300", &long_subject);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body.contains("routing key is 300 bytes"),
        "{}",
        refused.body
    );
    let taken = host.post_with_key("web", "application/json", "w-1", r#"{"subject": "web"}"#);
    assert_eq!(taken.status, 202, "{}", taken.body);
    let got = broker.client(&format!(
        r#"
{CONNECT}deadline = time.time() + 60
got = None
while got is None and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: got = {{'id': p.message_id, 'key': m.routing_key}}
    else: time.sleep(0.05)
print(json.dumps(got))
"#
    ));
    assert_eq!(got["id"], "w-1", "{got}");
    assert_eq!(got["key"], "web", "{got}");
    assert_eq!(broker.depth("plant-a.act"), 0);
}

/// pika: declare `out` (bound to the route's exchange) and the queue `plant-a.act`, then publish
/// each `(id, body)` persistently with confirms.
fn publish_to_act(broker: &Broker, messages: &[(String, String)]) {
    let list = python_pairs(messages);
    broker.client(&format!(
        r#"
{CONNECT}try:
    ch.queue_declare('plant-a.act', passive=True)
except pika.exceptions.ChannelClosedByBroker:
    # Not declared by a host yet: a classic queue, which the host then keeps.
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare('plant-a.act', durable=True, arguments={{'x-dead-letter-exchange': 'millrace.act.dead-letter'}})
for mid, body in [{list}]:
    ch.basic_publish('', 'plant-a.act', body.encode(), pika.BasicProperties(message_id=mid, content_type='text/plain', delivery_mode=2))
print('{{}}')
"#
    ));
}

/// pika: every message waiting in `out` now (the ids, in order), taken off the queue.
fn take_outputs(broker: &Broker) -> Vec<String> {
    let got = broker.client(&format!(
        r#"
{CONNECT}ids = []
while True:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if not m: break
    ids.append(p.message_id)
print(json.dumps(ids))
"#
    ));
    got.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_delivery_given_back_past_the_delivery_limit_is_dead_lettered_by_the_broker() {
    let broker = Broker::shared();
    // The host declares the route's quorum queue with its delivery limit, then stops.
    let ws = act_workspace(&broker, "amqp_delivery_limit = 3", "");
    let host = ws.start();
    host.wait_ready();
    assert!(host.stop().success());
    publish_to_act(&broker, &[("p-1".to_string(), "ok".to_string())]);
    // Another consumer takes it and gives it back, again and again (a host dying on it).
    let got = broker.client(&format!(
        r#"
{CONNECT}given_back = 0
while given_back < 10:
    m, p, b = ch.basic_get('plant-a.act', auto_ack=False)
    if not m: break
    ch.basic_nack(m.delivery_tag, requeue=True)
    given_back += 1
dead = None
deadline = time.time() + 30
while dead is None and time.time() < deadline:
    m, p, b = ch.basic_get('millrace.act.dead-letter', auto_ack=True)
    if m: dead = {{'id': p.message_id, 'reason': p.headers.get('x-first-death-reason')}}
    else: time.sleep(0.05)
print(json.dumps({{'given_back': given_back, 'dead': dead}}))
"#
    ));
    assert_eq!(got["dead"]["id"], "p-1", "{got}");
    assert_eq!(got["dead"]["reason"], "delivery_limit", "{got}");
    let given_back = got["given_back"].as_u64().unwrap();
    assert!((3..=4).contains(&given_back), "{got}");
    assert_eq!(broker.depth("plant-a.act"), 0);
}

#[test]
fn sigterm_finishes_the_deliveries_in_hand_and_leaves_the_rest_in_the_queue() {
    const MESSAGES: usize = 12;
    let broker = Broker::shared();
    // Two mediation threads, up to four deliveries in hand: at the signal two are being
    // mediated, up to two wait for a thread, the rest wait at the broker.
    let ws = act_workspace(&broker, "max_in_flight = 2", ", prefetch = 4");
    let inputs: Vec<(String, String)> = (0..MESSAGES)
        .map(|i| (format!("w-{i}"), "work 1000000000".to_string()))
        .collect();
    publish_to_act(&broker, &inputs);
    let mut host = Host::start(&ws.config(), &[("RUST_LOG", "millrace_host=debug")]);
    let (log, signalled) = host.stop_while_mediating("act", 2);
    let id_of = |line: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("message_id="))
            .unwrap()
            .to_string()
    };
    let begun: std::collections::BTreeSet<String> = log
        .iter()
        .filter(|l| l.contains("mediating route=act"))
        .map(|l| id_of(l))
        .collect();
    let in_flight_at_signal: Vec<String> = log[..signalled]
        .iter()
        .filter(|l| l.contains("mediating route=act"))
        .map(|l| id_of(l))
        .filter(|id| {
            !log[..signalled]
                .iter()
                .any(|l| l.contains("mediated route=act") && id_of(l) == *id)
        })
        .collect();
    assert!(
        !in_flight_at_signal.is_empty(),
        "nothing was being mediated at the signal:\n{}",
        log.join("\n")
    );
    // Every delivery the host had begun was finished: its output is out, it is acknowledged.
    let first_run = take_outputs(&broker);
    let first_set: std::collections::BTreeSet<String> = first_run
        .iter()
        .map(|id| {
            id.strip_suffix("-1")
                .expect("output id INPUT-1")
                .to_string()
        })
        .collect();
    assert_eq!(first_set, begun, "outputs of exactly the deliveries begun");
    assert_eq!(first_run.len(), first_set.len(), "no copies");
    // What it had not begun is back at the broker, not lost, not acknowledged.
    assert!(first_set.len() < MESSAGES, "the signal came before the end");
    assert_eq!(
        broker.depth("plant-a.act") as usize,
        MESSAGES - first_set.len(),
        "the rest waits in the queue"
    );
    // A new host takes the rest: every input once in all.
    let host = ws.start();
    host.wait_ready();
    let mut all = first_run.clone();
    // A guard against a lost message, not a timing assertion.
    for _ in 0..1200 {
        all.extend(take_outputs(&broker));
        if all.len() >= MESSAGES {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(host.stop().success());
    all.extend(take_outputs(&broker));
    all.sort();
    let mut expected: Vec<String> = (0..MESSAGES).map(|i| format!("w-{i}-1")).collect();
    expected.sort();
    assert_eq!(all, expected, "each input's output once");
    assert_eq!(broker.depth("plant-a.act"), 0);
    assert_eq!(broker.depth("millrace.act.dead-letter"), 0);
}

/// A stop that runs out of time (`host.stop_timeout_s`) while a delivery is still being
/// mediated acknowledges the deliveries that finished while it waited, as far as acknowledgements
/// in order allow: only the unfinished one comes again, and the finished one behind it.
#[test]
fn a_stop_that_runs_out_of_time_acknowledges_the_runs_finished_while_it_waited() {
    let broker = Broker::shared();
    // Three mediation slots and three deliveries in hand, tagged in the order published (one
    // publishing channel, one queue): `w-0` and `w-2` run a few seconds, past the signal;
    // `w-1` works until its deadline (120 s), past the stop's bound.
    let ws = act_workspace(
        &broker,
        "max_in_flight = 3\nstop_timeout_s = 30",
        ", prefetch = 3",
    );
    let short = SLOW_WORK.to_string();
    publish_to_act(
        &broker,
        &[
            ("w-0".to_string(), short.clone()),
            ("w-1".to_string(), "work 1000000000000000".to_string()),
            ("w-2".to_string(), short),
        ],
    );
    let mut host = Host::start(&ws.config(), &[("RUST_LOG", "millrace_host=debug")]);
    let (log, signalled) = host.stop_while_mediating("act", 3);
    let finished = |id: &str| mediated_at(&log, "act", id);
    for id in ["w-0", "w-2"] {
        assert!(
            finished(id).is_some_and(|at| at > signalled),
            "{id} did not finish after the signal, so this did not test the stop:\n{}",
            log.join("\n")
        );
    }
    assert!(
        finished("w-1").is_none(),
        "w-1 finished:\n{}",
        log.join("\n")
    );
    assert!(
        log.iter()
            .any(|l| l.contains("stopping with work unfinished") && l.contains("within_s=30")),
        "the stop's bound is host.stop_timeout_s:\n{}",
        log.join("\n")
    );
    let mut outputs = take_outputs(&broker);
    outputs.sort();
    assert_eq!(outputs, ["w-0-1", "w-2-1"]);
    // The broker gives back what was unacknowledged when the connection closed, all at once.
    // A guard against a message never given back, not a timing assertion.
    let mut back = 0;
    for _ in 0..600 {
        back = broker.depth("plant-a.act");
        if back > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        back, 2,
        "w-0 was acknowledged; w-1 comes again, and w-2 behind it (acknowledgements in order)"
    );
}

#[test]
fn a_plugin_asking_to_retry_later_is_parked_and_retried_until_its_attempts_run_out() {
    let broker = Broker::shared();
    let ws = act_workspace(&broker, "", ", max_attempts = 3, retry_delay_ms = 100");
    let host = ws.start();
    host.wait_ready();
    publish_to_act(&broker, &[("r-1".to_string(), "retry 50".to_string())]);
    let got = broker.client(&format!(
        r#"
{CONNECT}dead = []
deadline = time.time() + 60
while not dead and time.time() < deadline:
    m, p, b = ch.basic_get('millrace.act.dead-letter', auto_ack=True)
    if m: dead.append({{k: (v.decode() if isinstance(v, bytes) else v) for k, v in p.headers.items() if k != 'x-death'}})
    else: time.sleep(0.05)
print(json.dumps({{'dead': dead}}))
"#
    ));
    let dead = &got["dead"][0];
    assert_eq!(dead["x-millrace-kind"], "attempts-exhausted", "{got}");
    assert_eq!(dead["x-millrace-attempts"], 3);
    assert_eq!(dead["x-millrace-plugin"], "guest-act");
    assert!(
        dead["x-millrace-reason"]
            .as_str()
            .unwrap()
            .contains("asked to retry in 50 ms"),
        "{got}"
    );
    assert!(host.stop().success());
    assert_eq!(broker.depth("plant-a.act"), 0);
    assert_eq!(
        broker.depth("out"),
        0,
        "no output for a message that never succeeded"
    );
}

/// A delivery the host cannot settle (the broker refuses, with `basic.nack`, both its retry copy
/// and its dead letter: the delay and dead-letter queues replaced under the host by queues that
/// take nothing) is run again here after each attempt's wait, up to `max_attempts` runs, then
/// given back on its own (`basic.nack`, requeue) and comes again. The acknowledgement that
/// follows never names a delivery given back: the broker would refuse it ("unknown delivery
/// tag") and close the consumer's channel, giving back every delivery in hand (and the host
/// would reconnect). The same session keeps serving the next delivery.
#[test]
fn a_delivery_given_back_alone_is_not_named_by_the_next_acknowledgement() {
    let broker = Broker::shared();
    let ws = act_workspace(&broker, "", ", max_attempts = 2, retry_delay_ms = 100");
    let mut host = ws.start();
    host.wait_ready();
    broker.client(&format!(
        r#"
{CONNECT}for q in ['plant-a.act.retry.100ms', 'millrace.act.dead-letter']:
    ch.queue_delete(q)
    ch.queue_declare(q, durable=True, arguments={{'x-max-length': 0, 'x-overflow': 'reject-publish'}})
ch.queue_bind('millrace.act.dead-letter', 'millrace.act.dead-letter', routing_key='')
print('{{}}')
"#
    ));
    publish_to_act(&broker, &[("g-1".to_string(), "retry 50".to_string())]);
    let held = host.wait_for_log_where(
        |l| l.contains("message_id=g-1") && l.contains("run again here"),
        "g-1 held",
    );
    assert!(held.contains("attempt=1"), "{held}");
    host.wait_for_log_where(
        |l| l.contains("message_id=g-1") && l.contains("the broker will redeliver"),
        "g-1 given back",
    );
    publish_to_act(&broker, &[("g-2".to_string(), "ok".to_string())]);
    // A guard against a stalled consumer, not a timing assertion.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while broker.depth("out") == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(host.stop_in_place().success());
    let log = host.drain_log();
    let refused: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.contains("unknown delivery tag")
                || l.contains("ack failed")
                || l.contains("consumer ended")
        })
        .collect();
    assert!(
        refused.is_empty(),
        "the consumer's channel was closed over an acknowledgement: {refused:#?}"
    );
    let sessions = sessions(&log);
    assert_eq!(sessions, 1, "one session throughout: {log:#?}");
    assert_eq!(take_outputs(&broker), vec!["g-2".to_string()]);
}

/// A delay queue deleted under the host: the retry copy comes back unroutable, the session is
/// rebuilt (after the reconnect's pause, not a delivery coming straight back to fail the same
/// way), the new session declares the queue again, and the retries go on to the dead letter.
#[test]
fn a_delay_queue_deleted_under_the_host_is_declared_again_by_a_new_session() {
    let broker = Broker::shared();
    let ws = act_workspace(&broker, "", ", max_attempts = 3, retry_delay_ms = 100");
    let mut host = ws.start();
    host.wait_ready();
    broker.client(&format!(
        r#"
{CONNECT}ch.queue_delete('plant-a.act.retry.100ms')
print('{{}}')
"#
    ));
    publish_to_act(&broker, &[("d-1".to_string(), "retry 50".to_string())]);
    let dead = wait_for_dead_letter(&broker, "millrace.act.dead-letter");
    assert_eq!(dead["id"], "d-1", "{dead}");
    assert_eq!(dead["kind"], "attempts-exhausted", "{dead}");
    assert!(host.stop_in_place().success());
    let log = host.drain_log();
    let sessions = sessions(&log);
    assert_eq!(sessions, 2, "the session rebuilt once: {log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("no queue takes message d-1") && l.contains("retry.100ms")),
        "{log:#?}"
    );
    assert_eq!(broker.depth("plant-a.act.retry.100ms"), 0);
}

/// How many broker sessions a host's log shows it began.
fn sessions(log: &[String]) -> usize {
    log.iter()
        .filter(|l| l.contains("connected to the broker"))
        .count()
}

/// pika: the first dead letter on `queue` (a guard of 60 s against a stalled stream, not a
/// timing assertion): its id, the broker's reason and the host's kind.
fn wait_for_dead_letter(broker: &Broker, queue: &str) -> serde_json::Value {
    broker.client(&format!(
        r#"
{CONNECT}dead = None
deadline = time.time() + 60
while dead is None and time.time() < deadline:
    m, p, b = ch.basic_get('{queue}', auto_ack=True)
    if m:
        h = p.headers or {{}}
        kind = h.get('x-millrace-kind')
        dead = {{'id': p.message_id, 'reason': h.get('x-first-death-reason'), 'kind': kind.decode() if isinstance(kind, bytes) else kind}}
    else: time.sleep(0.05)
print(json.dumps(dead))
"#
    ))
}

#[test]
fn the_outbox_survives_a_kill_9_of_the_host_and_delivers_everything_once_in_order() {
    let mut broker = Broker::start();
    broker.client(&format!("{CONNECT}print('{{}}')"));
    let mes = plugin("mes-fixed-width");
    let route = route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "").replace(
        "sink = \"reply\"",
        "sink = \"amqp\"\namqp = { exchange = \"plant-a.events\" }",
    );
    let ws = Workspace::new(&format!(
        "[host]\namqp = \"{}\"\n\n[plants.plant-a.lookups.work_centres]\nentries = {{ WC01 = \"ASSY-01\" }}\n\n{route}\n{}",
        broker.url(),
        mes_settings("mes")
    ));
    broker.stop();
    let host = ws.start();
    for n in 1..=5 {
        let accepted = host.post_with_key(
            "mes",
            "text/plain",
            &format!("k-{n}"),
            record(&format!("WO-{n}"), "0000001000", "WC01"),
        );
        assert_eq!(accepted.status, 202, "{}", accepted.body);
    }
    // 202 means on disk: a crash right after loses nothing.
    host.kill9();
    let host = ws.start();
    let waiting = host.request("GET", "/readyz", None, &[], b"");
    assert_eq!(waiting.json()["outbox_waiting"], 5, "{}", waiting.body);
    broker.restart();
    host.wait_ready();
    let mut ids = Vec::new();
    // A guard against a lost message, not a timing assertion.
    for _ in 0..600 {
        ids.extend(take_outputs(&broker));
        if ids.len() >= 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(host.stop().success());
    ids.extend(take_outputs(&broker));
    assert_eq!(ids, ["k-1-1", "k-2-1", "k-3-1", "k-4-1", "k-5-1"]);
}

/// Publishes of one batch made at once from tasks on several threads, half to a queue that
/// refuses everything (`x-max-length` 0, `reject-publish`), half to one that takes them, with
/// bodies large enough that building their frames takes a while: each publish is told its own
/// confirm. lapin numbers a publish's confirm and queues its frames in two steps; two publishes
/// crossing between them would each be told the other's (an output the broker refused judged
/// confirmed: its input acknowledged, the output lost).
#[test]
fn publishes_racing_on_one_channel_are_each_told_their_own_confirm() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};
    use millrace_host::amqp::publisher::{AmqpPublisher, PublishError, Publishing};
    use millrace_host::plugin::bindings::types::Message;
    use std::sync::Arc;
    const ROUNDS: usize = 40;
    const AT_ONCE: usize = 64;
    let broker = Broker::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let crossed = runtime.block_on(async {
        let connection = Arc::new(
            lapin::Connection::connect(&broker.url(), lapin::ConnectionProperties::default())
                .await
                .expect("connect"),
        );
        let channel = connection.create_channel().await.unwrap();
        let mut refuses = FieldTable::default();
        refuses.insert("x-max-length".into(), AMQPValue::LongInt(0));
        refuses.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        // The queue that takes keeps only its last 16 (it drops the oldest): the broker holds
        // little of the 320 MiB sent.
        let mut takes = FieldTable::default();
        takes.insert("x-max-length".into(), AMQPValue::LongInt(16));
        for (queue, arguments) in [("takes", takes), ("refuses", refuses)] {
            channel
                .queue_declare(queue.into(), QueueDeclareOptions::default(), arguments)
                .await
                .expect("declare");
        }
        let publisher = AmqpPublisher::open(
            &connection,
            Publishing {
                output_headers: false,
                event_provenance: false,
                confirm_timeout: std::time::Duration::from_secs(60),
            },
        )
        .await
        .expect("publisher");
        let mut crossed = Vec::new();
        for round in 0..ROUNDS {
            let tasks: Vec<_> = (0..AT_ONCE)
                .map(|i| {
                    let publisher = publisher.clone();
                    tokio::spawn(async move {
                        let (queue, body) = if i % 2 == 0 {
                            ("takes", vec![b'x'; 256 * 1024])
                        } else {
                            ("refuses", b"small".to_vec())
                        };
                        let message = Message {
                            id: format!("r{round}-{i}"),
                            plant: "plant-a".into(),
                            route: "race".into(),
                            content_type: "text/plain".into(),
                            headers: Vec::new(),
                            body,
                        };
                        let told = publisher.publish_each(&[("", queue, "", &message)]).await;
                        (queue, message.id, told)
                    })
                })
                .collect();
            for task in tasks {
                let (queue, id, told) = task.await.expect("publish task");
                let right = match queue {
                    "takes" => told.is_ok(),
                    _ => matches!(told, Err(PublishError::Nacked(_))),
                };
                if !right {
                    crossed.push(format!("{id} to {queue}: {told:?}"));
                }
            }
        }
        crossed
    });
    assert!(
        crossed.is_empty(),
        "{} of {} publishes were told another's confirm, e.g. {:?}",
        crossed.len(),
        ROUNDS * AT_ONCE,
        &crossed[..crossed.len().min(5)]
    );
}
