//! The record layout declared in the step settings, validated once when the step loads.

use chrono::format::{Item, StrftimeItems};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Canonical field names the plugin understands; any other field goes to `data.attributes`.
const CANONICAL: &[&str] = &[
    "work_order",
    "material",
    "quantity",
    "unit",
    "work_centre",
    "completed_at",
    "completed_date",
    "completed_time",
    "operator",
];

/// Step settings as written in the host configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    record_length: usize,
    fields: Vec<FieldSpec>,
    #[serde(default = "default_source_system")]
    source_system: String,
    #[serde(default)]
    utc_offset: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    work_centre_table: Option<String>,
    #[serde(default)]
    encoding: Encoding,
    #[serde(default)]
    defaults: BTreeMap<String, String>,
    #[serde(default)]
    record_type: Option<RecordType>,
}

fn default_source_system() -> String {
    "mes".to_string()
}

/// One field of the layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    /// 1-based first column (byte).
    pub start: usize,
    pub length: usize,
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Implied decimal places of a `decimal` field ("0012500" with 3 → 12.5).
    #[serde(default)]
    pub decimals: u32,
    /// chrono/strftime format of `datetime`, `date` and `time` fields, e.g. `%Y%m%d%H%M%S`.
    #[serde(default)]
    pub format: Option<String>,
    /// `format`, parsed once when the step loads.
    #[serde(skip)]
    pub items: Vec<Item<'static>>,
}

impl FieldSpec {
    pub fn end(&self) -> usize {
        self.start + self.length - 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Text,
    Integer,
    Decimal,
    Datetime,
    Date,
    Time,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// 7-bit printable ASCII; any other byte is a garbled record.
    #[default]
    Ascii,
    /// ISO 8859-1; C1 control bytes (0x80–0x9F) are a garbled record.
    Latin1,
}

/// Lines whose columns `start..start+length` equal `value` are production confirmations; lines
/// whose type is listed in `skip` (headers, trailers) are skipped; any other type is rejected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordType {
    pub start: usize,
    pub length: usize,
    pub value: String,
    #[serde(default)]
    pub skip: Vec<String>,
}

/// What to do with one line under `record_type`.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection {
    /// A production confirmation.
    Take,
    /// A known other record type.
    Skip,
    /// An unknown record type (the text found there).
    Unknown(String),
}

/// A validated layout.
#[derive(Debug)]
pub struct Layout {
    pub record_length: usize,
    pub fields: Vec<FieldSpec>,
    pub source_system: String,
    /// Where the MES's local times are: a fixed offset or an IANA time zone.
    pub zone: millrace_sdk::time::Zone,
    pub work_centre_table: Option<String>,
    pub encoding: Encoding,
    pub defaults: BTreeMap<String, String>,
    pub record_type: Option<RecordType>,
}

impl Layout {
    pub fn from_settings(value: serde_json::Value) -> Result<Layout, String> {
        let settings: Settings = serde_json::from_value(value)
            .map_err(|e| format!("invalid mes-fixed-width settings: {e}"))?;
        let layout = Layout {
            record_length: settings.record_length,
            zone: millrace_sdk::time::Zone::from_settings(
                settings.utc_offset.as_deref(),
                settings.time_zone.as_deref(),
            )?,
            fields: settings.fields,
            source_system: settings.source_system,
            work_centre_table: settings.work_centre_table,
            encoding: settings.encoding,
            defaults: settings.defaults,
            record_type: settings.record_type,
        };
        let mut layout = layout;
        layout.validate()?;
        for field in &mut layout.fields {
            if let Some(format) = &field.format {
                field.items = StrftimeItems::new(format)
                    .parse_to_owned()
                    .map_err(|e| format!("field {}: format {format:?}: {e}", field.name))?;
            }
        }
        Ok(layout)
    }

    fn validate(&self) -> Result<(), String> {
        if self.record_length == 0 {
            return Err("record_length must be at least 1".into());
        }
        let mut seen = BTreeMap::new();
        for f in &self.fields {
            if f.start == 0 || f.length == 0 {
                return Err(format!(
                    "field {}: start and length are 1-based and must be at least 1",
                    f.name
                ));
            }
            if f.end() > self.record_length {
                return Err(format!(
                    "field {} ends at column {}, past record_length {}",
                    f.name,
                    f.end(),
                    self.record_length
                ));
            }
            if seen.insert(f.name.as_str(), ()).is_some() {
                return Err(format!("field {} is declared twice", f.name));
            }
            match f.kind {
                FieldType::Datetime | FieldType::Date | FieldType::Time => {
                    let format = f.format.as_deref().ok_or_else(|| {
                        format!("field {} of type {:?} needs a format", f.name, f.kind)
                    })?;
                    if StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
                        return Err(format!(
                            "field {}: format {format:?} is not a valid strftime format",
                            f.name
                        ));
                    }
                }
                _ if f.format.is_some() => {
                    return Err(format!(
                        "field {}: format only applies to datetime, date and time fields",
                        f.name
                    ));
                }
                _ => {}
            }
            if f.decimals > 0 && f.kind != FieldType::Decimal {
                return Err(format!(
                    "field {}: decimals only applies to decimal fields",
                    f.name
                ));
            }
            if f.decimals > 12 {
                return Err(format!("field {}: at most 12 implied decimals", f.name));
            }
        }
        for required in ["work_order", "material"] {
            self.require(required, &[FieldType::Text, FieldType::Integer])?;
        }
        self.require("quantity", &[FieldType::Decimal, FieldType::Integer])?;
        if self.field("unit").is_none() && !self.defaults.contains_key("unit") {
            return Err("the layout needs a unit field or a defaults.unit value".into());
        }
        match (
            self.field("completed_at"),
            self.field("completed_date"),
            self.field("completed_time"),
        ) {
            (Some(f), None, None) if f.kind == FieldType::Datetime => {}
            (None, Some(d), Some(t)) if d.kind == FieldType::Date && t.kind == FieldType::Time => {}
            _ => {
                return Err(
                    "the completion time needs either a completed_at datetime field, \
                            or a completed_date date field with a completed_time time field"
                        .into(),
                );
            }
        }
        for key in self.defaults.keys() {
            if !["unit", "work_centre", "operator"].contains(&key.as_str()) {
                return Err(format!(
                    "defaults.{key}: only unit, work_centre and operator can have a default"
                ));
            }
        }
        if let Some(rt) = &self.record_type {
            if rt.start == 0 || rt.length == 0 || rt.start + rt.length - 1 > self.record_length {
                return Err(
                    "record_type must lie within record_length (1-based start, length ≥ 1)".into(),
                );
            }
            for value in std::iter::once(&rt.value).chain(&rt.skip) {
                if value.len() != rt.length {
                    return Err(format!(
                        "record type {value:?} must be {} characters long",
                        rt.length
                    ));
                }
            }
        }
        Ok(())
    }

    fn require(&self, name: &str, kinds: &[FieldType]) -> Result<(), String> {
        match self.field(name) {
            Some(f) if kinds.contains(&f.kind) => Ok(()),
            Some(f) => Err(format!(
                "field {name} must be one of {kinds:?}, not {:?}",
                f.kind
            )),
            None => Err(format!("the layout needs a {name} field")),
        }
    }

    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn is_canonical(name: &str) -> bool {
        CANONICAL.contains(&name)
    }

    /// Whether `line` is a production confirmation under `record_type` (always, without one).
    pub fn select(&self, line: &[u8]) -> Selection {
        let Some(rt) = &self.record_type else {
            return Selection::Take;
        };
        let found = line
            .get(rt.start - 1..(rt.start - 1 + rt.length).min(line.len()))
            .unwrap_or_default();
        if found == rt.value.as_bytes() {
            Selection::Take
        } else if rt.skip.iter().any(|s| s.as_bytes() == found) {
            Selection::Skip
        } else {
            Selection::Unknown(String::from_utf8_lossy(found).into_owned())
        }
    }
}
