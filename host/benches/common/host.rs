//! A `millrace run` child on loopback for the benchmarks that drive a host over HTTP: its
//! addresses, admin calls without credentials, keep-alive clients, latency percentiles, its
//! resident memory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub struct Host {
    pub child: Child,
    /// The host's data directory (`.millrace` beside its configuration).
    pub data: std::path::PathBuf,
    /// `http://127.0.0.1:PORT` of the routes.
    pub url: String,
    /// `http://127.0.0.1:PORT` of the admin API.
    pub admin: String,
}

impl Host {
    /// `millrace run` on `config` (its data directory, compile cache included, beside it),
    /// returned once it printed both addresses.
    pub fn start(config: &Path) -> Host {
        Host::start_binary(Path::new(env!("CARGO_BIN_EXE_millrace")), config)
    }

    /// [`Host::start`] with another `millrace` binary (e.g. one built from an earlier commit).
    pub fn start_binary(binary: &Path, config: &Path) -> Host {
        let mut child = Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .args(["--http", "127.0.0.1:0"])
            // The benchmark's own host on loopback: admin calls without credentials.
            .arg("--insecure-admin")
            .env_remove("MILLRACE_COMPILE_CACHE")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("millrace starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut url, mut admin) = (String::new(), String::new());
        while url.is_empty() || admin.is_empty() {
            let line = lines
                .next()
                .expect("millrace prints its addresses")
                .unwrap();
            if let Some(a) = line.strip_prefix("millrace: admin on ") {
                admin = a.to_string();
            }
            if let Some(u) = line.strip_prefix("millrace: listening on ") {
                url = u.to_string();
            }
        }
        let data = config.parent().unwrap_or(Path::new(".")).join(".millrace");
        Host {
            child,
            url,
            admin,
            data,
        }
    }

    /// Resident memory now (`VmRSS`) and at its highest (`VmHWM`), in bytes.
    pub fn rss(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .map_or(0, |kib| kib << 10)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Bytes of the lineage file and its write-ahead log.
    pub fn lineage_bytes(&self) -> u64 {
        ["lineage.db", "lineage.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.data.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// The sum of every `/metrics` line of the series that starts with `series` (e.g.
    /// `"millrace_chains_inline_total{"`).
    pub fn metric(&self, series: &str) -> f64 {
        metric_sum(&format!("{}/metrics", self.admin), series)
    }

    /// POST `body` to the admin API at `path` (JSON when it starts with `{`, else a component).
    /// Panics unless the answer is a success.
    pub fn admin(&self, agent: &ureq::Agent, path: &str, body: &[u8]) -> String {
        let content_type = if body.first() == Some(&b'{') {
            "application/json"
        } else {
            "application/wasm"
        };
        let mut reply = agent
            .post(&format!("{}{path}", self.admin))
            .header("content-type", content_type)
            .send(body)
            .expect("the admin API answers");
        let text = reply.body_mut().read_to_string().unwrap_or_default();
        assert!(
            reply.status().is_success(),
            "{path}: {} {text}",
            reply.status()
        );
        text
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of the values of the lines that start with `series` in the Prometheus text at
/// `url` (0 when it cannot be read: a binary that does not export that series).
pub fn metric_sum(url: &str, series: &str) -> f64 {
    let text = ureq::get(url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A keep-alive client that reads non-2xx answers instead of failing on them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Latencies (µs, sorted) of `clients` clients each calling `send(agent, n)` (n = its count of
/// calls so far) without pause for `seconds`, while `meanwhile` runs (it is handed the flag
/// that says the time is up).
pub fn latencies(
    clients: u64,
    seconds: u64,
    send: &(dyn Fn(&ureq::Agent, u64) + Sync),
    meanwhile: impl FnOnce(&AtomicBool),
) -> Vec<f64> {
    let stop = AtomicBool::new(false);
    let mut all: Vec<f64> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let stop = &stop;
                scope.spawn(move || {
                    let agent = agent();
                    let mut took = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        send(&agent, took.len() as u64);
                        took.push(started.elapsed().as_secs_f64() * 1e6);
                    }
                    took
                })
            })
            .collect();
        let timer = scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(seconds));
            stop.store(true, Ordering::SeqCst);
        });
        meanwhile(&stop);
        timer.join().unwrap();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    all.sort_by(f64::total_cmp);
    all
}

/// The `p` quantile (0–1) of sorted values.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}
