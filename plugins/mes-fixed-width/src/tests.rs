use super::*;
use millrace_sdk::{MediationError, TestHost};
use serde_json::{Value, json};

/// The layout of the quickstart (`examples/quickstart/millrace.toml`), 80 columns.
pub fn layout() -> Value {
    json!({
        "record_length": 80,
        "utc_offset": "+01:00",
        "work_centre_table": "work_centres",
        "record_type": { "start": 1, "length": 2, "value": "PC", "skip": ["HD"] },
        "fields": [
            { "name": "work_order",   "start": 3,  "length": 12, "type": "text" },
            { "name": "material",     "start": 15, "length": 18, "type": "text" },
            { "name": "quantity",     "start": 33, "length": 10, "type": "decimal", "decimals": 3 },
            { "name": "unit",         "start": 43, "length": 3,  "type": "text" },
            { "name": "work_centre",  "start": 46, "length": 6,  "type": "text" },
            { "name": "completed_at", "start": 52, "length": 14, "type": "datetime", "format": "%Y%m%d%H%M%S" },
            { "name": "operator",     "start": 66, "length": 8,  "type": "text" },
            { "name": "shift",        "start": 74, "length": 1,  "type": "text" }
        ]
    })
}

fn host() -> TestHost {
    TestHost::new()
        .with_settings(layout())
        .with_table("work_centres", [("WC01", "ASSY-01"), ("WC02", "PAINT-02")])
}

/// Build an 80-column record from its fields.
fn record(wo: &str, mat: &str, qty: &str, unit: &str, wc: &str, at: &str, op: &str) -> String {
    let r = format!("PC{wo:<12}{mat:<18}{qty:>10}{unit:<3}{wc:<6}{at:<14}{op:<8}A      ");
    assert_eq!(r.len(), 80, "test record must be 80 columns: {r:?}");
    r
}

fn good() -> String {
    record(
        "WO-1001",
        "MAT-4711",
        "0000012500",
        "EA",
        "WC01",
        "20261127063000",
        "OP17",
    )
}

fn run(body: &str) -> Result<Vec<Message>, MediationError> {
    host().run::<MesFixedWidth>(TestHost::message("text/plain", body))
}

fn rejection(body: &str) -> millrace_sdk::Rejection {
    millrace_sdk::testing::expect_rejected(run(body))
}

fn event(m: &Message) -> Value {
    millrace_sdk::testing::body_value(m)
}

#[test]
fn good_record_becomes_production_completed_event() {
    let out = run(&good()).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].content_type, "application/cloudevents+json");
    assert_eq!(out[0].id, "test-1-1");
    assert_eq!(
        event(&out[0]),
        json!({
            "specversion": "1.0",
            "id": "test-1-1",
            "source": "/plants/test-plant/mes",
            "type": "millrace.production.completed.v1",
            "subject": "WO-1001",
            "time": "2026-11-27T05:30:00Z",
            "datacontenttype": "application/json",
            "dataschema": "urn:millrace:schema:production.completed:v1",
            "data": {
                "work_order": "WO-1001",
                "material": "MAT-4711",
                "quantity": 12.5,
                "unit": "EA",
                "plant": "test-plant",
                "work_centre": "ASSY-01",
                "completed_at": "2026-11-27T05:30:00Z",
                "operator": "OP17",
                "attributes": { "shift": "A" }
            }
        })
    );
}

#[test]
fn several_records_fan_out_in_order_with_line_based_ids() {
    let second = record(
        "WO-1002",
        "MAT-4712",
        "-000000250",
        "KG",
        "WC02",
        "20261127070000",
        "",
    );
    let body = format!("{}\r\n\n{second}\n", good());
    let out = run(&body).unwrap();
    let ids: Vec<_> = out.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["test-1-1", "test-1-3"]);
    let data = &event(&out[1])["data"];
    assert_eq!(data["quantity"], json!(-0.25));
    assert_eq!(data["work_centre"], "PAINT-02");
    assert!(data.get("operator").is_none());
}

#[test]
fn other_record_types_are_skipped_and_logged() {
    let header = format!("HD{:<78}", "BATCH 7");
    let h = host();
    let out = h
        .run::<MesFixedWidth>(TestHost::message(
            "text/plain",
            format!("{header}\n{}", good()),
        ))
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(h.logs().iter().any(|(_, m)| m.contains("line 1")));
}

#[test]
fn only_skipped_records_means_filtered() {
    let header = format!("HD{:<78}", "BATCH 7");
    assert_eq!(run(&header).unwrap(), vec![]);
}

#[test]
fn unknown_record_types_are_rejected_not_skipped() {
    let r = rejection(&format!("{}\nXX{:<78}", good(), "?"));
    assert_eq!(r.position, Some(1));
    assert!(
        r.reason
            .starts_with("line 2, column 1: unknown record type \"XX\""),
        "{}",
        r.reason
    );
}

#[test]
fn short_record_names_field_and_column() {
    let r = rejection(&good()[..40]);
    assert_eq!(r.field.as_deref(), Some("quantity"));
    assert_eq!(r.position, Some(41));
    assert!(
        r.reason
            .contains("line 1: record too short: 40 bytes, the layout needs 80"),
        "{}",
        r.reason
    );
}

#[test]
fn long_record_names_column_past_the_end() {
    let r = rejection(&format!("{}XX", good()));
    assert_eq!(r.position, Some(81));
    assert!(r.reason.contains("too long: 82 bytes"), "{}", r.reason);
}

#[test]
fn garbled_quantity_names_field_and_columns() {
    let bad = record(
        "WO-1001",
        "MAT-4711",
        "00001A500",
        "EA",
        "WC01",
        "20261127063000",
        "OP17",
    );
    let r = rejection(&format!("{}\n{bad}", good()));
    assert_eq!(r.field.as_deref(), Some("quantity"));
    assert_eq!(r.position, Some(33));
    assert!(
        r.reason
            .starts_with("line 2, field quantity (columns 33-42)"),
        "{}",
        r.reason
    );
}

#[test]
fn impossible_date_is_rejected() {
    let bad = record(
        "WO-1001",
        "MAT-4711",
        "0000012500",
        "EA",
        "WC01",
        "20261331063000",
        "OP17",
    );
    let r = rejection(&bad);
    assert_eq!(r.field.as_deref(), Some("completed_at"));
    assert_eq!(r.position, Some(52));
}

#[test]
fn control_and_non_ascii_bytes_are_rejected_with_column() {
    let mut bad = good().into_bytes();
    bad[20] = 0x07;
    let r = match host().run::<MesFixedWidth>(TestHost::message("text/plain", bad)) {
        Err(MediationError::Rejected(r)) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(r.position, Some(21));
    assert_eq!(r.field.as_deref(), Some("material"));
}

#[test]
fn blank_work_order_is_rejected() {
    let r = rejection(&record(
        "",
        "MAT-4711",
        "0000012500",
        "EA",
        "WC01",
        "20261127063000",
        "OP17",
    ));
    assert_eq!(r.field.as_deref(), Some("work_order"));
    assert!(r.reason.contains("is blank"));
}

#[test]
fn unknown_work_centre_names_the_table() {
    let r = rejection(&record(
        "WO-1",
        "M",
        "1",
        "EA",
        "WC99",
        "20261127063000",
        "",
    ));
    assert_eq!(r.field.as_deref(), Some("work_centre"));
    assert!(
        r.reason
            .contains("\"WC99\" is not in lookup table work_centres"),
        "{}",
        r.reason
    );
}

#[test]
fn another_plant_layout_needs_only_settings() {
    // A plant whose MES writes date and time apart, integer quantities, a constant unit, no lookups.
    let settings = json!({
        "record_length": 40,
        "source_system": "legacy-mes",
        "defaults": { "unit": "PCE" },
        "fields": [
            { "name": "completed_date", "start": 1,  "length": 8, "type": "date", "format": "%d%m%Y" },
            { "name": "completed_time", "start": 9,  "length": 4, "type": "time", "format": "%H%M" },
            { "name": "work_order",     "start": 13, "length": 10, "type": "integer" },
            { "name": "material",       "start": 23, "length": 12, "type": "text" },
            { "name": "quantity",       "start": 35, "length": 6,  "type": "integer" }
        ]
    });
    let host = TestHost::new().with_settings(settings);
    let out = host
        .run::<MesFixedWidth>(TestHost::message(
            "text/plain",
            format!(
                "{}{}{:>10}{:<12}{}",
                "27112026", "2215", "0004711", "BOLT-M8", "000042"
            ),
        ))
        .unwrap();
    let e = event(&out[0]);
    assert_eq!(e["source"], "/plants/test-plant/legacy-mes");
    assert_eq!(e["data"]["work_order"], "0004711");
    assert_eq!(e["data"]["quantity"], json!(42.0));
    assert_eq!(e["data"]["unit"], "PCE");
    assert_eq!(e["data"]["completed_at"], "2026-11-27T22:15:00Z");
}

#[test]
fn invalid_layouts_fail_the_load_with_a_reason() {
    let cases = [
        (
            json!({"record_length": 10, "fields": []}),
            "the layout needs a work_order field",
        ),
        (
            json!({"record_length": 10, "fields": [{"name": "work_order", "start": 5, "length": 10, "type": "text"}]}),
            "field work_order ends at column 14, past record_length 10",
        ),
        (
            json!({"record_length": 10, "fields": [], "colour": "red"}),
            "unknown field `colour`",
        ),
        (
            json!({"record_length": 10, "utc_offset": "CET", "fields": []}),
            "utc_offset \"CET\" must look like",
        ),
    ];
    for (settings, expected) in cases {
        let err = match MesFixedWidth::new(&TestHost::new().with_settings(settings.clone())) {
            Err(e) => e,
            Ok(_) => panic!("{settings} should not load"),
        };
        assert!(err.contains(expected), "{settings}: {err}");
    }
}

#[test]
fn missing_lookup_table_fails_the_load() {
    let err = MesFixedWidth::new(&TestHost::new().with_settings(layout()))
        .err()
        .unwrap();
    assert!(err.contains("lookup table \"work_centres\""), "{err}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// The fields of a record that must be accepted, built valid: work order and material
    /// non-blank, a 10-digit quantity, a work centre the table knows, a real local time.
    fn valid() -> impl Strategy<Value = (String, String, String, String, String, String)> {
        (
            "[A-Z0-9][A-Z0-9-]{0,11}",
            "[A-Z0-9][A-Z0-9-]{0,17}",
            "[0-9]{10}",
            prop_oneof![Just("WC01"), Just("WC02")],
            (
                2000u32..2100,
                1u32..=12,
                1u32..=28,
                0u32..24,
                0u32..60,
                0u32..60,
            )
                .prop_map(|(y, mo, d, h, mi, s)| format!("{y:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}")),
            "[A-Z0-9]{0,8}",
        )
            .prop_map(|(wo, mat, qty, wc, at, op)| (wo, mat, qty, wc.to_string(), at, op))
    }

    /// One way to break a valid record, and the field and column its rejection must name.
    #[derive(Debug, Clone)]
    enum Break {
        Quantity(String),
        WorkCentre(String),
        Month(u32),
        BlankWorkOrder,
    }

    fn breakage() -> impl Strategy<Value = Break> {
        prop_oneof![
            // Ten columns, not all digits: a letter at one of them.
            (0usize..10, "[0-9]{10}", "[A-Z]").prop_map(|(at, digits, letter)| {
                Break::Quantity(format!("{}{letter}{}", &digits[..at], &digits[at + 1..]))
            }),
            "WC[1-9][0-9]".prop_map(Break::WorkCentre),
            (13u32..=99).prop_map(Break::Month),
            Just(Break::BlankWorkOrder),
        ]
    }

    proptest! {
        /// Whatever bytes arrive, the plugin answers with events or a rejection; it never panics.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = host().run::<MesFixedWidth>(TestHost::message("text/plain", body));
        }

        /// Every valid record gives one event carrying its fields (every case takes this branch).
        #[test]
        fn valid_records_become_one_event_each((wo, mat, qty, wc, at, op) in valid()) {
            let line = record(&wo, &mat, &qty, "EA", &wc, &at, &op);
            let out = run(&line);
            prop_assert!(out.is_ok(), "{line:?}: {out:?}");
            let out = out.unwrap();
            prop_assert_eq!(out.len(), 1);
            let e = event(&out[0]);
            prop_assert_eq!(e["subject"].as_str(), Some(wo.as_str()));
            prop_assert_eq!(e["data"]["material"].as_str(), Some(mat.as_str()));
            let quantity = qty.parse::<u64>().unwrap() as f64 / 1000.0;
            prop_assert_eq!(e["data"]["quantity"].as_f64(), Some(quantity));
            let centre = if wc == "WC01" { "ASSY-01" } else { "PAINT-02" };
            prop_assert_eq!(e["data"]["work_centre"].as_str(), Some(centre));
        }

        /// A valid record broken in one field is rejected naming that field and its first
        /// column (every case takes this branch).
        #[test]
        fn a_record_broken_in_one_field_is_rejected_naming_it(
            (wo, mat, qty, wc, at, op) in valid(), broken in breakage(),
        ) {
            let (field, column, line) = match &broken {
                Break::Quantity(q) => ("quantity", 33, record(&wo, &mat, q, "EA", &wc, &at, &op)),
                Break::WorkCentre(w) => ("work_centre", 46, record(&wo, &mat, &qty, "EA", w, &at, &op)),
                Break::Month(m) => {
                    let at = format!("{}{m:02}{}", &at[..4], &at[6..]);
                    ("completed_at", 52, record(&wo, &mat, &qty, "EA", &wc, &at, &op))
                }
                Break::BlankWorkOrder => ("work_order", 3, record("", &mat, &qty, "EA", &wc, &at, &op)),
            };
            let out = run(&line);
            let Err(MediationError::Rejected(r)) = out else {
                return Err(TestCaseError::fail(format!("{broken:?} not rejected: {line:?} {out:?}")));
            };
            prop_assert_eq!(r.field.as_deref(), Some(field), "{}", r.reason);
            prop_assert_eq!(r.position, Some(column), "{}", r.reason);
        }
    }
}

#[test]
fn local_times_in_an_iana_time_zone_follow_daylight_saving_time() {
    let mut settings = layout();
    let object = settings.as_object_mut().unwrap();
    object.remove("utc_offset");
    object.insert("time_zone".into(), json!("Europe/Berlin"));
    let host = TestHost::new()
        .with_settings(settings)
        .with_table("work_centres", [("WC01", "ASSY-01")]);
    let at = |local: &str| {
        let r = record("WO-1", "MAT-1", "0000001000", "EA", "WC01", local, "OP1");
        host.run::<MesFixedWidth>(TestHost::message("text/plain", r))
    };
    let time = |local: &str| event(&at(local).unwrap()[0])["time"].clone();
    assert_eq!(time("20260115080000"), "2026-01-15T07:00:00Z");
    assert_eq!(time("20260715080000"), "2026-07-15T06:00:00Z");
    let r = millrace_sdk::testing::expect_rejected(at("20260329023000"));
    assert!(
        r.reason.contains("does not exist in Europe/Berlin"),
        "{}",
        r.reason
    );
    assert_eq!(
        (r.field.as_deref(), r.position),
        (Some("completed_at"), Some(52))
    );
}

/// Every placement of a newline or a bad byte in bodies of 0 to 24 bytes: the chunked searches
/// find what a byte-by-byte search finds.
#[test]
fn lines_and_bad_bytes_are_found_where_a_byte_by_byte_search_finds_them() {
    use crate::layout::Encoding;
    use crate::record::first_disallowed;
    for len in 0..=24 {
        for at in 0..=len {
            let marks = [
                (b'\n', None),
                (b'\n', Some(len / 2)),
                (0x1f, None),
                (0x7f, None),
                (0x85, None),
                (0xff, None),
            ];
            for (mark, second) in marks {
                let mut body = vec![b'A'; len];
                if at < len {
                    body[at] = mark;
                }
                if let Some(other) = second.filter(|o| *o < len) {
                    body[other] = mark;
                }
                let split: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
                assert_eq!(lines(&body).collect::<Vec<_>>(), split, "{body:?}");
                for encoding in [Encoding::Ascii, Encoding::Latin1] {
                    let expected = body.iter().position(|b| {
                        !((0x20..0x7f).contains(b) || (encoding == Encoding::Latin1 && *b >= 0xa0))
                    });
                    assert_eq!(first_disallowed(encoding, &body), expected, "{body:?}");
                }
            }
        }
    }
    // Latin-1 letters are allowed in a Latin-1 layout only.
    let latin1 = b"Gr\xfc\xdfe aus M\xfcnchen";
    assert_eq!(first_disallowed(Encoding::Latin1, latin1), None);
    assert_eq!(first_disallowed(Encoding::Ascii, latin1), Some(2));
}
