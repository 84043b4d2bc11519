//! One fixed-width record → one production completion, or a rejection naming line, field and
//! column.

use crate::layout::{Encoding, FieldSpec, FieldType, Layout};
use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use millrace_sdk::{Host, MediationError, parse};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::borrow::Cow;

/// The canonical content of one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub work_order: String,
    pub material: String,
    pub quantity: f64,
    pub unit: String,
    pub work_centre: Option<String>,
    /// Column where the work centre was read, for rejections of the lookup.
    work_centre_column: Option<usize>,
    pub operator: Option<String>,
    /// RFC 3339 UTC, e.g. `2026-11-27T05:30:00Z`.
    pub completed_at: String,
    pub attributes: Map<String, Value>,
}

impl Completion {
    /// Replace the plant-local work centre with its canonical code from `table`.
    pub fn map_work_centre(
        &mut self,
        host: &impl Host,
        table: &str,
        line: usize,
    ) -> Result<(), MediationError> {
        let Some(local) = &self.work_centre else {
            return Ok(());
        };
        match host.lookup(table, local) {
            Ok(Some(canonical)) => {
                self.work_centre = Some(canonical);
                Ok(())
            }
            Ok(None) => {
                let column = self.work_centre_column.unwrap_or(0);
                Err(MediationError::rejected(format!(
                    "line {line}, field work_centre (column {column}): {local:?} is not in lookup table {table}"
                ))
                .field("work_centre")
                .position(column as u32))
            }
            Err(_) => Err(MediationError::rejected(format!(
                "lookup table {table} is missing for this plant"
            ))),
        }
    }

    /// The `data` of the `production.completed` event.
    pub fn to_data<'a>(&'a self, plant: &'a str) -> ProductionCompleted<'a> {
        ProductionCompleted {
            work_order: &self.work_order,
            material: &self.material,
            quantity: self.quantity,
            unit: &self.unit,
            plant,
            work_centre: self.work_centre.as_deref(),
            completed_at: &self.completed_at,
            operator: self.operator.as_deref(),
            attributes: (!self.attributes.is_empty()).then_some(&self.attributes),
        }
    }
}

/// `data` of `millrace.production.completed.v1`.
#[derive(Debug, Serialize)]
pub struct ProductionCompleted<'a> {
    pub work_order: &'a str,
    pub material: &'a str,
    pub quantity: f64,
    pub unit: &'a str,
    pub plant: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_centre: Option<&'a str>,
    pub completed_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<&'a str>,
    /// Layout fields that are not canonical, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<&'a Map<String, Value>>,
}

/// A field's value after its type was checked.
enum Parsed {
    Text(String),
    Number(f64),
    DateTime(NaiveDateTime),
    Date(NaiveDate),
    Time(NaiveTime),
}

/// Parse one record (`line` without its line ending) of line number `line_no`.
pub fn parse(layout: &Layout, line: &[u8], line_no: usize) -> Result<Completion, MediationError> {
    if line.len() != layout.record_length {
        let (what, column) = if line.len() < layout.record_length {
            ("short", line.len() + 1)
        } else {
            ("long", layout.record_length + 1)
        };
        let field = layout
            .fields
            .iter()
            .filter(|f| f.end() >= column)
            .min_by_key(|f| f.start)
            .map(|f| f.name.clone());
        let mut reason = format!(
            "line {line_no}: record too {what}: {} bytes, the layout needs {}",
            line.len(),
            layout.record_length
        );
        if let (Some(name), "short") = (&field, what) {
            reason.push_str(&format!("; field {name} is cut off at column {column}"));
        }
        let mut err = MediationError::rejected(reason).position(column as u32);
        if let (Some(name), "short") = (field, what) {
            err = err.field(name);
        }
        return Err(err);
    }
    if let Some(index) = first_disallowed(layout.encoding, line) {
        let column = index + 1;
        let field = layout
            .fields
            .iter()
            .find(|f| f.start <= column && column <= f.end());
        let mut reason = format!(
            "line {line_no}, column {column}: byte 0x{:02X} is not allowed in a record",
            line[index]
        );
        if let Some(f) = field {
            reason.push_str(&format!(" (field {})", f.name));
        }
        let err = MediationError::rejected(reason).position(column as u32);
        return Err(match field {
            Some(f) => err.field(f.name.clone()),
            None => err,
        });
    }

    let mut work_order = None;
    let mut material = None;
    let mut quantity = None;
    let mut unit = layout.defaults.get("unit").cloned();
    let mut work_centre = layout.defaults.get("work_centre").cloned();
    let mut work_centre_column = None;
    let mut operator = layout.defaults.get("operator").cloned();
    let mut completed_at = None;
    let mut completed_date = None;
    let mut completed_time = None;
    let mut attributes = Map::new();

    for field in &layout.fields {
        let raw = decode(layout.encoding, &line[field.start - 1..field.end()]);
        let value = parse_field(field, &raw, line_no)?;
        match (field.name.as_str(), value) {
            ("work_order", Parsed::Text(v)) => work_order = Some(required(field, v, line_no)?),
            ("material", Parsed::Text(v)) => material = Some(required(field, v, line_no)?),
            ("quantity", Parsed::Number(v)) => quantity = Some(v),
            ("unit", Parsed::Text(v)) => unit = Some(required(field, v, line_no)?),
            ("work_centre", Parsed::Text(v)) if !v.is_empty() => {
                work_centre = Some(v);
                work_centre_column = Some(field.start);
            }
            ("operator", Parsed::Text(v)) if !v.is_empty() => operator = Some(v),
            ("work_centre" | "operator", _) => {}
            ("completed_at", Parsed::DateTime(v)) => completed_at = Some(v),
            ("completed_date", Parsed::Date(v)) => completed_date = Some(v),
            ("completed_time", Parsed::Time(v)) => completed_time = Some(v),
            (name, value) if !Layout::is_canonical(name) => {
                attributes.insert(name.to_string(), to_json(value));
            }
            // Integer work orders and materials keep their text form.
            (name @ ("work_order" | "material"), Parsed::Number(_)) => {
                let text = required(field, raw.trim().to_string(), line_no)?;
                if name == "work_order" {
                    work_order = Some(text);
                } else {
                    material = Some(text);
                }
            }
            (name, _) => unreachable!("layout validation fixes the type of canonical field {name}"),
        }
    }

    let local = match (completed_at, completed_date, completed_time) {
        (Some(at), _, _) => at,
        (None, Some(d), Some(t)) => d.and_time(t),
        _ => unreachable!("layout validation requires a completion time"),
    };
    let utc = layout.zone.to_utc(local).map_err(|what| {
        let field = layout
            .fields
            .iter()
            .find(|f| matches!(f.name.as_str(), "completed_at" | "completed_date"));
        let err = MediationError::rejected(format!("line {line_no}: completion time {what}"));
        match field {
            Some(f) => err.field(f.name.clone()).position(f.start as u32),
            None => err,
        }
    })?;

    Ok(Completion {
        work_order: work_order.expect("layout validation requires work_order"),
        material: material.expect("layout validation requires material"),
        quantity: quantity.expect("layout validation requires quantity"),
        unit: unit.expect("layout validation requires unit or defaults.unit"),
        work_centre,
        work_centre_column,
        operator,
        completed_at: utc.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        attributes,
    })
}

/// The index of the first byte not allowed in a record. Eight bytes are checked at a time
/// without a branch per byte (as Wasm, each loop turn also checks the deadline); the chunk that
/// holds a bad byte is searched again for it.
pub(crate) fn first_disallowed(encoding: Encoding, line: &[u8]) -> Option<usize> {
    let mut at = 0;
    for chunk in line.chunks_exact(8) {
        if !chunk.iter().fold(true, |ok, b| ok & allowed(encoding, *b)) {
            break;
        }
        at += 8;
    }
    line[at..]
        .iter()
        .position(|b| !allowed(encoding, *b))
        .map(|i| at + i)
}

fn allowed(encoding: Encoding, b: u8) -> bool {
    match encoding {
        Encoding::Ascii => (0x20..0x7f).contains(&b),
        Encoding::Latin1 => (0x20..0x7f).contains(&b) || b >= 0xa0,
    }
}

/// The text of a field. ASCII is borrowed (the record was checked to be printable ASCII);
/// Latin-1 bytes map one-to-one to the first 256 code points.
fn decode(encoding: Encoding, bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) if encoding == Encoding::Ascii || bytes.is_ascii() => Cow::Borrowed(text),
        _ => Cow::Owned(bytes.iter().map(|b| char::from(*b)).collect()),
    }
}

fn required(field: &FieldSpec, value: String, line_no: usize) -> Result<String, MediationError> {
    if value.is_empty() {
        Err(field_error(field, line_no, "is blank".to_string()))
    } else {
        Ok(value)
    }
}

fn field_error(field: &FieldSpec, line_no: usize, what: String) -> MediationError {
    MediationError::rejected(format!(
        "line {line_no}, field {} (columns {}-{}): {what}",
        field.name,
        field.start,
        field.end()
    ))
    .field(field.name.clone())
    .position(field.start as u32)
}

/// Parse `text` with the field's pre-parsed format items.
fn temporal(field: &FieldSpec, text: &str) -> chrono::ParseResult<chrono::format::Parsed> {
    let mut parsed = chrono::format::Parsed::new();
    chrono::format::parse(&mut parsed, text, field.items.iter())?;
    Ok(parsed)
}

fn parse_field(field: &FieldSpec, raw: &str, line_no: usize) -> Result<Parsed, MediationError> {
    let text = raw.trim();
    let invalid = |kind: &str| field_error(field, line_no, format!("{raw:?} is not {kind}"));
    let format = field.format.as_deref().unwrap_or_default();
    let unparsable =
        |kind: &str, e: chrono::ParseError| invalid(&format!("{kind} in format {format:?} ({e})"));
    match field.kind {
        FieldType::Text => Ok(Parsed::Text(text.to_string())),
        FieldType::Integer => parse::decimal(text, '.', 0)
            .map(Parsed::Number)
            .ok_or_else(|| invalid("an integer")),
        FieldType::Decimal => parse::decimal(text, '.', field.decimals)
            .map(Parsed::Number)
            .ok_or_else(|| invalid("a decimal number")),
        FieldType::Datetime => temporal(field, text)
            .and_then(|p| p.to_naive_datetime_with_offset(0))
            .map(Parsed::DateTime)
            .map_err(|e| unparsable("a date and time", e)),
        FieldType::Date => temporal(field, text)
            .and_then(|p| p.to_naive_date())
            .map(Parsed::Date)
            .map_err(|e| unparsable("a date", e)),
        FieldType::Time => temporal(field, text)
            .and_then(|p| p.to_naive_time())
            .map(Parsed::Time)
            .map_err(|e| unparsable("a time", e)),
    }
}

fn to_json(value: Parsed) -> Value {
    match value {
        Parsed::Text(s) => Value::String(s),
        Parsed::Number(n) => json!(n),
        Parsed::DateTime(dt) => Value::String(dt.format("%Y-%m-%dT%H:%M:%S").to_string()),
        Parsed::Date(d) => Value::String(d.format("%Y-%m-%d").to_string()),
        Parsed::Time(t) => Value::String(t.format("%H:%M:%S").to_string()),
    }
}
