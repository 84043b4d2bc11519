//! MQTT's sections of the configuration: the broker URL (`host.mqtt`), a route's
//! `[routes.R.mqtt]` (topic filters and QoS it takes, the topic template and retain flag it
//! publishes with), and the topic arithmetic both halves need.

use serde::Deserialize;

/// `[routes.R.mqtt]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    pub topics: Option<Vec<String>>,
    pub plant_level: Option<usize>,
    pub order_levels: Option<Vec<usize>>,
    pub qos: Option<u8>,
    pub topic: Option<String>,
    pub state_topic: Option<String>,
    pub retain: Option<bool>,
    pub cloudevents: Option<String>,
    pub max_attempts: Option<u32>,
    pub retry_delay_ms: Option<u64>,
    pub retry_max_delay_ms: Option<u64>,
}

/// A route's MQTT settings (used when its source or sink is `mqtt`).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMqtt {
    /// Topic filters the route takes (`+` and `#` wildcards; `$share/GROUP/FILTER` splits a
    /// stream between hosts).
    pub topics: Vec<String>,
    /// The topic level (1-based) that names the plant: the route takes a message its filters
    /// match only when that level is its plant's name, so routes of several plants can share one
    /// topic tree (`acme/+/line-1/downtime`, one route per plant).
    pub plant_level: Option<usize>,
    /// Topic levels (1-based) that key the order: messages whose topics agree on them are
    /// mediated one after another in arrival order (e.g. a Sparkplug edge node's BIRTH before
    /// its DATA: `[2, 4, 5]`); empty (the default) runs messages in parallel.
    pub order_levels: Vec<usize>,
    /// QoS of the subscription and of what the route publishes (0, 1 or 2; default 1).
    pub qos: u8,
    /// Topic template of the outputs (see [`topic`]); `uns` is `{uns}/{type}`; default
    /// `millrace/{plant}/{type}`.
    pub topic: String,
    /// A second topic template each output is also published to, retained: the current state
    /// per subject (e.g. `{uns}/{type}/{subject}`).
    pub state_topic: Option<String>,
    /// Whether outputs are retained (the broker keeps the last one per topic).
    pub retain: bool,
    /// The plant's ISA-95 levels (`[plants.P.uns]`), in order: (level, name).
    pub uns: Vec<(String, String)>,
    /// How a CloudEvent output is carried: `structured` (the whole event as the payload, the
    /// default) or `binary` (its data as the payload, its attributes as user properties).
    pub cloudevents: String,
    /// Runs of one message before a transient failure becomes a dead letter (default 5).
    pub max_attempts: u32,
    /// Wait before the first retry (default 1 s); doubled for each further one.
    pub retry_delay: std::time::Duration,
    /// Longest wait between two attempts (default 60 s).
    pub retry_max_delay: std::time::Duration,
}

impl RouteMqtt {
    /// Route settings from the section (defaults where it is silent).
    pub fn from_section(section: Option<&MqttSection>) -> RouteMqtt {
        RouteMqtt {
            topics: section.and_then(|s| s.topics.clone()).unwrap_or_default(),
            plant_level: section.and_then(|s| s.plant_level),
            order_levels: section
                .and_then(|s| s.order_levels.clone())
                .unwrap_or_default(),
            qos: section.and_then(|s| s.qos).unwrap_or(1),
            topic: match section.and_then(|s| s.topic.clone()) {
                Some(t) if t == "uns" => "{uns}/{type}".into(),
                Some(t) => t,
                None => "millrace/{plant}/{type}".into(),
            },
            state_topic: section.and_then(|s| s.state_topic.clone()),
            retain: section.and_then(|s| s.retain).unwrap_or(false),
            uns: Vec::new(),
            cloudevents: section
                .and_then(|s| s.cloudevents.clone())
                .unwrap_or_else(|| "structured".into()),
            max_attempts: section.and_then(|s| s.max_attempts).unwrap_or(5).max(1),
            retry_delay: std::time::Duration::from_millis(
                section
                    .and_then(|s| s.retry_delay_ms)
                    .unwrap_or(1000)
                    .max(1),
            ),
            retry_max_delay: std::time::Duration::from_millis(
                section
                    .and_then(|s| s.retry_max_delay_ms)
                    .unwrap_or(60_000)
                    .max(1),
            ),
        }
    }

    /// The wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed.
    pub fn retry_delay_after(&self, attempt: u32) -> std::time::Duration {
        crate::backoff::after(self.retry_delay, self.retry_max_delay, attempt)
    }

    /// What is wrong with the section for a route whose source (`source`) or sink (`sink`) is
    /// MQTT.
    pub fn problems(&self, source: bool, sink: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if !matches!(self.cloudevents.as_str(), "structured" | "binary") {
            problems.push(format!(
                "cloudevents = {:?}; it is \"structured\" (the event as the payload) or \"binary\" (the data as the payload, the attributes as user properties)",
                self.cloudevents
            ));
        }
        if self.qos > 2 {
            problems.push(format!("qos is {}; MQTT has QoS 0, 1 and 2", self.qos));
        }
        if source && self.topics.is_empty() {
            problems.push(
                "the route takes MQTT messages but names no topics; add topics = [\"site/area/+/downtime\"] to [routes.R.mqtt]"
                    .into(),
            );
        }
        for filter in &self.topics {
            if let Err(e) = check_filter(filter) {
                problems.push(format!("topic filter {filter:?}: {e}"));
            }
        }
        match self.plant_level {
            Some(0) => problems.push("plant_level is 0; topic levels count from 1".into()),
            Some(n) if !source => problems.push(format!(
                "plant_level = {n} is for routes whose source is mqtt"
            )),
            Some(n) => {
                for filter in &self.topics {
                    let plain = strip_share(filter).unwrap_or(filter);
                    let levels: Vec<&str> = plain.split('/').collect();
                    let reaches = levels.len() >= n || levels.last() == Some(&"#");
                    if !reaches {
                        problems.push(format!(
                            "topic filter {filter:?} has {} levels; plant_level = {n} names a level it never has",
                            levels.len()
                        ));
                    }
                }
            }
            None => {}
        }
        if self.order_levels.contains(&0) {
            problems.push("order_levels has 0; topic levels count from 1".into());
        }
        if !self.order_levels.is_empty() && !source {
            problems.push("order_levels is for routes whose source is mqtt".into());
        }
        for template in std::iter::once(&self.topic).chain(&self.state_topic) {
            if !sink {
                break;
            }
            if template.is_empty() || template.contains(['+', '#']) {
                problems.push(format!(
                    "topic {template:?} is not a topic to publish to (no wildcards, not empty)"
                ));
            }
            for name in crate::pipeline::sinks::placeholders(template) {
                let known = matches!(name, "plant" | "route" | "type" | "subject")
                    || name.starts_with("data.")
                    || (name == "uns" && !self.uns.is_empty())
                    || self.uns.iter().any(|(level, _)| level == name);
                if !known {
                    problems.push(match name {
                        "uns" | "enterprise" | "site" | "area" | "line" | "cell" => format!(
                            "topic {template:?} names {{{name}}} but the plant's [plants.P.uns] does not give it"
                        ),
                        _ => format!(
                            "topic {template:?} names {{{name}}}; known: {{plant}}, {{route}}, {{type}}, {{subject}}, {{data.FIELD}}, {{uns}} and the plant's ISA-95 levels"
                        ),
                    });
                }
            }
        }
        problems
    }
}

/// Where the broker is: `mqtt://HOST[:PORT]` (1883 by default) or `mqtts://HOST[:PORT]` (TLS,
/// 8883 by default).
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// Never the password, in logs or anywhere else.
impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The MQTT link's TLS material (`[mqtt_tls]`), for `mqtts://`: CA certificates the broker's
/// certificate may chain to (default: the public web roots), and a client certificate to
/// present. Read when the host starts (and checked when the configuration is read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttTls {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl MqttTls {
    /// The client's TLS configuration; an error names the file and what is wrong.
    pub fn load(&self) -> Result<rustls::ClientConfig, String> {
        use crate::http::tls::pem_certificates;
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                let (_, certs) = pem_certificates("broker CA", ca)?;
                for cert in certs {
                    roots
                        .add(cert)
                        .map_err(|e| format!("broker CA {}: {e}", ca.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
        match (&self.cert, &self.key) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(cert), Some(key)) => {
                let (_, chain) = pem_certificates("client certificate", cert)?;
                let key_pem =
                    std::fs::read(key).map_err(|e| format!("client key {}: {e}", key.display()))?;
                let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| format!("client key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("client certificate {}: {e}", cert.display()))
            }
            _ => Err(
                "[mqtt_tls] cert and key go together (the client certificate and its key)".into(),
            ),
        }
    }
}

impl BrokerUrl {
    /// Read `url`; why it is not a broker URL otherwise.
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let (rest, tls) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => return Err("an MQTT broker URL starts with mqtt:// or mqtts://".into()),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("port {p:?} is not a number from 1 to 65535"))?,
            ),
            None => (hostport, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let (user, password) = match userinfo.map(|u| u.split_once(':')) {
            Some(Some((u, p))) => (Some(u.to_string()), Some(p.to_string())),
            Some(None) => (userinfo.map(str::to_string), None),
            None => (None, None),
        };
        Ok(BrokerUrl {
            host: host.to_string(),
            port,
            tls,
            user,
            password,
        })
    }

    /// The URL without its password, for logs and readiness answers.
    pub fn redacted(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        match &self.user {
            Some(user) => format!("{scheme}://{user}:***@{}:{}", self.host, self.port),
            None => format!("{scheme}://{}:{}", self.host, self.port),
        }
    }
}

/// Why `filter` is not a topic filter.
pub fn check_filter(filter: &str) -> Result<(), String> {
    let plain = strip_share(filter).ok_or("a shared subscription is $share/GROUP/FILTER")?;
    if plain.is_empty() {
        return Err("empty".into());
    }
    let levels: Vec<&str> = plain.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("# stands alone as the last level".into());
        }
        if level.contains('+') && *level != "+" {
            return Err("+ stands alone as a level".into());
        }
    }
    Ok(())
}

/// The filter of `$share/GROUP/FILTER`, or `filter` itself; `None` for a malformed share.
fn strip_share(filter: &str) -> Option<&str> {
    match filter.strip_prefix("$share/") {
        Some(rest) => {
            let (group, plain) = rest.split_once('/')?;
            (!group.is_empty() && !group.contains(['+', '#'])).then_some(plain)
        }
        None => Some(filter),
    }
}

/// Level `n` (1-based) of `topic`.
pub fn level(topic: &str, n: usize) -> Option<&str> {
    topic.split('/').nth(n.checked_sub(1)?)
}

/// Whether `topic` matches `filter` (a `$share/GROUP/` prefix is the filter after it).
pub fn matches(filter: &str, topic: &str) -> bool {
    let Some(filter) = strip_share(filter) else {
        return false;
    };
    let mut t = topic.split('/');
    // Topics starting with `$` are not matched by a leading wildcard (MQTT 4.7.2).
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    for level in filter.split('/') {
        match (level, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(tl)) if l == tl => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// The ISA-95 levels of the Unified Namespace, in order.
pub const UNS_LEVELS: [&str; 5] = ["enterprise", "site", "area", "line", "cell"];

/// Where an output's topic comes from besides the output itself.
pub struct Names<'a> {
    pub plant: &'a str,
    pub route: &'a str,
    /// The plant's ISA-95 levels, in order.
    pub uns: &'a [(String, String)],
}

/// The topic `template` names for an output: `{plant}`, `{route}`, `{type}` (the CloudEvent
/// type, else the content type), `{subject}` (else `none`), `{data.FIELD}` (a top-level data
/// field of a JSON event, else `none`), `{uns}` (the plant's ISA-95 path,
/// `enterprise/site/area/line/cell` as far as configured) and each level by name. Characters
/// MQTT gives meaning to (`+`, `#`) and `/` inside a value become `_`: only the template makes
/// levels.
/// `event` is the output's body parsed as JSON, when it is JSON (parsed once per output by the
/// caller, which also reads it for the properties).
pub fn topic(
    template: &str,
    names: &Names<'_>,
    content_type: &str,
    event: Option<&serde_json::Value>,
) -> String {
    let (plant, route) = (names.plant, names.route);
    let attr = |name: &str| {
        event
            .and_then(|e| e.get(name))
            .and_then(|value| match value {
                // A number as serde_json writes it back (the body is parsed already).
                serde_json::Value::String(text) => Some(text.clone()),
                serde_json::Value::Number(number) => Some(number.to_string()),
                _ => None,
            })
    };
    let clean = |v: String| v.replace(['+', '#', '/'], "_");
    crate::pipeline::sinks::address(template, |name, out| {
        let value = match name {
            "plant" => plant.to_string(),
            "route" => route.to_string(),
            "type" => attr("type").unwrap_or_else(|| content_type.to_string()),
            "subject" => attr("subject").unwrap_or_else(|| "none".into()),
            "uns" => {
                // The levels' own `/` are the topic's: each level is cleaned, not the path.
                let path: Vec<String> = names.uns.iter().map(|(_, v)| clean(v.clone())).collect();
                out.push_str(&path.join("/"));
                return true;
            }
            level if names.uns.iter().any(|(l, _)| l == level) => names
                .uns
                .iter()
                .find(|(l, _)| l == level)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            field => match field.strip_prefix("data.") {
                Some(f) => event
                    .and_then(|e| e.get("data"))
                    .and_then(|d| d.get(f))
                    .map(|v| match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_else(|| "none".into()),
                None => format!("{{{field}}}"),
            },
        };
        out.push_str(&clean(value));
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_topics_as_mqtt_says() {
        assert!(matches("a/+/c", "a/b/c"));
        assert!(!matches("a/+/c", "a/b/d"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("$share/g/a/+", "a/b"));
        assert!(!matches("#", "$SYS/uptime"));
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b+").is_err());
        assert!(check_filter("$share//a").is_err());
        assert!(check_filter("$share/g/a/#").is_ok());
    }

    #[test]
    fn topics_come_from_the_event_and_never_carry_wildcards() {
        let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
        let event =
            br#"{"type":"machine.downtime","subject":"press/7","data":{"line":"L+2","n":3}}"#;
        let uns = vec![
            ("enterprise".to_string(), "acme".to_string()),
            ("site".to_string(), "north".to_string()),
            ("area".to_string(), "assembly".to_string()),
        ];
        let names = Names {
            plant: "p1",
            route: "r",
            uns: &uns,
        };
        assert_eq!(
            topic(
                "uns/{plant}/{data.line}/{type}/{subject}/{data.n}/{data.x}",
                &names,
                "application/json",
                json(event).as_ref()
            ),
            "uns/p1/L_2/machine.downtime/press_7/3/none"
        );
        assert_eq!(
            topic("{type}", &names, "text/csv", json(b"a,b").as_ref()),
            "text_csv"
        );
        // A JSON event's attributes: a number is its text, one of another kind is absent alone.
        for (template, body, want) in [
            (
                "{uns}/{type}",
                &event[..],
                "acme/north/assembly/machine.downtime",
            ),
            (
                "{type}/{subject}",
                br#"{"type":{"v":1},"subject":4711}"#,
                "application_json/4711",
            ),
        ] {
            let event = json(body);
            assert_eq!(
                topic(template, &names, "application/json", event.as_ref()),
                want
            );
        }
        assert_eq!(
            topic("{site}-{area}", &names, "text/csv", None),
            "north-assembly"
        );
        // What names nothing stays, cleaned as a value is; a level's own `/`, `+`, `#` too.
        assert_eq!(
            topic("x/{a/b}/{{plant}/{plant", &names, "text/csv", None),
            "x/{a_b}/{p1/{plant"
        );
        let uns = vec![
            ("enterprise".to_string(), "ac/me".to_string()),
            ("site".to_string(), "n+1#".to_string()),
        ];
        let names = Names { uns: &uns, ..names };
        assert_eq!(
            topic("{uns}/{site}", &names, "text/csv", None),
            "ac_me/n_1_/n_1_"
        );
    }

    #[test]
    fn templates_name_only_what_the_plant_gives() {
        let mut route = RouteMqtt::from_section(Some(&MqttSection {
            topic: Some("uns".into()),
            ..Default::default()
        }));
        assert_eq!(route.topic, "{uns}/{type}");
        assert!(route.problems(false, true)[0].contains("[plants.P.uns]"));
        route.uns = vec![("enterprise".into(), "acme".into())];
        assert!(route.problems(false, true).is_empty());
        route.topic = "{enterprise}/{line}".into();
        assert!(route.problems(false, true)[0].contains("{line}"));
        route.topic = "{nope}".into();
        assert!(route.problems(false, true)[0].contains("known:"));
        route.topic = "{enterprise}".into();
        route.cloudevents = "json".into();
        assert!(route.problems(false, true)[0].contains("cloudevents"));
    }

    #[test]
    fn broker_urls_keep_their_password_out_of_logs() {
        let url = BrokerUrl::parse("mqtt://u:secret@10.0.0.1:1884").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("10.0.0.1", 1884));
        assert_eq!(url.redacted(), "mqtt://u:***@10.0.0.1:1884");
        assert_eq!(BrokerUrl::parse("mqtt://h").unwrap().port, 1883);
        assert!(BrokerUrl::parse("tcp://h").is_err());
        let tls = BrokerUrl::parse("mqtts://u:pw@h").unwrap();
        assert_eq!((tls.port, tls.tls), (8883, true));
        assert_eq!(format!("{tls:?}"), "mqtts://u:***@h:8883");
        assert!(BrokerUrl::parse("mqtt://h:99999").is_err());
    }
}
