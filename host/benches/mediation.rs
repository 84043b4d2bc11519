//! Per-message cost of `mes-fixed-width`: called natively in-process (the same plugin crate
//! against the SDK's host double) vs through the host (the built component, with a warm reused
//! instance and with a fresh instance per message). Same input, same settings, same run.
//!
//! The `vectors/PLUGIN` groups do the same for every plugin on the output-giving cases of its
//! conformance vectors (one iteration = each case once), natively and with a reused instance.
//! There the native side's `state` calls go to the store the host gives a step (SQLite in
//! memory, as on the Wasm side), so a plugin keeping state pays for the same store on both
//! sides; with `INTERLEAVE`, `native-state-in-a-map` is the SDK's double alone (state in a map).
//!
//! Needs `scripts/build-plugins` first. Run: `scripts/bench` (prints the ratios).
//!
//! `INTERLEAVE=ROUNDS` measures the headline and the other groups without Criterion: each
//! round times a batch (~20 ms) of every case of a group in turn, starting with a different case
//! each round, and the ratio to native is taken within each round; prints the medians. On a
//! machine whose speed drifts (a shared VM), ratios from one round share its conditions.
//!
//! `VARIANT=NAME` also runs `target/plugins/PLUGIN.NAME.wasm` (a build with another code
//! generation lever, `scripts/build-plugins` says how) beside each Rust plugin, in the same
//! groups: a lever measured against the usual build and native code in one run. A twin's
//! `TWIN.NAME.wasm` (e.g. the C plugin's) runs too when one is there.
//!
//! `ONLY=A,B` measures only the groups whose name contains one of the words (e.g.
//! `ONLY=vectors/downtime-router`; `ONLY=downtime-router` takes `floor/downtime-router` too);
//! the others are not loaded.
//!
//! The `floor/PLUGIN` groups run a guest that answers with its input (`tests/guests/echo`) on
//! a plugin's vectors: what a call through the host costs before the plugin does anything (one
//! output as large as the input).
//!
//! `ENGINE=NAME` (one of [`Codegen::ALL`]) also runs each Rust plugin's usual component (and
//! the echo guest of the `floor/` groups) on an engine with that code-generation setting, as the
//! case `engine-NAME`: a wasmtime setting measured the same way.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mes_fixed_width::MesFixedWidth;
use millrace_host::config::Config;
use millrace_host::plugin::bindings::types::Message;
use millrace_host::plugin::engine::{Codegen, PluginEngine};
use millrace_host::plugin::{Artifact, StepLimits, StepRuntime, StepSpec};
use millrace_sdk::{Plugin, TestHost};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The host's allocator (`host/src/main.rs`), for both sides: the Wasm side's host work
/// (lifting outputs, the call's bookkeeping) allocates as it does in `millrace`, and the native
/// side, the plugin compiled into this process, allocates as it would compiled into the host.
/// (Before 2026-12-06 this benchmark ran on the C library's allocator, whose slower allocations
/// made the native side slower and the ratios lower: docs/performance.md.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A case of an interleaved group: runs `n` calls and returns the time they took (setup such
/// as cloning the native input made outside it).
type Timed<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// `INTERLEAVE` rounds of `cases` (the first is native) in turn; prints each case's median per
/// call and the median of its per-round ratio to native.
fn interleaved(group: &str, rounds: usize, mut cases: Vec<(String, Timed<'_>)>) {
    // Calls per batch: about 20 ms of the slowest case.
    let slowest = cases
        .iter_mut()
        .map(|(_, run)| run(20) / 20)
        .max()
        .unwrap_or(Duration::from_micros(1));
    let calls = (Duration::from_millis(20).as_nanos() / slowest.as_nanos().max(1)).max(1) as u64;
    let n = cases.len();
    let mut per_call = vec![Vec::new(); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            per_call[i].push((cases[i].1)(calls).as_secs_f64() * 1e6 / calls as f64);
        }
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    for (i, (name, _)) in cases.iter().enumerate() {
        let ratios: Vec<f64> = (0..rounds)
            .map(|r| per_call[i][r] / per_call[0][r])
            .collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        println!(
            "interleaved {group}/{name}: {:.2} µs per iteration, × native {:.2} (rounds {lo:.2}–{hi:.2}; {rounds} rounds of {calls})",
            median(per_call[i].clone()),
            median(ratios.clone()),
        );
    }
}

/// Whether `ONLY` (when set) names `group`.
fn selected(group: &str) -> bool {
    std::env::var("ONLY").map_or(true, |groups| {
        groups.split(',').any(|word| group.contains(word.trim()))
    })
}

/// `INTERLEAVE` when set: the rounds of [`interleaved`].
fn interleave() -> Option<usize> {
    std::env::var("INTERLEAVE").ok().map(|v| {
        v.parse()
            .expect("INTERLEAVE: a number of rounds, e.g. INTERLEAVE=40")
    })
}

/// An interleaved case: every message through `step`.
fn each<'a>(step: &'a StepRuntime, messages: &'a [Message]) -> Timed<'a> {
    Box::new(move |n| {
        timed(n, || {
            for m in messages {
                black_box(step.mediate(black_box(m)).ok());
            }
        })
    })
}

/// `n` iterations of the native plugin over `inputs` against `host` (the inputs' clones made
/// before the timing: the native call takes a message by value).
fn native_each<'a, P: Plugin, H: millrace_sdk::Host>(
    plugin: &'a P,
    host: &'a H,
    inputs: &'a [millrace_sdk::Message],
) -> Timed<'a> {
    Box::new(move |n| {
        let mut batches = vec![inputs.to_vec(); n as usize].into_iter();
        timed(n, || {
            for input in batches.next().unwrap() {
                black_box(plugin.mediate(host, input).ok());
            }
        })
    })
}

/// `n` calls of `call`, timed.
fn timed(n: u64, mut call: impl FnMut()) -> Duration {
    let started = std::time::Instant::now();
    for _ in 0..n {
        call();
    }
    started.elapsed()
}

/// `ENGINE=NAME`: an engine with that code-generation setting ([`Codegen::named`]), on which the
/// usual components run beside the host's engine.
fn measured_engine() -> Option<(String, PluginEngine)> {
    let name = std::env::var("ENGINE").ok()?;
    let codegen = Codegen::named(&name).unwrap_or_else(|| {
        panic!(
            "ENGINE={name}: one of {}",
            Codegen::ALL.map(|(n, _)| n).join(", ")
        )
    });
    Some((
        name,
        PluginEngine::for_measurement(codegen).expect("engine"),
    ))
}

/// `PLUGIN.VARIANT` when `VARIANT` is set and that build exists. Test guests are not built as
/// variants.
fn variant(plugin: &str) -> Option<String> {
    if plugin.starts_with("guest-") {
        return None;
    }
    let (name, path) = variant_build(plugin)?;
    assert!(
        path.exists(),
        "VARIANT: {} missing (scripts/build-plugins builds it)",
        path.display()
    );
    Some(name)
}

/// `PLUGIN.VARIANT` and where its build would be, when `VARIANT` is set.
fn variant_build(plugin: &str) -> Option<(String, PathBuf)> {
    let name = format!("{plugin}.{}", std::env::var("VARIANT").ok()?);
    let path = root().join("target/plugins").join(format!("{name}.wasm"));
    Some((name, path))
}

/// Where `scripts/build-plugins` puts a component: a plugin's (or its variant's, or its twin's)
/// under `target/plugins`, a test guest's (`guest-…`) under `target/test-guests`.
fn component_path(component: &str) -> PathBuf {
    let folder = if component.starts_with("guest-") {
        "target/test-guests"
    } else {
        "target/plugins"
    };
    root().join(folder).join(format!("{component}.wasm"))
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
}

/// A header record and 12 production confirmations: 1053 bytes.
fn input() -> Vec<u8> {
    let mut body = format!("HD{:<78}\n", "BATCH 20261127 LINE NORTH");
    for i in 0..12 {
        let wc = ["WC01", "WC02", "WC07"][i % 3];
        body.push_str(&format!(
            "PC{:<12}{:<18}{:>10}{:<3}{wc:<6}{:<14}{:<8}A      \n",
            format!("WO-{}", 1000 + i),
            "MAT-4711",
            format!("{:010}", 12500 + i),
            "EA",
            "20261127063000",
            "OP17"
        ));
    }
    body.into_bytes()
}

fn bench(c: &mut Criterion) {
    // The headline group and `instantiate/mes-fixed-width` (whose name contains it).
    if !selected("instantiate/mes-fixed-width") {
        return;
    }
    let config =
        Config::load(&root().join("examples/quickstart/millrace.toml")).expect("quickstart config");
    let route = &config.routes[0];
    let step = &route.steps[0];
    let tables = config.plants[&route.plant].clone();
    let body = input();
    let message = Message {
        id: "bench-1".into(),
        plant: route.plant.clone(),
        route: route.name.clone(),
        content_type: "text/plain".into(),
        headers: vec![("content-type".into(), "text/plain".into())],
        body: body.clone(),
    };

    // Native: the same crate, the same settings and table, through the host double.
    let settings: serde_json::Value =
        serde_json::from_str(step.settings.document()).expect("settings are JSON");
    let mut host = TestHost::new().with_settings(settings);
    let work_centres = tables
        .get("work_centres")
        .expect("work_centres table")
        .clone();
    host = host.with_table("work_centres", work_centres);
    let plugin = MesFixedWidth::new(&host).expect("settings load natively");
    let native_input = millrace_sdk::Message {
        id: message.id.clone(),
        plant: message.plant.clone(),
        route: message.route.clone(),
        content_type: message.content_type.clone(),
        headers: message.headers.clone(),
        body: body.clone(),
    };
    assert_eq!(
        plugin
            .mediate(&host, native_input.clone())
            .expect("native run")
            .len(),
        12
    );

    let path = root().join("target/plugins/mes-fixed-width.wasm");
    assert!(
        path.exists(),
        "build the plugins first: scripts/build-plugins"
    );
    let engine = PluginEngine::new(None).expect("engine");
    let artifact = Artifact::load(&engine, &path).expect("component loads");
    // The same component on engines whose instances come from a pool (`host.instance_pool`),
    // keeping none, 64 KiB or 1 MiB of each released memory resident.
    let pooled: Vec<(&str, PluginEngine)> = [
        ("pooling", 0),
        ("pooling-64k", 64 << 10),
        ("pooling-1m", 1 << 20),
    ]
    .into_iter()
    .map(|(name, keep)| {
        let engine = PluginEngine::with_pool(
            None,
            Some(millrace_host::plugin::engine::InstancePool {
                instances: 100,
                max_memory_bytes: 64 << 20,
                keep_resident_bytes: keep,
            }),
        )
        .expect("pooling engine");
        (name, engine)
    })
    .collect();
    let load_on = |engine: &PluginEngine, artifact: &Artifact, instance_reuse| {
        let spec = StepSpec {
            plant: &route.plant,
            route: &route.name,
            grants: step.grants.clone(),
            settings: step.settings.clone(),
            tables: tables.clone(),
            state: std::sync::Arc::new(millrace_host::state::StateStore::in_memory()),
            limits: StepLimits {
                deadline: Duration::from_secs(1),
                memory_bytes: 64 << 20,
                instance_reuse,
                ..StepLimits::default()
            },
            quarantines: std::sync::Arc::new(millrace_host::quarantine::Quarantines::disabled()),
        };
        StepRuntime::load(engine, artifact, spec).expect("step loads")
    };
    let load = |instance_reuse| load_on(&engine, &artifact, instance_reuse);
    let reused = load(u32::MAX);
    let fresh = load(1);
    let fresh_pooled: Vec<(&str, StepRuntime)> = pooled
        .iter()
        .map(|(name, engine)| {
            let artifact = Artifact::load(engine, &path).expect("component loads");
            (*name, load_on(engine, &artifact, 1))
        })
        .collect();
    assert_eq!(reused.mediate(&message).expect("wasm run").len(), 12);
    let measured = measured_engine();
    let reused_variants: Vec<(String, StepRuntime)> = variant("mes-fixed-width")
        .map(|name| {
            let path = root().join("target/plugins").join(format!("{name}.wasm"));
            let artifact = Artifact::load(&engine, &path).expect("component loads");
            (name, load_on(&engine, &artifact, u32::MAX))
        })
        .into_iter()
        .chain(measured.iter().map(|(codegen, engine)| {
            let artifact = Artifact::load(engine, &path).expect("component loads");
            (
                format!("engine-{codegen}"),
                load_on(engine, &artifact, u32::MAX),
            )
        }))
        .collect();
    for (_, step) in &reused_variants {
        assert_eq!(step.mediate(&message).expect("wasm run").len(), 12);
    }

    if let Some(rounds) = interleave() {
        let mut cases: Vec<(String, Timed<'_>)> = vec![
            (
                "native".into(),
                Box::new(|n| {
                    let inputs = vec![native_input.clone(); n as usize];
                    let mut inputs = inputs.into_iter();
                    timed(n, || {
                        black_box(
                            plugin
                                .mediate(&host, black_box(inputs.next().unwrap()))
                                .ok(),
                        );
                    })
                }),
            ),
            (
                "wasm-reused-instance".into(),
                Box::new(|n| timed(n, || drop(black_box(reused.mediate(black_box(&message)))))),
            ),
        ];
        for (name, step) in &reused_variants {
            cases.push((
                format!("{name}-reused-instance"),
                Box::new(|n| timed(n, || drop(black_box(step.mediate(black_box(&message)))))),
            ));
        }
        interleaved("mes-fixed-width", rounds, cases);
        return;
    }
    let mut group = c.benchmark_group("mes-fixed-width");
    group.throughput(Throughput::Bytes(body.len() as u64));
    // The native call takes the message by value: its clone is made outside the timing.
    group.bench_function("native", |b| {
        b.iter_batched(
            || native_input.clone(),
            |input| black_box(plugin.mediate(&host, black_box(input))),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("wasm-reused-instance", |b| {
        b.iter(|| black_box(reused.mediate(black_box(&message))))
    });
    for (name, step) in &reused_variants {
        group.bench_function(format!("{name}-reused-instance"), |b| {
            b.iter(|| black_box(step.mediate(black_box(&message))))
        });
    }
    group.bench_function("wasm-fresh-instance", |b| {
        b.iter(|| black_box(fresh.mediate(black_box(&message))))
    });
    for (name, step) in &fresh_pooled {
        group.bench_function(format!("wasm-fresh-instance-{name}"), |b| {
            b.iter(|| black_box(step.mediate(black_box(&message))))
        });
    }
    group.finish();

    // A new instance alone, made and dropped: on-demand mappings against the pool.
    let mut group = c.benchmark_group("instantiate/mes-fixed-width");
    group.bench_function("on-demand", |b| {
        b.iter(|| fresh.instantiate_and_drop().expect("instantiates"))
    });
    for (name, step) in &fresh_pooled {
        group.bench_function(*name, |b| {
            b.iter(|| step.instantiate_and_drop().expect("instantiates"))
        });
    }
    group.finish();
}

/// The cases of a plugin's vectors folder that use the shared settings and give outputs.
struct Vectors {
    settings: serde_json::Map<String, serde_json::Value>,
    tables: millrace_host::lookup::Tables,
    messages: Vec<Message>,
}

fn vectors(plugin: &str) -> Vectors {
    let dir = root().join("plugins").join(plugin).join("vectors");
    let settings = millrace_host::conformance::read_settings(&dir.join("settings.toml"))
        .expect("settings")
        .unwrap_or_default();
    let tables = millrace_host::conformance::read_tables(&dir.join("lookups")).expect("tables");
    let messages: Vec<Message> = output_giving_cases(&dir)
        .into_iter()
        .filter(|case| !case.join("settings.toml").exists())
        .map(|case| case_message(&case))
        .collect();
    assert!(!messages.is_empty(), "{plugin}: no vector gives outputs");
    Vectors {
        settings,
        tables,
        messages,
    }
}

/// The largest file of a plugin's real-world corpus that gives outputs, with its settings (its
/// own, else the corpus folder's).
fn largest_corpus_file(plugin: &str) -> Vectors {
    let dir = root().join("plugins").join(plugin).join("corpus");
    let case = output_giving_cases(&dir)
        .into_iter()
        .max_by_key(|case| case_message(case).body.len())
        .unwrap_or_else(|| panic!("{plugin}: no corpus file gives outputs"));
    let own = case.join("settings.toml");
    let settings_file = if own.exists() {
        own
    } else {
        dir.join("settings.toml")
    };
    let settings = millrace_host::conformance::read_settings(&settings_file)
        .expect("settings")
        .unwrap_or_default();
    Vectors {
        settings,
        tables: millrace_host::conformance::read_tables(&dir.join("lookups")).expect("tables"),
        messages: vec![case_message(&case)],
    }
}

/// The case folders of `dir` whose expected answer has outputs, in name order.
fn output_giving_cases(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut cases: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .filter(|case| {
            let expected = std::fs::read_to_string(case.join("expected.json")).unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(&expected)
                .ok()
                .and_then(|v| v["outputs"].as_array().map(|o| !o.is_empty()))
                .unwrap_or(false)
        })
        .collect();
    cases.sort();
    cases
}

/// A case's message, as the conformance runner builds it.
fn case_message(case: &Path) -> Message {
    use millrace_host::conformance;
    let input = std::fs::read_dir(case)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_stem().is_some_and(|s| s == "input"))
        .unwrap();
    let content_type = std::fs::read_to_string(case.join("content-type"))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| conformance::content_type_of(&input).to_string());
    Message {
        id: case.file_name().unwrap().to_string_lossy().into_owned(),
        plant: conformance::PLANT.into(),
        route: conformance::ROUTE.into(),
        content_type,
        headers: Vec::new(),
        body: std::fs::read(&input).unwrap(),
    }
}

fn to_sdk(m: &Message) -> millrace_sdk::Message {
    millrace_sdk::Message {
        id: m.id.clone(),
        plant: m.plant.clone(),
        route: m.route.clone(),
        content_type: m.content_type.clone(),
        headers: m.headers.clone(),
        body: m.body.clone(),
    }
}

/// The native side's host: the SDK's double for settings, tables and logs, and for `state` the
/// store the host gives a step (SQLite, in memory here as on the Wasm side), so both sides pay
/// for the same state calls and the ratio is the sandbox's alone.
struct NativeHost {
    double: TestHost,
    state: std::sync::Arc<millrace_host::state::StateStore>,
}

impl millrace_sdk::Host for NativeHost {
    fn log(&self, level: millrace_sdk::Level, message: &str) {
        self.double.log(level, message)
    }
    fn setting(&self, key: &str) -> Option<String> {
        self.double.setting(key)
    }
    fn setting_keys(&self) -> Vec<String> {
        self.double.setting_keys()
    }
    fn settings_json(&self) -> String {
        self.double.settings_json()
    }
    fn lookup(&self, table: &str, key: &str) -> Result<Option<String>, millrace_sdk::LookupError> {
        self.double.lookup(table, key)
    }
    fn state_get(&self, key: &str) -> Result<Option<String>, millrace_sdk::StateError> {
        self.state
            .get(millrace_host::conformance::PLANT, key)
            .map_err(native_state_error)
    }
    fn state_put(&self, key: &str, value: &str) -> Result<(), millrace_sdk::StateError> {
        self.state
            .put(millrace_host::conformance::PLANT, key, value)
            .map_err(native_state_error)
    }
    fn state_delete(&self, key: &str) -> Result<bool, millrace_sdk::StateError> {
        self.state
            .delete(millrace_host::conformance::PLANT, key)
            .map_err(native_state_error)
    }
}

fn native_state_error(e: millrace_host::state::StateError) -> millrace_sdk::StateError {
    millrace_sdk::StateError::Unavailable(e.to_string())
}

/// One plugin on its vectors: natively (against [`NativeHost`]), and through the host with a
/// warm reused instance. One iteration = every output-giving case once.
fn bench_plugin<P: Plugin>(c: &mut Criterion, engine: &PluginEngine, name: &str) {
    bench_plugin_and_twins::<P>(c, engine, name, &[]);
}

/// Like [`bench_plugin`], plus each twin (the same plugin in another language, built at
/// `target/plugins/TWIN.wasm`) on the same vectors, in the same group.
fn bench_plugin_and_twins<P: Plugin>(
    c: &mut Criterion,
    engine: &PluginEngine,
    name: &str,
    twins: &[&str],
) {
    if !selected(&format!("vectors/{name}")) {
        return;
    }
    let v = vectors(name);
    let throughput = Throughput::Elements(v.messages.len() as u64);
    bench_cases::<P>(
        c,
        engine,
        name,
        &format!("vectors/{name}"),
        v,
        throughput,
        twins,
    );
}

/// What any call costs (`floor/PLUGIN` groups): a guest that answers with its input unchanged
/// (`tests/guests/echo`), natively and through the host with a warm instance, on the messages
/// of a plugin's vectors. The difference is the boundary: the input lowered into the guest, the
/// guest's bindings, the output (as large as the input) lifted back, the instance's bookkeeping.
fn bench_floor(c: &mut Criterion, engine: &PluginEngine, plugin: &str) {
    let group_name = format!("floor/{plugin}");
    if !selected(&group_name) {
        return;
    }
    let v = vectors(plugin);
    let throughput = Throughput::Elements(v.messages.len() as u64);
    bench_cases::<guest_echo::Echo>(c, engine, "guest-echo", &group_name, v, throughput, &[]);
}

/// A parser on the largest file of its real-world corpus (`corpus/PLUGIN` groups, throughput
/// in bytes), natively and through the host with a warm instance.
fn bench_largest_corpus_file<P: Plugin>(c: &mut Criterion, engine: &PluginEngine, name: &str) {
    if !selected(&format!("corpus/{name}")) {
        return;
    }
    let v = largest_corpus_file(name);
    let throughput = Throughput::Bytes(v.messages[0].body.len() as u64);
    eprintln!(
        "corpus/{name}: {} ({} bytes)",
        v.messages[0].id,
        v.messages[0].body.len()
    );
    bench_cases::<P>(
        c,
        engine,
        name,
        &format!("corpus/{name}"),
        v,
        throughput,
        &[],
    );
}

/// One plugin (and its twins) on a set of cases, natively and with a reused instance.
fn bench_cases<P: Plugin>(
    c: &mut Criterion,
    engine: &PluginEngine,
    name: &str,
    group_name: &str,
    v: Vectors,
    throughput: Throughput,
    twins: &[&str],
) {
    if !selected(group_name) {
        return;
    }
    let double = || {
        let mut double =
            TestHost::new().with_settings(serde_json::Value::Object(v.settings.clone()));
        for (table, rows) in v.tables.iter() {
            double = double.with_table(table, rows.clone());
        }
        double
    };
    let host = NativeHost {
        double: double(),
        state: std::sync::Arc::new(millrace_host::state::StateStore::in_memory()),
    };
    let double = double();
    let plugin = P::new(&host).expect("settings load natively");
    let native_inputs: Vec<_> = v.messages.iter().map(to_sdk).collect();
    for input in &native_inputs {
        assert!(
            plugin.mediate(&host, input.clone()).is_ok(),
            "{name}/{}: native run",
            input.id
        );
    }
    let measured = measured_engine();
    let load = |component: &str, engine: &PluginEngine| {
        let artifact = Artifact::load(engine, &component_path(component)).expect("component loads");
        let spec = StepSpec {
            plant: millrace_host::conformance::PLANT,
            route: millrace_host::conformance::ROUTE,
            grants: millrace_host::plugin::capability::Capability::ALL.to_vec(),
            settings: millrace_host::plugin::store::Settings::new(v.settings.clone()),
            tables: v.tables.clone(),
            state: std::sync::Arc::new(millrace_host::state::StateStore::in_memory()),
            limits: StepLimits {
                deadline: Duration::from_secs(1),
                memory_bytes: 256 << 20,
                instance_reuse: u32::MAX,
                ..StepLimits::default()
            },
            quarantines: std::sync::Arc::new(millrace_host::quarantine::Quarantines::disabled()),
        };
        let step = StepRuntime::load(engine, &artifact, spec).expect("step loads");
        for m in &v.messages {
            assert!(step.mediate(m).is_ok(), "{component}/{}: wasm run", m.id);
        }
        step
    };
    let step = load(name, engine);
    let twin_steps: Vec<_> = variant(name)
        .into_iter()
        .chain(twins.iter().flat_map(|twin| {
            // A twin's variant is measured when one was built (its language's toolchain may
            // have no such lever).
            let built = variant_build(twin)
                .filter(|(_, path)| path.exists())
                .map(|(name, _)| name);
            std::iter::once(twin.to_string()).chain(built)
        }))
        .map(|twin| {
            let step = load(&twin, engine);
            (twin, step)
        })
        .chain(
            measured
                .iter()
                .map(|(codegen, on)| (format!("engine-{codegen}"), load(name, on))),
        )
        .collect();
    if let Some(rounds) = interleave() {
        let mut cases: Vec<(String, Timed<'_>)> = vec![
            ("native".into(), native_each(&plugin, &host, &native_inputs)),
            ("wasm-reused-instance".into(), each(&step, &v.messages)),
            (
                // The SDK's double alone (state in a map, no SQLite): how the native side was
                // measured before 2026-12-04; differs from `native` only for plugins using state.
                "native-state-in-a-map".into(),
                native_each(&plugin, &double, &native_inputs),
            ),
        ];
        for (twin, twin_step) in &twin_steps {
            cases.push((
                format!("{twin}-reused-instance"),
                each(twin_step, &v.messages),
            ));
        }
        interleaved(group_name, rounds, cases);
        return;
    }
    let mut group = c.benchmark_group(group_name);
    group.throughput(throughput);
    group.bench_function("native", |b| {
        b.iter_batched(
            || native_inputs.clone(),
            |inputs| {
                for input in inputs {
                    black_box(plugin.mediate(&host, input).ok());
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("wasm-reused-instance", |b| {
        b.iter(|| {
            for m in &v.messages {
                black_box(step.mediate(black_box(m)).ok());
            }
        })
    });
    for (twin, twin_step) in &twin_steps {
        group.bench_function(format!("{twin}-reused-instance"), |b| {
            b.iter(|| {
                for m in &v.messages {
                    black_box(twin_step.mediate(black_box(m)).ok());
                }
            })
        });
    }
    group.finish();
}

fn bench_vectors(c: &mut Criterion) {
    let engine = PluginEngine::new(None).expect("engine");
    bench_plugin::<MesFixedWidth>(c, &engine, "mes-fixed-width");
    bench_plugin::<csv_records::CsvRecords>(c, &engine, "csv-records");
    bench_plugin_and_twins::<downtime_router::DowntimeRouter>(
        c,
        &engine,
        "downtime-router",
        &["downtime-router-c"],
    );
    bench_plugin::<x12_856::X12Asn>(c, &engine, "x12-856");
    bench_plugin_and_twins::<canonical_map::CanonicalMap>(
        c,
        &engine,
        "canonical-map",
        &["canonical-map-py", "canonical-map-js"],
    );
    bench_plugin::<idoc_flat::IdocFlat>(c, &engine, "idoc-flat");
    // Cases 01 (hold), 04 (release), 05 (ASN of the released lot) run in that order, so every
    // iteration leaves the state as it found it.
    bench_plugin::<policy_guard::PolicyGuard>(c, &engine, "policy-guard");
    // The floor on the two plugins whose messages are smallest (their ratios are the highest).
    bench_floor(c, &engine, "mes-fixed-width");
    bench_floor(c, &engine, "downtime-router");
    bench_largest_corpus_file::<x12_856::X12Asn>(c, &engine, "x12-856");
    bench_largest_corpus_file::<csv_records::CsvRecords>(c, &engine, "csv-records");
    bench_largest_corpus_file::<idoc_flat::IdocFlat>(c, &engine, "idoc-flat");
}

criterion_group!(benches, bench, bench_vectors);
criterion_main!(benches);
