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

/// The route whose filters take `topic`, among `routes` (the first configured wins); a route
/// with a `plant_level` takes it only when that level names its plant.
pub fn route_for<'a>(routes: &'a [Arc<Route>], topic: &str) -> Option<&'a Arc<Route>> {
    routes.iter().find(|r| {
        r.source == crate::config::Source::Mqtt
            && r.mqtt.topics.iter().any(|f| matches(f, topic))
            && r.mqtt
                .plant_level
                .is_none_or(|n| level(topic, n) == Some(r.plant.as_str()))
    })
}

/// The message a route's chain sees for an MQTT publish.
pub fn message_of(route: &Route, arrived: &Arrived) -> Message {
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
    let id = given_id(arrived).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
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

/// Serve what the session hands over until it stops or `shutdown` turns true, then finish the
/// messages in hand (their acknowledgements go out only if the session still stands).
///
/// Messages run in parallel, except those of a route with `order_levels`: messages whose
/// topics agree on those levels form a lane and run one after another, in arrival order (a
/// transient failure holds its lane until it is retried to an outcome). Copies of one message
/// (the same sender's id) also share a lane.
pub async fn consume(
    mqtt: Arc<super::Mqtt>,
    mut arrived: tokio::sync::mpsc::Receiver<Arrived>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    type Lane = tokio::sync::mpsc::UnboundedReceiver<Arrived>;
    let mut in_flight: tokio::task::JoinSet<Option<(String, Lane)>> = tokio::task::JoinSet::new();
    // Lanes with a task serving them; only this loop sends to them, so a lane whose task has
    // returned its receiver holds everything sent to it.
    let mut lanes: std::collections::HashMap<String, tokio::sync::mpsc::UnboundedSender<Arrived>> =
        std::collections::HashMap::new();
    let serve = |in_flight: &mut tokio::task::JoinSet<Option<(String, Lane)>>,
                 key: String,
                 mut lane: Lane| {
        let mqtt = Arc::clone(&mqtt);
        in_flight.spawn(async move {
            while let Ok(next) = lane.try_recv() {
                handle(Arc::clone(&mqtt), next).await;
            }
            Some((key, lane))
        });
    };
    loop {
        tokio::select! {
            // Taken at once: the session's loop must never wait here, or the acknowledgements
            // the messages in hand wait for would not be read (the broker's receive maximum is
            // what bounds them).
            next = arrived.recv() => match next {
                Some(arrived) => match lane_of(&mqtt.pipeline.routes.all(), &arrived) {
                    None => {
                        let mqtt = Arc::clone(&mqtt);
                        in_flight.spawn(async move {
                            handle(mqtt, arrived).await;
                            None
                        });
                    }
                    Some(key) => match lanes.get(&key) {
                        Some(lane) => {
                            let _ = lane.send(arrived);
                        }
                        None => {
                            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                            let _ = tx.send(arrived);
                            lanes.insert(key.clone(), tx);
                            serve(&mut in_flight, key, rx);
                        }
                    },
                },
                None => break,
            },
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(Some((key, lane))) = done {
                    if lane.is_empty() {
                        lanes.remove(&key);
                    } else {
                        serve(&mut in_flight, key, lane);
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    lanes.clear();
    while in_flight.join_next().await.is_some() {}
}

/// The lane of a message: on a route that orders by topic levels, the route and those levels;
/// else, when its sender gave it an id, the route and that id, so that a second copy the broker
/// sends while the first is in hand waits for it (and then finds it settled) instead of running
/// beside it; else none (it runs in parallel).
fn lane_of(routes: &[Arc<Route>], arrived: &Arrived) -> Option<String> {
    let topic = std::str::from_utf8(&arrived.publish.topic).ok()?;
    let route = route_for(routes, topic)?;
    let mut key = route.name.clone();
    if route.mqtt.order_levels.is_empty() {
        key.push_str("\0id\0");
        key.push_str(&given_id(arrived)?);
        return Some(key);
    }
    for n in &route.mqtt.order_levels {
        key.push('\0');
        key.push_str(level(topic, *n).unwrap_or_default());
    }
    Some(key)
}

/// Mediate and deliver one message, trying a transient failure again after the route's backoff
/// until its attempts are used (then a local dead letter); settle it when its outcome is safe.
async fn handle(mqtt: Arc<super::Mqtt>, arrived: Arrived) {
    use crate::pipeline::{Ask, Mediated, OnFailure, WhenBusy, chain, sinks::Via};
    let pipeline = &mqtt.pipeline;
    let topic = String::from_utf8_lossy(&arrived.publish.topic).into_owned();
    let routes = pipeline.routes.all();
    let Some(route) = route_for(&routes, &topic).map(Arc::clone) else {
        // A filter of an earlier configuration the broker still holds for this session.
        tracing::warn!(topic = %topic, "MQTT: no route takes this topic; acknowledged and dropped");
        arrived.settle.settled();
        return;
    };
    let message = message_of(&route, &arrived);
    let id = message.id.clone();
    if message.body.len() > route.max_body_bytes {
        // No caller to refuse it to: kept as a dead letter (bounded by the packet size).
        let reason = format!(
            "the message is {} bytes, over the route's max_body_kib ({} KiB)",
            message.body.len(),
            route.max_body_bytes / 1024
        );
        match chain::dead_letter_refused(&pipeline.deadletters, &route, &message, reason) {
            Ok(_) => arrived.settle.settled(),
            Err(e) => {
                tracing::error!(route = %route.name, message_id = %id, error = %e, "could not record a dead letter; left unacknowledged");
            }
        }
        return;
    }
    // Deduplication needs the sender's id: a generated one differs on every redelivery.
    let dedupe = match (given_id(&arrived), &pipeline.idempotency, &mqtt.settled) {
        (Some(_), Some(store), Some(log)) => Some((store, log)),
        _ => None,
    };
    let mut attempt = 1;
    loop {
        let ask = Ask {
            when_busy: WhenBusy::Wait,
            on_failure: OnFailure::DeadLetterHere,
            settled: dedupe.map(|(store, _)| (Arc::clone(store), id.clone())),
        };
        let (why, failure) = match pipeline.mediate(&route, message.clone(), ask).await {
            Err(Mediated::Settled) => {
                tracing::info!(route = %route.name, message_id = %id, "already settled: acknowledged without a second run");
                arrived.settle.settled();
                return;
            }
            Ok(outputs) => match pipeline.sinks.deliver(&route, outputs, Via::Held).await {
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
        tracing::info!(route = %route.name, message_id = %id, attempt, retry_in_ms = delay.as_millis() as u64, "transient failure, retrying later: {why}");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
    if let Some((_, log)) = dedupe
        && let Err(e) = log.mark(&route.name, &id).await
    {
        // Its outcome is safe already; only a redelivery would run it twice.
        tracing::warn!(route = %route.name, message_id = %id, error = %e, "could not record the settled id");
    }
    arrived.settle.settled();
}
