//! `x12-856`: ANSI X12 856 ship notices (versions 003010 to 008xxx, any industry identifier)
//! become `millrace.shipment.asn.v1` events, one per transaction set.
//!
//! `interchange` reads the file: separators from each ISA at its fixed positions, several
//! interchanges per file, envelopes checked. This module reads one ship notice: the HL hierarchy
//! of any shape (S-O-I, S-O-P-I, S-O-T-I, S-I, S-T-I, S-T-P-I, several orders or shipments),
//! items identified by any LIN qualifiers, each item's purchase order taken from the nearest PRF
//! on its path.

mod interchange;

use interchange::{Segment, Transaction};
use millrace_sdk::{CloudEvent, Host, Level, MediationError, Message, Plugin, PluginInfo};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Event type emitted per transaction set.
pub const EVENT_TYPE: &str = "millrace.shipment.asn.v1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_source_system")]
    source_system: String,
}

fn default_source_system() -> String {
    "edi".into()
}

/// `data` of `millrace.shipment.asn.v1`.
#[derive(Debug, Serialize)]
struct Asn {
    shipment_id: String,
    plant: String,
    ship_date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    carrier_scac: Option<String>,
    purchase_orders: Vec<PurchaseOrder>,
    attributes: Attributes,
}

/// Source facts without a canonical field.
#[derive(Debug, Serialize)]
struct Attributes {
    /// GS08 of the functional group, e.g. `004010`.
    x12_version: String,
    /// ST02 of the transaction set.
    transaction_control: String,
    /// TD503 when it is not a 2–4 letter SCAC (e.g. a DUNS number with TD502 = 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    carrier: Option<String>,
}

#[derive(Debug, Serialize)]
struct PurchaseOrder {
    /// Absent for items with no PRF on their path.
    #[serde(skip_serializing_if = "Option::is_none")]
    purchase_order: Option<String>,
    items: Vec<Item>,
}

#[derive(Debug, Default, Serialize)]
struct Item {
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    buyer_part: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vendor_part: Option<String>,
    quantity: f64,
    unit: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    lots: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    identifiers: Vec<Identifier>,
}

/// One LIN qualifier/value pair, as sent.
#[derive(Debug, Serialize)]
struct Identifier {
    qualifier: String,
    value: String,
}

/// The plugin.
pub struct X12Asn {
    settings: Settings,
}

impl Plugin for X12Asn {
    fn describe() -> PluginInfo {
        PluginInfo::new("x12-856", env!("CARGO_PKG_VERSION"))
            .accepts(["application/edi-x12", "application/edi", "text/plain"])
            .emits([EVENT_TYPE])
    }

    fn new(host: &impl Host) -> Result<Self, String> {
        Ok(X12Asn {
            settings: host.settings()?,
        })
    }

    fn mediate(&self, host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let text = millrace_sdk::parse::text_or_latin1(&input.body);
        let found = interchange::parse(&text)?;
        if !found.skipped.is_empty() {
            host.log(
                Level::Info,
                &format!(
                    "passed over transaction sets that are not 856 ship notices: {}",
                    found.skipped.join(", ")
                ),
            );
        }
        if found.ship_notices.is_empty() {
            return Err(MediationError::rejected(format!(
                "the file holds no 856 ship notice (transaction sets: {})",
                if found.skipped.is_empty() {
                    "none".to_string()
                } else {
                    found.skipped.join(", ")
                }
            ))
            .field("ST01"));
        }
        let source = format!("/plants/{}/{}", input.plant, self.settings.source_system);
        let ids = event_ids(&input.id, &found.ship_notices)?;
        found
            .ship_notices
            .iter()
            .zip(ids)
            .map(|(t, id)| {
                let asn = ship_notice(t, &input.plant)?;
                Ok(CloudEvent::new(id, source.clone(), EVENT_TYPE, &asn)
                    .subject(asn.shipment_id.clone())
                    .dataschema("urn:millrace:schema:shipment.asn:v1")
                    .into_message(&input))
            })
            .collect()
    }
}

/// `<message id>-<ST02>`, or `<message id>-<ISA13>-<GS06>-<ST02>` when ST02 alone repeats in
/// the file (several groups or interchanges).
fn event_ids(message: &str, sets: &[Transaction]) -> Result<Vec<String>, MediationError> {
    let mut seen = HashMap::new();
    for t in sets {
        *seen.entry(t.control.trim()).or_insert(0) += 1;
    }
    let mut ids = HashSet::new();
    sets.iter()
        .map(|t| {
            let id = if seen[t.control.trim()] == 1 {
                format!("{message}-{}", t.control.trim())
            } else {
                format!(
                    "{message}-{}-{}-{}",
                    t.interchange_control.trim(),
                    t.group_control.trim(),
                    t.control.trim()
                )
            };
            if !ids.insert(id.clone()) {
                return Err(MediationError::rejected(format!(
                    "interchange {} appears twice in the file (its transaction set {} repeats); send each interchange once",
                    t.interchange_control.trim(),
                    t.control.trim()
                ))
                .field("ISA13"));
            }
            Ok(id)
        })
        .collect()
}

/// One HL loop: the HL segment and what the loop holds.
struct Loop<'a, 's> {
    hl: &'s Segment<'a>,
    level: &'a str,
    parent: Option<usize>,
    prf: Option<&'s Segment<'a>>,
    lin: Option<&'s Segment<'a>>,
    sn1: Option<&'s Segment<'a>>,
}

impl Loop<'_, '_> {
    fn is_shipment_or_order(&self) -> bool {
        matches!(self.level, "S" | "O")
    }
}

fn ship_notice(t: &Transaction, plant: &str) -> Result<Asn, MediationError> {
    let bsn = match t.segments.first() {
        Some(s) if s.id == "BSN" => s,
        Some(s) => return Err(s.fault("an 856 starts with BSN")),
        None => {
            return Err(MediationError::rejected(format!(
                "transaction set {} is empty: an 856 starts with BSN",
                t.control
            ))
            .field("BSN"));
        }
    };
    let shipment_id = bsn.required(2)?.trim().to_string();
    let ship_date = date(bsn, 3)?;

    let mut loops: Vec<Loop> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut carrier = None;
    for seg in &t.segments[1..] {
        if seg.id == "HL" {
            let id = seg.required(1)?.trim();
            let level = seg.required(3)?.trim();
            let parent =
                match seg.get(2).trim() {
                    // Without HL02 the hierarchy is implied by order: the parent is the nearest
                    // earlier loop of a level above this one.
                    "" => loops.iter().rposition(|l| rank(l.level) < rank(level)),
                    p => Some(*index.get(p).ok_or_else(|| {
                        seg.error(2, &format!("parent {p:?} is not an earlier HL"))
                    })?),
                };
            if index.insert(id, loops.len()).is_some() {
                return Err(seg.error(1, &format!("HL id {id:?} is used twice")));
            }
            loops.push(Loop {
                hl: seg,
                level,
                parent,
                prf: None,
                lin: None,
                sn1: None,
            });
            continue;
        }
        let current = loops.last_mut();
        match seg.id {
            "PRF" | "LIN" | "SN1" => {
                let Some(current) = current else {
                    return Err(seg.fault(format!("{} before the first HL loop", seg.id)));
                };
                if seg.id != "PRF" && current.is_shipment_or_order() {
                    return Err(seg.fault(format!(
                        "{} belongs to an item level, not to HL {} with HL03 = {}",
                        seg.id,
                        current.hl.get(1),
                        current.level
                    )));
                }
                let hl = current.hl.number;
                let slot = match seg.id {
                    "PRF" => &mut current.prf,
                    "LIN" => &mut current.lin,
                    _ => &mut current.sn1,
                };
                if let Some(first) = slot {
                    return Err(seg.fault(format!(
                        "a second {} in the HL loop of segment {hl} (the first is segment {})",
                        seg.id, first.number
                    )));
                }
                *slot = Some(seg);
            }
            // TD502 = 2: TD503 is the carrier's SCAC; the first shipment level's carrier counts.
            "TD5"
                if carrier.is_none()
                    && current.is_some_and(|c| c.level == "S")
                    && !seg.get(3).trim().is_empty() =>
            {
                carrier = Some((seg.get(2).trim(), seg.get(3).trim()));
            }
            _ => {}
        }
    }
    if !loops.iter().any(|l| l.level == "S") {
        return Err(bsn
            .fault("the ship notice has no shipment level (an HL with HL03 = S)")
            .field("HL03"));
    }

    // Items: loops with a quantity, and item levels (HL03 = I) that must have one.
    let mut has_item = vec![false; loops.len()];
    let mut purchase_orders: Vec<PurchaseOrder> = Vec::new();
    for (i, l) in loops.iter().enumerate() {
        let Some(sn1) = l.sn1 else {
            if l.level == "I" {
                return Err(l
                    .hl
                    .fault(format!(
                        "item level HL {} has no SN1 quantity",
                        l.hl.get(1).trim()
                    ))
                    .field("SN102"));
            }
            continue;
        };
        let mut item = match l.lin {
            Some(lin) => identify(lin)?,
            None => Item::default(),
        };
        let quantity = sn1.required(2)?.trim();
        item.quantity = number(quantity).filter(|q| *q > 0.0).ok_or_else(|| {
            sn1.error(
                2,
                &format!("quantity {quantity:?} is not a positive number"),
            )
        })?;
        item.unit = sn1.required(3)?.trim().to_string();
        // The nearest PRF on the item's path; every loop on it has an item below.
        let mut purchase_order = None;
        let mut at = Some(i);
        for _ in 0..loops.len() {
            let Some(a) = at else { break };
            has_item[a] = true;
            if purchase_order.is_none() {
                purchase_order = loops[a].prf.map(|p| p.required(1)).transpose()?;
            }
            at = loops[a].parent;
        }
        let purchase_order = purchase_order.map(|p| p.trim().to_string());
        match purchase_orders
            .iter_mut()
            .find(|o| o.purchase_order == purchase_order)
        {
            Some(order) => order.items.push(item),
            None => purchase_orders.push(PurchaseOrder {
                purchase_order,
                items: vec![item],
            }),
        }
    }
    if let Some(empty) = loops
        .iter()
        .zip(&has_item)
        .find(|(l, has)| l.level == "O" && !**has)
    {
        return Err(empty
            .0
            .hl
            .fault(format!(
                "order level HL {} has no item with an SN1 quantity below it",
                empty.0.hl.get(1).trim()
            ))
            .field("HL03"));
    }
    if purchase_orders.is_empty() {
        return Err(bsn
            .fault("the ship notice has no items (no HL loop with an SN1 quantity)")
            .field("SN1"));
    }
    let (carrier_scac, carrier) = match carrier {
        Some(("2", scac))
            if (2..=4).contains(&scac.len()) && scac.bytes().all(|b| b.is_ascii_uppercase()) =>
        {
            (Some(scac.to_string()), None)
        }
        Some((_, other)) => (None, Some(other.to_string())),
        None => (None, None),
    };
    Ok(Asn {
        shipment_id,
        plant: plant.to_string(),
        ship_date,
        carrier_scac,
        purchase_orders,
        attributes: Attributes {
            x12_version: t.version.trim().to_string(),
            transaction_control: t.control.trim().to_string(),
            carrier,
        },
    })
}

/// How high a level stands: shipment, order, tare, pack, then items and any other code.
fn rank(level: &str) -> u8 {
    match level {
        "S" => 0,
        "O" => 1,
        "T" => 2,
        "P" => 3,
        _ => 4,
    }
}

/// An item from its LIN: LIN01 as the line number when it is one, every qualifier/value pair as
/// an identifier, and the canonical parts among them.
fn identify(lin: &Segment) -> Result<Item, MediationError> {
    let mut item = Item {
        line: lin.get(1).trim().parse().ok().filter(|n| *n > 0),
        ..Item::default()
    };
    let (mut buyer_item, mut vendor_item) = (None, None);
    let mut n = 2;
    while n <= lin.elements.len() {
        let (qualifier, value) = (lin.get(n).trim(), lin.get(n + 1).trim());
        match (qualifier.is_empty(), value.is_empty()) {
            (true, true) => {}
            (true, false) => {
                return Err(lin.error(n, &format!("is missing: value {value:?} has no qualifier")));
            }
            (false, true) => {
                return Err(lin.error(n + 1, &format!("is missing for qualifier {qualifier:?}")));
            }
            (false, false) => {
                let value_owned = value.to_string();
                match qualifier {
                    "BP" if item.buyer_part.is_none() => item.buyer_part = Some(value_owned),
                    "IN" if buyer_item.is_none() => buyer_item = Some(value_owned),
                    "VP" if item.vendor_part.is_none() => item.vendor_part = Some(value_owned),
                    "VN" if vendor_item.is_none() => vendor_item = Some(value_owned),
                    "LT" => item.lots.push(value_owned),
                    _ => {}
                }
                item.identifiers.push(Identifier {
                    qualifier: qualifier.to_string(),
                    value: value.to_string(),
                });
            }
        }
        n += 2;
    }
    item.buyer_part = item.buyer_part.or(buyer_item);
    item.vendor_part = item.vendor_part.or(vendor_item);
    Ok(item)
}

/// An X12 decimal (R type): optional sign, digits with an optional point, or an exponent form
/// (`1.5E3`). At most 15 significant digits, so the value is exact.
fn number(text: &str) -> Option<f64> {
    if let Some(value) = millrace_sdk::parse::decimal(text, '.', 0) {
        return Some(value);
    }
    let (mantissa, exponent) = text.split_once(['E', 'e'])?;
    let mantissa = millrace_sdk::parse::decimal(mantissa, '.', 0)?;
    let exponent: i32 = exponent.parse().ok().filter(|e: &i32| e.abs() <= 30)?;
    Some(mantissa * 10f64.powi(exponent)).filter(|v| v.is_finite())
}

/// A date element, CCYYMMDD or (versions before 004010) YYMMDD, as `YYYY-MM-DD`. Two-digit
/// years follow POSIX `%y`: 69–99 are 1969–1999, 00–68 are 2000–2068.
fn date(seg: &Segment, n: usize) -> Result<String, MediationError> {
    let text = seg.required(n)?.trim();
    let digits = text.bytes().all(|b| b.is_ascii_digit());
    let full = match text.len() {
        8 if digits => text.to_string(),
        6 if digits => {
            let century = if text[..2] >= *"69" { "19" } else { "20" };
            format!("{century}{text}")
        }
        _ => return Err(seg.error(n, &format!("date {text:?} is not CCYYMMDD or YYMMDD"))),
    };
    let number = |r: std::ops::Range<usize>| full[r].parse::<u32>().unwrap_or(0);
    let (y, m, d) = (number(0..4), number(4..6), number(6..8));
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    };
    if !(1..=days).contains(&d) {
        return Err(seg.error(n, &format!("date {text:?} is not a calendar date")));
    }
    Ok(format!("{}-{}-{}", &full[..4], &full[4..6], &full[6..8]))
}

millrace_sdk::export!(X12Asn);

#[cfg(test)]
mod tests;
