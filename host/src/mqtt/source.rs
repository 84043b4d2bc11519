//! MQTT source: each message arriving on a route's topic filters runs through the pipeline
//! and is acknowledged (PUBACK/PUBREC, in arrival order) only once its outputs were delivered
//! or it was dead-lettered in the local store — the same at-least-once contract as AMQP.
//!
//! MQTT has no dead-letter queue and no delayed redelivery: a transient failure (the plugin's
//! retry-later, a sink that is away) is retried here after the route's backoff, the message
//! unacknowledged meanwhile (it holds one of the session's receive slots: back-pressure); after
//! `max_attempts` runs it is dead-lettered locally (`attempts-exhausted`). A host that dies
//! first leaves it unacknowledged, and the broker sends it again to the next session.
//!
//! What the plugin sees: the payload; the MQTT 5 content type (else `application/octet-stream`);
//! headers `mqtt-topic`, `mqtt-level-N` (1-based levels) and every user property; the id from a
//! `message-id` or CloudEvents `id` user property, else a new UUIDv7. A message whose sender gave
//! it an id is recorded as settled when its outcome is safe (while the host keeps idempotency
//! keys, `host.idempotency_window_s`), so a redelivery of it — its acknowledgement lost to a
//! host killed or a broker restarted — is acknowledged without running again.

use super::config::{level, matches};
use super::session::Arrived;
use crate::plugin::bindings::types::Message;
use crate::route::Route;
use std::sync::Arc;

/// The route whose filters take `topic` (the first by name when several do); a route with a
/// `plant_level` takes it only when that level names its plant.
pub fn route_for(routes: &crate::route::Routes, topic: &str) -> Option<Arc<Route>> {
    routes.first(|r| {
        r.source == crate::config::Source::Mqtt
            && r.mqtt.topics.iter().any(|f| matches(f, topic))
            && r.mqtt
                .plant_level
                .is_none_or(|n| level(topic, n) == Some(r.plant.as_str()))
    })
}

/// The message a route's chain sees for an MQTT publish.
pub fn message_of(route: &Route, arrived: &Arrived, given: Option<&str>) -> Message {
    let publish = &arrived.publish;
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let properties = publish.properties.as_ref();
    let mut headers = vec![("mqtt-topic".to_string(), topic.clone())];
    for (i, level) in topic.split('/').enumerate() {
        headers.push((format!("mqtt-level-{}", i + 1), level.to_string()));
    }
    let user: Vec<(String, String)> = properties
        .map(|p| p.user_properties.clone())
        .unwrap_or_default();
    let id = given.map_or_else(crate::ids::message_id, str::to_string);
    headers.extend(user.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)));
    Message {
        id,
        plant: route.plant.clone(),
        route: route.name.clone(),
        content_type: properties
            .and_then(|p| p.content_type.clone())
            .unwrap_or_else(|| "application/octet-stream".into()),
        headers,
        body: publish.payload.to_vec(),
    }
}

/// The id the sender gave the message: its `message-id` (any case) or CloudEvents `id` user
/// property, when not empty.
pub fn given_id(arrived: &Arrived) -> Option<String> {
    let properties = arrived.publish.properties.as_ref()?;
    properties
        .user_properties
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("message-id") || k == "id")
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// A message in hand with what is worked out once, when it arrives: its route (none when no
/// route takes its topic) and the id its sender gave it.
struct InHand {
    arrived: Arrived,
    route: Option<Arc<Route>>,
    given: Option<String>,
}

impl InHand {
    fn new(routes: &crate::route::Routes, arrived: Arrived) -> InHand {
        let route = std::str::from_utf8(&arrived.publish.topic)
            .ok()
            .and_then(|topic| route_for(routes, topic));
        let given = given_id(&arrived);
        InHand {
            arrived,
            route,
            given,
        }
    }
}

/// Messages in hand (received, not yet settled) hold at most this many bytes together, besides
/// `host.mqtt_max_in_hand` of them. The broker's side of the bound is the session's receive
/// maximum; a broker that sends past it (mosquitto 2.0 does) meets this one.
pub const IN_HAND_MAX_BYTES: usize = 64 << 20;

/// Messages of one session running at once (started, not yet settled), whatever the broker
/// sends: the session's receive maximum. What arrives beyond waits in hand, unstarted. This
/// also bounds the copies a killed host leaves: only a started message can have had its
/// outputs delivered before its settled id was recorded. (mosquitto 2.0.11 sends hundreds past
/// the receive maximum, on resumed and on fresh sessions: `tests/all/mqtt_faults.rs`.)
pub const RUNNING_MAX: usize = super::RECEIVE_MAXIMUM as usize;

/// Serve what the session hands over until it stops or `shutdown` turns true, then finish the
/// messages running (those not started are left to the broker). When the host stops, the
/// session stays up until they are done and their acknowledgements are sent
/// ([`super::session::supervise`]); a session lost meanwhile sends none, and they come again.
///
/// Messages run in parallel, at most [`RUNNING_MAX`] at once, except those of a route with
/// `order_levels`: messages whose topics agree on those levels form a lane and run one after
/// another, in arrival order (a transient failure holds its lane until it is retried to an
/// outcome). Copies of one message (the same sender's id) also share a lane. Past
/// `host.mqtt_max_in_hand` messages or [`IN_HAND_MAX_BYTES`] in hand, what arrives is left
/// unacknowledged; once the rest is done the session's connection is renewed, and the broker
/// sends the messages left again.
pub async fn consume(
    mqtt: Arc<super::Mqtt>,
    mut arrived: tokio::sync::mpsc::Receiver<Arrived>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut running: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    // Per running task, its lane and size: freed when it ends, even by a panic.
    let mut started: std::collections::HashMap<tokio::task::Id, (Option<String>, usize)> =
        std::collections::HashMap::new();
    let mut queue = Waiting::default();
    let mut bytes = 0usize;
    let mut overflowed = false;
    loop {
        while running.len() < RUNNING_MAX
            && let Some((lane, next)) = queue.ready.pop_front()
        {
            let size = size_of(&next.arrived);
            if next.arrived.settle.stale() {
                // Its connection is gone: the broker sends it again on the new one, where it
                // is the copy to run.
                queue.release(&mut bytes, lane, size);
                continue;
            }
            let task = running.spawn(handle(Arc::clone(&mqtt), next));
            started.insert(task.id(), (lane, size));
        }
        if overflowed && running.is_empty() && queue.is_empty() {
            overflowed = false;
            mqtt.link
                .renew("messages past the host's bound were left unacknowledged");
        }
        tokio::select! {
            // Taken at once: the session's loop must never wait here, or the acknowledgements
            // the messages in hand wait for would not be read.
            next = arrived.recv() => match next {
                Some(arrived) => {
                    let in_hand = running.len() + queue.len();
                    let size = size_of(&arrived);
                    if in_hand >= mqtt.max_in_hand || bytes + size > IN_HAND_MAX_BYTES {
                        if !overflowed {
                            tracing::error!(in_hand, bytes, "MQTT: the broker sends past the session's receive maximum; messages beyond the host's bound are left unacknowledged and come again on a renewed connection");
                        }
                        overflowed = true;
                        arrived.settle.skipped();
                        continue;
                    }
                    bytes += size;
                    let next = InHand::new(&mqtt.pipeline.routes, arrived);
                    queue.push(lane_of(&next), next);
                }
                None => break,
            },
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        tracing::error!(error = %e, "MQTT: a message's handling failed; left unacknowledged");
                        e.id()
                    }
                };
                if let Some((lane, size)) = started.remove(&id) {
                    queue.release(&mut bytes, lane, size);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    while running.join_next().await.is_some() {}
}

/// What a message in hand holds in memory, about.
fn size_of(arrived: &Arrived) -> usize {
    let p = &arrived.publish;
    256 + p.payload.len()
        + p.topic.len()
        + p.properties.as_ref().map_or(0, |props| {
            props
                .user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + 48)
                .sum()
        })
}

/// Messages received and not started: those that may start, in arrival order, and per busy
/// lane the ones that wait for it.
#[derive(Default)]
struct Waiting {
    ready: std::collections::VecDeque<(Option<String>, InHand)>,
    /// A lane is busy while it has an entry; its messages after the running one wait here.
    lanes: std::collections::HashMap<String, std::collections::VecDeque<InHand>>,
    lane_messages: usize,
}

impl Waiting {
    fn len(&self) -> usize {
        self.ready.len() + self.lane_messages
    }

    fn is_empty(&self) -> bool {
        self.len() == 0 && self.lanes.is_empty()
    }

    fn push(&mut self, lane: Option<String>, arrived: InHand) {
        match lane {
            Some(key) => match self.lanes.get_mut(&key) {
                Some(behind) => {
                    behind.push_back(arrived);
                    self.lane_messages += 1;
                }
                None => {
                    self.lanes.insert(key.clone(), Default::default());
                    self.ready.push_back((Some(key), arrived));
                }
            },
            None => self.ready.push_back((None, arrived)),
        }
    }

    /// A message of `size` bytes, in `lane`, is no longer in hand (done, or dropped unstarted):
    /// its bytes are freed from `bytes` and its lane's next message may start.
    fn release(&mut self, bytes: &mut usize, lane: Option<String>, size: usize) {
        *bytes -= size;
        if let Some(lane) = lane {
            self.lane_done(lane);
        }
    }

    /// The running message of `lane` is done: its next one may start.
    fn lane_done(&mut self, lane: String) {
        let next = self
            .lanes
            .get_mut(&lane)
            .and_then(|behind| behind.pop_front());
        match next {
            Some(next) => {
                self.lane_messages -= 1;
                self.ready.push_back((Some(lane), next));
            }
            None => {
                self.lanes.remove(&lane);
            }
        }
    }
}

/// The lane of a message: on a route that orders by topic levels, the route and those levels;
/// else, when its sender gave it an id, the route and that id, so that a second copy the broker
/// sends while the first is in hand waits for it (and then finds it settled) instead of running
/// beside it; else none (it runs in parallel).
fn lane_of(next: &InHand) -> Option<String> {
    let route = next.route.as_ref()?;
    let mut key = route.name.clone();
    if route.mqtt.order_levels.is_empty() {
        key.push_str("\0id\0");
        key.push_str(next.given.as_deref()?);
        return Some(key);
    }
    let topic = std::str::from_utf8(&next.arrived.publish.topic).ok()?;
    for n in &route.mqtt.order_levels {
        key.push('\0');
        key.push_str(level(topic, *n).unwrap_or_default());
    }
    Some(key)
}

/// Mediate and deliver one message, trying a transient failure again after the route's backoff
/// until its attempts are used (then a local dead letter); settle it when its outcome is safe.
async fn handle(mqtt: Arc<super::Mqtt>, next: InHand) {
    use crate::pipeline::{Ask, Mediated, OnFailure, WhenBusy, chain, sinks::Via};
    let pipeline = &mqtt.pipeline;
    let InHand {
        arrived,
        route,
        given,
    } = next;
    let Some(route) = route else {
        // A filter of an earlier configuration the broker still holds for this session.
        let topic = String::from_utf8_lossy(&arrived.publish.topic);
        tracing::warn!(topic = %topic, "MQTT: no route takes this topic; acknowledged and dropped");
        arrived.settle.settled();
        return;
    };
    let arrived_at = std::time::Instant::now();
    route.meters.received.inc();
    let message = message_of(&route, &arrived, given.as_deref());
    let id = message.id.clone();
    let topic = String::from_utf8_lossy(&arrived.publish.topic).into_owned();
    let mut span = crate::pipeline::source_span(
        &route,
        &message,
        format!("process {topic}"),
        crate::telemetry::trace::Kind::Consumer,
    );
    if let Some(span) = &mut span {
        span.set("messaging.system", "mqtt");
        span.set("messaging.operation.type", "process");
        span.set("messaging.destination.name", topic);
        span.set("messaging.message.body.size", message.body.len() as i64);
    }
    let trace = span.as_ref().map(|s| s.context.clone());
    let end = |span: Option<crate::telemetry::trace::Span>, outcome: &'static str| {
        if let Some(mut span) = span {
            span.set("millrace.outcome", outcome);
            span.end();
        }
    };
    if let Some(reason) = route.over_max_body(message.body.len()) {
        // No caller to refuse it to: kept as a dead letter (bounded by the packet size).
        match chain::dead_letter_refused(&pipeline.deadletters, &route, &message, reason) {
            Ok(_) => {
                route.meters.latency.since(arrived_at);
                end(span.take(), "dead-lettered");
                arrived.settle.settled();
            }
            Err(e) => {
                tracing::error!(route = %route.name, message_id = %id, error = %e, "could not record a dead letter; left unacknowledged");
            }
        }
        return;
    }
    // Deduplication needs the sender's id: a generated one differs on every redelivery. The
    // store is read only for what may be a copy: a message the broker sends again on a new
    // connection carries the DUP flag (MQTT 5 §3.3.1.1); one it sends twice on the same
    // connection is among the ids settled here lately.
    let dedupe = match (&given, &pipeline.idempotency, &mqtt.settled) {
        (Some(_), Some(store), Some(log)) => Some((store, log)),
        _ => None,
    };
    let maybe_copy = arrived.publish.dup
        || mqtt
            .recent
            .lock()
            .expect("recent ids lock")
            .contains(&route.name, &id);
    let mut attempt = 1;
    loop {
        let ask = Ask {
            when_busy: WhenBusy::Wait,
            on_failure: OnFailure::DeadLetterHere,
            trace: trace.clone(),
            settled: dedupe
                .filter(|_| maybe_copy)
                .map(|(store, _)| (Arc::clone(store), id.clone())),
        };
        let (why, failure) = match pipeline.mediate(&route, message.clone(), ask).await {
            Err(Mediated::Settled) => {
                tracing::info!(route = %route.name, message_id = %id, "already settled: acknowledged without a second run");
                route.meters.latency.since(arrived_at);
                end(span.take(), "already-settled");
                arrived.settle.settled();
                return;
            }
            Ok(outputs) => match pipeline
                .sinks
                .deliver(&route, &id, outputs, Via::Held)
                .await
            {
                Ok(_) => break,
                Err(e) => (e.to_string(), None),
            },
            Err(Mediated::Failed {
                dead_letter: Ok(Some(_)),
                ..
            }) => break,
            Err(Mediated::Failed {
                failure,
                dead_letter: Ok(None),
            }) => (failure.reason(), Some(failure)),
            Err(Mediated::Failed {
                dead_letter: Err(e),
                ..
            }) => {
                // Not settled: the broker sends it again on the next session.
                tracing::error!(route = %route.name, message_id = %id, error = %e, "could not record a dead letter; left unacknowledged");
                return;
            }
            Err(other) => (format!("{other:?}"), None),
        };
        if attempt >= route.mqtt.max_attempts {
            match chain::dead_letter_exhausted(
                &pipeline.deadletters,
                &route,
                &message,
                attempt,
                &why,
                failure.as_deref(),
            ) {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(route = %route.name, message_id = %id, error = %e, "could not record a dead letter; left unacknowledged");
                    return;
                }
            }
        }
        if arrived.settle.stale() {
            // The broker sends it again on the new connection; that copy is the one to deliver.
            tracing::info!(route = %route.name, message_id = %id, "the connection it came on is gone; left to its redelivery");
            return;
        }
        let delay = route.mqtt.retry_delay_after(attempt);
        crate::pipeline::retried(&route, &id, attempt, &why);
        tracing::info!(route = %route.name, message_id = %id, attempt, retry_in_ms = delay.as_millis() as u64, "transient failure, retrying later: {why}");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
    if let Some((_, log)) = dedupe {
        match log.mark(&route.name, &id).await {
            Ok(()) => mqtt
                .recent
                .lock()
                .expect("recent ids lock")
                .insert(&route.name, &id),
            // Its outcome is safe already; only a redelivery would run it twice.
            Err(e) => {
                tracing::warn!(route = %route.name, message_id = %id, error = %e, "could not record the settled id")
            }
        }
    }
    route.meters.latency.since(arrived_at);
    end(span.take(), "settled");
    tracing::debug!(route = %route.name, message_id = %id, "mediated");
    arrived.settle.settled();
}
