//! Sink `http` (a webhook) and `millrace dlq replay`: outputs reach a real HTTP receiver with
//! their ids as `Idempotency-Key`; a receiver that refuses makes the sender retry (503), nothing
//! dead-lettered; a message rejected for a missing lookup entry is replayed after the table is
//! fixed — first as a dry run, then delivered — and is not replayed twice.

use crate::harness::*;

/// A route `mes` of mes-fixed-width, HTTP in, to `webhook`, its work centres in a CSV file (WC01).
pub(crate) fn workspace(webhook: &WebhookReceiver) -> Workspace {
    let mes = plugin("mes-fixed-width");
    let ws = Workspace::new(
        &(format!(
            "[plants.plant-a.lookups.work_centres]\ncsv = \"work-centres.csv\"\n\n{}[routes.mes.webhook]\nurl = \"{}\"\ntimeout_ms = 2000\n\n",
            route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "")
                .replace("sink = \"reply\"", "sink = \"http\""),
            webhook.url
        ) + &mes_settings("mes")),
    );
    ws.write("work-centres.csv", "local,canonical\nWC01,ASSY-01\n");
    ws
}

#[test]
fn outputs_go_to_the_webhook_and_a_refusing_webhook_means_retry_not_dead_letter() {
    let webhook = WebhookReceiver::start();
    let ws = workspace(&webhook);
    let host = ws.start();
    let delivered = host.post_with_key(
        "mes",
        "text/plain",
        "m-1",
        record("WO-1", "0000001000", "WC01"),
    );
    assert_eq!(delivered.status, 200, "{}", delivered.body);
    assert_eq!(delivered.json()["delivered"], 1);
    let got = webhook.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("idempotency-key"), Some("m-1-1"));
    assert_eq!(
        got[0].header("content-type"),
        Some("application/cloudevents+json")
    );
    let event: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(event["data"]["work_centre"], "ASSY-01");

    webhook.answer_with(503);
    let refused = host.post_with_key(
        "mes",
        "text/plain",
        "m-2",
        record("WO-2", "0000001000", "WC01"),
    );
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(
        refused.json()["type"],
        "urn:millrace:problem:sink-unavailable"
    );
    assert!(refused.header("retry-after").is_some());
    let out = ws.millrace(&["dlq", "list", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[]",
        "a sink outage is not a dead letter"
    );

    webhook.answer_with(200);
    let retried = host.post_with_key(
        "mes",
        "text/plain",
        "m-2",
        record("WO-2", "0000001000", "WC01"),
    );
    assert_eq!(
        retried.status, 200,
        "the sender's retry goes through: {}",
        retried.body
    );
    assert_eq!(webhook.received().len(), 2);
}

#[test]
fn a_dead_letter_is_replayed_after_the_fix_once() {
    let webhook = WebhookReceiver::start();
    let ws = workspace(&webhook);
    let host = ws.start();
    let rejected = host.post_with_key(
        "mes",
        "text/plain",
        "m-9",
        record("WO-9", "0000001000", "WC09"),
    );
    assert_eq!(rejected.status, 422, "{}", rejected.body);
    drop(host);

    let still = ws.millrace(&["dlq", "replay", "--route", "mes"]);
    assert_eq!(still.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&still.stdout).contains("still fails at step 1"));

    // The fix: the plant's table gets the missing work centre.
    ws.write(
        "work-centres.csv",
        "local,canonical\nWC01,ASSY-01\nWC09,PAINT-09\n",
    );
    let dry = ws.millrace(&["dlq", "replay", "--route", "mes", "--dry-run"]);
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{text}");
    assert!(
        text.contains("would deliver 1 output(s)") && text.contains("PAINT-09"),
        "{text}"
    );
    assert!(webhook.requests().is_empty(), "a dry run sends nothing");

    let replay = ws.millrace(&["dlq", "replay", "--route", "mes"]);
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{text}");
    assert!(text.contains("1 replayed, 0 still waiting"), "{text}");
    let got = webhook.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("idempotency-key"),
        Some("m-9-1"),
        "the same id as a first delivery would have had"
    );

    let again = ws.millrace(&["dlq", "replay", "--route", "mes"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("no dead letters of route mes wait"));
    assert_eq!(webhook.received().len(), 1, "replayed once");
    let list = ws.millrace(&["dlq", "list", "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(entries[0]["replayed_at"].is_string());
}
