//! `mes-fixed-width`: legacy MES production confirmations in a fixed-width layout become
//! canonical `millrace.production.completed.v1` CloudEvents.
//!
//! The layout is not in the code: the route's step settings declare it (see `README.md` beside
//! this crate), so another plant with another layout needs only configuration.
//!
//! One message may carry several records, one per line (`\n` or `\r\n`); each record becomes one
//! event, in order. Empty lines are skipped; lines of a type listed in `record_type.skip`
//! (headers, trailers) are skipped and logged at debug level; a line of any other type is bad. A message with any bad record is rejected whole, naming the line,
//! the field and the column at fault: nothing is emitted from half a batch and nothing is dropped
//! silently.

mod layout;
mod record;

use layout::{Layout, Selection};
use millrace_sdk::{CloudEvent, Host, Level, MediationError, Message, Plugin, PluginInfo};

/// Event type emitted for every record.
pub const EVENT_TYPE: &str = "millrace.production.completed.v1";

/// Schema of the event's `data` (`schemas/production.completed/v1.json`).
pub const DATA_SCHEMA: &str = "urn:millrace:schema:production.completed:v1";

/// The plugin: a validated layout built from the step's settings.
pub struct MesFixedWidth {
    layout: Layout,
}

impl Plugin for MesFixedWidth {
    fn describe() -> PluginInfo {
        PluginInfo::new("mes-fixed-width", env!("CARGO_PKG_VERSION"))
            .accepts(["text/plain", "application/octet-stream"])
            .emits([EVENT_TYPE])
    }

    fn new(host: &impl Host) -> Result<Self, String> {
        let layout = Layout::from_settings(host.settings()?)?;
        if let Some(table) = &layout.work_centre_table {
            host.lookup(table, "").map_err(|_| {
                format!(
                    "work_centre_table names lookup table {table:?}, which the plant does not have"
                )
            })?;
        }
        Ok(MesFixedWidth { layout })
    }

    fn mediate(&self, host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let source = format!("/plants/{}/{}", input.plant, self.layout.source_system);
        let mut outputs = Vec::new();
        for (index, line) in lines(&input.body).enumerate() {
            let line_no = index + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            match self.layout.select(line) {
                Selection::Take => {}
                Selection::Skip => {
                    host.log(
                        Level::Debug,
                        &format!("line {line_no}: record type skipped by record_type.skip"),
                    );
                    continue;
                }
                Selection::Unknown(found) => {
                    let rt = self
                        .layout
                        .record_type
                        .as_ref()
                        .expect("Unknown only comes from a record_type");
                    return Err(MediationError::rejected(format!(
                        "line {line_no}, column {}: unknown record type {found:?}; expected {:?} or one of record_type.skip {:?}",
                        rt.start, rt.value, rt.skip
                    ))
                    .position(rt.start as u32));
                }
            }
            let mut completion = record::parse(&self.layout, line, line_no)?;
            if let Some(table) = &self.layout.work_centre_table {
                completion.map_work_centre(host, table, line_no)?;
            }
            let event = CloudEvent::new(
                format!("{}-{line_no}", input.id),
                source.clone(),
                EVENT_TYPE,
                completion.to_data(&input.plant),
            )
            .dataschema(DATA_SCHEMA)
            .subject(completion.work_order.clone())
            .time(completion.completed_at.clone());
            outputs.push(event.into_message(&input));
        }
        Ok(outputs)
    }
}

/// The lines of `body` (split at `\n`, as `split` would), found eight bytes at a time.
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let text = rest?;
        match newline(text) {
            Some(at) => {
                rest = Some(&text[at + 1..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// The index of the first `\n` in `bytes`.
fn newline(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        if chunk.iter().fold(false, |found, b| found | (*b == b'\n')) {
            break;
        }
        at += 8;
    }
    bytes[at..].iter().position(|b| *b == b'\n').map(|i| at + i)
}

millrace_sdk::export!(MesFixedWidth);

#[cfg(test)]
mod tests;
