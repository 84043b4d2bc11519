use super::*;
use millrace_sdk::TestHost;
use proptest::prelude::*;
use serde_json::{Value, json};

fn host() -> TestHost {
    TestHost::new()
        .with_settings(json!({
            "machines_table": "machines",
            "work_centres_table": "machine_work_centres",
            "reasons_table": "alarm_reasons",
            "source_system": "scada"
        }))
        .with_table("machines", [("PRS-07", "ASSET-PRESS-07")])
        .with_table("machine_work_centres", [("ASSET-PRESS-07", "PRESS-LINE-1")])
        .with_table("alarm_reasons", [("E042", "HYDRAULIC-PRESSURE")])
}

fn run(body: Value) -> Result<Vec<Message>, MediationError> {
    host().run::<DowntimeRouter>(TestHost::message("application/json", body.to_string()))
}

fn rejection(body: Value) -> millrace_sdk::Rejection {
    millrace_sdk::testing::expect_rejected(run(body))
}

fn event(m: &Message) -> Value {
    millrace_sdk::testing::body_value(m)
}

#[test]
fn a_finished_downtime_fans_out_to_maintenance_and_planning() {
    let out = run(json!({
        "machine": "PRS-07", "alarm": "E042",
        "started_at": "2026-11-27T07:12:00+01:00", "ended_at": "2026-11-27T07:40:30+01:00"
    }))
    .unwrap();
    assert_eq!(out.len(), 2);
    let downtime = event(&out[0]);
    assert_eq!(downtime["type"], DOWNTIME);
    assert_eq!(downtime["id"], "test-1-downtime");
    assert_eq!(downtime["source"], "/plants/test-plant/scada");
    assert_eq!(downtime["subject"], "ASSET-PRESS-07");
    assert_eq!(
        downtime["data"],
        json!({
            "machine": "ASSET-PRESS-07", "plant": "test-plant", "work_centre": "PRESS-LINE-1",
            "started_at": "2026-11-27T06:12:00Z", "ended_at": "2026-11-27T06:40:30Z",
            "category": "unplanned", "reason_code": "HYDRAULIC-PRESSURE", "alarm_code": "E042"
        })
    );
    let capacity = event(&out[1]);
    assert_eq!(capacity["type"], CAPACITY);
    assert_eq!(capacity["subject"], "PRESS-LINE-1");
    assert_eq!(capacity["data"]["lost_minutes"], json!(28.5));
    assert_eq!(capacity["data"]["cause"]["event_id"], "test-1-downtime");
}

#[test]
fn an_open_downtime_has_no_end_and_no_lost_minutes_yet() {
    let out = run(json!({ "machine": "PRS-07", "alarm": "E042", "started_at": "2026-11-27T06:12:00Z", "planned": true })).unwrap();
    let downtime = event(&out[0]);
    assert_eq!(downtime["data"]["category"], "planned");
    assert!(downtime["data"].get("ended_at").is_none());
    let capacity = event(&out[1]);
    assert!(capacity["data"].get("to").is_none() && capacity["data"].get("lost_minutes").is_none());
}

#[test]
fn running_reports_are_filtered() {
    assert_eq!(
        run(
            json!({ "machine": "PRS-07", "state": "running", "started_at": "2026-11-27T06:12:00Z" })
        )
        .unwrap(),
        vec![]
    );
}

#[test]
fn unknown_codes_are_rejected_naming_table_and_key() {
    let r = rejection(
        json!({ "machine": "PRS-99", "alarm": "E042", "started_at": "2026-11-27T06:12:00Z" }),
    );
    assert_eq!(
        r.reason,
        "machine \"PRS-99\" is not in lookup table machines"
    );
    assert_eq!(r.field.as_deref(), Some("machine"));
    let r = rejection(
        json!({ "machine": "PRS-07", "alarm": "E999", "started_at": "2026-11-27T06:12:00Z" }),
    );
    assert_eq!(
        r.reason,
        "alarm \"E999\" is not in lookup table alarm_reasons"
    );
}

#[test]
fn bad_reports_are_rejected_with_the_field() {
    let r = rejection(json!({ "machine": "PRS-07", "alarm": "E042", "started_at": "yesterday" }));
    assert_eq!(r.field.as_deref(), Some("started_at"));
    let r = rejection(json!({
        "machine": "PRS-07", "alarm": "E042", "started_at": "2026-11-27T06:12:00Z", "ended_at": "2026-11-27T06:00:00Z"
    }));
    assert_eq!(r.field.as_deref(), Some("ended_at"));
    let r = rejection(json!({ "machine": "PRS-07", "started_at": "2026-11-27T06:12:00Z" }));
    assert_eq!(r.field.as_deref(), Some("alarm"));
    assert!(
        rejection(json!({ "machine": "PRS-07", "colour": "red" }))
            .reason
            .contains("unknown field `colour`")
    );
}

#[test]
fn missing_tables_fail_the_load() {
    let host = TestHost::new().with_settings(json!({
        "machines_table": "machines", "work_centres_table": "wc", "reasons_table": "r"
    }));
    let err = DowntimeRouter::new(&host).err().unwrap();
    assert!(
        err.contains("lookup table \"machines\" is not configured"),
        "{err}"
    );
}

proptest! {
    /// Whatever bytes arrive, the plugin answers with outputs or a rejection; it never panics.
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = host().run::<DowntimeRouter>(TestHost::message("application/json", body));
    }

    /// Well-formed reports with arbitrary times and codes never panic either, and a success
    /// always carries the two events in order.
    #[test]
    fn arbitrary_reports_never_panic(
        machine in "[A-Z0-9-]{0,8}|PRS-07",
        alarm in proptest::option::of("[A-Z0-9]{0,5}|E042"),
        start in "[0-9T:+Z-]{0,25}|2026-11-27T06:12:00Z",
        end in proptest::option::of("[0-9T:+Z-]{0,25}|2026-11-27T07:00:00Z"),
        planned in any::<bool>(),
    ) {
        let body = json!({ "machine": machine, "alarm": alarm, "started_at": start, "ended_at": end, "planned": planned });
        if let Ok(out) = run(body) {
            prop_assert_eq!(out.len(), 2);
            let first = event(&out[0]);
            prop_assert_eq!(first["type"].as_str(), Some(DOWNTIME));
        }
    }
}
