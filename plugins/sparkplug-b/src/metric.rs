//! A metric's value as JSON, by its Sparkplug datatype.
//!
//! Integers of the signed types arrive in `int_value`/`long_value` as two's complement of
//! their width (-1 as an Int8 is 255; writers that sign-extend to 32 bits are read the same);
//! a value outside its type's range is refused. DateTime is milliseconds since the epoch and
//! becomes RFC 3339 UTC. Arrays (Sparkplug 3.0) are packed little-endian in `bytes_value`;
//! a BooleanArray is a four-byte count followed by bits, the first in the highest bit; a
//! StringArray is NUL-terminated strings. Bytes and File become base64.

use crate::wire::{self, Value};
use millrace_sdk::MediationError;
use serde_json::{Map, Value as Json, json};

/// The shape of a resolved value: scalars go to the event's `values`, the rest to its
/// `attributes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Scalar,
    Structured,
    Null,
}

/// A metric with its name and datatype known and its value as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub name: String,
    pub datatype: Option<u32>,
    pub timestamp: Option<u64>,
    pub historical: bool,
    pub unit: Option<String>,
    pub shape: Shape,
    pub value: Json,
}

impl Resolved {
    /// The value as the text a setting is compared with: strings as they are, numbers and
    /// booleans as JSON writes them; `None` for nulls and structured values.
    pub fn text(&self) -> Option<String> {
        match (&self.shape, &self.value) {
            (Shape::Scalar, Json::String(s)) => Some(s.clone()),
            (Shape::Scalar, other) => Some(other.to_string()),
            _ => None,
        }
    }
}

/// Datatype names, by number (Sparkplug B 3.0).
const NAMES: [&str; 35] = [
    "Unknown",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "UInt8",
    "UInt16",
    "UInt32",
    "UInt64",
    "Float",
    "Double",
    "Boolean",
    "String",
    "DateTime",
    "Text",
    "UUID",
    "DataSet",
    "Bytes",
    "File",
    "Template",
    "PropertySet",
    "PropertySetList",
    "Int8Array",
    "Int16Array",
    "Int32Array",
    "Int64Array",
    "UInt8Array",
    "UInt16Array",
    "UInt32Array",
    "UInt64Array",
    "FloatArray",
    "DoubleArray",
    "BooleanArray",
    "StringArray",
    "DateTimeArray",
];

fn type_name(datatype: u32) -> String {
    NAMES
        .get(datatype as usize)
        .map_or_else(|| format!("datatype {datatype}"), |n| n.to_string())
}

/// Resolve metric `index` of a payload, named `name` with `datatype`.
pub fn resolve(
    m: &wire::Metric,
    name: String,
    datatype: Option<u32>,
    index: usize,
) -> Result<Resolved, MediationError> {
    let unit = m
        .properties
        .as_ref()
        .and_then(|p| p.text("engUnit").or_else(|| p.text("engineeringUnits")))
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    let (shape, value) = match (&m.value, m.is_null) {
        (_, true) | (None, _) => (Shape::Null, Json::Null),
        (Some(v), false) => json_of(datatype.unwrap_or(0), v).map_err(|e| {
            MediationError::rejected(format!("metric {name:?}: {e}"))
                .field(format!("metrics[{index}]"))
        })?,
    };
    Ok(Resolved {
        name,
        datatype,
        timestamp: m.timestamp,
        historical: m.is_historical,
        unit,
        shape,
        value,
    })
}

/// Whether `v` is a value of a `bits`-wide integer written unsigned or sign-extended to 32 or
/// 64 bits; the value itself.
fn signed(v: u64, bits: u32) -> Result<i64, String> {
    let low = (v << (64 - bits)) as i64 >> (64 - bits);
    let fits = v < (1u64 << bits)
        || (v >> 32 == 0 && (v as u32 as i32) as i64 == low)
        || (v as i64) == low;
    if fits {
        Ok(low)
    } else {
        Err(format!("{v} does not fit in {bits} bits"))
    }
}

fn unsigned(v: u64, bits: u32) -> Result<u64, String> {
    if bits == 64 || v < (1u64 << bits) {
        Ok(v)
    } else {
        Err(format!("{v} does not fit in {bits} unsigned bits"))
    }
}

fn float_json(f: f64) -> (Shape, Json) {
    if f.is_finite() {
        (Shape::Scalar, json!(f))
    } else {
        // JSON has no NaN or infinity: kept as text among the attributes.
        (Shape::Structured, json!(f.to_string()))
    }
}

/// The JSON of a value of `datatype` (0: infer from the field it came in).
pub fn json_of(datatype: u32, v: &Value) -> Result<(Shape, Json), String> {
    let integer = |v: &Value| match v {
        Value::Int(i) => Some(u64::from(*i)),
        Value::Long(l) => Some(*l),
        _ => None,
    };
    let wrong = || {
        format!(
            "a {} value cannot be a {}",
            type_name(datatype),
            match v {
                Value::Int(_) => "int_value",
                Value::Long(_) => "long_value",
                Value::Float(_) => "float_value",
                Value::Double(_) => "double_value",
                Value::Boolean(_) => "boolean_value",
                Value::String(_) => "string_value",
                Value::Bytes(_) => "bytes_value",
                Value::DataSet(_) => "dataset_value",
                Value::Template(_) => "template_value",
                Value::PropertySet(_) => "propertyset_value",
                Value::PropertySetList(_) => "propertysets_value",
                Value::Extension => "extension_value",
            }
        )
    };
    let scalar = |j: Json| Ok((Shape::Scalar, j));
    match (datatype, v) {
        (1..=3, _) => {
            let bits = [8, 16, 32][datatype as usize - 1];
            let n = integer(v).ok_or_else(wrong)?;
            scalar(json!(signed(n, bits)?))
        }
        (4, _) => scalar(json!(integer(v).ok_or_else(wrong)? as i64)),
        (5..=8, _) => {
            let bits = [8, 16, 32, 64][datatype as usize - 5];
            scalar(json!(unsigned(integer(v).ok_or_else(wrong)?, bits)?))
        }
        (9 | 10 | 0, Value::Float(f)) => Ok(float_json(f64::from(*f))),
        (9 | 10 | 0, Value::Double(d)) => Ok(float_json(*d)),
        (11 | 0, Value::Boolean(b)) => scalar(json!(b)),
        (12 | 14 | 15 | 0, Value::String(s)) => scalar(json!(s)),
        (13, _) => scalar(json!(rfc3339(integer(v).ok_or_else(wrong)?)?)),
        (17 | 18 | 0, Value::Bytes(b)) => Ok((Shape::Structured, json!(base64(b)))),
        (16 | 0, Value::DataSet(d)) => Ok((Shape::Structured, data_set(d)?)),
        (19 | 0, Value::Template(t)) => Ok((Shape::Structured, template(t)?)),
        (20 | 21 | 0, Value::PropertySet(_) | Value::PropertySetList(_)) => {
            Ok((Shape::Structured, json!(type_name(datatype))))
        }
        (0, Value::Int(i)) => scalar(json!(i)),
        (0, Value::Long(l)) => scalar(json!(l)),
        (22..=34, Value::Bytes(b)) => Ok((Shape::Structured, array(datatype, b)?)),
        (_, Value::Extension) => Ok((Shape::Structured, json!("extension"))),
        (35.., _) => Err(format!("datatype {datatype} is not a Sparkplug B datatype")),
        _ => Err(wrong()),
    }
}

fn data_set(d: &wire::DataSet) -> Result<Json, String> {
    let columns = d.columns.len();
    if d.types.len() != columns {
        return Err(format!(
            "the data set has {columns} columns and {} types",
            d.types.len()
        ));
    }
    let mut rows = Vec::with_capacity(d.rows.len());
    for (r, row) in d.rows.iter().enumerate() {
        if row.len() != columns {
            return Err(format!(
                "row {r} of the data set has {} cells for {columns} columns",
                row.len()
            ));
        }
        let mut cells = Vec::with_capacity(columns);
        for (c, cell) in row.iter().enumerate() {
            cells.push(match cell {
                None => Json::Null,
                Some(v) => {
                    json_of(d.types[c], v)
                        .map_err(|e| format!("data set row {r}, column {:?}: {e}", d.columns[c]))?
                        .1
                }
            });
        }
        rows.push(Json::Array(cells));
    }
    Ok(
        json!({ "columns": d.columns, "types": d.types.iter().map(|t| type_name(*t)).collect::<Vec<_>>(), "rows": rows }),
    )
}

fn template(t: &wire::Template) -> Result<Json, String> {
    let mut out = Map::new();
    if let Some(r) = &t.template_ref {
        out.insert("template_ref".into(), json!(r));
    }
    if let Some(v) = &t.version {
        out.insert("version".into(), json!(v));
    }
    if t.is_definition {
        out.insert("is_definition".into(), json!(true));
    }
    if !t.parameters.is_empty() {
        let mut parameters = Map::new();
        for (name, v) in &t.parameters {
            let value = match v {
                Some(v) => {
                    json_of(0, v)
                        .map_err(|e| format!("template parameter {name:?}: {e}"))?
                        .1
                }
                None => Json::Null,
            };
            parameters.insert(name.clone(), value);
        }
        out.insert("parameters".into(), Json::Object(parameters));
    }
    let mut metrics = Map::new();
    for (i, m) in t.metrics.iter().enumerate() {
        let name = m.name.clone().unwrap_or_else(|| format!("#{i}"));
        let value = match (&m.value, m.is_null) {
            (Some(v), false) => {
                json_of(m.datatype.unwrap_or(0), v)
                    .map_err(|e| format!("template metric {name:?}: {e}"))?
                    .1
            }
            _ => Json::Null,
        };
        metrics.insert(name, value);
    }
    out.insert("metrics".into(), Json::Object(metrics));
    Ok(Json::Object(out))
}

/// A Sparkplug 3.0 array from its packed bytes.
fn array(datatype: u32, b: &[u8]) -> Result<Json, String> {
    let width = match datatype {
        22 | 26 => 1,
        23 | 27 => 2,
        24 | 28 | 30 => 4,
        25 | 29 | 31 | 34 => 8,
        _ => 0,
    };
    if width > 0 && !b.len().is_multiple_of(width) {
        return Err(format!(
            "a {} of {} bytes is not a whole number of {width}-byte elements",
            type_name(datatype),
            b.len()
        ));
    }
    let chunks = || b.chunks_exact(width.max(1));
    let le = |c: &[u8]| {
        let mut eight = [0u8; 8];
        eight[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(eight)
    };
    Ok(match datatype {
        22..=25 => {
            let bits = (width * 8) as u32;
            Json::Array(
                chunks()
                    .map(|c| json!(((le(c) << (64 - bits)) as i64) >> (64 - bits)))
                    .collect(),
            )
        }
        26..=29 => Json::Array(chunks().map(|c| json!(le(c))).collect()),
        30 => Json::Array(
            chunks()
                .map(|c| float_json(f64::from(f32::from_bits(le(c) as u32))).1)
                .collect(),
        ),
        31 => Json::Array(
            chunks()
                .map(|c| float_json(f64::from_bits(le(c))).1)
                .collect(),
        ),
        34 => Json::Array(
            chunks()
                .map(|c| rfc3339(le(c)).map(Json::String))
                .collect::<Result<_, _>>()?,
        ),
        32 => {
            if b.len() < 4 {
                return Err("a BooleanArray shorter than its four-byte count".into());
            }
            let count = u32::from_le_bytes(b[..4].try_into().expect("four bytes")) as usize;
            let bits = &b[4..];
            if bits.len() != count.div_ceil(8) {
                return Err(format!(
                    "a BooleanArray of {count} values needs {} bytes of bits, it has {}",
                    count.div_ceil(8),
                    bits.len()
                ));
            }
            Json::Array(
                (0..count)
                    .map(|i| json!(bits[i / 8] & (0x80 >> (i % 8)) != 0))
                    .collect(),
            )
        }
        33 => {
            let Some(body) = b.strip_suffix(&[0]) else {
                return Err("a StringArray must end with a NUL".into());
            };
            Json::Array(
                body.split(|c| *c == 0)
                    .map(|s| {
                        std::str::from_utf8(s)
                            .map(|s| json!(s))
                            .map_err(|_| "a StringArray element is not UTF-8".to_string())
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
        _ => unreachable!("array datatypes are 22..=34"),
    })
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: u64) -> Result<String, String> {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .ok_or_else(|| format!("{ms} ms since the epoch is not a date"))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A Sparkplug metric name as a snake_case value name: `Motor/Speed RPM` → `motor_speed_rpm`,
/// `bdSeq` → `bd_seq`; one that would start with a digit gets `m_` before it.
pub fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && previous_lower && !out.ends_with('_') {
                out.push('_');
            }
            previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            out.push(c.to_ascii_lowercase());
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            previous_lower = false;
        }
    }
    let trimmed = out.trim_end_matches('_');
    match trimmed.chars().next() {
        None => "metric".into(),
        Some(c) if c.is_ascii_digit() => format!("m_{trimmed}"),
        Some(_) => trimmed.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_snake_case() {
        assert_eq!(snake("Motor/Speed RPM"), "motor_speed_rpm");
        assert_eq!(snake("bdSeq"), "bd_seq");
        assert_eq!(snake("Node Control/Rebirth"), "node_control_rebirth");
        assert_eq!(snake("3-phase current"), "m_3_phase_current");
        assert_eq!(snake("///"), "metric");
        assert_eq!(snake("Température"), "temp_rature");
    }

    #[test]
    fn signed_integers_read_both_encodings() {
        assert_eq!(signed(0xFF, 8), Ok(-1));
        assert_eq!(signed(0xFFFF_FFFF, 8), Ok(-1));
        assert_eq!(signed(0xFFFF_FF80, 8), Ok(-128));
        assert_eq!(signed(127, 8), Ok(127));
        assert!(signed(0x1FF, 8).is_err());
        assert_eq!(signed(0xFFFF_FFFF, 32), Ok(-1));
        assert_eq!(signed(u64::MAX, 16), Ok(-1));
    }

    #[test]
    fn arrays_follow_the_specification_examples() {
        let (_, v) = json_of(32, &Value::Bytes(vec![0x0C, 0, 0, 0, 0x34, 0xD0])).unwrap();
        assert_eq!(
            v,
            json!([
                false, false, true, true, false, true, false, false, true, true, false, true
            ])
        );
        let (_, v) = json_of(22, &Value::Bytes(vec![0xEF, 0x7B])).unwrap();
        assert_eq!(v, json!([-17, 123]));
        let (_, v) = json_of(23, &Value::Bytes(vec![0xD0, 0x8A, 0x30, 0x75])).unwrap();
        assert_eq!(v, json!([-30000, 30000]));
        let bytes = vec![0xFF, 0xFF, 0xFF, 0xFF, 0xFA, 0xAF, 0xCB, 0x12];
        let (_, v) = json_of(24, &Value::Bytes(bytes)).unwrap();
        assert_eq!(v, json!([-1, 315338746]));
        let (_, v) = json_of(27, &Value::Bytes(vec![0x1E, 0x00, 0x88, 0xCC])).unwrap();
        assert_eq!(v, json!([30, 52360]));
        let (_, v) = json_of(33, &Value::Bytes(b"ABC\0hello\0".to_vec())).unwrap();
        assert_eq!(v, json!(["ABC", "hello"]));
        assert!(json_of(33, &Value::Bytes(b"ABC".to_vec())).is_err());
        assert!(json_of(24, &Value::Bytes(vec![1, 2, 3])).is_err());
        assert!(json_of(32, &Value::Bytes(vec![9, 0, 0, 0, 0xFF])).is_err());
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn a_value_in_the_wrong_field_is_refused() {
        assert!(json_of(11, &Value::String("x".into())).is_err());
        assert!(json_of(12, &Value::Int(3)).is_err());
        assert!(json_of(99, &Value::Int(3)).is_err());
        assert!(json_of(5, &Value::Int(256)).is_err());
        assert_eq!(
            json_of(13, &Value::Long(0)).unwrap().1,
            json!("1970-01-01T00:00:00.000Z")
        );
    }
}
