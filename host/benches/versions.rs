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
//!    registered, kept compiled): resident memory and its growth per version. Then `ROUNDS`
//!    rounds (default 3) that tell the versions registered from the code serving: in each round,
//!    every plant on the configured component (*one component* serving every route, the
//!    999 others registered) and every plant on its last version (*distinct*: 100 components
//!    serving), in alternating order; in each, every route warmed first (so every route version
//!    has earned inline runs and made its instance), then latency over every route and over the
//!    first `NARROW` plants' routes (default 10) — the share of chains run inline read from
//!    `/metrics` alongside. Then the activation measure as in the baseline, plants on their last
//!    version;
//! 3. **restart**: the host stopped and started again on the same data directory (a warm compile
//!    cache): time to its first answer from every plant's restored version, resident memory, the
//!    same measures again (activations now load a version from the compile cache).
//!
//! `LINEAGE=0` runs the host without lineage. `MARKS=1` prints when each latency sample starts
//! and ends (Unix seconds), to cut a profile of the host taken with `perf record -k realtime`.
//!
//! Needs `scripts/build-plugins`. Run: `cargo bench -p millrace-host --bench versions`.

#[allow(dead_code)] // the broker benchmarks' helpers this one does not use
mod common;

use common::host::{Host, agent, latencies, pct};
use common::{cpu_seconds, median, root, setting};
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

/// Latencies (µs, sorted) of `CLIENTS` keep-alive clients sending round-robin over the routes
/// of the first `plants` plants for `SECONDS`.
fn steady(host: &Host, plants: usize, routes: usize) -> Vec<f64> {
    let (clients, seconds) = (setting("CLIENTS", 2) as u64, setting("SECONDS", 5) as u64);
    let all = plants * routes;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let one = |agent: &ureq::Agent, _: u64| {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % all;
        send(agent, &host.url, &route(n / routes, n % routes));
    };
    latencies(clients, seconds, &one, |_| {})
}

/// Median ms from an activation call on the first plant to the first answer naming it, over
/// `TOGGLES` activations alternating between the two versions.
fn activation(host: &Host, toggle: [&str; 2]) -> f64 {
    let agent = agent();
    let mut took = Vec::new();
    for i in 0..setting("TOGGLES", 20) {
        let version = toggle[i % 2];
        let t0 = Instant::now();
        activate(host, &agent, 0, version);
        while send(&agent, &host.url, &route(0, 0)) != version {}
        took.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    median(took)
}

fn activate(host: &Host, agent: &ureq::Agent, plant: usize, version: &str) {
    host.admin(
        agent,
        &format!("/v1/plants/p{plant:02}/plugins/stamp/activate"),
        format!("{{\"version\": \"{version}\"}}").as_bytes(),
    );
}

/// `WARM` messages (default 20) to every route of the first `plants` plants: each route version
/// has made its instance and earned inline runs (16 short runs) before it is measured.
fn warm(host: &Host, plants: usize, routes: usize) {
    let agent = agent();
    for _ in 0..setting("WARM", 20) {
        for p in 0..plants {
            for r in 0..routes {
                send(&agent, &host.url, &route(p, r));
            }
        }
    }
}

/// What [`sample`] measured.
#[derive(Clone, Copy)]
struct Sample {
    p50: f64,
    p99: f64,
    /// The share of chains run inline.
    inline: f64,
    /// The host's CPU time per message, µs.
    cpu_us: f64,
}

/// `steady` over the first `plants` plants: p50, p99, the share of chains run inline, the host's
/// CPU per message.
fn sample(host: &Host, plants: usize, routes: usize) -> Sample {
    let inline = |h: &Host| h.metric("millrace_chains_inline_total{");
    let (before, cpu) = (inline(host), cpu_seconds(host.child.id()));
    let mark = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let from = mark();
    let took = steady(host, plants, routes);
    if setting("MARKS", 0) == 1 {
        println!(
            "    sample over {plants} plants from {from:.3} to {:.3} (Unix s)",
            mark()
        );
    }
    let n = took.len() as f64;
    Sample {
        p50: pct(&took, 0.5),
        p99: pct(&took, 0.99),
        inline: (inline(host) - before) / n,
        cpu_us: (cpu_seconds(host.child.id()) - cpu) * 1e6 / n,
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Resident memory, latency over every route and over the first `narrow` plants' routes (every
/// route warmed first), and activation on the first plant: printed as `phase`.
fn report(
    phase: &str,
    host: &Host,
    (plants, narrow, routes): (usize, usize, usize),
    toggle: [&str; 2],
) -> u64 {
    warm(host, plants, routes);
    let all = sample(host, plants, routes);
    let few = sample(host, narrow, routes);
    let ms = activation(host, toggle);
    let rss = host.rss().0;
    println!(
        "{phase}: RSS {:.1} MiB; activation → first answer median {ms:.2} ms; {}; lineage file {:.1} MiB",
        mib(rss),
        latency_line((plants, all), (narrow, few), routes),
        mib(host.lineage_bytes())
    );
    rss
}

/// `N routes p50 … p99 … (… % inline, … µs CPU per message)` for the two samples.
fn latency_line(
    (plants, all): (usize, Sample),
    (narrow, few): (usize, Sample),
    routes: usize,
) -> String {
    let one = |n: usize, s: Sample| {
        format!(
            "{} routes p50 {:.0} µs p99 {:.0} µs ({:.0} % inline, {:.1} µs CPU per message)",
            n * routes,
            s.p50,
            s.p99,
            s.inline * 100.0,
            s.cpu_us
        )
    };
    format!("{}; {}", one(plants, all), one(narrow, few))
}

fn main() {
    let plants = setting("PLANTS", 100);
    let routes = setting("ROUTES", 3);
    let versions = setting("VERSIONS", 10);
    assert!(
        plants <= 100 && (3..=10).contains(&versions),
        "PLANTS ≤ 100, 3 ≤ VERSIONS ≤ 10"
    );
    let base_path = root().join("target/test-guests/guest-stamp-1.wasm");
    let base = std::fs::read(&base_path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-plugins", base_path.display()));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("millrace.toml");
    let mut text = String::from("[host]\nadmin = \"127.0.0.1:0\"\n");
    // `LINEAGE=0`: without lineage (what the lineage store's writes cost the later phases).
    if setting("LINEAGE", 1) == 0 {
        text += "\n[telemetry]\nlineage = false\n";
    }
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
        mib(host.rss().0)
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
    let narrow = setting("NARROW", 10).min(plants);
    let first = version(0, 1);
    upload(0, &first);
    let baseline = report(
        "baseline (1 version uploaded)",
        &host,
        (plants, narrow, routes),
        ["1.0.0", first.as_str()],
    );

    let t0 = Instant::now();
    let mut uploaded = 1;
    for (p, v) in &uploads {
        if (*p, v.as_str()) != (0, first.as_str()) {
            upload(*p, v);
            uploaded += 1;
        }
    }
    let took = t0.elapsed().as_secs_f64();
    println!(
        "uploaded {uploaded} versions in {took:.1} s ({:.0} ms each: compile, gate, register)",
        took * 1000.0 / (uploaded - 1) as f64
    );
    let registered = host.rss().0;
    println!(
        "  RSS {:.1} MiB, growth per uploaded version {:.0} KiB",
        mib(registered),
        (registered as f64 - baseline as f64) / (uploaded - 1) as f64 / 1024.0
    );

    // Versions registered against code serving: the same host, every plant on the configured
    // component or every plant on its last version, alternating.
    let active: Vec<String> = (0..plants)
        .map(|p| uploads.iter().rfind(|(q, _)| *q == p).unwrap().1.clone())
        .collect();
    let mut rows: [Vec<[Sample; 2]>; 2] = [Vec::new(), Vec::new()];
    for round in 0..setting("ROUNDS", 3) {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for distinct in order {
            for (p, last) in active.iter().enumerate() {
                activate(&host, &agent, p, if distinct == 1 { last } else { "1.0.0" });
            }
            warm(&host, plants, routes);
            rows[distinct].push([sample(&host, plants, routes), sample(&host, narrow, routes)]);
        }
        for (distinct, name) in [
            (0, "one component serving"),
            (1, "distinct components serving"),
        ] {
            let [all, few] = rows[distinct][round];
            println!(
                "  round {}: {name}: {}",
                round + 1,
                latency_line((plants, all), (narrow, few), routes)
            );
        }
    }
    let of = |distinct: usize, wide: usize, f: fn(&Sample) -> f64| {
        median(rows[distinct].iter().map(|r| f(&r[wide])).collect())
    };
    for (wide, spread) in [(0, plants), (1, narrow)] {
        type Of = fn(&Sample) -> f64;
        let (p50, p99, cpu): (Of, Of, Of) = (|s| s.p50, |s| s.p99, |s| s.cpu_us);
        println!(
            "  over {spread} plants' routes, medians of rounds: one component p50 {:.0} / p99 {:.0} µs, {:.1} µs CPU per message; {spread} distinct p50 {:.0} / p99 {:.0} µs, {:.1} µs CPU; distinct ÷ one: p50 {:.2}, p99 {:.2}, CPU {:.2}",
            of(0, wide, p50),
            of(0, wide, p99),
            of(0, wide, cpu),
            of(1, wide, p50),
            of(1, wide, p99),
            of(1, wide, cpu),
            of(1, wide, p50) / of(0, wide, p50),
            of(1, wide, p99) / of(0, wide, p99),
            of(1, wide, cpu) / of(0, wide, cpu),
        );
    }

    let second = version(0, 2);
    let mut active = active;
    for (p, last) in active.iter().enumerate() {
        activate(&host, &agent, p, last);
    }
    report(
        &format!("{uploaded} versions uploaded, the last of each plant active"),
        &host,
        (plants, narrow, routes),
        [first.as_str(), second.as_str()],
    );
    println!("  peak RSS {:.1} MiB", mib(host.rss().1));
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
        mib(host.rss().0)
    );
    report(
        "after restart",
        &host,
        (plants, narrow, routes),
        ["1.0.0", second.as_str()],
    );
}
