//! The column → event-field mapping of a step, validated once, and the typed reading of a row.

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, SecondsFormat, TimeDelta, Utc};
use millrace_sdk::{MediationError, data, parse};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    event_type: String,
    #[serde(default)]
    dataschema: Option<String>,
    #[serde(default = "default_source_system")]
    source_system: String,
    #[serde(default = "default_delimiter")]
    delimiter: String,
    #[serde(default = "yes")]
    has_header: bool,
    #[serde(default = "default_decimal_separator")]
    decimal_separator: String,
    #[serde(default)]
    utc_offset: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    time: Option<String>,
    fields: Vec<FieldSpec>,
    #[serde(default)]
    constants: BTreeMap<String, serde_json::Value>,
}

fn default_source_system() -> String {
    "wms".into()
}
fn default_delimiter() -> String {
    ",".into()
}
fn default_decimal_separator() -> String {
    ".".into()
}
fn yes() -> bool {
    true
}

/// One mapped column.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Where the value goes in the event's `data`; dots nest (`from.storage_location`).
    pub path: String,
    /// The header name of the column (files with a header).
    #[serde(default)]
    pub column: Option<String>,
    /// The 1-based position of the column (files without a header).
    #[serde(default)]
    pub index: Option<usize>,
    #[serde(rename = "type", default)]
    pub kind: Kind,
    /// strftime format of `datetime` (default RFC 3339) and `date` (default `%Y-%m-%d`) columns.
    #[serde(default)]
    pub format: Option<String>,
    /// A blank required value rejects the row; a blank optional one is left out.
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(skip)]
    items: Vec<Item<'static>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Text,
    Integer,
    Decimal,
    Boolean,
    Datetime,
    Date,
}

/// A typed cell value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Number(f64),
    Integer(i64),
    Bool(bool),
}

/// The validated mapping.
#[derive(Debug)]
pub struct Mapping {
    pub event_type: String,
    pub dataschema: Option<String>,
    pub source_system: String,
    pub delimiter: u8,
    pub has_header: bool,
    decimal_comma: bool,
    utc_offset_secs: i64,
    /// The data path whose text becomes the event's `subject`.
    pub subject: Option<String>,
    /// The data path whose text becomes the event's `time`.
    pub time: Option<String>,
    fields: Vec<FieldSpec>,
    constants: BTreeMap<String, serde_json::Value>,
}

impl Mapping {
    pub fn from_settings(value: serde_json::Value) -> Result<Mapping, String> {
        let s: Settings = serde_json::from_value(value)
            .map_err(|e| format!("invalid csv-records settings: {e}"))?;
        let delimiter = match s.delimiter.as_bytes() {
            [b] if b.is_ascii() && *b != b'"' && *b != b'\n' && *b != b'\r' => *b,
            _ if s.delimiter == "\\t" => b'\t',
            _ => {
                return Err(format!(
                    "delimiter {:?} must be one ASCII character other than a quote or a line break",
                    s.delimiter
                ));
            }
        };
        let decimal_comma = match s.decimal_separator.as_str() {
            "." => false,
            "," => true,
            other => {
                return Err(format!(
                    "decimal_separator {other:?} must be \".\" or \",\""
                ));
            }
        };
        if s.event_type.trim().is_empty() {
            return Err("event_type must name the event, e.g. millrace.inventory.moved.v1".into());
        }
        if s.fields.is_empty() {
            return Err("fields must map at least one column".into());
        }
        let mut fields = s.fields;
        let mut paths = BTreeMap::new();
        for f in &mut fields {
            check_path(&f.path)?;
            if paths.insert(f.path.clone(), f.kind).is_some() {
                return Err(format!("field {} is mapped twice", f.path));
            }
            match (s.has_header, &f.column, f.index) {
                (true, Some(_), None) => {}
                (false, None, Some(i)) if i >= 1 => {}
                (true, _, _) => {
                    return Err(format!(
                        "field {}: with has_header = true, name its column (column = \"...\")",
                        f.path
                    ));
                }
                (false, _, _) => {
                    return Err(format!(
                        "field {}: with has_header = false, give its 1-based index",
                        f.path
                    ));
                }
            }
            let format = match (f.kind, &f.format) {
                (Kind::Datetime | Kind::Date, Some(format)) => Some(format.clone()),
                (Kind::Date, None) => Some("%Y-%m-%d".to_string()),
                (Kind::Datetime, None) => None,
                (_, Some(_)) => {
                    return Err(format!(
                        "field {}: format applies to datetime and date columns only",
                        f.path
                    ));
                }
                (_, None) => None,
            };
            if let Some(format) = format {
                f.items = StrftimeItems::new(&format)
                    .parse_to_owned()
                    .map_err(|e| format!("field {}: format {format:?}: {e}", f.path))?;
            }
        }
        for path in s.constants.keys() {
            check_path(path)?;
            if paths.contains_key(path) {
                return Err(format!("{path} is both a field and a constant"));
            }
        }
        if let Some(subject) = &s.subject
            && !paths.contains_key(subject)
            && !s.constants.contains_key(subject)
        {
            return Err(format!(
                "subject names {subject:?}, which is neither a field nor a constant"
            ));
        }
        if let Some(time) = &s.time
            && paths.get(time) != Some(&Kind::Datetime)
        {
            return Err(format!(
                "time names {time:?}, which must be a datetime field"
            ));
        }
        Ok(Mapping {
            event_type: s.event_type,
            dataschema: s.dataschema,
            source_system: s.source_system,
            delimiter,
            has_header: s.has_header,
            decimal_comma,
            utc_offset_secs: parse::utc_offset(s.utc_offset.as_deref().unwrap_or("+00:00"))?,
            subject: s.subject,
            time: s.time,
            fields,
            constants: s.constants,
        })
    }

    /// Column index of every field, by header name; a missing column rejects the message.
    pub fn resolve_header(
        &self,
        headers: &csv::StringRecord,
    ) -> Result<Vec<usize>, MediationError> {
        self.fields
            .iter()
            .map(|f| {
                let name = f.column.as_deref().unwrap_or_default();
                headers
                    .iter()
                    .position(|h| h.trim() == name)
                    .ok_or_else(|| {
                        MediationError::rejected(format!(
                            "line 1: the header has no column {name:?} (columns: {})",
                            headers.iter().collect::<Vec<_>>().join(", ")
                        ))
                        .field(name)
                        .position(1)
                    })
            })
            .collect()
    }

    /// Column index of every field, from its configured position.
    pub fn resolve_positions(&self) -> Vec<usize> {
        self.fields
            .iter()
            .map(|f| f.index.unwrap_or(1) - 1)
            .collect()
    }

    /// One data row (at `line`) as event data.
    pub fn row(
        &self,
        record: &csv::StringRecord,
        columns: &[usize],
        line: u64,
        plant: &str,
    ) -> Result<serde_json::Value, MediationError> {
        let mut data = serde_json::Map::new();
        for (field, &index) in self.fields.iter().zip(columns) {
            let column = field
                .column
                .clone()
                .unwrap_or_else(|| format!("#{}", index + 1));
            let raw = record.get(index).unwrap_or_default();
            let text = raw.trim();
            if text.is_empty() {
                if field.required {
                    return Err(MediationError::rejected(format!(
                        "line {line}, column {column:?}: {} is required but blank",
                        field.path
                    ))
                    .field(column)
                    .position(line as u32));
                }
                continue;
            }
            let value = self.parse(field, text).map_err(|what| {
                MediationError::rejected(format!(
                    "line {line}, column {column:?}: {raw:?} is not {what}"
                ))
                .field(column.clone())
                .position(line as u32)
            })?;
            data::insert(&mut data, &field.path, value.into());
        }
        for (path, value) in &self.constants {
            data::insert(&mut data, path, value.clone());
        }
        data.insert("plant".into(), serde_json::Value::String(plant.to_string()));
        Ok(serde_json::Value::Object(data))
    }

    fn parse(&self, field: &FieldSpec, text: &str) -> Result<Value, String> {
        match field.kind {
            Kind::Text => Ok(Value::Text(text.to_string())),
            Kind::Integer => text
                .parse::<i64>()
                .map(Value::Integer)
                .map_err(|_| "an integer".into()),
            Kind::Decimal => parse::decimal(text, if self.decimal_comma { ',' } else { '.' }, 0)
                .map(Value::Number)
                .ok_or_else(|| {
                    let sep = if self.decimal_comma { "," } else { "." };
                    format!("a decimal number (decimal separator {sep:?}, no thousands separators)")
                }),
            Kind::Boolean => match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" | "1" | "x" => Ok(Value::Bool(true)),
                "false" | "no" | "n" | "0" => Ok(Value::Bool(false)),
                _ => Err("a boolean (true/false, yes/no, 1/0, X)".into()),
            },
            Kind::Date => {
                let mut parsed = chrono::format::Parsed::new();
                chrono::format::parse(&mut parsed, text, field.items.iter())
                    .and_then(|()| parsed.to_naive_date())
                    .map(|d: NaiveDate| Value::Text(d.format("%Y-%m-%d").to_string()))
                    .map_err(|e| {
                        format!(
                            "a date in format {:?} ({e})",
                            field.format.as_deref().unwrap_or("%Y-%m-%d")
                        )
                    })
            }
            Kind::Datetime if field.items.is_empty() => DateTime::parse_from_rfc3339(text)
                .map(|t| {
                    Value::Text(
                        t.with_timezone(&Utc)
                            .to_rfc3339_opts(SecondsFormat::Secs, true),
                    )
                })
                .map_err(|e| format!("an RFC 3339 date and time ({e})")),
            Kind::Datetime => {
                let mut parsed = chrono::format::Parsed::new();
                chrono::format::parse(&mut parsed, text, field.items.iter())
                    .and_then(|()| parsed.to_naive_datetime_with_offset(0))
                    .ok()
                    .and_then(|local| {
                        local.checked_sub_signed(TimeDelta::seconds(self.utc_offset_secs))
                    })
                    .map(|utc| {
                        Value::Text(utc.and_utc().to_rfc3339_opts(SecondsFormat::Secs, true))
                    })
                    .ok_or_else(|| {
                        format!(
                            "a date and time in format {:?}",
                            field.format.as_deref().unwrap_or_default()
                        )
                    })
            }
        }
    }
}

fn check_path(path: &str) -> Result<(), String> {
    if path.split('.').any(|s| {
        s.is_empty()
            || !s
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }) {
        return Err(format!(
            "path {path:?} must be snake_case names joined by dots"
        ));
    }
    if path == "plant" {
        return Err("plant is set by the host from the route's plant; do not map it".into());
    }
    Ok(())
}
