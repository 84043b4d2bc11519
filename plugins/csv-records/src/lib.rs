//! `csv-records`: RFC 4180 CSV → one canonical event per data row. Which column feeds which field
//! of the event, with which type, is in the step settings (see `README.md` beside this crate), so
//! a WMS export of pallet moves becomes `inventory.moved` with configuration only.
//!
//! A bad row rejects the whole message, naming the line and the column: a batch is delivered
//! whole or dead-lettered whole, so nothing is dropped silently and a fixed batch can be
//! replayed as it is.

mod mapping;

use mapping::{Encoding, Mapping, Value};
use millrace_sdk::{CloudEvent, Host, MediationError, Message, Plugin, PluginInfo, data};
use std::borrow::Cow;

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
        let text = decode(&input.body, m.encoding)?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut lines = Lines::new(text.as_bytes());
        let start = lines.skip(m.skip_lines);
        let body = &text.as_bytes()[start..];
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(m.delimiter)
            .has_headers(m.has_header)
            .flexible(m.ragged_rows)
            .from_reader(body);
        let line_of = |lines: &mut Lines, position: Option<&csv::Position>| {
            position.map_or(0, |p| lines.line_at(start + p.byte() as usize))
        };
        let mut header: Vec<String> = Vec::new();
        let columns = if m.has_header {
            let headers = reader
                .headers()
                .map_err(|e| csv_error(&e, &mut lines, start, &[]))?
                .clone();
            header = headers.iter().map(|h| h.trim().to_string()).collect();
            let line = line_of(&mut lines, headers.position()).max(m.skip_lines as u64 + 1);
            m.resolve_header(&headers, line as u32)?
        } else {
            m.resolve_positions()
        };
        let source = format!("/plants/{}/{}", input.plant, m.source_system);
        let mut outputs = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| csv_error(&e, &mut lines, start, &header))?;
            let line = line_of(&mut lines, record.position());
            if record.iter().all(|cell| cell.trim().is_empty()) {
                continue;
            }
            // Ragged rows: missing cells are blank, extra cells must be.
            if let Some((extra, cell)) = record
                .iter()
                .enumerate()
                .skip(header.len())
                .find(|(_, cell)| !header.is_empty() && !cell.trim().is_empty())
            {
                return Err(MediationError::rejected(format!(
                    "line {line}: cell {} ({cell:?}) is past the header's {} columns",
                    extra + 1,
                    header.len()
                ))
                .field(format!("#{}", extra + 1))
                .position(line as u32));
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

/// The body as text in the configured encoding.
fn decode(body: &[u8], encoding: Encoding) -> Result<Cow<'_, str>, MediationError> {
    match encoding {
        Encoding::Utf8 => std::str::from_utf8(body).map(Cow::Borrowed).map_err(|e| {
            let line = Lines::new(body).line_at(e.valid_up_to());
            MediationError::rejected(format!(
                "line {line}: byte 0x{:02X} is not UTF-8; set encoding = \"latin1\" or \"windows-1252\" if the file is in one of those",
                body[e.valid_up_to()]
            ))
            .field("encoding")
            .position(line as u32)
        }),
        Encoding::Latin1 => Ok(Cow::Owned(millrace_sdk::parse::latin1(body))),
        Encoding::Windows1252 => Ok(Cow::Owned(body.iter().map(|&b| windows_1252(b)).collect())),
    }
}

/// A byte of code page 1252: ISO 8859-1 except 0x80–0x9F, where it has printable characters
/// (the five bytes it leaves undefined stay the C1 control of the same number).
fn windows_1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž',
        '\u{8f}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => b as char,
    }
}

/// Line numbers as an editor shows them: a line ends at CR LF, LF or a lone CR. Asked for
/// positions in increasing order, so a whole file is counted once.
struct Lines<'a> {
    text: &'a [u8],
    at: usize,
    line: u64,
}

impl<'a> Lines<'a> {
    fn new(text: &'a [u8]) -> Self {
        Lines {
            text,
            at: 0,
            line: 1,
        }
    }

    /// Pass over the first `n` lines; the byte where the next one starts.
    fn skip(&mut self, n: usize) -> usize {
        while self.line <= n as u64 && self.at < self.text.len() {
            self.step();
        }
        self.at
    }

    fn step(&mut self) {
        match self.text[self.at] {
            b'\r' if self.text.get(self.at + 1) == Some(&b'\n') => {
                self.at += 1;
                self.line += 1;
            }
            b'\r' | b'\n' => self.line += 1,
            _ => {}
        }
        self.at += 1;
    }

    /// The line of the first character at or after `byte` that is not a line break (a record's
    /// position may point at the break that ended the record before it).
    fn line_at(&mut self, byte: usize) -> u64 {
        let mut byte = byte.min(self.text.len());
        while matches!(self.text.get(byte), Some(b'\r' | b'\n')) {
            byte += 1;
        }
        while self.at < byte {
            self.step();
        }
        self.line
    }
}

/// A CSV syntax error (wrong field count, bad quoting) as a rejection with the line.
fn csv_error(e: &csv::Error, lines: &mut Lines, start: usize, header: &[String]) -> MediationError {
    let position = match e.kind() {
        csv::ErrorKind::UnequalLengths { pos, .. } | csv::ErrorKind::Utf8 { pos, .. } => {
            pos.as_ref()
        }
        _ => e.position(),
    };
    let line = position.map(|p| lines.line_at(start + p.byte() as usize));
    let (reason, field) = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            // The first column missing, or the first one too many.
            let at = (*len).min(*expected_len) as usize;
            let column = header
                .get(at)
                .cloned()
                .unwrap_or_else(|| format!("#{}", at + 1));
            (
                format!(
                    "line {}: {len} fields, the {} has {expected_len}",
                    line.unwrap_or(0),
                    if header.is_empty() {
                        "first row"
                    } else {
                        "header"
                    }
                ),
                column,
            )
        }
        _ => (format!("not valid CSV: {e}"), "row".to_string()),
    };
    let err = MediationError::rejected(reason).field(field);
    match line {
        Some(l) => err.position(l as u32),
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
