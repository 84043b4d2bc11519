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
    let isa_version = if version == "004010" {
        "00401"
    } else {
        "00501"
    };
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

fn run(text: &str) -> Result<Vec<Message>, MediationError> {
    TestHost::new().run::<X12Asn>(TestHost::message("application/edi-x12", text))
}

fn rejection(text: &str) -> millrace_sdk::Rejection {
    millrace_sdk::testing::expect_rejected(run(text))
}

fn data(out: &[Message]) -> Value {
    serde_json::from_slice::<Value>(&out[0].body).unwrap()["data"].clone()
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
                    { "line": 1, "buyer_part": "MAT-4711", "vendor_part": "SUP-A-77", "quantity": 120.0, "unit": "EA", "lots": ["L2611"] },
                    { "line": 2, "vendor_part": "SUP-B-12", "quantity": 7.5, "unit": "KG" }
                ]},
                { "purchase_order": "PO-4500012399", "items": [
                    { "buyer_part": "BOLT-M8", "quantity": 1000.0, "unit": "PCE" }
                ]}
            ],
            "attributes": { "x12_version": "004010", "transaction_control": "0001" }
        })
    );
}

#[test]
fn any_separators_and_both_versions_give_the_same_data() {
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
        ('\u{1d}', '\u{1f}', "\u{1c}", "004010"),
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
    let r = rejection(&good.replace(
        "GS*SH*SUPPLIER*BUYER*20261127*0815*7*X*004010",
        "GS*SH*SUPPLIER*BUYER*20261127*0815*7*X*003060",
    ));
    assert_eq!(r.field.as_deref(), Some("GS08"));
    let r = rejection(&good.replace("ST*856", "ST*810"));
    assert!(r.reason.contains("not an 856"), "{}", r.reason);
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
}

#[test]
fn not_x12_is_rejected() {
    assert!(rejection("hello").reason.contains("no ISA segment"));
    assert!(rejection("ISA*00*short~").reason.contains("106 characters"));
}

proptest! {
    /// Whatever arrives, the plugin answers with events or a rejection; it never panics.
    #[test]
    fn arbitrary_text_never_panics(text in "ISA[ -~\\n]{0,300}|[ -~\\n]{0,300}") {
        let _ = run(&text);
    }

    /// A valid interchange with one element of the body replaced by arbitrary text is accepted
    /// or rejected with a segment number.
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
            Err(MediationError::Rejected(r)) => prop_assert!(r.position.is_some() || r.field.is_some(), "{}", r.reason),
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}
