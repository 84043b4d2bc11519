//! The column → event-field mapping of a step, validated once, and the typed reading of a row.

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use millrace_sdk::time::Zone;
use millrace_sdk::{MediationError, data};
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
    thousands_separator: Option<String>,
    #[serde(default)]
    utc_offset: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    skip_lines: usize,
    #[serde(default)]
    ragged_rows: bool,
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
    /// A datetime whose time of day is in another column: its header name...
    #[serde(default)]
    pub time_column: Option<String>,
    /// ...or its 1-based position. The two cells are joined with one space before `format`.
    #[serde(default)]
    pub time_index: Option<usize>,
    #[serde(rename = "type", default)]
    pub kind: Kind,
    /// strftime format of `datetime` (default RFC 3339) and `date` (default `%Y-%m-%d`) columns.
    #[serde(default)]
    pub format: Option<String>,
    /// A blank required value rejects the row; a blank optional one is left out.
    #[serde(default = "yes")]
    pub required: bool,
    /// `decimal`: move the decimal point by this many places (-3 turns milliseconds into
    /// seconds), exactly, before the value is rounded to a double.
    #[serde(default)]
    pub shift: i32,
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

/// How the bytes of a file are text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Encoding {
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    /// ISO 8859-1: every byte is the character of the same number.
    #[serde(rename = "latin1")]
    Latin1,
    /// Windows code page 1252: ISO 8859-1 with printable characters in 0x80–0x9F (€, „, …).
    #[serde(rename = "windows-1252")]
    Windows1252,
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
    pub encoding: Encoding,
    /// Lines before the header (or the first row): a title, a logger's preamble.
    pub skip_lines: usize,
    /// Rows may have fewer cells than the header (missing ones are blank) or more (blank ones).
    pub ragged_rows: bool,
    decimal: char,
    thousands: Option<char>,
    zone: Zone,
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
        let decimal = match s.decimal_separator.as_str() {
            "." => '.',
            "," => ',',
            other => {
                return Err(format!(
                    "decimal_separator {other:?} must be \".\" or \",\""
                ));
            }
        };
        let thousands = match s.thousands_separator.as_deref() {
            None => None,
            Some(t @ ("." | "," | " " | "'" | "_" | "\u{a0}" | "\u{202f}")) => {
                let t = t.chars().next().unwrap_or(' ');
                if t == decimal || t as u32 == u32::from(delimiter) {
                    return Err(format!(
                        "thousands_separator {t:?} is also the decimal separator or the delimiter"
                    ));
                }
                Some(t)
            }
            Some(other) => {
                return Err(format!(
                    "thousands_separator {other:?} must be one of \".\", \",\", \" \", \"'\", \"_\", a no-break space"
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
            match (f.kind, &f.time_column, f.time_index, s.has_header) {
                (_, None, None, _) => {}
                (Kind::Datetime, Some(_), None, true)
                | (Kind::Datetime, None, Some(1..), false)
                    if f.format.is_some() => {}
                (Kind::Datetime, _, _, _) if f.format.is_none() => {
                    return Err(format!(
                        "field {}: a time in another column needs the format of the joined \"DATE TIME\" text, e.g. format = \"%d.%m.%Y %H:%M:%S\"",
                        f.path
                    ));
                }
                (Kind::Datetime, _, _, true) => {
                    return Err(format!(
                        "field {}: with has_header = true, name the time's column (time_column = \"...\")",
                        f.path
                    ));
                }
                (Kind::Datetime, _, _, false) => {
                    return Err(format!(
                        "field {}: with has_header = false, give the time's 1-based time_index",
                        f.path
                    ));
                }
                _ => {
                    return Err(format!(
                        "field {}: time_column and time_index apply to datetime columns only",
                        f.path
                    ));
                }
            }
            if f.shift != 0 && (f.kind != Kind::Decimal || f.shift.abs() > 30) {
                return Err(format!(
                    "field {}: shift applies to decimal columns, at most 30 places either way",
                    f.path
                ));
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
            encoding: s.encoding,
            skip_lines: s.skip_lines,
            ragged_rows: s.ragged_rows,
            decimal,
            thousands,
            zone: Zone::from_settings(s.utc_offset.as_deref(), s.time_zone.as_deref())?,
            subject: s.subject,
            time: s.time,
            fields,
            constants: s.constants,
        })
    }

    /// Column index of every field (and of its time column), by header name; a missing column
    /// rejects the message. `line` is the header's line.
    pub fn resolve_header(
        &self,
        headers: &csv::StringRecord,
        line: u32,
    ) -> Result<Vec<Columns>, MediationError> {
        let find = |name: &str| {
            let mut at = headers
                .iter()
                .enumerate()
                .filter(|(_, h)| h.trim_start_matches('\u{feff}').trim() == name)
                .map(|(i, _)| i);
            let fault = |what: String| {
                MediationError::rejected(format!("line {line}: {what}"))
                    .field(name)
                    .position(line)
            };
            match (at.next(), at.next()) {
                (Some(first), None) => Ok(first),
                (Some(first), Some(second)) => Err(fault(format!(
                    "the header names column {name:?} twice (columns {} and {}); map these columns by index with has_header = false and skip_lines",
                    first + 1,
                    second + 1
                ))),
                (None, _) => Err(fault(format!(
                    "the header has no column {name:?} (columns: {})",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ))),
            }
        };
        self.fields
            .iter()
            .map(|f| {
                Ok(Columns {
                    value: find(f.column.as_deref().unwrap_or_default())?,
                    time: f.time_column.as_deref().map(find).transpose()?,
                })
            })
            .collect()
    }

    /// Column index of every field, from its configured position.
    pub fn resolve_positions(&self) -> Vec<Columns> {
        self.fields
            .iter()
            .map(|f| Columns {
                value: f.index.unwrap_or(1) - 1,
                time: f.time_index.map(|i| i - 1),
            })
            .collect()
    }

    /// One data row (at `line`) as event data.
    pub fn row(
        &self,
        record: &csv::StringRecord,
        columns: &[Columns],
        line: u64,
        plant: &str,
    ) -> Result<serde_json::Value, MediationError> {
        let mut data = serde_json::Map::new();
        for (field, at) in self.fields.iter().zip(columns) {
            let column = field
                .column
                .clone()
                .unwrap_or_else(|| format!("#{}", at.value + 1));
            let mut raw = record.get(at.value).unwrap_or_default().to_string();
            if let Some(time) = at.time {
                let time = record.get(time).unwrap_or_default().trim();
                if !raw.trim().is_empty() && !time.is_empty() {
                    raw = format!("{} {time}", raw.trim());
                }
            }
            let raw = raw.as_str();
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
            Kind::Integer => self
                .digits(text)
                .and_then(|(digits, fraction, exponent)| {
                    (fraction.is_empty() && exponent.is_none()).then_some(digits)
                })
                .and_then(|digits| digits.parse::<i64>().ok())
                .map(Value::Integer)
                .ok_or_else(|| format!("an integer{}", self.thousands_note())),
            Kind::Decimal => self
                .digits(text)
                .and_then(|(digits, fraction, exponent)| {
                    let exponent = exponent.unwrap_or("0").parse::<i32>().ok()? + field.shift;
                    format!("{digits}.{fraction}e{exponent}")
                        .parse::<f64>()
                        .ok()
                })
                .filter(|v| v.is_finite())
                .map(Value::Number)
                .ok_or_else(|| {
                    format!(
                        "a decimal number (decimal separator {:?}{}, exponent allowed)",
                        self.decimal,
                        self.thousands_note()
                    )
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
                .map(|t| Value::Text(utc_text(t.with_timezone(&Utc))))
                .map_err(|e| format!("an RFC 3339 date and time ({e})")),
            Kind::Datetime => {
                let mut parsed = chrono::format::Parsed::new();
                let wrong = |e: chrono::format::ParseError| {
                    format!(
                        "a date and time in format {:?} ({e})",
                        field.format.as_deref().unwrap_or_default()
                    )
                };
                chrono::format::parse(&mut parsed, text, field.items.iter()).map_err(wrong)?;
                // An offset (%z) or a Unix time (%s) in the cell fixes the instant; otherwise
                // the text is a local time of the configured zone.
                if parsed.offset().is_some() || parsed.timestamp().is_some() {
                    return parsed
                        .to_datetime()
                        .map(|t| Value::Text(utc_text(t.with_timezone(&Utc))))
                        .map_err(wrong);
                }
                let local = parsed.to_naive_datetime_with_offset(0).map_err(wrong)?;
                self.zone
                    .to_utc(local)
                    .map(|utc| Value::Text(utc_text(utc)))
                    .map_err(|e| format!("a time that exists locally: {e}"))
            }
        }
    }

    /// A number's parts without sign noise: `(sign and integer digits, fraction digits,
    /// exponent)`, thousands separators removed where the settings allow them and grouped by
    /// three. `None` if it is not a number.
    fn digits<'t>(&self, text: &'t str) -> Option<(String, &'t str, Option<&'t str>)> {
        let (mantissa, exponent) = match text.split_once(['e', 'E']) {
            Some((m, e)) => {
                let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
                if digits.is_empty()
                    || digits.len() > 4
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                (m, Some(e))
            }
            None => (text, None),
        };
        let (sign, unsigned) = match mantissa.as_bytes().first()? {
            b'-' => ("-", &mantissa[1..]),
            b'+' => ("", &mantissa[1..]),
            _ => ("", mantissa),
        };
        let (integer, fraction) = unsigned.split_once(self.decimal).unwrap_or((unsigned, ""));
        let integer = match self.thousands {
            Some(t) if integer.contains(t) => {
                let groups: Vec<&str> = integer.split(t).collect();
                let grouped =
                    (1..=3).contains(&groups[0].len()) && groups[1..].iter().all(|g| g.len() == 3);
                if !grouped {
                    return None;
                }
                groups.concat()
            }
            _ => integer.to_string(),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (integer.is_empty() && fraction.is_empty())
            || !all_digits(&integer)
            || !all_digits(fraction)
        {
            return None;
        }
        let integer = if integer.is_empty() {
            "0".to_string()
        } else {
            integer
        };
        Some((format!("{sign}{integer}"), fraction, exponent))
    }

    fn thousands_note(&self) -> String {
        match self.thousands {
            Some(t) => format!(", thousands separator {t:?}"),
            None => ", no thousands separators".into(),
        }
    }
}

/// Column positions of one field.
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    pub value: usize,
    /// The time-of-day column of a datetime split over two columns.
    pub time: Option<usize>,
}

/// RFC 3339 in UTC, with fractional seconds only when there are any.
fn utc_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
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
