//! MQTT 5 (rumqttc), every part of it: the session (`session`: one connection, manual
//! acknowledgements in arrival order, one publish in hand), the source (`source`: topic filters
//! of routes, retries in place, local dead letters), the sink half (publishing outputs with a
//! topic template, CloudEvents over MQTT), and its configuration sections (`config`). Nothing
//! outside this folder speaks rumqttc.

pub mod config;
pub mod session;
pub mod source;

use crate::config::{Sink, Source};
use crate::control::reload::Reloadable;
use crate::pipeline::{Pipeline, Readiness, Ready};
use crate::plugin::bindings::types::Message;
use crate::route::{Route, RouteDiff};
use session::{Link, MqttLink, PublishError};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Messages the broker may have unacknowledged with this host at once (MQTT receive maximum).
pub const RECEIVE_MAXIMUM: u16 = 64;
/// Largest MQTT packet the host takes (16 MiB).
pub const MAX_PACKET_BYTES: u32 = 16 << 20;

/// The MQTT transport of a host whose routes use MQTT.
pub struct Mqtt {
    pub link: Arc<MqttLink>,
    pub pipeline: Arc<Pipeline>,
}

impl crate::pipeline::Source for Mqtt {
    /// Run in `background` until `stopped`: the session (subscribing the routes' filters) and
    /// the source serving what arrives.
    fn start<'a>(
        self: Arc<Self>,
        background: &'a mut JoinSet<()>,
        stopped: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        let (arrive, arrived) = mpsc::channel(usize::from(RECEIVE_MAXIMUM));
        background.spawn(session::supervise(
            Arc::clone(&self.link),
            arrive,
            stopped.clone(),
        ));
        background.spawn(source::consume(Arc::clone(&self), arrived, stopped));
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Whether any of `routes` takes from or publishes to MQTT.
pub fn used_by(routes: &[Arc<Route>]) -> bool {
    routes
        .iter()
        .any(|r| r.source == Source::Mqtt || r.sink == Sink::Mqtt)
}

/// The topic filters (and their QoS) the routes take.
pub fn filters(routes: &[Arc<Route>]) -> std::collections::BTreeMap<String, u8> {
    let mut filters = std::collections::BTreeMap::new();
    for route in routes.iter().filter(|r| r.source == Source::Mqtt) {
        for filter in &route.mqtt.topics {
            let qos = filters.entry(filter.clone()).or_insert(route.mqtt.qos);
            *qos = (*qos).max(route.mqtt.qos);
        }
    }
    filters
}

/// Publish `outputs` of `route` to their topics, each acknowledged by the broker. A CloudEvent
/// (JSON with `specversion`) goes in structured mode: the event as the payload, content type
/// `application/cloudevents+json`, and its attributes also as MQTT 5 user properties (the
/// CloudEvents MQTT binding allows both); anything else goes as it is, with its content type.
pub async fn publish(
    link: &MqttLink,
    route: &Route,
    outputs: &[Message],
) -> Result<usize, PublishError> {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    for output in outputs {
        let names = config::Names {
            plant: &output.plant,
            route: &output.route,
            uns: &route.mqtt.uns,
        };
        let topic = config::topic(
            &route.mqtt.topic,
            &names,
            &output.content_type,
            &output.body,
        );
        let state_topic = route
            .mqtt
            .state_topic
            .as_ref()
            .map(|t| config::topic(t, &names, &output.content_type, &output.body));
        let mut user_properties = vec![
            ("message-id".to_string(), output.id.clone()),
            ("millrace-plant".to_string(), output.plant.clone()),
            ("millrace-route".to_string(), output.route.clone()),
            ("millrace-lineage".to_string(), route.lineage().to_string()),
        ];
        let event = serde_json::from_slice::<serde_json::Value>(&output.body)
            .ok()
            .filter(|e| e.get("specversion").is_some());
        if let Some(serde_json::Value::Object(attributes)) = &event {
            for (name, value) in attributes {
                if name == "data" || name == "data_base64" {
                    continue;
                }
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                user_properties.push((name.clone(), text));
            }
        }
        let properties = PublishProperties {
            content_type: Some(output.content_type.clone()),
            user_properties,
            ..Default::default()
        };
        if let Some(state_topic) = state_topic {
            // The current state per subject: retained, so a subscriber arriving later gets it.
            link.publish(
                state_topic,
                route.mqtt.qos,
                true,
                output.body.clone(),
                properties.clone(),
            )
            .await?;
        }
        link.publish(
            topic,
            route.mqtt.qos,
            route.mqtt.retain,
            output.body.clone(),
            properties,
        )
        .await?;
    }
    Ok(outputs.len())
}

/// MQTT's part in a configuration reload.
pub struct MqttReload {
    pub link: Option<Arc<MqttLink>>,
}

impl Reloadable for MqttReload {
    fn needs_restart(&self, routes: &[Arc<Route>]) -> Vec<String> {
        if self.link.is_none() && used_by(routes) {
            vec!["a route now uses MQTT (the host started without it)".to_string()]
        } else {
            Vec::new()
        }
    }

    fn reloaded(&self, diff: &RouteDiff) -> bool {
        let touched = diff
            .touched()
            .any(|r| r.source == Source::Mqtt || r.sink == Sink::Mqtt);
        if let Some(link) = &self.link
            && touched
        {
            // New filters are subscribed, dropped ones unsubscribed, on the same session.
            link.subscribe_routes();
        }
        false
    }
}

/// `/readyz`'s MQTT entry: connected, or why not.
impl Ready for Mqtt {
    fn readiness(&self) -> Readiness {
        let state = match self.link.link() {
            Link::Up => Ok("connected"),
            Link::Down { reason, since } => {
                let for_s = since.elapsed().map_or(0, |d| d.as_secs());
                Err(format!(
                    "the MQTT broker is not connected (for {for_s} s): {reason}"
                ))
            }
        };
        Readiness {
            name: "mqtt",
            state,
            facts: Vec::new(),
        }
    }
}

/// Sink `mqtt`: each output published to its topic and acknowledged by the broker (no hold yet:
/// [`Via::Held`] publishes too).
///
/// [`Via::Held`]: crate::pipeline::sinks::Via::Held
pub struct MqttSink {
    pub link: Arc<MqttLink>,
}

impl crate::pipeline::sinks::Sink for MqttSink {
    fn deliver<'a>(
        &'a self,
        route: &'a Route,
        outputs: Vec<Message>,
        _via: crate::pipeline::sinks::Via,
    ) -> crate::pipeline::sinks::Delivering<'a> {
        use crate::pipeline::sinks::{Delivered, DeliveryError};
        Box::pin(async move {
            publish(&self.link, route, &outputs)
                .await
                .map(Delivered::Published)
                .map_err(|e| DeliveryError::Unavailable(e.to_string()))
        })
    }
}
