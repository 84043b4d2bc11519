//! Canonical events as CloudEvents 1.0 in structured content mode (JSON).

use crate::Message;
use serde::Serialize;

/// Media type of a CloudEvent in structured content mode.
pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json";

/// A CloudEvents 1.0 event with JSON data, written in structured content mode: the attributes
/// and the data travel together in the body, so an event survives hops that drop headers.
///
/// `D` is the type of `data`: any `Serialize` type (a typed struct serializes faster than a
/// `serde_json::Value`, which is the default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CloudEvent<D: Serialize = serde_json::Value> {
    specversion: &'static str,
    /// Event id; derive it from the source message so redeliveries keep it.
    pub id: String,
    /// Context in which the event happened, e.g. `/plants/plant-a/mes`.
    pub source: String,
    /// Event type, naming the event and its major version, e.g. `millrace.production.completed.v1`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Business key of the event, e.g. the work order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// When the business fact happened, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    datacontenttype: &'static str,
    /// URI of the schema of `data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// The event payload.
    pub data: D,
}

impl<D: Serialize> CloudEvent<D> {
    /// An event with the required attributes and JSON data.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
        data: D,
    ) -> Self {
        CloudEvent {
            specversion: "1.0",
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            subject: None,
            time: None,
            datacontenttype: "application/json",
            dataschema: None,
            data,
        }
    }

    /// Set `subject`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Set `time` (RFC 3339).
    pub fn time(mut self, time: impl Into<String>) -> Self {
        self.time = Some(time.into());
        self
    }

    /// Set `dataschema`.
    pub fn dataschema(mut self, uri: impl Into<String>) -> Self {
        self.dataschema = Some(uri.into());
        self
    }

    /// The event as an output message of `input`: the event id becomes the message id, the body
    /// is the structured-mode JSON, the content type `application/cloudevents+json`.
    pub fn into_message(self, input: &Message) -> Message {
        let body =
            serde_json::to_vec(&self).expect("a CloudEvent with JSON data always serializes");
        Message {
            id: self.id,
            plant: input.plant.clone(),
            route: input.route.clone(),
            content_type: CLOUDEVENTS_CONTENT_TYPE.to_string(),
            headers: Vec::new(),
            body,
        }
    }
}
