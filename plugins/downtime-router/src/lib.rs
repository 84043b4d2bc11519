//! `downtime-router`: a machine alarm or downtime report from an IoT gateway (JSON) becomes two
//! events — `millrace.machine.downtime.v1` for maintenance (CMMS) and
//! `millrace.planning.capacity-impact.v1` for ERP planning — in that order (fan-out of two).
//!
//! Machine and alarm codes are plant-local: the step's lookup tables map them to the canonical
//! asset id, its work centre and the canonical reason code; an unknown code is rejected naming
//! the table and the key. A report whose `state` is `running` is filtered (no downtime).

use chrono::{DateTime, SecondsFormat, Utc};
use millrace_sdk::{CloudEvent, Host, MediationError, Message, Plugin, PluginInfo};
use serde::{Deserialize, Serialize};

/// Event type for maintenance.
pub const DOWNTIME: &str = "millrace.machine.downtime.v1";
/// Event type for planning.
pub const CAPACITY: &str = "millrace.planning.capacity-impact.v1";

/// Step settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Local machine id → canonical asset id.
    machines_table: String,
    /// Canonical asset id → work centre.
    work_centres_table: String,
    /// Local alarm code → canonical reason code.
    reasons_table: String,
    #[serde(default = "default_source_system")]
    source_system: String,
}

fn default_source_system() -> String {
    "iot".into()
}

/// What the gateway sends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    machine: String,
    #[serde(default)]
    alarm: Option<String>,
    #[serde(default)]
    state: State,
    started_at: String,
    #[serde(default)]
    ended_at: Option<String>,
    #[serde(default)]
    planned: bool,
}

#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    #[default]
    Down,
    Running,
}

#[derive(Debug, Serialize)]
struct Downtime<'a> {
    machine: &'a str,
    plant: &'a str,
    work_centre: &'a str,
    started_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<&'a str>,
    category: &'static str,
    reason_code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    alarm_code: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct CapacityImpact<'a> {
    work_centre: &'a str,
    plant: &'a str,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lost_minutes: Option<f64>,
    cause: Cause<'a>,
}

#[derive(Debug, Serialize)]
struct Cause<'a> {
    event_type: &'static str,
    event_id: &'a str,
    machine: &'a str,
}

/// The plugin: its settings, checked at load.
pub struct DowntimeRouter {
    settings: Settings,
}

impl Plugin for DowntimeRouter {
    fn describe() -> PluginInfo {
        PluginInfo::new("downtime-router", env!("CARGO_PKG_VERSION"))
            .accepts(["application/json"])
            .emits([DOWNTIME, CAPACITY])
    }

    fn new(host: &impl Host) -> Result<Self, String> {
        let settings: Settings = host.settings()?;
        host.require_tables([
            &settings.machines_table,
            &settings.work_centres_table,
            &settings.reasons_table,
        ])?;
        Ok(DowntimeRouter { settings })
    }

    fn mediate(&self, host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let report: Report = input.body_json()?;
        if report.state == State::Running {
            return Ok(Vec::new());
        }
        let s = &self.settings;
        let machine = host.code(&s.machines_table, &report.machine, "machine")?;
        let work_centre = host.code(&s.work_centres_table, &machine, "machine")?;
        let alarm = report.alarm.as_deref().filter(|a| !a.is_empty());
        let alarm_key = alarm.ok_or_else(|| {
            MediationError::rejected("a down report needs an alarm code").field("alarm")
        })?;
        let reason = host.code(&s.reasons_table, alarm_key, "alarm")?;
        let started = utc(&report.started_at, "started_at")?;
        let ended = report
            .ended_at
            .as_deref()
            .map(|t| utc(t, "ended_at"))
            .transpose()?;
        if let Some(end) = &ended
            && end < &started
        {
            return Err(MediationError::rejected(format!(
                "ended_at {} is before started_at {}",
                report.ended_at.as_deref().unwrap_or_default(),
                report.started_at
            ))
            .field("ended_at"));
        }
        let started_at = started.to_rfc3339_opts(SecondsFormat::Secs, true);
        let ended_at = ended.map(|e| e.to_rfc3339_opts(SecondsFormat::Secs, true));
        let lost_minutes = ended.map(|e| (e - started).num_seconds() as f64 / 60.0);

        let source = format!("/plants/{}/{}", input.plant, s.source_system);
        let downtime_id = format!("{}-downtime", input.id);
        let downtime = CloudEvent::new(
            downtime_id.clone(),
            source.clone(),
            DOWNTIME,
            Downtime {
                machine: &machine,
                plant: &input.plant,
                work_centre: &work_centre,
                started_at: &started_at,
                ended_at: ended_at.as_deref(),
                category: if report.planned {
                    "planned"
                } else {
                    "unplanned"
                },
                reason_code: &reason,
                alarm_code: alarm,
            },
        )
        .subject(machine.clone())
        .time(started_at.clone())
        .dataschema("urn:millrace:schema:machine.downtime:v1")
        .into_message(&input);
        let capacity = CloudEvent::new(
            format!("{}-capacity", input.id),
            source,
            CAPACITY,
            CapacityImpact {
                work_centre: &work_centre,
                plant: &input.plant,
                from: &started_at,
                to: ended_at.as_deref(),
                lost_minutes,
                cause: Cause {
                    event_type: DOWNTIME,
                    event_id: &downtime_id,
                    machine: &machine,
                },
            },
        )
        .subject(work_centre.clone())
        .time(started_at.clone())
        .dataschema("urn:millrace:schema:planning.capacity-impact:v1")
        .into_message(&input);
        Ok(vec![downtime, capacity])
    }
}

/// An RFC 3339 time with any offset, in UTC.
fn utc(text: &str, field: &str) -> Result<DateTime<Utc>, MediationError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            MediationError::rejected(format!("{field} {text:?} is not an RFC 3339 time: {e}"))
                .field(field)
        })
}

millrace_sdk::export!(DowntimeRouter);

#[cfg(test)]
mod tests;
