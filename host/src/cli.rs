//! The `millrace` commands other than `run`: `check`, `plugin inspect`, `plugin test`,
//! `dlq list`. Each returns the process exit code; output goes to stdout, errors to stderr.

use crate::config::Config;
use crate::conformance;
use crate::deadletter::DeadLetterStore;
use crate::lookup::{self, Tables};
use crate::plugin::capability::Capability;
use crate::plugin::engine::PluginEngine;
use crate::plugin::store::Settings;
use crate::plugin::{
    self, Artifact, StepFailure, StepLimits, StepRuntime, StepSpec, bindings::types::Message,
};
use crate::route::Routes;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `millrace check`: validate the configuration and load every plugin it names.
pub fn check(config_path: &Path) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    let engine = match PluginEngine::new(Some(&config.data_dir.join("compile-cache"))) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    // Loading checks settings only; the plants' state is neither read nor written.
    let state = Arc::new(crate::state::StateStore::in_memory());
    match Routes::build(
        &config,
        &engine,
        &state,
        &Arc::new(crate::quarantine::Quarantines::disabled()),
    ) {
        Ok(routes) => {
            let mut names = routes.all();
            names.sort_by(|a, b| a.name.cmp(&b.name));
            for route in names {
                let chain: Vec<String> = route
                    .steps
                    .iter()
                    .map(|s| format!("{}@{} ({})", s.id.name, s.id.version, short(&s.id.digest)))
                    .collect();
                println!(
                    "route {} (plant {}): {}",
                    route.name,
                    route.plant,
                    chain.join(" -> ")
                );
            }
            if let Some((hits, misses)) = engine.cache_stats() {
                println!("compile cache: {hits} hit(s), {misses} miss(es)");
            }
            println!("ok: {}", config.path.display());
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            1
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// `millrace plugin inspect FILE.wasm`.
pub fn inspect(file: &Path) -> i32 {
    let engine = match PluginEngine::new(None) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let artifact = match Artifact::load(&engine, file) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    println!("file:    {}", artifact.path.display());
    println!("size:    {} bytes", artifact.size);
    println!("digest:  {}", artifact.digest);
    let described = plugin::describe(&engine, &artifact);
    match &described {
        Ok(_) => println!(
            "world:   {}/plugin@{} (conforms)",
            plugin::capability::PACKAGE,
            plugin::capability::VERSION
        ),
        Err(e) => println!("world:   does not conform: {e}"),
    }
    if let Ok(info) = &described {
        println!("plugin:  {} {}", info.name, info.version);
        println!("accepts: {}", info.accepts.join(", "));
        println!("emits:   {}", info.emits.join(", "));
    }
    println!("imports (capabilities it asks for; its step must grant each):");
    for import in &artifact.imports {
        match Capability::of_import(import) {
            Ok(Some(cap)) => println!("  {import:<40} grant \"{cap}\""),
            Ok(None) => println!("  {import:<40} types only, always provided"),
            Err(e) => println!("  {import:<40} NOT PROVIDED: {e}"),
        }
    }
    println!("exports:");
    for export in &artifact.exports {
        println!("  {export}");
    }
    if described.is_ok() { 0 } else { 1 }
}

/// Options of `millrace plugin test`.
pub struct TestRun {
    pub file: PathBuf,
    pub input: PathBuf,
    pub content_type: Option<String>,
    pub settings_file: Option<PathBuf>,
    pub set: Vec<String>,
    pub lookups: Vec<String>,
    pub deadline_ms: u64,
    pub memory_mib: u32,
}

/// `millrace plugin test`: one message through one plugin, every capability granted.
/// Exit 0 with the outputs, 1 on rejection or any other failure.
pub fn test(run: TestRun) -> i32 {
    match test_inner(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn test_inner(run: TestRun) -> Result<i32, String> {
    let mut settings = match &run.settings_file {
        Some(path) => conformance::read_settings(path)?
            .ok_or_else(|| format!("settings file {} does not exist", path.display()))?,
        None => serde_json::Map::new(),
    };
    for pair in &run.set {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--set {pair:?}: expected KEY=VALUE"))?;
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        settings.insert(key.to_string(), value);
    }
    let mut tables = HashMap::new();
    for pair in &run.lookups {
        let (name, file) = pair
            .split_once('=')
            .ok_or_else(|| format!("--lookup {pair:?}: expected TABLE=FILE.csv"))?;
        tables.insert(
            name.to_string(),
            lookup::read_csv(Path::new(file), None, None)?,
        );
    }
    let body = std::fs::read(&run.input)
        .map_err(|e| format!("cannot read input {}: {e}", run.input.display()))?;

    let engine = PluginEngine::new(None).map_err(|e| format!("{e:#}"))?;
    let artifact = Artifact::load(&engine, &run.file).map_err(|e| e.to_string())?;
    let limits = StepLimits {
        deadline: Duration::from_millis(run.deadline_ms),
        memory_bytes: run.memory_mib as usize * 1024 * 1024,
        instance_reuse: 1,
        ..StepLimits::default()
    };
    let spec = StepSpec {
        plant: "local",
        route: "local",
        grants: Capability::ALL.to_vec(),
        settings: Settings::new(settings),
        tables: Tables::new(tables),
        state: Arc::new(crate::state::StateStore::in_memory()),
        limits,
        quarantines: Arc::new(crate::quarantine::Quarantines::disabled()),
    };
    let step = StepRuntime::load(&engine, &artifact, spec).map_err(|e| e.to_string())?;
    let by_extension = crate::conformance::content_type_of(&run.input);
    let content_type = run
        .content_type
        .or_else(|| (by_extension != "application/octet-stream").then(|| by_extension.into()))
        .or_else(|| step.info.accepts.first().cloned())
        .unwrap_or_else(|| "application/octet-stream".into());
    let input = Message {
        id: "test-1".into(),
        plant: "local".into(),
        route: "local".into(),
        content_type,
        headers: Vec::new(),
        body,
    };
    match step.mediate(&input) {
        Ok(outputs) if outputs.is_empty() => {
            println!(
                "filtered: {}@{} produced no output",
                step.id.name, step.id.version
            );
            Ok(0)
        }
        Ok(outputs) => {
            for (i, out) in outputs.iter().enumerate() {
                println!(
                    "--- output {} of {}: id {} ({})",
                    i + 1,
                    outputs.len(),
                    out.id,
                    out.content_type
                );
                match serde_json::from_slice::<serde_json::Value>(&out.body) {
                    Ok(json) => println!(
                        "{}",
                        serde_json::to_string_pretty(&json).expect("a JSON value prints")
                    ),
                    Err(_) => println!("{}", String::from_utf8_lossy(&out.body)),
                }
            }
            Ok(0)
        }
        Err(failure) => {
            match failure {
                StepFailure::Rejected(r) => {
                    println!("rejected: {}", r.reason);
                    if let Some(field) = r.field {
                        println!("field:    {field}");
                    }
                    if let Some(position) = r.position {
                        println!("position: {position}");
                    }
                }
                StepFailure::RetryLater(r) => println!("retry later: {}", r.reason),
                StepFailure::Deadline(d) => {
                    println!("deadline: stopped after {} ms", d.as_millis())
                }
                StepFailure::MemoryCap(b) => println!("memory cap: stopped at {} MiB", b >> 20),
                StepFailure::Trap(t) => println!("trap: {t}"),
                StepFailure::Limit(breach) => println!("limit: {}", breach.reason()),
                StepFailure::Quarantined(why) => println!("quarantined: {why}"),
            }
            Ok(1)
        }
    }
}

/// `millrace plugin test FILE.wasm --vectors DIR [--bless]`: every case, one line each, then
/// `N passed, M failed`; exit 1 if any failed.
pub fn vectors(file: &Path, dir: &Path, bless: bool) -> i32 {
    let results = match conformance::run(file, dir, bless) {
        Ok(results) => results,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut failed = 0;
    for case in &results {
        match &case.failure {
            None if bless => println!("BLESSED {}", case.name),
            None => println!("PASS {}", case.name),
            Some(diff) => {
                failed += 1;
                println!(
                    "FAIL {}
     {diff}",
                    case.name
                );
            }
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    i32::from(failed > 0)
}

/// `millrace plugin bundle FILE.wasm --vectors DIR -o OUT.wasm`: the vectors are run against
/// the component first (a failing case is not bundled), then packed into it.
pub fn bundle(file: &Path, dir: &Path, output: &Path) -> i32 {
    let bundled = conformance::run(file, dir, false).and_then(|results| {
        let failed: Vec<&str> = results
            .iter()
            .filter(|c| c.failure.is_some())
            .map(|c| c.name.as_str())
            .collect();
        if !failed.is_empty() {
            return Err(format!(
                "{} of {} cases fail ({}); run `millrace plugin test {} --vectors {}` to see why",
                failed.len(),
                results.len(),
                failed.join(", "),
                file.display(),
                dir.display()
            ));
        }
        let bytes =
            std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let bundled = conformance::bundle(&bytes, dir)?;
        std::fs::write(output, &bundled)
            .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
        Ok((results.len(), bundled))
    });
    match bundled {
        Ok((cases, bytes)) => {
            println!(
                "{}: {} with {cases} case(s), digest {}",
                output.display(),
                file.display(),
                crate::plugin::digest(&bytes)
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

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

/// `millrace dlq replay`.
/// Where `dlq replay` sends the outputs of a route that takes HTTP.
enum Target {
    Webhook(crate::config::Webhook),
    Outbox(crate::outbox::Outbox),
}

/// A dry run's view of what the current chain makes of a dead letter.
fn show_outputs(label: &str, outputs: &[Message]) {
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

/// `dlq replay` of a route that consumes a queue: its dead letters wait in the broker's
/// dead-letter queue. A replay takes up to `limit` of them and sends each back to the source
/// queue (failure headers dropped, replay count raised), confirmed before the dead letter is
/// acknowledged; the running host mediates them with its current chain. A dry run runs the
/// current chain here, shows the outputs, and leaves every dead letter in its queue.
fn amqp_replay(
    config: &Config,
    route: &crate::route::Route,
    limit: u32,
    dry_run: bool,
) -> Result<i32, String> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let url = config.amqp.as_ref().ok_or_else(|| {
        format!(
            "route {} consumes a queue but host.amqp is not set",
            route.name
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let broker = |e: lapin::Error| format!("broker {}: {e}", crate::broker::redact(url));
    runtime.block_on(async {
        let connection = crate::broker::open(url, &config.amqp_tls, "millrace dlq replay")
            .await
            .map_err(|e| format!("broker {}: {e}", crate::broker::redact(url)))?;
        let publisher = crate::sink::amqp::AmqpPublisher::open(&connection)
            .await
            .map_err(broker)?;
        let channel = connection.create_channel().await.map_err(broker)?;
        let queue = route.amqp.dead_letter.as_str();
        let mut taken = Vec::new();
        while taken.len() < limit as usize {
            match channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(broker)?
            {
                Some(got) => taken.push(got.delivery),
                None => break,
            }
        }
        if taken.is_empty() {
            println!("no dead letters wait in {queue}");
            return Ok(0);
        }
        let (mut replayed, mut failed) = (0, 0);
        for delivery in &taken {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            let why = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| crate::sink::amqp::header_string(h, "x-millrace-reason"))
                .unwrap_or_default();
            let label = format!("dead letter {id:?} ({why})");
            if dry_run {
                let message = crate::ingress::amqp::message_of(
                    route,
                    &id,
                    &delivery.properties,
                    &delivery.data,
                );
                match crate::chain::run(route, &message) {
                    Ok(outputs) => show_outputs(&label, &outputs),
                    Err(failure) => {
                        failed += 1;
                        println!(
                            "{label}: still fails at step {} ({}@{}): {}",
                            failure.step,
                            failure.plugin.name,
                            failure.plugin.version,
                            failure.reason()
                        );
                    }
                }
                continue;
            }
            match publisher
                .reinject(route, &delivery.data, &delivery.properties)
                .await
            {
                Ok(n) => {
                    delivery
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(broker)?;
                    replayed += 1;
                    println!("{label}: sent back to {} (replay {n})", route.amqp.queue);
                }
                Err(e) => {
                    failed += 1;
                    println!("{label}: not sent back: {e}");
                }
            }
        }
        // Unacknowledged dead letters (a dry run's, failed ones) return to their queue.
        let _ = channel.close(200, "replay done".into()).await;
        let _ = connection.close(200, "replay done".into()).await;
        if dry_run {
            println!(
                "dry run: {} of {} would deliver; every dead letter stays in {queue}",
                taken.len() - failed,
                taken.len()
            );
            return Ok(0);
        }
        println!(
            "{replayed} replayed into {}, {failed} still waiting",
            route.amqp.queue
        );
        Ok(i32::from(failed > 0))
    })
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
    let engine = PluginEngine::new(Some(&config.data_dir.join("compile-cache")))
        .map_err(|e| format!("{e:#}"))?;
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
        return amqp_replay(&config, &route, limit, dry_run);
    }
    let target = match (&route.sink, &route.webhook) {
        _ if dry_run => None,
        (crate::config::Sink::Http, Some(webhook)) => Some(Target::Webhook(webhook.clone())),
        (crate::config::Sink::Amqp, _) => Some(Target::Outbox(
            crate::outbox::Outbox::open(&config.data_dir, config.outbox_max_messages)
                .map_err(|e| e.to_string())?,
        )),
        _ => {
            return Err(format!(
                "route {route_name} answers its HTTP caller (sink \"reply\"), so replayed outputs have nowhere to go; use --dry-run to see them"
            ));
        }
    };
    let store = DeadLetterStore::open(&config.data_dir).map_err(|e| e.to_string())?;
    let entries = store
        .pending(route_name, limit)
        .map_err(|e| e.to_string())?;
    if entries.is_empty() {
        println!("no dead letters of route {route_name} wait for a replay");
        return Ok(0);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let client = crate::sink::http::WebhookClient::default();
    let (mut delivered, mut failed) = (0, 0);
    for entry in &entries {
        let message = Message {
            id: entry.message_id.clone(),
            plant: entry.plant.clone(),
            route: entry.route.clone(),
            content_type: entry.content_type.clone(),
            headers: entry.headers.clone(),
            body: entry.body.clone(),
        };
        let outputs = match crate::chain::run(&route, &message) {
            Ok(outputs) => outputs,
            Err(failure) => {
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
                continue;
            }
        };
        let label = format!("dead letter {} (message {})", entry.id, entry.message_id);
        let sent = match &target {
            None => {
                show_outputs(&label, &outputs);
                continue;
            }
            Some(Target::Webhook(webhook)) => runtime
                .block_on(client.deliver(webhook, route.lineage(), &outputs))
                .map_err(|e| e.to_string()),
            Some(Target::Outbox(outbox)) => {
                let keyed: Vec<(String, Message)> = outputs
                    .iter()
                    .map(|o| {
                        let key = crate::sink::amqp::routing_key(&route.amqp.routing_key, o);
                        (key, o.clone())
                    })
                    .collect();
                outbox
                    .put(&route.amqp.exchange, route.lineage(), &keyed)
                    .map(|()| outputs.len())
                    .map_err(|e| e.to_string())
            }
        };
        match sent {
            Ok(n) => {
                store.mark_replayed(entry.id).map_err(|e| e.to_string())?;
                delivered += 1;
                match &target {
                    Some(Target::Outbox(_)) => println!(
                        "{label}: {n} output(s) handed to the outbox; the running host publishes them"
                    ),
                    _ => println!("{label}: delivered {n} output(s)"),
                }
            }
            Err(e) => {
                failed += 1;
                println!("{label}: not delivered: {e}");
            }
        }
    }
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

/// One admin API call; prints the JSON answer (or the problem) and returns 0 on 2xx.
pub fn admin_call(method: &str, url: &str, body: Option<Vec<u8>>) -> i32 {
    match admin_request(method, url, body.map(|b| (b, "application/json"))) {
        Ok((status, text)) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(text);
            if (200..300).contains(&status) {
                println!("{pretty}");
                0
            } else {
                eprintln!("error: the admin API answered {status}:\n{pretty}");
                1
            }
        }
        Err(e) => {
            eprintln!("error: {url}: {e}; is the host running with host.admin set?");
            1
        }
    }
}

/// The admin API's answer (status, body) to one request, with the token of
/// `MILLRACE_ADMIN_TOKEN` and the body typed as `content_type`.
fn admin_request(
    method: &str,
    url: &str,
    body: Option<(Vec<u8>, &str)>,
) -> Result<(u16, String), String> {
    let mut config = ureq::Agent::config_builder().http_status_as_error(false);
    // An admin API with its own CA (`[tls]` on the admin listener): trust that CA.
    if let Some(ca) = std::env::var_os(ADMIN_CA_ENV) {
        let shown = Path::new(&ca).display().to_string();
        let pem = std::fs::read(&ca).map_err(|e| format!("{ADMIN_CA_ENV}={shown}: {e}"))?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(format!(
                "{ADMIN_CA_ENV}={shown}: no certificate in it (PEM, BEGIN CERTIFICATE)"
            ));
        }
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    let agent: ureq::Agent = config.build().into();
    let token = std::env::var(ADMIN_TOKEN_ENV).unwrap_or_default();
    let authorization = format!("Bearer {token}");
    let response = match body {
        Some((bytes, content_type)) => agent
            .post(url)
            .header("authorization", &authorization)
            .header("content-type", content_type)
            .send(&bytes[..]),
        None if method == "GET" => agent
            .get(url)
            .header("authorization", &authorization)
            .call(),
        None => agent
            .post(url)
            .header("authorization", &authorization)
            .send_empty(),
    }
    .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response
        .into_body()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    if status == 401 && token.is_empty() {
        return Err(format!(
            "the admin API needs a token: set {ADMIN_TOKEN_ENV} (`millrace admin token` makes one)"
        ));
    }
    Ok((status, text))
}

/// The environment variable the admin commands take their bearer token from.
pub const ADMIN_TOKEN_ENV: &str = "MILLRACE_ADMIN_TOKEN";

/// The environment variable naming a PEM file of CA certificates the admin commands trust for
/// an `https://` admin API (default: the public web roots).
pub const ADMIN_CA_ENV: &str = "MILLRACE_ADMIN_CA";

/// `millrace admin token --name N --role R [--plant P ...]`: a new token, and the lines that
/// make the host accept it.
pub fn admin_token(name: &str, role: &str, plants: &[String]) -> i32 {
    if crate::admin::auth::Role::parse(role).is_none() {
        eprintln!("error: --role must be viewer or operator, not {role:?}");
        return 1;
    }
    let token = match crate::admin::auth::new_token() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: no random source for the token: {e}");
            return 1;
        }
    };
    let plants = if plants.is_empty() {
        vec!["*".to_string()]
    } else {
        plants.to_vec()
    };
    let list = plants
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "the token is shown once; give it to the caller ({ADMIN_TOKEN_ENV} for the millrace command) and keep only its hash:"
    );
    println!("{token}");
    eprintln!();
    eprintln!("add to the configuration (or the admin tokens file, as [[tokens]]):");
    println!(
        "\n[[admin.tokens]]\nname = {name:?}\nsha256 = \"{}\"\nrole = {role:?}\nplants = [{list}]",
        crate::admin::auth::token_hash(&token)
    );
    0
}

pub fn deploy(admin: &str, plant: &str, file: &Path, activate: bool) -> i32 {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return 1;
        }
    };
    let url = format!("{admin}/v1/plants/{plant}/plugins");
    let kept = match admin_request("POST", &url, Some((bytes, "application/wasm"))) {
        Ok((status, text)) if (200..300).contains(&status) => text,
        Ok((status, text)) => {
            eprintln!("error: refused ({status}): {text}");
            return 1;
        }
        Err(e) => {
            eprintln!("error: {url}: {e}; is the host running with host.admin set?");
            return 1;
        }
    };
    println!("{kept}");
    if !activate {
        return 0;
    }
    let version: serde_json::Value = serde_json::from_str(&kept).unwrap_or_default();
    let (Some(plugin), Some(v)) = (version["plugin"].as_str(), version["version"].as_str()) else {
        eprintln!("error: the admin API's answer names no plugin and version: {kept}");
        return 1;
    };
    admin_call(
        "POST",
        &format!("{admin}/v1/plants/{plant}/plugins/{plugin}/activate"),
        Some(serde_json::json!({ "version": v }).to_string().into_bytes()),
    )
}

/// `millrace plugin keygen --out BASE`: BASE.key (secret, mode 600) and BASE.pub.
pub fn keygen(base: &Path) -> i32 {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (secret_path, public_path) = crate::plugin::signature::key_files(base);
    let (secret, public) = match crate::plugin::signature::generate() {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: no random source for the key: {e}");
            return 1;
        }
    };
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_path)
        .and_then(|mut f| f.write_all(&secret))
        .and_then(|()| std::fs::write(&public_path, &public));
    match written {
        Ok(()) => {
            println!(
                "secret key: {} (keep it; mode 600)\npublic key: {} (name it in [plants.P.trust] keys)",
                secret_path.display(),
                public_path.display()
            );
            0
        }
        Err(e) => {
            eprintln!(
                "error: cannot write {}: {e} (an existing key is never overwritten)",
                secret_path.display()
            );
            1
        }
    }
}

/// `millrace plugin sign FILE --key SECRET -o OUT`.
pub fn sign(file: &Path, key: &Path, output: &Path) -> i32 {
    let signed = std::fs::read(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|bytes| {
            let key = crate::plugin::signature::read_secret_key(key)?;
            crate::plugin::signature::sign(&bytes, &key).map_err(|e| e.to_string())
        })
        .and_then(|signed| {
            std::fs::write(output, &signed)
                .map_err(|e| format!("cannot write {}: {e}", output.display()))
        });
    match signed {
        Ok(()) => {
            println!("signed: {}", output.display());
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `millrace plugin verify FILE --key PUBLIC ... [--min-signatures N]`.
pub fn verify(file: &Path, keys: &[PathBuf], min_signatures: usize) -> i32 {
    let checked = (|| {
        let bytes =
            std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let mut public = Vec::new();
        for key in keys {
            public.push(crate::plugin::signature::read_public_key(key)?);
        }
        let signers =
            crate::plugin::signature::signers(&bytes, &public).map_err(|e| e.to_string())?;
        Ok::<_, String>(
            keys.iter()
                .zip(&public)
                .filter(|(_, k)| signers.contains(k))
                .map(|(path, _)| path.display().to_string())
                .collect::<Vec<_>>(),
        )
    })();
    match checked {
        Ok(signed_by) if signed_by.len() >= min_signatures.max(1) => {
            println!("valid: signed by {}", signed_by.join(", "));
            0
        }
        Ok(signed_by) => {
            eprintln!(
                "error: signed by {} of the given keys ({}), {} needed",
                signed_by.len(),
                signed_by.join(", "),
                min_signatures.max(1)
            );
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
