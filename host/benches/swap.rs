//! Hot swap, measured on a running `millrace run` over real HTTP (the `stamp` test guests,
//! versions 1.0.0 and 2.0.0, each answer naming its version):
//!
//! - **activation → first message served by the new version**, while a client keeps sending:
//!   from just before the activation call to the end of the first answer that names the new
//!   version. *Precompiled*: the version was compiled when it was deployed (the usual path).
//!   *Freshly compiled*: the upload (compile + gate) and the activation together, on a host
//!   whose data directory (and compile cache) has never seen the component.
//! - **latency during a swap storm vs steady state**: `CLIENTS` keep-alive clients sending for
//!   `SECONDS`, first with no activation, then while activations toggle the version every
//!   `STORM_MS` (each of a comma-separated list, default `10,100`); p50 and p99 of each, same
//!   host, same run.
//!
//! A fresh host per round. Needs `scripts/build-plugins`. Run:
//! `cargo bench -p millrace-host --bench swap`. Environment: `ROUNDS` (default 3), `SECONDS`
//! (default 5), `CLIENTS` (default 2), `STORM_MS` (default `10,100`), `TOGGLES` (precompiled
//! activations timed per round, default 20), `POOL` (the host's `host.instance_pool`; default
//! 0: off).

#[allow(dead_code)] // the broker benchmarks' helpers this one does not use
mod common;

use common::host::{Host, agent, latencies, pct};
use common::{median, root};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn setting(name: &str, default: u64) -> u64 {
    common::setting(name, default as usize) as u64
}

fn guest(name: &str) -> PathBuf {
    let path = root().join(format!("target/test-guests/{name}.wasm"));
    assert!(
        path.exists(),
        "{} missing: run scripts/build-plugins",
        path.display()
    );
    path
}

/// A fresh host running `stamp` 1.0.0 on route `a` of plant `plant-a`, in `dir`.
fn start(dir: &tempfile::TempDir) -> Host {
    let config = dir.path().join("millrace.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nadmin = \"127.0.0.1:0\"\n{}\n[plants.plant-a]\n\n[routes.a]\nplant = \"plant-a\"\nsource = \"http\"\nsink = \"reply\"\n\n[[routes.a.steps]]\nplugin = \"{}\"\ngrants = [\"log\"]\n",
            match setting("POOL", 0) {
                0 => String::new(),
                n => format!("instance_pool = {n}\n"),
            },
            guest("guest-stamp-1").display()
        ),
    )
    .unwrap();
    Host::start(&config)
}

/// One message; the version that answered.
fn send(agent: &ureq::Agent, url: &str) -> String {
    let mut reply = agent
        .post(&format!("{url}/v1/routes/a/messages"))
        .header("content-type", "text/plain")
        .send("x")
        .expect("the host answers");
    assert_eq!(reply.status(), 200);
    let body: serde_json::Value =
        serde_json::from_str(&reply.body_mut().read_to_string().unwrap()).unwrap();
    body["stamp"].as_str().unwrap().to_string()
}

fn activate(agent: &ureq::Agent, host: &Host, version: &str) {
    host.admin(
        agent,
        "/v1/plants/plant-a/plugins/stamp/activate",
        format!("{{\"version\": \"{version}\"}}").as_bytes(),
    );
}

/// A client sending without pause; every answer's end time and version.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<(Instant, String)>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, answers, url) = (Arc::clone(&stop), Arc::clone(&answers), url.to_string());
            std::thread::spawn(move || {
                let agent = agent();
                while !stop.load(Ordering::SeqCst) {
                    let version = send(&agent, &url);
                    answers.lock().unwrap().push((Instant::now(), version));
                }
            })
        };
        Load {
            stop,
            answers,
            thread,
        }
    }

    /// From `from` to the end of the first answer after it that names `version`.
    fn first(&self, from: Instant, version: &str) -> Duration {
        loop {
            if let Some((at, _)) = self
                .answers
                .lock()
                .unwrap()
                .iter()
                .find(|(at, v)| *at > from && v == version)
            {
                return *at - from;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
    }
}

fn main() {
    let rounds = setting("ROUNDS", 3);
    let seconds = setting("SECONDS", 5);
    let clients = setting("CLIENTS", 2);
    let toggles = setting("TOGGLES", 20);
    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    let (mut fresh, mut precompiled, mut uploads) = (Vec::new(), Vec::new(), Vec::new());
    let storms: Vec<u64> = std::env::var("STORM_MS")
        .unwrap_or_else(|_| "10,100".into())
        .split(',')
        .map(|ms| {
            ms.trim()
                .parse()
                .expect("STORM_MS: milliseconds, comma separated")
        })
        .collect();
    let mut steady_p99 = Vec::new();
    let mut activation_cpu = Vec::new();
    let (mut storm_p99, mut ratios) = (
        vec![Vec::new(); storms.len()],
        vec![Vec::new(); storms.len()],
    );
    for round in 1..=rounds {
        let dir = tempfile::tempdir().unwrap();
        let host = start(&dir);
        let agent = agent();
        send(&agent, &host.url);
        let load = Load::start(&host.url);
        std::thread::sleep(Duration::from_millis(200));

        let t0 = Instant::now();
        host.admin(&agent, "/v1/plants/plant-a/plugins", &stamp_2);
        let upload = t0.elapsed().as_secs_f64() * 1000.0;
        activate(&agent, &host, "2.0.0");
        let took = load.first(t0, "2.0.0").as_secs_f64() * 1000.0;
        fresh.push(took);
        uploads.push(upload);

        let mut these = Vec::new();
        for i in 0..toggles {
            let version = if i % 2 == 0 { "1.0.0" } else { "2.0.0" };
            std::thread::sleep(Duration::from_millis(20));
            let t0 = Instant::now();
            activate(&agent, &host, version);
            these.push(load.first(t0, version).as_secs_f64() * 1000.0);
        }
        load.stop();
        let round_precompiled = median(these.clone());
        precompiled.extend(these);

        // What an activation costs the host, with no message load: its CPU time over
        // back-to-back activations.
        let cpu_before = common::cpu_seconds(host.child.id());
        let quiet = 1000;
        for i in 0..quiet {
            activate(&agent, &host, if i % 2 == 0 { "1.0.0" } else { "2.0.0" });
        }
        let per_activation =
            (common::cpu_seconds(host.child.id()) - cpu_before) * 1000.0 / quiet as f64;
        activation_cpu.push(per_activation);

        let one = |agent: &ureq::Agent, _: u64| {
            send(agent, &host.url);
        };
        let steady = latencies(clients, seconds, &one, |_| {});
        let s99 = pct(&steady, 0.99);
        let mut line = format!(
            "round {round}: first answer of the new version: fresh (upload+compile+gate+activate) {took:.1} ms (upload {upload:.1} ms), precompiled median {round_precompiled:.2} ms\n  steady: {} msgs p50 {:.0} µs p99 {s99:.0} µs",
            steady.len(),
            pct(&steady, 0.5),
        );
        for (i, every) in storms.iter().enumerate() {
            let mut swaps = 0u64;
            let storm = latencies(clients, seconds, &one, |stop| {
                while !stop.load(Ordering::SeqCst) {
                    activate(
                        &agent,
                        &host,
                        if swaps.is_multiple_of(2) {
                            "1.0.0"
                        } else {
                            "2.0.0"
                        },
                    );
                    swaps += 1;
                    std::thread::sleep(Duration::from_millis(*every));
                }
            });
            let w99 = pct(&storm, 0.99);
            line += &format!(
                "\n  storm, an activation every {every} ms ({swaps} swaps): {} msgs p50 {:.0} µs p99 {w99:.0} µs; p99 storm/steady {:.2}",
                storm.len(),
                pct(&storm, 0.5),
                w99 / s99
            );
            storm_p99[i].push(w99);
            ratios[i].push(w99 / s99);
        }
        println!("{line}");
        steady_p99.push(s99);
    }
    let max = |xs: &[f64]| xs.iter().copied().fold(f64::MIN, f64::max);
    println!(
        "\nactivation → first message served by the new version: precompiled median {:.2} ms (max {:.2} ms, {} activations); freshly compiled median {:.1} ms (max {:.1} ms, {} rounds; of which the upload call — compile and gate — median {:.1} ms)",
        median(precompiled.clone()),
        max(&precompiled),
        precompiled.len(),
        median(fresh.clone()),
        max(&fresh),
        fresh.len(),
        median(uploads)
    );
    println!(
        "host CPU per activation (1,000 back to back, no message load): median of rounds {:.3} ms",
        median(activation_cpu)
    );
    println!("p99 latency: steady median {:.0} µs", median(steady_p99));
    for (i, every) in storms.iter().enumerate() {
        println!(
            "  storm every {every} ms: p99 median {:.0} µs, storm/steady median {:.2} (max {:.2})",
            median(storm_p99[i].clone()),
            median(ratios[i].clone()),
            max(&ratios[i])
        );
    }
}
