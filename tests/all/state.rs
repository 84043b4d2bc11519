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
        "[host]\nadmin = \"127.0.0.1:0\"\n\n[plants.plant-a]\n[plants.plant-b]\n\n{}\n{}\n{}",
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
    // Counted as a quality hold that blocked a message, by plant, route and plugin.
    let text = host.admin("GET", "/metrics", b"").body;
    let holds = |route: &str| {
        crate::metrics::value(
            &text,
            "millrace_quality_holds_total",
            &[
                ("plant", "plant-a"),
                ("route", route),
                ("plugin", "policy-guard"),
            ],
        )
    };
    assert_eq!(holds("shipping"), 1.0, "{text}");
    assert_eq!(holds("quality"), 0.0, "{text}");
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

#[test]
fn concurrent_writers_of_one_plant_lose_no_write_and_never_tear_a_value() {
    let ws = Workspace::new(&format!(
        "[host]\nmax_in_flight = 8\n\n[plants.plant-a]\n[plants.plant-b]\n\n{}\n{}\n{}",
        // The calls wait for each other's state writes (disk flushes); what is checked is that
        // none is lost or torn, not how long they take.
        slow_act_route("w1"),
        slow_act_route("w2"),
        act_route("other", "").replace("plant = \"plant-a\"", "plant = \"plant-b\""),
    ));
    let host = ws.start();
    let url: std::sync::Arc<str> = host.url.clone().into();
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    // Eight clients on two routes of the plant: each writes its own keys, and all of them the
    // same key `shared`, with values long enough that a torn write would show.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = std::sync::Arc::clone(&url);
            std::thread::spawn(move || {
                let route = if w % 2 == 0 { "w1" } else { "w2" };
                for i in 0..EACH {
                    for body in [
                        format!("put k-{w}-{i} v-{w}-{i}"),
                        format!("put shared {}", format!("{w}-{i}|").repeat(500)),
                    ] {
                        let reply = request(
                            &url,
                            "POST",
                            &format!("/v1/routes/{route}/messages"),
                            Some("text/plain"),
                            &[],
                            body.as_bytes(),
                        );
                        assert_eq!(reply.status, 200, "{}", reply.body);
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let get = |route: &str, key: &str| host.post(route, Some("text/plain"), format!("get {key}"));
    for w in 0..WRITERS {
        for i in 0..EACH {
            assert_eq!(get("w1", &format!("k-{w}-{i}")).body, format!("v-{w}-{i}"));
        }
    }
    // The last writer wins, whole: one writer's value, repeated, nothing mixed in.
    let shared = get("w2", "shared").body;
    let first = shared.split('|').next().unwrap().to_string();
    assert_eq!(shared, format!("{first}|").repeat(500), "torn value");
    // Plant B has its own namespace.
    assert_eq!(get("other", "shared").body, "");
    assert_eq!(get("other", "k-0-0").body, "");
}

#[test]
fn state_written_before_a_kill_9_is_there_after_the_restart() {
    let ws = Workspace::new(&format!("[plants.plant-a]\n\n{}", act_route("act", "")));
    let host = ws.start();
    for i in 0..20 {
        let reply = host.post("act", Some("text/plain"), format!("put lot-{i} held-{i}"));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Answered means committed: a crash right after loses nothing.
    host.kill9();
    let host = ws.start();
    for i in 0..20 {
        let reply = host.post("act", Some("text/plain"), format!("get lot-{i}"));
        assert_eq!(reply.body, format!("held-{i}"));
    }
}
