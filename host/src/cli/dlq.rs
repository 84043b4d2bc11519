//! `millrace dlq list | replay`: the dead letters of a route, and running them again through
//! the route's current chain (the pipeline's own calls) to its sink.

use super::check::short;
use crate::config::Config;
use crate::deadletter::DeadLetterStore;
use crate::plugin::bindings::types::Message;
use crate::plugin::engine::PluginEngine;
use crate::route::Routes;
use std::path::Path;
use std::sync::Arc;

/// `millrace dlq list`.
pub fn dlq_list(config_path: &Path, route: Option<&str>, json: bool) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    let store = match DeadLetterStore::open_read_only(&config.data_dir) {
        Ok(Some(store)) => store,
        Ok(None) => {
            if json {
                println!("[]");
            } else {
                println!(
                    "no dead letters (no store at {} yet)",
                    config.data_dir.display()
                );
            }
            return 0;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let entries = match store.list(route) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).expect("dead letters serialize")
        );
        return 0;
    }
    if entries.is_empty() {
        println!("no dead letters");
        return 0;
    }
    println!(
        "{:<5} {:<24} {:<20} {:<4} {:<30} {:<10} REASON",
        "ID", "RECORDED", "ROUTE", "STEP", "PLUGIN@VERSION (DIGEST)", "KIND"
    );
    for e in &entries {
        let plugin = format!(
            "{}@{} ({})",
            e.plugin.name,
            e.plugin.version,
            short(&e.plugin.digest)
        );
        println!(
            "{:<5} {:<24} {:<20} {:<4} {:<30} {:<10} {}",
            e.id,
            e.at,
            e.route,
            e.step,
            plugin,
            e.kind.as_str(),
            e.reason
        );
    }
    println!(
        "{} dead letter(s) in {}",
        entries.len(),
        store.path().display()
    );
    0
}

/// A dry run's view of what the current chain makes of a dead letter.
pub(super) fn show_outputs(label: &str, outputs: &[Message]) {
    println!("{label}: would deliver {} output(s)", outputs.len());
    for output in outputs {
        println!(
            "--- {} ({})\n{}",
            output.id,
            output.content_type,
            String::from_utf8_lossy(&output.body)
        );
    }
}

pub fn dlq_replay(config_path: &Path, route_name: &str, limit: u32, dry_run: bool) -> i32 {
    match replay_inner(config_path, route_name, limit, dry_run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn replay_inner(
    config_path: &Path,
    route_name: &str,
    limit: u32,
    dry_run: bool,
) -> Result<i32, String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    // A replay is part of each message's path; a dry run leaves no trace of itself.
    if !dry_run {
        crate::lineage::start(&config.data_dir, config.telemetry.lineage)?;
    }
    let engine = PluginEngine::new(Some(&config.compile_cache)).map_err(|e| format!("{e:#}"))?;
    // A dry run must not change the plants' state: its stateful steps see an empty state.
    let state = if dry_run {
        Arc::new(crate::state::StateStore::in_memory())
    } else {
        Arc::new(crate::state::StateStore::open(&config.data_dir).map_err(|e| e.to_string())?)
    };
    let routes = Routes::build(
        &config,
        &engine,
        &state,
        &Arc::new(crate::quarantine::Quarantines::disabled()),
    )
    .map_err(|e| e.to_string())?;
    let route = routes
        .get(route_name)
        .ok_or_else(|| format!("no route {route_name:?} in {}", config.path.display()))?;
    if route.source == crate::config::Source::Amqp {
        let replayed = crate::amqp::replay::replay(&config, &route, limit, dry_run, &show_outputs);
        crate::lineage::flush(std::time::Duration::from_secs(5));
        return replayed;
    }
    if route.sink == crate::config::Sink::Reply && !dry_run {
        return Err(format!(
            "route {route_name} answers its HTTP caller (sink \"reply\"), so replayed outputs have nowhere to go; use --dry-run to see them"
        ));
    }
    let store = Arc::new(DeadLetterStore::open(&config.data_dir).map_err(|e| e.to_string())?);
    let entries = store
        .pending(route_name, limit)
        .map_err(|e| e.to_string())?;
    if entries.is_empty() {
        println!("no dead letters of route {route_name} wait for a replay");
        return Ok(0);
    }
    // Outputs for a broker go to its outbox, which the running host drains.
    let outbox = |sink, file| -> Result<_, String> {
        if route.sink != sink || dry_run {
            return Ok(None);
        }
        crate::outbox::Outbox::open(&config.data_dir, file, config.outbox_max_messages)
            .map(|o| Some(Arc::new(o)))
            .map_err(|e| e.to_string())
    };
    let (amqp_outbox, mqtt_outbox) = (
        outbox(crate::config::Sink::Amqp, crate::amqp::outbox::FILE)?,
        outbox(crate::config::Sink::Mqtt, crate::mqtt::OUTBOX_FILE)?,
    );
    // The same pipeline as the running host's, with one mediation thread; a failure is shown,
    // not recorded again (the dead letter stays).
    let pipeline = crate::pipeline::Pipeline::new(
        Arc::new(routes),
        crate::admission::Admission::new(&config),
        1,
        Arc::clone(&store),
        {
            let mut sinks = crate::pipeline::sinks::Sinks::default();
            sinks.register(
                crate::config::Sink::Http,
                Arc::new(crate::http::webhook::WebhookClient::default()),
            );
            sinks.register(
                crate::config::Sink::Amqp,
                Arc::new(crate::amqp::AmqpSink {
                    link: None,
                    outbox: amqp_outbox,
                }),
            );
            sinks.register(
                crate::config::Sink::Mqtt,
                Arc::new(crate::mqtt::MqttSink {
                    link: None,
                    outbox: mqtt_outbox,
                }),
            );
            sinks
        },
        None,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let (mut delivered, mut failed) = (0, 0);
    for entry in &entries {
        let message = entry.message();
        let label = format!("dead letter {} (message {})", entry.id, entry.message_id);
        // A replay is a span of the trace the message came with (when traces are exported).
        let mut span = crate::pipeline::source_span(
            &route,
            &message,
            format!("replay {}", route.name),
            crate::telemetry::trace::Kind::Internal,
        );
        if let Some(span) = &mut span {
            span.set("millrace.dead_letter.id", entry.id);
            span.set("millrace.dry_run", dry_run);
        }
        let end = crate::telemetry::trace::end;
        // (A dry run keeps no lineage: it was not started.)
        crate::lineage::record(
            &route,
            &entry.message_id,
            span.as_ref().map(|s| s.context.trace_id),
            || crate::lineage::Event::Replayed {
                dead_letter: Some(entry.id),
                by: "millrace dlq replay".into(),
            },
        );
        let ask = crate::pipeline::Ask {
            when_busy: crate::pipeline::WhenBusy::Wait,
            on_failure: crate::pipeline::OnFailure::Caller,
            settled: None,
            trace: span.as_ref().map(|s| s.context.clone()),
        };
        let outputs = match runtime.block_on(pipeline.mediate(&route, message, ask)) {
            Ok(outputs) => outputs,
            Err(crate::pipeline::Mediated::Failed { failure, .. }) => {
                failed += 1;
                println!(
                    "dead letter {} (message {}): still fails at step {} ({}@{}): {}",
                    entry.id,
                    entry.message_id,
                    failure.step,
                    failure.plugin.name,
                    failure.plugin.version,
                    failure.reason()
                );
                end(span, Some(failure.reason()));
                continue;
            }
            Err(other) => return Err(format!("{label}: not mediated: {other:?}")),
        };
        if dry_run {
            show_outputs(&label, &outputs);
            end(span, None);
            continue;
        }
        let sent = runtime.block_on(pipeline.sinks.deliver(
            &route,
            &entry.message_id,
            outputs,
            crate::pipeline::sinks::Via::Held,
        ));
        match sent {
            Ok(done) => {
                end(span, None);
                store.mark_replayed(entry.id).map_err(|e| e.to_string())?;
                delivered += 1;
                match done {
                    crate::pipeline::sinks::Delivered::Held { accepted, .. } => println!(
                        "{label}: {accepted} output(s) handed to the outbox; the running host publishes them"
                    ),
                    crate::pipeline::sinks::Delivered::Webhook(n)
                    | crate::pipeline::sinks::Delivered::Published(n) => {
                        println!("{label}: delivered {n} output(s)")
                    }
                    crate::pipeline::sinks::Delivered::Reply(o) => {
                        println!("{label}: delivered {} output(s)", o.len())
                    }
                }
            }
            Err(e) => {
                failed += 1;
                println!("{label}: not delivered: {e}");
                end(span, Some(e.to_string()));
            }
        }
    }
    crate::telemetry::trace::tracer().flush(std::time::Duration::from_secs(5));
    crate::lineage::flush(std::time::Duration::from_secs(5));
    if dry_run {
        println!(
            "dry run: {} of {} would deliver; nothing was delivered or marked",
            entries.len() - failed,
            entries.len()
        );
        return Ok(0);
    }
    println!("{delivered} replayed, {failed} still waiting");
    Ok(i32::from(failed > 0))
}
