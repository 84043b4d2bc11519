use super::*;
use millrace_sdk::TestHost;
use proptest::prelude::*;
use serde_json::{Value, json};

/// A protobuf writer for the tests (the payloads of the conformance vectors and of the MQTT
/// test come from an independent encoder: `encoder/encode.py`).
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    /// A base-128 varint.
    fn raw(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.raw(u64::from(field) << 3 | u64::from(wire));
    }
    fn varint(mut self, field: u32, v: u64) -> Self {
        self.key(field, 0);
        self.raw(v);
        self
    }
    fn bytes(mut self, field: u32, b: &[u8]) -> Self {
        self.key(field, 2);
        self.raw(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn double(mut self, field: u32, d: f64) -> Self {
        self.key(field, 1);
        self.0.extend_from_slice(&d.to_le_bytes());
        self
    }
}

const T: u64 = 1_764_583_200_000;

fn host() -> TestHost {
    TestHost::new().with_settings(json!({
        "state_metric": "State",
        "down_values": ["DOWN", 3],
    }))
}

fn message(topic: &str, body: Vec<u8>) -> Message {
    let mut m = TestHost::message("application/octet-stream", body);
    m.headers.push(("mqtt-topic".into(), topic.into()));
    m
}

fn with_id(mut m: Message, id: &str) -> Message {
    m.id = id.into();
    m
}

fn event(m: &Message) -> Value {
    millrace_sdk::testing::body_value(m)
}

#[test]
fn aliases_named_by_a_birth_resolve_the_data_that_follows() {
    let host = host();
    let birth = Pb::default()
        .varint(1, T)
        .bytes(
            2,
            &Pb::default()
                .bytes(1, b"Line/Speed")
                .varint(2, 7)
                .varint(4, 10)
                .double(13, 1.5)
                .0,
        )
        .bytes(
            2,
            &Pb::default()
                .bytes(1, b"State")
                .varint(2, 8)
                .varint(4, 3)
                .varint(10, 1)
                .0,
        );
    let out = host
        .run::<SparkplugB>(message("spBv1.0/g/NBIRTH/edge", birth.0))
        .unwrap();
    assert_eq!(out.len(), 1, "a measured event, no downtime (running)");
    assert_eq!(
        event(&out[0])["data"]["values"],
        json!({"line_speed": 1.5, "state": 1})
    );
    let data = Pb::default()
        .varint(1, T + 1000)
        .bytes(2, &Pb::default().varint(2, 8).varint(10, 3).0);
    let out = host
        .run::<SparkplugB>(with_id(message("spBv1.0/g/NDATA/edge", data.0), "m-2"))
        .unwrap();
    assert_eq!(out.len(), 2);
    let downtime = event(&out[1]);
    assert_eq!(downtime["type"], DOWNTIME);
    assert_eq!(downtime["data"]["reason_code"], "3");
    assert_eq!(downtime["data"]["started_at"], "2025-12-01T10:00:01.000Z");
    assert!(downtime["data"].get("ended_at").is_none());
    // Another edge node's alias 8 is not this one's.
    let other = Pb::default()
        .varint(1, T)
        .bytes(2, &Pb::default().varint(2, 8).varint(10, 3).0);
    match host.run::<SparkplugB>(message("spBv1.0/g/NDATA/other", other.0)) {
        Err(MediationError::RetryLater(r)) => assert!(r.reason.contains("alias 8"), "{r:?}"),
        other => panic!("expected retry-later, got {other:?}"),
    }
}

#[test]
fn nesting_past_the_limit_is_refused_not_followed() {
    // A template whose metric is a template whose metric is ... 10,000 deep.
    let mut inner = Pb::default().bytes(1, b"leaf").0;
    for _ in 0..10_000 {
        let template = Pb::default().bytes(2, &inner).0;
        inner = Pb::default().bytes(18, &template).0;
    }
    let payload = Pb::default().varint(1, T).bytes(2, &inner).0;
    let r = millrace_sdk::testing::expect_rejected(
        host().run::<SparkplugB>(message("spBv1.0/g/NDATA/edge", payload)),
    );
    assert!(r.reason.contains("nested more than"), "{}", r.reason);
}

#[test]
fn settings_that_cannot_work_fail_the_load() {
    for settings in [
        json!({"state_metric": "State"}),
        json!({"down_values": ["DOWN"]}),
        json!({"state_metric": "S", "down_values": ["DOWN"], "planned_values": ["SETUP"]}),
        json!({"unknown": 1}),
    ] {
        let host = TestHost::new().with_settings(settings.clone());
        assert!(
            host.run::<SparkplugB>(message("spBv1.0/g/NDATA/e", Vec::new()))
                .is_err(),
            "{settings}"
        );
    }
}

proptest! {
    #[test]
    fn any_bytes_are_read_or_refused_never_a_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::payload(&body);
        let _ = host().run::<SparkplugB>(message("spBv1.0/g/DDATA/e/d", body));
    }

    #[test]
    fn metric_names_always_make_value_names(name in ".{0,40}") {
        let key = metric::snake(&name);
        prop_assert!(key.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
        prop_assert!(key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }
}
