//! AMQP ingress (RabbitMQ via lapin): one consumer per route whose source is `amqp`, manual
//! acknowledgements, at-least-once.
//!
//! A delivery is acknowledged only after its outcome is safe at the broker or the webhook:
//! - outputs: published to the sink exchange and confirmed by the broker (sink `amqp`), or
//!   answered 2xx by the webhook (sink `http`); then ack;
//! - a permanent failure (rejection, trap, deadline, memory cap): the input is published to the
//!   route's dead-letter queue with headers saying why, confirmed; then ack;
//! - a transient failure (the plugin's retry-later, an unreachable sink, a broker error):
//!   nack with requeue, so the broker delivers it again (no backoff yet).
//!
//! A host that dies before the ack leaves the delivery unacknowledged: the broker redelivers it.
//! Output ids derive from the input's `message-id`, so a redelivery publishes the same ids. The
//! ids of settled deliveries are kept (`idempotency`), so a redelivery of a settled message is
//! acknowledged without a second run; only a death between the broker's confirm and that record
//! can publish an output twice (with the same id).

use crate::chain;
use crate::config::Sink;
use crate::mediator::Mediator;
use crate::plugin::StepFailure;
use crate::plugin::bindings::types::Message;
use crate::route::Route;
use crate::sink::amqp::AmqpPublisher;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Connect to `url`, declare every broker route's topology, and consume until `shutdown`
/// turns true; then stop consuming and finish the deliveries in hand.
pub async fn serve(
    mediator: Arc<Mediator>,
    url: String,
    connected: tokio::sync::oneshot::Sender<Result<(), String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let setup = async {
        let connection = Connection::connect(
            &url,
            ConnectionProperties::default().with_connection_name("millrace".into()),
        )
        .await?;
        let publisher = AmqpPublisher::open(&connection).await?;
        let mut consumers = Vec::new();
        for route in mediator.routes.iter() {
            if route.source != crate::config::Source::Amqp && route.sink != Sink::Amqp {
                continue;
            }
            publisher.declare(route).await?;
            if route.source == crate::config::Source::Amqp {
                let channel = connection.create_channel().await?;
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
                consumers.push((Arc::clone(route), channel, consumer));
            }
        }
        Ok::<_, lapin::Error>((connection, publisher, consumers))
    };
    let (connection, publisher, consumers) = match setup.await {
        Ok(ready) => {
            let _ = connected.send(Ok(()));
            ready
        }
        Err(e) => {
            let _ = connected.send(Err(format!("broker {url}: {e}")));
            return;
        }
    };
    // One forwarding task per consumer; the loop below takes deliveries from all of them.
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let mut forwarders = JoinSet::new();
    for (route, channel, mut consumer) in consumers {
        let tx = tx.clone();
        forwarders.spawn(async move {
            let _channel = channel; // the consumer lives as long as its channel
            while let Some(delivery) = consumer.next().await {
                if tx.send((Arc::clone(&route), delivery)).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            next = rx.recv() => {
                let Some((route, delivery)) = next else { break };
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(route = %route.name, error = %e, "consumer failed");
                        continue;
                    }
                };
                let mediator = Arc::clone(&mediator);
                let publisher = publisher.clone();
                in_flight.spawn(async move { handle(&mediator, &publisher, &route, delivery).await });
            }
            _ = shutdown.changed() => break,
        }
        while in_flight.try_join_next().is_some() {}
    }
    forwarders.abort_all();
    drop(rx);
    tracing::info!("AMQP ingress: stopped consuming; finishing deliveries in hand");
    while in_flight.join_next().await.is_some() {}
    let _ = connection.close(200, "millrace shutting down".into()).await;
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

async fn handle(
    mediator: &Mediator,
    publisher: &AmqpPublisher,
    route: &Arc<Route>,
    delivery: Delivery,
) {
    let properties = &delivery.properties;
    let given_id = properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .filter(|s| !s.is_empty());
    // Deduplication needs the sender's id; a generated one differs on every redelivery.
    let dedupe = given_id.as_ref().and(mediator.idempotency.as_ref());
    let id = given_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    if let Some(store) = dedupe {
        match tokio::task::block_in_place(|| store.processed(&route.name, &id)) {
            Ok(true) => {
                tracing::info!(route = %route.name, message_id = %id, redelivered = delivery.redelivered, "already settled: acknowledged without a second run");
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::warn!(route = %route.name, message_id = %id, error = %e, "ack failed; the broker redelivers");
                }
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(route = %route.name, message_id = %id, error = %e, "idempotency store unreadable; mediating")
            }
        }
    }
    let headers = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(k, v)| header_text(v).map(|v| (k.as_str().to_ascii_lowercase(), v)))
                .collect()
        })
        .unwrap_or_default();
    let message = Message {
        id: id.clone(),
        plant: route.plant.clone(),
        route: route.name.clone(),
        content_type: properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| "application/octet-stream".into()),
        headers,
        body: delivery.data.clone(),
    };
    let Ok(slot) = Arc::clone(&mediator.slots).acquire_owned().await else {
        return;
    };
    let worker = Arc::clone(route);
    let input = message.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let result = chain::run(&worker, &input);
        drop(slot);
        result
    })
    .await;
    let settled = match outcome {
        Err(e) => Err(format!("the mediation task failed: {e}")),
        Ok(Ok(outputs)) => match (route.sink, &route.webhook) {
            (Sink::Http, Some(webhook)) => mediator
                .webhooks
                .deliver(webhook, &outputs)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            _ => publisher
                .publish(route, &outputs)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        },
        Ok(Err(failure)) if matches!(failure.failure, StepFailure::RetryLater(_)) => {
            Err(failure.reason())
        }
        Ok(Err(failure)) => {
            tracing::warn!(route = %route.name, message_id = %id, step = failure.step, plugin = %failure.plugin.name, "dead-lettered to the broker: {}", failure.reason());
            publisher
                .dead_letter(
                    route,
                    &message,
                    properties,
                    delivery.exchange.as_str(),
                    delivery.routing_key.as_str(),
                    1 + u32::from(delivery.redelivered),
                    &failure,
                )
                .await
                .map_err(|e| e.to_string())
        }
    };
    let settled = match (settled, dedupe) {
        (Ok(()), Some(store)) => {
            tokio::task::block_in_place(|| store.mark_processed(&route.name, &id))
                .map_err(|e| format!("could not record the settled id: {e}"))
        }
        (other, _) => other,
    };
    let acked = match settled {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(why) => {
            tracing::warn!(route = %route.name, message_id = %id, "not settled, the broker will redeliver: {why}");
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
    };
    if let Err(e) = acked {
        tracing::warn!(route = %route.name, message_id = %id, error = %e, "ack/nack failed; the broker redelivers");
    }
}
