//! `canonical-map`: replaces plant-local codes in a canonical event (work centres, materials,
//! units, reason codes, …) with canonical ones from the plant's lookup tables, and converts
//! quantities to canonical units. The event keeps its id, type and schema; only the mapped values
//! change. An unknown code is rejected naming the table and the key.
//!
//! Paths address values in the CloudEvent: `data.work_centre`, and `[]` walks every element of a
//! list: `data.purchase_orders[].items[].unit`.

use millrace_sdk::{CLOUDEVENTS_CONTENT_TYPE, Host, MediationError, Message, Plugin, PluginInfo};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    codes: Vec<CodeMap>,
    #[serde(default)]
    units: Vec<UnitConversion>,
}

/// Map the value at `path` through `table`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeMap {
    path: String,
    table: String,
    /// Whether the value must be present (default: a missing value is left alone).
    #[serde(default)]
    required: bool,
}

/// Convert `quantity` in `unit` (paths relative to each object at `at`) through `table`, whose
/// values are `CANONICAL_UNIT` or `CANONICAL_UNIT FACTOR` (quantity × factor).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitConversion {
    #[serde(default = "default_at")]
    at: String,
    #[serde(default = "default_quantity")]
    quantity: String,
    #[serde(default = "default_unit")]
    unit: String,
    table: String,
}

fn default_at() -> String {
    "data".into()
}
fn default_quantity() -> String {
    "quantity".into()
}
fn default_unit() -> String {
    "unit".into()
}

/// The plugin.
pub struct CanonicalMap {
    settings: Settings,
}

impl Plugin for CanonicalMap {
    fn describe() -> PluginInfo {
        PluginInfo::new("canonical-map", env!("CARGO_PKG_VERSION"))
            .accepts([CLOUDEVENTS_CONTENT_TYPE])
    }

    fn new(host: &impl Host) -> Result<Self, String> {
        let settings: Settings = host.settings()?;
        if settings.codes.is_empty() && settings.units.is_empty() {
            return Err("nothing to map: give codes and/or units".into());
        }
        let paths = settings
            .codes
            .iter()
            .map(|c| &c.path)
            .chain(settings.units.iter().map(|u| &u.at));
        for path in paths {
            if path
                .split('.')
                .any(|s| s.is_empty() || s.trim_end_matches("[]").is_empty())
            {
                return Err(format!("path {path:?} must be names joined by dots"));
            }
        }
        let tables = settings
            .codes
            .iter()
            .map(|c| &c.table)
            .chain(settings.units.iter().map(|u| &u.table));
        host.require_tables(tables)?;
        Ok(CanonicalMap { settings })
    }

    fn mediate(&self, host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let mut event: Value = input.body_json()?;
        if !event.is_object() {
            return Err(MediationError::rejected(
                "the body is not a CloudEvent object",
            ));
        }
        for map in &self.settings.codes {
            let mut found = 0;
            for_each(&mut event, &segments(&map.path), "", &mut |at, value| {
                found += 1;
                let Some(local) = value.as_str().map(str::to_string) else {
                    return Err(
                        MediationError::rejected(format!("{at} is not a text code")).field(at)
                    );
                };
                *value = Value::String(host.code(&map.table, &local, at)?);
                Ok(())
            })?;
            if found == 0 && map.required {
                return Err(MediationError::rejected(format!(
                    "{} is required but missing",
                    map.path
                ))
                .field(map.path.as_str()));
            }
        }
        for conversion in &self.settings.units {
            for_each(
                &mut event,
                &segments(&conversion.at),
                "",
                &mut |at, object| convert(host, conversion, at, object),
            )?;
        }
        let body = serde_json::to_vec(&event).expect("a JSON value serializes");
        Ok(vec![Message {
            headers: Vec::new(),
            body,
            content_type: CLOUDEVENTS_CONTENT_TYPE.into(),
            ..input
        }])
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.split('.')
        .flat_map(|s| match s.strip_suffix("[]") {
            Some(name) => vec![name, "[]"],
            None => vec![s],
        })
        .collect()
}

/// Call `f` on every value at `path` (a `[]` segment walks every list element); `at` is the
/// concrete location, e.g. `data.purchase_orders[0].items[1].unit`. Absent values are skipped.
fn for_each(
    value: &mut Value,
    path: &[&str],
    at: &str,
    f: &mut dyn FnMut(&str, &mut Value) -> Result<(), MediationError>,
) -> Result<(), MediationError> {
    let Some((head, rest)) = path.split_first() else {
        return f(at, value);
    };
    match (*head, value) {
        ("[]", Value::Array(items)) => {
            for (i, item) in items.iter_mut().enumerate() {
                for_each(item, rest, &format!("{at}[{i}]"), f)?;
            }
            Ok(())
        }
        (name, Value::Object(map)) if name != "[]" => match map.get_mut(name) {
            Some(child) => {
                let at = if at.is_empty() {
                    name.to_string()
                } else {
                    format!("{at}.{name}")
                };
                for_each(child, rest, &at, f)
            }
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Convert one object's quantity and unit.
fn convert(
    host: &impl Host,
    c: &UnitConversion,
    at: &str,
    object: &mut Value,
) -> Result<(), MediationError> {
    let Some(map) = object.as_object_mut() else {
        return Ok(());
    };
    let Some(unit) = map.get(&c.unit).and_then(Value::as_str).map(str::to_string) else {
        return Ok(());
    };
    let unit_at = format!("{at}.{}", c.unit);
    let target = host.code(&c.table, &unit, &unit_at)?;
    let (canonical, factor) = match target.split_once(' ') {
        None => (target.as_str(), 1.0),
        Some((u, f)) => match f.trim().parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => (u, f),
            _ => {
                return Err(MediationError::rejected(format!(
                    "lookup table {} maps {unit:?} to {target:?}; expected \"UNIT\" or \"UNIT FACTOR\"",
                    c.table
                )));
            }
        },
    };
    if factor != 1.0 {
        let quantity_at = format!("{at}.{}", c.quantity);
        let quantity = map
            .get(&c.quantity)
            .and_then(Value::as_f64)
            .ok_or_else(|| {
                MediationError::rejected(format!("{quantity_at} is not a number"))
                    .field(quantity_at.as_str())
            })?;
        // Nine decimals: enough for any unit of measure, and no binary noise (0.30000000000000004).
        let converted = (quantity * factor * 1e9).round() / 1e9;
        map.insert(c.quantity.clone(), serde_json::json!(converted));
    }
    map.insert(c.unit.clone(), Value::String(canonical.to_string()));
    Ok(())
}

millrace_sdk::export!(CanonicalMap);

#[cfg(test)]
mod tests;
