//! Crashes in the middle of a 100,000-message stream through a broker route: the broker killed
//! with SIGKILL and restarted, then the host killed with SIGKILL and restarted. Afterwards every
//! input has its output, under one id derived from the input's (none lost, no second output
//! under another id); with the host stopped the source queue is empty (every delivery was
//! acknowledged) and nothing was dead-lettered. Inputs are published and outputs read with lapin
//! directly (a client of its own connection, not the host's code).
//!
//! At-least-once means a crash can put a copy of an output on the queue a second time (the broker
//! took it but its confirm never arrived, or the host died between the confirm and recording the
//! input as settled); the copy carries the same id. Only deliveries in hand at the crash can be
//! repeated, so the tests bound the copies by the prefetch and print how many they saw.

use crate::harness::*;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use std::collections::HashSet;
use std::time::Duration;

/// The inputs of the streams whose broker or host is killed mid-way here: 100,000, or
/// `MILLRACE_STREAM_MESSAGES` (at least 3,000), which the test command sets lower to bound CI's
/// time (README.md).
fn stream_messages() -> usize {
    match std::env::var("MILLRACE_STREAM_MESSAGES") {
        Err(_) => 100_000,
        Ok(n) => match n.parse::<usize>() {
            Ok(n) if n >= 3_000 => n,
            _ => panic!("MILLRACE_STREAM_MESSAGES={n:?}: a number of inputs, at least 3,000"),
        },
    }
}
const PREFETCH: usize = 256;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn workspace(broker: &Broker) -> Workspace {
    mes_stream_workspace(&format!("amqp = \"{}\"", broker.url()), PREFETCH)
}

/// The stream's route `mes` (queue `plant-a.mes` → exchange `plant-a.events`, mes-fixed-width
/// with its table) with `prefetch`; `host` is the body of `[host]` (its broker link).
pub fn mes_stream_workspace(host: &str, prefetch: usize) -> Workspace {
    let mes = plugin("mes-fixed-width");
    let route = route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "")
        .replace("source = \"http\"", "source = \"amqp\"")
        .replace(
            "sink = \"reply\"",
            &format!("sink = \"amqp\"\namqp = {{ queue = \"plant-a.mes\", exchange = \"plant-a.events\", prefetch = {prefetch} }}"),
        );
    Workspace::new(&format!(
        "[host]\n{host}\n\n[plants.plant-a.lookups.work_centres]\nentries = {{ WC01 = \"ASSY-01\" }}\n\n{route}\n{}",
        mes_settings("mes")
    ))
}

/// Declare the route's queue and an output queue `out` bound to everything it publishes (both
/// with `queue_args`: e.g. `x-queue-type`), then publish `n` persistent inputs `m-0`… with
/// confirms (windows of 1,000) to the broker at `url`.
pub fn publish_inputs(url: &str, n: usize, queue_args: &FieldTable) {
    let body = record("WO-1", "0000001000", "WC01");
    runtime().block_on(async {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.exchange_declare(
            "plant-a.events".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare(
            "out".into(),
            QueueDeclareOptions::durable(),
            queue_args.clone(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "out".into(),
            "plant-a.events".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut args = queue_args.clone();
        args.insert(
            "x-dead-letter-exchange".into(),
            lapin::types::AMQPValue::LongString("millrace.mes.dead-letter".into()),
        );
        ch.queue_declare("plant-a.mes".into(), QueueDeclareOptions::durable(), args)
            .await
            .unwrap();
        for window in (0..n).collect::<Vec<_>>().chunks(1000) {
            let mut confirms = Vec::with_capacity(window.len());
            for i in window {
                let properties = BasicProperties::default()
                    .with_message_id(format!("m-{i}").into())
                    .with_content_type("text/plain".into())
                    .with_delivery_mode(2);
                confirms.push(
                    ch.basic_publish(
                        "".into(),
                        "plant-a.mes".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        properties,
                    )
                    .await
                    .expect("publish"),
                );
            }
            for confirm in confirms {
                assert!(confirm.await.expect("confirm").is_ack());
            }
        }
        millrace_host::amqp::session::close_connection(&conn, "done").await;
    });
}

/// Messages ready in `queue` at the broker at `url`. While the broker restarts it cannot be
/// asked: this tries again until it answers, and fails the test if it never does.
pub fn ready(url: &str, queue: &str) -> u32 {
    // A guard against a broker that never comes back, not a timing assertion.
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let asked = runtime().block_on(async {
            let conn = Connection::connect(url, ConnectionProperties::default())
                .await
                .map_err(|e| e.to_string())?;
            let count = async {
                conn.create_channel()
                    .await?
                    .queue_declare(
                        queue.into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map(|q| q.message_count())
            }
            .await
            .map_err(|e| e.to_string());
            millrace_host::amqp::session::close_connection(&conn, "done").await;
            count
        });
        match asked {
            Ok(count) => return count,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("cannot ask the broker how many messages {queue} holds: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Wait until `out` holds at least `n` messages.
pub fn wait_for_outputs(url: &str, n: u32) {
    // A guard against a stalled stream, not a timing assertion.
    for _ in 0..6000 {
        if ready(url, "out") >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("fewer than {n} outputs after 10 minutes");
}

/// Read the output ids off `out` as they come until `n` distinct ones are there, or `guard`
/// passed (a guard against a stalled stream, not a timing assertion): every id read, copies
/// included, and the distinct ones. Copies make the queue's depth overshoot, so depth alone
/// cannot say when the stream is done.
fn read_until(url: &str, n: usize, guard: Duration) -> (Vec<String>, HashSet<String>) {
    let mut ids = Vec::new();
    let mut distinct = HashSet::new();
    let deadline = std::time::Instant::now() + guard;
    while distinct.len() < n && std::time::Instant::now() < deadline {
        for id in read_outputs(url) {
            distinct.insert(id.clone());
            ids.push(id);
        }
    }
    (ids, distinct)
}

/// Read every output id off `out` (until it has been quiet for 2 s). Each read is acknowledged
/// (several at once) only once recorded: a delivery still on its way when the reader closes
/// goes back to the queue, never lost on the reader's side.
fn read_outputs(url: &str) -> Vec<String> {
    runtime().block_on(async {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.unwrap();
        ch.basic_qos(2000, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = ch
            .basic_consume(
                "out".into(),
                "reader".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut ids = Vec::new();
        let mut unacked = None;
        while let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
        {
            let delivery = delivery.expect("delivery");
            ids.push(
                delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            );
            unacked = Some(delivery.delivery_tag);
            if ids.len() % 500 == 0 {
                ch.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                    .await
                    .expect("ack");
                unacked = None;
            }
        }
        if let Some(tag) = unacked {
            ch.basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .expect("ack");
        }
        millrace_host::amqp::session::close_connection(&conn, "done").await;
        ids
    })
}

/// Every one of the `inputs` inputs has its output under the id derived from its own, at most
/// `bound` copies of those; once `hosts` have stopped, nothing waits unacknowledged or was
/// dead-lettered. Returns the copies seen. `killed`: the logs of hosts killed earlier in the
/// stream, for the account a failure gives.
pub fn assert_each_input_once(
    url: &str,
    inputs: usize,
    hosts: Vec<Host>,
    killed: Vec<Vec<String>>,
    what: &str,
    bound: usize,
) -> usize {
    let (mut ids, mut distinct) = read_until(url, inputs, Duration::from_secs(600));
    // Stopped, the hosts publish nothing more and hold no delivery: what they never
    // acknowledged is back in the source queue, and late copies are in `out`.
    let killed_count = killed.len();
    let mut logs = killed;
    for mut host in hosts {
        assert!(host.stop_in_place().success(), "{what}: SIGTERM exits 0");
        logs.push(host.drain_log());
    }
    for id in read_outputs(url) {
        distinct.insert(id.clone());
        ids.push(id);
    }
    let missing: Vec<String> = (0..inputs)
        .map(|i| format!("m-{i}-1"))
        .filter(|id| !distinct.contains(id))
        .take(5)
        .collect();
    if let Some(first) = missing.first() {
        // What the hosts said of the first lost one's input, for the failure.
        let input = format!(
            "m-{} ",
            first.trim_end_matches("-1").trim_start_matches("m-")
        );
        // Each log is labelled: the hosts killed earlier first, then those stopped here.
        let labelled: Vec<(String, &Vec<String>)> = logs
            .iter()
            .enumerate()
            .map(|(i, log)| {
                let label = if i < killed_count {
                    format!("killed host {i}")
                } else {
                    format!("host {}", i - killed_count)
                };
                (label, log)
            })
            .collect();
        let said: Vec<String> = labelled
            .iter()
            .flat_map(|(label, log)| {
                log.iter()
                    .filter(|l| l.contains(&format!("message_id={input}")))
                    .map(move |l| format!("{label}: {l}"))
            })
            .collect();
        let warned: Vec<String> = labelled
            .iter()
            .flat_map(|(label, log)| {
                log.iter()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .take(40)
                    .map(move |l| format!("{label}: {l}"))
            })
            .collect();
        let parked: Vec<String> = ["1000ms", "2000ms", "4000ms", "8000ms"]
            .iter()
            .map(|d| format!("{d}: {}", ready(url, &format!("plant-a.mes.retry.{d}"))))
            .collect();
        let strangers: Vec<&String> = distinct
            .iter()
            .filter(|id| {
                !id.strip_prefix("m-")
                    .and_then(|rest| rest.strip_suffix("-1"))
                    .is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n < inputs))
            })
            .take(5)
            .collect();
        panic!(
            "{what}: outputs lost, e.g. {missing:?}; inputs waiting {}, dead letters {}, parked in the delay queues {parked:?}, outputs with other ids {strangers:?}; the hosts' log lines about {input}: {said:#?}; their warnings: {warned:#?}",
            ready(url, "plant-a.mes"),
            ready(url, "millrace.mes.dead-letter")
        );
    }
    assert_eq!(
        distinct.len(),
        inputs,
        "{what}: only the expected ids, one per input"
    );
    let copies = ids.len() - distinct.len();
    println!(
        "{what}: {inputs} inputs, {} distinct outputs, {copies} repeated copies (same id)",
        distinct.len()
    );
    assert!(
        copies <= bound,
        "{what}: {copies} copies, more than {bound}"
    );
    assert_eq!(
        ready(url, "plant-a.mes"),
        0,
        "{what}: inputs left unacknowledged"
    );
    assert_eq!(
        ready(url, "millrace.mes.dead-letter"),
        0,
        "{what}: dead letters"
    );
    copies
}

#[test]
fn broker_killed_mid_stream_loses_nothing_and_repeats_only_deliveries_in_hand() {
    let messages = stream_messages();
    let mut broker = Broker::start();
    let ws = workspace(&broker);
    publish_inputs(&broker.url(), messages, &FieldTable::default());
    let host = ws.start();
    host.wait_ready();
    wait_for_outputs(&broker.url(), (messages / 3) as u32);
    broker.kill9();
    broker.restart();
    host.wait_ready();
    // Only deliveries in hand at the crash can be published again: at most the prefetch.
    assert_each_input_once(
        &broker.url(),
        messages,
        vec![host],
        Vec::new(),
        "broker kill -9",
        PREFETCH,
    );
}

#[test]
fn host_killed_mid_stream_loses_nothing_and_repeats_only_deliveries_in_hand() {
    let messages = stream_messages();
    let broker = Broker::start();
    let ws = workspace(&broker);
    publish_inputs(&broker.url(), messages, &FieldTable::default());
    let host = ws.start();
    host.wait_ready();
    wait_for_outputs(&broker.url(), (messages / 3) as u32);
    let killed = host.kill9();
    let host = ws.start();
    host.wait_ready();
    assert_each_input_once(
        &broker.url(),
        messages,
        vec![host],
        vec![killed],
        "host kill -9",
        PREFETCH,
    );
}

/// A broker method by its class and method ids (AMQP 0-9-1 §4.2.6), as a relay matches it.
type Method = (u16, u16);
/// `basic.ack`: the broker's confirm of a publish.
const BASIC_ACK: Method = (60, 80);
/// `channel.close-ok`: the broker's answer to the close of a channel.
const CHANNEL_CLOSE_OK: Method = (20, 41);
/// `connection.close-ok`: the broker's answer to the close of the connection.
const CONNECTION_CLOSE_OK: Method = (10, 51);

/// How long a relay that ate a `connection.close-ok` keeps the client's socket open: far longer
/// than the host waits for the answer.
const HUNG_NODE_HOLDS: Duration = Duration::from_secs(120);

/// A TCP proxy in front of a broker that relays the broker's frames one by one and, on the first
/// connection it takes, drops every frame of the broker's methods in `eats`: the connection
/// stays alive (heartbeats, deliveries and every other answer pass), the methods eaten never
/// arrive; after eating a `connection.close-ok` it relays nothing more and holds the client's
/// socket open ([`HUNG_NODE_HOLDS`]), as a hung node would. Later connections pass whole.
struct FrameEater {
    port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    eaten: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FrameEater {
    fn start(upstream: u16, eats: &'static [Method]) -> FrameEater {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let eaten = Arc::new(AtomicUsize::new(0));
        let (counted, eaten_here) = (Arc::clone(&connections), Arc::clone(&eaten));
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
                let (mut up_from, mut up_to) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_from, &mut up_to);
                    let _ = up_to.shutdown(std::net::Shutdown::Both);
                });
                let eaten_here = Arc::clone(&eaten_here);
                let eats: &[Method] = if first { eats } else { &[] };
                std::thread::spawn(move || relay_frames(server, client, eats, &eaten_here));
            }
        });
        FrameEater {
            port,
            connections,
            eaten,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

/// Relay AMQP frames (type, channel, size, payload, frame end) from the broker to the client,
/// leaving out the method frames of `eats`.
fn relay_frames(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    eats: &[Method],
    eaten: &std::sync::atomic::AtomicUsize,
) {
    use std::io::{Read, Write};
    loop {
        let mut head = [0u8; 7];
        if from.read_exact(&mut head).is_err() {
            break;
        }
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut rest = vec![0u8; size + 1];
        if from.read_exact(&mut rest).is_err() || rest[size] != 0xCE {
            // Closed, or out of step with the frames (no frame-end octet): relay nothing more.
            break;
        }
        let method = (head[0] == 1 && size >= 4).then(|| {
            (
                u16::from_be_bytes([rest[0], rest[1]]),
                u16::from_be_bytes([rest[2], rest[3]]),
            )
        });
        if method.is_some_and(|m| eats.contains(&m)) {
            eaten.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if method == Some(CONNECTION_CLOSE_OK) {
                // The node closes the socket after this answer; a hung node keeps it open.
                std::thread::sleep(HUNG_NODE_HOLDS);
                break;
            }
            continue;
        }
        if to
            .write_all(&head)
            .and_then(|()| to.write_all(&rest))
            .is_err()
        {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// A broker that takes the close of a channel and of the connection and never answers either
/// (hung, or its answers lost on the way): the host's closes (`session::close_channel`,
/// `session::close_connection`, which every close in the host goes through) give up after their
/// bound and return, where lapin's own close waits for the answer without a limit and would hold
/// the task closing (a backlog read, a replay, a bench's round) for good.
#[test]
fn closes_the_broker_never_answers_are_given_up() {
    use millrace_host::amqp::session::{close_channel, close_connection};
    use std::sync::atomic::Ordering;
    let broker = Broker::start();
    let eater = FrameEater::start(broker.port, &[CHANNEL_CLOSE_OK, CONNECTION_CLOSE_OK]);
    runtime().block_on(async {
        let conn = Connection::connect(&eater.url(), ConnectionProperties::default())
            .await
            .expect("connect through the relay");
        let ch = conn.create_channel().await.expect("channel");
        // Far above the bound of each close (5 s): reached only when a close does not return.
        let closed = tokio::time::timeout(Duration::from_secs(60), async {
            close_channel(&ch, "test").await;
            close_connection(&conn, "test").await;
        })
        .await;
        assert!(
            closed.is_ok(),
            "a close the broker never answered did not return within 60 s"
        );
    });
    assert_eq!(
        eater.eaten.load(Ordering::SeqCst),
        2,
        "the broker answered both closes and the relay ate both answers"
    );
}

/// A broker that keeps the connection alive and never confirms a publish (RabbitMQ's
/// quorum-queue client before 4.1.5 could lose an enqueue when the link to the leader's node
/// broke and hold the channel's later ones behind it):
/// past `host.amqp_confirm_timeout_s` the host gives the session up and connects again, the
/// deliveries in hand come again, and every input has its output. Without the bound the
/// deliveries in hand wait for ever and the stream stops at the prefetch.
#[test]
fn confirms_that_never_come_give_the_session_up_and_lose_nothing() {
    use std::sync::atomic::Ordering;
    const INPUTS: usize = 500;
    const IN_HAND: usize = 32;
    let broker = Broker::start();
    publish_inputs(&broker.url(), INPUTS, &FieldTable::default());
    let eater = FrameEater::start(broker.port, &[BASIC_ACK]);
    let ws = mes_stream_workspace(
        &format!("amqp = {:?}\namqp_confirm_timeout_s = 2", eater.url()),
        IN_HAND,
    );
    let mut host = ws.start();
    host.wait_ready();
    let (ids, distinct) = read_until(&broker.url(), INPUTS, GUARD);
    assert!(host.stop_in_place().success(), "SIGTERM exits 0");
    let log = host.drain_log();
    let missing: Vec<String> = (0..INPUTS)
        .map(|i| format!("m-{i}-1"))
        .filter(|id| !distinct.contains(id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "outputs missing, e.g. {missing:?} ({} of {INPUTS} there); {} confirms eaten on {} connection(s)",
        distinct.len(),
        eater.eaten.load(Ordering::SeqCst),
        eater.connections.load(Ordering::SeqCst)
    );
    assert!(
        eater.eaten.load(Ordering::SeqCst) > 0,
        "the first connection published"
    );
    assert!(
        eater.connections.load(Ordering::SeqCst) >= 2,
        "the host connected again"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("did not confirm a publish within 2 s")),
        "the warning names the bound:\n{}",
        log.join("\n")
    );
    // What the first connection published was routed (only its confirms were lost): those
    // outputs come again with the same ids, at most the deliveries it held.
    let copies = ids.len() - distinct.len();
    assert!(
        copies <= IN_HAND,
        "{copies} copies, more than the {IN_HAND} deliveries in hand"
    );
    assert_eq!(ready(&broker.url(), "plant-a.mes"), 0, "inputs all taken");
    assert_eq!(
        ready(&broker.url(), "millrace.mes.dead-letter"),
        0,
        "no dead letters"
    );
}

/// A broker under a memory alarm blocks the connection's publishes (`connection.blocked`): that
/// is flow control, not a broker failing, so the confirm timeout does not run meanwhile. With
/// the bound at 2 s and the broker blocking for several times that, the host keeps its session
/// (no copies, no warning of a missing confirm) and every input has its output once the alarm
/// clears.
#[test]
fn a_broker_blocking_publishes_for_longer_than_the_confirm_timeout_is_waited_for() {
    const INPUTS: usize = 200;
    let broker = Broker::start();
    publish_inputs(&broker.url(), INPUTS, &FieldTable::default());
    broker.ctl(&["set_vm_memory_high_watermark", "0"]);
    let ws = mes_stream_workspace(
        &format!("amqp = {:?}\namqp_confirm_timeout_s = 2", broker.url()),
        32,
    );
    let mut host = ws.start();
    host.wait_ready();
    host.wait_for_log("the broker blocks this connection's publishes");
    // Blocked for several times the bound before the alarm clears.
    std::thread::sleep(Duration::from_secs(8));
    broker.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    let (ids, distinct) = read_until(&broker.url(), INPUTS, GUARD);
    assert!(host.stop_in_place().success(), "SIGTERM exits 0");
    let log = host.drain_log();
    let said = log.join("\n");
    assert_eq!(
        distinct.len(),
        INPUTS,
        "every input has its output:\n{said}"
    );
    assert_eq!(
        ids.len(),
        INPUTS,
        "no copies: the session was kept:\n{said}"
    );
    assert!(
        !said.contains("did not confirm a publish"),
        "no confirm timed out while blocked:\n{said}"
    );
    assert_eq!(ready(&broker.url(), "plant-a.mes"), 0, "inputs all taken");
}
