//! `millrace trace ID`: a message's path from the lineage store, then its outputs' paths.

use crate::config::Config;
use crate::lineage::store::{Hop, LineageStore, MessagePath};
use std::path::Path;

/// How deep `trace` follows outputs taken in again.
const MAX_DEPTH: usize = 8;

pub fn trace(config_path: &Path, id: &str, json: bool) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    let store = match LineageStore::open_read_only(&config.data_dir) {
        Ok(Some(store)) => store,
        Ok(None) => {
            eprintln!(
                "no lineage is kept in {} ([telemetry] lineage, or no message yet)",
                config.data_dir.display()
            );
            return 1;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut paths: Vec<(usize, MessagePath)> = Vec::new();
    let mut todo = vec![(0, id.to_string())];
    while let Some((depth, next)) = todo.pop() {
        if paths.iter().any(|(_, p)| p.id == next) {
            continue;
        }
        match store.path_of(&next, None) {
            Ok(Some(path)) => {
                if depth < MAX_DEPTH {
                    todo.extend(path.children.iter().rev().map(|c| (depth + 1, c.clone())));
                }
                paths.push((depth, path));
            }
            Ok(None) if depth == 0 => {
                eprintln!("no path of message {id:?} is kept");
                return 1;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    }
    if json {
        let all: Vec<_> = paths.into_iter().map(|(_, p)| p).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&all).expect("paths serialize")
        );
        return 0;
    }
    for (depth, path) in &paths {
        let indent = "  ".repeat(*depth);
        println!(
            "{indent}message {} — plant {}, route {}{}{}",
            path.id,
            path.plant,
            path.route,
            path.subject
                .as_ref()
                .map(|s| format!(", subject {s}"))
                .unwrap_or_default(),
            path.trace_id
                .as_ref()
                .map(|t| format!(", trace {t}"))
                .unwrap_or_default(),
        );
        for hop in &path.hops {
            println!("{indent}  {}", describe(hop));
            for step in hop
                .detail
                .get("steps")
                .and_then(|s| s.as_array())
                .into_iter()
                .flatten()
            {
                println!(
                    "{indent}      step {} {}@{} ({}) {} µs → {} [{} instance, {} KiB]",
                    step["step"],
                    step["plugin"].as_str().unwrap_or("?"),
                    step["version"].as_str().unwrap_or("?"),
                    super::check::short(step["digest"].as_str().unwrap_or("")),
                    step["duration_us"],
                    step["decision"].as_str().unwrap_or("?"),
                    step["instance"].as_str().unwrap_or("?"),
                    step["memory_bytes"].as_u64().unwrap_or(0) / 1024,
                );
            }
        }
    }
    0
}

/// One line of an event.
fn describe(hop: &Hop) -> String {
    let d = &hop.detail;
    let s = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let n = |k: &str| d.get(k).map(|v| v.to_string()).unwrap_or_default();
    let what = match s("event").as_str() {
        "mediated" => format!(
            "mediated (from {}): {} output(s)",
            s("source"),
            d.get("outputs")
                .and_then(|o| o.as_array())
                .map_or(0, Vec::len)
        ),
        "failed" => format!(
            "failed at step {} ({}): {}",
            n("step"),
            s("kind"),
            s("reason")
        ),
        "dead-lettered" => match d.get("dead_letter") {
            Some(id) => format!(
                "dead-lettered (local, id {id}, {}): {}",
                s("kind"),
                s("reason")
            ),
            None => format!(
                "dead-lettered ({}, {}): {}",
                s("store"),
                s("kind"),
                s("reason")
            ),
        },
        "retry" => format!("retry after attempt {}: {}", n("attempt"), s("reason")),
        "delivered" => format!("{} {} output(s) to {}", s("outcome"), n("count"), s("sink")),
        "not-delivered" => format!("not delivered to {}: {}", s("sink"), s("reason")),
        "replayed" => format!(
            "replayed by {}{}",
            s("by"),
            d.get("dead_letter")
                .map(|id| format!(" (dead letter {id})"))
                .unwrap_or_default()
        ),
        other => other.to_string(),
    };
    format!("{} {what}", hop.at)
}
