//! Sink `amqp`: outputs are published to the route's exchange (durable topic) as persistent
//! messages on a channel in confirm mode; a publish counts only when the broker confirmed it.
//! Also the topology every broker route needs, and the route's dead-letter queue.
//!
//! Message properties follow the CloudEvents AMQP binding for structured mode: the body is the
//! event, `content-type` is `application/cloudevents+json`, `message-id` the output's id (so
//! consumers deduplicate); `millrace-plant` and `millrace-route` headers name where it came from.

use crate::chain::Failure;
use crate::plugin::StepFailure;
use crate::plugin::bindings::types::Message;
use crate::route::Route;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

/// Why outputs did not reach the broker; every cause is worth a redelivery.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused (nack) output {0}")]
    Nacked(String),
}

/// A confirm-mode channel shared by every route that publishes.
#[derive(Clone)]
pub struct AmqpPublisher {
    channel: Channel,
}

const PERSISTENT: u8 = 2;

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Properties of a persistent message with an id (outputs and dead letters alike).
fn persistent(content_type: &str, message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from(content_type))
        .with_message_id(ShortString::from(message_id))
        .with_delivery_mode(PERSISTENT)
        .with_headers(headers)
}

impl AmqpPublisher {
    pub async fn open(connection: &Connection) -> Result<AmqpPublisher, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(AmqpPublisher { channel })
    }

    /// Declare what `route` uses: its sink exchange, its source queue (dead-lettering into its
    /// dead-letter exchange) and the dead-letter exchange and queue. Idempotent.
    pub async fn declare(&self, route: &Route) -> Result<(), lapin::Error> {
        let a = &route.amqp;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .exchange_declare(
                a.dead_letter.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        self.channel
            .queue_declare(
                a.dead_letter.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
        self.channel
            .queue_bind(
                a.dead_letter.as_str().into(),
                a.dead_letter.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        if route.sink == crate::config::Sink::Amqp {
            self.channel
                .exchange_declare(
                    a.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
        }
        if route.source == crate::config::Source::Amqp {
            let mut args = FieldTable::default();
            args.insert("x-dead-letter-exchange".into(), text(&a.dead_letter));
            self.channel
                .queue_declare(
                    a.queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    args,
                )
                .await?;
        }
        Ok(())
    }

    /// Publish `outputs` to the route's exchange and wait until the broker confirmed each.
    pub async fn publish(&self, route: &Route, outputs: &[Message]) -> Result<usize, PublishError> {
        let mut pending = Vec::with_capacity(outputs.len());
        for output in outputs {
            let key = routing_key(&route.amqp.routing_key, output);
            let mut headers = FieldTable::default();
            headers.insert("millrace-plant".into(), text(&output.plant));
            headers.insert("millrace-route".into(), text(&output.route));
            let properties = persistent(&output.content_type, &output.id, headers);
            let confirm = self
                .channel
                .basic_publish(
                    route.amqp.exchange.as_str().into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &output.body,
                    properties,
                )
                .await?;
            pending.push((output.id.clone(), confirm));
        }
        for (id, confirm) in pending {
            if confirm.await?.is_nack() {
                return Err(PublishError::Nacked(id));
            }
        }
        Ok(outputs.len())
    }

    /// Put the input of a permanent failure on the route's dead-letter queue with why, and
    /// wait for the broker's confirm. Headers follow `x-death`'s spirit: reason, plugin,
    /// version, digest, step, kind, the original exchange and routing key, the first failure.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, each value distinct"
    )]
    pub async fn dead_letter(
        &self,
        route: &Route,
        input: &Message,
        properties: &BasicProperties,
        exchange: &str,
        routing_key: &str,
        attempts: u32,
        failure: &Failure,
    ) -> Result<(), PublishError> {
        let mut headers = properties.headers().clone().unwrap_or_default();
        let kind = match &failure.failure {
            StepFailure::Rejected(_) => "rejected",
            StepFailure::RetryLater(_) => "retry-later",
            StepFailure::Deadline(_) => "deadline",
            StepFailure::MemoryCap(_) => "memory-cap",
            StepFailure::Trap(_) => "trap",
        };
        let now = crate::deadletter::now_rfc3339();
        let first = match headers.inner().get("x-millrace-first-failure") {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            _ => now,
        };
        for (name, value) in [
            ("x-millrace-reason", failure.reason()),
            ("x-millrace-kind", kind.to_string()),
            ("x-millrace-plugin", failure.plugin.name.clone()),
            ("x-millrace-version", failure.plugin.version.clone()),
            ("x-millrace-digest", failure.plugin.digest.clone()),
            ("x-millrace-step", failure.step.to_string()),
            ("x-millrace-route", route.name.clone()),
            ("x-millrace-plant", route.plant.clone()),
            ("x-millrace-original-exchange", exchange.to_string()),
            ("x-millrace-original-routing-key", routing_key.to_string()),
            ("x-millrace-first-failure", first),
        ] {
            headers.insert(name.into(), text(&value));
        }
        headers.insert("x-millrace-attempts".into(), AMQPValue::LongUInt(attempts));
        let properties = persistent(&input.content_type, &input.id, headers);
        let confirm = self
            .channel
            .basic_publish(
                route.amqp.dead_letter.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                &input.body,
                properties,
            )
            .await?;
        if confirm.await?.is_nack() {
            return Err(PublishError::Nacked(input.id.clone()));
        }
        Ok(())
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
