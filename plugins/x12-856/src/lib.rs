//! `x12-856`: ANSI X12 856 ship notices (versions 004010 and 005010) become
//! `millrace.shipment.asn.v1` events, one per transaction set.
//!
//! Separators come from the ISA segment (any element, component and segment separators, with or
//! without line breaks between segments). Envelopes are checked — IEA01 against the number of
//! groups, GE01 against the transaction sets, SE01 against the segments, and every control
//! number against its header — and any fault is rejected with the segment number at fault.
//!
//! The HL hierarchy S (shipment) / O (order) / T (tare) / P (pack) / I (item) is followed through
//! HL02 parents: each item belongs to the purchase order of its nearest order ancestor.

mod interchange;

use interchange::{Segment, Transaction, at};
use millrace_sdk::{CloudEvent, Host, MediationError, Message, Plugin, PluginInfo};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

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
}

#[derive(Debug, Serialize)]
struct PurchaseOrder {
    purchase_order: String,
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

    fn mediate(&self, _host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let text = input.body_str()?;
        let transactions = interchange::parse(text)?;
        let source = format!("/plants/{}/{}", input.plant, self.settings.source_system);
        transactions
            .iter()
            .map(|t| {
                let asn = ship_notice(t, &input.plant)?;
                Ok(CloudEvent::new(
                    format!("{}-{}", input.id, t.control),
                    source.clone(),
                    EVENT_TYPE,
                    &asn,
                )
                .subject(asn.shipment_id.clone())
                .dataschema("urn:millrace:schema:shipment.asn:v1")
                .into_message(&input))
            })
            .collect()
    }
}

/// What an HL level is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Shipment,
    Order,
    Tare,
    Pack,
    Item,
}

fn ship_notice(t: &Transaction, plant: &str) -> Result<Asn, MediationError> {
    let bsn = t
        .segments
        .first()
        .filter(|s| s.id == "BSN")
        .ok_or_else(|| match t.segments.first() {
            Some(s) => at(s, "an 856 starts with BSN"),
            None => MediationError::rejected(format!("transaction set {} is empty", t.control)),
        })?;
    let shipment_id = bsn.required(2)?.to_string();
    let ship_date = date(bsn, 3)?;

    // HL id → (level, parent id); the order each HL belongs to; items in document order.
    let mut levels: HashMap<&str, (Level, &str)> = HashMap::new();
    let mut orders: HashMap<&str, String> = HashMap::new();
    let mut order_sequence: Vec<String> = Vec::new();
    let mut items: Vec<(String, Item)> = Vec::new();
    let mut carrier_scac = None;
    let mut current: Option<(&str, Level, &Segment)> = None;
    let mut seen_shipment = false;

    for seg in &t.segments[1..] {
        match seg.id {
            "HL" => {
                let id = seg.required(1)?;
                let parent = seg.get(2);
                let level = match seg.required(3)? {
                    "S" => Level::Shipment,
                    "O" => Level::Order,
                    "T" => Level::Tare,
                    "P" => Level::Pack,
                    "I" => Level::Item,
                    other => {
                        return Err(
                            seg.error(3, &format!("level {other:?} is not S, O, T, P or I"))
                        );
                    }
                };
                if levels.contains_key(id) {
                    return Err(seg.error(1, &format!("HL id {id:?} is used twice")));
                }
                match level {
                    Level::Shipment if !parent.is_empty() => {
                        return Err(seg.error(2, "a shipment level has no parent"));
                    }
                    Level::Shipment if seen_shipment => {
                        return Err(at(seg, "a second shipment level"));
                    }
                    Level::Shipment => seen_shipment = true,
                    _ if !levels.contains_key(parent) => {
                        return Err(
                            seg.error(2, &format!("parent {parent:?} is not an earlier HL"))
                        );
                    }
                    _ => {}
                }
                levels.insert(id, (level, parent));
                current = Some((id, level, seg));
            }
            // TD502 = 2: TD503 is the carrier's SCAC.
            "TD5"
                if current.is_some_and(|c| c.1 == Level::Shipment)
                    && seg.get(2) == "2"
                    && !seg.get(3).is_empty() =>
            {
                carrier_scac = Some(seg.get(3).to_string());
            }
            "PRF" => {
                let Some((id, Level::Order, _)) = current else {
                    return Err(at(seg, "PRF belongs to an order level (HL03 = O)"));
                };
                let po = seg.required(1)?.to_string();
                if !order_sequence.contains(&po) {
                    order_sequence.push(po.clone());
                }
                orders.insert(id, po);
            }
            "LIN" => {
                let Some((id, Level::Item, _)) = current else {
                    return Err(at(seg, "LIN belongs to an item level (HL03 = I)"));
                };
                let po = order_of(id, &levels, &orders).ok_or_else(|| {
                    at(
                        seg,
                        "the item is under no order level with a PRF purchase order",
                    )
                })?;
                let mut item = Item {
                    line: seg.get(1).parse().ok(),
                    ..Item::default()
                };
                let mut n = 2;
                while !seg.get(n).is_empty() || !seg.get(n + 1).is_empty() {
                    let (qualifier, value) = (seg.get(n), seg.get(n + 1));
                    if value.is_empty() {
                        return Err(
                            seg.error(n + 1, &format!("is missing for qualifier {qualifier:?}"))
                        );
                    }
                    match qualifier {
                        "BP" => item.buyer_part = Some(value.to_string()),
                        "VP" | "VN" => item.vendor_part = Some(value.to_string()),
                        "LT" => item.lots.push(value.to_string()),
                        _ => {}
                    }
                    n += 2;
                }
                if item.buyer_part.is_none() && item.vendor_part.is_none() {
                    return Err(at(
                        seg,
                        "LIN names neither a buyer part (BP) nor a vendor part (VP)",
                    ));
                }
                items.push((po, item));
            }
            "SN1" => {
                let Some((_, Level::Item, hl)) = current else {
                    return Err(at(seg, "SN1 belongs to an item level (HL03 = I)"));
                };
                let Some((_, item)) = items.last_mut().filter(|_| hl.number < seg.number) else {
                    return Err(at(seg, "SN1 before the item's LIN"));
                };
                let quantity = seg.required(2)?;
                item.quantity = millrace_sdk::parse::decimal(quantity, '.', 0)
                    .filter(|q| *q > 0.0)
                    .ok_or_else(|| {
                        seg.error(
                            2,
                            &format!("quantity {quantity:?} is not a positive number"),
                        )
                    })?;
                item.unit = seg.required(3)?.to_string();
            }
            _ => {}
        }
    }
    if !seen_shipment {
        return Err(at(bsn, "the ship notice has no shipment level (HL03 = S)"));
    }
    let mut purchase_orders: Vec<PurchaseOrder> = order_sequence
        .into_iter()
        .map(|po| PurchaseOrder {
            purchase_order: po,
            items: Vec::new(),
        })
        .collect();
    for (po, item) in items {
        if item.unit.is_empty() {
            let what = item.buyer_part.or(item.vendor_part).unwrap_or_default();
            return Err(MediationError::rejected(format!(
                "item {what:?} of purchase order {po} has no SN1 quantity"
            ))
            .field("SN1"));
        }
        if let Some(order) = purchase_orders.iter_mut().find(|o| o.purchase_order == po) {
            order.items.push(item);
        }
    }
    if let Some(empty) = purchase_orders.iter().find(|o| o.items.is_empty()) {
        return Err(MediationError::rejected(format!(
            "purchase order {} has no items",
            empty.purchase_order
        ))
        .field("PRF01"));
    }
    if purchase_orders.is_empty() {
        return Err(at(bsn, "the ship notice has no order level with items"));
    }
    Ok(Asn {
        shipment_id,
        plant: plant.to_string(),
        ship_date,
        carrier_scac,
        purchase_orders,
        attributes: Attributes {
            x12_version: t.version.to_string(),
            transaction_control: t.control.to_string(),
        },
    })
}

/// The purchase order of the nearest order ancestor of HL `id`.
fn order_of<'a>(
    mut id: &'a str,
    levels: &HashMap<&'a str, (Level, &'a str)>,
    orders: &HashMap<&str, String>,
) -> Option<String> {
    for _ in 0..levels.len() {
        let (level, parent) = levels.get(id)?;
        if *level == Level::Order {
            return orders.get(id).cloned();
        }
        id = parent;
    }
    None
}

/// A CCYYMMDD date element as `YYYY-MM-DD`.
fn date(seg: &Segment, n: usize) -> Result<String, MediationError> {
    let text = seg.required(n)?;
    let valid = text.len() == 8 && text.bytes().all(|b| b.is_ascii_digit()) && {
        let number = |r: std::ops::Range<usize>| text[r].parse::<u32>().unwrap_or(0);
        let (y, m, d) = (number(0..4), number(4..6), number(6..8));
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let days = match m {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => 0,
        };
        (1..=days).contains(&d)
    };
    if !valid {
        return Err(seg.error(n, &format!("date {text:?} is not CCYYMMDD")));
    }
    Ok(format!("{}-{}-{}", &text[..4], &text[4..6], &text[6..8]))
}

millrace_sdk::export!(X12Asn);

#[cfg(test)]
mod tests;
