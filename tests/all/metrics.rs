//! `GET /metrics` after real traffic: the Redpanda-Connect-style component series (input,
//! processor per step and plugin version, output) and the mediation series (dead letters by
//! kind and business domain, retries by attempt, traps, instances, links, dead letters
//! waiting), over HTTP and over a real RabbitMQ node, each checked for the amount it moved by.

use crate::harness::*;

/// The sum of the series `name` whose labels include every pair of `labels` (0 when none
/// does), from a Prometheus text exposition.
pub(crate) fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, number) = line.rsplit_once(' ')?;
            let (series_name, inside) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let matches = series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| inside.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            matches.then(|| number.parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn scrape(host: &Host) -> String {
    let reply = host.admin("GET", "/metrics", b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        reply.header("content-type")
    );
    reply.body
}

/// Every histogram series' buckets count up to its `+Inf` bucket, which is its `_count`.
fn assert_histograms_consistent(text: &str) {
    let mut last: Option<(String, f64)> = None;
    for line in text.lines().filter(|l| l.contains("_bucket{")) {
        let (series, number) = line.rsplit_once(' ').unwrap();
        let number: f64 = number.parse().unwrap();
        let key = series.split(",le=").next().unwrap().to_string();
        if let Some((previous_key, previous)) = &last
            && *previous_key == key
        {
            assert!(number >= *previous, "buckets go down at {line}");
        }
        if series.contains("le=\"+Inf\"") {
            let count_line = key.replacen("_bucket{", "_count{", 1) + "}";
            let count = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{count_line} ")))
                .unwrap_or_else(|| panic!("no {count_line}"));
            assert_eq!(count.parse::<f64>().unwrap(), number, "{line}");
        }
        last = Some((key, number));
    }
}

#[test]
fn http_traffic_moves_component_and_mediation_series_by_what_happened() {
    let mes = plugin("mes-fixed-width");
    let mes_route = route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "");
    let act = act_route("act", "");
    let ws = Workspace::new(&format!(
        "[host]\nadmin = \"127.0.0.1:0\"\n\n[plants.plant-a.lookups.work_centres]\nentries = {{ WC01 = \"ASSY-01\" }}\n\n{mes_route}\n{}\n{act}",
        mes_settings("mes")
    ));
    let host = ws.start();
    host.wait_ready();
    let before = scrape(&host);
    for name in [
        "input_received",
        "processor_received",
        "processor_sent",
        "processor_error",
        "processor_latency_ns",
        "output_sent",
        "output_error",
        "output_latency_ns",
        "millrace_dead_letters_total",
    ] {
        assert!(
            before.contains(&format!("# TYPE {name} ")),
            "{name}:\n{before}"
        );
    }

    let good = record("WO-1", "0000001000", "WC01");
    let bad = record("WO-2", "00001A500 ", "WC01");
    for body in [&good, &good, &bad, &good] {
        host.post("mes", Some("text/plain"), body);
    }
    assert_eq!(host.post("act", Some("text/plain"), "count").status, 200);
    host.post("act", Some("text/plain"), "trap");
    let after = scrape(&host);

    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let mes_step = [
        ("plant", "plant-a"),
        ("route", "mes"),
        ("step", "1"),
        ("plugin", "mes-fixed-width"),
        ("version", "1.1.0"),
    ];
    let mes_in = [("plant", "plant-a"), ("route", "mes"), ("source", "http")];
    assert_eq!(moved("input_received", &mes_in), 4.0, "{after}");
    assert_eq!(moved("input_latency_ns_count", &mes_in), 4.0, "{after}");
    assert_eq!(moved("processor_received", &mes_step), 4.0, "{after}");
    assert_eq!(moved("processor_sent", &mes_step), 3.0, "{after}");
    assert_eq!(moved("processor_error", &mes_step), 1.0, "{after}");
    assert_eq!(
        moved("processor_latency_ns_count", &mes_step),
        4.0,
        "{after}"
    );
    let mes_out = [("route", "mes"), ("sink", "reply")];
    assert_eq!(moved("output_sent", &mes_out), 3.0, "{after}");
    assert_eq!(moved("output_error", &mes_out), 0.0, "{after}");
    assert_eq!(
        moved(
            "millrace_dead_letters_total",
            &[
                ("route", "mes"),
                ("kind", "rejected"),
                ("domain", "production")
            ]
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "millrace_dead_letters_waiting", &[("route", "mes")]),
        1.0,
        "{after}"
    );

    // The trap: a step error, a dead letter of kind trap, the sandbox's count, the instance
    // discarded.
    let act_in = [("route", "act"), ("source", "http")];
    assert_eq!(moved("input_received", &act_in), 2.0, "{after}");
    assert_eq!(
        moved("processor_error", &[("route", "act"), ("step", "1")]),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(
            "millrace_traps_total",
            &[("plant", "plant-a"), ("kind", "trap")]
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(
            "millrace_dead_letters_total",
            &[("route", "act"), ("kind", "trap")]
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(
            "millrace_instances_discarded_total",
            &[("plant", "plant-a"), ("reason", "failed")]
        ),
        1.0,
        "{after}"
    );
    assert!(
        value(
            &after,
            "millrace_instances_created_total",
            &[("plant", "plant-a")]
        ) >= 2.0,
        "one per step at least: {after}"
    );
    assert!(
        value(&after, "millrace_compile_cache", &[("outcome", "miss")])
            + value(&after, "millrace_compile_cache", &[("outcome", "hit")])
            >= 2.0,
        "{after}"
    );
    assert_histograms_consistent(&after);
    assert_dashboard_reads(&after);
}

/// Every series the shipped Grafana dashboard (docs/grafana) queries is one the host writes
/// (those of a transport's hold only where that transport runs).
fn assert_dashboard_reads(text: &str) {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/grafana/millrace-overview.json")).unwrap(),
    )
    .unwrap();
    let mut written: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            written.push(name.to_string());
            if kind == "histogram" {
                written.extend(["_bucket", "_count", "_sum"].map(|s| format!("{name}{s}")));
            }
        }
    }
    let mut expressions: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    expressions.extend(
        dashboard["annotations"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["expr"].as_str().unwrap().to_string()),
    );
    let mut checked = 0;
    for expr in &expressions {
        let tokens = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for token in tokens {
            let series = [
                "input_",
                "processor_",
                "output_",
                "connection_",
                "millrace_",
            ]
            .iter()
            .any(|p| token.starts_with(p));
            if !series || token.ends_with("_outbox_waiting") {
                continue;
            }
            assert!(
                written.iter().any(|w| w == token),
                "the dashboard queries {token}, which the host does not write ({expr})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "{checked} series checked");
}

#[test]
fn amqp_traffic_moves_input_output_retry_dead_letter_and_link_series() {
    let broker = Broker::shared();
    let mes = plugin("mes-fixed-width");
    let route = route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "")
        .replace("source = \"http\"", "source = \"amqp\"")
        .replace(
            "sink = \"reply\"",
            "sink = \"amqp\"\namqp = { queue = \"plant-a.mes\", exchange = \"plant-a.events\", routing_key = \"{plant}.{type}\" }",
        );
    let act = act_route("act", "")
        .replace("source = \"http\"", "source = \"amqp\"")
        .replace(
            "sink = \"reply\"",
            "sink = \"amqp\"\namqp = { queue = \"plant-a.act\", exchange = \"plant-a.events\", max_attempts = 3, retry_delay_ms = 100 }",
        );
    let ws = Workspace::new(&format!(
        "[host]\namqp = \"{}\"\nadmin = \"127.0.0.1:0\"\n\n[plants.plant-a.lookups.work_centres]\nentries = {{ WC01 = \"ASSY-01\" }}\n\n{route}\n{}\n{act}",
        broker.url(),
        mes_settings("mes")
    ));
    let host = ws.start();
    host.wait_ready();
    let good = record("WO-1", "0000001000", "WC01");
    let bad = record("WO-2", "00001A500 ", "WC01");
    let got = broker.client(&format!(
        r#"
c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.confirm_delivery()
ch.exchange_declare('plant-a.events', 'topic', durable=True)
ch.queue_declare('out', durable=True)
ch.queue_bind('out', 'plant-a.events', '#')
for q, mid, body in [('plant-a.mes', 'm-1', {good:?}), ('plant-a.mes', 'm-2', {bad:?}), ('plant-a.mes', 'm-3', {good:?}), ('plant-a.act', 'a-1', 'retry 0')]:
    ch.basic_publish('', q, body.encode(), pika.BasicProperties(message_id=mid, content_type='text/plain', delivery_mode=2))
outputs, dead = 0, []
deadline = time.time() + 60
while (outputs < 2 or len(dead) < 2) and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if m: outputs += 1
    for q in ['millrace.mes.dead-letter', 'millrace.act.dead-letter']:
        d, dp, db = ch.basic_get(q, auto_ack=True)
        if d: dead.append(dp.headers['x-millrace-kind'].decode() if isinstance(dp.headers['x-millrace-kind'], bytes) else dp.headers['x-millrace-kind'])
    if not m: time.sleep(0.05)
print(json.dumps({{'outputs': outputs, 'dead': sorted(dead)}}))
"#
    ));
    assert_eq!(got["outputs"], 2, "{got}");
    assert_eq!(
        got["dead"],
        serde_json::json!(["attempts-exhausted", "rejected"]),
        "{got}"
    );
    // Outputs and dead letters are counted once the broker confirms them, and a message's
    // latency once it is settled: the consumer above may see them first.
    let mes_in = [("route", "mes"), ("source", "amqp")];
    let text = crate::hot_reload::eventually("the traffic counted", || {
        let text = scrape(&host);
        let counted = value(&text, "input_latency_ns_count", &mes_in) >= 3.0
            && value(&text, "output_sent", &[("route", "mes"), ("sink", "amqp")]) >= 2.0
            && value(&text, "millrace_dead_letters_total", &[("route", "mes")]) >= 1.0
            && value(&text, "millrace_dead_letters_total", &[("route", "act")]) >= 1.0;
        counted.then_some(text)
    });
    assert_eq!(value(&text, "input_received", &mes_in), 3.0, "{text}");
    assert_eq!(
        value(&text, "input_latency_ns_count", &mes_in),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "output_sent", &[("route", "mes"), ("sink", "amqp")]),
        2.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "millrace_dead_letters_total",
            &[
                ("route", "mes"),
                ("kind", "rejected"),
                ("domain", "production")
            ]
        ),
        1.0,
        "{text}"
    );
    // `retry 0` three times: attempts 1 and 2 go round again, the third is dead-lettered.
    assert_eq!(
        value(
            &text,
            "input_received",
            &[("route", "act"), ("source", "amqp")]
        ),
        3.0,
        "{text}"
    );
    for attempt in ["1", "2"] {
        assert_eq!(
            value(
                &text,
                "millrace_retries_total",
                &[("route", "act"), ("attempt", attempt)]
            ),
            1.0,
            "{text}"
        );
    }
    assert_eq!(
        value(
            &text,
            "millrace_retries_total",
            &[("route", "act"), ("attempt", "3")]
        ),
        0.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "millrace_dead_letters_total",
            &[("route", "act"), ("kind", "attempts-exhausted")]
        ),
        1.0,
        "{text}"
    );
    assert!(
        value(&text, "connection_up", &[("transport", "amqp")]) >= 1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, "millrace_link_up", &[("link", "broker")]),
        1.0,
        "{text}"
    );
    assert_histograms_consistent(&text);

    // Lineage of the same traffic: a message delivered, one dead-lettered to the broker, one
    // retried twice and then given up.
    let events = |id: &str| -> Vec<String> {
        let reply = host.admin("GET", &format!("/v1/messages/{id}"), b"");
        assert_eq!(reply.status, 200, "{id}: {reply:?}");
        let path: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        path["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| match h["store"].as_str() {
                Some(store) => format!("{}:{store}", h["event"].as_str().unwrap()),
                None => h["event"].as_str().unwrap().to_string(),
            })
            .collect()
    };
    // A hop is noted once its delivery is confirmed: wait for each message's last.
    for (id, last) in [
        ("m-1", "delivered"),
        ("m-2", "dead-lettered:broker"),
        ("a-1", "dead-lettered:broker"),
    ] {
        crate::hot_reload::eventually(&format!("{id} {last}"), || {
            (events(id).last().map(String::as_str) == Some(last)).then_some(())
        });
    }
    assert_eq!(events("m-1"), ["mediated", "delivered"]);
    assert_eq!(events("m-2"), ["failed", "dead-lettered:broker"]);
    assert_eq!(
        events("a-1"),
        [
            "failed",
            "retry",
            "failed",
            "retry",
            "failed",
            "dead-lettered:broker"
        ]
    );
    let search = host.admin("GET", "/v1/messages?route=mes&limit=10", b"");
    let found: serde_json::Value = serde_json::from_str(&search.body).unwrap();
    assert_eq!(found.as_array().unwrap().len(), 3, "{found}");

    // The backlog: a dead letter left in the broker's queue is counted there, and the source
    // queue has the host's consumer.
    broker.client(&format!(
        r#"
c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.confirm_delivery()
ch.basic_publish('', 'plant-a.mes', {bad:?}.encode(), pika.BasicProperties(message_id='m-9', content_type='text/plain', delivery_mode=2))
print('{{}}')
"#
    ));
    let dead_queue = [("route", "mes"), ("role", "dead-letter")];
    let started = std::time::Instant::now();
    let text = loop {
        let text = scrape(&host);
        if value(&text, "millrace_amqp_queue_messages", &dead_queue) == 1.0 {
            break text;
        }
        assert!(started.elapsed() < GUARD, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(
        value(
            &text,
            "millrace_amqp_queue_consumers",
            &[
                ("route", "mes"),
                ("role", "source"),
                ("queue", "plant-a.mes")
            ]
        ),
        1.0,
        "{text}"
    );
}
