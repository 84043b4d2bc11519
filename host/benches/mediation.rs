//! Per-message cost of `mes-fixed-width`: called natively in-process (the same plugin crate
//! against the SDK's host double) vs through the host (the built component, with a warm reused
//! instance and with a fresh instance per message). Same input, same settings, same run.
//!
//! Needs `scripts/build-plugins` first. Run: `scripts/bench` (prints the ratios).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mes_fixed_width::MesFixedWidth;
use millrace_host::config::Config;
use millrace_host::plugin::bindings::types::Message;
use millrace_host::plugin::engine::PluginEngine;
use millrace_host::plugin::{Artifact, StepLimits, StepRuntime, StepSpec};
use millrace_sdk::{Plugin, TestHost};
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

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
    let load = |instance_reuse| {
        let spec = StepSpec {
            plant: &route.plant,
            route: &route.name,
            grants: step.grants.clone(),
            settings: step.settings.clone(),
            tables: tables.clone(),
            limits: StepLimits {
                deadline: Duration::from_secs(1),
                memory_bytes: 64 << 20,
                instance_reuse,
            },
        };
        StepRuntime::load(&engine, &artifact, spec).expect("step loads")
    };
    let reused = load(u32::MAX);
    let fresh = load(1);
    assert_eq!(reused.mediate(&message).expect("wasm run").len(), 12);

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
    group.bench_function("wasm-fresh-instance", |b| {
        b.iter(|| black_box(fresh.mediate(black_box(&message))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
