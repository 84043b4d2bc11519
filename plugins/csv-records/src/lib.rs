//! `csv-records`: RFC 4180 CSV → one canonical event per data row. Which column feeds which field
//! of the event, with which type, is in the step settings (see `README.md` beside this crate), so
//! a WMS export of pallet moves becomes `inventory.moved` with configuration only.
//!
//! A bad row rejects the whole message, naming the line and the column: a batch is delivered
//! whole or dead-lettered whole, so nothing is dropped silently and a fixed batch can be
//! replayed as it is.

mod mapping;

use mapping::{Mapping, Value};
use millrace_sdk::{CloudEvent, Host, MediationError, Message, Plugin, PluginInfo, data};

/// The plugin: the validated mapping of the step.
pub struct CsvRecords {
    mapping: Mapping,
}

impl Plugin for CsvRecords {
    fn describe() -> PluginInfo {
        PluginInfo::new("csv-records", env!("CARGO_PKG_VERSION")).accepts([
            "text/csv",
            "text/plain",
            "application/csv",
        ])
        // The event type is each step's `event_type` setting, so none is fixed here.
    }

    fn new(host: &impl Host) -> Result<Self, String> {
        Ok(CsvRecords {
            mapping: Mapping::from_settings(host.settings()?)?,
        })
    }

    fn mediate(&self, _host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let m = &self.mapping;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(m.delimiter)
            .has_headers(m.has_header)
            .flexible(false)
            .from_reader(input.body.as_slice());
        let columns = if m.has_header {
            let headers = reader.headers().map_err(|e| csv_error(&e))?.clone();
            m.resolve_header(&headers)?
        } else {
            m.resolve_positions()
        };
        let source = format!("/plants/{}/{}", input.plant, m.source_system);
        let mut outputs = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| csv_error(&e))?;
            let line = record.position().map_or(0, |p| p.line());
            if record.iter().all(str::is_empty) {
                continue;
            }
            let row = m.row(&record, &columns, line, &input.plant)?;
            let subject = m.subject.as_deref().and_then(|p| data::text(&row, p));
            let time = m.time.as_deref().and_then(|p| data::text(&row, p));
            let mut event = CloudEvent::new(
                format!("{}-{line}", input.id),
                source.clone(),
                m.event_type.clone(),
                row,
            );
            if let Some(subject) = subject {
                event = event.subject(subject);
            }
            if let Some(time) = time {
                event = event.time(time);
            }
            if let Some(schema) = &m.dataschema {
                event = event.dataschema(schema.clone());
            }
            outputs.push(event.into_message(&input));
        }
        Ok(outputs)
    }
}

/// A CSV syntax error (wrong field count, bad quoting, invalid UTF-8) as a rejection with the line.
fn csv_error(e: &csv::Error) -> MediationError {
    let line = e.position().map(|p| p.line() as u32);
    let reason = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len,
            len,
            pos,
        } => format!(
            "line {}: {len} fields, the header has {expected_len}",
            pos.as_ref().map_or(0, |p| p.line())
        ),
        csv::ErrorKind::Utf8 { pos, err } => format!(
            "line {}: field {} is not valid UTF-8",
            pos.as_ref().map_or(0, |p| p.line()),
            err.field() + 1
        ),
        _ => format!("not valid CSV: {e}"),
    };
    let line = match e.kind() {
        csv::ErrorKind::UnequalLengths { pos, .. } | csv::ErrorKind::Utf8 { pos, .. } => {
            pos.as_ref().map(|p| p.line() as u32)
        }
        _ => line,
    };
    let err = MediationError::rejected(reason);
    match line {
        Some(l) => err.position(l),
        None => err,
    }
}

impl From<Value> for serde_json::Value {
    fn from(v: Value) -> Self {
        match v {
            Value::Text(s) => serde_json::Value::String(s),
            Value::Number(n) => serde_json::Number::from_f64(n)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Integer(i) => serde_json::Value::from(i),
            Value::Bool(b) => serde_json::Value::Bool(b),
        }
    }
}

millrace_sdk::export!(CsvRecords);

#[cfg(test)]
mod tests;
