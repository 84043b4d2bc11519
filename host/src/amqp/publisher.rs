//! Sink `amqp`: outputs are published to the route's exchange (durable topic) as persistent
//! messages on a channel in confirm mode; a publish counts only when the broker confirmed it.
//!
//! Message properties follow the CloudEvents AMQP binding for structured mode: the body is the
//! event, `content-type` is `application/cloudevents+json`, `message-id` the output's id (so
//! consumers deduplicate); `millrace-plant` and `millrace-route` headers name where it came from.

use crate::pipeline::chain::Failure;
use crate::plugin::PluginId;
use crate::plugin::bindings::types::Message;
use crate::route::Route;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};

/// Why outputs did not reach the broker; every cause is worth a redelivery.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused (nack) output {0}")]
    Nacked(String),
    /// No queue is bound where the message was published: it would have vanished.
    #[error(
        "no queue takes message {id} (exchange {exchange:?}, routing key {routing_key:?}); bind one"
    )]
    Unroutable {
        id: String,
        exchange: String,
        routing_key: String,
    },
}

/// What the broker's confirm of message `id` says: taken (and routed to a queue), or why not.
fn confirmed(id: &str, confirmation: lapin::Confirmation) -> Result<(), PublishError> {
    use lapin::Confirmation;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable {
            id: id.to_string(),
            exchange: returned.delivery.exchange.to_string(),
            routing_key: returned.delivery.routing_key.to_string(),
        }),
        Confirmation::Nack(_) => Err(PublishError::Nacked(id.to_string())),
        // The channel is in confirm mode: an answer without a confirm means it is not usable.
        Confirmation::NotRequested => Err(PublishError::Broker(lapin::Error::from(
            lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Closed, "no confirm"),
        ))),
    }
}

impl PublishError {
    /// Whether the channel is gone (reconnect), rather than one message refused.
    pub fn channel_lost(&self) -> bool {
        matches!(self, PublishError::Broker(_))
    }
}

/// A confirm-mode channel shared by every route that publishes.
#[derive(Clone)]
pub struct AmqpPublisher {
    channel: Channel,
    /// Whether outputs carry `millrace-plant`, `millrace-route` and `millrace-lineage`
    /// (`host.amqp_output_headers`). Without them (and no trace context to carry) an output has
    /// no header table, which RabbitMQ handles for markedly less CPU per message
    /// (docs/performance.md).
    output_headers: bool,
}

const PERSISTENT: u8 = 2;

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Properties of a persistent message with an id (outputs and dead letters alike).
/// Persistent properties; no header table at all when `headers` is empty.
fn persistent(content_type: &str, message_id: &str, headers: FieldTable) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from(content_type))
        .with_message_id(ShortString::from(message_id))
        .with_delivery_mode(PERSISTENT);
    if headers.inner().is_empty() {
        properties
    } else {
        properties.with_headers(headers)
    }
}

/// Why an input goes to the dead-letter queue: what the headers say.
pub struct Verdict {
    /// `rejected`, `trap`, `deadline`, `memory-cap`, `limit`, or `attempts-exhausted`.
    pub kind: &'static str,
    pub reason: String,
    /// The step that failed (1-based) and its plugin, when a plugin failed.
    pub step: Option<(u32, PluginId)>,
}

impl Verdict {
    /// A plugin's permanent failure.
    pub fn failed(failure: &Failure) -> Verdict {
        Verdict {
            kind: failure.failure.kind(),
            reason: failure.reason(),
            step: Some((failure.step, failure.plugin.clone())),
        }
    }

    /// Transient failures until the route's attempts ran out; `last` says the last one.
    pub fn exhausted(attempts: u32, last: String, failure: Option<&Failure>) -> Verdict {
        Verdict {
            kind: "attempts-exhausted",
            reason: format!("gave up after {attempts} attempt(s); the last: {last}"),
            step: failure.map(|f| (f.step, f.plugin.clone())),
        }
    }
}

/// Header names the host writes on retried and dead-lettered messages.
pub mod headers {
    /// Attempts made so far (integer).
    pub const ATTEMPTS: &str = "x-millrace-attempts";
    pub const FIRST_FAILURE: &str = "x-millrace-first-failure";
    pub const LAST_FAILURE: &str = "x-millrace-last-failure";
    pub const ORIGINAL_EXCHANGE: &str = "x-millrace-original-exchange";
    pub const ORIGINAL_ROUTING_KEY: &str = "x-millrace-original-routing-key";
    /// How many times the message was re-injected from the dead-letter queue (integer).
    pub const REPLAY: &str = "x-millrace-replay";
    /// Prefix of every header the host writes; plugins do not see them.
    pub const PREFIX: &str = "x-millrace-";
}

/// An integer header (any AMQP integer type), or a string holding one.
pub fn header_number(table: &FieldTable, name: &str) -> Option<u64> {
    match table.inner().get(name)? {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    }
}

/// A string header.
pub fn header_string(table: &FieldTable, name: &str) -> Option<String> {
    match table.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// Where a delivery first came from: kept in headers across retries, else where it is now.
fn origin(table: &FieldTable, exchange: &str, routing_key: &str) -> (String, String) {
    (
        header_string(table, headers::ORIGINAL_EXCHANGE).unwrap_or_else(|| exchange.to_string()),
        header_string(table, headers::ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| routing_key.to_string()),
    )
}

/// A delivery as it arrived, for retries and dead letters.
pub struct Arrived<'a> {
    pub message_id: &'a str,
    pub body: &'a [u8],
    pub properties: &'a BasicProperties,
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

impl AmqpPublisher {
    pub async fn open(
        connection: &Connection,
        output_headers: bool,
    ) -> Result<AmqpPublisher, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(AmqpPublisher {
            channel,
            output_headers,
        })
    }

    /// Publish one persistent message, `mandatory` (a message no queue takes comes back rather
    /// than vanishing); the returned confirm resolves when the broker took it.
    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<lapin::PublisherConfirm, lapin::Error> {
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
    }

    /// Publish each output to its exchange with its routing key and lineage, in order, and wait until the
    /// broker confirmed every one.
    pub async fn publish_each(
        &self,
        outputs: &[(&str, &str, &str, &Message)],
    ) -> Result<usize, PublishError> {
        let mut pending = Vec::new();
        for &(exchange, key, lineage, output) in outputs {
            let mut headers = FieldTable::default();
            if self.output_headers {
                headers.insert("millrace-plant".into(), text(&output.plant));
                headers.insert("millrace-route".into(), text(&output.route));
                headers.insert("millrace-lineage".into(), text(lineage));
            }
            for (name, value) in crate::telemetry::trace::carried(&output.headers) {
                headers.insert(name.into(), text(value));
            }
            let properties = persistent(&output.content_type, &output.id, headers);
            let confirm = self.send(exchange, key, &output.body, properties).await?;
            pending.push((output.id.as_str(), confirm));
        }
        let sent = pending.len();
        for (id, confirm) in pending {
            confirmed(id, confirm.await?)?;
        }
        Ok(sent)
    }

    /// Publish `outputs` to the route's exchange and wait until the broker confirmed each.
    pub async fn publish(&self, route: &Route, outputs: &[Message]) -> Result<usize, PublishError> {
        let keys: Vec<String> = outputs
            .iter()
            .map(|o| routing_key(&route.amqp.routing_key, o))
            .collect();
        let exchange = route.amqp.exchange.as_str();
        let lineage = route.lineage();
        let items: Vec<(&str, &str, &str, &Message)> = keys
            .iter()
            .zip(outputs)
            .map(|(key, output)| (exchange, key.as_str(), lineage, output))
            .collect();
        self.publish_each(&items).await
    }

    /// Park a delivery whose attempt `attempts` failed for a transient reason in the route's
    /// delay queue for `delay`; it comes back to the source queue when that expires. Confirmed.
    pub async fn retry(
        &self,
        route: &Route,
        input: &Arrived<'_>,
        attempts: u32,
        delay: std::time::Duration,
        why: &str,
    ) -> Result<(), PublishError> {
        let mut table = input.properties.headers().clone().unwrap_or_default();
        let (exchange, key) = origin(&table, input.exchange, input.routing_key);
        if header_string(&table, headers::FIRST_FAILURE).is_none() {
            table.insert(
                headers::FIRST_FAILURE.into(),
                text(&crate::durable::now_rfc3339()),
            );
        }
        table.insert(headers::ORIGINAL_EXCHANGE.into(), text(&exchange));
        table.insert(headers::ORIGINAL_ROUTING_KEY.into(), text(&key));
        table.insert(headers::LAST_FAILURE.into(), text(why));
        table.insert(headers::ATTEMPTS.into(), AMQPValue::LongUInt(attempts));
        let properties = input
            .properties
            .clone()
            .with_delivery_mode(PERSISTENT)
            .with_headers(table);
        let queue = route.amqp.retry_queue(delay);
        let confirm = self.send("", &queue, input.body, properties).await?;
        confirmed(input.message_id, confirm.await?)?;
        Ok(())
    }

    /// Put a delivery on the route's dead-letter queue with why, and wait for the broker's
    /// confirm. Headers follow `x-death`'s spirit: reason, kind, plugin, version, digest, step,
    /// the original exchange and routing key, the first failure, the attempts made.
    pub async fn dead_letter(
        &self,
        route: &Route,
        input: &Arrived<'_>,
        attempts: u32,
        verdict: &Verdict,
    ) -> Result<(), PublishError> {
        let mut table = input.properties.headers().clone().unwrap_or_default();
        let (exchange, key) = origin(&table, input.exchange, input.routing_key);
        let first = header_string(&table, headers::FIRST_FAILURE)
            .unwrap_or_else(crate::durable::now_rfc3339);
        let (step, plugin) = match &verdict.step {
            Some((step, plugin)) => (step.to_string(), Some(plugin)),
            None => (String::new(), None),
        };
        for (name, value) in [
            ("x-millrace-reason", verdict.reason.as_str()),
            ("x-millrace-kind", verdict.kind),
            ("x-millrace-plugin", plugin.map_or("", |p| p.name.as_str())),
            (
                "x-millrace-version",
                plugin.map_or("", |p| p.version.as_str()),
            ),
            (
                "x-millrace-digest",
                plugin.map_or("", |p| p.digest.as_str()),
            ),
            ("x-millrace-step", step.as_str()),
            ("x-millrace-route", route.name.as_str()),
            ("x-millrace-lineage", route.lineage()),
            ("x-millrace-plant", route.plant.as_str()),
            (headers::ORIGINAL_EXCHANGE, exchange.as_str()),
            (headers::ORIGINAL_ROUTING_KEY, key.as_str()),
            (headers::FIRST_FAILURE, first.as_str()),
        ] {
            table.insert(name.into(), text(value));
        }
        table.insert(headers::ATTEMPTS.into(), AMQPValue::LongUInt(attempts));
        let properties = input
            .properties
            .clone()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(ShortString::from(input.message_id))
            .with_headers(table);
        let confirm = self
            .send(&route.amqp.dead_letter, "", input.body, properties)
            .await?;
        confirmed(input.message_id, confirm.await?)?;
        crate::pipeline::chain::counted(route, verdict.kind);
        Ok(())
    }

    /// Send a dead letter back to the route's source queue for another run (`dlq replay`):
    /// the failure headers are dropped, the replay count goes up. Confirmed.
    pub async fn reinject(
        &self,
        route: &Route,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<u64, PublishError> {
        let old = properties.headers().clone().unwrap_or_default();
        let replay = header_number(&old, headers::REPLAY).unwrap_or(0) + 1;
        let mut table = FieldTable::default();
        for (name, value) in old.inner() {
            if !name.as_str().starts_with(headers::PREFIX) && name.as_str() != "x-death" {
                table.insert(name.clone(), value.clone());
            }
        }
        table.insert(
            headers::REPLAY.into(),
            AMQPValue::LongLongInt(replay as i64),
        );
        let properties = properties.clone().with_headers(table);
        let confirm = self.send("", &route.amqp.queue, body, properties).await?;
        confirmed("", confirm.await?)?;
        Ok(replay)
    }
}

/// The routing key for `output` from `template`: `{type}` is the CloudEvent `type` of a
/// structured-mode body (else the content type), `{subject}` its `subject` (else empty),
/// `{plant}` and `{route}` the output's.
pub fn routing_key(template: &str, output: &Message) -> String {
    /// The two attributes a template can name; the rest of the event is skipped unparsed.
    #[derive(Default, serde::Deserialize)]
    struct Attributes {
        #[serde(rename = "type")]
        ty: Option<String>,
        subject: Option<String>,
    }
    let event = if template.contains("{type}") || template.contains("{subject}") {
        serde_json::from_slice(&output.body).unwrap_or_default()
    } else {
        Attributes::default()
    };
    template
        .replace(
            "{type}",
            event.ty.as_deref().unwrap_or(&output.content_type),
        )
        .replace("{subject}", event.subject.as_deref().unwrap_or_default())
        .replace("{plant}", &output.plant)
        .replace("{route}", &output.route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_come_from_the_event() {
        let output = Message {
            id: "e-1".into(),
            plant: "plant-north".into(),
            route: "mes".into(),
            content_type: "application/cloudevents+json".into(),
            headers: Vec::new(),
            body: br#"{"type":"millrace.production.completed.v1","subject":"WO-1"}"#.to_vec(),
        };
        assert_eq!(
            routing_key("{plant}.{type}", &output),
            "plant-north.millrace.production.completed.v1"
        );
        assert_eq!(routing_key("{route}/{subject}", &output), "mes/WO-1");
        let plain = Message {
            body: b"x".to_vec(),
            content_type: "text/plain".into(),
            ..output
        };
        assert_eq!(routing_key("{type}.{subject}", &plain), "text/plain.");
    }
}
