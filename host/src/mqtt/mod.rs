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
use crate::outbox::Outbox;
use crate::pipeline::{Background, Pipeline, Readiness, Ready};
use crate::plugin::bindings::types::Message;
use crate::route::{Route, RouteDiff};
use session::{Link, MqttLink, PublishError};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Messages the broker may have unacknowledged with this host at once (MQTT receive maximum).
pub const RECEIVE_MAXIMUM: u16 = 64;
/// Largest MQTT packet the host takes (16 MiB).
pub const MAX_PACKET_BYTES: u32 = 16 << 20;

/// The MQTT transport of a host whose routes use MQTT.
pub struct Mqtt {
    pub link: Arc<MqttLink>,
    pub pipeline: Arc<Pipeline>,
    /// Outputs for MQTT from other sources, while the broker is away; when a route needs it.
    pub outbox: Option<Arc<Outbox>>,
    /// Writer of settled message ids (group commit), when the pipeline keeps them: a
    /// redelivery of a message whose sender gave it an id is not mediated twice.
    pub settled: Option<crate::idempotency::SettledLog>,
    /// Messages received and not yet settled, at most (`host.mqtt_max_in_hand`).
    pub max_in_hand: usize,
    /// Ids settled lately by this host, so that a copy on the same connection (which carries no
    /// DUP flag) is recognised without reading the store.
    pub recent: std::sync::Mutex<Recent>,
}

/// The last [`Recent::CAPACITY`] (route, message id) pairs settled here.
#[derive(Default)]
pub struct Recent {
    known: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl Recent {
    const CAPACITY: usize = 65_536;

    fn key(route: &str, id: &str) -> String {
        format!("{route}\0{id}")
    }

    pub fn contains(&self, route: &str, id: &str) -> bool {
        self.known.contains(&Self::key(route, id))
    }

    pub fn insert(&mut self, route: &str, id: &str) {
        let key = Self::key(route, id);
        if self.known.insert(key.clone()) {
            self.order.push_back(key);
            if self.order.len() > Self::CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.known.remove(&old);
            }
        }
    }
}

impl crate::pipeline::Source for Mqtt {
    /// Run in `background` until `stopped`: the session (subscribing the routes' filters) and
    /// the source serving what arrives.
    fn start<'a>(
        self: Arc<Self>,
        background: &'a mut Background,
        stopped: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        let (arrive, arrived) = mpsc::channel(usize::from(RECEIVE_MAXIMUM));
        background.spawn(
            "mqtt session",
            session::supervise(Arc::clone(&self.link), arrive, stopped.clone()),
        );
        background.spawn(
            "mqtt source",
            source::consume(Arc::clone(&self), arrived, stopped.clone()),
        );
        if let Some(outbox) = self.outbox.as_ref().map(Arc::clone) {
            let (link, routes) = (Arc::clone(&self.link), Arc::clone(&self.pipeline.routes));
            background.spawn("mqtt outbox", async move {
                drain(&outbox, &link, &routes, stopped).await
            });
        }
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

/// File name of the MQTT outbox inside the data directory (an entry's target is the topic, its
/// key `retain` or empty).
pub const OUTBOX_FILE: &str = "mqtt-outbox.sqlite";

/// Whether any of `routes` takes messages from a source without an MQTT session and publishes to
/// MQTT (its outputs wait in the MQTT outbox while the broker is away).
pub fn needs_outbox(routes: &[Arc<Route>]) -> bool {
    routes
        .iter()
        .any(|r| r.source != Source::Mqtt && r.sink == Sink::Mqtt)
}

/// Where `output` of `route` is published: the state topic (retained) first when the route has
/// one, then the topic; each with its retain flag.
fn topics(
    route: &Route,
    output: &Message,
    event: Option<&serde_json::Value>,
) -> Vec<(String, bool)> {
    let names = config::Names {
        plant: &output.plant,
        route: &output.route,
        uns: &route.mqtt.uns,
    };
    let topic = |t: &str| config::topic(t, &names, &output.content_type, event);
    let mut topics = Vec::with_capacity(2);
    if let Some(state) = &route.mqtt.state_topic {
        topics.push((topic(state), true));
    }
    topics.push((topic(&route.mqtt.topic), route.mqtt.retain));
    topics
}

/// What goes on the wire for `output`: its payload and MQTT 5 properties. A CloudEvent (JSON
/// with `specversion`) follows the CloudEvents MQTT binding: in structured mode the event is the
/// payload (content type `application/cloudevents+json`) and its attributes are also user
/// properties (the binding allows both); in binary mode (`binary`) its data is the payload, the
/// content type is its `datacontenttype` (default `application/json`) and its attributes are user
/// properties under their own names. Anything else goes as it is, with its content type. Every
/// output carries `message-id`, `millrace-plant`, `millrace-route` and `millrace-lineage`.
fn wire(
    output: &Message,
    lineage: &str,
    binary: bool,
    event: Option<&serde_json::Value>,
) -> (Vec<u8>, rumqttc::v5::mqttbytes::v5::PublishProperties) {
    let mut user_properties = vec![
        ("message-id".to_string(), output.id.clone()),
        ("millrace-plant".to_string(), output.plant.clone()),
        ("millrace-route".to_string(), output.route.clone()),
        ("millrace-lineage".to_string(), lineage.to_string()),
    ];
    for (name, value) in crate::telemetry::trace::carried(&output.headers) {
        user_properties.push((name.to_string(), value.to_string()));
    }
    let mut payload = None;
    let mut content_type = output.content_type.clone();
    let event = event.filter(|e| e.get("specversion").is_some());
    if let Some(serde_json::Value::Object(attributes)) = event {
        for (name, value) in attributes {
            // The trace context is written once, from the output's headers.
            if name == "data"
                || name == "data_base64"
                || (user_properties.iter().any(|(k, _)| k == name)
                    && (name == "traceparent" || name == "tracestate"))
            {
                continue;
            }
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            user_properties.push((name.clone(), text));
        }
        if binary {
            content_type = attributes
                .get("datacontenttype")
                .and_then(|v| v.as_str())
                .unwrap_or("application/json")
                .to_string();
            payload = Some(
                match (attributes.get("data"), attributes.get("data_base64")) {
                    (Some(serde_json::Value::String(text)), _)
                        if !content_type.contains("json") =>
                    {
                        text.clone().into_bytes()
                    }
                    (Some(data), _) => data.to_string().into_bytes(),
                    (None, Some(serde_json::Value::String(b64))) => {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .unwrap_or_default()
                    }
                    _ => Vec::new(),
                },
            );
        }
    }
    let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
        content_type: Some(content_type),
        user_properties,
        ..Default::default()
    };
    (payload.unwrap_or_else(|| output.body.clone()), properties)
}

/// Publish `outputs` of `route` to their topics, each acknowledged by the broker.
pub async fn publish(
    link: &MqttLink,
    route: &Route,
    outputs: &[Message],
) -> Result<usize, PublishError> {
    for output in outputs {
        // The body is read as JSON once, for the topics and the properties.
        let event = serde_json::from_slice::<serde_json::Value>(&output.body).ok();
        let binary = route.mqtt.cloudevents == "binary";
        let (payload, properties) = wire(output, route.lineage(), binary, event.as_ref());
        for (topic, retain) in topics(route, output, event.as_ref()) {
            link.publish(
                topic,
                route.mqtt.qos,
                retain,
                payload.clone(),
                properties.clone(),
            )
            .await?;
        }
    }
    Ok(outputs.len())
}

/// Publish what waits in `outbox` in the order it was accepted whenever the broker is up, until
/// `shutdown`; each entry deleted once the broker acknowledged it. QoS is the route's (1 when the
/// route is gone since).
pub async fn drain(
    outbox: &Outbox,
    link: &MqttLink,
    routes: &crate::route::Routes,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut state = link.watch();
    let mut pause = session::RECONNECT_MIN;
    while !*shutdown.borrow() {
        if !matches!(*state.borrow_and_update(), Link::Up) {
            tokio::select! {
                _ = state.changed() => continue,
                _ = shutdown.changed() => break,
            }
        }
        let batch = match tokio::task::block_in_place(|| outbox.oldest(64)) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "MQTT outbox unreadable");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                () = outbox.idle() => {}
                _ = state.changed() => {}
                _ = shutdown.changed() => break,
            }
            continue;
        }
        for waiting in batch {
            let route = routes.get(&waiting.output.route);
            let qos = route.as_ref().map_or(1, |r| r.mqtt.qos);
            let binary = route.is_some_and(|r| r.mqtt.cloudevents == "binary");
            let event = serde_json::from_slice::<serde_json::Value>(&waiting.output.body).ok();
            let (payload, properties) =
                wire(&waiting.output, &waiting.lineage, binary, event.as_ref());
            let sent = link
                .publish(
                    waiting.target.clone(),
                    qos,
                    waiting.key == "retain",
                    payload,
                    properties,
                )
                .await;
            match sent {
                Ok(()) => {
                    pause = session::RECONNECT_MIN;
                    if let Err(e) =
                        tokio::task::block_in_place(|| outbox.remove_through(waiting.seq))
                    {
                        tracing::error!(error = %e, "MQTT outbox: a published output could not be removed; it will be published again");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, waiting = outbox.held(), "MQTT outbox: publishing failed; kept for the next try");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        _ = shutdown.changed() => return,
                    }
                    pause = (pause * 2).min(session::RECONNECT_MAX);
                    break;
                }
            }
        }
    }
}

/// MQTT's part in a configuration reload.
pub struct MqttReload {
    pub link: Option<Arc<MqttLink>>,
    pub outbox: bool,
}

impl Reloadable for MqttReload {
    fn needs_restart(&self, routes: &[Arc<Route>]) -> Vec<String> {
        let mut needs = Vec::new();
        if self.link.is_none() && used_by(routes) {
            needs.push("a route now uses MQTT (the host started without it)".to_string());
        }
        if !self.outbox && needs_outbox(routes) {
            needs.push(
                "a route of another source now publishes to MQTT (it needs the MQTT outbox)"
                    .to_string(),
            );
        }
        needs
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
        let facts = match &self.outbox {
            Some(outbox) => vec![("mqtt_outbox_waiting", serde_json::json!(outbox.held()))],
            None => Vec::new(),
        };
        Readiness {
            name: "mqtt",
            state,
            facts,
        }
    }
}

/// Sink `mqtt`: [`Via::Direct`] (or no outbox) publishes each output to its topics and waits
/// for the broker's acknowledgements; [`Via::Held`] with an outbox keeps them on disk for the
/// drainer, which publishes them in order when the broker is up.
///
/// [`Via::Direct`]: crate::pipeline::sinks::Via::Direct
/// [`Via::Held`]: crate::pipeline::sinks::Via::Held
pub struct MqttSink {
    pub link: Option<Arc<MqttLink>>,
    pub outbox: Option<Arc<Outbox>>,
}

impl crate::pipeline::sinks::Sink for MqttSink {
    fn deliver<'a>(
        &'a self,
        route: &'a Route,
        outputs: Vec<Message>,
        via: crate::pipeline::sinks::Via,
    ) -> crate::pipeline::sinks::Delivering<'a> {
        use crate::pipeline::sinks::{Delivered, DeliveryError, Via};
        Box::pin(async move {
            match (via, &self.outbox, &self.link) {
                (Via::Held, Some(outbox), _) => {
                    let entries: Vec<_> = outputs
                        .iter()
                        .flat_map(|o| {
                            let event = serde_json::from_slice::<serde_json::Value>(&o.body).ok();
                            topics(route, o, event.as_ref())
                                .into_iter()
                                .map(|(topic, retain)| {
                                    let key = if retain { "retain" } else { "" };
                                    (topic, key.to_string(), o.clone())
                                })
                        })
                        .collect();
                    outbox
                        .hold(route.lineage(), &entries)
                        .map(|held| match held {
                            Delivered::Held { waiting, .. } => Delivered::Held {
                                accepted: outputs.len(),
                                waiting,
                            },
                            other => other,
                        })
                }
                (_, _, Some(link)) => publish(link, route, &outputs)
                    .await
                    .map(Delivered::Published)
                    .map_err(|e| DeliveryError::Unavailable(e.to_string())),
                _ => Err(DeliveryError::NoSink {
                    route: route.name.clone(),
                    kind: route.sink,
                }),
            }
        })
    }
}
