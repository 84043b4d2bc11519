use super::*;
use millrace_sdk::TestHost;
use millrace_sdk::testing::{body_value, expect_rejected};
use proptest::prelude::*;
use serde_json::{Value, json};

const KEY: &str = "k3y-for-tests-only-0123456789";

fn host() -> TestHost {
    TestHost::new()
}

fn event(ty: &str, id: &str, data: Value) -> Value {
    let (name, version) = ty
        .strip_prefix("millrace.")
        .and_then(|t| t.rsplit_once(".v"))
        .unwrap();
    json!({
        "specversion": "1.0", "id": id, "source": "/plants/test-plant/qms", "type": ty,
        "datacontenttype": "application/json",
        "dataschema": format!("urn:millrace:schema:{name}:v{version}"),
        "data": data
    })
}

fn hold(lot: &str, at: &str) -> Value {
    event(
        "millrace.quality.hold.v1",
        &format!("hold-{lot}"),
        json!({ "lot": lot, "material": "MAT-100", "plant": "test-plant", "reason_code": "CONTAMINATION", "held_at": at }),
    )
}

fn release(lot: &str) -> Value {
    event(
        "millrace.quality.released.v1",
        &format!("release-{lot}"),
        json!({ "lot": lot, "material": "MAT-100", "plant": "test-plant", "decision": "accepted", "released_at": "2026-11-28T09:00:00Z" }),
    )
}

fn asn(lots: &[&str]) -> Value {
    event(
        "millrace.shipment.asn.v1",
        "asn-1",
        json!({
            "shipment_id": "SH-1", "plant": "test-plant", "ship_date": "2026-11-28",
            "purchase_orders": [{ "purchase_order": "PO-1", "items": [
                { "line": 1, "buyer_part": "MAT-100", "quantity": 5, "unit": "EA", "lots": lots }
            ]}]
        }),
    )
}

fn departed(lots: &[&str]) -> Value {
    event(
        "millrace.shipment.departed.v1",
        "dep-1",
        json!({ "shipment_id": "SH-1", "plant": "test-plant", "departed_at": "2026-11-28T10:00:00Z", "lots": lots }),
    )
}

fn run(host: &TestHost, body: &Value) -> Result<Vec<Message>, MediationError> {
    host.run::<PolicyGuard>(TestHost::message(
        CLOUDEVENTS_CONTENT_TYPE,
        body.to_string(),
    ))
}

#[test]
fn quality_hold_blocks_later_shipment_of_same_lot_until_released() {
    let host = host();
    let out = run(&host, &hold("L-7", "2026-11-27T06:00:00Z")).unwrap();
    assert_eq!(out.len(), 2, "the hold passes and a finance review follows");
    assert_eq!(body_value(&out[0])["type"], "millrace.quality.hold.v1");
    let review = body_value(&out[1]);
    assert_eq!(review["type"], FINANCE_REVIEW);
    assert_eq!(review["id"], "hold-L-7-finance-review");
    assert_eq!(review["subject"], "L-7");
    assert_eq!(review["data"]["since"], "2026-11-27T06:00:00Z");
    assert_eq!(review["data"]["cause"]["event_id"], "hold-L-7");

    let blocked = expect_rejected(run(&host, &asn(&["L-1", "L-7"])));
    assert!(
        blocked.reason.starts_with(
            "lot L-7 on hold since 2026-11-27T06:00:00Z (reason CONTAMINATION, hold event hold-L-7)"
        ),
        "{}",
        blocked.reason
    );
    assert_eq!(
        blocked.field.as_deref(),
        Some("data.purchase_orders[0].items[0].lots[1]")
    );
    let blocked = expect_rejected(run(&host, &departed(&["L-7"])));
    assert_eq!(blocked.field.as_deref(), Some("data.lots[0]"));

    assert_eq!(run(&host, &release("L-7")).unwrap().len(), 1);
    assert!(host.state().is_empty());
    assert_eq!(run(&host, &asn(&["L-1", "L-7"])).unwrap().len(), 1);
}

#[test]
fn a_hold_on_another_lot_does_not_block() {
    let host = host();
    run(&host, &hold("L-9", "2026-11-27T06:00:00Z")).unwrap();
    let out = run(&host, &asn(&["L-1"])).unwrap();
    assert_eq!(out.len(), 1);
}

#[test]
fn holding_a_held_lot_again_keeps_the_first_since() {
    let host = host();
    run(&host, &hold("L-7", "2026-11-27T06:00:00Z")).unwrap();
    let mut again = hold("L-7", "2026-11-27T08:00:00Z");
    again["id"] = "hold-L-7-second".into();
    let out = run(&host, &again).unwrap();
    assert_eq!(body_value(&out[1])["data"]["since"], "2026-11-27T06:00:00Z");
    let blocked = expect_rejected(run(&host, &departed(&["L-7"])));
    assert!(
        blocked.reason.contains("since 2026-11-27T06:00:00Z"),
        "{}",
        blocked.reason
    );
}

#[test]
fn every_held_lot_of_a_shipment_is_named() {
    let host = host();
    run(&host, &hold("L-1", "2026-11-27T06:00:00Z")).unwrap();
    run(&host, &hold("L-2", "2026-11-27T07:00:00Z")).unwrap();
    let blocked = expect_rejected(run(&host, &departed(&["L-1", "L-2"])));
    assert!(
        blocked.reason.contains("also on hold: L-2"),
        "{}",
        blocked.reason
    );
}

#[test]
fn holds_can_be_switched_off_and_reviews_left_out() {
    let off = host().with_setting("enforce_holds", json!(false));
    assert_eq!(
        run(&off, &hold("L-7", "2026-11-27T06:00:00Z"))
            .unwrap()
            .len(),
        1
    );
    assert!(off.state().is_empty());
    let quiet = host().with_setting("finance_review", json!(false));
    assert_eq!(
        run(&quiet, &hold("L-7", "2026-11-27T06:00:00Z"))
            .unwrap()
            .len(),
        1
    );
    assert!(
        expect_rejected(run(&quiet, &asn(&["L-7"])))
            .reason
            .contains("on hold")
    );
}

#[test]
fn unknown_major_version_is_refused_naming_the_known_ones() {
    let mut v2 = hold("L-7", "2026-11-27T06:00:00Z");
    v2["type"] = "millrace.quality.hold.v2".into();
    v2["dataschema"] = "urn:millrace:schema:quality.hold:v2".into();
    let r = expect_rejected(run(&host(), &v2));
    assert!(
        r.reason
            .contains("major version 2 of quality.hold is unknown")
            && r.reason.contains("it knows v1"),
        "{}",
        r.reason
    );
    assert_eq!(r.field.as_deref(), Some("type"));
}

#[test]
fn unknown_or_malformed_types_are_refused() {
    let mut unknown = hold("L-7", "2026-11-27T06:00:00Z");
    unknown["type"] = "millrace.quality.audit.v1".into();
    assert!(
        expect_rejected(run(&host(), &unknown))
            .reason
            .contains("not a canonical event")
    );
    unknown["type"] = "com.example.thing".into();
    assert!(
        expect_rejected(run(&host(), &unknown))
            .reason
            .contains("not of the form")
    );
}

#[test]
fn data_that_breaks_the_schema_is_refused_with_the_field() {
    // One host for all: a refused hold must not reach the state a valid one would write.
    let host = host();
    let mut bad = hold("L-7", "2026-11-27T06:00:00Z");
    bad["data"]["held_at"] = "2026-11-27T07:00:00+01:00".into();
    let r = expect_rejected(run(&host, &bad));
    assert_eq!(r.field.as_deref(), Some("data.held_at"), "{}", r.reason);
    let mut missing = hold("L-7", "2026-11-27T06:00:00Z");
    missing["data"].as_object_mut().unwrap().remove("lot");
    let r = expect_rejected(run(&host, &missing));
    assert!(
        r.reason.contains("\"lot\" is a required property"),
        "{}",
        r.reason
    );
    assert!(host.state().is_empty(), "{:?}", host.state());
    // The same host does record a valid hold: the emptiness above is not vacuous.
    run(&host, &hold("L-7", "2026-11-27T06:00:00Z")).unwrap();
    assert_eq!(host.state().len(), 1, "{:?}", host.state());
}

#[test]
fn envelope_errors_are_refused() {
    let mut wrong_schema = hold("L-7", "2026-11-27T06:00:00Z");
    wrong_schema["dataschema"] = "urn:millrace:schema:quality.released:v1".into();
    assert_eq!(
        expect_rejected(run(&host(), &wrong_schema))
            .field
            .as_deref(),
        Some("dataschema")
    );
    let mut no_id = hold("L-7", "2026-11-27T06:00:00Z");
    no_id.as_object_mut().unwrap().remove("id");
    assert_eq!(
        expect_rejected(run(&host(), &no_id)).field.as_deref(),
        Some("id")
    );
    let plain = host().run::<PolicyGuard>(TestHost::message("application/json", "{}"));
    assert!(
        expect_rejected(plain)
            .reason
            .contains("is not application/cloudevents+json")
    );
}

#[test]
fn events_pass_byte_for_byte_when_nothing_is_masked() {
    let body = "{\"specversion\":\"1.0\",\"type\":\"millrace.shipment.departed.v1\",\"id\":\"d\",\"source\":\"/s\",\"data\":{\"shipment_id\":\"S\",\"plant\":\"p\",\"departed_at\":\"2026-11-27T06:00:00Z\"}}";
    let input = TestHost::message(CLOUDEVENTS_CONTENT_TYPE, body);
    let out = host().run::<PolicyGuard>(input.clone()).unwrap();
    assert_eq!(out, vec![input]);
}

fn completed(operator: Value) -> Value {
    event(
        "millrace.production.completed.v1",
        "pc-1",
        json!({ "work_order": "WO-1", "material": "M", "quantity": 1, "unit": "EA", "plant": "test-plant",
                "completed_at": "2026-11-27T05:30:00Z", "operator": operator }),
    )
}

#[test]
fn masked_fields_become_stable_keyed_tokens() {
    let masking = |key: &str| {
        host()
            .with_setting("mask", json!(["data.operator"]))
            .with_setting("mask_key", json!(key))
    };
    let token = |host: &TestHost| {
        let out = run(host, &completed(json!("OP-4711"))).unwrap();
        body_value(&out[0])["data"]["operator"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a = token(&masking(KEY));
    assert!(a.starts_with(mask::PREFIX) && !a.contains("4711"), "{a}");
    assert_eq!(a, token(&masking(KEY)), "same key, same token");
    assert_ne!(
        a,
        token(&masking("another-key-of-length")),
        "the key matters"
    );
    let r = expect_rejected(run(&masking(KEY), &completed(json!(17))));
    assert_eq!(r.field.as_deref(), Some("data.operator"));
}

#[test]
fn mask_settings_are_checked_at_load() {
    let short = host()
        .with_setting("mask", json!(["data.operator"]))
        .with_setting("mask_key", json!("short"));
    assert!(
        PolicyGuard::new(&short)
            .err()
            .unwrap()
            .contains("at least 16")
    );
    let outside = host()
        .with_setting("mask", json!(["subject"]))
        .with_setting("mask_key", json!(KEY));
    assert!(
        PolicyGuard::new(&outside)
            .err()
            .unwrap()
            .contains("inside data")
    );
}

#[test]
fn every_embedded_schema_compiles() {
    let catalog = schema::Catalog::embedded();
    let known: Vec<_> = catalog.known().collect();
    assert!(
        known.contains(&("quality.hold", 1)) && known.contains(&("finance.review-requested", 1))
    );
    assert_eq!(known.len(), 12, "{known:?}");
    for (name, major) in known {
        let probe = json!({ "specversion": "1.0", "id": "x", "source": "/s", "type": format!("millrace.{name}.v{major}"), "data": {} });
        // An empty object is wrong for every event (each requires fields): the validator ran.
        assert!(catalog.check(&probe).is_err(), "{name}");
    }
}

proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = host().run::<PolicyGuard>(TestHost::message(CLOUDEVENTS_CONTENT_TYPE, body));
    }

    #[test]
    fn any_held_lot_blocks_its_shipment(lot in "[A-Za-z0-9/._-]{1,40}") {
        let host = host();
        run(&host, &hold(&lot, "2026-11-27T06:00:00Z")).unwrap();
        let r = expect_rejected(run(&host, &departed(&["OTHER-LOT-X", &lot])));
        prop_assert!(r.reason.starts_with(&format!("lot {lot} on hold since")), "{}", r.reason);
        run(&host, &release(&lot)).unwrap();
        prop_assert_eq!(run(&host, &departed(&["OTHER-LOT-X", &lot])).unwrap().len(), 1);
    }
}
