//! Deadline accuracy: how long past its deadline a call that would never finish is stopped,
//! with 1 to 16 such calls at once (the machine's cores, and more than it has). Measured on the
//! `act` test guest (`work N` spins), through the same `StepRuntime` the host uses; the floor in
//! the same run is a call that finishes at once. Overshoot = time the call took − deadline.
//!
//! Needs `scripts/build-plugins` first. Run: `cargo bench -p millrace-host --bench deadline`.

use millrace_host::plugin::bindings::types::Message;
use millrace_host::plugin::capability::Capability;
use millrace_host::plugin::engine::PluginEngine;
use millrace_host::plugin::{Artifact, StepFailure, StepLimits, StepRuntime, StepSpec};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_millis(500);

fn message(body: &str) -> Message {
    Message {
        id: "deadline-1".into(),
        plant: "plant-a".into(),
        route: "spin".into(),
        content_type: "text/plain".into(),
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let path = root.join("target/test-guests/guest-act.wasm");
    assert!(
        path.exists(),
        "build the guests first: scripts/build-plugins"
    );
    let engine = PluginEngine::new(None).expect("engine");
    let artifact = Artifact::load(&engine, &path).expect("component loads");
    let step = StepRuntime::load(
        &engine,
        &artifact,
        StepSpec {
            plant: "plant-a",
            route: "spin",
            grants: vec![Capability::Log, Capability::State],
            settings: Default::default(),
            tables: Default::default(),
            state: Arc::new(millrace_host::state::StateStore::in_memory()),
            limits: StepLimits {
                deadline: DEADLINE,
                ..StepLimits::default()
            },
            quarantines: Arc::new(millrace_host::quarantine::Quarantines::disabled()),
        },
    )
    .expect("step loads");

    // The floor: a call that finishes at once, on a warm instance.
    let quick = message("count");
    step.mediate(&quick).expect("count runs");
    let mut floor: Vec<f64> = (0..200)
        .map(|_| {
            let t = Instant::now();
            step.mediate(&quick).expect("count runs");
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    floor.sort_by(f64::total_cmp);
    println!(
        "floor (a call that returns at once): p50 {:.3} ms, max {:.3} ms",
        percentile(&floor, 0.5),
        floor[floor.len() - 1]
    );

    let spin = message("work 1000000000000000");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "deadline {} ms, {cores} cores\n{:>11} {:>6} {:>12} {:>12} {:>12} {:>9}",
        DEADLINE.as_millis(),
        "concurrent",
        "calls",
        "p50 over ms",
        "p95 over ms",
        "max over ms",
        "max over %"
    );
    for concurrent in [1usize, 2, 4, 8, 16] {
        let per_thread = (24 / concurrent).max(2);
        let overshoots: Vec<f64> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..concurrent)
                .map(|_| {
                    scope.spawn(|| {
                        (0..per_thread)
                            .map(|_| {
                                let t = Instant::now();
                                let outcome = step.mediate(&spin);
                                let took = t.elapsed();
                                assert!(
                                    matches!(outcome, Err(StepFailure::Deadline(_))),
                                    "the spinning call was not stopped at its deadline: {outcome:?}"
                                );
                                (took.as_secs_f64() - DEADLINE.as_secs_f64()) * 1000.0
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        let mut sorted = overshoots;
        sorted.sort_by(f64::total_cmp);
        let max = sorted[sorted.len() - 1];
        println!(
            "{concurrent:>11} {:>6} {:>12.2} {:>12.2} {:>12.2} {:>8.1}%",
            sorted.len(),
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.95),
            max,
            max / DEADLINE.as_secs_f64() / 10.0
        );
    }
}
