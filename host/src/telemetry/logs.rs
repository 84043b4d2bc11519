//! JSON log lines: one object per event — `timestamp`, `level`, `target`, `message`, the
//! event's fields, and the `trace_id` and `span_id` of the message the thread works for (a
//! chain's run, [`super::trace::Current`]) unless the event names its own.

use serde_json::{Map, Value};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

/// The JSON line format.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writeln!(writer, "{}", line(event))
    }
}

/// The JSON object of one event.
fn line(event: &Event<'_>) -> Value {
    let meta = event.metadata();
    let mut fields = Map::new();
    fields.insert("timestamp".into(), crate::durable::now_rfc3339().into());
    fields.insert("level".into(), meta.level().as_str().into());
    fields.insert("target".into(), meta.target().into());
    event.record(&mut Fields(&mut fields));
    if let Some((trace_id, span_id)) = super::trace::current() {
        fields
            .entry("trace_id")
            .or_insert_with(|| hex::encode(trace_id).into());
        fields
            .entry("span_id")
            .or_insert_with(|| hex::encode(span_id).into());
    }
    Value::Object(fields)
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
}
