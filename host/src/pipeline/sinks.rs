//! Where a route's outputs go: the one `match` on the sink kind. `reply` hands them back to the
//! source (the HTTP caller's answer), `http` posts them to the webhook, `amqp` publishes them on
//! the caller's broker session (confirmed) or, when the caller has none, keeps them in the
//! outbox on disk for the broker.

use crate::amqp::outbox::{Outbox, OutboxError};
use crate::amqp::publisher::{AmqpPublisher, PublishError, routing_key};
use crate::config::Sink;
use crate::http::webhook::{self, WebhookClient};
use crate::plugin::bindings::types::Message;
use crate::route::Route;
use std::sync::Arc;

/// The sinks' clients and stores.
#[derive(Clone, Default)]
pub struct Sinks {
    /// Client of the routes whose sink is `http`.
    pub webhooks: WebhookClient,
    /// Outputs for the broker from sources that hold no broker session; when a route needs it.
    pub outbox: Option<Arc<Outbox>>,
}

/// How a broker sink is reached.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    /// The outbox (acknowledged once on disk; published when the broker is up).
    Outbox,
    /// The source's own broker session (acknowledged once the broker confirmed).
    Publisher(&'a AmqpPublisher),
}

/// Where the outputs went.
#[derive(Debug)]
pub enum Delivered {
    /// Sink `reply`: the outputs, for the source to answer with.
    Reply(Vec<Message>),
    /// Sink `http`: this many taken (2xx) by the webhook.
    Webhook(usize),
    /// Sink `amqp` on the source's session: this many confirmed by the broker.
    Published(usize),
    /// Sink `amqp` through the outbox: `accepted` on disk, `waiting` in the outbox now.
    Held { accepted: usize, waiting: usize },
}

/// Why the outputs were not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The webhook did not take them (worth a retry).
    #[error(transparent)]
    Webhook(#[from] webhook::DeliveryError),
    /// The broker did not confirm them.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The outbox is full, or could not keep them.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The route publishes to the broker but this process has no outbox.
    #[error("route {0} publishes to the broker but no outbox is open")]
    NoOutbox(String),
}

impl Sinks {
    /// Deliver `outputs` of `route` to its sink.
    pub async fn deliver(
        &self,
        route: &Route,
        outputs: Vec<Message>,
        via: Via<'_>,
    ) -> Result<Delivered, DeliveryError> {
        match (route.sink, &route.webhook, via) {
            (Sink::Http, Some(webhook), _) => Ok(Delivered::Webhook(
                self.webhooks
                    .deliver(webhook, route.lineage(), &outputs)
                    .await?,
            )),
            (Sink::Amqp, _, Via::Publisher(publisher)) => Ok(Delivered::Published(
                publisher.publish(route, &outputs).await?,
            )),
            (Sink::Amqp, _, Via::Outbox) => {
                let outbox = self
                    .outbox
                    .as_ref()
                    .ok_or_else(|| DeliveryError::NoOutbox(route.name.clone()))?;
                let keyed: Vec<(String, Message)> = outputs
                    .into_iter()
                    .map(|o| (routing_key(&route.amqp.routing_key, &o), o))
                    .collect();
                let accepted = keyed.len();
                tokio::task::block_in_place(|| {
                    outbox.put(&route.amqp.exchange, route.lineage(), &keyed)
                })?;
                Ok(Delivered::Held {
                    accepted,
                    waiting: outbox.held(),
                })
            }
            _ => Ok(Delivered::Reply(outputs)),
        }
    }
}
