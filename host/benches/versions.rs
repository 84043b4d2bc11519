//! Many plugin versions in one host, measured on a running `millrace run` over real HTTP:
//! `PLANTS` plants (default 100) of `ROUTES` HTTP routes each (default 3), every route one step
//! of the `stamp` test guest, and `VERSIONS` versions of `stamp` uploaded to each plant (default
//! 10: 1,000 in all), each a distinct component (the guest with its version string rewritten,
//! so distinct bytes, a distinct digest, its own compiled code).
//!
//! Phases, one host and its data directory throughout:
//! 1. **baseline**: the host on its configuration alone (one component) with one version
//!    uploaded to the first plant: resident memory, then `CLIENTS` keep-alive clients sending
//!    round-robin over every route for `SECONDS` (p50, p99), then `TOGGLES` activations on the
//!    first plant (activation call → first answer naming the version);
//! 2. **all versions**: every other version uploaded through the admin API (compiled, gated,
//!    registered, kept compiled) and the last one activated on each plant: resident memory and
//!    its growth per version, then the same latency and activation measures;
//! 3. **restart**: the host stopped and started again on the same data directory (a warm compile
//!    cache): time to its first answer from every plant's restored version, resident memory, the
//!    same measures again (activations now load a version from the compile cache).
//!
//! Needs `scripts/build-plugins`. Run: `cargo bench -p millrace-host --bench versions`.

#[allow(dead_code)] // the broker benchmarks' helpers this one does not use
mod common;

use common::host::{Host, agent, latencies, pct};
use common::{median, root, setting};
use std::time::Instant;

/// The version string of `guest-stamp-1`, five bytes of its data segment.
const BUILT_AS: &[u8] = b"1.0.0";

/// `base` answering as `version` (five bytes like `BUILT_AS`).
fn variant(base: &[u8], version: &str) -> Vec<u8> {
    assert_eq!(version.len(), BUILT_AS.len());
    let at: Vec<usize> = base
        .windows(BUILT_AS.len())
        .enumerate()
        .filter(|(_, w)| *w == BUILT_AS)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the guest holds its version string once");
    let mut bytes = base.to_vec();
    bytes[at[0]..at[0] + BUILT_AS.len()].copy_from_slice(version.as_bytes());
    bytes
}

/// Version `v` of plant `p`: distinct across the whole host.
fn version(p: usize, v: usize) -> String {
    format!("{}.{}.{}", p / 10, p % 10, v)
}

fn route(p: usize, r: usize) -> String {
    format!("p{p:02}-{r}")
}

/// One message to `route`; the version that answered.
fn send(agent: &ureq::Agent, url: &str, route: &str) -> String {
    let mut reply = agent
        .post(&format!("{url}/v1/routes/{route}/messages"))
        .header("content-type", "text/plain")
        .send("x")
        .expect("the host answers");
    let text = reply.body_mut().read_to_string().unwrap();
    assert_eq!(reply.status(), 200, "{route}: {text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    body["stamp"].as_str().unwrap().to_string()
}

struct Measures {
    rss: u64,
    p50: f64,
    p99: f64,
    messages: usize,
    activation_ms: f64,
}

fn measure(host: &Host, plants: usize, routes: usize, toggle: [&str; 2]) -> Measures {
    let (clients, seconds) = (setting("CLIENTS", 2) as u64, setting("SECONDS", 5) as u64);
    let all = plants * routes;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let one = |agent: &ureq::Agent, _: u64| {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % all;
        send(agent, &host.url, &route(n / routes, n % routes));
    };
    let steady = latencies(clients, seconds, &one, |_| {});
    let agent = agent();
    let mut took = Vec::new();
    for i in 0..setting("TOGGLES", 20) {
        let version = toggle[i % 2];
        let t0 = Instant::now();
        host.admin(
            &agent,
            "/v1/plants/p00/plugins/stamp/activate",
            format!("{{\"version\": \"{version}\"}}").as_bytes(),
        );
        while send(&agent, &host.url, &route(0, 0)) != version {}
        took.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Measures {
        rss: host.rss().0,
        p50: pct(&steady, 0.5),
        p99: pct(&steady, 0.99),
        messages: steady.len(),
        activation_ms: median(took),
    }
}

fn report(phase: &str, m: &Measures) {
    println!(
        "{phase}: RSS {:.1} MiB; {} msgs p50 {:.0} µs p99 {:.0} µs; activation → first answer median {:.2} ms",
        m.rss as f64 / (1 << 20) as f64,
        m.messages,
        m.p50,
        m.p99,
        m.activation_ms
    );
}

fn main() {
    let plants = setting("PLANTS", 100);
    let routes = setting("ROUTES", 3);
    let versions = setting("VERSIONS", 10);
    assert!(
        plants <= 100 && versions <= 10,
        "PLANTS ≤ 100, VERSIONS ≤ 10"
    );
    let base_path = root().join("target/test-guests/guest-stamp-1.wasm");
    let base = std::fs::read(&base_path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-plugins", base_path.display()));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("millrace.toml");
    let mut text = String::from("[host]\nadmin = \"127.0.0.1:0\"\n");
    for p in 0..plants {
        text += &format!("\n[plants.p{p:02}]\n");
    }
    for p in 0..plants {
        for r in 0..routes {
            text += &format!(
                "\n[routes.{}]\nplant = \"p{p:02}\"\nsource = \"http\"\nsink = \"reply\"\n\n[[routes.{}.steps]]\nplugin = \"{}\"\ngrants = [\"log\"]\n",
                route(p, r),
                route(p, r),
                base_path.display()
            );
        }
    }
    std::fs::write(&config, text).unwrap();

    let t0 = Instant::now();
    let host = Host::start(&config);
    let agent = agent();
    send(&agent, &host.url, &route(plants - 1, routes - 1));
    println!(
        "{plants} plants, {} routes: first start (cold compile cache) to first answer {:.2} s, RSS {:.1} MiB",
        plants * routes,
        t0.elapsed().as_secs_f64(),
        host.rss().0 as f64 / (1 << 20) as f64
    );

    // Every version but the configured one's bytes (which plant 10 would get as 1.0.0).
    let uploads: Vec<(usize, String)> = (0..plants)
        .flat_map(|p| (0..versions).map(move |v| (p, version(p, v))))
        .filter(|(_, v)| v.as_bytes() != BUILT_AS)
        .collect();
    let upload = |p: usize, v: &str| {
        host.admin(
            &agent,
            &format!("/v1/plants/p{p:02}/plugins"),
            &variant(&base, v),
        );
    };
    let first = version(0, 1);
    upload(0, &first);
    let baseline = measure(&host, plants, routes, ["1.0.0", first.as_str()]);
    report("baseline (1 version uploaded)", &baseline);

    let t0 = Instant::now();
    let mut uploaded = 1;
    for (p, v) in &uploads {
        if (*p, v.as_str()) != (0, first.as_str()) {
            upload(*p, v);
            uploaded += 1;
        }
    }
    let took = t0.elapsed().as_secs_f64();
    let mut active = Vec::new();
    for p in 0..plants {
        let last = uploads.iter().rfind(|(q, _)| *q == p).unwrap().1.clone();
        host.admin(
            &agent,
            &format!("/v1/plants/p{p:02}/plugins/stamp/activate"),
            format!("{{\"version\": \"{last}\"}}").as_bytes(),
        );
        active.push(last);
    }
    println!(
        "uploaded {uploaded} versions in {took:.1} s ({:.0} ms each: compile, gate, register), activated the last on each plant",
        took * 1000.0 / (uploaded - 1) as f64
    );
    let second = version(0, 2);
    let loaded = measure(&host, plants, routes, [first.as_str(), second.as_str()]);
    report(&format!("{uploaded} versions uploaded"), &loaded);
    println!(
        "  RSS growth per uploaded version: {:.0} KiB; peak RSS {:.1} MiB",
        (loaded.rss as f64 - baseline.rss as f64) / (uploaded - 1) as f64 / 1024.0,
        host.rss().1 as f64 / (1 << 20) as f64
    );
    if let Some(last) = setting("TOGGLES", 20).checked_sub(1) {
        active[0] = [first.clone(), second.clone()][last % 2].clone();
    }
    drop(host);

    let t0 = Instant::now();
    let host = Host::start(&config);
    let listening = t0.elapsed().as_secs_f64();
    for (p, v) in active.iter().enumerate() {
        let answered = send(&agent, &host.url, &route(p, routes - 1));
        assert_eq!(&answered, v, "plant {p} restored its last activation");
    }
    println!(
        "restart (warm compile cache, {uploaded} versions registered, {plants} restored): listening after {listening:.2} s, every plant answered by its restored version after {:.2} s, RSS {:.1} MiB",
        t0.elapsed().as_secs_f64(),
        host.rss().0 as f64 / (1 << 20) as f64
    );
    let restarted = measure(&host, plants, routes, ["1.0.0", second.as_str()]);
    report("after restart", &restarted);
}
