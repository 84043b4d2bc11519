//! The quality-hold rule, kept in the plant's durable state under `hold/LOT`.
//!
//! - `quality.hold`: the lot goes on hold (the first hold's time is kept when a lot is held
//!   again) and a `finance.review-requested` event is emitted (blocked stock needs a valuation
//!   decision).
//! - `quality.released`: the hold is lifted (a release of a lot not on hold is logged).
//! - `shipment.asn`, `shipment.departed`: every lot the event carries (`lot` fields and `lots`
//!   lists, at any depth of `data`) is checked; one on hold rejects the event.

use crate::schema::{Kind, field_path};
use millrace_sdk::{CloudEvent, Host, Level, MediationError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Event type of the finance review request.
pub const FINANCE_REVIEW: &str = "millrace.finance.review-requested.v1";
const FINANCE_REVIEW_SCHEMA: &str = "urn:millrace:schema:finance.review-requested:v1";

/// What the state keeps per lot on hold.
#[derive(Debug, Serialize, Deserialize)]
struct Hold {
    since: String,
    reason_code: String,
    material: String,
    event: String,
}

/// `data` of a finance review request.
#[derive(Debug, Serialize)]
pub struct Review {
    topic: &'static str,
    plant: String,
    lot: String,
    material: String,
    reason_code: String,
    since: String,
    cause: Cause,
}

#[derive(Debug, Serialize)]
struct Cause {
    event_type: String,
    event_id: String,
}

fn key(lot: &str) -> String {
    format!("hold/{lot}")
}

fn text<'a>(data: &'a Value, field: &str) -> &'a str {
    data.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// Apply the rule to a checked event; the finance review to emit, if any.
pub fn apply(
    host: &impl Host,
    kind: &Kind,
    event: &Value,
) -> Result<Option<CloudEvent<Review>>, MediationError> {
    let data = &event["data"];
    let id = text(event, "id");
    match kind.name.as_str() {
        "quality.hold" => {
            let lot = text(data, "lot");
            let since = match host.state_get(&key(lot))? {
                Some(existing) => match serde_json::from_str::<Hold>(&existing) {
                    Ok(hold) => hold.since,
                    Err(_) => text(data, "held_at").to_string(),
                },
                None => text(data, "held_at").to_string(),
            };
            let hold = Hold {
                since: since.clone(),
                reason_code: text(data, "reason_code").to_string(),
                material: text(data, "material").to_string(),
                event: id.to_string(),
            };
            let value = serde_json::to_string(&hold).expect("a hold serializes");
            host.state_put(&key(lot), &value)?;
            let review = Review {
                topic: "quality-hold",
                plant: text(data, "plant").to_string(),
                lot: lot.to_string(),
                material: hold.material,
                reason_code: hold.reason_code,
                since,
                cause: Cause {
                    event_type: text(event, "type").to_string(),
                    event_id: id.to_string(),
                },
            };
            let source = format!("/plants/{}/policy-guard", review.plant);
            Ok(Some(
                CloudEvent::new(
                    format!("{id}-finance-review"),
                    source,
                    FINANCE_REVIEW,
                    review,
                )
                .subject(lot)
                .time(text(data, "held_at"))
                .dataschema(FINANCE_REVIEW_SCHEMA),
            ))
        }
        "quality.released" => {
            let lot = text(data, "lot");
            if !host.state_delete(&key(lot))? {
                host.log(
                    Level::Info,
                    &format!("release {id}: lot {lot} was not on hold"),
                );
            }
            Ok(None)
        }
        "shipment.asn" | "shipment.departed" => {
            let mut lots = Vec::new();
            collect_lots(data, "", false, &mut lots);
            let mut held = Vec::new();
            for (pointer, lot) in &lots {
                if let Some(value) = host.state_get(&key(lot))? {
                    held.push((pointer, lot, value));
                }
            }
            let Some((pointer, lot, value)) = held.first() else {
                return Ok(None);
            };
            let hold: Option<Hold> = serde_json::from_str(value).ok();
            let detail = match &hold {
                Some(h) => format!(
                    "lot {lot} on hold since {} (reason {}, hold event {})",
                    h.since, h.reason_code, h.event
                ),
                None => format!("lot {lot} on hold"),
            };
            let others = match held.len() {
                1 => String::new(),
                _ => {
                    let rest: Vec<&str> = held[1..].iter().map(|(_, l, _)| l.as_str()).collect();
                    format!("; also on hold: {}", rest.join(", "))
                }
            };
            Err(MediationError::rejected(format!(
                "{detail}{others}; a {} of a held lot is blocked until a quality.released event lifts the hold",
                kind.name
            ))
            .field(field_path("data", pointer)))
        }
        _ => Ok(None),
    }
}

/// Every lot in `value`: strings under a `lot` key or in a `lots` array, with their JSON
/// pointers, in document order.
fn collect_lots(value: &Value, pointer: &str, in_lots: bool, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{pointer}/{k}");
                match (k.as_str(), v) {
                    ("lot", Value::String(lot)) => out.push((here, lot.clone())),
                    ("lots", _) => collect_lots(v, &here, true, out),
                    _ => collect_lots(v, &here, false, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let here = format!("{pointer}/{i}");
                match v {
                    Value::String(lot) if in_lots => out.push((here, lot.clone())),
                    _ => collect_lots(v, &here, false, out),
                }
            }
        }
        _ => {}
    }
}
