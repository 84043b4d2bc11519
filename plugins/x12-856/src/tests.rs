use super::*;
use millrace_sdk::TestHost;
use proptest::prelude::*;
use serde_json::{Value, json};

/// The segments of one 856 (ST..SE, without envelopes), version-neutral.
fn body() -> Vec<String> {
    [
        "BSN*00*SHP-20261127-01*20261127*0815",
        "HL*1**S",
        "TD1*PLT94*2",
        "TD5*B*2*ODFL*M",
        "DTM*011*20261127",
        "HL*2*1*O",
        "PRF*PO-4500012345",
        "HL*3*2*T",
        "HL*4*3*I",
        "LIN*1*BP*MAT-4711*VP*SUP-A-77*LT*L2611",
        "SN1**120*EA",
        "HL*5*2*I",
        "LIN*2*VP*SUP-B-12",
        "SN1**7.5*KG",
        "HL*6*1*O",
        "PRF*PO-4500012399",
        "HL*7*6*I",
        "LIN**BP*BOLT-M8",
        "SN1**1000*PCE",
        "CTT*3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A whole interchange with the given separators, version and ST..SE body.
fn interchange(
    element: char,
    component: char,
    terminator: &str,
    version: &str,
    body: &[String],
) -> String {
    let isa_version = if version < "004020" { "00401" } else { "00501" };
    let isa = format!(
        "ISA*00*          *00*          *ZZ*SUPPLIER       *ZZ*BUYER          *261127*0815*U*{isa_version}*000000042*0*P*{component}"
    );
    assert_eq!(isa.len(), 105, "{isa}");
    let mut segments = vec![
        isa,
        format!("GS*SH*SUPPLIER*BUYER*20261127*0815*7*X*{version}"),
        "ST*856*0001".to_string(),
    ];
    segments.extend(body.iter().cloned());
    segments.push(format!("SE*{}*0001", body.len() + 2));
    segments.push("GE*1*7".into());
    segments.push("IEA*1*000000042".into());
    segments
        .iter()
        .map(|s| s.replace('*', &element.to_string()) + terminator)
        .collect()
}

/// An ST..SE body from `*`-separated segments.
fn segments(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|s| s.to_string()).collect()
}

/// The one event's `data` for a body in version 004010 with `~` terminators.
fn asn(lines: &[&str]) -> Value {
    data(&run(&interchange('*', '>', "~\n", "004010", &segments(lines))).unwrap())
}

fn run(text: &str) -> Result<Vec<Message>, MediationError> {
    TestHost::new().run::<X12Asn>(TestHost::message("application/edi-x12", text))
}

fn rejection(text: &str) -> millrace_sdk::Rejection {
    millrace_sdk::testing::expect_rejected(run(text))
}

fn data(out: &[Message]) -> Value {
    serde_json::from_slice::<Value>(&out[0].body).unwrap()["data"].clone()
}

fn bp(value: &str) -> Value {
    json!({ "qualifier": "BP", "value": value })
}

#[test]
fn a_ship_notice_becomes_one_asn_with_orders_and_items() {
    let out = run(&interchange('*', '>', "~\n", "004010", &body())).unwrap();
    assert_eq!(out.len(), 1);
    let event: Value = serde_json::from_slice(&out[0].body).unwrap();
    assert_eq!(event["id"], "test-1-0001");
    assert_eq!(event["subject"], "SHP-20261127-01");
    assert_eq!(
        data(&out),
        json!({
            "shipment_id": "SHP-20261127-01", "plant": "test-plant", "ship_date": "2026-11-27", "carrier_scac": "ODFL",
            "purchase_orders": [
                { "purchase_order": "PO-4500012345", "items": [
                    { "line": 1, "buyer_part": "MAT-4711", "vendor_part": "SUP-A-77", "quantity": 120.0, "unit": "EA", "lots": ["L2611"],
                      "identifiers": [bp("MAT-4711"), { "qualifier": "VP", "value": "SUP-A-77" }, { "qualifier": "LT", "value": "L2611" }] },
                    { "line": 2, "vendor_part": "SUP-B-12", "quantity": 7.5, "unit": "KG",
                      "identifiers": [{ "qualifier": "VP", "value": "SUP-B-12" }] }
                ]},
                { "purchase_order": "PO-4500012399", "items": [
                    { "buyer_part": "BOLT-M8", "quantity": 1000.0, "unit": "PCE", "identifiers": [bp("BOLT-M8")] }
                ]}
            ],
            "attributes": { "x12_version": "004010", "transaction_control": "0001" }
        })
    );
}

#[test]
fn any_separators_and_versions_give_the_same_data() {
    let without_version = |mut d: Value| {
        d["attributes"]
            .as_object_mut()
            .unwrap()
            .remove("x12_version");
        d
    };
    let reference = without_version(data(
        &run(&interchange('*', '>', "~\n", "004010", &body())).unwrap(),
    ));
    for (element, component, terminator, version) in [
        ('|', '^', "\n", "005010"),
        ('^', ':', "'", "004010"),
        ('*', '>', "~\r\n", "005010"),
        ('*', ':', "\r", "004060"),
        ('*', ':', "\r\n", "003060"),
        ('*', '>', "~  \n\n", "004010VICS"),
        ('\u{1d}', '\u{1f}', "\u{1c}", "006020"),
        ('*', '>', "~", "008010"),
        ('+', ':', "'", "003010UCS"),
    ] {
        let text = interchange(element, component, terminator, version, &body());
        let got = data(&run(&text).unwrap());
        assert_eq!(got["attributes"]["x12_version"], version);
        assert_eq!(
            without_version(got),
            reference,
            "{element:?} {terminator:?} {version}"
        );
    }
}

#[test]
fn a_single_byte_terminator_outside_ascii_is_read_from_the_isa() {
    // 0x85 as the terminator: the file is not UTF-8, so it is read as ISO 8859-1.
    let text = interchange('*', '>', "\u{85}", "004010", &body());
    let bytes: Vec<u8> = text.chars().map(|c| c as u32 as u8).collect();
    assert!(std::str::from_utf8(&bytes).is_err());
    let out = TestHost::new()
        .run::<X12Asn>(TestHost::message("application/edi-x12", bytes))
        .unwrap();
    assert_eq!(data(&out)["shipment_id"], "SHP-20261127-01");
}

#[test]
fn the_repetition_separator_of_isa11_is_a_separator_from_00402_on() {
    let text = interchange('*', ':', "~", "005010", &body()).replacen("*U*00501*", "*^*00501*", 1);
    assert_eq!(data(&run(&text).unwrap())["shipment_id"], "SHP-20261127-01");
    // The same character as the terminator cannot be both.
    let clash = interchange('*', ':', "~", "005010", &body()).replacen("*U*00501*", "*~*00501*", 1);
    let r = rejection(&clash);
    assert_eq!(r.field.as_deref(), Some("ISA16"), "{}", r.reason);
}

#[test]
fn an_isa_of_the_wrong_width_names_the_element() {
    let good = interchange('*', '>', "~", "004010", &body());
    let r = rejection(&good.replacen("SUPPLIER       *", "SUPPLIER        *", 1));
    assert_eq!((r.field.as_deref(), r.position), (Some("ISA06"), Some(1)));
    assert!(
        r.reason.contains("ISA06 is 16 characters, must be 15"),
        "{}",
        r.reason
    );
    let r = rejection(&good.replacen("*261127*", "*20261127*", 1));
    assert_eq!(r.field.as_deref(), Some("ISA09"), "{}", r.reason);
    let r = rejection(&good.replacen("*000000042*", "*42*", 1));
    assert_eq!(r.field.as_deref(), Some("ISA13"), "{}", r.reason);
    let r = rejection("ISA*00*short~");
    assert_eq!(r.field.as_deref(), Some("ISA02"), "{}", r.reason);
}

#[test]
fn dates_of_six_digits_follow_the_posix_century_rule() {
    let with_date = |d: &str| {
        let mut b = body();
        b[0] = format!("BSN*00*SHP-1*{d}*0815");
        data(&run(&interchange('*', '>', "~", "003060", &b)).unwrap())["ship_date"].clone()
    };
    assert_eq!(with_date("990415"), "1999-04-15");
    assert_eq!(with_date("690101"), "1969-01-01");
    assert_eq!(with_date("680101"), "2068-01-01");
    assert_eq!(with_date("261127"), "2026-11-27");
    let mut b = body();
    b[0] = "BSN*00*SHP-1*2611*0815".into();
    let r = rejection(&interchange('*', '>', "~", "003060", &b));
    assert_eq!(r.field.as_deref(), Some("BSN03"));
}

#[test]
fn automotive_shipment_item_takes_the_purchase_order_from_its_own_loop() {
    // AIAG S-I: PRF inside the item loop, after LIN and SN1.
    let d = asn(&[
        "BSN*00*ASN-77*20261127*1200",
        "HL*1**S",
        "TD5*B*2*RDWY*M",
        "HL*2*1*I",
        "LIN**BP*4711-A*EC*03",
        "SN1**500*EA",
        "PRF*55001",
        "HL*3*1*I",
        "LIN**BP*4712-B",
        "SN1**80*EA",
        "PRF*55002",
    ]);
    assert_eq!(
        d["purchase_orders"],
        json!([
            { "purchase_order": "55001", "items": [{ "buyer_part": "4711-A", "quantity": 500.0, "unit": "EA",
                "identifiers": [bp("4711-A"), { "qualifier": "EC", "value": "03" }] }] },
            { "purchase_order": "55002", "items": [{ "buyer_part": "4712-B", "quantity": 80.0, "unit": "EA",
                "identifiers": [bp("4712-B")] }] }
        ])
    );
}

#[test]
fn every_hierarchy_shape_puts_items_under_the_nearest_purchase_order() {
    let shapes: [&[&str]; 5] = [
        // S-T-I, PRF at the shipment level.
        &[
            "HL*1**S",
            "PRF*PO-1",
            "HL*2*1*T",
            "HL*3*2*I",
            "LIN**BP*A",
            "SN1**1*EA",
        ],
        // S-O-P-I (pick and pack).
        &[
            "HL*1**S",
            "HL*2*1*O",
            "PRF*PO-1",
            "HL*3*2*P",
            "MAN*GM*0001",
            "HL*4*3*I",
            "LIN**UP*012345678905*BP*A",
            "SN1**1*EA",
        ],
        // S-O-T-I.
        &[
            "HL*1**S",
            "HL*2*1*O",
            "PRF*PO-1",
            "HL*3*2*T",
            "HL*4*3*I",
            "LIN**BP*A",
            "SN1**1*EA",
        ],
        // S-T-P-I with the purchase order on the tare.
        &[
            "HL*1**S",
            "HL*2*1*T",
            "PRF*PO-1",
            "HL*3*2*P",
            "HL*4*3*I",
            "LIN**BP*A",
            "SN1**1*EA",
        ],
        // S-O-I with an own PRF on the item overriding the order's.
        &[
            "HL*1**S",
            "HL*2*1*O",
            "PRF*PO-9",
            "HL*3*2*I",
            "LIN**BP*A",
            "SN1**1*EA",
            "PRF*PO-1",
        ],
    ];
    for shape in shapes {
        let mut lines = vec!["BSN*00*S*20261127*1200"];
        lines.extend_from_slice(shape);
        let d = asn(&lines);
        let order = &d["purchase_orders"][0];
        assert_eq!(order["purchase_order"], "PO-1", "{shape:?}");
        assert_eq!(order["items"][0]["buyer_part"], "A", "{shape:?}");
        assert_eq!(
            d["purchase_orders"].as_array().unwrap().len(),
            1,
            "{shape:?}"
        );
    }
}

#[test]
fn several_shipments_and_orders_in_one_set_are_read_in_document_order() {
    let d = asn(&[
        "BSN*00*S*20261127*1200",
        "HL*1**S",
        "TD5*B*2*ODFL",
        "HL*2*1*O",
        "PRF*PO-1",
        "HL*3*2*I",
        "SN1**2*EA",
        "HL*4**S",
        "TD5*B*2*UPSN",
        "HL*5*4*O",
        "PRF*PO-2",
        "HL*6*5*I",
        "LIN*1*SK*SKU-9",
        "SN1**3*CA",
        "HL*7*4*O",
        "PRF*PO-1",
        "HL*8*7*I",
        "LIN*2*VN*V-1",
        "SN1**4*EA",
    ]);
    assert_eq!(d["carrier_scac"], "ODFL");
    assert_eq!(
        d["purchase_orders"],
        json!([
            { "purchase_order": "PO-1", "items": [
                { "quantity": 2.0, "unit": "EA" },
                { "line": 2, "vendor_part": "V-1", "quantity": 4.0, "unit": "EA", "identifiers": [{ "qualifier": "VN", "value": "V-1" }] }
            ]},
            { "purchase_order": "PO-2", "items": [
                { "line": 1, "quantity": 3.0, "unit": "CA", "identifiers": [{ "qualifier": "SK", "value": "SKU-9" }] }
            ]}
        ])
    );
}

#[test]
fn items_without_any_purchase_order_are_kept_without_one() {
    let d = asn(&[
        "BSN*00*S*20261127",
        "HL*1**S",
        "HL*2*1*I",
        "LIN**EN*4006381333931",
        "SN1**6*EA",
    ]);
    assert_eq!(
        d["purchase_orders"],
        json!([{ "items": [{ "quantity": 6.0, "unit": "EA", "identifiers": [{ "qualifier": "EN", "value": "4006381333931" }] }] }])
    );
}

#[test]
fn every_lin_qualifier_is_carried_and_buyer_and_vendor_items_fill_the_parts() {
    let d = asn(&[
        "BSN*00*S*20261127",
        "HL*1**S",
        "HL*2*1*O",
        "PRF*PO-1",
        "HL*3*2*I",
        "LIN*0001*UP*012345678905*IN*BUY-1*VA*STYLE-7*MG*M-1*SN*SER-1*LT*L1*LT*L2*CB*C-9",
        "SN1*1*1.5E1*EA",
    ]);
    let item = &d["purchase_orders"][0]["items"][0];
    assert_eq!(item["line"], 1);
    assert_eq!(item["buyer_part"], "BUY-1");
    assert!(item.get("vendor_part").is_none());
    assert_eq!(item["lots"], json!(["L1", "L2"]));
    assert_eq!(item["quantity"], 15.0);
    let qualifiers: Vec<&str> = item["identifiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["qualifier"].as_str().unwrap())
        .collect();
    assert_eq!(qualifiers, ["UP", "IN", "VA", "MG", "SN", "LT", "LT", "CB"]);
}

#[test]
fn several_interchanges_groups_and_repeated_control_numbers_give_distinct_ids() {
    let one = interchange('*', '>', "~\n", "004010", &body());
    let other = interchange('|', '^', "\n", "005010", &body()).replace("000000042", "000000043");
    let out = run(&format!("{one}\r\n{other}\0\u{1a}")).unwrap();
    let ids: Vec<Value> = out
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.body).unwrap()["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [
            json!("test-1-000000042-7-0001"),
            json!("test-1-000000043-7-0001")
        ]
    );
    let r = rejection(&format!("{one}{one}"));
    assert_eq!(r.field.as_deref(), Some("ISA13"), "{}", r.reason);
}

#[test]
fn trailing_content_after_the_iea_is_reported_with_its_segment_number() {
    let good = interchange('*', '>', "~", "004010", &body());
    let r = rejection(&format!("{good}\nGARBAGE*1~"));
    assert_eq!((r.field.as_deref(), r.position), (Some("IEA"), Some(27)));
    assert!(r.reason.contains("GARBAGE"), "{}", r.reason);
}

#[test]
fn other_transaction_sets_are_passed_over_and_logged() {
    let host = TestHost::new();
    let text = interchange('*', '>', "~", "004010", &body()).replace(
        "GE*1*7~",
        "GE*1*7~GS*IN*SUPPLIER*BUYER*20261127*0815*8*X*004010~ST*810*0002~BIG*20261127*INV-1~SE*3*0002~GE*1*8~",
    ).replace("IEA*1*", "IEA*2*");
    let out = host
        .run::<X12Asn>(TestHost::message("application/edi-x12", text.clone()))
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(
        host.logs().iter().any(|(_, m)| m.contains("810 0002")),
        "{:?}",
        host.logs()
    );
    let only_invoice = text.replace("ST*856*0001", "ST*855*0001");
    let r = rejection(&only_invoice);
    assert_eq!(r.field.as_deref(), Some("ST01"), "{}", r.reason);
}

#[test]
fn envelope_counts_and_control_numbers_are_checked_with_the_segment_number() {
    let good = interchange('*', '>', "~", "004010", &body());
    let r = rejection(&good.replace("SE*22*0001", "SE*21*0001"));
    assert_eq!((r.field.as_deref(), r.position), (Some("SE01"), Some(24)));
    assert!(
        r.reason
            .contains("says \"21\" segments, the envelope has 22"),
        "{}",
        r.reason
    );
    let r = rejection(&good.replace("SE*22*0001", "SE*22*0002"));
    assert_eq!(r.field.as_deref(), Some("SE02"));
    let r = rejection(&good.replace("GE*1*7", "GE*2*7"));
    assert_eq!((r.field.as_deref(), r.position), (Some("GE01"), Some(25)));
    let r = rejection(&good.replace("IEA*1*000000042", "IEA*1*000000043"));
    assert_eq!((r.field.as_deref(), r.position), (Some("IEA02"), Some(26)));
    for old in ["002040", "00401", "VICS"] {
        let r = rejection(&good.replace("*X*004010~", &format!("*X*{old}~")));
        assert_eq!(
            (r.field.as_deref(), r.position),
            (Some("GS08"), Some(2)),
            "{}",
            r.reason
        );
    }
    let r = rejection(&good.replace("SE*22*0001~", ""));
    assert_eq!(
        (r.field.as_deref(), r.position),
        (Some("ST"), Some(3)),
        "{}",
        r.reason
    );
}

#[test]
fn content_faults_name_segment_and_element() {
    let mut bad = body();
    bad[10] = "SN1**12X*EA".into();
    let r = rejection(&interchange('*', '>', "~", "004010", &bad));
    assert_eq!((r.field.as_deref(), r.position), (Some("SN102"), Some(14)));
    let mut bad = body();
    bad[0] = "BSN*00*SHP-1*20260230*0815".into();
    let r = rejection(&interchange('*', '>', "~", "004010", &bad));
    assert_eq!(r.field.as_deref(), Some("BSN03"));
    let mut bad = body();
    bad[8] = "HL*4*99*I".into();
    let r = rejection(&interchange('*', '>', "~", "004010", &bad));
    assert_eq!(r.field.as_deref(), Some("HL02"));
    let mut bad = body();
    bad[9] = "LIN*1*BP**VP*SUP-A-77".into();
    let r = rejection(&interchange('*', '>', "~", "004010", &bad));
    assert_eq!((r.field.as_deref(), r.position), (Some("LIN03"), Some(13)));
    let mut bad = body();
    bad[10] = "HL*9*4*I".into();
    let r = rejection(&interchange('*', '>', "~", "004010", &bad));
    assert_eq!(
        (r.field.as_deref(), r.position),
        (Some("SN102"), Some(12)),
        "{}",
        r.reason
    );
}

#[test]
fn not_x12_is_rejected() {
    let r = rejection("hello");
    assert!(r.reason.contains("no ISA segment"));
    assert_eq!((r.field.as_deref(), r.position), (Some("ISA"), Some(1)));
}

proptest! {
    /// Whatever arrives, the plugin answers with events or a rejection that names an element
    /// or a segment; it never panics.
    #[test]
    fn arbitrary_text_never_panics(text in "ISA[ -~\\n]{0,300}|[ -~\\n]{0,300}") {
        if let Err(e) = run(&text) {
            let MediationError::Rejected(r) = e else { panic!("{e:?}") };
            prop_assert!(r.field.is_some(), "{}", r.reason);
        }
    }

    /// Arbitrary bytes after a valid ISA never panic either.
    #[test]
    fn arbitrary_bytes_after_an_isa_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut bytes = interchange('*', '>', "~", "004010", &body()).into_bytes();
        bytes.truncate(106);
        bytes.extend(tail);
        let _ = TestHost::new().run::<X12Asn>(TestHost::message("application/edi-x12", bytes));
    }

    /// A valid interchange with one element of the body replaced by arbitrary text is accepted
    /// or rejected with a segment number and an element.
    #[test]
    fn corrupted_elements_are_located(segment in 0usize..20, element in 1usize..6, value in "[ -~]{0,8}") {
        let mut segments = body();
        let mut elements: Vec<String> = segments[segment].split('*').map(str::to_string).collect();
        if element < elements.len() {
            elements[element] = value.replace(['*', '~', '>'], "");
        }
        segments[segment] = elements.join("*");
        match run(&interchange('*', '>', "~", "004010", &segments)) {
            Ok(out) => prop_assert_eq!(out.len(), 1),
            Err(MediationError::Rejected(r)) => prop_assert!(r.position.is_some() && r.field.is_some(), "{}", r.reason),
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}

#[test]
fn without_hl02_the_parent_is_the_nearest_level_above() {
    let d = asn(&[
        "BSN*00*S*20261127",
        "HL*1**S",
        "HL*2**O",
        "PRF*PO-1",
        "HL*3**I",
        "LIN**SK*A",
        "SN1**1*EA",
        "HL*4**I",
        "LIN**SK*B",
        "SN1**2*EA",
        "HL*5**O",
        "PRF*PO-2",
        "HL*6**I",
        "LIN**SK*C",
        "SN1**3*EA",
    ]);
    let orders: Vec<(Value, usize)> = d["purchase_orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["purchase_order"].clone(),
                o["items"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(orders, [(json!("PO-1"), 2), (json!("PO-2"), 1)]);
}
