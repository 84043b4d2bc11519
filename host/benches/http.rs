//! The HTTP route against a plain hyper server doing the same work natively, same load, same run.
//!
//! - **millrace**: `millrace run` as its own process with the quickstart's route (HTTP in, reply
//!   out, `mes-fixed-width` with its work-centre table, limits as the quickstart sets them).
//! - **plain hyper**: a hyper 1 HTTP/1.1 server in this process (a tokio runtime with one worker
//!   per core) that, per request, reads the body and runs the `mes-fixed-width` crate compiled
//!   natively with the same settings and table, then answers the event the way the route's reply
//!   does (one output: its body and content type). No sandbox, no routing, no limits.
//!
//! The load is the same for both: `CLIENTS` threads in this process, each with one keep-alive
//! connection (ureq), sending the quickstart's 80-byte record back to back for `SECONDS`;
//! rounds alternate hyper / millrace. Reported per round: requests per second, p50 and p99 of
//! the request latency, and CPU per request (`/proc`: the millrace process, of which its lineage
//! writer thread's, which works up to 250 ms behind the requests; the plain server's threads) and the share of chains
//! that ran on the async worker that took the request (`millrace_chains_inline_total`), and the
//! share of lineage notes (two per request) dropped (`millrace_lineage_dropped_total`). The load generator
//! shares the machine's cores with the server in both cases.
//!
//! Run: `cargo bench -p millrace-host --bench http` (needs `scripts/build-plugins`).
//! Environment: `ROUNDS` (default 3), `SECONDS` (default 5), `CLIENTS` (default 4),
//! `BASELINE=PATH`: another `millrace` binary (e.g. one built from an earlier commit) measured
//! in the same rounds, after this build's side, with its own ratio to the same plain-hyper side.
//! `HOST_LOG=DIR`: each host's log at `info` in `DIR/millrace.log` and `DIR/baseline.log`
//! (e.g. to see a route's chain taken off inline runs, and why).

#[path = "common/mod.rs"]
#[allow(dead_code)] // the broker benchmarks' helpers this one does not use
mod common;

use common::host::metric_sum;
use common::{
    LINEAGE_WRITER, cpu_seconds, median, record, root, setting, thread_switches,
    threads_cpu_seconds,
};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The SDK's host interface for the native run: the route's settings and table, logs dropped.
struct NativeHost {
    settings: serde_json::Map<String, serde_json::Value>,
    table: std::collections::BTreeMap<String, String>,
}

impl millrace_sdk::Host for NativeHost {
    fn log(&self, _level: millrace_sdk::Level, _message: &str) {}
    fn setting(&self, key: &str) -> Option<String> {
        self.settings.get(key).map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
    fn setting_keys(&self) -> Vec<String> {
        self.settings.keys().cloned().collect()
    }
    fn settings_json(&self) -> String {
        serde_json::Value::Object(self.settings.clone()).to_string()
    }
    fn lookup(&self, _table: &str, key: &str) -> Result<Option<String>, millrace_sdk::LookupError> {
        Ok(self.table.get(key).cloned())
    }
    fn state_get(&self, _key: &str) -> Result<Option<String>, millrace_sdk::StateError> {
        Ok(None)
    }
    fn state_put(&self, _key: &str, _value: &str) -> Result<(), millrace_sdk::StateError> {
        Ok(())
    }
    fn state_delete(&self, _key: &str) -> Result<bool, millrace_sdk::StateError> {
        Ok(false)
    }
}

/// The quickstart configuration, with its data directory in `data` and absolute paths.
fn quickstart(data: &std::path::Path) -> String {
    let quickstart = root().join("examples/quickstart");
    std::fs::read_to_string(quickstart.join("millrace.toml"))
        .unwrap()
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
        // An admin listener for `/metrics` (how many chains ran inline).
        .replace(
            "http = \"127.0.0.1:8080\"",
            "http = \"127.0.0.1:8080\"\nadmin = \"127.0.0.1:0\"",
        )
}

/// The native plugin with the quickstart's settings and table.
fn native() -> (mes_fixed_width::MesFixedWidth, NativeHost) {
    use millrace_sdk::Plugin;
    let (_, settings, table) = common::quickstart_step();
    let host = NativeHost {
        settings: settings.as_object().expect("an object").clone(),
        table,
    };
    let plugin = mes_fixed_width::MesFixedWidth::new(&host).expect("settings load");
    (plugin, host)
}

/// The name of the plain server's threads (their CPU time is summed per round).
const PLAIN_THREADS: &str = "plain-hyper";

/// Serve the native transform on `listener` until the process ends.
fn serve_native(listener: std::net::TcpListener) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name(PLAIN_THREADS)
        .enable_all()
        .build()
        .unwrap();
    let native = Arc::new(native());
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    runtime.block_on(async move {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let (native, counter) = (Arc::clone(&native), Arc::clone(&counter));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (native, counter) = (Arc::clone(&native), Arc::clone(&counter));
                        async move {
                            use millrace_sdk::Plugin;
                            let content_type = request
                                .headers()
                                .get(hyper::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("application/octet-stream")
                                .to_string();
                            let body = request.into_body().collect().await?.to_bytes();
                            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let (plugin, host) = &*native;
                            let input = millrace_sdk::Message {
                                id: format!("n-{n}"),
                                plant: "plant-north".into(),
                                route: "mes-confirmations".into(),
                                content_type,
                                headers: Vec::new(),
                                body: body.to_vec(),
                            };
                            let response = match plugin.mediate(host, input) {
                                Ok(outputs) if outputs.len() == 1 => {
                                    let out = outputs.into_iter().next().expect("one");
                                    hyper::Response::builder()
                                        .status(200)
                                        .header(hyper::header::CONTENT_TYPE, out.content_type)
                                        .header("millrace-output-id", out.id)
                                        .body(Full::new(Bytes::from(out.body)))
                                        .unwrap()
                                }
                                _ => hyper::Response::builder()
                                    .status(422)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            };
                            Ok::<_, hyper::Error>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

struct Load {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

/// `clients` keep-alive clients posting the record to `url` for `seconds`.
fn load(url: &str, clients: usize, seconds: u64) -> Load {
    let body = record();
    let until = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (url, body) = (url.to_string(), body.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let started = Instant::now();
                    let mut response = agent
                        .post(&url)
                        .header("content-type", "text/plain")
                        .send(&body[..])
                        .expect("request");
                    assert_eq!(response.status(), 200, "the record maps");
                    let _ = response.body_mut().read_to_vec().expect("body");
                    latencies.push(started.elapsed().as_secs_f64() * 1e6);
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<f64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Load {
        rate: all.len() as f64 / seconds as f64,
        p50_us: at(0.50),
        p99_us: at(0.99),
    }
}

struct Millrace {
    child: Child,
    url: String,
    metrics: String,
    _dir: tempfile::TempDir,
}

impl Millrace {
    /// Start `binary` as `name` (its log goes to `HOST_LOG/NAME.log` when that is set).
    fn start(name: &str, binary: &std::path::Path) -> Millrace {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("millrace.toml");
        std::fs::write(&config, quickstart(dir.path())).unwrap();
        let log = std::env::var_os("HOST_LOG").map(|dir| {
            std::fs::File::create(std::path::Path::new(&dir).join(format!("{name}.log")))
                .expect("HOST_LOG: a writable directory")
        });
        let mut child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&config)
            .args(["--http", "127.0.0.1:0", "--insecure-admin"])
            .env_remove("MILLRACE_COMPILE_CACHE")
            .env("RUST_LOG", if log.is_some() { "info" } else { "warn" })
            .stdout(Stdio::piped())
            .stderr(log.map_or_else(Stdio::null, Stdio::from))
            .spawn()
            .expect("millrace starts");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut url = String::new();
        let mut metrics = String::new();
        for line in lines.map_while(Result::ok) {
            if let Some(u) = line.strip_prefix("millrace: admin on ") {
                metrics = format!("{u}/metrics");
            }
            if let Some(u) = line.strip_prefix("millrace: listening on ") {
                url = format!("{u}/v1/routes/mes-confirmations/messages");
                break;
            }
        }
        assert!(!url.is_empty(), "millrace did not start");
        Millrace {
            child,
            url,
            metrics,
            _dir: dir,
        }
    }

    /// Chains run so far, how many of them inline, and lineage notes dropped (0 when the
    /// binary does not say).
    fn chains(&self) -> (f64, f64, f64) {
        (
            metric_sum(&self.metrics, "input_received{"),
            metric_sum(&self.metrics, "millrace_chains_inline_total{"),
            metric_sum(&self.metrics, "millrace_lineage_dropped_total"),
        )
    }
}

impl Drop for Millrace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let rounds = setting("ROUNDS", 3);
    let seconds = setting("SECONDS", 5) as u64;
    let clients = setting("CLIENTS", 4);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let native_url = format!(
        "http://{}/v1/routes/mes-confirmations/messages",
        listener.local_addr().unwrap()
    );
    std::thread::spawn(move || serve_native(listener));
    let mut hosts = vec![(
        "millrace",
        Millrace::start(
            "millrace",
            std::path::Path::new(env!("CARGO_BIN_EXE_millrace")),
        ),
    )];
    if let Ok(baseline) = std::env::var("BASELINE") {
        hosts.push((
            "baseline",
            Millrace::start("baseline", std::path::Path::new(&baseline)),
        ));
    }
    // Warm all (connections, the compile cache, the first instance).
    load(&native_url, clients, 1);
    for (_, host) in &hosts {
        load(&host.url, clients, 1);
    }
    println!("http: {clients} keep-alive clients, {seconds} s per side per round, {rounds} rounds");
    let mut ratios = vec![Vec::new(); hosts.len()];
    for round in 1..=rounds {
        let plain_cpu_before = threads_cpu_seconds("self", PLAIN_THREADS);
        let plain_switches_before = thread_switches("self", Some(PLAIN_THREADS));
        let plain = load(&native_url, clients, seconds);
        let plain_cpu = threads_cpu_seconds("self", PLAIN_THREADS) - plain_cpu_before;
        let plain_switches = thread_switches("self", Some(PLAIN_THREADS)) - plain_switches_before;
        let requests = plain.rate * seconds as f64;
        println!(
            "round {round}: plain hyper {:.0} req/s (p50 {:.0} µs, p99 {:.0} µs, {:.1} µs CPU per request, {:.2} thread switches per request)",
            plain.rate,
            plain.p50_us,
            plain.p99_us,
            plain_cpu * 1e6 / requests,
            plain_switches as f64 / requests,
        );
        for ((name, host), ratios) in hosts.iter().zip(&mut ratios) {
            let pid = host.child.id().to_string();
            let cpu_before = cpu_seconds(host.child.id());
            let switches_before = thread_switches(&pid, None);
            let writer_before = threads_cpu_seconds(&pid, LINEAGE_WRITER);
            let chains_before = host.chains();
            let ours = load(&host.url, clients, seconds);
            let cpu = cpu_seconds(host.child.id()) - cpu_before;
            let switches = thread_switches(&pid, None) - switches_before;
            let writer = threads_cpu_seconds(&pid, LINEAGE_WRITER) - writer_before;
            let chains = host.chains();
            let inline_share =
                (chains.1 - chains_before.1) / (chains.0 - chains_before.0).max(1.0) * 100.0;
            let ratio = ours.rate / plain.rate;
            ratios.push(ratio);
            let requests = ours.rate * seconds as f64;
            // A request makes two lineage notes (the chain's run, the reply).
            let dropped = (chains.2 - chains_before.2) / (2.0 * requests) * 100.0;
            println!(
                "  {name}: {:.0} req/s (p50 {:.0} µs, p99 {:.0} µs, {:.1} µs CPU per request of which {:.1} the lineage writer's, {:.2} thread switches per request, {inline_share:.0} % of chains inline, {dropped:.0} % of lineage notes dropped); ratio {ratio:.2}",
                ours.rate,
                ours.p50_us,
                ours.p99_us,
                cpu * 1e6 / requests,
                writer * 1e6 / requests,
                switches as f64 / requests,
            );
        }
    }
    for ((name, _), ratios) in hosts.iter().zip(ratios) {
        println!("{name}: median ratio {:.2}", median(ratios));
    }
}
