//! OpenTelemetry traces: one trace per business message across HTTP in → AMQP out → AMQP in →
//! webhook out, through a retry, exported over OTLP/HTTP to a receiver in the test and decoded
//! with OpenTelemetry's own protobuf definitions (Python `opentelemetry-proto`, not our encoder's
//! reading of them).

use crate::harness::*;

/// The spans the OTLP receiver `collector` took (each request protobuf), decoded.
fn spans_of(collector: &WebhookReceiver) -> Vec<serde_json::Value> {
    let bodies: Vec<Vec<u8>> = collector
        .requests()
        .into_iter()
        .inspect(|r| {
            assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        })
        .map(|r| r.raw)
        .collect();
    decode(&bodies)
}

/// The spans in the OTLP export requests `bodies`, decoded by `opentelemetry-proto`.
fn decode(bodies: &[Vec<u8>]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let path = dir.path().join(format!("{i}.pb"));
        std::fs::write(&path, body).unwrap();
        files.push(path);
    }
    let program = r#"
import json, sys
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
def value(v):
    kind = v.WhichOneof('value')
    return getattr(v, kind) if kind else None
spans = []
for path in sys.argv[1:]:
    request = ExportTraceServiceRequest()
    request.ParseFromString(open(path, 'rb').read())
    for rs in request.resource_spans:
        service = {a.key: value(a.value) for a in rs.resource.attributes}.get('service.name')
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append({'service': service, 'trace': s.trace_id.hex(), 'id': s.span_id.hex(),
                    'parent': s.parent_span_id.hex(), 'name': s.name, 'kind': s.kind,
                    'start': s.start_time_unix_nano, 'end': s.end_time_unix_nano,
                    'status': s.status.code, 'message': s.status.message,
                    'attributes': {a.key: value(a.value) for a in s.attributes}})
print(json.dumps(spans))
"#;
    let out = std::process::Command::new(root().join("target/tools/py/bin/python"))
        .arg("-c")
        .arg(program)
        .args(&files)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn one_trace_from_http_through_the_broker_and_a_retry_to_the_webhook() {
    let broker = Broker::shared();
    let collector = WebhookReceiver::start();
    let downstream = WebhookReceiver::start();
    // The first delivery to the downstream system is refused: the relay route retries it
    // through its delay queue.
    downstream.refuse_next(1, 503);
    let intake = act_route("intake", "").replace(
        "sink = \"reply\"",
        "sink = \"amqp\"\namqp = { exchange = \"plant-a.events\", routing_key = \"relay\" }",
    );
    let relay = act_route("relay", "")
        .replace("source = \"http\"", "source = \"amqp\"")
        .replace(
            "sink = \"reply\"",
            &format!(
                "sink = \"http\"\namqp = {{ queue = \"plant-a.relay\", max_attempts = 3, retry_delay_ms = 100 }}\nwebhook = {{ url = \"{}\" }}",
                downstream.url
            ),
        );
    let ws = Workspace::new(&format!(
        "[host]\namqp = \"{}\"\n\n[plants.plant-a]\n\n{intake}\n{relay}",
        broker.url()
    ));
    let endpoint = collector.url.trim_end_matches("/events").to_string();
    let host = Host::start(
        &ws.config(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "millrace-test"),
        ],
    );
    host.wait_ready();
    broker.client(
        "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.exchange_declare('plant-a.events', 'topic', durable=True)
ch.queue_bind('plant-a.relay', 'plant-a.events', 'relay')
print('{}')",
    );

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let reply = host.request(
        "POST",
        "/v1/routes/intake/messages",
        Some("text/plain"),
        &[
            ("traceparent", &format!("00-{trace}-{caller_span}-01")),
            ("tracestate", "vendor=abc"),
        ],
        b"hello",
    );
    assert!(reply.status < 300, "{reply:?}");
    let intake_id = serde_json::from_str::<serde_json::Value>(&reply.body).unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Until the downstream system took the message, on the second try.
    let mut waited = 0;
    while downstream.received().is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(20));
        waited += 1;
        assert!(
            waited < 3000,
            "never delivered: {:?}",
            downstream.requests()
        );
    }
    let requests = downstream.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(host.stop().success());

    // The lineage of the same way: the intake's run and hand-over to the broker, then the
    // relay's run of its output, refused, retried, delivered — one trace.
    let traced = ws.millrace(&["trace", &intake_id, "--json"]);
    assert!(
        traced.status.success(),
        "{}",
        String::from_utf8_lossy(&traced.stderr)
    );
    let paths: Vec<serde_json::Value> = serde_json::from_slice(&traced.stdout).unwrap();
    // The act guest hands its input's id on: the relay's run is of the same message id, so one
    // path holds both routes' events.
    assert_eq!(paths.len(), 1, "{paths:#?}");
    let path = &paths[0];
    assert_eq!(path["id"], intake_id.as_str());
    assert_eq!(path["trace_id"], trace);
    let of_route = |route: &str| -> Vec<&serde_json::Value> {
        path["hops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["route"] == route)
            .collect()
    };
    let events = |hops: &[&serde_json::Value]| -> Vec<String> {
        hops.iter()
            .map(|h| h["event"].as_str().unwrap().to_string())
            .collect()
    };
    let intake = of_route("intake");
    assert_eq!(events(&intake), ["mediated", "delivered"], "{path:#}");
    assert_eq!(intake[0]["source"], "http");
    assert_eq!(intake[0]["steps"][0]["plugin"], "guest-act");
    assert_eq!(intake[0]["trace_id"], trace);
    assert_eq!(intake[1]["sink"], "amqp");
    let relay = of_route("relay");
    assert_eq!(
        events(&relay),
        [
            "mediated",
            "not-delivered",
            "retry",
            "mediated",
            "delivered"
        ],
        "{path:#}"
    );
    assert_eq!(relay[0]["source"], "amqp");
    assert_eq!(relay[0]["trace_id"], trace);
    assert_eq!(relay[2]["attempt"], 1);
    assert_eq!(relay[4]["sink"], "http");

    let spans = spans_of(&collector);
    assert!(!spans.is_empty());
    for span in &spans {
        assert_eq!(span["trace"], trace, "one trace: {span}");
        assert_eq!(span["service"], "millrace-test");
        assert!(span["end"].as_u64() >= span["start"].as_u64(), "{span}");
    }
    let named = |name: &str| -> Vec<&serde_json::Value> {
        spans.iter().filter(|s| s["name"] == name).collect()
    };
    let server = named("POST /v1/routes/intake/messages");
    assert_eq!(server.len(), 1, "{spans:#?}");
    let server = server[0];
    assert_eq!(server["kind"], 2, "server");
    assert_eq!(
        server["parent"], caller_span,
        "the caller's span is its parent"
    );
    assert_eq!(server["attributes"]["millrace.route"], "intake");
    assert_eq!(server["attributes"]["http.response.status_code"], 202);
    let children_of = |parent: &serde_json::Value| -> Vec<&serde_json::Value> {
        spans
            .iter()
            .filter(|s| s["parent"] == parent["id"])
            .collect()
    };
    let mut under_server: Vec<String> = children_of(server)
        .iter()
        .map(|s| format!("{} {}", s["kind"], s["name"].as_str().unwrap()))
        .collect();
    under_server.sort();
    assert_eq!(
        under_server,
        [
            "1 step 1 guest-act",
            "4 publish amqp",
            "5 process plant-a.relay",
            "5 process plant-a.relay"
        ],
        "the intake's step and publish, and both runs of the relay: {spans:#?}"
    );
    let step = named("step 1 guest-act")
        .into_iter()
        .find(|s| s["parent"] == server["id"])
        .unwrap();
    assert_eq!(step["attributes"]["millrace.plugin.name"], "guest-act");
    assert_eq!(step["attributes"]["millrace.decision"], "outputs");
    assert!(
        ["fresh", "reused"].contains(&step["attributes"]["millrace.instance"].as_str().unwrap()),
        "{step}"
    );
    assert!(
        step["attributes"]["millrace.memory_bytes"]
            .as_i64()
            .unwrap()
            > 0,
        "{step}"
    );
    assert!(
        step["attributes"]["millrace.plugin.digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    let mut runs = named("process plant-a.relay");
    runs.sort_by_key(|s| s["attributes"]["millrace.attempt"].as_i64());
    assert_eq!(runs[0]["attributes"]["millrace.attempt"], 1);
    assert_eq!(runs[0]["attributes"]["millrace.outcome"], "retry");
    assert_eq!(runs[0]["attributes"]["messaging.system"], "rabbitmq");
    assert_eq!(runs[1]["attributes"]["millrace.attempt"], 2);
    assert_eq!(runs[1]["attributes"]["millrace.outcome"], "settled");
    for (run, status) in [(runs[0], 2), (runs[1], 1)] {
        let posts: Vec<_> = children_of(run)
            .into_iter()
            .filter(|s| s["name"] == "POST")
            .collect();
        assert_eq!(posts.len(), 1, "{run}");
        assert_eq!(posts[0]["kind"], 3, "client");
        assert_eq!(
            posts[0]["status"], status,
            "refused, then taken: {}",
            posts[0]
        );
        assert_eq!(children_of(run).len(), 2, "a step and the delivery: {run}");
    }
    // What reached the downstream system names the run that delivered it.
    let taken = &requests[1];
    assert_eq!(
        taken.header("traceparent"),
        Some(format!("00-{trace}-{}-01", runs[1]["id"].as_str().unwrap()).as_str())
    );
    assert_eq!(taken.header("tracestate"), Some("vendor=abc"));
}

#[test]
fn without_an_endpoint_nothing_is_traced_and_outputs_carry_no_context_of_ours() {
    let downstream = WebhookReceiver::start();
    let route = act_route("intake", "").replace(
        "sink = \"reply\"",
        &format!(
            "sink = \"http\"\nwebhook = {{ url = \"{}\" }}",
            downstream.url
        ),
    );
    let ws = Workspace::new(&format!("[plants.plant-a]\n\n{route}"));
    let host = ws.start();
    host.wait_ready();
    let reply = host.request(
        "POST",
        "/v1/routes/intake/messages",
        Some("text/plain"),
        &[],
        b"hello",
    );
    assert!(reply.status < 300, "{reply:?}");
    let taken = downstream.received();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].header("traceparent"), None);
}

#[test]
fn a_dead_letter_replayed_after_the_fix_stays_in_the_trace_it_came_with() {
    let collector = WebhookReceiver::start();
    let downstream = WebhookReceiver::start();
    let ws = crate::replay::workspace(&downstream);
    let endpoint = collector.url.trim_end_matches("/events").to_string();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let host = Host::start(&ws.config(), &otel);
    host.wait_ready();
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let rejected = host.request(
        "POST",
        "/v1/routes/mes/messages",
        Some("text/plain"),
        &[("traceparent", &format!("00-{trace}-{caller_span}-01"))],
        record("WO-9", "0000001000", "WC09").as_bytes(),
    );
    assert_eq!(rejected.status, 422, "{}", rejected.body);
    assert!(host.stop().success());

    // The fix, then the replay, exporting its spans too.
    ws.write(
        "work-centres.csv",
        "local,canonical\nWC01,ASSY-01\nWC09,PAINT-09\n",
    );
    let replay = millrace()
        .current_dir(ws.dir.path())
        .args(["dlq", "replay", "--route", "mes"])
        .envs(otel)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{text}");
    assert!(text.contains("1 replayed"), "{text}");

    let spans = spans_of(&collector);
    for span in &spans {
        assert_eq!(span["trace"], trace, "{span}");
    }
    let run = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {spans:#?}"))
    };
    let first = run("POST /v1/routes/mes/messages");
    let again = run("replay mes");
    assert_eq!(first["parent"], caller_span);
    assert_eq!(first["status"], 2, "rejected: {first}");
    assert_eq!(
        again["parent"], caller_span,
        "the same parent as the first run"
    );
    assert_eq!(again["status"], 1, "{again}");
    let steps: Vec<_> = spans
        .iter()
        .filter(|s| s["name"] == "step 1 mes-fixed-width")
        .map(|s| {
            (
                s["parent"].clone(),
                s["attributes"]["millrace.decision"].clone(),
            )
        })
        .collect();
    assert!(
        steps.contains(&(first["id"].clone(), "rejected".into()))
            && steps.contains(&(again["id"].clone(), "outputs".into())),
        "{steps:?}"
    );
    let delivered = downstream.received();
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0].header("traceparent"),
        Some(format!("00-{trace}-{}-01", again["id"].as_str().unwrap()).as_str())
    );
}

#[test]
fn trace_settings_from_the_file_and_json_log_lines_that_carry_the_message_trace() {
    let collector = WebhookReceiver::start();
    let endpoint = collector.url.trim_end_matches("/events").to_string();
    let ws = Workspace::new(&format!(
        "[telemetry]\nlog_format = \"json\"\notlp_endpoint = \"{endpoint}\"\nservice_name = \"plant-a-mediation\"\n\n[plants.plant-a]\n\n{}",
        act_route("intake", "")
    ));
    let mut host = Host::start(&ws.config(), &[("OTEL_BSP_SCHEDULE_DELAY", "100")]);
    host.wait_ready();
    let trace = "5c1d2a6f9e8b7a6c5d4e3f2a1b0c9d8e";
    let trapped = host.request(
        "POST",
        "/v1/routes/intake/messages",
        Some("text/plain"),
        &[("traceparent", &format!("00-{trace}-1111111111111111-01"))],
        b"trap",
    );
    assert_eq!(trapped.status, 502, "{trapped:?}");
    // The dead letter's log line is JSON and names the message's trace.
    let line = host.wait_for_log("dead-lettered");
    let doc: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    assert_eq!(doc["level"], "WARN", "{doc}");
    assert_eq!(doc["route"], "intake", "{doc}");
    assert_eq!(doc["trace_id"], trace, "{doc}");
    assert_eq!(doc["span_id"].as_str().map(str::len), Some(16), "{doc}");
    assert!(doc["timestamp"].as_str().unwrap().ends_with('Z'), "{doc}");
    assert!(host.stop().success());
    // Spans went where the file said, under the service name it gave.
    let spans = spans_of(&collector);
    assert!(!spans.is_empty());
    for span in &spans {
        assert_eq!(span["service"], "plant-a-mediation", "{span}");
        assert_eq!(span["trace"], trace, "{span}");
    }
    let server = spans
        .iter()
        .find(|s| s["name"] == "POST /v1/routes/intake/messages")
        .unwrap();
    assert_eq!(
        doc["span_id"], server["id"],
        "the line names the message's span"
    );
}
