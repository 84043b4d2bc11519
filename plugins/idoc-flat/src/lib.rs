//! `idoc-flat`: SAP IDocs, flat files and XML, → one canonical event per item segment (e.g.
//! goods movements WMMBXY or MBGMCR → `inventory.moved`, deliveries DELVRY/DESADV items →
//! any event the settings describe).
//!
//! `flat` reads flat files (control records `EDI_DC40` and `EDI_DC40_U`, data records with SDATA
//! from column 64), `xml` reads XML IDocs (`<IDOC BEGIN="1">` elements with an `EDI_DC40`
//! control element and nested segment elements). Both give the same IDocs of named segments;
//! this module checks the message type and turns item segments, with the fields of the header
//! segment before them, into events. Field positions (flat) and names (XML) come from the step
//! settings, so another message type or release needs only configuration.
//!
//! Any fault rejects the whole file, naming the line, the segment and the field.

mod flat;
mod xml;

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
    control_fields: Vec<Field>,
    #[serde(default)]
    header_fields: Vec<Field>,
    item_fields: Vec<Field>,
    #[serde(default)]
    constants: Map<String, Value>,
}

fn default_source_system() -> String {
    "sap".into()
}

/// A field of a segment: where it is in a flat record's SDATA and what it is called in XML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Field {
    /// Where it goes in `data`; dots nest.
    path: String,
    /// SAP's field name (e.g. `LFIMG`): the element of XML IDocs, and the name in rejections.
    #[serde(default)]
    name: Option<String>,
    /// 1-based column inside SDATA (flat files).
    #[serde(default)]
    start: Option<usize>,
    #[serde(default)]
    length: Option<usize>,
    #[serde(rename = "type", default)]
    kind: Kind,
    /// `datetime`, flat: 1-based SDATA column of the HHMMSS time that goes with the date.
    #[serde(default)]
    time_start: Option<usize>,
    /// `datetime`, XML: the element of the HHMMSS time that goes with the date.
    #[serde(default)]
    time_name: Option<String>,
    #[serde(default = "yes")]
    required: bool,
}

impl Field {
    /// How rejections name it: SAP's field name, else its data path.
    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.path)
    }
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
    /// YYYYMMDD with an HHMMSS time, in `utc_offset`.
    Datetime,
}

/// One IDoc of a file, whatever its form.
pub struct Idoc<'a> {
    /// DOCNUM without leading zeros; empty when the sender left it blank.
    pub docnum: String,
    pub mestyp: String,
    /// The control record as a segment (flat: the whole record, columns from 1).
    pub control: Segment<'a>,
    pub segments: Vec<Segment<'a>>,
}

/// One data segment.
pub struct Segment<'a> {
    /// SEGNAM (flat) or the element name (XML).
    pub name: String,
    pub line: u32,
    pub content: Content<'a>,
}

/// A segment's fields as the file holds them.
pub enum Content<'a> {
    /// SDATA of a flat record (from column 64).
    Flat(&'a str),
    /// Leaf child elements of an XML segment, name → trimmed text.
    Xml(Vec<(String, String)>),
}

/// The plugin.
pub struct IdocFlat {
    settings: Settings,
    utc_offset_secs: i64,
}

impl Plugin for IdocFlat {
    fn describe() -> PluginInfo {
        PluginInfo::new("idoc-flat", env!("CARGO_PKG_VERSION")).accepts([
            "text/plain",
            "application/octet-stream",
            "application/xml",
            "text/xml",
        ])
    }

    fn new(host: &impl Host) -> Result<Self, String> {
        let settings: Settings = host.settings()?;
        let utc_offset_secs =
            parse::utc_offset(settings.utc_offset.as_deref().unwrap_or("+00:00"))?;
        for f in settings
            .control_fields
            .iter()
            .chain(&settings.header_fields)
            .chain(&settings.item_fields)
        {
            let flat = match (f.start, f.length) {
                (Some(start), Some(length)) if start >= 1 && length >= 1 => true,
                (None, None) => false,
                _ => {
                    return Err(format!(
                        "field {:?}: start and length go together, 1-based and at least 1",
                        f.path
                    ));
                }
            };
            if !flat && f.name.is_none() {
                return Err(format!(
                    "field {:?}: give start and length (flat IDocs), name (XML IDocs), or both",
                    f.path
                ));
            }
            if f.path.split('.').any(str::is_empty) || f.path == "plant" {
                return Err(format!(
                    "field {:?}: path is names joined by dots, not plant",
                    f.path
                ));
            }
            let timed = f.time_start.is_some() || f.time_name.is_some();
            if (f.kind == Kind::Datetime) != timed
                || (f.time_start.is_some() && !flat)
                || (f.time_name.is_some() && f.name.is_none())
            {
                return Err(format!(
                    "field {:?}: type datetime needs the time's place, time_start (with start) or time_name (with name), and only datetime has one",
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
        let text = parse::text_or_latin1(&input.body);
        let text = text.trim_start_matches('\u{feff}');
        let is_xml = input.media_type().ends_with("xml") || text.trim_start().starts_with('<');
        let idocs = if is_xml {
            xml::read(text)?
        } else {
            flat::read(text)?
        };
        let source = format!("/plants/{}/{}", input.plant, s.source_system);
        let mut outputs = Vec::new();
        for (ordinal, idoc) in idocs.iter().enumerate() {
            if idoc.mestyp != s.message_type {
                return Err(reject(
                    idoc.control.line,
                    &idoc.control.name,
                    "MESTYP",
                    format!("message type {:?} is not {:?}", idoc.mestyp, s.message_type),
                ));
            }
            // A blank DOCNUM would give two IDocs the same event ids: use the ordinal instead.
            let key = if idoc.docnum.is_empty() {
                format!("n{}", ordinal + 1)
            } else {
                idoc.docnum.clone()
            };
            let control = self.fields(&s.control_fields, &idoc.control)?;
            let mut header = Map::new();
            let mut item_no = 0;
            for segment in &idoc.segments {
                if s.header_segment
                    .as_deref()
                    .is_some_and(|h| is_segment(&segment.name, h))
                {
                    header = self.fields(&s.header_fields, segment)?;
                } else if is_segment(&segment.name, &s.item_segment) {
                    item_no += 1;
                    let mut data = control.clone();
                    for (k, v) in &header {
                        merge(&mut data, k.clone(), v.clone());
                    }
                    for (k, v) in self.fields(&s.item_fields, segment)? {
                        merge(&mut data, k, v);
                    }
                    for (path, value) in &s.constants {
                        data::insert(&mut data, path, value.clone());
                    }
                    data.insert("plant".into(), Value::String(input.plant.clone()));
                    data::insert(
                        &mut data,
                        "attributes.idoc_number",
                        Value::String(key.clone()),
                    );
                    let data = Value::Object(data);
                    let mut event = CloudEvent::new(
                        format!("{}-{key}-{item_no}", input.id),
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
        }
        Ok(outputs)
    }
}

impl IdocFlat {
    /// The fields of one segment as a data object.
    fn fields(
        &self,
        fields: &[Field],
        segment: &Segment,
    ) -> Result<Map<String, Value>, MediationError> {
        let mut data = Map::new();
        for f in fields {
            let (raw, time, place) = match &segment.content {
                Content::Flat(sdata) => {
                    let (Some(start), Some(length)) = (f.start, f.length) else {
                        return Err(reject(
                            segment.line,
                            &segment.name,
                            f.label(),
                            "has no start and length in the settings, which a flat IDoc needs"
                                .into(),
                        ));
                    };
                    (
                        column(sdata, (start, length)),
                        f.time_start.map(|t| column(sdata, (t, 6))),
                        format!("(SDATA {start}-{})", start + length - 1),
                    )
                }
                Content::Xml(leaves) => {
                    let Some(name) = &f.name else {
                        return Err(reject(
                            segment.line,
                            &segment.name,
                            f.label(),
                            "has no name in the settings, which an XML IDoc needs".into(),
                        ));
                    };
                    let get = |n: &str| {
                        leaves
                            .iter()
                            .find(|(k, _)| k == n)
                            .map_or("", |(_, v)| v.as_str())
                    };
                    (
                        get(name),
                        f.time_name.as_deref().map(get),
                        format!("<{name}>"),
                    )
                }
            };
            if raw.is_empty() {
                if f.required {
                    return Err(reject(
                        segment.line,
                        &segment.name,
                        f.label(),
                        format!("{place} is required but blank"),
                    ));
                }
                continue;
            }
            let bad = |what: &str| {
                reject(
                    segment.line,
                    &segment.name,
                    f.label(),
                    format!("{place} {raw:?} is not {what}"),
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
                    let time = time.unwrap_or_default();
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
        // SAP writes the end of a day as 240000: midnight of the next day.
        let end_of_day = (h, m, s) == (24, 0, 0);
        if (h > 23 && !end_of_day) || m > 59 || s > 59 {
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

/// Columns `start..start+len` (1-based characters, so Unicode IDocs count as SAP does) of
/// `line`, trimmed; empty past the end (trimmed senders).
pub fn column(line: &str, (start, len): (usize, usize)) -> &str {
    let mut at = line.char_indices().map(|(i, _)| i).chain([line.len()]);
    let from = at.nth(start - 1);
    let to = at.nth(len - 1).unwrap_or(line.len());
    from.map_or("", |from| line[from..to].trim())
}

/// Whether a record's segment name is segment type `wanted` (`E1EDL24`). Flat files from SAP
/// often carry the segment definition instead: `E2` for `E1` (`Z2` for `Z1`) and an optional
/// three-digit release, `E2EDL24007`.
fn is_segment(name: &str, wanted: &str) -> bool {
    if name == wanted {
        return true;
    }
    let definition_kind = match wanted.get(..2) {
        Some("E1") => "E2",
        Some("Z1") => "Z2",
        _ => return false,
    };
    name.strip_prefix(definition_kind)
        .and_then(|rest| rest.strip_prefix(&wanted[2..]))
        .is_some_and(|release| {
            release.is_empty()
                || (release.len() == 3 && release.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// A rejection naming the line, the segment and the field.
pub fn reject(line: u32, segment: &str, field: &str, what: String) -> MediationError {
    MediationError::rejected(format!("line {line}, segment {segment}, {field} {what}"))
        .field(field)
        .position(line)
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
