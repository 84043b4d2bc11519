//! `idoc-flat`: SAP IDoc flat files → one canonical event per item segment (e.g. goods movements
//! WMMBXY or MBGMCR → `inventory.moved`).
//!
//! A file holds one or more IDocs, each an `EDI_DC40` control record followed by its data
//! records. Control record: TABNAM in columns 1–10, DOCNUM 14–29, MESTYP 100–129. Data record:
//! SEGNAM 1–30, DOCNUM 34–49, segment data (SDATA) from column 64. Field positions inside SDATA
//! come from the step settings (the segment definitions of the sending system), so another
//! message type or release needs only configuration. Trailing blanks may be trimmed by the sender.
//!
//! Any fault rejects the whole file, naming the line, the segment and the field.

use millrace_sdk::{CloudEvent, Host, MediationError, Message, Plugin, PluginInfo, data, parse};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    message_type: String,
    item_segment: String,
    #[serde(default)]
    header_segment: Option<String>,
    event_type: String,
    #[serde(default)]
    dataschema: Option<String>,
    #[serde(default = "default_source_system")]
    source_system: String,
    #[serde(default)]
    utc_offset: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    header_fields: Vec<Field>,
    item_fields: Vec<Field>,
    #[serde(default)]
    constants: Map<String, Value>,
}

fn default_source_system() -> String {
    "sap".into()
}

/// A field inside a segment's SDATA.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Field {
    /// Where it goes in `data`; dots nest.
    path: String,
    /// 1-based column inside SDATA.
    start: usize,
    length: usize,
    #[serde(rename = "type", default)]
    kind: Kind,
    /// `datetime`: 1-based SDATA column of the HHMMSS time that goes with the YYYYMMDD date.
    #[serde(default)]
    time_start: Option<usize>,
    #[serde(default = "yes")]
    required: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    Text,
    /// Digits with an explicit `.` and an optional trailing or leading sign (`12.500-`).
    Decimal,
    /// YYYYMMDD.
    Date,
    /// YYYYMMDD at `start`, HHMMSS at `time_start`, in `utc_offset`.
    Datetime,
}

/// Control record columns.
const TABNAM: (usize, usize) = (1, 10);
const DOCNUM_CONTROL: (usize, usize) = (14, 16);
const MESTYP: (usize, usize) = (100, 30);
/// Data record columns.
const SEGNAM: (usize, usize) = (1, 30);
const DOCNUM_DATA: (usize, usize) = (34, 16);
const SDATA_START: usize = 64;

/// The plugin.
pub struct IdocFlat {
    settings: Settings,
    utc_offset_secs: i64,
}

impl Plugin for IdocFlat {
    fn describe() -> PluginInfo {
        PluginInfo::new("idoc-flat", env!("CARGO_PKG_VERSION"))
            .accepts(["text/plain", "application/octet-stream"])
    }

    fn new(host: &impl Host) -> Result<Self, String> {
        let settings: Settings = host.settings()?;
        let utc_offset_secs =
            parse::utc_offset(settings.utc_offset.as_deref().unwrap_or("+00:00"))?;
        for f in settings.header_fields.iter().chain(&settings.item_fields) {
            if f.start == 0
                || f.length == 0
                || f.path.split('.').any(str::is_empty)
                || f.path == "plant"
            {
                return Err(format!(
                    "field {:?}: start and length are 1-based and at least 1; path is names joined by dots, not plant",
                    f.path
                ));
            }
            if (f.kind == Kind::Datetime) != f.time_start.is_some() {
                return Err(format!(
                    "field {:?}: time_start goes with type datetime, and only with it",
                    f.path
                ));
            }
        }
        if settings.header_segment.is_some() && settings.header_fields.is_empty() {
            return Err("header_segment needs header_fields".into());
        }
        Ok(IdocFlat {
            settings,
            utc_offset_secs,
        })
    }

    fn mediate(&self, _host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let s = &self.settings;
        let text = input.body_str()?;
        let source = format!("/plants/{}/{}", input.plant, s.source_system);
        let mut outputs = Vec::new();
        let mut idoc: Option<String> = None;
        let mut header = Map::new();
        let mut item_no = 0;
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            if line.trim().is_empty() {
                continue;
            }
            if !line.is_ascii() {
                return Err(MediationError::rejected(format!(
                    "line {line_no}: only ASCII is supported"
                ))
                .position(line_no as u32));
            }
            if column(line, TABNAM) == "EDI_DC40" {
                let mestyp = column(line, MESTYP);
                if mestyp != s.message_type {
                    return Err(reject(
                        line_no,
                        "EDI_DC40",
                        "MESTYP",
                        format!("message type {mestyp:?} is not {:?}", s.message_type),
                    ));
                }
                idoc = Some(
                    column(line, DOCNUM_CONTROL)
                        .trim_start_matches('0')
                        .to_string(),
                );
                header.clear();
                item_no = 0;
                continue;
            }
            let segment = column(line, SEGNAM);
            let Some(docnum) = &idoc else {
                return Err(reject(
                    line_no,
                    segment,
                    "TABNAM",
                    "a data record before any EDI_DC40 control record".into(),
                ));
            };
            let own = column(line, DOCNUM_DATA).trim_start_matches('0');
            if own != docnum {
                return Err(reject(
                    line_no,
                    segment,
                    "DOCNUM",
                    format!("IDoc number {own:?} differs from the control record's {docnum:?}"),
                ));
            }
            let sdata = line.get(SDATA_START - 1..).unwrap_or("");
            if s.header_segment.as_deref() == Some(segment) {
                header = self.fields(&s.header_fields, sdata, line_no, segment)?;
            } else if segment == s.item_segment {
                item_no += 1;
                let mut data = header.clone();
                for (k, v) in self.fields(&s.item_fields, sdata, line_no, segment)? {
                    merge(&mut data, k, v);
                }
                for (path, value) in &s.constants {
                    data::insert(&mut data, path, value.clone());
                }
                data.insert("plant".into(), Value::String(input.plant.clone()));
                data::insert(
                    &mut data,
                    "attributes.idoc_number",
                    Value::String(docnum.clone()),
                );
                let data = Value::Object(data);
                let mut event = CloudEvent::new(
                    format!("{}-{docnum}-{item_no}", input.id),
                    source.clone(),
                    s.event_type.clone(),
                    data.clone(),
                );
                if let Some(text) = s.subject.as_deref().and_then(|p| data::text(&data, p)) {
                    event = event.subject(text);
                }
                if let Some(text) = s.time.as_deref().and_then(|p| data::text(&data, p)) {
                    event = event.time(text);
                }
                if let Some(schema) = &s.dataschema {
                    event = event.dataschema(schema.clone());
                }
                outputs.push(event.into_message(&input));
            }
        }
        if idoc.is_none() {
            return Err(MediationError::rejected(
                "no EDI_DC40 control record: not an IDoc flat file",
            )
            .position(1));
        }
        Ok(outputs)
    }
}

impl IdocFlat {
    /// The fields of one segment's SDATA as a data object.
    fn fields(
        &self,
        fields: &[Field],
        sdata: &str,
        line_no: usize,
        segment: &str,
    ) -> Result<Map<String, Value>, MediationError> {
        let mut data = Map::new();
        for f in fields {
            let raw = column(sdata, (f.start, f.length));
            if raw.is_empty() {
                if f.required {
                    return Err(reject(
                        line_no,
                        segment,
                        &f.path,
                        format!(
                            "(SDATA {}-{}) is required but blank",
                            f.start,
                            f.start + f.length - 1
                        ),
                    ));
                }
                continue;
            }
            let bad = |what: &str| {
                reject(
                    line_no,
                    segment,
                    &f.path,
                    format!(
                        "(SDATA {}-{}) {raw:?} is not {what}",
                        f.start,
                        f.start + f.length - 1
                    ),
                )
            };
            let value = match f.kind {
                Kind::Text => Value::String(raw.to_string()),
                Kind::Decimal => {
                    // SAP writes the sign after the number: "12.500-".
                    let (negative, digits) = match raw.strip_suffix('-') {
                        Some(d) => (true, d.trim()),
                        None => (false, raw),
                    };
                    let n =
                        parse::decimal(digits, '.', 0).ok_or_else(|| bad("a decimal number"))?;
                    serde_json::json!(if negative { -n } else { n })
                }
                Kind::Date => Value::String(date(raw).ok_or_else(|| bad("a YYYYMMDD date"))?),
                Kind::Datetime => {
                    let time = column(sdata, (f.time_start.unwrap_or(1), 6));
                    Value::String(self.datetime(raw, time).ok_or_else(|| {
                        bad(&format!("a YYYYMMDD date with HHMMSS time {time:?}"))
                    })?)
                }
            };
            data::insert(&mut data, &f.path, value);
        }
        Ok(data)
    }

    /// YYYYMMDD + HHMMSS in the plant's offset → RFC 3339 UTC.
    fn datetime(&self, day: &str, time: &str) -> Option<String> {
        let day = date(day)?;
        if time.len() != 6 || !time.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (h, m, s) = (
            time[0..2].parse::<i64>().ok()?,
            time[2..4].parse::<i64>().ok()?,
            time[4..6].parse::<i64>().ok()?,
        );
        if h > 23 || m > 59 || s > 59 {
            return None;
        }
        let (y, mo, d) = (
            day[0..4].parse::<i64>().ok()?,
            day[5..7].parse::<i64>().ok()?,
            day[8..10].parse::<i64>().ok()?,
        );
        let seconds =
            days_from_civil(y, mo, d) * 86_400 + h * 3600 + m * 60 + s - self.utc_offset_secs;
        let (days, rem) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        let (y, mo, d) = civil_from_days(days);
        Some(format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        ))
    }
}

/// Columns `start..start+len` (1-based) of `line`, trimmed; empty past the end (trimmed senders).
fn column(line: &str, (start, len): (usize, usize)) -> &str {
    let end = (start - 1 + len).min(line.len());
    line.get(start - 1..end).unwrap_or("").trim()
}

fn reject(line: usize, segment: &str, field: &str, what: String) -> MediationError {
    MediationError::rejected(format!("line {line}, segment {segment}, {field} {what}"))
        .field(field)
        .position(line as u32)
}

/// YYYYMMDD → YYYY-MM-DD, if it is a real date.
fn date(text: &str) -> Option<String> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d) = (
        text[0..4].parse::<i64>().ok()?,
        text[4..6].parse::<i64>().ok()?,
        text[6..8].parse::<i64>().ok()?,
    );
    if !(1..=12).contains(&m) || d < 1 || civil_from_days(days_from_civil(y, m, d)) != (y, m, d) {
        return None;
    }
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Merge an item's top-level entry into the header's (objects merge, values replace).
fn merge(map: &mut Map<String, Value>, key: String, value: Value) {
    match (map.get_mut(&key), value) {
        (Some(Value::Object(existing)), Value::Object(new)) => existing.extend(new),
        (_, value) => {
            map.insert(key, value);
        }
    }
}

millrace_sdk::export!(IdocFlat);

#[cfg(test)]
mod tests;
