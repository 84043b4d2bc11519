//! Plugin versions swapped on broker routes against a real RabbitMQ node: activations under a
//! continuous stream of deliveries (nothing lost, one version per output, lineage agreeing), and
//! activations reaching every host that shares the broker, including one that was away, one that
//! joins later and one whose control queue was lost (the last activation retained on the broker).

use crate::harness::*;
use crate::hot_reload::{activate, both_versions_one_per_output, eventually, kept, rollback};

/// Plant A: HTTP route `a` and broker route `q` (queue `plant-a.stamp` → exchange
/// `plant-a.events`), both running `stamp`; this host is `host.id = ID`.
fn workspace(broker: &Broker, id: &str) -> Workspace {
    let stamp = guest("guest-stamp-1");
    let a = route_toml("a", &stamp, r#"["log"]"#, "");
    let q = route_toml("q", &stamp, r#"["log"]"#, "")
        .replace("source = \"http\"", "source = \"amqp\"")
        .replace(
            "sink = \"reply\"",
            "sink = \"amqp\"\namqp = { queue = \"plant-a.stamp\", exchange = \"plant-a.events\", routing_key = \"{plant}.{route}\", prefetch = 64 }",
        );
    Workspace::new(&format!(
        "[host]\nid = \"{id}\"\namqp = \"{}\"\nadmin = \"127.0.0.1:0\"\n\n[plants.plant-a]\n\n{a}\n{q}",
        broker.url()
    ))
}

/// Hosts `host-a` and `host-b` on `broker`, started and ready, with their workspaces (a host
/// stopped later starts again from its own).
fn two_hosts(broker: &Broker) -> (Workspace, Workspace, Host, Host) {
    let (ws_a, ws_b) = (workspace(broker, "host-a"), workspace(broker, "host-b"));
    let a = ws_a.start();
    let b = ws_b.start();
    a.wait_ready();
    b.wait_ready();
    (ws_a, ws_b, a, b)
}

/// Wait until `host` has read the retained activations the second time (3–6 s after it
/// connected): a test that holds or counts a retained queue's messages itself starts after it,
/// so that no read of the host's holds them meanwhile.
fn second_read_done(host: &mut Host) {
    host.wait_for_log("the retained activations read again");
}

/// The queue retaining plant-a's last activation of `stamp`.
const RETAINED: &str = "millrace.control.last.plant-a/stamp";

/// [`two_hosts`], both past their second read of the retained activations, then 2.0.0 uploaded
/// to host A, activated there and announced (retained in [`RETAINED`]).
fn two_hosts_announcing_2(broker: &Broker) -> (Workspace, Workspace, Host, Host) {
    let (ws_a, ws_b, mut a, mut b) = two_hosts(broker);
    for host in [&mut a, &mut b] {
        second_read_done(host);
    }
    announce_2(&mut a);
    (ws_a, ws_b, a, b)
}

/// 2.0.0 uploaded to `host`, activated there and announced (retained in [`RETAINED`]).
fn announce_2(host: &mut Host) {
    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    let up = host.admin("POST", "/v1/plants/plant-a/plugins", &stamp_2);
    assert_eq!(up.status, 201, "{}", up.body);
    assert_eq!(activate(host, "2.0.0").status, 200);
    host.wait_for_log("activation announced to the other hosts");
}

/// `ws`'s configuration with `line` added to its `[host]` table.
fn with_host_line(ws: &Workspace, line: &str) {
    let config = std::fs::read_to_string(ws.config()).unwrap();
    ws.write(
        "millrace.toml",
        &config.replacen("[host]\n", &format!("[host]\n{line}\n"), 1),
    );
}

/// Polls every 100 ms, at most `polls` times, until `host` runs `version` of `stamp`; else fails
/// with `what` and the host's log.
fn runs_within(host: &mut Host, version: &str, polls: usize, what: &str) {
    let runs = (0..polls).any(|_| {
        let on = active(host)["active"]["version"] == version;
        if !on {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        on
    });
    assert!(runs, "{what}; its log:\n{}", host.drain_log().join("\n"));
}

/// No line of `log` says the host's broker session was lost: it neither reconnected nor stopped
/// consuming.
fn session_went_on(log: &[String]) {
    let dropped: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("reconnecting") || l.contains("stopped consuming"))
        .collect();
    assert!(
        dropped.is_empty(),
        "the session did not go on: {dropped:#?}"
    );
}

/// Python for `broker.client`: a channel `ch` with confirms, and the retained activation read and
/// given back (`p` its properties, `body` its bytes), waiting up to 30 s while a host's read holds
/// it.
fn read_retained() -> String {
    format!(
        r#"c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.confirm_delivery()
deadline = time.time() + 30
m = None
while m is None and time.time() < deadline:
    m, p, body = ch.basic_get({RETAINED:?}, auto_ack=False)
    if m is None: time.sleep(0.05)
ch.basic_nack(m.delivery_tag, requeue=True)
"#
    )
}

/// The retained queue holds exactly one message once the reads that held it have given it back
/// (on a quorum queue a message given back is counted again a moment after the reader's
/// channel closes); a count that stays otherwise fails with `what`.
fn retained_settles_at_one(broker: &Broker, what: &str) {
    let mut last = 0;
    for _ in 0..50 {
        last = broker.depth(RETAINED);
        if last == 1 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{what}: the retained queue holds {last} messages, not 1");
}

fn active(host: &Host) -> serde_json::Value {
    host.admin("GET", "/v1/plants/plant-a/plugins/stamp", b"")
        .json()
}

#[test]
fn swapping_versions_under_a_broker_stream_loses_nothing_and_mixes_nothing() {
    const MESSAGES: usize = 10_000;
    let broker = Broker::start();
    let ws = workspace(&broker, "host-a");
    let host = ws.start();
    host.wait_ready();
    let pid = host.pid();
    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    let up = host.admin("POST", "/v1/plants/plant-a/plugins", &stamp_2);
    assert_eq!(up.status, 201, "{}", up.body);
    broker.client(
        "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.exchange_declare('plant-a.events', 'topic', durable=True)
ch.queue_declare('out', durable=True)
ch.queue_bind('out', 'plant-a.events', '#')
print('{}')",
    );
    let publisher = {
        let program = format!(
            "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.confirm_delivery()
for i in range({MESSAGES}):
    ch.basic_publish('', 'plant-a.stamp', ('m%d' % i).encode(), pika.BasicProperties(message_id='m%d' % i, content_type='text/plain', delivery_mode=2))
print('{{}}')"
        );
        let port = broker.port;
        std::thread::spawn(move || {
            let out = std::process::Command::new("/usr/bin/python3")
                .arg("-c")
                .arg(format!("import pika\nPORT = {port}\n{program}"))
                .output()
                .expect("python3 runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
    };
    // Swap back and forth while the stream flows: at least 20 times, until it is all published.
    let mut swaps = 0;
    while swaps < 20 || !publisher.is_finished() {
        let version = if swaps % 2 == 0 { "2.0.0" } else { "1.0.0" };
        let swapped = activate(&host, version);
        assert_eq!(swapped.status, 200, "{}", swapped.body);
        assert_eq!(swapped.json()["routes"], serde_json::json!(["a", "q"]));
        swaps += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    publisher.join().expect("publisher");
    let got = broker.client(&format!(
        "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
outputs = {{}}
copies = 0
deadline = time.time() + 600
while len(outputs) < {MESSAGES} and time.time() < deadline:
    m, p, b = ch.basic_get('out', auto_ack=True)
    if not m:
        time.sleep(0.05)
        continue
    if p.message_id in outputs: copies += 1
    outputs[p.message_id] = [json.loads(b)['stamp'], p.headers['millrace-lineage'], json.loads(b)['input']]
print(json.dumps({{'outputs': outputs, 'copies': copies}}))"
    ));
    let outputs = got["outputs"].as_object().unwrap();
    assert_eq!(outputs.len(), MESSAGES, "every input has its output");
    for (id, output) in outputs {
        let input = output[2].as_str().unwrap();
        assert_eq!(format!("{input}-1"), *id, "the output of its own input");
    }
    both_versions_one_per_output(
        outputs
            .values()
            .map(|o| (o[0].as_str().unwrap(), o[1].as_str().unwrap())),
    );
    assert!(swaps >= 20);
    assert_eq!(host.pid(), pid, "never restarted");
    assert_eq!(
        active(&host)["history"].as_array().unwrap().len(),
        swaps,
        "every swap in the history"
    );
    // Stopped, the host holds no delivery: one it never acknowledged would be back in the queue.
    assert!(host.stop().success());
    assert_eq!(broker.depth("plant-a.stamp"), 0, "every input acknowledged");
    assert_eq!(broker.depth("out"), 0, "no copy arrived after the reading");
    assert_eq!(got["copies"], 0, "no delivery ran twice");
    assert_eq!(broker.depth("millrace.q.dead-letter"), 0, "no dead letters");
}

#[test]
fn an_activation_reaches_every_host_on_the_broker_even_one_that_was_away() {
    let broker = Broker::shared();
    let (_ws_a, ws_b, a, b) = two_hosts(&broker);
    let stamp_of = |host: &Host| {
        let reply = host.post("a", Some("text/plain"), "x");
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["stamp"].as_str().unwrap().to_string()
    };
    let active_version = |host: &Host| active(host)["active"]["version"].clone();

    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    assert_eq!(
        a.admin("POST", "/v1/plants/plant-a/plugins", &stamp_2)
            .status,
        201
    );
    assert_eq!(activate(&a, "2.0.0").status, 200);
    eventually("host B runs 2.0.0", || {
        (active_version(&b) == "2.0.0").then_some(())
    });
    assert_eq!(stamp_of(&b), "2.0.0");
    let doc = active(&b);
    assert_eq!(kept(&doc, "2.0.0")["origin"], "broadcast", "{doc}");
    assert_eq!(doc["history"][0]["by"], "test-operator via host-a", "{doc}");

    // Rollback travels too.
    let back = rollback(&a);
    assert_eq!(back.status, 200, "{}", back.body);
    eventually("host B back on 1.0.0", || {
        (active_version(&b) == "1.0.0").then_some(())
    });
    assert_eq!(stamp_of(&b), "1.0.0");

    // A host that is away when the activation happens finds it waiting when it comes back.
    assert!(b.stop().success());
    assert_eq!(activate(&a, "2.0.0").status, 200);
    let b = ws_b.start();
    b.wait_ready();
    eventually("host B caught up", || {
        (active_version(&b) == "2.0.0").then_some(())
    });
    assert_eq!(stamp_of(&b), "2.0.0");
    assert_eq!(stamp_of(&a), "2.0.0");
    // Host A never applied its own announcements.
    assert_eq!(active(&a)["history"].as_array().unwrap().len(), 3);
}

#[test]
fn hosts_that_join_later_or_lost_their_queue_converge_on_the_last_activation() {
    let broker = Broker::shared();
    let (_ws_a, ws_b, a, b) = two_hosts(&broker);
    let ws_c = workspace(&broker, "host-c");
    let stamp_of = |host: &Host| {
        let reply = host.post("a", Some("text/plain"), "x");
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["stamp"].as_str().unwrap().to_string()
    };
    let active_version = |host: &Host| active(host)["active"]["version"].clone();
    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    assert_eq!(
        a.admin("POST", "/v1/plants/plant-a/plugins", &stamp_2)
            .status,
        201
    );
    let activated = std::time::Instant::now();
    assert_eq!(activate(&a, "2.0.0").status, 200);
    eventually("host B runs 2.0.0", || {
        (active_version(&b) == "2.0.0").then_some(())
    });
    let live = activated.elapsed();

    // A host that was never on this broker: no queue holds the announcement for it.
    let started = std::time::Instant::now();
    let c = ws_c.start();
    c.wait_ready();
    eventually("host C, new, runs 2.0.0", || {
        (active_version(&c) == "2.0.0").then_some(())
    });
    let joined = started.elapsed();
    assert_eq!(stamp_of(&c), "2.0.0");
    let doc = active(&c);
    assert_eq!(kept(&doc, "2.0.0")["origin"], "broadcast", "{doc}");

    // A host whose control queue is gone while it is away (deleted, expired by a policy).
    assert!(b.stop().success());
    broker.ctl(&["delete_queue", "millrace.control.host-b"]);
    let back = rollback(&a);
    assert_eq!(back.status, 200, "{}", back.body);
    eventually("host C back on 1.0.0", || {
        (active_version(&c) == "1.0.0").then_some(())
    });
    let started = std::time::Instant::now();
    let mut b = ws_b.start();
    b.wait_ready();
    runs_within(
        &mut b,
        "1.0.0",
        1200,
        "host B, its queue lost, never back on 1.0.0",
    );
    let returned = started.elapsed();
    assert_eq!(stamp_of(&b), "1.0.0");
    // Restarting a host that already runs the retained version applies nothing.
    let history = active(&c)["history"].as_array().unwrap().len();
    assert!(c.stop().success());
    let c = ws_c.start();
    c.wait_ready();
    assert_eq!(stamp_of(&c), "1.0.0");
    assert_eq!(active(&c)["history"].as_array().unwrap().len(), history);
    println!(
        "convergence: activation to host B {} ms; new host C start to 2.0.0 {} ms; host B with its queue lost, start to 1.0.0 {} ms (100 ms polling)",
        live.as_millis(),
        joined.as_millis(),
        returned.as_millis()
    );
}

#[test]
fn a_host_that_cannot_read_the_retained_activation_at_first_reads_it_again_and_converges() {
    let broker = Broker::start();
    let (_ws_a, ws_b, a, b) = two_hosts(&broker);
    // Host B away with its control queue gone: only the retained activation can bring it along.
    assert!(b.stop().success());
    broker.ctl(&["delete_queue", "millrace.control.host-b"]);
    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    assert_eq!(
        a.admin("POST", "/v1/plants/plant-a/plugins", &stamp_2)
            .status,
        201
    );
    assert_eq!(activate(&a, "2.0.0").status, 200);
    // The broker refuses reads of the retained activations (what any read error looks like to
    // the host): every other queue stays readable.
    let read = |pattern: &str| {
        broker.ctl(&["set_permissions", "-p", "/", "guest", ".*", ".*", pattern]);
    };
    read("^(?!millrace\\.control\\.last\\.).*");
    let mut b = ws_b.start();
    b.wait_ready();
    b.wait_for_log("cannot read the last activation retained on the broker");
    assert_eq!(active(&b)["active"]["version"], "1.0.0");
    // Readable again: host B reads it on its next try, within the same session.
    read(".*");
    runs_within(
        &mut b,
        "2.0.0",
        600,
        "host B never read the retained activation again",
    );
    let log = b.log_once(
        |log| {
            log.iter()
                .any(|l| l.contains("applying the last activation retained on the broker"))
        },
        "the retained activation applied",
    );
    // The refused read closed its own channel only: the session, and consuming, went on.
    session_went_on(&log);
}

#[test]
fn a_reloaded_configuration_with_a_new_broker_route_consumes_its_queue_without_restart() {
    let broker = Broker::shared();
    let ws = workspace(&broker, "host-a");
    // Reloaded through the admin API only, so its answer says what this reload changed.
    let config = std::fs::read_to_string(ws.config())
        .unwrap()
        .replace("[host]\n", "[host]\nwatch_config = false\n");
    ws.write("millrace.toml", &config);
    let host = ws.start();
    host.wait_ready();
    let pid = host.pid();
    let routes = &config[config.find("[routes.q]").unwrap()..];
    let q2 = routes[..routes.find("[[admin.tokens]]").unwrap_or(routes.len())]
        .replace("routes.q", "routes.q2")
        .replace("plant-a.stamp", "plant-a.stamp2");
    std::fs::write(ws.config(), format!("{config}\n{q2}")).unwrap();
    let reloaded = host.admin("POST", "/v1/config/reload", b"");
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    assert_eq!(reloaded.json()["added"], serde_json::json!(["q2"]));
    assert_eq!(reloaded.json()["broker_restarted"], true);
    host.wait_ready();
    let got = broker.client(
        "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.confirm_delivery()
ch.queue_declare('out2', durable=True)
ch.queue_bind('out2', 'plant-a.events', 'plant-a.q2')
ch.basic_publish('', 'plant-a.stamp2', b'hello', pika.BasicProperties(message_id='n-1', content_type='text/plain', delivery_mode=2))
out = None
deadline = time.time() + 60
while out is None and time.time() < deadline:
    m, p, b = ch.basic_get('out2', auto_ack=True)
    if m: out = {'id': p.message_id, 'body': json.loads(b)}
    else: time.sleep(0.05)
print(json.dumps(out))",
    );
    assert_eq!(got["id"], "n-1-1", "{got}");
    assert_eq!(got["body"]["input"], "hello");
    assert_eq!(host.pid(), pid, "never restarted");
}

#[test]
fn a_slot_a_reload_adds_without_a_broker_change_takes_the_retained_activation_without_reconnecting()
{
    let broker = Broker::shared();
    // Plant B's HTTP route `b` runs `stamp` on host A from the start, on host B only after a
    // reload (which touches no broker route, so host B's session goes on).
    let b_route = route_toml("b", &guest("guest-stamp-1"), r#"["log"]"#, "")
        .replace("plant = \"plant-a\"", "plant = \"plant-b\"");
    let plant_b = format!("\n[plants.plant-b]\n\n{b_route}");
    let ws_a = workspace(&broker, "host-a");
    let config_a = std::fs::read_to_string(ws_a.config()).unwrap();
    ws_a.write("millrace.toml", &format!("{config_a}{plant_b}"));
    let ws_b = workspace(&broker, "host-b");
    let config_b = std::fs::read_to_string(ws_b.config())
        .unwrap()
        .replace("[host]\n", "[host]\nwatch_config = false\n");
    ws_b.write("millrace.toml", &config_b);
    let (mut a, mut b) = (ws_a.start(), ws_b.start());
    for host in [&mut a, &mut b] {
        host.wait_ready();
        second_read_done(host);
    }

    // Plant B's 2.0.0 activated on host A: announced (host B runs no such slot: skipped) and
    // retained.
    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    let up = a.admin("POST", "/v1/plants/plant-b/plugins", &stamp_2);
    assert_eq!(up.status, 201, "{}", up.body);
    let activated = a.admin(
        "POST",
        "/v1/plants/plant-b/plugins/stamp/activate",
        br#"{"version": "2.0.0"}"#,
    );
    assert_eq!(activated.status, 200, "{}", activated.body);
    a.wait_for_log("activation announced to the other hosts");
    // Host B has taken the announcement from its queue (and skipped it) before the reload.
    eventually("host B's control queue empty", || {
        let queues = broker.ctl(&["list_queues", "name", "messages"]);
        queues
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["millrace.control.host-b", "0"])
            .then_some(())
    });

    std::fs::write(ws_b.config(), format!("{config_b}{plant_b}")).unwrap();
    let reloaded = b.admin("POST", "/v1/config/reload", b"");
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    assert_eq!(reloaded.json()["added"], serde_json::json!(["b"]));
    assert_eq!(reloaded.json()["broker_restarted"], false);
    let added = std::time::Instant::now();
    let version = |host: &Host| {
        let reply = host.post("b", Some("text/plain"), "x");
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["stamp"].as_str().unwrap().to_string()
    };
    eventually("host B runs plant B's 2.0.0 after the reload", || {
        (version(&b) == "2.0.0").then_some(())
    });
    println!(
        "reload to plant B's retained 2.0.0 on host B: {} ms",
        added.elapsed().as_millis()
    );
    let log = b.log_once(
        |log| {
            log.iter().any(|l| {
                l.contains("applying the last activation retained on the broker")
                    && l.contains("plant-b")
            }) && log
                .iter()
                .any(|l| l.contains("the retained activations of slots a reload added read"))
        },
        "plant B's retained activation applied, read as an added slot",
    );
    session_went_on(&log);
    let doc = b
        .admin("GET", "/v1/plants/plant-b/plugins/stamp", b"")
        .json();
    assert_eq!(kept(&doc, "2.0.0")["origin"], "broadcast", "{doc}");
}

#[test]
fn an_activation_made_while_the_broker_was_away_is_kept_and_reaches_the_other_hosts() {
    let mut broker = Broker::start();
    let (_ws_a, _ws_b, a, b) = two_hosts(&broker);
    let version = |host: &Host| active(host)["active"]["version"].clone();
    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    let up = a.admin("POST", "/v1/plants/plant-a/plugins", &stamp_2);
    assert_eq!(up.status, 201, "{}", up.body);
    // Announced (and retained): 2.0.0, then the rollback to 1.0.0.
    assert_eq!(activate(&a, "2.0.0").status, 200);
    eventually("host B runs 2.0.0", || {
        (version(&b) == "2.0.0").then_some(())
    });
    let back = rollback(&a);
    assert_eq!(back.status, 200, "{}", back.body);
    eventually("host B back on 1.0.0", || {
        (version(&b) == "1.0.0").then_some(())
    });
    // The broker goes; host A activates 2.0.0 again, which it cannot announce now.
    broker.stop();
    assert_eq!(activate(&a, "2.0.0").status, 200);
    broker.restart();
    // Back on the broker, the retained rollback is older than host A's activation: host A keeps
    // 2.0.0 and announces it, and host B follows.
    let mut b = b;
    runs_within(
        &mut b,
        "2.0.0",
        1200,
        "host B never got the activation made while the broker was away",
    );
    let mut a = a;
    a.wait_for_log(
        "this host's last activation is later than what the broker may retain; announcing it again",
    );
    assert_eq!(version(&a), "2.0.0");
    // The retained one is now host A's: a host reading it later agrees.
    let history = active(&a)["history"].as_array().unwrap().clone();
    assert_eq!(history.len(), 3, "{history:?}");
}

#[test]
fn two_hosts_activating_one_plugin_at_once_end_on_the_same_version() {
    let broker = Broker::shared();
    let (_ws_a, _ws_b, mut a, mut b) = two_hosts(&broker);
    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    let up = a.admin("POST", "/v1/plants/plant-a/plugins", &stamp_2);
    assert_eq!(up.status, 201, "{}", up.body);
    // Both at once: host A activates 2.0.0 and host B activates 1.0.0 again, each before the
    // other's announcement arrives (without an order, each would end on the other's).
    let call = |admin: &Option<String>, version: &str| {
        let base = admin.clone().expect("host.admin is set");
        let body = format!("{{\"version\": \"{version}\"}}");
        move || {
            let path = "/v1/plants/plant-a/plugins/stamp/activate";
            admin_request(&base, "POST", path, body.as_bytes()).status
        }
    };
    let (on_a, on_b) = (call(&a.admin, "2.0.0"), call(&b.admin, "1.0.0"));
    std::thread::scope(|s| {
        let (on_a, on_b) = (s.spawn(on_a), s.spawn(on_b));
        assert_eq!(on_a.join().unwrap(), 200);
        assert_eq!(on_b.join().unwrap(), 200);
    });
    // Each host has dealt with the other's announcement (applied it, or found it older).
    for (host, other) in [(&mut a, "host-b"), (&mut b, "host-a")] {
        host.wait_for_log_where(
            |l| {
                (l.contains("activation from another host applied")
                    || l.contains("not later than this slot's last one"))
                    && l.contains(other)
            },
            "the other host's announcement dealt with",
        );
    }
    let (on_a, on_b) = (active(&a), active(&b));
    assert_eq!(
        on_a["active"]["version"], on_b["active"]["version"],
        "host A: {on_a}\nhost B: {on_b}"
    );
    let stamp = |doc: &serde_json::Value| doc["history"].as_array().unwrap().last().cloned();
    assert_eq!(
        stamp(&on_a).unwrap()["stamp_ms"],
        stamp(&on_b).unwrap()["stamp_ms"]
    );
    // The broker retains the later one too (whichever was published last): a host joining
    // now converges on it.
    let ws_c = workspace(&broker, "host-c");
    let c = ws_c.start();
    c.wait_ready();
    let agreed = on_a["active"]["version"].clone();
    eventually("host C runs the version hosts A and B agreed on", || {
        (active(&c)["active"]["version"] == agreed).then_some(())
    });
}

/// Every queue on `broker` with its arguments (`rabbitmqctl list_queues`), as name → {argument:
/// value}.
fn queue_arguments(broker: &Broker) -> serde_json::Map<String, serde_json::Value> {
    let out = broker.ctl(&["list_queues", "name", "arguments", "--formatter", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&out[out.find('[').unwrap_or(0)..])
        .unwrap_or_else(|e| panic!("list_queues is not JSON ({e}): {out}"));
    let mut queues = serde_json::Map::new();
    for queue in listed.as_array().expect("a list of queues") {
        let args = queue["arguments"].as_array().expect("arguments");
        let args = args
            .iter()
            .map(|a| (a[0].as_str().unwrap().to_string(), a[2].clone()))
            .collect();
        let name = queue["name"].as_str().unwrap().to_string();
        queues.insert(name, serde_json::Value::Object(args));
    }
    queues
}

#[test]
fn queues_read_and_given_back_have_a_delivery_limit_none_reaches_and_control_queues_expire_and_are_bounded()
 {
    let broker = Broker::shared();
    // Host A's control queue as the first release declared it (quorum, no expiry), host C's as
    // the release before the length bounds (expiry and a delivery limit none reaches).
    broker.client(
        "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))\n\
         ch = c.channel()\n\
         ch.queue_declare('millrace.control.host-a', durable=True, arguments={'x-queue-type': 'quorum'})\n\
         ch.queue_declare('millrace.control.host-c', durable=True, arguments={'x-queue-type': 'quorum', 'x-expires': 604800000, 'x-delivery-limit': 2147483647})\n\
         print('{}')",
    );
    let (_ws_a, _ws_b, mut a, b) = two_hosts(&broker);
    a.wait_for_log("declared by an earlier release");
    let ws_c = workspace(&broker, "host-c");
    let mut c = ws_c.start();
    c.wait_ready();
    c.wait_for_log("declared by an earlier release");
    let retained = RETAINED;
    let queues = eventually("the retained activation's queue is declared", || {
        let queues = queue_arguments(&broker);
        queues.contains_key(retained).then_some(queues)
    });
    let args = |name: &str| {
        queues
            .get(name)
            .unwrap_or_else(|| panic!("no queue {name}: {queues:?}"))
            .clone()
    };
    // RabbitMQ 4 would give these a limit of 20, and every read of a retained activation gives
    // it back: a limit none reaches. Not -1, which RabbitMQ 3.10 takes for a limit.
    let none = serde_json::json!(2147483647);
    assert_eq!(args(retained)["x-delivery-limit"], none, "{queues:?}");
    assert_eq!(args(retained)["x-max-length"], 16, "{queues:?}");
    assert_eq!(args("millrace.q.dead-letter")["x-delivery-limit"], none);
    assert_eq!(args("millrace.control.host-b")["x-delivery-limit"], none);
    assert_eq!(args("millrace.control.host-b")["x-expires"], 604_800_000);
    assert_eq!(args("millrace.control.host-b")["x-max-length"], 1000);
    assert_eq!(
        args("millrace.control.host-b")["x-max-length-bytes"],
        268_435_456
    );
    // The source queue keeps the configured poison fuse.
    assert_eq!(args("plant-a.stamp")["x-delivery-limit"], 20);
    // The earlier release's queue is kept as it was, without the warning for foreign queues,
    // and still followed.
    assert_eq!(
        args("millrace.control.host-a"),
        serde_json::json!({"x-queue-type": "quorum"})
    );
    assert_eq!(
        args("millrace.control.host-c"),
        serde_json::json!({"x-queue-type": "quorum", "x-expires": 604_800_000, "x-delivery-limit": 2147483647})
    );
    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    let up = b.admin("POST", "/v1/plants/plant-a/plugins", &stamp_2);
    assert_eq!(up.status, 201, "{}", up.body);
    assert_eq!(activate(&b, "2.0.0").status, 200);
    eventually("hosts A and C run what host B activated", || {
        (active(&a)["active"]["version"] == "2.0.0" && active(&c)["active"]["version"] == "2.0.0")
            .then_some(())
    });
    let log = a.drain_log().join("\n");
    assert!(!log.contains("exists with other arguments"), "{log}");
    let log = c.drain_log().join("\n");
    assert!(!log.contains("exists with other arguments"), "{log}");
    // Host B away, and its control queue flooded: the broker keeps the newest 1,000.
    assert!(b.stop().success());
    eventually("host B's control queue has no consumer", || {
        let out = broker.ctl(&["list_queues", "name", "consumers"]);
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["millrace.control.host-b", "0"])
            .then_some(())
    });
    broker.client(
        "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))\n\
         ch = c.channel()\n\
         ch.confirm_delivery()\n\
         for i in range(1200):\n    ch.basic_publish('', 'millrace.control.host-b', str(i).encode())\n\
         print('{}')",
    );
    assert_eq!(broker.depth("millrace.control.host-b"), 1000);
    let oldest = broker.client(
        "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))\n\
         m, p, body = c.channel().basic_get('millrace.control.host-b', auto_ack=False)\n\
         print(json.dumps(body.decode()))",
    );
    assert_eq!(oldest, "200", "the oldest were dropped");
}

/// Two readers of the retained activations (hosts reconnecting at once) with an announcement
/// between their reads, giving them back in the other order. On a quorum queue a message given
/// back goes to the front and the queue's length bound drops from the front: with room for one
/// (or four, four held) the newer activation was dropped and a host joining then took an older
/// one. Readers now remove what is older than the latest they read, at once, so the bound never
/// drops.
#[test]
fn readers_giving_retained_activations_back_out_of_order_leave_the_latest_to_join_by() {
    let broker = Broker::shared();
    let (_ws_a, _ws_b, mut a, b) = two_hosts_announcing_2(&broker);
    let retained = RETAINED;
    // The queue full: 2.0.0's announcement and three copies of it stamped earlier (what hosts
    // that never read it in between would leave; an announcement trims the queue).
    broker.client(&format!(
        r#"c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.confirm_delivery()
m, p, body = ch.basic_get({retained:?}, auto_ack=False)
for k in (1, 2, 3):
    h = dict(p.headers)
    h['stamp-ms'] = int(h['stamp-ms']) - 1000 * k
    ch.basic_publish('', {retained:?}, body, pika.BasicProperties(headers=h, delivery_mode=2, content_type=p.content_type))
c.close()
print('{{}}')"#
    ));
    assert_eq!(broker.depth(retained), 4, "the queue is full");
    let dir = tempfile::tempdir().unwrap();
    let (held, go) = (dir.path().join("held"), dir.path().join("go"));
    let read = std::thread::scope(|scope| {
        // Reader X holds the four; the rollback (to 1.0.0) is announced; reader Y holds it; Y
        // gives back first, then X.
        let readers = scope.spawn(|| {
            broker.client(&format!(
                r#"def reader():
    c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
    ch, got = c.channel(), []
    while True:
        m, p, b = ch.basic_get({retained:?}, auto_ack=False)
        if not m: return c, ch, got
        got.append(p.headers['version'])
x = reader()
open({held:?}, 'w').close()
while not os.path.exists({go:?}): time.sleep(0.05)
y = reader()
y[1].close()
time.sleep(0.3)
x[1].close()
print(json.dumps([x[2], y[2]]))"#
            ))
        });
        eventually("reader X holds the retained activations", || {
            held.exists().then_some(())
        });
        let back = rollback(&a);
        assert_eq!(back.status, 200, "{}", back.body);
        a.wait_for_log("activation announced to the other hosts");
        std::fs::write(&go, "").unwrap();
        readers.join().expect("the readers ran")
    });
    assert_eq!(
        read,
        serde_json::json!([["2.0.0", "2.0.0", "2.0.0", "2.0.0"], ["1.0.0"]]),
        "what X and Y held"
    );
    eventually("host B back on 1.0.0", || {
        (active(&b)["active"]["version"] == "1.0.0").then_some(())
    });
    // A host joining now takes the rollback, the latest, not 2.0.0 given back after it.
    let ws_c = workspace(&broker, "host-c");
    let mut c = ws_c.start();
    c.wait_ready();
    let applied = c.wait_for_log("applying the last activation retained");
    assert!(applied.contains("version=1.0.0"), "{applied}");
    assert_eq!(active(&c)["active"]["version"], "1.0.0");
    let reply = c.post("a", Some("text/plain"), "x");
    assert_eq!(reply.json()["stamp"], "1.0.0", "{}", reply.body);
    // Host C's reads removed the older ones (counted after its second read, which holds the
    // message for a moment).
    c.wait_for_log("the retained activations read again");
    retained_settles_at_one(&broker, "only the latest left");
}

/// A host whose first read of a retained activation finds the queue empty, because another
/// reader holds its message just then, reads it again a few seconds on and converges; its empty
/// read announces nothing.
#[test]
fn a_host_that_finds_the_retained_activation_held_by_another_reader_converges_on_its_second_read() {
    joins_while_another_reader_holds_the_retained_activation(false);
}

/// The same with the message held across the host's second read too: its periodic read
/// (`host.amqp_retained_reread_s`, 5 s here) finds it once it is given back.
#[test]
fn a_host_whose_two_reads_find_the_retained_activation_held_converges_on_a_periodic_read() {
    joins_while_another_reader_holds_the_retained_activation(true);
}

/// Host C joins hosts A and B (on 2.0.0) while reader X holds the retained activation, across
/// C's first read only or, with `past_second_read`, across its second read too; once X gives it
/// back, C must come to run 2.0.0 without anything announced by its empty reads.
fn joins_while_another_reader_holds_the_retained_activation(past_second_read: bool) {
    let broker = Broker::shared();
    let (_ws_a, _ws_b, a, b) = two_hosts_announcing_2(&broker);
    eventually("host B on 2.0.0", || {
        (active(&b)["active"]["version"] == "2.0.0").then_some(())
    });
    let retained = RETAINED;
    let dir = tempfile::tempdir().unwrap();
    let (held, go) = (dir.path().join("held"), dir.path().join("go"));
    let ws_c = workspace(&broker, "host-c");
    if past_second_read {
        with_host_line(&ws_c, "amqp_retained_reread_s = 5");
    }
    let (mut c, read) = std::thread::scope(|scope| {
        // Reader X holds the retained activation until told to give it back.
        let reader = scope.spawn(|| {
            broker.client(&format!(
                r#"c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
m, p, b = ch.basic_get({retained:?}, auto_ack=False)
open({held:?}, 'w').close()
while not os.path.exists({go:?}): time.sleep(0.05)
ch.close()
print(json.dumps(p.headers['version'] if m else None))"#
            ))
        });
        eventually("reader X holds the retained activation", || {
            held.exists().then_some(())
        });
        let mut c = ws_c.start();
        c.wait_ready();
        let first = c.wait_for_log("the retained activations read");
        assert!(first.contains("unchecked=0"), "{first}");
        if past_second_read {
            c.wait_for_log("the retained activations read again");
        }
        assert_eq!(
            active(&c)["active"]["version"],
            "1.0.0",
            "host C found nothing while X held the message"
        );
        std::fs::write(&go, "").unwrap();
        (c, reader.join().expect("the reader ran"))
    });
    assert_eq!(read, serde_json::json!("2.0.0"), "what X held");
    runs_within(
        &mut c,
        "2.0.0",
        300,
        "host C never read the retained activation again",
    );
    let log = c.log_once(
        |log| {
            log.iter()
                .any(|l| l.contains("applying the last activation retained on the broker"))
        },
        "the retained activation applied",
    );
    assert!(
        !log.iter().any(|l| l.contains("announcing it again")),
        "{log:?}"
    );
    // Nothing was announced by host C's empty reads: the others stay on 2.0.0.
    assert_eq!(active(&a)["active"]["version"], "2.0.0");
    assert_eq!(active(&b)["active"]["version"], "2.0.0");
    retained_settles_at_one(&broker, "the activation retained");
}

/// What else lands in a retained queue (a message without an activation's headers, one
/// claiming a later activation whose bytes do not have its digest, a later activation of
/// another plant) is removed by a reader and does not pass for the latest: a host joining
/// takes the real one, which stays retained.
#[test]
fn messages_in_a_retained_queue_that_are_not_activations_are_removed_and_the_real_one_stays() {
    let broker = Broker::shared();
    let (_ws_a, _ws_b, _a, _b) = two_hosts_announcing_2(&broker);
    let retained = RETAINED;
    broker.client(&format!(
        r#"c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
ch = c.channel()
ch.confirm_delivery()
m, p, body = ch.basic_get({retained:?}, auto_ack=False)
ch.basic_nack(m.delivery_tag, requeue=True)
ch.basic_publish('', {retained:?}, b'junk', pika.BasicProperties(delivery_mode=2))
h = dict(p.headers)
h['stamp-ms'] = int(h['stamp-ms']) + 1000000
h['version'] = '9.9.9'
ch.basic_publish('', {retained:?}, b'not the component', pika.BasicProperties(headers=h, delivery_mode=2))
h = dict(p.headers)
h['stamp-ms'] = int(h['stamp-ms']) + 2000000
h['plant'] = 'plant-b'
ch.basic_publish('', {retained:?}, body, pika.BasicProperties(headers=h, delivery_mode=2))
c.close()
print('{{}}')"#
    ));
    assert_eq!(broker.depth(retained), 4);
    let ws_c = workspace(&broker, "host-c");
    let mut c = ws_c.start();
    c.wait_ready();
    let applied = c.wait_for_log("applying the last activation retained");
    assert!(applied.contains("version=2.0.0"), "{applied}");
    runs_within(&mut c, "2.0.0", 300, "host C never ran the real activation");
    let log = c.drain_log();
    let removed = log
        .iter()
        .filter(|l| l.contains("a retained message that is not an activation"))
        .count();
    assert_eq!(removed, 3, "{log:#?}");
    c.wait_for_log("the retained activations read again");
    retained_settles_at_one(&broker, "the real one left");
}

/// The environment variable holding the fleet's control key in [`keyed`] workspaces, and the key.
const KEY_VAR: &str = "MILLRACE_TEST_CONTROL_KEY";
const KEY: &str = "5f0c2a9e7d41b3866e12f0a4c9d87b3e21a6f5c0d9e8b7a61234567890abcdef";

/// [`workspace`] with `host.control_key_env`; its host starts with [`start_keyed`].
fn keyed(broker: &Broker, id: &str) -> Workspace {
    let ws = workspace(broker, id);
    with_host_line(&ws, &format!("control_key_env = \"{KEY_VAR}\""));
    ws
}

fn start_keyed(ws: &Workspace) -> Host {
    Host::start(&ws.config(), &[(KEY_VAR, KEY)])
}

#[test]
fn with_a_control_key_only_activations_sealed_with_it_are_applied_or_retained() {
    let broker = Broker::shared();
    let (ws_a, ws_b) = (keyed(&broker, "host-a"), keyed(&broker, "host-b"));
    let (mut a, mut b) = (start_keyed(&ws_a), start_keyed(&ws_b));
    for host in [&mut a, &mut b] {
        host.wait_ready();
        second_read_done(host);
    }
    // Sealed activations go from host to host as before.
    announce_2(&mut a);
    runs_within(
        &mut b,
        "2.0.0",
        300,
        "host B never applied A's sealed activation",
    );
    assert!(
        b.wait_for_log("activation from another host applied")
            .contains("version=2.0.0")
    );

    // A publisher without the key offers version 1.0.0 (its real bytes and digest), stamped far
    // in the future: once without a seal, once with the seal of the real activation. Each to
    // every host's queue and to the retained queue.
    let (retained, read) = (RETAINED, read_retained());
    let stamp_1 = guest("guest-stamp-1");
    let sealed = broker.client(&format!(
        r#"import hashlib
{read}old = open({stamp_1:?}, 'rb').read()
for n, seal in enumerate([None, p.headers.get('seal', '00' * 32)]):
    h = dict(p.headers)
    h.pop('seal', None)
    if seal: h['seal'] = seal
    h['version'] = '1.0.0'
    h['digest'] = 'sha256:' + hashlib.sha256(old).hexdigest()
    h['stamp-ms'] = int(h['stamp-ms']) + 1000000000 + n
    h['x-millrace-host'] = 'host-x'
    for exchange, key in [('millrace.control', ''), ('', {retained:?})]:
        ch.basic_publish(exchange, key, old, pika.BasicProperties(headers=h, delivery_mode=2))
c.close()
print(json.dumps('seal' in p.headers))"#
    ));
    assert_eq!(sealed, true, "host A seals its activations");
    // Host B drops both announcements and stays on 2.0.0.
    for _ in 0..2 {
        let dropped = b.wait_for_log("not sealed with this fleet's control key");
        assert!(dropped.contains("version=1.0.0"), "{dropped}");
    }
    assert_eq!(active(&b)["active"]["version"], "2.0.0");
    // A host joining later finds the real activation retained and removes the two others.
    let ws_c = keyed(&broker, "host-c");
    let mut c = start_keyed(&ws_c);
    c.wait_ready();
    let applied = c.wait_for_log("applying the last activation retained");
    assert!(applied.contains("version=2.0.0"), "{applied}");
    runs_within(&mut c, "2.0.0", 300, "host C never ran the real activation");
    c.wait_for_log("the retained activations read again");
    let removed = c
        .drain_log()
        .iter()
        .filter(|l| l.contains("a retained message that is not an activation"))
        .count();
    assert_eq!(removed, 2);
    retained_settles_at_one(&broker, "the real one left");
    // No host ran the offered version.
    for host in [&a, &b, &c] {
        assert_eq!(active(host)["active"]["version"], "2.0.0");
    }
}

/// A retained activation lost from its queue (pushed out by a full queue, the queue purged) is
/// announced again by the host that made it at its next periodic read, within the same broker
/// session; a host joining then converges on it.
#[test]
fn a_retained_activation_lost_from_its_queue_is_announced_again_by_the_host_that_made_it() {
    let broker = Broker::shared();
    let ws_a = workspace(&broker, "host-a");
    with_host_line(&ws_a, "amqp_retained_reread_s = 5");
    let mut a = ws_a.start();
    a.wait_ready();
    second_read_done(&mut a);
    announce_2(&mut a);
    let retained = RETAINED;
    let purged = broker.client(&format!(
        r#"c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))
print(c.channel().queue_purge({retained:?}).method.message_count)"#
    ));
    assert_eq!(purged, 1, "the retained activation was there, and is gone");
    let again = a.wait_for_log("announcing it again");
    assert!(again.contains("version=2.0.0"), "{again}");
    retained_settles_at_one(&broker, "the activation retained again");
    session_went_on(&a.drain_log());
    let ws_c = workspace(&broker, "host-c");
    let mut c = ws_c.start();
    c.wait_ready();
    let applied = c.wait_for_log("applying the last activation retained");
    assert!(applied.contains("version=2.0.0"), "{applied}");
    runs_within(
        &mut c,
        "2.0.0",
        300,
        "host C never ran the activation announced again",
    );
}

/// The environment variable holding the keys also taken in [`changing_keys`] workspaces, and a
/// second key.
const ALSO_VAR: &str = "MILLRACE_TEST_CONTROL_KEY_ALSO";
const NEW_KEY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

/// A host sealing with `seal` and taking seals of `also` too, started.
fn changing_keys(broker: &Broker, id: &str, seal: &str, also: &str) -> (Workspace, Host) {
    let ws = keyed(broker, id);
    with_host_line(&ws, &format!("control_key_also_env = \"{ALSO_VAR}\""));
    let host = Host::start(&ws.config(), &[(KEY_VAR, seal), (ALSO_VAR, also)]);
    host.wait_ready();
    (ws, host)
}

/// The middle of a change of keys: host A still seals with the old key, host B already with
/// the new one, both taking both; activations go both ways, and a host on the new key alone
/// (the end of the change) converges on the latest.
#[test]
fn hosts_changing_keys_take_each_others_activations_throughout() {
    let broker = Broker::shared();
    let (_ws_a, mut a) = changing_keys(&broker, "host-a", KEY, NEW_KEY);
    let (_ws_b, mut b) = changing_keys(&broker, "host-b", NEW_KEY, KEY);
    for host in [&mut a, &mut b] {
        second_read_done(host);
    }
    announce_2(&mut a);
    runs_within(
        &mut b,
        "2.0.0",
        300,
        "host B never applied the old key's seal",
    );
    let back = rollback(&b);
    assert_eq!(back.status, 200, "{}", back.body);
    runs_within(
        &mut a,
        "1.0.0",
        300,
        "host A never applied the new key's seal",
    );
    for host in [&mut a, &mut b] {
        let log = host.drain_log();
        assert!(
            !log.iter().any(|l| l.contains("not sealed")),
            "nothing dropped: {log:#?}"
        );
    }
    // The change done: a host with the new key alone takes the rollback B sealed with it.
    let ws_c = keyed(&broker, "host-c");
    let mut c = Host::start(&ws_c.config(), &[(KEY_VAR, NEW_KEY)]);
    c.wait_ready();
    let applied = c.wait_for_log("applying the last activation retained");
    assert!(applied.contains("version=1.0.0"), "{applied}");
    runs_within(
        &mut c,
        "1.0.0",
        300,
        "host C never ran the retained rollback",
    );
}

/// Older activations replayed to a host that made the later one (anyone who may publish to the
/// control exchange can replay them) have it announce its own again at most twice in 10 s, not
/// once per replay: each announcement sends its component to every host.
#[test]
fn replayed_older_activations_do_not_make_a_host_resend_its_own_per_replay() {
    let broker = Broker::shared();
    let (_ws_a, _ws_b, mut a, _b) = two_hosts_announcing_2(&broker);
    let before = a.drain_log().len();
    let read = read_retained();
    broker.client(&format!(
        r#"{read}h = dict(p.headers)
h['stamp-ms'] = int(h['stamp-ms']) - 1000
h['stamp-host'] = 'host-x'
h['x-millrace-host'] = 'host-x'
for _ in range(30):
    ch.basic_publish('millrace.control', '', body, pika.BasicProperties(headers=h, delivery_mode=2))
c.close()
print('{{}}')"#
    ));
    // Host A took all 30 (its control queue empty), and answered them.
    let queue = "millrace.control.host-a";
    (0..300)
        .find(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            broker.depth(queue) == 0
        })
        .expect("host A took the replays");
    a.wait_for_log("activation announced to the other hosts");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let sent = a.drain_log()[before..]
        .iter()
        .filter(|l| l.contains("activation announced to the other hosts"))
        .count();
    assert!(
        (1..=2).contains(&sent),
        "announced again {sent} times for 30 replays"
    );
}
