use super::*;
use millrace_sdk::TestHost;
use proptest::prelude::*;
use serde_json::{Value, json};

/// A WMS export of pallet moves: semicolons, decimal commas, local times.
fn settings() -> Value {
    json!({
        "event_type": "millrace.inventory.moved.v1",
        "dataschema": "urn:millrace:schema:inventory.moved:v1",
        "delimiter": ";",
        "decimal_separator": ",",
        "utc_offset": "+01:00",
        "subject": "handling_unit",
        "time": "moved_at",
        "fields": [
            { "path": "handling_unit", "column": "Pallet" },
            { "path": "material", "column": "Article" },
            { "path": "quantity", "column": "Qty", "type": "decimal" },
            { "path": "unit", "column": "UoM" },
            { "path": "from.storage_location", "column": "From", "required": false },
            { "path": "to.storage_location", "column": "To" },
            { "path": "to.bin", "column": "Bin", "required": false },
            { "path": "lot", "column": "Batch", "required": false },
            { "path": "moved_at", "column": "Moved", "type": "datetime", "format": "%d.%m.%Y %H:%M" }
        ],
        "constants": { "movement_type": "311" }
    })
}

const HEADER: &str = "Pallet;Article;Qty;UoM;From;To;Bin;Batch;Moved\n";

fn run(body: &str) -> Result<Vec<Message>, MediationError> {
    TestHost::new()
        .with_settings(settings())
        .run::<CsvRecords>(TestHost::message("text/csv", body))
}

fn rejection(body: &str) -> millrace_sdk::Rejection {
    millrace_sdk::testing::expect_rejected(run(body))
}

fn event(m: &Message) -> Value {
    millrace_sdk::testing::body_value(m)
}

#[test]
fn each_row_becomes_an_event_with_nested_fields_and_utc_time() {
    let body = format!(
        "{HEADER}PAL-001;MAT-4711;12,5;EA;RECV;STOR-A;A-01-03;L2611;27.11.2026 07:30\n\"PAL;002\";MAT-4712;3;KG;;STOR-B;;;27.11.2026 08:00\n"
    );
    let out = run(&body).unwrap();
    assert_eq!(out.len(), 2);
    let first = event(&out[0]);
    assert_eq!(first["id"], "test-1-2");
    assert_eq!(first["subject"], "PAL-001");
    assert_eq!(first["time"], "2026-11-27T06:30:00Z");
    assert_eq!(
        first["dataschema"],
        "urn:millrace:schema:inventory.moved:v1"
    );
    assert_eq!(
        first["data"],
        json!({
            "handling_unit": "PAL-001", "material": "MAT-4711", "quantity": 12.5, "unit": "EA",
            "from": { "storage_location": "RECV" }, "to": { "storage_location": "STOR-A", "bin": "A-01-03" },
            "lot": "L2611", "moved_at": "2026-11-27T06:30:00Z", "movement_type": "311", "plant": "test-plant"
        })
    );
    let second = event(&out[1]);
    assert_eq!(
        second["subject"], "PAL;002",
        "quoted delimiter stays in the field"
    );
    assert!(second["data"].get("from").is_none() && second["data"].get("lot").is_none());
}

#[test]
fn a_bad_row_rejects_the_batch_naming_line_and_column() {
    let body = format!(
        "{HEADER}PAL-001;MAT-4711;12,5;EA;;STOR-A;;;27.11.2026 07:30\nPAL-002;MAT-4712;1.000,0;EA;;STOR-A;;;27.11.2026 07:31\n"
    );
    let r = rejection(&body);
    assert_eq!(r.position, Some(3));
    assert_eq!(r.field.as_deref(), Some("Qty"));
    assert!(
        r.reason
            .starts_with("line 3, column \"Qty\": \"1.000,0\" is not a decimal number"),
        "{}",
        r.reason
    );
}

#[test]
fn blank_required_value_wrong_field_count_and_missing_column_are_rejected() {
    let r = rejection(&format!("{HEADER}PAL-1;;1;EA;;STOR-A;;;27.11.2026 07:30\n"));
    assert_eq!((r.field.as_deref(), r.position), (Some("Article"), Some(2)));
    let r = rejection(&format!("{HEADER}PAL-1;MAT;1;EA\n"));
    assert_eq!(r.position, Some(2));
    assert!(
        r.reason.contains("4 fields, the header has 9"),
        "{}",
        r.reason
    );
    let r = rejection("Pallet;Article\nPAL-1;MAT\n");
    assert!(
        r.reason
            .starts_with("line 1: the header has no column \"Qty\""),
        "{}",
        r.reason
    );
}

#[test]
fn header_only_or_blank_rows_emit_nothing() {
    assert_eq!(run(HEADER).unwrap(), vec![]);
    assert_eq!(run(&format!("{HEADER};;;;;;;;\n")).unwrap(), vec![]);
}

#[test]
fn files_without_a_header_map_by_position() {
    let host = TestHost::new().with_settings(json!({
        "event_type": "millrace.material.consumed.v1",
        "has_header": false,
        "fields": [
            { "path": "work_order", "index": 1 },
            { "path": "material", "index": 2 },
            { "path": "quantity", "index": 3, "type": "decimal" },
            { "path": "consumed_at", "index": 4, "type": "datetime" }
        ],
        "constants": { "unit": "KG" }
    }));
    let out = host
        .run::<CsvRecords>(TestHost::message(
            "text/csv",
            "WO-1,STEEL,2.5,2026-11-27T06:30:00+01:00\n",
        ))
        .unwrap();
    let data = &event(&out[0])["data"];
    assert_eq!(data["consumed_at"], "2026-11-27T05:30:00Z");
    assert_eq!(data["unit"], "KG");
    assert_eq!(event(&out[0])["id"], "test-1-1");
}

#[test]
fn invalid_mappings_fail_the_load() {
    let cases = [
        (
            json!({ "event_type": "x", "fields": [{ "path": "a", "index": 1 }] }),
            "name its column",
        ),
        (
            json!({ "event_type": "x", "delimiter": ";;", "fields": [{ "path": "a", "column": "A" }] }),
            "delimiter",
        ),
        (
            json!({ "event_type": "x", "fields": [{ "path": "plant", "column": "P" }] }),
            "plant is set by the host",
        ),
        (
            json!({ "event_type": "x", "time": "a", "fields": [{ "path": "a", "column": "A" }] }),
            "must be a datetime field",
        ),
        (
            json!({ "event_type": "x", "fields": [{ "path": "A-b", "column": "A" }] }),
            "snake_case",
        ),
        (
            json!({ "event_type": "x", "fields": [{ "path": "a", "column": "A", "type": "date", "format": "%Q" }] }),
            "format",
        ),
    ];
    for (settings, expected) in cases {
        let err = CsvRecords::new(&TestHost::new().with_settings(settings.clone()))
            .err()
            .unwrap_or_else(|| panic!("{settings} loaded"));
        assert!(err.contains(expected), "{settings}: {err}");
    }
}

proptest! {
    /// Whatever bytes arrive, the plugin answers with events or a rejection; it never panics.
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = TestHost::new().with_settings(settings()).run::<CsvRecords>(TestHost::message("text/csv", body));
    }

    /// Rows of arbitrary printable cells: an accepted batch has one event per non-blank row, a
    /// rejected one names its line.
    #[test]
    fn arbitrary_rows_give_one_event_each_or_a_located_rejection(
        rows in proptest::collection::vec(proptest::collection::vec("[ -~]{0,6}|12,5|27.11.2026 07:30", 9), 0..5)
    ) {
        let mut body = HEADER.to_string();
        let mut writer = csv::WriterBuilder::new().delimiter(b';').has_headers(false).from_writer(Vec::new());
        for row in &rows {
            writer.write_record(row).unwrap();
        }
        body.push_str(&String::from_utf8(writer.into_inner().unwrap()).unwrap());
        match run(&body) {
            Ok(out) => {
                let non_blank = rows.iter().filter(|r| r.iter().any(|c| !c.is_empty())).count();
                prop_assert_eq!(out.len(), non_blank);
            }
            Err(MediationError::Rejected(r)) => prop_assert!(r.position.is_some(), "{}", r.reason),
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}

/// A machine log: one value per row, settings on top of the given ones.
fn machine(extra: Value, body: impl Into<Vec<u8>>) -> Result<Vec<Message>, MediationError> {
    let mut settings = json!({
        "event_type": "millrace.machine.sample.v1",
        "has_header": false,
        "fields": [{ "path": "value", "index": 1, "type": "decimal" }]
    });
    settings
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    TestHost::new()
        .with_settings(settings)
        .run::<CsvRecords>(TestHost::message("text/csv", body))
}

fn values(out: &[Message], path: &str) -> Vec<Value> {
    out.iter().map(|m| event(m)["data"][path].clone()).collect()
}

fn ids(out: &[Message]) -> Vec<String> {
    out.iter()
        .map(|m| event(m)["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn line_numbers_are_the_same_for_lf_crlf_and_cr_files() {
    for (ending, name) in [("\n", "LF"), ("\r\n", "CRLF"), ("\r", "CR")] {
        let body = ["1", "2", "", "3"].join(ending) + ending;
        let out = machine(json!({}), body).unwrap();
        assert_eq!(ids(&out), ["test-1-1", "test-1-2", "test-1-4"], "{name}");
        let bad = ["1", "2", "x"].join(ending);
        let r = millrace_sdk::testing::expect_rejected(machine(json!({}), bad));
        assert_eq!(r.position, Some(3), "{name}: {}", r.reason);
    }
    // With a header and a quoted line break, a row keeps the line it starts on.
    let body = format!(
        "{}PAL-1;M;1;EA;;S;;;27.11.2026 07:30\r\n\"PAL\r\n2\";M;1;EA;;S;;;27.11.2026 07:30\r\nPAL-3;M;x;EA;;S;;;27.11.2026 07:30\r\n",
        HEADER.replace('\n', "\r\n")
    );
    let r = rejection(&body);
    assert_eq!(r.position, Some(5), "{}", r.reason);
}

#[test]
fn numbers_as_machines_write_them() {
    let out = machine(
        json!({}),
        "-1.34236e-006\n1E3\n0.036000000000000004\n12345678901234567\n+.5\n",
    )
    .unwrap();
    assert_eq!(
        values(&out, "value"),
        [
            json!(-1.34236e-6),
            json!(1000.0),
            json!(0.036000000000000004),
            json!(12345678901234568.0),
            json!(0.5)
        ]
    );
    let comma = machine(
        json!({ "decimal_separator": ",", "thousands_separator": ".", "delimiter": ";" }),
        "1.234.567,89\n3,906250E-5\n-0,5\n",
    )
    .unwrap();
    assert_eq!(
        values(&comma, "value"),
        [json!(1234567.89), json!(3.90625e-5), json!(-0.5)]
    );
    for bad in [
        "1.23.4", "1,2345", "1,5", "1e", "e5", "--1", "1e99999", "0x10",
    ] {
        let r = millrace_sdk::testing::expect_rejected(machine(
            json!({ "thousands_separator": ",", "delimiter": ";" }),
            format!("\"{bad}\"\n"),
        ));
        assert_eq!(r.position, Some(1), "{bad}: {}", r.reason);
    }
    let integers = machine(
        json!({ "thousands_separator": "'", "fields": [{ "path": "count", "index": 1, "type": "integer" }] }),
        "1'250\n-7\n",
    )
    .unwrap();
    assert_eq!(values(&integers, "count"), [json!(1250), json!(-7)]);
}

#[test]
fn a_timestamp_from_date_and_time_columns_in_a_time_zone() {
    let settings = json!({
        "delimiter": ";",
        "has_header": true,
        "time_zone": "Europe/Berlin",
        "time": "sampled_at",
        "fields": [
            { "path": "sampled_at", "column": "Date", "time_column": "Time", "type": "datetime", "format": "%d.%m.%Y %H:%M:%S%.f" },
            { "path": "value", "column": "Value", "type": "decimal" }
        ]
    });
    let body = "Date;Time;Value\n15.01.2026;08:00:00;1\n15.07.2026;08:00:00.250;2\n25.10.2026;02:30:00;3\n";
    let out = machine(settings.clone(), body).unwrap();
    assert_eq!(
        values(&out, "sampled_at"),
        [
            json!("2026-01-15T07:00:00Z"),
            json!("2026-07-15T06:00:00.250Z"),
            json!("2026-10-25T00:30:00Z")
        ]
    );
    assert_eq!(event(&out[1])["time"], "2026-07-15T06:00:00.250Z");
    let r = millrace_sdk::testing::expect_rejected(machine(
        settings.clone(),
        "Date;Time;Value\n29.03.2026;02:30:00;1\n",
    ));
    assert!(
        r.reason.contains("does not exist in Europe/Berlin"),
        "{}",
        r.reason
    );
    assert_eq!((r.field.as_deref(), r.position), (Some("Date"), Some(2)));
    let mut both = settings.clone();
    both["utc_offset"] = json!("+01:00");
    assert!(machine(both, body).is_err());
    let mut no_format = settings;
    no_format["fields"][0]
        .as_object_mut()
        .unwrap()
        .remove("format");
    let e = TestHost::new()
        .with_settings(no_format)
        .run::<CsvRecords>(TestHost::message("text/csv", body));
    assert!(e.is_err());
}

#[test]
fn encodings_a_byte_order_mark_and_a_preamble() {
    let settings = json!({
        "has_header": true,
        "skip_lines": 2,
        "fields": [{ "path": "name", "column": "Name" }, { "path": "value", "column": "Wert", "type": "decimal" }]
    });
    let mut body =
        b"\xef\xbb\xbfLogger 7\r\nTitle line\r\nName,Wert\r\nM\xc3\xbchle,1\r\n".to_vec();
    let out = machine(settings.clone(), body.clone()).unwrap();
    assert_eq!(values(&out, "name"), [json!("Mühle")]);
    assert_eq!(ids(&out), ["test-1-4"]);
    body = b"Logger\nTitle\nName,Wert\nM\xfchle \x80,1\n".to_vec();
    let r = millrace_sdk::testing::expect_rejected(machine(settings.clone(), body.clone()));
    assert_eq!(
        (r.field.as_deref(), r.position),
        (Some("encoding"), Some(4)),
        "{}",
        r.reason
    );
    let mut latin1 = settings.clone();
    latin1["encoding"] = json!("latin1");
    assert_eq!(
        values(&machine(latin1, body.clone()).unwrap(), "name"),
        [json!("Mühle \u{80}")]
    );
    let mut cp1252 = settings;
    cp1252["encoding"] = json!("windows-1252");
    assert_eq!(
        values(&machine(cp1252, body).unwrap(), "name"),
        [json!("Mühle €")]
    );
}

#[test]
fn an_offset_or_a_unix_time_in_the_cell_wins_over_the_configured_zone() {
    let settings = |format: &str| {
        json!({
            "utc_offset": "+05:00",
            "fields": [{ "path": "measured_at", "index": 1, "type": "datetime", "format": format }]
        })
    };
    let at = |format: &str, cell: &str| {
        values(
            &machine(settings(format), format!("{cell}\n")).unwrap(),
            "measured_at",
        )[0]
        .clone()
    };
    assert_eq!(
        at("%Y-%m-%d %H:%M:%S%.f%:z", "2019-02-08 07:36:36.443+02:00"),
        "2019-02-08T05:36:36.443Z"
    );
    assert_eq!(at("%s", "1749612300"), "2025-06-11T03:25:00Z");
    assert_eq!(
        at("%Y-%m-%d %H:%M", "2025-06-11 08:25"),
        "2025-06-11T03:25:00Z"
    );
}

#[test]
fn a_mapped_column_named_twice_in_the_header_is_refused() {
    let settings = json!({
        "has_header": true,
        "fields": [{ "path": "value", "column": "Value", "type": "decimal" }]
    });
    let r = millrace_sdk::testing::expect_rejected(machine(
        settings,
        "Value;Value\n1;2\n".replace(';', ","),
    ));
    assert_eq!((r.field.as_deref(), r.position), (Some("Value"), Some(1)));
    assert!(r.reason.contains("columns 1 and 2"), "{}", r.reason);
}

#[test]
fn ragged_rows_read_missing_cells_as_blank_when_allowed() {
    let settings = json!({
        "has_header": true,
        "fields": [
            { "path": "value", "column": "A", "type": "decimal" },
            { "path": "comment", "column": "C", "required": false }
        ]
    });
    let body = "A,B,C\n1,2\n3,4,x\n5,6,,\n";
    assert!(machine(settings.clone(), body).is_err());
    let mut ragged = settings;
    ragged["ragged_rows"] = json!(true);
    let out = machine(ragged.clone(), body).unwrap();
    assert_eq!(values(&out, "value"), [json!(1.0), json!(3.0), json!(5.0)]);
    assert_eq!(
        values(&out, "comment"),
        [Value::Null, json!("x"), Value::Null]
    );
    let r = millrace_sdk::testing::expect_rejected(machine(ragged, "A,B,C\n1,2,3,extra\n"));
    assert_eq!(
        (r.field.as_deref(), r.position),
        (Some("#4"), Some(2)),
        "{}",
        r.reason
    );
}

#[test]
fn a_byte_that_is_not_utf8_is_located_in_a_cr_only_file() {
    let r = millrace_sdk::testing::expect_rejected(machine(json!({}), b"1\r2\r\xff\r".to_vec()));
    assert_eq!(r.position, Some(3), "{}", r.reason);
}

#[test]
fn a_shift_moves_the_decimal_point_exactly() {
    let settings =
        json!({ "fields": [{ "path": "offset_s", "index": 1, "type": "decimal", "shift": -3 }] });
    let out = machine(settings, "123\n0,5\n1e3\n".replace(",5", ".5")).unwrap();
    assert_eq!(
        values(&out, "offset_s"),
        [json!(0.123), json!(0.0005), json!(1.0)]
    );
    let bad = json!({ "fields": [{ "path": "n", "index": 1, "type": "integer", "shift": 2 }] });
    assert!(machine(bad, "1\n").is_err());
}
