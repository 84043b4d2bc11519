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
    ///
    /// `plant` and `route` are left empty: the host sets every output's to the input's (the WIT
    /// contract), so copies made here would be thrown away, at a cost per output (two strings
    /// allocated and copied in the guest, lifted and freed by the host). [`TestHost::run`]
    /// sets them as the host does.
    ///
    /// [`TestHost::run`]: crate::TestHost::run
    pub fn into_message(self, _input: &Message) -> Message {
        let body = self
            .to_json()
            .expect("a CloudEvent with JSON data always serializes");
        Message {
            id: self.id,
            plant: String::new(),
            route: String::new(),
            content_type: CLOUDEVENTS_CONTENT_TYPE.to_string(),
            headers: Vec::new(),
            body,
        }
    }

    /// The event as JSON: the same bytes as `serde_json::to_vec(&event)`, written faster. The
    /// attributes' names (and the two fixed values) are constants: each string serde_json
    /// writes costs a scan and a copy of its own, which as Wasm is a large part of a small
    /// event's cost. The buffer starts at 512 bytes, a typical event's size, where serde_json's
    /// starts at 128 and grows twice (`docs/performance.md`, levers tried on 2026-12-04).
    fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        // `specversion` and `datacontenttype` are always "1.0" and "application/json" (`new`).
        out.extend_from_slice(b"{\"specversion\":\"1.0\"");
        attribute(&mut out, b",\"id\":", Some(&self.id))?;
        attribute(&mut out, b",\"source\":", Some(&self.source))?;
        attribute(&mut out, b",\"type\":", Some(&self.ty))?;
        attribute(&mut out, b",\"subject\":", self.subject.as_ref())?;
        attribute(&mut out, b",\"time\":", self.time.as_ref())?;
        out.extend_from_slice(b",\"datacontenttype\":\"application/json\"");
        attribute(&mut out, b",\"dataschema\":", self.dataschema.as_ref())?;
        attribute(&mut out, b",\"data\":", Some(&self.data))?;
        out.push(b'}');
        Ok(out)
    }
}

/// `name` (`,"name":`, a constant) and `value` as JSON, when there is a value.
fn attribute<T: Serialize>(
    out: &mut Vec<u8>,
    name: &[u8],
    value: Option<&T>,
) -> serde_json::Result<()> {
    if let Some(value) = value {
        out.extend_from_slice(name);
        serde_json::to_writer(&mut *out, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize)]
    struct Typed<'a> {
        work_order: &'a str,
        quantity: f64,
        lines: Vec<u32>,
    }

    fn same_as_serde_json<D: Serialize>(event: &CloudEvent<D>) {
        assert_eq!(
            String::from_utf8(event.to_json().unwrap()).unwrap(),
            serde_json::to_string(event).unwrap()
        );
    }

    #[test]
    fn an_event_is_written_exactly_as_serde_json_writes_it() {
        let texts = ["", "WO-1", "a \"quoted\" \\ path\n\t\u{1}", "é 東京 😀"];
        for (i, text) in texts.iter().enumerate() {
            let mut event = CloudEvent::new(
                format!("{text}-{i}"),
                format!("/plants/{text}/mes"),
                "millrace.test.v1",
                json!({ "text": text, "n": i, "nested": [text, null, 1.5] }),
            );
            same_as_serde_json(&event);
            event = event.subject(*text);
            same_as_serde_json(&event);
            event = event.time("2026-11-27T06:12:00Z");
            same_as_serde_json(&event);
            event = event.dataschema(format!("urn:{text}"));
            same_as_serde_json(&event);
            event.subject = None;
            same_as_serde_json(&event);
            let typed = CloudEvent::new(
                "t",
                "s",
                "millrace.typed.v1",
                Typed {
                    work_order: text,
                    quantity: 28.5,
                    lines: vec![1, 2],
                },
            )
            .time(*text);
            same_as_serde_json(&typed);
        }
    }
}
