//! Throughput of an MQTT route (topic → mes-fixed-width → topic; QoS 1 both ways, persistent
//! session, acknowledgements after the output's PUBACK) against a plain rumqttc pipe that does
//! the same minus the mediation: subscribe with the same receive maximum, publish an event with
//! QoS 1 (the bytes the route makes of the same record, made once up front), acknowledge the
//! input once the output's PUBACK came. Same broker (mosquitto 2), message, session settings,
//! same run.
//!
//! Each round queues N inputs in the consumer's persistent session while it is away, then starts
//! the consumer (the pipe in-process, or `millrace run` as its own process) and counts the
//! outputs on an observer connection; the rate is taken between 5 % and 100 % of the outputs,
//! so start-up is left out of both. Rounds alternate pipe / millrace; medians are printed.
//!
//! Needs `scripts/build-plugins` and Debian's mosquitto (scripts/setup). Run:
//! `cargo bench -p millrace-host --bench mqtt` (or `scripts/bench`). Environment: `N`
//! (messages per round, default 20000), `ROUNDS` (default 3), `DEDUPE=0` (the host keeps no
//! settled ids: what deduplicating redeliveries costs).

mod common;
use common::{cpu_seconds, median, record, root, route_output, setting};

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Broker {
    pid: u32,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().expect("broker dir");
        let port = common::ports::server_port();
        let out = Command::new(root().join("scripts/mosquitto"))
            .args(["start", dir.path().to_str().unwrap(), &port.to_string()])
            .output()
            .expect("scripts/mosquitto runs");
        assert!(
            out.status.success(),
            "mosquitto did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        Broker {
            pid,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
    }
}

fn options(id: &str, port: u16, persistent: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(Some(1 << 20));
    if persistent {
        o.set_clean_start(false)
            .set_session_expiry_interval(Some(3600))
            .set_manual_acks(true)
            .set_receive_maximum(Some(64));
    }
    o
}

/// Poll `events` until the connection is acknowledged.
async fn connected(events: &mut EventLoop) {
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = events.poll().await.expect("connects") {
            return;
        }
    }
}

/// Make `id`'s persistent session subscribe `filter`, leave, and queue `n` inputs on `topic`
/// for it (QoS 1, each acknowledged by the broker).
async fn preload(port: u16, id: &str, filter: &str, topic: &str, n: usize) {
    let (client, mut events) = AsyncClient::new(options(id, port, true), 64);
    connected(&mut events).await;
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.unwrap() {
            break;
        }
    }
    client.disconnect().await.unwrap();
    while events.poll().await.is_ok() {}
    let (client, mut events) = AsyncClient::new(options("loader", port, false), 1024);
    connected(&mut events).await;
    let body = record();
    let topic = topic.to_string();
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            let properties = PublishProperties {
                content_type: Some("text/plain".into()),
                user_properties: vec![("message-id".into(), format!("m-{i}"))],
                ..Default::default()
            };
            client
                .publish_with_properties(
                    topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    body.clone(),
                    properties,
                )
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
            acked += 1;
        }
    }
    let client = publisher.await.unwrap();
    client.disconnect().await.unwrap();
    while events.poll().await.is_ok() {}
}

/// Count what arrives on `filter` (QoS 1).
async fn observe(port: u16, filter: &str) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let (client, mut events) = AsyncClient::new(options("observer", port, false), 64);
    connected(&mut events).await;
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.unwrap() {
            break;
        }
    }
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    let task = tokio::spawn(async move {
        let _client = client;
        while let Ok(event) = events.poll().await {
            if let Event::Incoming(Packet::Publish(_)) = event {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (count, task)
}

struct Measured {
    rate: f64,
    consumer_us: f64,
    broker_us: f64,
}

/// Watch `count` reach `n`; measure between 5 % and 100 %.
async fn watch(count: &AtomicUsize, n: usize, consumer: u32, broker: u32) -> Measured {
    let from = n / 20;
    let mut start = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let d = count.load(Ordering::Relaxed);
        let now = Instant::now();
        assert!(now < deadline, "stalled at {d} of {n} outputs");
        if start.is_none() && d >= from {
            start = Some((now, d, cpu_seconds(consumer), cpu_seconds(broker)));
        }
        if d >= n {
            let (t0, d0, c0, b0) = start.expect("set before the end");
            let done = (d - d0) as f64;
            return Measured {
                rate: done / now.duration_since(t0).as_secs_f64(),
                consumer_us: (cpu_seconds(consumer) - c0) / done * 1e6,
                broker_us: (cpu_seconds(broker) - b0) / done * 1e6,
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The plain pipe: each input → the event published QoS 1 → the input acknowledged after that
/// publish's PUBACK (the broker answers publishes in order, so a queue pairs them). Its request
/// channel holds a whole round: a session resumed with messages queued may be sent more than
/// the receive maximum at once.
async fn pipe(port: u16, n: usize, round: usize, broker: u32, event: Vec<u8>) -> Measured {
    // A session and topics of its own per round: nothing left over from the last one.
    let (id, input, output) = (
        format!("pipe-{round}"),
        format!("pipe/{round}/in"),
        format!("pipe/{round}/out/x"),
    );
    preload(port, &id, &input, &input, n).await;
    let (count, observer) = observe(port, &format!("pipe/{round}/out/#")).await;
    let (client, mut events) = AsyncClient::new(options(&id, port, true), n + 1024);
    let task = tokio::spawn(async move {
        let mut waiting = VecDeque::new();
        let mut sent = VecDeque::new();
        while let Ok(e) = events.poll().await {
            match e {
                Event::Incoming(Packet::Publish(p)) => {
                    let properties = PublishProperties {
                        content_type: Some("application/cloudevents+json".into()),
                        ..Default::default()
                    };
                    client
                        .try_publish_with_properties(
                            output.clone(),
                            QoS::AtLeastOnce,
                            false,
                            event.clone(),
                            properties,
                        )
                        .unwrap();
                    waiting.push_back(p);
                }
                Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                    if let Some(p) = waiting.pop_front() {
                        sent.push_back((pkid, p));
                    }
                }
                Event::Incoming(Packet::PubAck(ack)) => {
                    if let Some(i) = sent.iter().position(|(k, _)| *k == ack.pkid) {
                        let (_, p) = sent.remove(i).unwrap();
                        client.try_ack(&p).unwrap();
                    }
                }
                _ => {}
            }
        }
    });
    let measured = watch(&count, n, std::process::id(), broker).await;
    task.abort();
    observer.abort();
    measured
}

struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// The millrace route, as its own process.
async fn millrace(port: u16, n: usize, round: usize, data: &Path, broker: u32) -> Measured {
    let input = format!("bench/{round}/in");
    preload(port, &format!("millrace-bench-{round}"), &input, &input, n).await;
    let (count, observer) = observe(port, &format!("bench/{round}/out/#")).await;
    let config = data.join("millrace.toml");
    std::fs::write(&config, config_text(port, round, data)).unwrap();
    let mut host = Host(
        Command::new(env!("CARGO_BIN_EXE_millrace"))
            .args(["run", "--config"])
            .arg(&config)
            .args(["--http", "127.0.0.1:0"])
            .env_remove("MILLRACE_COMPILE_CACHE")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("millrace starts"),
    );
    let measured = watch(&count, n, host.0.id(), broker).await;
    let _ = Command::new("kill")
        .args(["-TERM", &host.0.id().to_string()])
        .status();
    let _ = host.0.wait();
    observer.abort();
    measured
}

/// The quickstart's route and settings, taking from `bench/in` and publishing to `bench/out/…`.
fn config_text(port: u16, round: usize, data: &Path) -> String {
    let quickstart = root().join("examples/quickstart");
    let text = std::fs::read_to_string(quickstart.join("millrace.toml")).unwrap();
    text.replace(
        "[host]\n",
        &format!(
            "[host]\nmqtt = \"mqtt://127.0.0.1:{port}\"\nmqtt_client_id = \"millrace-bench-{round}\"\n{}",
            // DEDUPE=0: settled ids not kept (copies after a crash are not recognised).
            if std::env::var("DEDUPE").as_deref() == Ok("0") {
                "idempotency_window_s = 0\n"
            } else {
                ""
            }
        ),
    )
    .replace(
        "data_dir = \".millrace\"",
        &format!("data_dir = \"{}\"", data.join("data").display()),
    )
    .replace(
        "plugin_dir = \"../../target/plugins\"",
        &format!(
            "plugin_dir = \"{}\"",
            root().join("target/plugins").display()
        ),
    )
    .replace(
        "csv = \"work-centres.csv\"",
        &format!(
            "csv = \"{}\"",
            quickstart.join("work-centres.csv").display()
        ),
    )
    .replace(
        "source = \"http\"",
        &format!(
            "source = \"mqtt\"\nmqtt = {{ topics = [\"bench/{round}/in\"], topic = \"bench/{round}/out/{{type}}\" }}"
        ),
    )
    .replace("sink = \"reply\"", "sink = \"mqtt\"")
    .replace("[routes.mes-confirmations", "[routes.bench")
}

fn main() {
    let n = setting("N", 20_000);
    let rounds = setting("ROUNDS", 3);
    let event = route_output();
    let broker = Broker::start();
    let data = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut pipes, mut hosts) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let p = runtime.block_on(pipe(broker.port, n, round, broker.pid, event.clone()));
        let dir = data.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        let m = runtime.block_on(millrace(broker.port, n, round, &dir, broker.pid));
        println!(
            "round {round}: rumqttc pipe {:>6.0} msg/s (pipe {:>5.1} µs CPU/msg, broker {:>5.1})   millrace {:>6.0} msg/s (host {:>5.1} µs CPU/msg, broker {:>5.1})   ratio {:.2}",
            p.rate,
            p.consumer_us,
            p.broker_us,
            m.rate,
            m.consumer_us,
            m.broker_us,
            m.rate / p.rate
        );
        pipes.push(p);
        hosts.push(m);
    }
    let med = |xs: &[Measured], f: fn(&Measured) -> f64| median(xs.iter().map(f).collect());
    let (p, m) = (med(&pipes, |x| x.rate), med(&hosts, |x| x.rate));
    println!(
        "median of {rounds} rounds, {n} QoS 1 messages each: rumqttc pipe {p:.0} msg/s, millrace (mes-fixed-width) {m:.0} msg/s, ratio {:.2}; CPU µs/msg: pipe {:.1}, host {:.1}, broker {:.1} (pipe) / {:.1} (millrace)",
        m / p,
        med(&pipes, |x| x.consumer_us),
        med(&hosts, |x| x.consumer_us),
        med(&pipes, |x| x.broker_us),
        med(&hosts, |x| x.broker_us),
    );
}
