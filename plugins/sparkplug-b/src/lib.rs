//! `sparkplug-b`: Sparkplug B payloads from edge nodes and devices (protobuf, decoded here in the
//! sandbox; the host only moves bytes) become canonical events:
//! - every NBIRTH, DBIRTH, NDATA and DDATA → one `millrace.process.measured.v1` with the metrics'
//!   values by snake_case name (the Sparkplug names kept beside them), units from the metrics'
//!   `engUnit` property, and the values that are not scalars (arrays, data sets, templates,
//!   bytes) under `attributes`;
//! - a configured state metric (e.g. `Machine/State`) → `millrace.machine.downtime.v1` when it
//!   enters one of the configured down values (an open downtime) and when it leaves them (the
//!   finished downtime, with its end).
//!
//! Aliases: a BIRTH's metrics name their aliases; the later DATA messages carry only the alias.
//! The plugin keeps alias → name and datatype in the plant's `state` (so every host of the plant
//! and every instance read the same table), and answers `retry-later` for an alias no BIRTH has
//! named yet (a BIRTH mediated in parallel, or one the host never saw: the edge node must be
//! asked to rebirth).
//!
//! The message's topic (`mqtt-topic` header, set by the MQTT source) names the group, the
//! message type, the edge node and the device: `spBv1.0/GROUP/TYPE/EDGE[/DEVICE]`. NDEATH,
//! DDEATH, NCMD, DCMD and STATE messages are filtered (no events).

mod metric;
mod wire;

use metric::{Resolved, Shape};
use millrace_sdk::{CloudEvent, Host, MediationError, Message, Plugin, PluginInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// Event type for the metrics of one payload.
pub const MEASURED: &str = "millrace.process.measured.v1";
/// Event type for a machine's downtime derived from its state metric.
pub const DOWNTIME: &str = "millrace.machine.downtime.v1";

/// Step settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_source_system")]
    source_system: String,
    /// Device (or edge node) id → canonical asset id; unmapped ids are rejected.
    #[serde(default)]
    machines_table: Option<String>,
    /// Canonical asset id → work centre, for the downtime events.
    #[serde(default)]
    work_centres_table: Option<String>,
    /// The metric whose value is the machine's state.
    #[serde(default)]
    state_metric: Option<String>,
    /// Values of the state metric that mean the machine is down (compared as text).
    #[serde(default)]
    down_values: Vec<Json>,
    /// Those of `down_values` that are planned downtime (the others are unplanned).
    #[serde(default)]
    planned_values: Vec<Json>,
    /// A metric of the same payload whose value is the reason (alarm) code; else the state
    /// value is the reason.
    #[serde(default)]
    reason_metric: Option<String>,
    /// Reason (alarm) code → canonical reason code; unmapped codes are rejected.
    #[serde(default)]
    reasons_table: Option<String>,
}

fn default_source_system() -> String {
    "sparkplug".into()
}

/// A setting value as the text a metric value is compared with.
fn setting_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The parts of a Sparkplug B topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Topic {
    group: String,
    /// NBIRTH, DDATA, ...
    message_type: String,
    kind: Kind,
    edge: String,
    device: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Birth,
    Data,
    /// DEATH, CMD: nothing to publish.
    Other,
}

impl Topic {
    fn parse(topic: &str) -> Result<Option<Topic>, MediationError> {
        let levels: Vec<&str> = topic.split('/').collect();
        let wrong = || {
            MediationError::rejected(format!(
                "topic {topic:?} is not a Sparkplug B topic (spBv1.0/GROUP/TYPE/EDGE[/DEVICE])"
            ))
            .field("mqtt-topic")
        };
        if levels.first() == Some(&"STATE") || levels.get(1) == Some(&"STATE") {
            return Ok(None); // a primary host application's state
        }
        if levels.len() < 4 || levels.len() > 5 || levels[0] != "spBv1.0" {
            return Err(wrong());
        }
        if levels.iter().any(|l| l.is_empty()) {
            return Err(wrong());
        }
        let device = levels.get(4).map(|d| d.to_string());
        let (kind, for_device) = match levels[2] {
            "NBIRTH" => (Kind::Birth, false),
            "DBIRTH" => (Kind::Birth, true),
            "NDATA" => (Kind::Data, false),
            "DDATA" => (Kind::Data, true),
            "NDEATH" | "NCMD" => (Kind::Other, false),
            "DDEATH" | "DCMD" => (Kind::Other, true),
            other => {
                return Err(MediationError::rejected(format!(
                    "topic {topic:?}: {other:?} is not a Sparkplug B message type"
                ))
                .field("mqtt-topic"));
            }
        };
        if for_device != device.is_some() {
            return Err(MediationError::rejected(format!(
                "topic {topic:?}: a {} message {} a device level",
                levels[2],
                if for_device { "needs" } else { "has no" }
            ))
            .field("mqtt-topic"));
        }
        Ok(Some(Topic {
            group: levels[1].into(),
            message_type: levels[2].into(),
            kind,
            edge: levels[3].into(),
            device,
        }))
    }

    /// The state keys of this edge node or device start with this (`#` cannot occur in a
    /// topic name, so no id can forge another's keys).
    fn key(&self, what: &str) -> String {
        match &self.device {
            Some(d) => format!("sparkplug/{}/{}/{}#{what}", self.group, self.edge, d),
            None => format!("sparkplug/{}/{}#{what}", self.group, self.edge),
        }
    }

    fn name(&self) -> String {
        match &self.device {
            Some(d) => format!("spBv1.0/{}/{}/{}", self.group, self.edge, d),
            None => format!("spBv1.0/{}/{}", self.group, self.edge),
        }
    }
}

/// What an alias stands for, as kept in `state`.
#[derive(Debug, Serialize, Deserialize)]
struct Alias {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    datatype: Option<u32>,
}

/// A machine's downtime as kept in `state` (`#downtime`): the last transition applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Downtime {
    down: bool,
    /// Timestamp (ms) of the state sample applied last; older samples are ignored.
    at: u64,
    started_at: Option<String>,
    ended_at: Option<String>,
    reason: Option<String>,
    alarm: Option<String>,
    planned: bool,
    /// The message that made this transition (a redelivery of it emits its event again).
    by: String,
}

#[derive(Debug, Serialize)]
struct Measured<'a> {
    plant: &'a str,
    device: &'a str,
    measured_at: String,
    values: Map<String, Json>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    units: Map<String, Json>,
    attributes: Map<String, Json>,
}

#[derive(Debug, Serialize)]
struct DowntimeData<'a> {
    machine: &'a str,
    plant: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    work_centre: Option<&'a str>,
    started_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<&'a str>,
    category: &'static str,
    reason_code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    alarm_code: Option<&'a str>,
}

/// The plugin: its settings, checked at load.
pub struct SparkplugB {
    settings: Settings,
    down: Vec<String>,
    planned: Vec<String>,
}

impl Plugin for SparkplugB {
    fn describe() -> PluginInfo {
        PluginInfo::new("sparkplug-b", env!("CARGO_PKG_VERSION"))
            .accepts([
                "application/octet-stream",
                "application/x-protobuf",
                "application/protobuf",
                "application/vnd.google.protobuf",
            ])
            .emits([MEASURED, DOWNTIME])
    }

    fn new(host: &impl Host) -> Result<Self, String> {
        let settings: Settings = host.settings()?;
        host.require_tables(
            [
                &settings.machines_table,
                &settings.work_centres_table,
                &settings.reasons_table,
            ]
            .into_iter()
            .flatten(),
        )?;
        let down: Vec<String> = settings.down_values.iter().map(setting_text).collect();
        let planned: Vec<String> = settings.planned_values.iter().map(setting_text).collect();
        if settings.state_metric.is_some() && down.is_empty() {
            return Err("state_metric is set but down_values is empty: name the state values that mean the machine is down".into());
        }
        if let Some(p) = planned.iter().find(|p| !down.contains(p)) {
            return Err(format!(
                "planned_values has {p:?}, which is not one of down_values"
            ));
        }
        if settings.state_metric.is_none() && !down.is_empty() {
            return Err("down_values is set but state_metric is not".into());
        }
        Ok(SparkplugB {
            settings,
            down,
            planned,
        })
    }

    fn mediate(&self, host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let topic_text = input.header("mqtt-topic").ok_or_else(|| {
            MediationError::rejected(
                "no mqtt-topic header: Sparkplug B messages are read from an MQTT route (the topic names the edge node and the message type)",
            )
            .field("mqtt-topic")
        })?;
        let Some(topic) = Topic::parse(topic_text)? else {
            return Ok(Vec::new());
        };
        if topic.kind == Kind::Other {
            return Ok(Vec::new());
        }
        let payload = wire::payload(&input.body).map_err(|e| {
            MediationError::rejected(format!("not a Sparkplug B payload: {e}")).field(e.at)
        })?;
        let metrics = match topic.kind {
            Kind::Birth => self.birth(host, &topic, &payload)?,
            _ => self.data(host, &topic, &payload)?,
        };
        let at_ms = payload
            .timestamp
            .or_else(|| metrics.iter().filter_map(|m| m.timestamp).max())
            .ok_or_else(|| {
                MediationError::rejected("neither the payload nor its metrics carry a timestamp")
                    .field("timestamp")
            })?;
        let measured_at = metric::rfc3339(at_ms).map_err(|e| {
            MediationError::rejected(format!("payload timestamp {at_ms}: {e}")).field("timestamp")
        })?;
        let s = &self.settings;
        let device = topic.device.as_deref().unwrap_or(&topic.edge);
        let machine = match &s.machines_table {
            Some(table) => host.code(table, device, "device")?,
            None => device.to_string(),
        };
        let source = format!("/plants/{}/{}", input.plant, s.source_system);
        let mut outputs = Vec::new();
        if let Some(data) = measured(
            &input.plant,
            &machine,
            measured_at.clone(),
            &topic,
            &payload,
            &metrics,
        ) {
            outputs.push(
                CloudEvent::new(
                    format!("{}-measured", input.id),
                    source.clone(),
                    MEASURED,
                    data,
                )
                .subject(machine.clone())
                .time(measured_at)
                .dataschema("urn:millrace:schema:process.measured:v1")
                .into_message(&input),
            );
        }
        if let Some(record) = self.transition(host, &input, &topic, &metrics, at_ms)? {
            outputs.push(self.downtime(host, &input, &machine, &source, &record)?);
        }
        Ok(outputs)
    }
}

impl SparkplugB {
    /// A BIRTH names every metric: its aliases and datatypes are kept for the DATA to come.
    fn birth(
        &self,
        host: &impl Host,
        topic: &Topic,
        payload: &wire::Payload,
    ) -> Result<Vec<Resolved>, MediationError> {
        let mut out = Vec::with_capacity(payload.metrics.len());
        for (i, m) in payload.metrics.iter().enumerate() {
            let name = m.name.clone().ok_or_else(|| {
                MediationError::rejected(format!(
                    "metric {i} of a BIRTH has no name (a BIRTH must name every metric)"
                ))
                .field(format!("metrics[{i}].name"))
            })?;
            if let Some(alias) = m.alias {
                let record = serde_json::to_string(&Alias {
                    name: name.clone(),
                    datatype: m.datatype,
                })
                .expect("an alias record serializes");
                host.state_put(&topic.key(&format!("alias/{alias}")), &record)?;
            } else if let Some(datatype) = m.datatype {
                host.state_put(&topic.key(&format!("type/{name}")), &datatype.to_string())?;
            }
            out.push(metric::resolve(m, name, m.datatype, i)?);
        }
        Ok(out)
    }

    /// A DATA's metrics by alias (named by the BIRTH kept in state) or by name.
    fn data(
        &self,
        host: &impl Host,
        topic: &Topic,
        payload: &wire::Payload,
    ) -> Result<Vec<Resolved>, MediationError> {
        let mut out = Vec::with_capacity(payload.metrics.len());
        for (i, m) in payload.metrics.iter().enumerate() {
            let (name, datatype) = match (&m.name, m.alias) {
                (Some(name), _) => {
                    let datatype = match m.datatype {
                        Some(d) => Some(d),
                        None => host
                            .state_get(&topic.key(&format!("type/{name}")))?
                            .and_then(|t| t.parse().ok()),
                    };
                    (name.clone(), datatype)
                }
                (None, Some(alias)) => {
                    let Some(record) = host.state_get(&topic.key(&format!("alias/{alias}")))?
                    else {
                        return Err(MediationError::retry_later(format!(
                            "metric alias {alias} of {} has no BIRTH on record yet (a BIRTH still on its way, or one this plant never received: the edge node must be asked to rebirth)",
                            topic.name()
                        )));
                    };
                    let alias: Alias = serde_json::from_str(&record).map_err(|e| {
                        MediationError::rejected(format!("the alias record is unreadable: {e}"))
                    })?;
                    (alias.name, m.datatype.or(alias.datatype))
                }
                (None, None) => {
                    return Err(MediationError::rejected(format!(
                        "metric {i} has neither a name nor an alias"
                    ))
                    .field(format!("metrics[{i}]")));
                }
            };
            out.push(metric::resolve(m, name, datatype, i)?);
        }
        Ok(out)
    }

    /// The downtime transition a state sample in `metrics` makes, recorded in state; `None`
    /// when the sample changes nothing (or the payload has none).
    fn transition(
        &self,
        host: &impl Host,
        input: &Message,
        topic: &Topic,
        metrics: &[Resolved],
        payload_at: u64,
    ) -> Result<Option<Downtime>, MediationError> {
        let s = &self.settings;
        let Some(state_name) = &s.state_metric else {
            return Ok(None);
        };
        let Some(sample) = metrics
            .iter()
            .rev()
            .find(|m| &m.name == state_name && m.shape != Shape::Null)
        else {
            return Ok(None);
        };
        let text = sample.text().unwrap_or_default();
        let at = sample.timestamp.unwrap_or(payload_at);
        let key = topic.key("downtime");
        let before: Option<Downtime> = match host.state_get(&key)? {
            Some(t) => Some(serde_json::from_str(&t).map_err(|e| {
                MediationError::rejected(format!("the downtime record {key:?} is unreadable: {e}"))
            })?),
            None => None,
        };
        let down = self.down.contains(&text);
        match &before {
            // A redelivery of the message that made the last transition: its event again.
            Some(b) if b.by == input.id => {
                return Ok(Some(b.clone()).filter(|b| b.started_at.is_some()));
            }
            Some(b) if at <= b.at => return Ok(None), // an older sample, mediated late
            Some(b) if b.down == down => {
                // No transition; a newer sample still moves the clock, so that an older one
                // mediated after it (a replay, a redelivery) changes nothing.
                let newer = Downtime { at, ..b.clone() };
                host.state_put(&key, &serde_json::to_string(&newer).expect("serializes"))?;
                return Ok(None);
            }
            None if !down => {
                // The first sample seen says running: kept, so a later one orders against it.
                let first = Downtime {
                    down: false,
                    at,
                    started_at: None,
                    ended_at: None,
                    reason: None,
                    alarm: None,
                    planned: false,
                    by: input.id.clone(),
                };
                host.state_put(&key, &serde_json::to_string(&first).expect("serializes"))?;
                return Ok(None);
            }
            _ => {}
        }
        let when = metric::rfc3339(at).map_err(|e| {
            MediationError::rejected(format!("{state_name} timestamp {at}: {e}"))
                .field(state_name.clone())
        })?;
        let record = match before {
            Some(b) if !down => Downtime {
                down: false,
                at,
                ended_at: Some(when),
                by: input.id.clone(),
                ..b
            },
            _ => {
                let alarm = s
                    .reason_metric
                    .as_ref()
                    .and_then(|r| metrics.iter().rev().find(|m| &m.name == r))
                    .and_then(Resolved::text)
                    .unwrap_or_else(|| text.clone());
                let reason = match &s.reasons_table {
                    Some(table) => host.code(table, &alarm, "reason")?,
                    None => alarm.clone(),
                };
                Downtime {
                    down: true,
                    at,
                    started_at: Some(when),
                    ended_at: None,
                    reason: Some(reason),
                    alarm: Some(alarm),
                    planned: self.planned.contains(&text),
                    by: input.id.clone(),
                }
            }
        };
        host.state_put(&key, &serde_json::to_string(&record).expect("serializes"))?;
        Ok(Some(record))
    }

    /// The `machine.downtime` event of a transition: open (no end yet) or finished.
    fn downtime(
        &self,
        host: &impl Host,
        input: &Message,
        machine: &str,
        source: &str,
        record: &Downtime,
    ) -> Result<Message, MediationError> {
        let work_centre = match &self.settings.work_centres_table {
            Some(table) => Some(host.code(table, machine, "machine")?),
            None => None,
        };
        let started_at = record.started_at.as_deref().unwrap_or_default();
        let data = DowntimeData {
            machine,
            plant: &input.plant,
            work_centre: work_centre.as_deref(),
            started_at,
            ended_at: record.ended_at.as_deref(),
            category: if record.planned {
                "planned"
            } else {
                "unplanned"
            },
            reason_code: record.reason.as_deref().unwrap_or_default(),
            alarm_code: record.alarm.as_deref(),
        };
        Ok(
            CloudEvent::new(format!("{}-downtime", input.id), source, DOWNTIME, data)
                .subject(machine)
                .time(record.ended_at.as_deref().unwrap_or(started_at))
                .dataschema("urn:millrace:schema:machine.downtime:v1")
                .into_message(input),
        )
    }
}

/// Metrics of the protocol itself, not measurements: the birth/death sequence and the
/// node's and devices' control metrics.
fn is_control(name: &str) -> bool {
    name == "bdSeq" || name.starts_with("Node Control/") || name.starts_with("Device Control/")
}

/// The `process.measured` data of a payload; `None` when no metric has a scalar value (the
/// event needs at least one).
fn measured<'a>(
    plant: &'a str,
    device: &'a str,
    measured_at: String,
    topic: &Topic,
    payload: &wire::Payload,
    metrics: &[Resolved],
) -> Option<Measured<'a>> {
    let (mut values, mut units, mut attributes) = (Map::new(), Map::new(), Map::new());
    let (mut names, mut nulls, mut historical) = (Map::new(), Vec::new(), Vec::new());
    for m in metrics.iter().filter(|m| !is_control(&m.name)) {
        match m.shape {
            Shape::Null => nulls.push(Json::String(m.name.clone())),
            Shape::Structured => {
                attributes.insert(m.name.clone(), m.value.clone());
            }
            Shape::Scalar => {
                let base = metric::snake(&m.name);
                let mut key = base.clone();
                let mut n = 1;
                while values.contains_key(&key) {
                    n += 1;
                    key = format!("{base}_{n}");
                }
                if key != m.name {
                    names.insert(key.clone(), Json::String(m.name.clone()));
                }
                if let Some(unit) = &m.unit {
                    units.insert(key.clone(), Json::String(unit.clone()));
                }
                if m.historical {
                    historical.push(Json::String(key.clone()));
                }
                values.insert(key, m.value.clone());
            }
        }
    }
    if values.is_empty() {
        return None;
    }
    let mut sparkplug = Map::new();
    sparkplug.insert("group".into(), topic.group.clone().into());
    sparkplug.insert("message_type".into(), topic.message_type.clone().into());
    sparkplug.insert("edge_node".into(), topic.edge.clone().into());
    if let Some(d) = &topic.device {
        sparkplug.insert("device".into(), d.clone().into());
    }
    if let Some(seq) = payload.seq {
        sparkplug.insert("seq".into(), seq.into());
    }
    if let Some(uuid) = &payload.uuid {
        sparkplug.insert("uuid".into(), uuid.clone().into());
    }
    attributes.insert("sparkplug".into(), Json::Object(sparkplug));
    if !names.is_empty() {
        attributes.insert("names".into(), Json::Object(names));
    }
    if !nulls.is_empty() {
        attributes.insert("nulls".into(), Json::Array(nulls));
    }
    if !historical.is_empty() {
        attributes.insert("historical".into(), Json::Array(historical));
    }
    Some(Measured {
        plant,
        device,
        measured_at,
        values,
        units,
        attributes,
    })
}

millrace_sdk::export!(SparkplugB);

#[cfg(test)]
mod tests;
