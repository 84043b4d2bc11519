//! The `state` capability end to end: policy-guard records a quality hold on one route, a
//! shipment of that lot on another route of the same plant is rejected — also after a host
//! restart — while the same lot ships from another plant, and a release lifts the hold.

use crate::harness::*;

const CE: Option<&str> = Some("application/cloudevents+json");

fn guard_route(name: &str, plant: &str) -> String {
    route_toml(
        name,
        &plugin("policy-guard"),
        r#"["log", "config", "state"]"#,
        "",
    )
    .replace("plant = \"plant-a\"", &format!("plant = \"{plant}\""))
}

fn event(ty: &str, id: &str, plant: &str, data: serde_json::Value) -> String {
    let name = ty
        .strip_prefix("millrace.")
        .and_then(|t| t.strip_suffix(".v1"))
        .unwrap();
    serde_json::json!({
        "specversion": "1.0", "id": id, "source": format!("/plants/{plant}/qms"), "type": ty,
        "dataschema": format!("urn:millrace:schema:{name}:v1"), "data": data
    })
    .to_string()
}

fn hold(plant: &str) -> String {
    event(
        "millrace.quality.hold.v1",
        "hold-1",
        plant,
        serde_json::json!({ "lot": "LOT-9", "material": "MAT-1", "plant": plant, "reason_code": "CRACK", "held_at": "2026-11-27T06:00:00Z" }),
    )
}

fn departed(plant: &str) -> String {
    event(
        "millrace.shipment.departed.v1",
        "dep-1",
        plant,
        serde_json::json!({ "shipment_id": "SH-1", "plant": plant, "departed_at": "2026-11-27T08:00:00Z", "lots": ["LOT-9"] }),
    )
}

fn release(plant: &str) -> String {
    event(
        "millrace.quality.released.v1",
        "rel-1",
        plant,
        serde_json::json!({ "lot": "LOT-9", "material": "MAT-1", "plant": plant, "decision": "accepted", "released_at": "2026-11-27T09:00:00Z" }),
    )
}

#[test]
fn quality_hold_blocks_later_shipment_of_same_lot_across_routes_and_restarts() {
    let ws = Workspace::new(&format!(
        "[plants.plant-a]\n[plants.plant-b]\n\n{}\n{}\n{}",
        guard_route("quality", "plant-a"),
        guard_route("shipping", "plant-a"),
        guard_route("shipping-b", "plant-b"),
    ));
    let host = ws.start();
    let held = host.post("quality", CE, hold("plant-a"));
    assert_eq!(held.status, 200, "{}", held.body);
    assert_eq!(
        held.json().as_array().map(Vec::len),
        Some(2),
        "hold + finance review"
    );
    let blocked = host.post("shipping", CE, departed("plant-a"));
    assert_eq!(blocked.status, 422, "{}", blocked.body);
    assert!(
        blocked.json()["detail"]
            .as_str()
            .unwrap()
            .starts_with("lot LOT-9 on hold since 2026-11-27T06:00:00Z"),
        "{}",
        blocked.body
    );
    host.stop();

    let host = ws.start();
    let still = host.post("shipping", CE, departed("plant-a"));
    assert_eq!(
        still.status, 422,
        "the hold survives a restart: {}",
        still.body
    );
    let other_plant = host.post("shipping-b", CE, departed("plant-b"));
    assert_eq!(
        other_plant.status, 200,
        "plant-b does not see plant-a's hold: {}",
        other_plant.body
    );
    let released = host.post("quality", CE, release("plant-a"));
    assert_eq!(released.status, 200, "{}", released.body);
    let ships = host.post("shipping", CE, departed("plant-a"));
    assert_eq!(ships.status, 200, "{}", ships.body);
}
