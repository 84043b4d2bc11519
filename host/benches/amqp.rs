//! Throughput of a broker route (queue → mes-fixed-width → exchange; persistent messages,
//! publisher confirms, manual acks after the confirm) against a plain lapin pipe that does the
//! same minus the mediation: consume with the same prefetch, publish an event persistent on a
//! confirm channel (the bytes the route makes of the same record, made once up front), ack after
//! the confirm. Same broker, queue type, message, prefetch, same run.
//!
//! Each round preloads N inputs into a durable queue, then starts the consumer (the pipe
//! in-process, or `millrace run` as its own process) and watches the output queue's depth from
//! an observer connection; the rate is taken between 5 % and 100 % of the outputs, so start-up
//! is left out of both. Rounds alternate pipe / millrace; medians are printed.
//! Each millrace run also reports the share of its lineage notes (two per message) that its
//! lineage file holds after it stopped: the rest were dropped because the writer's queue was full;
//! and the CPU per message of its lineage writer thread, part of the host's (read over the same
//! window; the writer works up to 250 ms behind the messages, so a window holds some notes of
//! the time before it and leaves some of its own for after).
//!
//! Needs `scripts/build-plugins` and Debian's rabbitmq-server (scripts/setup). Run:
//! `cargo bench -p millrace-host --bench amqp` (or `scripts/bench`). Environment: `N`
//! (messages per round, default 50000), `ROUNDS` (default 3), `PREFETCH` (default 256),
//! `TRACE=1` (each round also runs millrace exporting every message's spans over OTLP/HTTP to a
//! receiver in the bench that takes and drops them: the cost of tracing, same run),
//! `BASELINE=PATH` (each round also runs the millrace binary at PATH, e.g. one built from an
//! earlier commit: a change's cost, same run), `LINEAGE=compare` (each round also runs millrace
//! with `[telemetry] lineage = false`: the cost of keeping lineage, same run),
//! `HOST_SETTINGS=LINES` (each round also runs millrace with these lines added to its `[host]`
//! section, replacing the bench's own line for a key they set, e.g.
//! `HOST_SETTINGS="max_in_flight = 2"` or `"idempotency_window_s = 0"`, without deduplication:
//! a setting's effect, same run),
//! `PIPE_LIKE_HOST=headers`, `one-header`, `properties`, `app-id`, `mandatory`, `both` or `event`
//! (each round also runs the pipe publishing that part of what the host adds to an output: its
//! three `millrace-*` headers, their values in one header, in basic properties instead of headers,
//! the lineage alone as `app-id`, or as the event's attributes (`host.amqp_event_provenance`),
//! `mandatory`; what it costs the broker and the client, same run), `PIPE_LIKE_HOST=channels` (the
//! pipe publishing on 32 confirm channels in turn, the size of the host's pool),
//! `PIPE_LIKE_HOST=plain` (the plain pipe a second time: the method's own spread, a pipe against
//! itself), `PIPE_LIKE_HOST=empty-table` (the pipe with an empty header table, as the plain pipe
//! published before 2026-12-06), `QUEUES=quorum` (both sides' queues quorum queues, with the
//! arguments millrace declares, and the host's `amqp_queues` set to match; default classic),
//! `QUEUE_POLICY=JSON` (a broker policy with that definition on every queue, both sides alike, e.g.
//! `QUEUE_POLICY='{"queue-mode":"lazy"}'`).

mod common;
use common::{
    LINEAGE_WRITER, cpu_seconds, median, record, root, route_output, running, setting,
    threads_cpu_seconds,
};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use millrace_host::amqp::config::{DEFAULT_DELIVERY_LIMIT, QueueKind};
use millrace_host::amqp::session::close_connection;
use millrace_host::amqp::topology::{Role, arguments};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Node {
    pid: u32,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        let dir = tempfile::tempdir().expect("broker dir");
        let port = common::ports::server_port();
        let out = Command::new(root().join("scripts/rabbitmq"))
            .args(["start", dir.path().to_str().unwrap(), &port.to_string()])
            .output()
            .expect("scripts/rabbitmq runs");
        assert!(
            out.status.success(),
            "broker did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        Node {
            pid,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `rabbitmqctl ARGS` against this node (`scripts/rabbitmq ctl`).
    fn ctl(&self, args: &[&str]) {
        let out = Command::new(root().join("scripts/rabbitmq"))
            .args([
                "ctl",
                self._dir.path().to_str().unwrap(),
                &self.port.to_string(),
            ])
            .args(args)
            .output()
            .expect("scripts/rabbitmq runs");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `QUEUE_POLICY=JSON`: a policy with that definition on every queue of the node (e.g.
    /// `{"queue-mode":"lazy"}`), for both sides alike.
    fn apply_queue_policy(&self) {
        if let Ok(definition) = std::env::var("QUEUE_POLICY") {
            self.ctl(&[
                "set_policy",
                "bench-queues",
                ".*",
                &definition,
                "--apply-to",
                "queues",
            ]);
            eprintln!("queue policy on every queue: {definition}");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
    }
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect")
}

/// Durable `exchange` (topic) with durable `sink` bound to it, and durable `queue`; all empty.
async fn topology(ch: &Channel, queue: &str, exchange: &str, sink: &str) {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    for q in [queue, sink] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions::durable(),
            queue_args(q, queue),
        )
        .await
        .unwrap();
        ch.queue_purge(q.into(), QueuePurgeOptions::default())
            .await
            .unwrap();
    }
    ch.queue_bind(
        sink.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// The queues' type: `QUEUES=quorum` or `classic` (the default).
fn queue_kind() -> QueueKind {
    match std::env::var("QUEUES").as_deref() {
        Ok("quorum") => QueueKind::Quorum,
        Ok("classic") | Err(_) => QueueKind::Classic,
        Ok(other) => panic!("QUEUES: quorum or classic, not {other:?}"),
    }
}

/// Both sides' source queues carry the arguments millrace declares its source with (dead-letter
/// exchange; on quorum queues the delivery limit and at-least-once dead-lettering too), the
/// sinks those of a plain queue of the same type.
fn queue_args(q: &str, source: &str) -> FieldTable {
    let role = if q == source {
        Role::Source {
            dead_letter: "millrace.bench.dead-letter",
            single_active: false,
        }
    } else {
        Role::Plain
    };
    arguments(queue_kind(), Some(DEFAULT_DELIVERY_LIMIT), role)
}

/// Publish `n` persistent inputs with confirms (windows of 1,000).
async fn preload(ch: &Channel, queue: &str, n: usize) {
    let body = record();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut sent = 0;
    while sent < n {
        let window = (n - sent).min(1000);
        let mut confirms = Vec::with_capacity(window);
        for i in sent..sent + window {
            let properties = BasicProperties::default()
                .with_message_id(format!("m-{i}").into())
                .with_content_type("text/plain".into())
                .with_delivery_mode(2);
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            let confirm = tokio::time::timeout(Duration::from_secs(300), c)
                .await
                .unwrap_or_else(|_| {
                    panic!("preload: no confirm within 300 s at {sent} of {n} (a broker alarm?)")
                });
            assert!(confirm.unwrap().is_ack());
        }
        sent += window;
    }
}

/// What one round measured: outputs per second, and CPU µs per message of the consumer process
/// (millrace, or the bench process running the pipe) and of the broker, over the same window.
struct Measured {
    rate: f64,
    consumer_us: f64,
    broker_us: f64,
    /// Of the lineage notes the host made (two per message), the share its file holds after it
    /// stopped (the rest were dropped: the writer's queue was full); `None` for the pipe or
    /// without lineage.
    lineage_kept: Option<f64>,
    /// CPU µs per message of the host's lineage writer thread (0 for the pipe or without lineage).
    writer_us: f64,
}

/// Of the `2 n` lineage notes a host made of `n` messages, the share the lineage file in
/// `data_dir` holds; `None` when it has none.
fn lineage_kept(data_dir: &Path, n: usize) -> Option<f64> {
    let file = data_dir.join("lineage.db");
    let db =
        rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    let notes: i64 = db
        .query_row(
            "SELECT coalesce(sum(json_array_length(events)), 0) FROM paths",
            [],
            |r| r.get(0),
        )
        .ok()?;
    Some(notes as f64 / (2 * n) as f64)
}

/// `, lineage kept N % (writer W µs CPU/msg)` when the host kept lineage.
fn kept(m: &Measured) -> String {
    m.lineage_kept
        .map(|k| {
            format!(
                ", lineage kept {:.0} % (writer {:.1} µs CPU/msg)",
                k * 100.0,
                m.writer_us
            )
        })
        .unwrap_or_default()
}

/// Watch `sink` fill up to `n`; measure between 5 % and 100 %. A consumer process that ends
/// first fails the round at once, with the end of its log (`log`) when it wrote one.
async fn watch(
    observer: &Channel,
    sink: &str,
    n: usize,
    (consumer, log): (u32, Option<&Path>),
    broker: u32,
) -> Measured {
    let depth = || async {
        observer
            .queue_declare(
                sink.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count() as usize
    };
    let from = n / 20;
    let mut start = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let d = depth().await;
        let now = Instant::now();
        assert!(now < deadline, "stalled at {d} of {n} outputs");
        if d < n && !running(consumer) {
            let text = log.and_then(|l| std::fs::read_to_string(l).ok());
            let tail = text.as_deref().map_or("", |t| {
                let from = (t.len().saturating_sub(2000)..t.len())
                    .find(|i| t.is_char_boundary(*i))
                    .unwrap_or(t.len());
                &t[from..]
            });
            panic!("the consumer process ended at {d} of {n} outputs; its log ends:\n{tail}");
        }
        if start.is_none() && d >= from {
            let writer = threads_cpu_seconds(&consumer.to_string(), LINEAGE_WRITER);
            start = Some((now, d, cpu_seconds(consumer), cpu_seconds(broker), writer));
        }
        if d >= n {
            let (t0, d0, c0, b0, w0) = start.expect("set before the end");
            let writer = threads_cpu_seconds(&consumer.to_string(), LINEAGE_WRITER) - w0;
            let done = (d - d0) as f64;
            return Measured {
                rate: done / now.duration_since(t0).as_secs_f64(),
                consumer_us: (cpu_seconds(consumer) - c0) / done * 1e6,
                broker_us: (cpu_seconds(broker) - b0) / done * 1e6,
                lineage_kept: None,
                writer_us: writer / done * 1e6,
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The plain pipe: consume `pipe.in`, publish every body to `pipe.out` (persistent, confirmed),
/// ack after the confirm, one task per delivery — millrace's delivery path without mediation.
/// What the host adds to each output besides the pipe's properties: its three `millrace-*`
/// headers (the lineage as long as the route's) and `mandatory`.
const HOST_HEADERS: [(&str, &str); 3] = [
    ("millrace-plant", "plant-north"),
    ("millrace-route", "mes-confirmations"),
    (
        "millrace-lineage",
        "mes-fixed-width@1.2.0+sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ),
];

/// What the pipe adds of what the host adds to an output.
#[derive(Clone, Copy)]
struct LikeHost {
    headers: Headers,
    mandatory: bool,
    /// Confirm channels the pipe publishes on, in turn (the host's pool has 32).
    channels: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Headers {
    None,
    /// The host's three.
    Host,
    /// The same values in one header.
    One,
    /// The same values in basic properties (`app-id`, `type`, `correlation-id`), no header
    /// table.
    Properties,
    /// The lineage alone, as the basic property `app-id`, no header table.
    AppId,
    /// A header table with no entries (what the plain pipe published before 2026-12-06).
    Empty,
}

const PLAIN: LikeHost = LikeHost {
    headers: Headers::None,
    mandatory: false,
    channels: 1,
};

/// The plain lapin pipe, or with `like_host`'s parts of what the host adds to an output.
async fn pipe(
    url: &str,
    n: usize,
    prefetch: u16,
    broker: u32,
    event: Vec<u8>,
    like_host: LikeHost,
) -> Measured {
    let event = std::sync::Arc::new(event);
    let setup = connect(url).await;
    let ch = setup.create_channel().await.unwrap();
    topology(&ch, "pipe.in", "pipe.out", "pipe.sink").await;
    preload(&ch, "pipe.in", n).await;
    let conn = connect(url).await;
    let mut publishers = Vec::new();
    for _ in 0..like_host.channels {
        let publisher = conn.create_channel().await.unwrap();
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publishers.push(publisher);
    }
    let publishers = std::sync::Arc::new(publishers);
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            "pipe.in".into(),
            "pipe".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let mut turn = 0usize;
        while let Some(Ok(delivery)) = consumer.next().await {
            let publisher = publishers[turn % publishers.len()].clone();
            turn += 1;
            let event = std::sync::Arc::clone(&event);
            tokio::spawn(async move {
                let mut headers = FieldTable::default();
                match like_host.headers {
                    Headers::None => {}
                    Headers::Host => {
                        for (name, value) in HOST_HEADERS {
                            headers.insert(
                                name.into(),
                                lapin::types::AMQPValue::LongString(value.into()),
                            );
                        }
                    }
                    Headers::One => {
                        let values: Vec<&str> = HOST_HEADERS.iter().map(|(_, v)| *v).collect();
                        headers.insert(
                            "millrace".into(),
                            lapin::types::AMQPValue::LongString(values.join(" ").into()),
                        );
                    }
                    Headers::Properties | Headers::AppId | Headers::Empty => {}
                }
                let mut properties = BasicProperties::default();
                if like_host.headers == Headers::Properties {
                    let [(_, plant), (_, route), (_, lineage)] = HOST_HEADERS;
                    properties = properties
                        .with_app_id(plant.into())
                        .with_type(route.into())
                        .with_correlation_id(lineage.into());
                }
                if like_host.headers == Headers::AppId {
                    properties = properties.with_app_id(HOST_HEADERS[2].1.into());
                }
                // A plain lapin pipe sends no header table, nor does the host without headers.
                if matches!(
                    like_host.headers,
                    Headers::Host | Headers::One | Headers::Empty
                ) {
                    properties = properties.with_headers(headers);
                }
                let properties = properties
                    .with_content_type("application/cloudevents+json".into())
                    .with_message_id(
                        format!(
                            "{}-1",
                            delivery
                                .properties
                                .message_id()
                                .as_ref()
                                .map_or("", |s| s.as_str())
                        )
                        .into(),
                    )
                    .with_delivery_mode(2);
                // After the round the connection closes under publishes and acks still on
                // their way: they fail, uncounted (the round's outputs were counted already).
                let Ok(confirm) = publisher
                    .basic_publish(
                        "pipe.out".into(),
                        "plant.event".into(),
                        BasicPublishOptions {
                            mandatory: like_host.mandatory,
                            ..Default::default()
                        },
                        &event,
                        properties,
                    )
                    .await
                else {
                    return;
                };
                if confirm.await.is_ok_and(|c| !c.is_nack()) {
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
            });
        }
    });
    let rate = watch(&ch, "pipe.sink", n, (std::process::id(), None), broker).await;
    task.abort();
    // Bounded: lapin has been seen to drop the socket at this close and never resolve it,
    // which hung the bench between rounds.
    close_connection(&conn, "done").await;
    close_connection(&setup, "done").await;
    rate
}

/// The millrace route, as its own process.
async fn millrace(
    url: &str,
    n: usize,
    prefetch: u16,
    data: &Path,
    broker: u32,
    (otlp, binary, extra): (Option<&str>, &Path, &str),
) -> Measured {
    let setup = connect(url).await;
    let ch = setup.create_channel().await.unwrap();
    topology(&ch, "bench.in", "bench.out", "bench.sink").await;
    preload(&ch, "bench.in", n).await;
    let config = data.join("millrace.toml");
    let log = data.join("millrace.log");
    let text = config_text(url, prefetch, data);
    // `extra` adds to the configuration: lines for the host section when it starts with
    // `[host]` (a key they set replaces the bench's own line for it in that section: TOML
    // takes a key once), otherwise whole sections at the end.
    let text = match extra.strip_prefix("[host]\n") {
        Some(lines) => {
            let set: Vec<&str> = lines
                .lines()
                .filter_map(|line| line.split_once('=').map(|(key, _)| key.trim()))
                .collect();
            let mut section = "";
            let kept: Vec<&str> = text
                .lines()
                .filter(|line| {
                    if line.starts_with('[') {
                        section = line.trim();
                    }
                    section != "[host]"
                        || line
                            .split_once('=')
                            .is_none_or(|(key, _)| !set.contains(&key.trim()))
                })
                .collect();
            kept.join("\n")
                .replacen("[host]\n", &format!("[host]\n{lines}\n"), 1)
        }
        None => text + extra,
    };
    std::fs::write(&config, text).unwrap();
    let mut host = Host(
        Command::new(binary)
            .args(["run", "--config"])
            .arg(&config)
            .args(["--http", "127.0.0.1:0"])
            .env_remove("MILLRACE_COMPILE_CACHE")
            .env("RUST_LOG", "warn")
            .envs(otlp.map(|endpoint| ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("millrace starts"),
    );
    let rate = watch(&ch, "bench.sink", n, (host.0.id(), Some(&log)), broker).await;
    let _ = Command::new("kill")
        .args(["-TERM", &host.0.id().to_string()])
        .status();
    // A host that does not stop is a finding, not a reason for the bench to hang: said, then
    // killed.
    let stopping = Instant::now();
    while host.0.try_wait().ok().flatten().is_none() {
        if stopping.elapsed() > Duration::from_secs(120) {
            eprintln!(
                "millrace (pid {}) did not exit within 120 s of SIGTERM; killed",
                host.0.id()
            );
            let _ = host.0.kill();
            let _ = host.0.wait();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    close_connection(&setup, "done").await;
    Measured {
        lineage_kept: lineage_kept(&data.join("data"), n),
        ..rate
    }
}

/// An OTLP/HTTP receiver that answers every request 200 and keeps nothing; its base URL.
fn otlp_sink() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut length = 0;
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let header = line.trim_end().to_ascii_lowercase();
                        if header.is_empty() {
                            break;
                        }
                        if let Some(n) = header.strip_prefix("content-length:") {
                            length = n.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err()
                        || writer
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    url
}

struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// The quickstart's route and settings, taking from the queue and publishing to the exchange.
fn config_text(url: &str, prefetch: u16, data: &Path) -> String {
    let quickstart = root().join("examples/quickstart");
    let text = std::fs::read_to_string(quickstart.join("millrace.toml")).unwrap();
    text.replace(
        "[host]\n",
        &format!(
            "[host]\namqp = \"{url}\"\nidempotency_window_s = 86400\namqp_queues = \"{}\"\n",
            queue_kind().name()
        ),
    )
    .replace(
        "data_dir = \".millrace\"",
        &format!("data_dir = \"{}\"", data.join("data").display()),
    )
    .replace(
        "plugin_dir = \"../../target/plugins\"",
        &format!("plugin_dir = \"{}\"", root().join("target/plugins").display()),
    )
    .replace(
        "csv = \"work-centres.csv\"",
        &format!("csv = \"{}\"", quickstart.join("work-centres.csv").display()),
    )
    .replace(
        "source = \"http\"",
        &format!("source = \"amqp\"\namqp = {{ queue = \"bench.in\", exchange = \"bench.out\", prefetch = {prefetch} }}"),
    )
    .replace("sink = \"reply\"", "sink = \"amqp\"")
    .replace("[routes.mes-confirmations", "[routes.bench")
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter here.
    let n = setting("N", 50_000);
    let rounds = setting("ROUNDS", 3);
    let prefetch = setting("PREFETCH", 256) as u16;
    let event = route_output();
    let node = Node::start();
    node.apply_queue_policy();
    let url = node.url();
    let data = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let otlp = (std::env::var("TRACE").as_deref() == Ok("1")).then(otlp_sink);
    let (mut pipes, mut hosts, mut traced) = (Vec::new(), Vec::new(), Vec::new());
    let this = Path::new(env!("CARGO_BIN_EXE_millrace"));
    let baseline = std::env::var("BASELINE").ok().map(std::path::PathBuf::from);
    let mut baselines = Vec::new();
    let compare_lineage = std::env::var("LINEAGE").as_deref() == Ok("compare");
    let mut unlineaged = Vec::new();
    let host_settings = std::env::var("HOST_SETTINGS").ok();
    let like_host_name = std::env::var("PIPE_LIKE_HOST").unwrap_or_default();
    let pipe_like_host = match like_host_name.as_str() {
        "" => None,
        "headers" => Some(LikeHost {
            headers: Headers::Host,
            ..PLAIN
        }),
        "one-header" => Some(LikeHost {
            headers: Headers::One,
            ..PLAIN
        }),
        "mandatory" => Some(LikeHost {
            mandatory: true,
            ..PLAIN
        }),
        "both" => Some(LikeHost {
            headers: Headers::Host,
            mandatory: true,
            ..PLAIN
        }),
        "properties" => Some(LikeHost {
            headers: Headers::Properties,
            ..PLAIN
        }),
        "channels" => Some(LikeHost {
            channels: 32,
            ..PLAIN
        }),
        "app-id" => Some(LikeHost {
            headers: Headers::AppId,
            ..PLAIN
        }),
        "empty-table" => Some(LikeHost {
            headers: Headers::Empty,
            ..PLAIN
        }),
        // The body with the three values as event attributes (`host.amqp_event_provenance`).
        "event" => Some(PLAIN),
        // The plain pipe again: the method's own spread, a pipe against itself.
        "plain" => Some(PLAIN),
        other => panic!(
            "PIPE_LIKE_HOST={other}: headers, one-header, properties, app-id, empty-table, mandatory, \
             both, channels, event or plain"
        ),
    };
    let mut piped_like_host = Vec::new();
    let mut adjusted = Vec::new();
    for round in 1..=rounds {
        let p = runtime.block_on(pipe(&url, n, prefetch, node.pid, event.clone(), PLAIN));
        if let Some(like_host) = pipe_like_host {
            let mut body = event.clone();
            if like_host_name == "event" {
                let [(_, plant), (_, route), (_, lineage)] = HOST_HEADERS;
                let provenance = [
                    ("millraceplant", plant),
                    ("millraceroute", route),
                    ("millracelineage", lineage),
                ];
                let kind = "application/cloudevents+json";
                millrace_host::pipeline::event::set_attributes(kind, &mut body, &provenance, &[]);
            }
            let h = runtime.block_on(pipe(&url, n, prefetch, node.pid, body, like_host));
            println!(
                "round {round}: lapin pipe with {like_host_name} {:>6.0} msg/s (pipe {:>5.1} µs CPU/msg, broker {:>5.1}); {:.2} of the plain pipe",
                h.rate,
                h.consumer_us,
                h.broker_us,
                h.rate / p.rate
            );
            piped_like_host.push(h);
        }
        // A fresh data directory per round: no settled ids from the last one.
        let dir = data.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(binary) = &baseline {
            let dir = data.path().join(format!("round-{round}-baseline"));
            std::fs::create_dir_all(&dir).unwrap();
            let b = runtime.block_on(millrace(
                &url,
                n,
                prefetch,
                &dir,
                node.pid,
                (None, binary, ""),
            ));
            println!(
                "round {round}: baseline millrace {:>6.0} msg/s (host {:>5.1} µs CPU/msg, broker {:.1}{})",
                b.rate,
                b.consumer_us,
                b.broker_us,
                kept(&b)
            );
            baselines.push(b);
        }
        let m = runtime.block_on(millrace(
            &url,
            n,
            prefetch,
            &dir,
            node.pid,
            (None, this, ""),
        ));
        if compare_lineage {
            let dir = data.path().join(format!("round-{round}-no-lineage"));
            std::fs::create_dir_all(&dir).unwrap();
            let l = runtime.block_on(millrace(
                &url,
                n,
                prefetch,
                &dir,
                node.pid,
                (None, this, "\n[telemetry]\nlineage = false\n"),
            ));
            println!(
                "round {round}: millrace without lineage {:>6.0} msg/s (host {:>5.1} µs CPU/msg); with lineage {:.2} of it",
                l.rate,
                l.consumer_us,
                m.rate / l.rate
            );
            unlineaged.push(l);
        }
        if let Some(lines) = &host_settings {
            let dir = data.path().join(format!("round-{round}-adjusted"));
            std::fs::create_dir_all(&dir).unwrap();
            let a = runtime.block_on(millrace(
                &url,
                n,
                prefetch,
                &dir,
                node.pid,
                (None, this, &format!("[host]\n{lines}")),
            ));
            println!(
                "round {round}: millrace with {lines:?} {:>6.0} msg/s (host {:>5.1} µs CPU/msg, broker {:>5.1}); {:.2} of millrace without",
                a.rate,
                a.consumer_us,
                a.broker_us,
                a.rate / m.rate
            );
            adjusted.push(a);
        }
        if let Some(endpoint) = &otlp {
            let dir = data.path().join(format!("round-{round}-traced"));
            std::fs::create_dir_all(&dir).unwrap();
            let t = runtime.block_on(millrace(
                &url,
                n,
                prefetch,
                &dir,
                node.pid,
                (Some(endpoint), this, ""),
            ));
            println!(
                "round {round}: millrace exporting traces {:>6.0} msg/s (host {:>5.1} µs CPU/msg), {:.2} of millrace without",
                t.rate,
                t.consumer_us,
                t.rate / m.rate
            );
            traced.push(t);
        }
        println!(
            "round {round}: lapin pipe {:>6.0} msg/s (pipe {:>5.1} µs CPU/msg, broker {:>5.1})   millrace {:>6.0} msg/s (host {:>5.1} µs CPU/msg, broker {:>5.1}{})   ratio {:.2}",
            p.rate,
            p.consumer_us,
            p.broker_us,
            m.rate,
            m.consumer_us,
            m.broker_us,
            kept(&m),
            m.rate / p.rate
        );
        pipes.push(p);
        hosts.push(m);
    }
    let med = |xs: &[Measured], f: fn(&Measured) -> f64| median(xs.iter().map(f).collect());
    let (p, m) = (med(&pipes, |x| x.rate), med(&hosts, |x| x.rate));
    println!(
        "median of {rounds} rounds, {n} persistent messages each, prefetch {prefetch}: lapin pipe {p:.0} msg/s, millrace (mes-fixed-width) {m:.0} msg/s, ratio {:.2}; CPU µs/msg: pipe {:.1}, host {:.1}, broker {:.1} (pipe) / {:.1} (millrace)",
        m / p,
        med(&pipes, |x| x.consumer_us),
        med(&hosts, |x| x.consumer_us),
        med(&pipes, |x| x.broker_us),
        med(&hosts, |x| x.broker_us),
    );
    if !baselines.is_empty() {
        let b = med(&baselines, |x| x.rate);
        println!(
            "baseline: millrace {b:.0} msg/s, ratio to the pipe {:.2}; this build {:.2} of the baseline (host {:.1} against {:.1} µs CPU/msg, broker {:.1} against {:.1})",
            b / p,
            m / b,
            med(&hosts, |x| x.consumer_us),
            med(&baselines, |x| x.consumer_us),
            med(&hosts, |x| x.broker_us),
            med(&baselines, |x| x.broker_us),
        );
    }
    if !unlineaged.is_empty() {
        let l = med(&unlineaged, |x| x.rate);
        println!(
            "lineage: millrace with it {m:.0} msg/s, without {l:.0} msg/s: {:.1} % below (host {:.1} against {:.1} µs CPU/msg)",
            100.0 * (1.0 - m / l),
            med(&hosts, |x| x.consumer_us),
            med(&unlineaged, |x| x.consumer_us),
        );
    }
    if !piped_like_host.is_empty() {
        println!(
            "lapin pipe with {like_host_name}: {:.0} msg/s, {:.2} of the plain pipe; broker {:.1} against {:.1} µs CPU/msg, pipe {:.1} against {:.1}",
            med(&piped_like_host, |x| x.rate),
            med(&piped_like_host, |x| x.rate) / p,
            med(&piped_like_host, |x| x.broker_us),
            med(&pipes, |x| x.broker_us),
            med(&piped_like_host, |x| x.consumer_us),
            med(&pipes, |x| x.consumer_us),
        );
    }
    if let (Some(lines), false) = (&host_settings, adjusted.is_empty()) {
        let a = med(&adjusted, |x| x.rate);
        println!(
            "with {lines:?}: millrace {a:.0} msg/s, ratio to the pipe {:.2}, {:.2} of millrace without (host {:.1} against {:.1} µs CPU/msg)",
            a / p,
            a / m,
            med(&adjusted, |x| x.consumer_us),
            med(&hosts, |x| x.consumer_us),
        );
    }
    if !traced.is_empty() {
        let t = med(&traced, |x| x.rate);
        println!(
            "exporting traces: millrace {t:.0} msg/s, ratio to the pipe {:.2}, {:.1} % below millrace without (host {:.1} µs CPU/msg)",
            t / p,
            100.0 * (1.0 - t / m),
            med(&traced, |x| x.consumer_us),
        );
    }
}
