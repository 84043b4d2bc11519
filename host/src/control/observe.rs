//! What the admin API shows of messages (for operators and the console): each route's recent
//! history, a message's lineage and the search over it, the local dead letters with a replay.
//!
//! | method | path | role | what |
//! |---|---|---|---|
//! | GET | `/v1/overview` | viewer | per route of its plants: steps (plugin, version, digest), domain, totals and the last hour's intervals |
//! | GET | `/v1/messages?plant=&route=&subject=&after=&before=&limit=` | viewer | messages whose path is kept, the latest first |
//! | GET | `/v1/messages/{id}` | viewer | a message's path: each event, its outputs taken in again, the rest of its trace |
//! | GET | `/v1/dead-letters?plant=&route=&domain=&waiting=&limit=` | viewer | local dead letters, the newest first, with the route's domain |
//! | POST | `/v1/dead-letters/{id}/replay` | operator | `{"dry_run": true}`: what the current chain makes of it (nothing delivered, no state changed); `{"dry_run": false}`: run it again and deliver (once) |

use super::Control;
use super::auth::{Identity, Role};
use crate::http::problem::Problem;
use crate::lineage::store::{LineageStore, Search};
use crate::pipeline::sinks::{Delivered, Via};
use crate::pipeline::{Ask, Mediated, OnFailure, WhenBusy};
use crate::plugin::bindings::types::Message;
use hyper::StatusCode;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// `GET /v1/overview`.
pub fn overview(control: &Control, who: &Identity) -> serde_json::Value {
    let mut routes = control.deployer.routes().all();
    routes.sort_by(|a, b| (&a.plant, &a.name).cmp(&(&b.plant, &b.name)));
    let routes: Vec<_> = routes
        .iter()
        .filter(|r| who.covers(&r.plant))
        .map(|route| {
            let history = crate::telemetry::series::series().history(route);
            let steps: Vec<_> = route
                .steps
                .iter()
                .map(|s| serde_json::json!({ "plugin": s.id.name, "version": s.id.version, "digest": s.id.digest }))
                .collect();
            serde_json::json!({
                "plant": route.plant,
                "route": route.name,
                "source": route.source.as_str(),
                "sink": route.sink.as_str(),
                "domain": route.meters.domain,
                "steps": steps,
                "received": history.received,
                "runs": history.runs,
                "failed": history.failed,
                "points": history.points,
            })
        })
        .collect();
    serde_json::json!({
        "interval_s": crate::telemetry::series::INTERVAL.as_secs(),
        "routes": routes,
    })
}

fn lineage_store(control: &Control) -> Result<Option<LineageStore>, Problem> {
    LineageStore::open_read_only(&control.data_dir).map_err(|e| Problem::internal(e.to_string()))
}

fn lineage_off() -> Problem {
    Problem::not_found("no message lineage is kept ([telemetry] lineage = false, or nothing yet)")
}

/// The plants `who` may see, for a search (`None`: every plant).
fn plants_of(who: &Identity) -> Option<Vec<String>> {
    (!who.everywhere()).then(|| who.plants.clone())
}

/// `GET /v1/messages/{id}`.
pub fn message(control: &Control, who: &Identity, id: &str) -> Result<serde_json::Value, Problem> {
    crate::lineage::flush(std::time::Duration::from_secs(2));
    let Some(store) = lineage_store(control)? else {
        return Err(lineage_off());
    };
    let plants = plants_of(who);
    let path = store
        .path_of(id, plants.as_deref())
        .map_err(|e| Problem::internal(e.to_string()))?
        .ok_or_else(|| Problem::not_found(format!("no path of message {id:?} is kept")))?;
    Ok(serde_json::to_value(path).expect("paths serialize"))
}

/// `GET /v1/messages?…`.
pub fn messages(
    control: &Control,
    who: &Identity,
    query: &[(String, String)],
) -> Result<serde_json::Value, Problem> {
    crate::lineage::flush(std::time::Duration::from_secs(2));
    let mut search = Search {
        limit: 100,
        plants: plants_of(who),
        ..Search::default()
    };
    for (key, value) in query {
        let time = |v: &str| {
            crate::lineage::store::parse_time(v).ok_or_else(|| {
                Problem::bad_request(format!(
                    "{key}={v:?} is not a time (RFC 3339 or Unix milliseconds)"
                ))
            })
        };
        match key.as_str() {
            "plant" => search.plant = Some(value.clone()),
            "route" => search.route = Some(value.clone()),
            "subject" => search.subject = Some(value.clone()),
            "after" => search.after_ms = Some(time(value)?),
            "before" => search.before_ms = Some(time(value)?),
            "limit" => search.limit = value.parse().unwrap_or(100),
            _ => {}
        }
    }
    let Some(store) = lineage_store(control)? else {
        return Ok(serde_json::json!([]));
    };
    let found = store
        .search(&search)
        .map_err(|e| Problem::internal(e.to_string()))?;
    Ok(serde_json::to_value(found).expect("results serialize"))
}

/// A dead letter as the console lists it.
#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    entry: crate::deadletter::DeadLetter,
    /// The business domain of its route (the families of the event types its steps emit).
    domain: String,
}

/// `GET /v1/dead-letters?…`.
pub fn dead_letters(
    control: &Control,
    who: &Identity,
    query: &[(String, String)],
) -> Result<serde_json::Value, Problem> {
    let mut limit = 200u32;
    let (mut plant, mut route, mut domain, mut waiting) = (None, None, None, false);
    for (key, value) in query {
        match key.as_str() {
            "plant" => plant = Some(value.clone()),
            "route" => route = Some(value.clone()),
            "domain" => domain = Some(value.clone()),
            "waiting" => waiting = value == "true" || value == "1",
            "limit" => limit = value.parse().unwrap_or(200).clamp(1, 1000),
            _ => {}
        }
    }
    let routes = control.deployer.routes();
    let domain_of = |route: &str| {
        routes
            .get(route)
            .map(|r| r.meters.domain.clone())
            .unwrap_or_else(|| "unknown".into())
    };
    let entries = control
        .pipeline
        .deadletters
        .latest(limit)
        .map_err(|e| Problem::internal(e.to_string()))?;
    let listed: Vec<Listed> = entries
        .into_iter()
        .filter(|e| who.covers(&e.plant))
        .filter(|e| plant.as_ref().is_none_or(|p| *p == e.plant))
        .filter(|e| route.as_ref().is_none_or(|r| *r == e.route))
        .filter(|e| !waiting || e.replayed_at.is_none())
        .map(|entry| Listed {
            domain: domain_of(&entry.route),
            entry,
        })
        .filter(|l| domain.as_ref().is_none_or(|d| *d == l.domain))
        .collect();
    Ok(serde_json::to_value(listed).expect("dead letters serialize"))
}

/// Dead letters being replayed now (a second replay of one waits its turn and finds it done).
fn replaying() -> &'static Mutex<std::collections::HashSet<i64>> {
    static REPLAYING: std::sync::LazyLock<Mutex<std::collections::HashSet<i64>>> =
        std::sync::LazyLock::new(Default::default);
    &REPLAYING
}

/// An output as a dry run shows it.
fn shown(output: &Message) -> serde_json::Value {
    serde_json::json!({
        "id": output.id,
        "content_type": output.content_type,
        "body": String::from_utf8_lossy(&output.body),
    })
}

/// `POST /v1/dead-letters/{id}/replay`.
pub async fn replay(
    control: &Arc<Control>,
    who: &Identity,
    id: i64,
    dry_run: bool,
) -> Result<serde_json::Value, Problem> {
    let store = &control.pipeline.deadletters;
    let entry = store
        .get(id)
        .map_err(|e| Problem::internal(e.to_string()))?
        .filter(|e| who.covers(&e.plant))
        .ok_or_else(|| Problem::not_found(format!("no dead letter {id}")))?;
    super::auth::allow(who, Role::Operator, Some(&entry.plant)).map_err(super::api::denied)?;
    let route =
        control.deployer.routes().get(&entry.route).ok_or_else(|| {
            Problem::conflict(format!("route {} is not configured now", entry.route))
        })?;
    let message = entry.message();
    if dry_run {
        let engine = control.deployer.engine().clone();
        let ran = tokio::task::spawn_blocking(move || {
            let isolated = route.isolated(&engine).map_err(Problem::internal)?;
            let _quiet = crate::lineage::Quiet::enter();
            Ok::<_, Problem>(crate::pipeline::chain::run(&isolated, &message, None))
        })
        .await
        .map_err(|e| Problem::internal(e.to_string()))??;
        return Ok(match ran {
            Ok(outputs) => serde_json::json!({
                "dead_letter": id, "dry_run": true, "outcome": "would-deliver",
                "outputs": outputs.iter().map(shown).collect::<Vec<_>>(),
            }),
            Err(failure) => serde_json::json!({
                "dead_letter": id, "dry_run": true, "outcome": "still-fails",
                "step": failure.step, "plugin": failure.plugin.name, "version": failure.plugin.version,
                "reason": failure.reason(),
            }),
        });
    }
    if route.sink == crate::config::Sink::Reply {
        return Err(Problem::conflict(format!(
            "route {} answers its HTTP caller (sink \"reply\"): a replay has nowhere to deliver; use a dry run",
            route.name
        )));
    }
    if !replaying().lock().expect("replay set lock").insert(id) {
        return Err(Problem::conflict(format!(
            "dead letter {id} is being replayed now"
        )));
    }
    let outcome = replay_once(control, &route, &entry, message, &who.name).await;
    replaying().lock().expect("replay set lock").remove(&id);
    outcome
}

async fn replay_once(
    control: &Control,
    route: &Arc<crate::route::Route>,
    entry: &crate::deadletter::DeadLetter,
    message: Message,
    by: &str,
) -> Result<serde_json::Value, Problem> {
    let id = entry.id;
    // Read again under the claim: a replay that finished meanwhile is not delivered twice.
    let now = control
        .pipeline
        .deadletters
        .get(id)
        .map_err(|e| Problem::internal(e.to_string()))?;
    if let Some(at) = now.and_then(|e| e.replayed_at) {
        return Err(Problem::conflict(format!(
            "dead letter {id} was replayed at {at}"
        )));
    }
    let mut span = crate::pipeline::source_span(
        route,
        &message,
        format!("replay {}", route.name),
        crate::telemetry::trace::Kind::Internal,
    );
    if let Some(span) = &mut span {
        span.set("millrace.dead_letter.id", id);
    }
    crate::lineage::record(
        route,
        &entry.message_id,
        span.as_ref().map(|s| s.context.trace_id),
        || crate::lineage::Event::Replayed {
            dead_letter: Some(id),
            by: by.to_string(),
        },
    );
    let ask = Ask {
        when_busy: WhenBusy::Refuse,
        on_failure: OnFailure::Caller,
        settled: None,
        trace: span.as_ref().map(|s| s.context.clone()),
    };
    let end = crate::telemetry::trace::end;
    let outputs = match control.pipeline.mediate(route, message, ask).await {
        Ok(outputs) => outputs,
        Err(Mediated::Failed { failure, .. }) => {
            end(span, Some(failure.reason()));
            return Ok(serde_json::json!({
                "dead_letter": id, "dry_run": false, "outcome": "still-fails",
                "step": failure.step, "plugin": failure.plugin.name, "version": failure.plugin.version,
                "reason": failure.reason(),
            }));
        }
        Err(Mediated::Busy(busy)) => {
            end(span, Some(busy.to_string()));
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "Plant busy",
                busy.to_string(),
            ));
        }
        Err(other) => {
            end(span, Some(format!("{other:?}")));
            return Err(Problem::internal(format!("not mediated: {other:?}")));
        }
    };
    let ids: Vec<String> = outputs.iter().map(|o| o.id.clone()).collect();
    let delivered = control
        .pipeline
        .sinks
        .deliver(route, &entry.message_id, outputs, Via::Held)
        .await;
    match delivered {
        Ok(done) => {
            end(span, None);
            control
                .pipeline
                .deadletters
                .mark_replayed(id)
                .map_err(|e| Problem::internal(e.to_string()))?;
            let outcome = match done {
                Delivered::Held { .. } => "held",
                _ => "delivered",
            };
            tracing::info!(dead_letter = id, route = %route.name, by, outcome, "dead letter replayed");
            Ok(serde_json::json!({
                "dead_letter": id, "dry_run": false, "outcome": outcome, "outputs": ids,
            }))
        }
        Err(e) => {
            end(span, Some(e.to_string()));
            Ok(serde_json::json!({
                "dead_letter": id, "dry_run": false, "outcome": "not-delivered", "reason": e.to_string(),
            }))
        }
    }
}
