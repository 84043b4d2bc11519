//! Hot swap, measured on a running `millrace run` over real HTTP (the `stamp` test guests,
//! versions 1.0.0 and 2.0.0, each answer naming its version):
//!
//! - **activation → first message served by the new version**, while a client keeps sending:
//!   from just before the activation call to the end of the first answer that names the new
//!   version. *Precompiled*: the version was compiled when it was deployed (the usual path).
//!   *Freshly compiled*: the upload (compile + gate) and the activation together, on a host
//!   whose data directory (and compile cache) has never seen the component.
//! - **latency during a swap storm vs steady state**: `CLIENTS` keep-alive clients sending for
//!   `SECONDS` with no activation and `SECONDS` while activations toggle the version every
//!   `STORM_MS` (each of a comma-separated list, default `10,100`), in alternating slices
//!   (`SLICE_MS`, below); p50 and p99 of each, same host, same run.
//!
//! A fresh host per round. Needs `scripts/build-plugins`. Run:
//! `cargo bench -p millrace-host --bench swap`. Environment: `ROUNDS` (default 3), `SECONDS`
//! (default 5), `CLIENTS` (default 2), `STORM_MS` (default `10,100`), `TOGGLES` (precompiled
//! activations timed per round, default 20), `POOL` (the host's `host.instance_pool`; default
//! 0: off), `BASELINE` (a `millrace` binary, e.g. built from an earlier commit, measured the same
//! way in each round after this build's: a change's effect, same run). Each round also reports
//! the host's CPU per activation over 1,000 back-to-back activations with no message load.
//! `SLICE_MS` (default 500): steady and storm measured in alternating slices of that many ms,
//! 2 × `SECONDS` per storm rate, so both see the same machine (this VM's speed drifts from second
//! to second); 0 measures them one after the other, `SECONDS` each. `SETTLE_MS` (default 0):
//! requests starting in the first that many ms of a slice count for neither.

#[allow(dead_code)] // the broker benchmarks' helpers this one does not use
mod common;

use common::host::{Host, agent, latencies, pct};
use common::{median, root};
use std::path::{Path, PathBuf};
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

/// A fresh host (`binary`) running `stamp` 1.0.0 on route `a` of plant `plant-a`, in `dir`.
fn start(dir: &tempfile::TempDir, binary: &Path) -> Host {
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
    Host::start_binary(binary, &config)
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

/// What one round measured on one binary.
struct Round {
    fresh: f64,
    upload: f64,
    precompiled: Vec<f64>,
    activation_cpu: f64,
    steady_p99: f64,
    storm_p99: Vec<f64>,
    ratios: Vec<f64>,
}

fn round(binary: &Path, label: &str, number: u64, storms: &[u64]) -> Round {
    let seconds = setting("SECONDS", 5);
    let clients = setting("CLIENTS", 2);
    let toggles = setting("TOGGLES", 20);
    let stamp_2 = std::fs::read(guest("guest-stamp-2")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = start(&dir, binary);
    let agent = agent();
    send(&agent, &host.url);
    let load = Load::start(&host.url);
    std::thread::sleep(Duration::from_millis(200));

    let t0 = Instant::now();
    host.admin(&agent, "/v1/plants/plant-a/plugins", &stamp_2);
    let upload = t0.elapsed().as_secs_f64() * 1000.0;
    activate(&agent, &host, "2.0.0");
    let fresh = load.first(t0, "2.0.0").as_secs_f64() * 1000.0;

    let mut precompiled = Vec::new();
    for i in 0..toggles {
        let version = if i % 2 == 0 { "1.0.0" } else { "2.0.0" };
        std::thread::sleep(Duration::from_millis(20));
        let t0 = Instant::now();
        activate(&agent, &host, version);
        precompiled.push(load.first(t0, version).as_secs_f64() * 1000.0);
    }
    load.stop();

    // What an activation costs the host, with no message load: its CPU time over
    // back-to-back activations.
    let cpu_before = common::cpu_seconds(host.child.id());
    let quiet = 1000;
    for i in 0..quiet {
        activate(&agent, &host, if i % 2 == 0 { "1.0.0" } else { "2.0.0" });
    }
    let activation_cpu =
        (common::cpu_seconds(host.child.id()) - cpu_before) * 1000.0 / quiet as f64;

    let one = |agent: &ureq::Agent, _: u64| {
        send(agent, &host.url);
    };
    let head = format!(
        "round {number}{label}: first answer of the new version: fresh (upload+compile+gate+activate) {fresh:.1} ms (upload {upload:.1} ms), precompiled median {:.2} ms; host CPU per activation {activation_cpu:.3} ms",
        median(precompiled.clone()),
    );
    let slice = setting("SLICE_MS", 500);
    if slice > 0 {
        let line = sliced(&host, &agent, head, storms, slice);
        return Round {
            fresh,
            upload,
            precompiled,
            activation_cpu,
            ..line
        };
    }
    let steady = latencies(clients, seconds, &one, |_| {});
    let s99 = pct(&steady, 0.99);
    let mut line = format!(
        "{head}\n  steady: {} msgs p50 {:.0} µs p99 {s99:.0} µs",
        steady.len(),
        pct(&steady, 0.5),
    );
    let (mut storm_p99, mut ratios) = (Vec::new(), Vec::new());
    for every in storms {
        let mut swaps = 0u64;
        let storm = latencies(clients, seconds, &one, |stop| {
            while !stop.load(Ordering::SeqCst) {
                swap(&agent, &host, &mut swaps, *every);
            }
        });
        let w99 = pct(&storm, 0.99);
        line += &format!(
            "\n  storm, an activation every {every} ms ({swaps} swaps): {} msgs p50 {:.0} µs p99 {w99:.0} µs; p99 storm/steady {:.2}",
            storm.len(),
            pct(&storm, 0.5),
            w99 / s99
        );
        storm_p99.push(w99);
        ratios.push(w99 / s99);
    }
    println!("{line}");
    Round {
        fresh,
        upload,
        precompiled,
        activation_cpu,
        steady_p99: s99,
        storm_p99,
        ratios,
    }
}

/// The storm's step: activate the other version (1.0.0 after an even count of `swaps`), count
/// it, wait `every` ms.
fn swap(agent: &ureq::Agent, host: &Host, swaps: &mut u64, every: u64) {
    let version = if swaps.is_multiple_of(2) {
        "1.0.0"
    } else {
        "2.0.0"
    };
    activate(agent, host, version);
    *swaps += 1;
    std::thread::sleep(Duration::from_millis(every));
}

/// Steady and storm in alternating slices of `slice` ms for 2 × `SECONDS` per storm rate, on
/// the same host: both see the same machine. A request counts for the slice it started in;
/// those that start in the first `SETTLE_MS` (default 0) of a slice count for neither.
fn sliced(host: &Host, agent: &ureq::Agent, head: String, storms: &[u64], slice: u64) -> Round {
    let (seconds, clients) = (setting("SECONDS", 5), setting("CLIENTS", 2));
    let settle = Duration::from_millis(setting("SETTLE_MS", 0));
    assert!(
        settle.as_millis() < u128::from(slice) && seconds * 1000 > slice,
        "SETTLE_MS < SLICE_MS, and 2 × SECONDS long enough for a steady and a storm slice"
    );
    let mut line = format!("{head}\n  steady and storm in alternating {slice} ms slices");
    let mut round = Round {
        fresh: 0.0,
        upload: 0.0,
        precompiled: Vec::new(),
        activation_cpu: 0.0,
        steady_p99: 0.0,
        storm_p99: Vec::new(),
        ratios: Vec::new(),
    };
    for every in storms {
        // 0: steady, 1: storm, 2: settling (counted for neither).
        let phase = std::sync::atomic::AtomicU8::new(2);
        let tagged: Mutex<[Vec<f64>; 2]> = Mutex::new([Vec::new(), Vec::new()]);
        let one = |agent: &ureq::Agent, _: u64| {
            let at = phase.load(Ordering::SeqCst);
            let t0 = Instant::now();
            send(agent, &host.url);
            if at < 2 {
                tagged.lock().unwrap()[at as usize].push(t0.elapsed().as_secs_f64() * 1e6);
            }
        };
        let mut swaps = 0u64;
        latencies(clients, 2 * seconds, &one, |stop| {
            for n in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let storm = n % 2 == 1;
                let start = Instant::now();
                phase.store(2, Ordering::SeqCst);
                while start.elapsed() < Duration::from_millis(slice) && !stop.load(Ordering::SeqCst)
                {
                    if start.elapsed() >= settle {
                        phase.store(storm as u8, Ordering::SeqCst);
                    }
                    if storm {
                        swap(agent, host, &mut swaps, *every);
                    } else {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        });
        let [mut steady, mut storm] = tagged.into_inner().unwrap();
        assert!(
            !steady.is_empty() && !storm.is_empty(),
            "no request counted in a steady or a storm slice"
        );
        steady.sort_by(f64::total_cmp);
        storm.sort_by(f64::total_cmp);
        let (s99, w99) = (pct(&steady, 0.99), pct(&storm, 0.99));
        line += &format!(
            "\n  an activation every {every} ms in the storm slices ({swaps} swaps): steady {} msgs p50 {:.0} µs p99 {s99:.0} µs; storm {} msgs p50 {:.0} µs p99 {w99:.0} µs; p99 storm/steady {:.2}",
            steady.len(),
            pct(&steady, 0.5),
            storm.len(),
            pct(&storm, 0.5),
            w99 / s99
        );
        // The steady p99 reported for the round: the first storm rate's slices.
        if round.storm_p99.is_empty() {
            round.steady_p99 = s99;
        }
        round.storm_p99.push(w99);
        round.ratios.push(w99 / s99);
    }
    println!("{line}");
    round
}

fn main() {
    let rounds = setting("ROUNDS", 3);
    let storms: Vec<u64> = std::env::var("STORM_MS")
        .unwrap_or_else(|_| "10,100".into())
        .split(',')
        .map(|ms| {
            ms.trim()
                .parse()
                .expect("STORM_MS: milliseconds, comma separated")
        })
        .collect();
    let mut binaries = vec![(String::new(), PathBuf::from(env!("CARGO_BIN_EXE_millrace")))];
    if let Ok(baseline) = std::env::var("BASELINE") {
        binaries.push((" (baseline)".to_string(), PathBuf::from(baseline)));
    }
    let mut results: Vec<Vec<Round>> = binaries.iter().map(|_| Vec::new()).collect();
    for number in 1..=rounds {
        for (i, (label, binary)) in binaries.iter().enumerate() {
            results[i].push(round(binary, label, number, &storms));
        }
    }
    let max = |xs: &[f64]| xs.iter().copied().fold(f64::MIN, f64::max);
    for ((label, _), runs) in binaries.iter().zip(&results) {
        let precompiled: Vec<f64> = runs.iter().flat_map(|r| r.precompiled.clone()).collect();
        let fresh: Vec<f64> = runs.iter().map(|r| r.fresh).collect();
        println!(
            "\nthis build{label}: activation → first message served by the new version: precompiled median {:.2} ms (max {:.2} ms, {} activations); freshly compiled median {:.1} ms (max {:.1} ms, {} rounds; of which the upload call — compile and gate — median {:.1} ms)",
            median(precompiled.clone()),
            max(&precompiled),
            precompiled.len(),
            median(fresh.clone()),
            max(&fresh),
            fresh.len(),
            median(runs.iter().map(|r| r.upload).collect())
        );
        println!(
            "host CPU per activation (1,000 back to back, no message load): median of rounds {:.3} ms",
            median(runs.iter().map(|r| r.activation_cpu).collect())
        );
        println!(
            "p99 latency: steady median {:.0} µs",
            median(runs.iter().map(|r| r.steady_p99).collect())
        );
        for (i, every) in storms.iter().enumerate() {
            let ratios: Vec<f64> = runs.iter().map(|r| r.ratios[i]).collect();
            println!(
                "  storm every {every} ms: p99 median {:.0} µs, storm/steady median {:.2} (max {:.2})",
                median(runs.iter().map(|r| r.storm_p99[i]).collect()),
                median(ratios.clone()),
                max(&ratios)
            );
        }
    }
}
