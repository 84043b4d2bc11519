//! The canonical event catalog this plugin version enforces: the CloudEvents envelope, the
//! event type and major version, and `data` against the embedded JSON Schema.

use millrace_sdk::MediationError;
use serde_json::Value;
use std::sync::OnceLock;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/schemas.rs"));
}

/// Prefix of every canonical event type.
pub const TYPE_PREFIX: &str = "millrace.";

/// An event type that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kind {
    /// Event name without prefix and version, e.g. `quality.hold`.
    pub name: String,
    pub major: u32,
}

struct Entry {
    name: &'static str,
    major: u32,
    text: &'static str,
    id: String,
    validator: OnceLock<jsonschema::Validator>,
}

/// Every embedded schema; validators are built on first use.
pub struct Catalog {
    entries: Vec<Entry>,
}

impl Catalog {
    pub fn embedded() -> Catalog {
        let entries = embedded::SCHEMAS
            .iter()
            .map(|&(name, major, text)| {
                let schema: Value =
                    serde_json::from_str(text).expect("embedded schemas are JSON (tested)");
                let id = schema["$id"].as_str().unwrap_or_default().to_string();
                Entry {
                    name,
                    major,
                    text,
                    id,
                    validator: OnceLock::new(),
                }
            })
            .collect();
        Catalog { entries }
    }

    /// `(event, major)` of every schema, sorted.
    pub fn known(&self) -> impl Iterator<Item = (&str, u32)> {
        self.entries.iter().map(|e| (e.name, e.major))
    }

    /// Check one event; the error says what is wrong and where.
    pub fn check(&self, event: &Value) -> Result<Kind, MediationError> {
        let object = event.as_object().ok_or_else(|| {
            MediationError::rejected("the body is not a JSON object (a CloudEvent)")
        })?;
        let attribute = |name: &str| -> Result<&str, MediationError> {
            match object.get(name) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s),
                Some(_) => Err(MediationError::rejected(format!(
                    "CloudEvents attribute {name} must be a non-empty string"
                ))
                .field(name)),
                None => Err(MediationError::rejected(format!(
                    "CloudEvents attribute {name} is missing"
                ))
                .field(name)),
            }
        };
        let specversion = attribute("specversion")?;
        if specversion != "1.0" {
            return Err(MediationError::rejected(format!(
                "CloudEvents specversion {specversion:?} is not supported (only \"1.0\")"
            ))
            .field("specversion"));
        }
        attribute("id")?;
        attribute("source")?;
        let ty = attribute("type")?;
        let kind = parse_type(ty)?;
        let entry = self.entry(&kind, ty)?;
        if let Some(content_type) = object.get("datacontenttype")
            && content_type != "application/json"
        {
            return Err(MediationError::rejected(format!(
                "datacontenttype {content_type} is not application/json"
            ))
            .field("datacontenttype"));
        }
        if let Some(schema) = object.get("dataschema")
            && schema.as_str() != Some(entry.id.as_str())
        {
            return Err(MediationError::rejected(format!(
                "dataschema {schema} does not match type {ty} (expected {:?})",
                entry.id
            ))
            .field("dataschema"));
        }
        let data = object.get("data").ok_or_else(|| {
            MediationError::rejected(format!("event {ty} has no data")).field("data")
        })?;
        let validator = entry.validator.get_or_init(|| {
            let schema: Value = serde_json::from_str(entry.text).expect("embedded schema is JSON");
            jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .expect("embedded schemas compile (tested)")
        });
        let mut errors = validator.iter_errors(data);
        if let Some(first) = errors.next() {
            let more = errors.count();
            let at = field_path("data", first.instance_path().as_str());
            let also = match more {
                0 => String::new(),
                n => format!(" (and {n} more error(s))"),
            };
            return Err(MediationError::rejected(format!(
                "{ty}: {at}: {first}{also}; the event does not match {}",
                entry.id
            ))
            .field(at));
        }
        Ok(kind)
    }

    fn entry(&self, kind: &Kind, ty: &str) -> Result<&Entry, MediationError> {
        let versions: Vec<u32> = self
            .entries
            .iter()
            .filter(|e| e.name == kind.name)
            .map(|e| e.major)
            .collect();
        if versions.is_empty() {
            let known: Vec<String> = self
                .known()
                .map(|(name, major)| format!("{TYPE_PREFIX}{name}.v{major}"))
                .collect();
            return Err(MediationError::rejected(format!(
                "event type {ty} is not a canonical event known to policy-guard {} (known: {})",
                env!("CARGO_PKG_VERSION"),
                known.join(", ")
            ))
            .field("type"));
        }
        self.entries
            .iter()
            .find(|e| e.name == kind.name && e.major == kind.major)
            .ok_or_else(|| {
                let known: Vec<String> = versions.iter().map(|v| format!("v{v}")).collect();
                MediationError::rejected(format!(
                    "event type {ty}: major version {} of {} is unknown to policy-guard {} (it knows {}); deploy a policy-guard that knows the new version",
                    kind.major,
                    kind.name,
                    env!("CARGO_PKG_VERSION"),
                    known.join(", ")
                ))
                .field("type")
            })
    }
}

/// `millrace.quality.hold.v1` → `quality.hold`, 1.
pub fn parse_type(ty: &str) -> Result<Kind, MediationError> {
    let parsed = ty
        .strip_prefix(TYPE_PREFIX)
        .and_then(|rest| rest.rsplit_once(".v"))
        .and_then(|(name, major)| {
            let major = major.parse::<u32>().ok()?;
            (!name.is_empty()).then(|| Kind {
                name: name.to_string(),
                major,
            })
        });
    parsed.ok_or_else(|| {
        MediationError::rejected(format!(
            "event type {ty:?} is not of the form millrace.EVENT.vMAJOR"
        ))
        .field("type")
    })
}

/// A JSON pointer under `root` as a dotted path with indexes: `/items/0/lots/1` under `data`
/// is `data.items[0].lots[1]`.
pub fn field_path(root: &str, pointer: &str) -> String {
    let mut path = root.to_string();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.parse::<usize>().is_ok() {
            path.push_str(&format!("[{segment}]"));
        } else {
            path.push('.');
            path.push_str(&segment);
        }
    }
    path
}
