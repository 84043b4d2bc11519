//! The Sparkplug B payload, read from protobuf's wire format by hand: the schema is small and
//! stable (`encoder/sparkplug_b.proto`), and a reader of our own bounds what a hostile payload
//! can make the plugin do (nesting depth, lengths checked against what is left, no allocation
//! larger than the input).
//!
//! Unknown fields are skipped, as protobuf requires; a field with the wrong wire type, a length
//! past the end or a varint over ten bytes is an error naming where it was met.

/// How deep templates, data sets and property sets may nest (a template's metric whose value is
/// a template, ...). Real payloads use two or three levels.
const MAX_DEPTH: usize = 16;

/// A payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// What was being read, e.g. `metrics[3].alias`.
    pub at: String,
    pub what: String,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.what)
    }
}

type Result<T> = std::result::Result<T, WireError>;

fn error(at: &str, what: impl Into<String>) -> WireError {
    WireError {
        at: if at.is_empty() {
            "payload".into()
        } else {
            at.into()
        },
        what: what.into(),
    }
}

/// A field's value as it came off the wire.
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A cursor over one message's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    fn varint(&mut self, path: &str) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(error(path, "the payload ends inside a number"));
            };
            self.at += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(error(path, "a number longer than ten bytes"))
    }

    fn take(&mut self, n: usize, path: &str) -> Result<&'a [u8]> {
        if self.bytes.len() - self.at < n {
            return Err(error(
                path,
                format!(
                    "{n} bytes announced, {} left in the payload",
                    self.bytes.len() - self.at
                ),
            ));
        }
        let taken = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(taken)
    }

    /// The next field, or `None` at the end of the message.
    fn field(&mut self, path: &str) -> Result<Option<(u32, Raw<'a>)>> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint(path)?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|n| *n > 0 && *n < (1 << 29))
            .ok_or_else(|| error(path, format!("field number {} is invalid", key >> 3)))?;
        let raw = match key & 7 {
            0 => Raw::Varint(self.varint(path)?),
            1 => Raw::Fixed64(u64::from_le_bytes(
                self.take(8, path)?.try_into().expect("eight bytes"),
            )),
            2 => {
                let n = self.varint(path)?;
                let n = usize::try_from(n).map_err(|_| error(path, "a length over 4 GiB"))?;
                Raw::Bytes(self.take(n, path)?)
            }
            5 => Raw::Fixed32(u32::from_le_bytes(
                self.take(4, path)?.try_into().expect("four bytes"),
            )),
            3 | 4 => return Err(error(path, "protobuf groups are not used by Sparkplug B")),
            other => return Err(error(path, format!("wire type {other} does not exist"))),
        };
        Ok(Some((number, raw)))
    }
}

fn varint(raw: Raw<'_>, path: &str, name: &str) -> Result<u64> {
    match raw {
        Raw::Varint(v) => Ok(v),
        _ => Err(error(path, format!("{name} is not encoded as a varint"))),
    }
}

fn bytes<'a>(raw: Raw<'a>, path: &str, name: &str) -> Result<&'a [u8]> {
    match raw {
        Raw::Bytes(b) => Ok(b),
        _ => Err(error(path, format!("{name} is not length-delimited"))),
    }
}

fn string(raw: Raw<'_>, path: &str, name: &str) -> Result<String> {
    let b = bytes(raw, path, name)?;
    String::from_utf8(b.to_vec()).map_err(|_| error(path, format!("{name} is not UTF-8")))
}

fn float(raw: Raw<'_>, path: &str) -> Result<f32> {
    match raw {
        Raw::Fixed32(v) => Ok(f32::from_bits(v)),
        _ => Err(error(path, "float_value is not a 32-bit float")),
    }
}

fn double(raw: Raw<'_>, path: &str) -> Result<f64> {
    match raw {
        Raw::Fixed64(v) => Ok(f64::from_bits(v)),
        _ => Err(error(path, "double_value is not a 64-bit float")),
    }
}

/// A value in one of the `oneof value` fields shared (with different numbers) by metrics,
/// data set cells, template parameters and property values.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(u32),
    Long(u64),
    Float(f32),
    Double(f64),
    Boolean(bool),
    String(String),
    Bytes(Vec<u8>),
    DataSet(DataSet),
    Template(Template),
    PropertySet(PropertySet),
    PropertySetList(Vec<PropertySet>),
    /// An extension value, whose contents no schema here describes.
    Extension,
}

/// `Payload`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Payload {
    pub timestamp: Option<u64>,
    pub metrics: Vec<Metric>,
    pub seq: Option<u64>,
    pub uuid: Option<String>,
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metric {
    pub name: Option<String>,
    pub alias: Option<u64>,
    pub timestamp: Option<u64>,
    pub datatype: Option<u32>,
    pub is_historical: bool,
    pub is_transient: bool,
    pub is_null: bool,
    pub properties: Option<PropertySet>,
    pub value: Option<Value>,
}

/// `Payload.DataSet`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DataSet {
    pub num_of_columns: Option<u64>,
    pub columns: Vec<String>,
    pub types: Vec<u32>,
    pub rows: Vec<Vec<Option<Value>>>,
}

/// `Payload.Template` (its parameters by name).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Template {
    pub version: Option<String>,
    pub metrics: Vec<Metric>,
    pub parameters: Vec<(String, Option<Value>)>,
    pub template_ref: Option<String>,
    pub is_definition: bool,
}

/// `Payload.PropertySet`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PropertySet {
    pub keys: Vec<String>,
    pub values: Vec<Option<Value>>,
}

impl PropertySet {
    /// The string value of the property `key` (compared without case).
    pub fn text(&self, key: &str) -> Option<&str> {
        let i = self.keys.iter().position(|k| k.eq_ignore_ascii_case(key))?;
        match self.values.get(i)? {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }
}

/// Read a Sparkplug B payload.
pub fn payload(buf: &[u8]) -> Result<Payload> {
    let mut r = Reader::new(buf);
    let mut p = Payload::default();
    while let Some((number, raw)) = r.field("")? {
        match number {
            1 => p.timestamp = Some(varint(raw, "timestamp", "timestamp")?),
            2 => {
                let at = format!("metrics[{}]", p.metrics.len());
                p.metrics.push(metric(bytes_of(raw, &at)?, &at, 0)?);
            }
            3 => p.seq = Some(varint(raw, "seq", "seq")?),
            4 => p.uuid = Some(string(raw, "uuid", "uuid")?),
            5 => p.body = Some(bytes(raw, "body", "body")?.to_vec()),
            _ => {}
        }
    }
    Ok(p)
}

fn bytes_of<'a>(raw: Raw<'a>, at: &str) -> Result<&'a [u8]> {
    bytes(raw, at, "a nested message")
}

fn deeper(depth: usize, at: &str) -> Result<usize> {
    if depth >= MAX_DEPTH {
        return Err(error(
            at,
            format!("nested more than {MAX_DEPTH} levels deep"),
        ));
    }
    Ok(depth + 1)
}

fn metric(buf: &[u8], at: &str, depth: usize) -> Result<Metric> {
    let depth = deeper(depth, at)?;
    let mut r = Reader::new(buf);
    let mut m = Metric::default();
    while let Some((number, raw)) = r.field(at)? {
        match number {
            1 => m.name = Some(string(raw, at, "name")?),
            2 => m.alias = Some(varint(raw, at, "alias")?),
            3 => m.timestamp = Some(varint(raw, at, "timestamp")?),
            4 => m.datatype = Some(varint(raw, at, "datatype")? as u32),
            5 => m.is_historical = varint(raw, at, "is_historical")? != 0,
            6 => m.is_transient = varint(raw, at, "is_transient")? != 0,
            7 => m.is_null = varint(raw, at, "is_null")? != 0,
            9 => {
                let at = format!("{at}.properties");
                m.properties = Some(property_set(bytes_of(raw, &at)?, &at, depth)?);
            }
            10..=19 => m.value = Some(value(number - 10, raw, at, depth)?),
            _ => {}
        }
    }
    Ok(m)
}

/// The value of a `oneof value` whose first field is numbered so that `index` 0 is
/// `int_value`; metrics continue with bytes, data set and template, property values with
/// property set and property set list.
fn value(index: u32, raw: Raw<'_>, at: &str, depth: usize) -> Result<Value> {
    Ok(match index {
        0 => Value::Int(varint(raw, at, "int_value")? as u32),
        1 => Value::Long(varint(raw, at, "long_value")?),
        2 => Value::Float(float(raw, at)?),
        3 => Value::Double(double(raw, at)?),
        4 => Value::Boolean(varint(raw, at, "boolean_value")? != 0),
        5 => Value::String(string(raw, at, "string_value")?),
        6 => Value::Bytes(bytes(raw, at, "bytes_value")?.to_vec()),
        7 => {
            let at = format!("{at}.dataset_value");
            Value::DataSet(data_set(bytes_of(raw, &at)?, &at, depth)?)
        }
        8 => {
            let at = format!("{at}.template_value");
            Value::Template(template(bytes_of(raw, &at)?, &at, depth)?)
        }
        _ => Value::Extension,
    })
}

/// A data set cell or template parameter value: `int_value` .. `string_value`, then an
/// extension.
fn simple_value(index: u32, raw: Raw<'_>, at: &str) -> Result<Value> {
    match index {
        0..=5 => value(index, raw, at, 0),
        _ => Ok(Value::Extension),
    }
}

fn data_set(buf: &[u8], at: &str, depth: usize) -> Result<DataSet> {
    let depth = deeper(depth, at)?;
    let mut r = Reader::new(buf);
    let mut d = DataSet::default();
    while let Some((number, raw)) = r.field(at)? {
        match number {
            1 => d.num_of_columns = Some(varint(raw, at, "num_of_columns")?),
            2 => d.columns.push(string(raw, at, "columns")?),
            3 => match raw {
                // `repeated uint32` may come packed (proto3 writers) or one by one.
                Raw::Bytes(packed) => {
                    let mut p = Reader::new(packed);
                    while p.at < packed.len() {
                        d.types.push(p.varint(at)? as u32);
                    }
                }
                raw => d.types.push(varint(raw, at, "types")? as u32),
            },
            4 => {
                let at = format!("{at}.rows[{}]", d.rows.len());
                let row_bytes = bytes_of(raw, &at)?;
                let mut row = Vec::new();
                let mut rr = Reader::new(row_bytes);
                while let Some((number, raw)) = rr.field(&at)? {
                    if number == 1 {
                        let cell_at = format!("{at}[{}]", row.len());
                        row.push(cell(bytes_of(raw, &cell_at)?, &cell_at, depth)?);
                    }
                }
                d.rows.push(row);
            }
            _ => {}
        }
    }
    Ok(d)
}

/// A data set cell: its value, or `None` when it has none (a null).
fn cell(buf: &[u8], at: &str, depth: usize) -> Result<Option<Value>> {
    deeper(depth, at)?;
    let mut r = Reader::new(buf);
    let mut v = None;
    while let Some((number, raw)) = r.field(at)? {
        if (1..=7).contains(&number) {
            v = Some(simple_value(number - 1, raw, at)?);
        }
    }
    Ok(v)
}

fn template(buf: &[u8], at: &str, depth: usize) -> Result<Template> {
    let depth = deeper(depth, at)?;
    let mut r = Reader::new(buf);
    let mut t = Template::default();
    while let Some((number, raw)) = r.field(at)? {
        match number {
            1 => t.version = Some(string(raw, at, "version")?),
            2 => {
                let at = format!("{at}.metrics[{}]", t.metrics.len());
                t.metrics.push(metric(bytes_of(raw, &at)?, &at, depth)?);
            }
            3 => {
                let at = format!("{at}.parameters[{}]", t.parameters.len());
                let mut pr = Reader::new(bytes_of(raw, &at)?);
                let (mut name, mut v) = (String::new(), None);
                while let Some((number, raw)) = pr.field(&at)? {
                    match number {
                        1 => name = string(raw, &at, "name")?,
                        3..=9 => v = Some(simple_value(number - 3, raw, &at)?),
                        _ => {}
                    }
                }
                t.parameters.push((name, v));
            }
            4 => t.template_ref = Some(string(raw, at, "template_ref")?),
            5 => t.is_definition = varint(raw, at, "is_definition")? != 0,
            _ => {}
        }
    }
    Ok(t)
}

fn property_set(buf: &[u8], at: &str, depth: usize) -> Result<PropertySet> {
    let depth = deeper(depth, at)?;
    let mut r = Reader::new(buf);
    let mut s = PropertySet::default();
    while let Some((number, raw)) = r.field(at)? {
        match number {
            1 => s.keys.push(string(raw, at, "keys")?),
            2 => {
                let at = format!("{at}.values[{}]", s.values.len());
                s.values
                    .push(property_value(bytes_of(raw, &at)?, &at, depth)?);
            }
            _ => {}
        }
    }
    Ok(s)
}

fn property_value(buf: &[u8], at: &str, depth: usize) -> Result<Option<Value>> {
    let depth = deeper(depth, at)?;
    let mut r = Reader::new(buf);
    let (mut v, mut null) = (None, false);
    while let Some((number, raw)) = r.field(at)? {
        match number {
            2 => null = varint(raw, at, "is_null")? != 0,
            3..=8 => v = Some(simple_value(number - 3, raw, at)?),
            9 => {
                let at = format!("{at}.propertyset_value");
                v = Some(Value::PropertySet(property_set(
                    bytes_of(raw, &at)?,
                    &at,
                    depth,
                )?));
            }
            10 => {
                let at = format!("{at}.propertysets_value");
                let mut lr = Reader::new(bytes_of(raw, &at)?);
                let mut list = Vec::new();
                while let Some((number, raw)) = lr.field(&at)? {
                    if number == 1 {
                        list.push(property_set(bytes_of(raw, &at)?, &at, depth)?);
                    }
                }
                v = Some(Value::PropertySetList(list));
            }
            11 => v = Some(Value::Extension),
            _ => {}
        }
    }
    Ok(if null { None } else { v })
}
