use super::*;
use millrace_sdk::TestHost;
use millrace_sdk::testing::{body_value, expect_rejected};
use proptest::prelude::*;
use serde_json::json;

fn host() -> TestHost {
    TestHost::new()
        .with_settings(json!({
            "codes": [
                { "path": "data.work_centre", "table": "work_centres", "required": true },
                { "path": "data.material", "table": "materials" },
                { "path": "data.purchase_orders[].items[].buyer_part", "table": "materials" }
            ],
            "units": [
                { "table": "units" },
                { "at": "data.purchase_orders[].items[]", "table": "units" }
            ]
        }))
        .with_table("work_centres", [("WC01", "ASSY-01")])
        .with_table("materials", [("4711", "MAT-4711"), ("BOLT", "BOLT-M8")])
        .with_table(
            "units",
            [
                ("ST", "PCE"),
                ("PCE", "PCE"),
                ("LBR", "KG 0.45359237"),
                ("G", "KG 0.001"),
            ],
        )
}

fn completed(data: Value) -> Message {
    let event = json!({
        "specversion": "1.0", "id": "e-1", "source": "/plants/p/mes", "type": "millrace.production.completed.v1",
        "datacontenttype": "application/json", "data": data
    });
    TestHost::message(CLOUDEVENTS_CONTENT_TYPE, event.to_string())
}

fn run(input: Message) -> Result<Vec<Message>, MediationError> {
    host().run::<CanonicalMap>(input)
}

#[test]
fn local_codes_and_units_become_canonical() {
    let out = run(completed(
        json!({ "work_centre": "WC01", "material": "4711", "quantity": 10, "unit": "LBR" }),
    ))
    .unwrap();
    let event = body_value(&out[0]);
    assert_eq!(event["id"], "e-1", "the event keeps its id");
    assert_eq!(
        event["data"],
        json!({ "work_centre": "ASSY-01", "material": "MAT-4711", "quantity": 4.5359237, "unit": "KG" })
    );
    assert_eq!(out[0].content_type, CLOUDEVENTS_CONTENT_TYPE);
}

#[test]
fn lists_are_walked_and_factor_one_keeps_the_quantity() {
    let data = json!({ "work_centre": "WC01", "purchase_orders": [
        { "purchase_order": "PO-1", "items": [ { "buyer_part": "BOLT", "quantity": 3, "unit": "ST" }, { "buyer_part": "4711", "quantity": 250, "unit": "G" } ] }
    ]});
    let event = body_value(&run(completed(data)).unwrap()[0]);
    let items = &event["data"]["purchase_orders"][0]["items"];
    assert_eq!(
        items[0],
        json!({ "buyer_part": "BOLT-M8", "quantity": 3, "unit": "PCE" })
    );
    assert_eq!(
        items[1],
        json!({ "buyer_part": "MAT-4711", "quantity": 0.25, "unit": "KG" })
    );
}

#[test]
fn unknown_codes_name_the_table_key_and_place() {
    let r = expect_rejected(run(completed(json!({ "work_centre": "WC99" }))));
    assert_eq!(
        r.reason,
        "data.work_centre \"WC99\" is not in lookup table work_centres"
    );
    assert_eq!(r.field.as_deref(), Some("data.work_centre"));
    let data = json!({ "work_centre": "WC01", "purchase_orders": [{ "items": [ { "buyer_part": "BOLT", "quantity": 1, "unit": "ST" }, { "buyer_part": "NUT", "quantity": 1, "unit": "ST" } ] }] });
    let r = expect_rejected(run(completed(data)));
    assert_eq!(
        r.reason,
        "data.purchase_orders[0].items[1].buyer_part \"NUT\" is not in lookup table materials"
    );
    let r = expect_rejected(run(completed(
        json!({ "work_centre": "WC01", "quantity": 1, "unit": "BOX" }),
    )));
    assert_eq!(r.reason, "data.unit \"BOX\" is not in lookup table units");
}

#[test]
fn required_and_malformed_values_are_rejected() {
    let r = expect_rejected(run(completed(json!({ "material": "4711" }))));
    assert!(
        r.reason.contains("data.work_centre is required"),
        "{}",
        r.reason
    );
    let r = expect_rejected(run(completed(json!({ "work_centre": 7 }))));
    assert!(r.reason.contains("is not a text code"), "{}", r.reason);
    let r = expect_rejected(run(completed(
        json!({ "work_centre": "WC01", "quantity": "ten", "unit": "LBR" }),
    )));
    assert!(
        r.reason.contains("data.quantity is not a number"),
        "{}",
        r.reason
    );
    let r = expect_rejected(run(TestHost::message(CLOUDEVENTS_CONTENT_TYPE, "[1]")));
    assert!(r.reason.contains("not a CloudEvent"), "{}", r.reason);
}

#[test]
fn settings_are_checked_at_load() {
    let err = CanonicalMap::new(
        &TestHost::new().with_settings(json!({ "codes": [{ "path": "data.x", "table": "nope" }] })),
    )
    .err()
    .unwrap();
    assert!(
        err.contains("lookup table \"nope\" is not configured"),
        "{err}"
    );
    let err = CanonicalMap::new(&TestHost::new().with_settings(json!({})))
        .err()
        .unwrap();
    assert!(err.contains("nothing to map"), "{err}");
    let err = CanonicalMap::new(
        &TestHost::new().with_settings(json!({ "codes": [{ "path": "data..x", "table": "t" }] })),
    )
    .err()
    .unwrap();
    assert!(err.contains("names joined by dots"), "{err}");
}

proptest! {
    /// Arbitrary JSON bodies never panic the plugin.
    #[test]
    fn arbitrary_json_never_panics(
        wc in proptest::option::of("WC01|[A-Z0-9]{0,4}"),
        qty in proptest::option::of(any::<f64>()),
        unit in proptest::option::of("LBR|ST|G|[A-Z]{0,3}"),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut data = serde_json::Map::new();
        if let Some(wc) = wc { data.insert("work_centre".into(), json!(wc)); }
        if let Some(q) = qty { data.insert("quantity".into(), json!(q)); }
        if let Some(u) = unit { data.insert("unit".into(), json!(u)); }
        let _ = run(completed(Value::Object(data)));
        let _ = run(TestHost::message(CLOUDEVENTS_CONTENT_TYPE, body));
    }
}
