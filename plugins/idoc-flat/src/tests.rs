use super::*;
use millrace_sdk::TestHost;
use millrace_sdk::testing::{body_value, expect_rejected};
use proptest::prelude::*;
use serde_json::json;

/// A goods movement layout (WMMBXY): header E1MBXYH with posting date and time and a reference,
/// items E1MBXYI with material, storage locations, batch, movement type, quantity, unit.
pub fn settings() -> Value {
    json!({
        "message_type": "WMMBXY",
        "header_segment": "E1MBXYH",
        "item_segment": "E1MBXYI",
        "event_type": "millrace.inventory.moved.v1",
        "dataschema": "urn:millrace:schema:inventory.moved:v1",
        "utc_offset": "+01:00",
        "subject": "material",
        "time": "moved_at",
        "header_fields": [
            { "path": "moved_at", "start": 1, "length": 8, "type": "datetime", "time_start": 9 },
            { "path": "reference", "start": 15, "length": 16, "required": false }
        ],
        "item_fields": [
            { "path": "material", "start": 1, "length": 18 },
            { "path": "from.storage_location", "start": 19, "length": 4 },
            { "path": "to.storage_location", "start": 23, "length": 4 },
            { "path": "lot", "start": 27, "length": 10, "required": false },
            { "path": "movement_type", "start": 37, "length": 3 },
            { "path": "quantity", "start": 40, "length": 15, "type": "decimal" },
            { "path": "unit", "start": 55, "length": 3 }
        ]
    })
}

pub fn control(docnum: &str, mestyp: &str) -> String {
    format!(
        "{:<10}{:<3}{:0>16}{:<4}{:<2}{:<1}{:<1}{:<1}{:<1}{:<30}{:<30}{:<30}",
        "EDI_DC40", "100", docnum, "740", "30", "2", "2", "", "", "WMMBID02", "", mestyp
    )
}

pub fn data(segment: &str, docnum: &str, segnum: u32, sdata: &str) -> String {
    format!(
        "{segment:<30}100{docnum:0>16}{segnum:0>6}{:0>6}02{sdata}",
        0
    )
}

pub fn header(date: &str, time: &str, reference: &str) -> String {
    format!("{date:<8}{time:<6}{reference:<16}")
}

pub fn item(
    material: &str,
    from: &str,
    to: &str,
    lot: &str,
    bwart: &str,
    qty: &str,
    unit: &str,
) -> String {
    format!("{material:<18}{from:<4}{to:<4}{lot:<10}{bwart:<3}{qty:>15}{unit:<3}")
}

fn good() -> String {
    [
        control("4711", "WMMBXY"),
        data(
            "E1MBXYH",
            "4711",
            1,
            &header("20261127", "073000", "MD-49000123"),
        ),
        data(
            "E1MBXYI",
            "4711",
            2,
            &item("MAT-4711", "0001", "0002", "L2611", "311", "12.500", "EA"),
        ),
        data(
            "E1MBXYI",
            "4711",
            3,
            &item("BOLT-M8", "0001", "0005", "", "311", "2.000-", "KG"),
        ),
    ]
    .join("\n")
}

fn run(body: &str) -> Result<Vec<Message>, MediationError> {
    TestHost::new()
        .with_settings(settings())
        .run::<IdocFlat>(TestHost::message("text/plain", body))
}

#[test]
fn each_item_segment_becomes_an_inventory_move_with_the_header_fields() {
    let out = run(&good()).unwrap();
    assert_eq!(out.len(), 2);
    let first = body_value(&out[0]);
    assert_eq!(first["id"], "test-1-4711-1");
    assert_eq!(first["subject"], "MAT-4711");
    assert_eq!(first["time"], "2026-11-27T06:30:00Z");
    assert_eq!(
        first["data"],
        json!({
            "moved_at": "2026-11-27T06:30:00Z", "reference": "MD-49000123", "material": "MAT-4711",
            "from": { "storage_location": "0001" }, "to": { "storage_location": "0002" }, "lot": "L2611",
            "movement_type": "311", "quantity": 12.5, "unit": "EA", "plant": "test-plant",
            "attributes": { "idoc_number": "4711" }
        })
    );
    let second = body_value(&out[1]);
    assert_eq!(
        second["data"]["quantity"],
        json!(-2.0),
        "SAP's trailing minus"
    );
    assert!(second["data"].get("lot").is_none());
}

#[test]
fn trimmed_trailing_blanks_and_several_idocs_are_fine() {
    let two = format!(
        "{}\n{}\n{}\n{}\n",
        good()
            .lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n"),
        control("4712", "WMMBXY"),
        data("E1MBXYH", "4712", 1, &header("20260101", "003000", "")),
        data(
            "E1MBXYI",
            "4712",
            2,
            &item("MAT-1", "0001", "0002", "", "311", "1.000", "EA")
        )
    );
    let out = run(&two).unwrap();
    assert_eq!(out.len(), 3);
    let third = body_value(&out[2]);
    assert_eq!(third["id"], "test-1-4712-1");
    assert_eq!(
        third["data"]["moved_at"], "2025-12-31T23:30:00Z",
        "the offset crosses midnight and the year"
    );
}

#[test]
fn faults_name_line_segment_and_field() {
    let r = expect_rejected(run(&good().replace("WMMBXY", "ORDERS")));
    assert_eq!((r.field.as_deref(), r.position), (Some("MESTYP"), Some(1)));
    let r = expect_rejected(run(&good().replace("12.500", "12,500")));
    assert_eq!(
        (r.field.as_deref(), r.position),
        (Some("quantity"), Some(3))
    );
    assert!(
        r.reason
            .starts_with("line 3, segment E1MBXYI, quantity (SDATA 40-54)"),
        "{}",
        r.reason
    );
    let r = expect_rejected(run(&good().replace("20261127", "20261131")));
    assert_eq!(r.field.as_deref(), Some("moved_at"));
    let lines: Vec<String> = good().lines().map(str::to_string).collect();
    let r = expect_rejected(run(&lines[1..].join("\n")));
    assert!(r.reason.contains("before any EDI_DC40"), "{}", r.reason);
    let wrong_doc = format!(
        "{}\n{}",
        lines[0],
        data(
            "E1MBXYI",
            "4799",
            2,
            &item("M", "1", "2", "", "311", "1", "EA")
        )
    );
    assert_eq!(
        expect_rejected(run(&wrong_doc)).field.as_deref(),
        Some("DOCNUM")
    );
    let blank = format!(
        "{}\n{}",
        lines[0],
        data(
            "E1MBXYI",
            "4711",
            2,
            &item("", "1", "2", "", "311", "1", "EA")
        )
    );
    assert_eq!(
        expect_rejected(run(&blank)).field.as_deref(),
        Some("material")
    );
    assert!(
        expect_rejected(run("hello"))
            .reason
            .contains("before any EDI_DC40")
    );
}

#[test]
fn calendar_helpers_round_trip() {
    for days in [-719_468, -1, 0, 59, 10_957, 20_784, 2_932_896] {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
    assert_eq!(date("20240229").as_deref(), Some("2024-02-29"));
    assert_eq!(date("20250229"), None);
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "[ -~\\n]{0,300}", prefix in proptest::bool::ANY) {
        let body = if prefix { format!("{}\n{text}", control("1", "WMMBXY")) } else { text };
        let _ = run(&body);
    }
}

/// A delivery (DELVRY07) layout by SAP field names, for XML IDocs.
fn delivery_settings() -> Value {
    json!({
        "message_type": "DESADV",
        "header_segment": "E1EDL20",
        "item_segment": "E1EDL24",
        "event_type": "millrace.inventory.moved.v1",
        "header_fields": [{ "path": "reference", "name": "VBELN" }],
        "item_fields": [
            { "path": "material", "name": "MATNR" },
            { "path": "quantity", "name": "LFIMG", "type": "decimal" },
            { "path": "unit", "name": "VRKME" },
            { "path": "lot", "name": "CHARG", "required": false }
        ]
    })
}

fn delivery_xml(docnums: [&str; 2]) -> String {
    let idoc = |docnum: &str, delivery: &str| {
        format!(
            r#"<IDOC BEGIN="1">
    <EDI_DC40 SEGMENT="1"><TABNAM>EDI_DC40</TABNAM><DOCNUM>{docnum}</DOCNUM><IDOCTYP>DELVRY07</IDOCTYP><MESTYP>DESADV</MESTYP></EDI_DC40>
    <E1EDL20 SEGMENT="1"><VBELN>{delivery}</VBELN><VSTEL>1000</VSTEL>
      <E1EDL24 SEGMENT="1"><POSNR>000010</POSNR><MATNR>MAT-1</MATNR><LFIMG>12.500</LFIMG><VRKME>EA</VRKME><CHARG>L1</CHARG></E1EDL24>
      <E1EDL24 SEGMENT="1"><POSNR>000020</POSNR><MATNR>MAT-2</MATNR><LFIMG>3</LFIMG><VRKME>KG</VRKME></E1EDL24>
    </E1EDL20>
  </IDOC>"#
        )
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DELVRY07>\n  {}\n  {}\n</DELVRY07>\n",
        idoc(docnums[0], "80001"),
        idoc(docnums[1], "80002")
    )
}

fn run_with(
    settings: Value,
    content_type: &str,
    body: &str,
) -> Result<Vec<Message>, MediationError> {
    TestHost::new()
        .with_settings(settings)
        .run::<IdocFlat>(TestHost::message(content_type, body))
}

#[test]
fn xml_idocs_under_one_root_give_an_event_per_item_with_its_delivery() {
    let out = run_with(
        delivery_settings(),
        "application/xml",
        &delivery_xml(["0000000000004711", "4712"]),
    )
    .unwrap();
    let events: Vec<Value> = out.iter().map(body_value).collect();
    let summary: Vec<(&str, &str, &Value, &Value)> = events
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap(),
                e["data"]["reference"].as_str().unwrap(),
                &e["data"]["material"],
                &e["data"]["quantity"],
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("test-1-4711-1", "80001", &json!("MAT-1"), &json!(12.5)),
            ("test-1-4711-2", "80001", &json!("MAT-2"), &json!(3.0)),
            ("test-1-4712-1", "80002", &json!("MAT-1"), &json!(12.5)),
            ("test-1-4712-2", "80002", &json!("MAT-2"), &json!(3.0)),
        ]
    );
    assert_eq!(events[0]["data"]["lot"], "L1");
    assert!(events[1]["data"].get("lot").is_none());
}

#[test]
fn blank_docnums_fall_back_to_the_idoc_ordinal_so_ids_stay_distinct() {
    let out = run_with(
        delivery_settings(),
        "text/xml",
        &delivery_xml(["", "0000000000000000"]),
    )
    .unwrap();
    let ids: Vec<Value> = out.iter().map(|m| body_value(m)["id"].clone()).collect();
    assert_eq!(
        ids,
        [
            json!("test-1-n1-1"),
            json!("test-1-n1-2"),
            json!("test-1-n2-1"),
            json!("test-1-n2-2")
        ]
    );
    // The same in a flat file: two IDocs without DOCNUM.
    let flat = [
        control("", "WMMBXY"),
        data("E1MBXYH", "", 1, &header("20261127", "073000", "A")),
        data(
            "E1MBXYI",
            "",
            2,
            &item("MAT-1", "0001", "0002", "", "311", "1.000", "EA"),
        ),
        control("", "WMMBXY"),
        data("E1MBXYH", "", 1, &header("20261127", "080000", "B")),
        data(
            "E1MBXYI",
            "",
            2,
            &item("MAT-2", "0001", "0002", "", "311", "2.000", "EA"),
        ),
    ]
    .join("\r\n");
    let ids: Vec<Value> = run(&flat)
        .unwrap()
        .iter()
        .map(|m| body_value(m)["id"].clone())
        .collect();
    assert_eq!(ids, [json!("test-1-n1-1"), json!("test-1-n2-1")]);
}

#[test]
fn xml_faults_name_the_line_segment_and_field() {
    let bad = delivery_xml(["1", "2"]).replacen("<LFIMG>12.500</LFIMG>", "<LFIMG>12,5</LFIMG>", 1);
    let r = expect_rejected(run_with(delivery_settings(), "application/xml", &bad));
    assert_eq!(
        (r.field.as_deref(), r.position),
        (Some("LFIMG"), Some(6)),
        "{}",
        r.reason
    );
    assert!(
        r.reason
            .starts_with("line 6, segment E1EDL24, LFIMG <LFIMG> \"12,5\""),
        "{}",
        r.reason
    );
    let r = expect_rejected(run_with(
        delivery_settings(),
        "application/xml",
        "<DELVRY07><IDOC BEGIN=\"1\">",
    ));
    assert_eq!(r.field.as_deref(), Some("IDOC"), "{}", r.reason);
    let r = expect_rejected(run_with(
        delivery_settings(),
        "application/xml",
        "<a><b/></a>",
    ));
    assert!(r.reason.contains("no IDOC element"), "{}", r.reason);
    // A flat layout (positions only) cannot read an XML IDoc, and says so.
    let r = expect_rejected(run_with(
        settings(),
        "application/xml",
        &delivery_xml(["1", "2"])
            .replace("DESADV", "WMMBXY")
            .replace("E1EDL20", "E1MBXYH"),
    ));
    assert!(
        r.reason.contains("has no name in the settings"),
        "{}",
        r.reason
    );
}

#[test]
fn unicode_control_records_and_a_clean_segment_name() {
    let mut body = good().replacen("EDI_DC40  ", "EDI_DC40_U", 1);
    assert_eq!(run(&body).unwrap().len(), 2);
    // A data record whose SEGNAM column is followed straight by other text is named by the segment only.
    body.push_str(&format!(
        "\n{}",
        data(
            "E1MBXYI",
            "4711",
            4,
            &item("MAT-9", "0001", "0002", "", "311", "x", "EA")
        )
    ));
    let r = expect_rejected(run(&body));
    assert!(
        r.reason.starts_with("line 5, segment E1MBXYI, quantity"),
        "{}",
        r.reason
    );
    // Unicode: columns count characters.
    let umlaut = good().replace("MAT-4711      ", "MÄT-4711      ");
    let out = run(&umlaut).unwrap();
    assert_eq!(body_value(&out[0])["data"]["material"], "MÄT-4711");
    assert_eq!(body_value(&out[0])["data"]["quantity"], 12.5);
}

#[test]
fn control_record_fields_reach_every_item_of_their_idoc() {
    let mut settings = delivery_settings();
    settings["utc_offset"] = json!("+01:00");
    settings["control_fields"] = json!([
        { "path": "moved_at", "name": "CREDAT", "start": 379, "length": 8, "type": "datetime", "time_name": "CRETIM" },
        { "path": "attributes.sender", "name": "SNDPRN", "required": false }
    ]);
    // time_name goes with name, time_start with start: both forms may be given.
    settings["control_fields"][0]["time_start"] = json!(387);
    let body = delivery_xml(["1", "2"]).replace(
        "<MESTYP>DESADV</MESTYP>",
        "<MESTYP>DESADV</MESTYP><SNDPRN>PLANT1000</SNDPRN><CREDAT>20261127</CREDAT><CRETIM>073000</CRETIM>",
    );
    let out = run_with(settings.clone(), "application/xml", &body).unwrap();
    let first = body_value(&out[0]);
    assert_eq!(first["data"]["moved_at"], "2026-11-27T06:30:00Z");
    assert_eq!(first["data"]["attributes"]["sender"], "PLANT1000");
    assert_eq!(first["data"]["attributes"]["idoc_number"], "1");
    let r = expect_rejected(run_with(
        settings,
        "application/xml",
        &delivery_xml(["1", "2"]),
    ));
    assert_eq!(
        (r.field.as_deref(), r.position),
        (Some("CREDAT"), Some(4)),
        "{}",
        r.reason
    );
}

#[test]
fn a_real_flat_idoc_and_its_xml_twin_give_the_same_items() {
    // The same ORDERS05 IDoc from SAP's integration recipes, once flat (segment definitions
    // E2EDP01…, CR LF, trimmed records) and once as XML (segment types E1EDP01).
    let settings = json!({
        "message_type": "ORDERS",
        "item_segment": "E1EDP01",
        "event_type": "millrace.test.order-line.v1",
        "item_fields": [
            { "path": "line", "name": "POSEX", "start": 1, "length": 6 },
            { "path": "quantity", "name": "MENGE", "start": 12, "length": 15, "type": "decimal" },
            { "path": "unit", "name": "MENEE", "start": 27, "length": 3, "required": false }
        ]
    });
    let flat = include_str!("../corpus/12-sap-recipes-orders05-flat-crlf/input.idoc");
    let xml = include_str!("../corpus/14-sap-recipes-orders05-xml-crlf/input.xml");
    let data = |content_type: &str, body: &str| -> Vec<Value> {
        run_with(settings.clone(), content_type, body)
            .unwrap()
            .iter()
            .map(|m| body_value(m)["data"].clone())
            .collect()
    };
    let from_flat = data("text/plain", flat);
    assert!(!from_flat.is_empty());
    assert_eq!(from_flat, data("application/xml", xml));
    assert!(from_flat[0]["quantity"].is_number(), "{from_flat:?}");
}

#[test]
fn sap_end_of_day_is_midnight_of_the_next_day() {
    let plugin = IdocFlat {
        settings: serde_json::from_value(settings()).unwrap(),
        utc_offset_secs: 3600,
    };
    assert_eq!(
        plugin.datetime("20261231", "240000").as_deref(),
        Some("2026-12-31T23:00:00Z")
    );
    assert_eq!(plugin.datetime("20261231", "240001"), None);
    assert!(is_segment("E2EDL24007", "E1EDL24"));
    assert!(is_segment("E2EDK14", "E1EDK14"));
    assert!(is_segment("Z2EXT001", "Z1EXT"));
    assert!(!is_segment("E2EDL2400", "E1EDL24"));
    assert!(!is_segment("E1EDL241", "E1EDL24"));
}
