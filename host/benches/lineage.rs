//! What keeping lineage costs its writer thread per message, by the shape of the message ids.
//!
//! Each message is the two notes the AMQP route makes of one input (`mediated` with one step
//! and the subject of the route's event, then `delivered`), written by
//! `LineageStore::write` in batches of `BATCH_NOTES` notes (by default the writer's bound,
//! `lineage::BATCH`; under load the writer writes once half of that waits), into a new file per
//! round. The time is the writing thread's CPU time (its share of the
//! kernel's file work included); building the notes, the hot path's part, is left out. Message
//! ids: `sequential` (`m-1`, `m-2`, …, the AMQP benchmark's), `uuid-v7` (what the host gives a
//! message that came without one: time-ordered), `random` (32 random hex digits, as a sender's
//! UUIDv4), each without and with a trace id (random, as W3C trace ids are).
//!
//! Run: `cargo bench -p millrace-host --bench lineage`. Environment: `N` (messages per round,
//! default 200000), `ROUNDS` (default 3), `BATCH_NOTES` (notes per write).

#[allow(dead_code)] // the broker benchmarks' helpers this one does not use
mod common;

use millrace_host::lineage::store::LineageStore;
use millrace_host::lineage::{BATCH, Event, Note, StepHop};
use millrace_host::pipeline::workers::thread_cpu;

fn main() {
    let n = common::setting("N", 200_000);
    let rounds = common::setting("ROUNDS", 3);
    let batch = common::setting("BATCH_NOTES", BATCH);
    let body = common::route_output();
    println!("{n} messages per round, batches of {batch} notes, median of {rounds} rounds:");
    for shape in [Ids::Sequential, Ids::UuidV7, Ids::Random] {
        for traced in [false, true] {
            let mut cpu = Vec::new();
            let mut bytes = Vec::new();
            for _ in 0..rounds {
                let (us, size) = round(n, batch, shape, traced, &body);
                cpu.push(us);
                bytes.push(size);
            }
            println!(
                "  ids {:<10} {:<13} {:6.2} µs of CPU per message (rounds {}), file {:.0} bytes per message",
                shape.name(),
                if traced {
                    "with traces"
                } else {
                    "without trace"
                },
                common::median(cpu.clone()),
                cpu.iter()
                    .map(|c| format!("{c:.2}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                common::median(bytes),
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Ids {
    Sequential,
    UuidV7,
    Random,
}

impl Ids {
    fn name(self) -> &'static str {
        match self {
            Ids::Sequential => "sequential",
            Ids::UuidV7 => "uuid-v7",
            Ids::Random => "random",
        }
    }

    fn id(self, i: usize) -> String {
        match self {
            Ids::Sequential => format!("m-{i}"),
            Ids::UuidV7 => millrace_host::ids::message_id(),
            Ids::Random => hex::encode(millrace_host::ids::random_bytes()),
        }
    }
}

/// One round: µs of the writing thread's CPU per message, and the file's bytes per message.
fn round(n: usize, batch: usize, ids: Ids, traced: bool, body: &[u8]) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = LineageStore::open(dir.path()).expect("the lineage file opens");
    let started_ms = millrace_host::lineage::now_ms();
    let mut spent = std::time::Duration::ZERO;
    let mut notes: Vec<Box<Note>> = Vec::with_capacity(batch);
    // Read on the hot path (`pipeline::chain`), so out of the time here.
    let subject = millrace_host::lineage::subject_of(body);
    for i in 0..n {
        let message_id = ids.id(i);
        let trace_id = traced.then(millrace_host::ids::random_bytes);
        let at_ms = started_ms + (i / 20) as i64;
        let note = |event, subject: Option<String>| {
            Box::new(Note {
                message_id: message_id.clone(),
                plant: "plant-a".into(),
                route: "mes-in".into(),
                trace_id,
                at_ms,
                event,
                subject,
            })
        };
        notes.push(note(mediated(i), subject.clone()));
        notes.push(note(
            Event::Delivered {
                sink: "amqp",
                outcome: "delivered",
                count: 1,
            },
            None,
        ));
        if notes.len() >= batch || i + 1 == n {
            let before = thread_cpu();
            store.write(&notes).expect("the batch is written");
            notes.clear();
            spent += thread_cpu() - before;
        }
    }
    let size: u64 = std::fs::read_dir(dir.path())
        .expect("the directory lists")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    (spent.as_secs_f64() * 1e6 / n as f64, size as f64 / n as f64)
}

fn mediated(i: usize) -> Event {
    Event::Mediated {
        source: "amqp",
        steps: vec![StepHop {
            step: 1,
            plugin: "mes-fixed-width".into(),
            version: "1.0.0".into(),
            digest: format!("sha256:{}", "0123456789abcdef".repeat(4)),
            duration_us: 12,
            decision: "outputs",
            outputs: 1,
            instance: "reused",
            memory_bytes: 1 << 17,
        }],
        outputs: vec![format!("WC-1042-{i:06}-1")],
        more_outputs: 0,
    }
}
