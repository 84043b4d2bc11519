//! AMQP ingress (RabbitMQ via lapin): one consumer per route whose source is `amqp`, manual
//! acknowledgements, at-least-once. Runs on a session of the broker supervisor (`broker`).
//!
//! A delivery is acknowledged only after its outcome is safe at the broker or the webhook:
//! - outputs: published to the sink exchange and confirmed by the broker (sink `amqp`), or
//!   answered 2xx by the webhook (sink `http`); then ack;
//! - a permanent failure (rejection, trap, deadline, memory cap): the input is published to the
//!   route's dead-letter queue with headers saying why, confirmed; then ack;
//! - a transient failure (the plugin's retry-later, an unreachable webhook): the input is parked
//!   in the route's delay queue for the next wait of its backoff (it returns to the source queue
//!   when the wait expires; the consumer goes on meanwhile), confirmed; then ack. After
//!   `max_attempts` runs it is dead-lettered instead (`attempts-exhausted`);
//! - the broker itself failing (a publish on a closed channel): no ack; the session is reported
//!   lost, and the broker redelivers the unacknowledged deliveries to the next session.
//!
//! A host that dies before the ack leaves the delivery unacknowledged: the broker redelivers it.
//! Output ids derive from the input's `message-id`, so a redelivery publishes the same ids. The
//! ids of settled deliveries are kept (`idempotency`), so a redelivery of a settled message is
//! acknowledged without a second run; only a death between the broker's confirm and that record
//! can publish an output twice (with the same id).

use super::Amqp;
use super::config::OrderBy;
use crate::amqp::publisher::{Arrived, Verdict, header_number, headers};
use crate::amqp::session::{Ready, Session};
use crate::config::Source;
use crate::pipeline::chain;
use crate::pipeline::sinks::Via;
use crate::pipeline::sinks::{Delivered, DeliveryError};
use crate::pipeline::{Ask, Mediated, OnFailure, WhenBusy};
use crate::plugin::StepFailure;
use crate::plugin::bindings::types::Message;
use crate::route::Route;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Consume every broker route's queue on `session` until it is lost (a message on `lost`, a
/// consumer ending) or `shutdown` turns true; then stop consuming and finish the deliveries in
/// hand. Calls `ready` once every consumer runs. Returns why it ended.
pub async fn consume(
    amqp: Arc<Amqp>,
    session: Session,
    mut lost: mpsc::UnboundedReceiver<String>,
    mut shutdown: watch::Receiver<bool>,
    ready: Ready,
) -> String {
    let mut consumers = Vec::new();
    for route in amqp
        .pipeline
        .routes
        .all()
        .iter()
        .filter(|r| r.source == Source::Amqp)
    {
        let started = async {
            let channel = session.connection.create_channel().await?;
            channel
                .basic_qos(route.amqp.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    route.amqp.queue.as_str().into(),
                    format!("millrace-{}", route.name).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((channel, consumer))
        };
        match started.await {
            Ok((channel, consumer)) => consumers.push((Arc::clone(route), channel, consumer)),
            Err(e) => {
                return format!(
                    "route {}: cannot consume {}: {e}",
                    route.name, route.amqp.queue
                );
            }
        }
    }
    ready.up();
    // One task per consumer mediates its deliveries; this one watches the session.
    let (stop, stopping) = watch::channel(false);
    let mut running = JoinSet::new();
    for (route, channel, consumer) in consumers {
        running.spawn(serve_consumer(
            Arc::clone(&amqp),
            session.clone(),
            route,
            channel,
            consumer,
            stopping.clone(),
        ));
    }
    let ended = tokio::select! {
        why = lost.recv() => why.unwrap_or_default(),
        _ = shutdown.changed() => "the host is stopping".to_string(),
        Some(why) = running.join_next(), if !running.is_empty() => {
            why.unwrap_or_else(|e| format!("a consumer task failed: {e}"))
        }
    };
    let _ = stop.send(true);
    tracing::info!(reason = %ended, "AMQP ingress: stopped consuming; finishing deliveries in hand");
    while running.join_next().await.is_some() {}
    ended
}

/// Mediate one route's deliveries until its consumer ends or `stop` turns true, then finish
/// the deliveries in hand. Returns why it ended.
async fn serve_consumer(
    amqp: Arc<Amqp>,
    session: Session,
    route: Arc<Route>,
    channel: lapin::Channel, // the consumer lives as long as its channel; acks go on it
    mut consumer: lapin::Consumer,
    mut stop: watch::Receiver<bool>,
) -> String {
    let mut in_flight = JoinSet::new();
    let mut acks = InOrderAcks::new();
    let mut keys: Keys<Delivery> = Keys::default();
    let stopping = stop.clone();
    let start = |in_flight: &mut JoinSet<(Delivery, Settle)>, delivery: Delivery| {
        // The route as it is now: a message runs on the version current when it arrives,
        // throughout.
        let current = amqp
            .pipeline
            .routes
            .get(&route.name)
            .unwrap_or_else(|| Arc::clone(&route));
        let (amqp, session, stopping) = (Arc::clone(&amqp), session.clone(), stopping.clone());
        in_flight
            .spawn(async move {
                let settle = handle(&amqp, &session, &current, &delivery, stopping).await;
                (delivery, settle)
            })
            .id()
    };
    let ended = loop {
        tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => match &route.amqp.order_by {
                    Some(order) => {
                        if let Some(ready) = keys.arrive(key_of(order, &delivery), delivery) {
                            let (key, delivery) = ready;
                            let task = start(&mut in_flight, delivery);
                            keys.started(task, key);
                        }
                    }
                    None => {
                        start(&mut in_flight, delivery);
                    }
                },
                Some(Err(e)) => break format!("route {}: consumer ended: {e}", route.name),
                None => break format!("route {}: the consumer was cancelled", route.name),
            },
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                // Every handler done by now is settled before one ack covers their run:
                // deliveries whose outputs one batch of confirms judged finish together. (A
                // nack or an ack alone among them goes out at once, before that ack.)
                let mut upto = None;
                let mut next = Some(done);
                while let Some(done) = next {
                    let (task, done) = match done {
                        Ok((task, out)) => (task, Ok(out)),
                        Err(e) => (e.id(), Err(e)),
                    };
                    // Left to the broker (the session is lost or ending) or its handler failed
                    // (which loses the session): it comes again, to the next session, and the
                    // next delivery of its key must not pass it. The key stops here; what
                    // waits behind it goes back to the queue with it when the channel closes,
                    // in order.
                    let comes_again = matches!(done, Ok((_, Settle::Leave)) | Err(_));
                    if route.amqp.order_by.is_some() && comes_again {
                        tracing::debug!(route = %route.name, "a delivery left to the broker stops its key on this consumer");
                        keys.stalled(task);
                    } else if let Some((key, next)) = keys.finished(task) {
                        let task = start(&mut in_flight, next);
                        keys.started(task, key);
                    }
                    upto = settle(&session, &route, &mut acks, done).await.or(upto);
                    next = in_flight.try_join_next_with_id();
                }
                acknowledge(&channel, &route, upto).await;
            }
            _ = stop.changed() => break String::new(),
        }
    };
    // Deliveries waiting behind their key are left unacknowledged: the broker gives them back,
    // in order, when the channel closes. Each run is acknowledged as soon as it is complete: a
    // stop that runs out of time cuts this loop short, and only what is in hand comes again.
    while let Some(done) = in_flight.join_next().await {
        let mut upto = settle(&session, &route, &mut acks, done).await;
        while let Some(done) = in_flight.try_join_next() {
            upto = settle(&session, &route, &mut acks, done).await.or(upto);
        }
        acknowledge(&channel, &route, upto).await;
    }
    if ended.is_empty() {
        // Stopping: closed before the connection is. A lost session's channels go with it.
        super::session::close_channel(&channel, "consumer ends").await;
    }
    ended
}

/// The order key of a delivery on a route with `order_by`.
fn key_of(order: &OrderBy, delivery: &Delivery) -> String {
    match order {
        OrderBy::Queue => String::new(),
        OrderBy::RoutingKey => delivery.routing_key.as_str().to_string(),
        OrderBy::Header(name) => delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|table| {
                table
                    .inner()
                    .iter()
                    .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
                    .and_then(|(_, v)| header_text(v))
            })
            .unwrap_or_default(),
    }
}

/// The keys of an ordered route with a delivery being mediated (by the task that runs it), and
/// the deliveries `D` waiting behind each, in arrival order.
struct Keys<D, Task = tokio::task::Id> {
    busy: std::collections::HashMap<String, std::collections::VecDeque<D>>,
    running: std::collections::HashMap<Task, String>,
}

impl<D, Task> Default for Keys<D, Task> {
    fn default() -> Self {
        Keys {
            busy: Default::default(),
            running: Default::default(),
        }
    }
}

impl<D, Task: std::hash::Hash + Eq> Keys<D, Task> {
    /// A delivery arrived: returned to start now if its key is free, else queued behind it.
    fn arrive(&mut self, key: String, delivery: D) -> Option<(String, D)> {
        match self.busy.get_mut(&key) {
            Some(waiting) => {
                waiting.push_back(delivery);
                None
            }
            None => {
                self.busy.insert(key.clone(), Default::default());
                Some((key, delivery))
            }
        }
    }

    fn started(&mut self, task: Task, key: String) {
        self.running.insert(task, key);
    }

    /// Task `task` is done with a delivery that comes again: its key stays busy, and what
    /// waits behind it (or arrives later) is never started on this consumer.
    fn stalled(&mut self, task: Task) {
        self.running.remove(&task);
    }

    /// Task `task` is done: the next delivery of its key, if one waits (the key stays busy).
    fn finished(&mut self, task: Task) -> Option<(String, D)> {
        let key = self.running.remove(&task)?;
        let next = self
            .busy
            .get_mut(&key)
            .and_then(|waiting| waiting.pop_front());
        match next {
            Some(delivery) => Some((key, delivery)),
            None => {
                self.busy.remove(&key);
                None
            }
        }
    }
}

/// Settle a delivery [`handle`] is done with: a nack (requeue) or an ack alone is sent now;
/// an ack in order is recorded. The answer is the highest tag a `multiple` ack may now name (the
/// run of settled tags it completes), for [`acknowledge`]: the caller sends one for all the
/// deliveries it settles at once, naming the latest answer (they only grow).
async fn settle(
    session: &Session,
    route: &Route,
    acks: &mut InOrderAcks,
    done: Result<(Delivery, Settle), tokio::task::JoinError>,
) -> Option<u64> {
    let Ok((delivery, settle)) = done else {
        // A handler that panicked leaves its delivery to the broker; its tag is never settled,
        // so no later ack covers it, and the route's acks stop there: the session is rebuilt
        // (after the reconnect pause), and the deliveries in hand come again.
        tracing::error!(route = %route.name, "a delivery handler failed");
        session.lost(format!("route {}: a delivery handler failed", route.name));
        return None;
    };
    let tag = delivery.delivery_tag;
    let sent = match settle {
        Settle::Leave => return None,
        // An ordered route's keys run side by side, and one key's delivery may be held here
        // for its retry's wait: a delivery settled behind one still in hand is acknowledged
        // alone, so the run below does not keep the window (`prefetch`) full and the other
        // keys waiting.
        Settle::Ack if route.amqp.order_by.is_some() && acks.waits_below(tag) => {
            settle_alone(acks, &delivery, || delivery.ack(BasicAckOptions::default())).await
        }
        Settle::Ack => Ok(acks.settle(tag, Given::Acknowledged)),
        Settle::Requeue => {
            settle_alone(acks, &delivery, || {
                delivery.nack(lapin::options::BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
            })
            .await
        }
    };
    sent.unwrap_or_else(|e| {
        tracing::warn!(route = %route.name, error = %e, "ack or nack failed; the broker redelivers");
        None
    })
}

/// Acknowledge every tag up to `upto` (when there is one) with one `multiple` ack.
async fn acknowledge(channel: &lapin::Channel, route: &Route, upto: Option<u64>) {
    let Some(upto) = upto else { return };
    if let Err(e) = channel
        .basic_ack(upto, BasicAckOptions { multiple: true })
        .await
    {
        tracing::warn!(route = %route.name, error = %e, "ack failed; the broker redelivers");
    }
}

/// Settle `delivery` on its own (by `send`: an ack or a nack); the tag a `multiple` ack may
/// now name for the run it completes. Recorded only once the broker took it: a tag whose ack or
/// nack failed must never be covered by a later multiple ack (that would acknowledge it
/// unmediated).
async fn settle_alone<T, F: std::future::Future<Output = lapin::Result<T>>>(
    acks: &mut InOrderAcks,
    delivery: &Delivery,
    send: impl FnOnce() -> F,
) -> lapin::Result<Option<u64>> {
    send()
        .await
        .map(|_| acks.settle(delivery.delivery_tag, Given::Alone))
}

fn header_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Headers the host passes to plugins: the sender's, without the host's own bookkeeping
/// (attempt counts, failure records), so every attempt runs on the same message.
fn plugin_headers(table: &FieldTable) -> Vec<(String, String)> {
    table
        .inner()
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !k.starts_with(headers::PREFIX) && k != "x-death"
        })
        .filter_map(|(k, v)| header_text(v).map(|v| (k.as_str().to_ascii_lowercase(), v)))
        .collect()
}

/// The message a route's chain sees for a broker delivery with id `id`.
pub fn message_of(
    route: &Route,
    id: &str,
    properties: &lapin::BasicProperties,
    body: &[u8],
) -> Message {
    Message {
        id: id.to_string(),
        plant: route.plant.clone(),
        route: route.name.clone(),
        content_type: properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| "application/octet-stream".into()),
        headers: plugin_headers(&properties.headers().clone().unwrap_or_default()),
        body: body.to_vec(),
    }
}

/// How a delivery ends, before its ack.
enum Outcome {
    /// Outputs delivered or dead letter confirmed: record the id, then ack.
    Settled,
    /// Parked in a delay queue: ack (it comes back, so it is not recorded as settled).
    Parked,
    /// An ordered route's transient failure: run it again here after this wait, holding its
    /// key (a delay queue would let later deliveries of the key pass it).
    Hold(std::time::Duration),
}

/// What the consumer does with a delivery once [`handle`] is done with it.
enum Settle {
    /// Acknowledge (outputs confirmed, dead letter confirmed, parked for a retry, or settled
    /// before).
    Ack,
    /// Give it back to the queue now (requeue).
    Requeue,
    /// Nothing: the session is lost and the broker redelivers it to the next one.
    Leave,
}

/// How a delivery was settled with the broker.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Given {
    /// To be acknowledged (with a later `multiple` ack).
    Acknowledged,
    /// Already settled on its own (`basic.nack` with requeue, or acknowledged alone): no
    /// longer the channel's.
    Alone,
}

/// Delivery tags settled out of order, acknowledged in order: one `multiple` ack covers every
/// tag up to the highest one below which all are settled. Tags of a channel count up from 1.
/// The ack names the highest tag of the run still to acknowledge: the broker refuses a
/// `multiple` ack naming a tag it no longer holds (one given back) and closes the channel
/// ("unknown delivery tag"), which would give back every delivery in hand.
struct InOrderAcks {
    /// Every tag below this one is settled.
    next: u64,
    settled: std::collections::BTreeMap<u64, Given>,
}

impl InOrderAcks {
    fn new() -> InOrderAcks {
        InOrderAcks {
            next: 1,
            settled: std::collections::BTreeMap::new(),
        }
    }

    /// Whether a tag below `tag` is still in hand (so `tag` cannot join an acknowledged run).
    fn waits_below(&self, tag: u64) -> bool {
        tag > self.next
    }

    /// Record `tag` as settled (`how`); the tag to acknowledge with `multiple` when the run
    /// below it is complete and holds a tag to acknowledge.
    fn settle(&mut self, tag: u64, how: Given) -> Option<u64> {
        self.settled.insert(tag, how);
        let mut upto = None;
        while let Some(how) = self.settled.remove(&self.next) {
            if how == Given::Acknowledged {
                upto = Some(self.next);
            }
            self.next += 1;
        }
        upto
    }
}

async fn handle(
    amqp: &Amqp,
    session: &Session,
    route: &Arc<Route>,
    delivery: &Delivery,
    mut stopping: watch::Receiver<bool>,
) -> Settle {
    let arrived_at = std::time::Instant::now();
    route.meters.received.inc();
    let mut held = 0;
    let settle = loop {
        match handle_received(amqp, session, route, delivery, held).await {
            Ok(settle) => break settle,
            Err(wait) => {
                held += 1;
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    // The session is ending (lost, or the host stopping): not run again here
                    // but left to the broker, which gives it to the next session or another
                    // host, instead of the reconnect (or the stop) waiting out the retry.
                    _ = stopping.wait_for(|stop| *stop) => {
                        let id = delivery.properties.message_id().as_ref().map(|s| s.as_str());
                        tracing::info!(route = %route.name, message_id = %id.unwrap_or_default(), runs = held, "the session ends: left to the broker instead of run again here");
                        break Settle::Leave;
                    }
                }
            }
        }
    };
    if matches!(settle, Settle::Ack) {
        route.meters.latency.since(arrived_at);
    }
    settle
}

/// The span of a delivery: a consumer's `process` span (OpenTelemetry messaging conventions).
fn delivery_span(
    route: &Route,
    message: &Message,
    delivery: &Delivery,
    attempt: u32,
) -> Option<crate::telemetry::trace::Span> {
    let mut span = crate::pipeline::source_span(
        route,
        message,
        format!("process {}", route.amqp.queue),
        crate::telemetry::trace::Kind::Consumer,
    )?;
    span.set("messaging.system", "rabbitmq");
    span.set("messaging.operation.type", "process");
    span.set("messaging.destination.name", route.amqp.queue.as_str());
    span.set(
        "messaging.rabbitmq.destination.routing_key",
        delivery.routing_key.as_str(),
    );
    span.set("messaging.message.body.size", delivery.data.len() as i64);
    span.set("millrace.attempt", i64::from(attempt));
    Some(span)
}

/// [`handle`] after the arrival is counted; `held`: runs of this delivery made here already
/// (retries held here: an ordered route's, or any route's delivery the host could not settle).
/// `Err(wait)`: run it again here after `wait`.
async fn handle_received(
    amqp: &Amqp,
    session: &Session,
    route: &Arc<Route>,
    delivery: &Delivery,
    held: u32,
) -> Result<Settle, std::time::Duration> {
    let publisher = &session.publisher;
    let properties = &delivery.properties;
    let table = properties.headers().clone().unwrap_or_default();
    let given_id = properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .filter(|s| !s.is_empty());
    let id = given_id.clone().unwrap_or_else(crate::ids::message_id);
    // Deduplication needs the sender's id; a generated one differs on every redelivery. A
    // replayed dead letter is a new run of the same message: its replay count is in the key.
    let settled_key = match header_number(&table, headers::REPLAY) {
        Some(n) if n > 0 => format!("{id}#replay-{n}"),
        _ => id.clone(),
    };
    let dedupe = given_id.as_ref().and(amqp.pipeline.idempotency.as_ref());
    let attempt = header_number(&table, headers::ATTEMPTS).unwrap_or(0) as u32 + 1 + held;
    let arrived = Arrived {
        message_id: &id,
        body: &delivery.data,
        properties,
        exchange: delivery.exchange.as_str(),
        routing_key: delivery.routing_key.as_str(),
    };
    tracing::debug!(route = %route.name, message_id = %id, attempt, "delivery received");
    if let Some(reason) = route.over_max_body(delivery.data.len()) {
        // Never mediated: the route's bound on a message holds whatever the broker carries.
        tracing::warn!(route = %route.name, message_id = %id, "dead-lettered to the broker: {reason}");
        let verdict = Verdict::refused(reason);
        let noted = (verdict.kind, verdict.reason.as_str());
        let result = dead_letter(publisher, route, &arrived, attempt, &verdict, noted).await;
        return settle_for(session, route, &id, attempt, result);
    }
    let message = message_of(route, &id, properties, &delivery.data);
    let mut span = delivery_span(route, &message, delivery, attempt);
    // Back-pressure: a saturated plant's consumer waits for a slot (its prefetch bounds how
    // many); failures go to the broker's dead-letter queue, not the local store.
    let ask = Ask {
        when_busy: WhenBusy::Wait,
        on_failure: OnFailure::Caller,
        settled: dedupe.map(|store| (Arc::clone(store), settled_key.clone())),
        trace: span.as_ref().map(|s| s.context.clone()),
    };
    let mediated = amqp.pipeline.mediate(route, message, ask).await;
    tracing::debug!(route = %route.name, message_id = %id, ok = mediated.is_ok(), "mediated");
    // Ok(outcome) or Err((why, is the broker session gone)).
    let result: Result<Outcome, (String, bool)> = match mediated {
        Err(Mediated::Settled) => {
            tracing::info!(route = %route.name, message_id = %id, redelivered = delivery.redelivered, "already settled: acknowledged without a second run");
            if let Some(mut span) = span.take() {
                span.set("millrace.outcome", "already-settled");
                span.end();
            }
            return Ok(Settle::Ack);
        }
        Err(Mediated::Lost(e)) => Err((format!("the mediation task failed: {e}"), false)),
        Err(Mediated::Busy(busy)) => Err((busy.to_string(), false)),
        Ok(outputs) => {
            let delivered = amqp
                .pipeline
                .sinks
                .deliver(route, &id, outputs, Via::Direct)
                .await;
            match delivered {
                Ok(delivered) => {
                    // What the sink took (for a broker sink: outputs it judged confirmed and
                    // routed); a lost output's failure in the crash tests names it.
                    let outputs = match &delivered {
                        Delivered::Published(n) | Delivered::Webhook(n) => *n,
                        Delivered::Held { accepted, .. } => *accepted,
                        Delivered::Reply(outputs) => outputs.len(),
                    };
                    tracing::debug!(route = %route.name, message_id = %id, outputs, "delivered");
                    Ok(Outcome::Settled)
                }
                Err(DeliveryError::SessionLost(e)) => Err((e, true)),
                Err(e) => {
                    retry_or_give_up(publisher, route, &arrived, attempt, e.to_string(), None).await
                }
            }
        }
        Err(Mediated::Failed { failure, .. })
            if matches!(
                failure.failure,
                StepFailure::RetryLater(_) | StepFailure::Quarantined(_)
            ) =>
        {
            retry_or_give_up(
                publisher,
                route,
                &arrived,
                attempt,
                failure.reason(),
                Some(&failure),
            )
            .await
        }
        Err(Mediated::Failed { failure, .. }) => {
            tracing::warn!(route = %route.name, message_id = %id, step = failure.step, plugin = %failure.plugin.name, "dead-lettered to the broker: {}", failure.reason());
            let kind = failure.dead_letter_kind().map_or("failed", |k| k.as_str());
            let reason = failure.reason();
            let verdict = Verdict::failed(&failure);
            dead_letter(
                publisher,
                route,
                &arrived,
                attempt,
                &verdict,
                (kind, &reason),
            )
            .await
        }
    };
    let result = match (result, dedupe, &amqp.settled) {
        (Ok(Outcome::Settled), Some(_), Some(log)) => log
            .mark(&route.name, &settled_key)
            .await
            .map(|()| Outcome::Settled)
            .map_err(|e| (format!("could not record the settled id: {e}"), false)),
        (other, _, _) => other,
    };
    if let Some(mut span) = span.take() {
        match &result {
            Ok(Outcome::Settled) => span.set("millrace.outcome", "settled"),
            Ok(Outcome::Parked | Outcome::Hold(_)) => span.set("millrace.outcome", "retry"),
            Err((why, _)) => span.fail(why.clone()),
        }
        span.end();
    }
    settle_for(session, route, &id, attempt, result)
}

/// What the consumer does with delivery `id` of `route` whose attempt `attempt` came to
/// `result` (`Err((why, whether the broker session is gone))`); `Err(wait)`: run it again here
/// after `wait`.
fn settle_for(
    session: &Session,
    route: &Route,
    id: &str,
    attempt: u32,
    result: Result<Outcome, (String, bool)>,
) -> Result<Settle, std::time::Duration> {
    match result {
        Ok(Outcome::Hold(wait)) => Err(wait),
        Ok(_) => Ok(Settle::Ack),
        Err((why, true)) => {
            // Not acknowledged: the broker delivers it again, to the next session.
            tracing::warn!(route = %route.name, message_id = %id, "not settled, the broker will redeliver: {why}");
            session.lost(format!("publishing failed: {why}"));
            Ok(Settle::Leave)
        }
        Err((why, false)) if attempt < route.amqp.max_attempts => {
            // Not parked (the broker refused the retry copy), or not settled otherwise: run it
            // again here after the attempt's wait, holding its place. Given straight back, it
            // would come straight back (with no delivery limit on a classic queue, for ever),
            // and on an ordered route later deliveries of its key would pass it.
            let wait = route.amqp.retry_delay_after(attempt);
            tracing::warn!(route = %route.name, message_id = %id, attempt, retry_in_ms = wait.as_millis() as u64, "not settled, run again here: {why}");
            Err(wait)
        }
        Err((why, false)) => {
            tracing::warn!(route = %route.name, message_id = %id, "not settled, the broker will redeliver: {why}");
            Ok(Settle::Requeue)
        }
    }
}

/// Whether a failed publish to a queue the host declares itself (a delay or the dead-letter
/// queue) needs a new session: the channel is gone, or the queue is (deleted under the host: the
/// copy came back unroutable, and a new session declares it again, after the reconnect's pause,
/// instead of the delivery coming straight back to fail the same way).
fn own_queue_failed(e: &crate::amqp::publisher::PublishError) -> bool {
    e.channel_lost() || matches!(e, crate::amqp::publisher::PublishError::Unroutable { .. })
}

/// Publish the delivery `arrived` (attempt `attempt`) to the route's dead-letter queue with
/// `verdict`, noted in its lineage as `(kind, reason)` once the broker confirmed it.
async fn dead_letter(
    publisher: &crate::amqp::publisher::AmqpPublisher,
    route: &Route,
    arrived: &Arrived<'_>,
    attempt: u32,
    verdict: &Verdict,
    (kind, reason): (&str, &str),
) -> Result<Outcome, (String, bool)> {
    publisher
        .dead_letter(route, arrived, attempt, verdict)
        .await
        .map(|()| {
            chain::noted_dead_letter(
                route,
                arrived.message_id,
                &[],
                ("broker", None),
                kind,
                reason,
            );
            Outcome::Settled
        })
        .map_err(|e| (e.to_string(), own_queue_failed(&e)))
}

/// A transient failure of attempt `attempt`: park the delivery for its next wait, or, when the
/// route's attempts are used up, dead-letter it.
async fn retry_or_give_up(
    publisher: &crate::amqp::publisher::AmqpPublisher,
    route: &Route,
    arrived: &Arrived<'_>,
    attempt: u32,
    why: String,
    failure: Option<&chain::Failure>,
) -> Result<Outcome, (String, bool)> {
    if attempt >= route.amqp.max_attempts {
        tracing::warn!(route = %route.name, message_id = %arrived.message_id, attempt, "attempts used up, dead-lettered: {why}");
        let reason = format!("{attempt} attempts failed; the last: {why}");
        let verdict = Verdict::exhausted(attempt, why, failure);
        let noted = ("attempts-exhausted", reason.as_str());
        return dead_letter(publisher, route, arrived, attempt, &verdict, noted).await;
    }
    let delay = route.amqp.retry_delay_after(attempt);
    tracing::info!(route = %route.name, message_id = %arrived.message_id, attempt, retry_in_ms = delay.as_millis() as u64, "transient failure, retrying later: {why}");
    if route.amqp.order_by.is_some() {
        crate::pipeline::retried(route, arrived.message_id, attempt, &why);
        return Ok(Outcome::Hold(delay));
    }
    publisher
        .retry(route, arrived, attempt, delay, &why)
        .await
        .map(|()| {
            crate::pipeline::retried(route, arrived.message_id, attempt, &why);
            Outcome::Parked
        })
        .map_err(|e| (e.to_string(), own_queue_failed(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_runs_one_delivery_at_a_time_in_arrival_order() {
        let mut keys: Keys<&str, u32> = Keys::default();
        // a1 starts; a2 and a3 wait behind it; b1 has a key of its own.
        let (key, first) = keys.arrive("a".into(), "a1").expect("a is free");
        keys.started(1, key);
        assert_eq!(first, "a1");
        assert!(keys.arrive("a".into(), "a2").is_none());
        assert!(keys.arrive("a".into(), "a3").is_none());
        let (key, b1) = keys.arrive("b".into(), "b1").expect("b is free");
        keys.started(2, key);
        assert_eq!(b1, "b1");
        // b1 done: nothing waits behind b, which is free again.
        assert!(keys.finished(2).is_none());
        assert!(keys.arrive("b".into(), "b2").is_some());
        // a1 done: a2 next (a stays busy), then a3, then a is free.
        let (key, next) = keys.finished(1).expect("a2 waits");
        assert_eq!(next, "a2");
        keys.started(3, key);
        assert!(keys.arrive("a".into(), "a4").is_none(), "a is still busy");
        let (key, next) = keys.finished(3).expect("a3 waits");
        assert_eq!(next, "a3");
        keys.started(4, key);
        let (_, next) = keys.finished(4).expect("a4 waits");
        assert_eq!(next, "a4");
        // An unknown task (one that was never keyed) frees nothing.
        assert!(keys.finished(99).is_none());
    }

    #[test]
    fn a_delivery_that_comes_again_stops_its_key() {
        let mut keys: Keys<&str, u32> = Keys::default();
        let (key, _) = keys.arrive("a".into(), "a1").expect("a is free");
        keys.started(1, key);
        assert!(keys.arrive("a".into(), "a2").is_none());
        let (key, _) = keys.arrive("b".into(), "b1").expect("b is free");
        keys.started(2, key);
        // a1 is left to the broker: a2 must not pass it, nor anything of a arriving later.
        keys.stalled(1);
        assert!(keys.finished(1).is_none(), "a1's task is gone");
        assert!(keys.arrive("a".into(), "a3").is_none(), "a stays busy");
        // Other keys go on.
        assert!(keys.finished(2).is_none());
        assert!(keys.arrive("b".into(), "b2").is_some());
    }

    #[test]
    fn out_of_order_settlements_are_acknowledged_in_order_runs() {
        use Given::*;
        let mut acks = InOrderAcks::new();
        assert_eq!(acks.settle(2, Acknowledged), None, "1 is still in hand");
        assert_eq!(acks.settle(3, Acknowledged), None);
        assert_eq!(
            acks.settle(1, Acknowledged),
            Some(3),
            "1..=3 with one multiple ack"
        );
        assert_eq!(acks.settle(5, Acknowledged), None);
        assert_eq!(acks.settle(4, Acknowledged), Some(5));
        assert_eq!(acks.settle(6, Acknowledged), Some(6));
    }

    #[test]
    fn a_multiple_ack_never_names_a_tag_given_back() {
        use Given::*;
        let mut acks = InOrderAcks::new();
        // A run ending in a tag given back is acknowledged up to the tag before it.
        assert_eq!(acks.settle(2, Alone), None, "1 is still in hand");
        assert_eq!(acks.settle(1, Acknowledged), Some(1));
        // A run of tags given back only: nothing to acknowledge.
        assert_eq!(acks.settle(3, Alone), None);
        // One given back inside a run is covered by the ack of a later tag (the broker skips
        // what it no longer holds).
        assert_eq!(acks.settle(5, Acknowledged), None);
        assert_eq!(acks.settle(6, Alone), None);
        assert_eq!(acks.settle(4, Alone), Some(5));
        assert_eq!(acks.settle(7, Acknowledged), Some(7));
    }

    #[test]
    fn a_tag_acknowledged_alone_is_never_named_by_a_run() {
        use Given::*;
        let mut acks = InOrderAcks::new();
        assert!(!acks.waits_below(1));
        // 1 is held (an ordered route's retry); 2 and 3 are settled behind it, alone.
        assert!(acks.waits_below(2));
        assert_eq!(acks.settle(2, Alone), None);
        assert!(acks.waits_below(3));
        assert_eq!(acks.settle(3, Alone), None);
        // 1 done: the run 1..=3 is acknowledged up to 1 only (2 and 3 are no longer held).
        assert_eq!(acks.settle(1, Acknowledged), Some(1));
        assert!(!acks.waits_below(4));
        assert_eq!(acks.settle(4, Acknowledged), Some(4));
    }
}
