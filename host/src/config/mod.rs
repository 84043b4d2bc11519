//! The host configuration (TOML): plants and their lookup tables, routes (source → ordered
//! steps → sink), limits. Unknown keys are errors; every error says file:line:col and what to do.
//!
//! Relative paths in the file are relative to the file's own directory.

use crate::amqp::config::RouteAmqp;
use crate::lookup::{self, Table, Tables};
use crate::plugin::StepLimits;
use crate::plugin::capability::Capability;
use crate::plugin::store::Settings;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

mod diagnostics;
mod host;
pub use host::compile_cache_from_env;
mod plants;
mod routes;
pub mod telemetry;

use diagnostics::unlocated;
pub use diagnostics::{ConfigError, ConfigErrors, Diagnostics, Location};

/// Default HTTP listen address.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";

// ---- the file as written -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    host: HostSection,
    #[serde(default)]
    admin: AdminSection,
    tls: Option<TlsSection>,
    amqp_tls: Option<LinkTlsSection>,
    mqtt_tls: Option<LinkTlsSection>,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    telemetry: telemetry::TelemetrySection,
    #[serde(default)]
    plants: BTreeMap<Spanned<String>, PlantSection>,
    #[serde(default)]
    routes: BTreeMap<Spanned<String>, RouteSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSection {
    http: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
    data_dir: Option<String>,
    compile_cache: Option<String>,
    plugin_dir: Option<String>,
    max_in_flight: Option<Spanned<u64>>,
    idempotency_window_s: Number,
    amqp: Option<Spanned<crate::amqp::config::BrokerUrls>>,
    amqp_declare: Option<bool>,
    amqp_queues: Option<crate::amqp::config::QueueKind>,
    amqp_delivery_limit: Option<u32>,
    amqp_output_headers: Option<bool>,
    amqp_event_provenance: Option<bool>,
    amqp_confirm_timeout_s: Option<u32>,
    amqp_retained_reread_s: Option<u64>,
    instance_pool: Option<u32>,
    mqtt: Option<Spanned<String>>,
    mqtt_client_id: Option<String>,
    mqtt_session_expiry_s: Option<u32>,
    mqtt_max_in_hand: Option<usize>,
    mqtt_password_env: Option<Spanned<String>>,
    control_key_env: Option<Spanned<String>>,
    control_key_also_env: Option<Spanned<String>>,
    outbox_max_messages: Option<usize>,
    drop_dir: Option<String>,
    drop_settle_ms: Option<u64>,
    watch_config: Option<bool>,
    id: Option<Spanned<String>>,
    max_component_mib: Number,
    compile_memory_mib: Number,
    compile_timeout_s: Number,
    gate_budget_s: Number,
    stop_timeout_s: Number,
    max_connections: Number,
    max_connections_per_client: Number,
    header_timeout_s: Number,
    body_timeout_s: Number,
    idempotency_max_keys: Number,
    idempotency_max_mib: Number,
    idempotency_max_answer_kib: Number,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: Spanned<String>,
    key: Spanned<String>,
    client_ca: Option<Spanned<String>>,
    require_client_cert: Option<bool>,
    listeners: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkTlsSection {
    ca: Option<Spanned<String>>,
    cert: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    tokens: Option<Spanned<Vec<toml::Value>>>,
    tokens_file: Option<Spanned<String>>,
    allowed_hosts: Option<Vec<String>>,
}

/// A number as written, with where it is (range errors point at it).
type Number = Option<Spanned<u64>>;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    deadline_ms: Number,
    memory_mib: Number,
    max_body_kib: Number,
    instance_reuse: Number,
    max_outputs: Number,
    max_output_kib: Number,
    message_budget_ms: Number,
    quarantine_after: Number,
    quarantine_window_s: Number,
    quarantine_action: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlantSection {
    #[serde(default)]
    lookups: BTreeMap<Spanned<String>, Spanned<LookupSection>>,
    max_in_flight: Number,
    max_waiting: Number,
    state_max_keys: Number,
    state_max_mib: Number,
    trust: Option<TrustSection>,
    uns: Option<Spanned<UnsSection>>,
}

/// `[plants.P.uns]`: the plant's place in the ISA-95 hierarchy of the Unified Namespace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsSection {
    enterprise: Option<String>,
    site: Option<String>,
    area: Option<String>,
    line: Option<String>,
    cell: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustSection {
    keys: Spanned<Vec<Spanned<String>>>,
    min_signatures: Number,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupSection {
    csv: Option<String>,
    key_column: Option<String>,
    value_column: Option<String>,
    entries: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSection {
    plant: Spanned<String>,
    source: Source,
    sink: Spanned<Sink>,
    webhook: Option<Spanned<WebhookSection>>,
    amqp: Option<crate::amqp::config::AmqpSection>,
    mqtt: Option<crate::mqtt::config::MqttSection>,
    steps: Spanned<Vec<StepSection>>,
    max_body_kib: Number,
    max_outputs: Number,
    max_output_kib: Number,
    message_budget_ms: Number,
    max_in_flight: Number,
    auth: Option<Spanned<RouteAuthSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteAuthSection {
    #[serde(default)]
    tokens: Vec<RouteTokenSection>,
    #[serde(default)]
    clients: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteTokenSection {
    name: String,
    sha256: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    url: Spanned<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSection {
    plugin: Spanned<String>,
    grants: Option<Spanned<Vec<Spanned<String>>>>,
    settings: Option<Spanned<toml::Table>>,
    deadline_ms: Number,
    memory_mib: Number,
    instance_reuse: Number,
    max_outputs: Number,
    max_output_kib: Number,
}

/// Where a route's messages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `POST /v1/routes/{route}/messages` on the HTTP listener.
    Http,
    /// A RabbitMQ queue (`[routes.R.amqp] queue`).
    Amqp,
    /// MQTT topic filters (`[routes.R.mqtt] topics`).
    Mqtt,
}

/// Where a route's outputs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    /// Back to the HTTP caller in the response.
    Reply,
    /// POSTed to the route's webhook, one request per output, in order.
    Http,
    /// Published to a RabbitMQ exchange with publisher confirms.
    Amqp,
    /// Published to an MQTT topic (`[routes.R.mqtt] topic`), acknowledged by the broker.
    Mqtt,
}

/// Where sink `http` delivers.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub url: hyper::Uri,
    /// Budget of one delivery request.
    pub timeout: std::time::Duration,
}

// ---- the validated configuration -----------------------------------------------------------

impl Source {
    /// The name as written in the file (`http`, `amqp`, `mqtt`).
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Amqp => "amqp",
            Source::Mqtt => "mqtt",
        }
    }
}

impl Sink {
    /// The name as written in the file (`reply`, `http`, `amqp`, `mqtt`).
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Reply => "reply",
            Sink::Http => "http",
            Sink::Amqp => "amqp",
            Sink::Mqtt => "mqtt",
        }
    }
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub http: SocketAddr,
    /// The admin API's listen address (`host.admin`); none: no admin API.
    pub admin: Option<SocketAddr>,
    /// Messages mediated at once across all routes; more wait for a slot.
    pub max_in_flight: usize,
    pub data_dir: PathBuf,
    /// Where compiled plugins are kept between runs (`host.compile_cache`, else
    /// `$MILLRACE_COMPILE_CACHE`, else `DATA_DIR/compile-cache`); its files are loaded as native
    /// code.
    pub compile_cache: PathBuf,
    pub plugin_dir: PathBuf,
    /// The broker (`amqp://…`), needed when a route's source or sink is `amqp`: one URL, or
    /// the URLs of a cluster's nodes, tried in turn. Empty: not set.
    pub amqp: Vec<String>,
    /// The type of queue the host declares and the delivery limit of its source queues.
    pub amqp_queues: crate::amqp::config::Queues,
    /// What outputs published to the broker carry (`host.amqp_output_headers`, default true;
    /// `host.amqp_event_provenance`, default false)
    /// and how long a confirm may take (`host.amqp_confirm_timeout_s`, default 60).
    pub amqp_publishing: crate::amqp::publisher::Publishing,
    /// The key the fleet's hosts seal their activations with on the broker
    /// (`host.control_key_env` names the environment variable holding it); none: activations
    /// are not sealed, and any publisher to the control exchange can offer one.
    pub control_key: Option<crate::amqp::broadcast::ControlKey>,
    /// Keys whose seals are taken too while the fleet changes keys
    /// (`host.control_key_also_env`); seals are made with `control_key` only.
    pub control_keys_also: Vec<crate::amqp::broadcast::ControlKey>,
    /// How often a broker session reads the retained activations again after its second read
    /// (`host.amqp_retained_reread_s`, default 300, 5 to 86,400; 0: never).
    pub amqp_retained_reread: Option<std::time::Duration>,
    /// Instances made from a pool of this many slots (`host.instance_pool`); none: on demand.
    pub instance_pool: Option<u32>,
    /// Whether the host declares the broker topology its routes use (`host.amqp_declare`,
    /// default true); false for brokers provisioned beforehand.
    pub amqp_declare: bool,
    /// The MQTT broker (`mqtt://…`), needed when a route's source or sink is `mqtt`.
    pub mqtt: Option<crate::mqtt::config::BrokerUrl>,
    /// The host's MQTT client id (`host.mqtt_client_id`, default `millrace-HOST_ID`): its
    /// session at the broker, kept while it is away.
    pub mqtt_client_id: String,
    /// How long the broker keeps that session while the host is away (default one day).
    pub mqtt_session_expiry_s: u32,
    /// MQTT messages received and not yet settled, at most (`host.mqtt_max_in_hand`, default
    /// 10,000; and 64 MiB of them): what a broker sending past the receive maximum can make
    /// the host hold.
    pub mqtt_max_in_hand: usize,
    /// The MQTT link's CA and client certificate (`[mqtt_tls]`, for `mqtts://`).
    pub mqtt_tls: crate::mqtt::config::MqttTls,
    /// Outputs of HTTP-in/broker-out routes waiting for the broker, at most (default 100,000).
    pub outbox_max_messages: usize,
    /// How long the answer to a request with an `Idempotency-Key` is kept (0: not kept).
    pub idempotency_window: std::time::Duration,
    /// The watched plugin directory (`host.drop_dir`, default `DATA_DIR/drop`; `""`: none).
    pub drop_dir: Option<PathBuf>,
    /// How long a dropped file (or the edited configuration) must stay unchanged before it is
    /// read (`host.drop_settle_ms`, default 1000).
    pub settle: std::time::Duration,
    /// Whether saving the configuration file reloads it (`host.watch_config`, default true).
    pub watch_config: bool,
    /// This host's name among hosts sharing a broker (`host.id`, default the machine's
    /// hostname); names its activation-broadcast queue.
    pub host_id: String,
    /// What a candidate component may cost before the gate runs it: its size, and the memory
    /// and time its compilation may take (`host.max_component_mib`, `compile_memory_mib`,
    /// `compile_timeout_s`).
    pub intake: crate::plugin::intake::IntakeLimits,
    /// Time the gate may spend running one candidate (describe, every step's load, its sample
    /// vectors) (`host.gate_budget_s`, default 60).
    pub gate_budget: Duration,
    /// How long stopping waits for the requests and deliveries in hand (`host.stop_timeout_s`);
    /// none: the longest route's message budget plus 30 s.
    pub stop_timeout: Option<Duration>,
    /// When a plugin version is quarantined and what then (`limits.quarantine_*`).
    pub quarantine: crate::quarantine::Policy,
    /// What each listener accepts (`host.max_connections`, `max_connections_per_client`,
    /// `header_timeout_s`, `body_timeout_s`).
    pub connections: crate::http::connections::ConnectionLimits,
    /// How much of the answers to keyed requests is kept (`host.idempotency_max_*`).
    pub idempotency_bounds: crate::idempotency::Bounds,
    /// Who may call the admin API (`[admin]`).
    pub admin_access: AdminAccess,
    /// TLS for the listeners (`[tls]`), when set.
    pub tls: Option<crate::http::tls::TlsSettings>,
    /// The broker link's CA and client certificate (`[amqp_tls]`, for `amqps://`).
    pub amqp_tls: crate::amqp::config::AmqpTls,
    pub plants: BTreeMap<String, Tables>,
    /// Each plant's share of the host: messages in flight and waiting, state quota.
    pub plant_limits: BTreeMap<String, PlantLimits>,
    /// The plants that accept only signed plugins, with the keys they trust
    /// (`[plants.P.trust]`).
    pub trust: BTreeMap<String, crate::plugin::signature::TrustPolicy>,
    pub routes: Vec<RouteConfig>,
    /// `[telemetry]`: lineage, log format, trace export.
    pub telemetry: telemetry::Telemetry,
}

/// The admin API's credentials (`[admin]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminAccess {
    /// `[[admin.tokens]]`.
    pub tokens: Vec<crate::control::auth::Credential>,
    /// `admin.tokens_file`: more tokens, re-read when the file changes.
    pub tokens_file: Option<PathBuf>,
    /// `admin.allowed_hosts`: `Host` values the admin API answers to besides its address.
    pub allowed_hosts: Vec<String>,
}

/// What one plant may take of the host (`[plants.P]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlantLimits {
    /// Messages of the plant mediated at once (`max_in_flight`; default: all of
    /// `host.max_in_flight` when one plant is configured, else half of it, at least 1).
    pub max_in_flight: usize,
    /// HTTP messages of the plant waiting for one of its slots (`max_waiting`, default 4 ×
    /// `max_in_flight`); more are answered 503 `plant-busy`.
    pub max_waiting: usize,
    /// Keys the plant's state may hold (`state_max_keys`, default 100,000).
    pub state_max_keys: u64,
    /// Bytes of keys and values the plant's state may hold (`state_max_mib`, default 256).
    pub state_max_bytes: u64,
}

/// Who may post to an HTTP route (`[routes.R.auth]`): a bearer token whose SHA-256 is listed,
/// or a TLS client certificate whose common name is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAuth {
    /// (name, SHA-256 of the token).
    pub tokens: Vec<(String, [u8; 32])>,
    /// Client certificate common names (needs `[tls] client_ca`).
    pub clients: Vec<String>,
}

/// What one message may use across a route's whole chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageBudget {
    /// Time from the first step's call to the last step's answer (`message_budget_ms`, default
    /// 10,000).
    pub time: Duration,
    /// Messages at any stage of the chain (`max_outputs`, default 1,000).
    pub max_outputs: usize,
    /// Bytes of the messages at any stage (`max_output_kib`, default 16 MiB).
    pub max_output_bytes: usize,
}

impl Config {
    /// The instance pool of `host.instance_pool`: its slots hold the largest memory a step of
    /// this configuration may have (a reload that raises it is refused: it needs a restart).
    pub fn pool(&self) -> Option<crate::plugin::engine::InstancePool> {
        let instances = self.instance_pool?;
        let largest = self
            .routes
            .iter()
            .flat_map(|r| r.steps.iter().map(|s| s.limits.memory_bytes))
            .max()
            .unwrap_or(64 << 20);
        Some(crate::plugin::engine::InstancePool {
            instances,
            max_memory_bytes: largest as u64,
            keep_resident_bytes: crate::plugin::engine::POOL_KEEP_RESIDENT,
        })
    }

    /// The settings only a restart applies, as (`key`, value) pairs in a fixed order; a
    /// reload that changes any of them is refused.
    pub fn restart_only(&self) -> Vec<(&'static str, String)> {
        vec![
            ("host.http", self.http.to_string()),
            ("host.admin", format!("{:?}", self.admin)),
            ("[telemetry]", self.telemetry.fingerprint()),
            ("host.data_dir", self.data_dir.display().to_string()),
            (
                "host.compile_cache",
                self.compile_cache.display().to_string(),
            ),
            ("host.max_in_flight", self.max_in_flight.to_string()),
            ("host.amqp", format!("{:?}", self.amqp)),
            ("host.mqtt", format!("{:?}", self.mqtt)),
            ("host.mqtt_client_id", self.mqtt_client_id.clone()),
            ("host.mqtt_max_in_hand", self.mqtt_max_in_hand.to_string()),
            ("host.amqp_declare", self.amqp_declare.to_string()),
            ("host.amqp_queues", format!("{:?}", self.amqp_queues)),
            (
                "host.amqp_output_headers",
                self.amqp_publishing.output_headers.to_string(),
            ),
            (
                "host.amqp_event_provenance",
                self.amqp_publishing.event_provenance.to_string(),
            ),
            (
                "host.amqp_confirm_timeout_s",
                self.amqp_publishing.confirm_timeout.as_secs().to_string(),
            ),
            (
                "host.amqp_retained_reread_s",
                format!("{:?}", self.amqp_retained_reread),
            ),
            (
                "host.control_key_env",
                self.control_key
                    .as_ref()
                    .map_or("none".to_string(), |k| k.fingerprint()),
            ),
            (
                "host.control_key_also_env",
                self.control_keys_also
                    .iter()
                    .map(|k| k.fingerprint())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("host.instance_pool", format!("{:?}", self.pool())),
            (
                "host.outbox_max_messages",
                self.outbox_max_messages.to_string(),
            ),
            (
                "host.idempotency_window_s",
                self.idempotency_window.as_secs().to_string(),
            ),
            ("host.drop_dir", format!("{:?}", self.drop_dir)),
            ("host.drop_settle_ms", self.settle.as_millis().to_string()),
            ("host.watch_config", self.watch_config.to_string()),
            ("host.id", self.host_id.clone()),
            (
                "host.max_component_mib",
                (self.intake.max_bytes >> 20).to_string(),
            ),
            (
                "host.compile_memory_mib",
                (self.intake.compile_memory_bytes >> 20).to_string(),
            ),
            (
                "host.compile_timeout_s",
                self.intake.compile_timeout.as_secs().to_string(),
            ),
            ("host.gate_budget_s", self.gate_budget.as_secs().to_string()),
            ("host.stop_timeout_s", format!("{:?}", self.stop_timeout)),
            ("limits.quarantine_after", self.quarantine.after.to_string()),
            (
                "limits.quarantine_window_s",
                self.quarantine.window.as_secs().to_string(),
            ),
            (
                "limits.quarantine_action",
                format!("{:?}", self.quarantine.action),
            ),
            (
                "host.max_connections",
                self.connections.max_connections.to_string(),
            ),
            (
                "host.max_connections_per_client",
                self.connections.max_per_client.to_string(),
            ),
            (
                "host.header_timeout_s",
                self.connections.header_timeout.as_secs().to_string(),
            ),
            (
                "host.body_timeout_s",
                self.connections.body_timeout.as_secs().to_string(),
            ),
            (
                "host.idempotency_max_keys",
                self.idempotency_bounds.max_keys.to_string(),
            ),
            (
                "host.idempotency_max_mib",
                (self.idempotency_bounds.max_bytes >> 20).to_string(),
            ),
            (
                "host.idempotency_max_answer_kib",
                (self.idempotency_bounds.max_answer_bytes >> 10).to_string(),
            ),
            ("[admin]", format!("{:?}", self.admin_access)),
            ("[tls]", format!("{:?}", self.tls)),
            ("[amqp_tls]", format!("{:?}", self.amqp_tls)),
        ]
    }
}

#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub plant: String,
    pub source: Source,
    pub sink: Sink,
    /// Set when `sink` is `http`.
    pub webhook: Option<Webhook>,
    pub amqp: crate::amqp::config::RouteAmqp,
    /// Topics, QoS and retries for source/sink `mqtt`.
    pub mqtt: crate::mqtt::config::RouteMqtt,
    pub max_body_bytes: usize,
    /// What one message may use across the chain.
    pub budget: MessageBudget,
    /// Messages of this route mediated at once (`max_in_flight`, default the plant's).
    pub max_in_flight: Option<usize>,
    /// Who may post to the route (HTTP), when set.
    pub auth: Option<RouteAuth>,
    pub steps: Vec<StepConfig>,
}

#[derive(Debug)]
pub struct StepConfig {
    /// The plugin as written (`mes-fixed-width` or a path).
    pub plugin: String,
    pub plugin_path: PathBuf,
    pub grants: Vec<Capability>,
    pub settings: Settings,
    pub limits: StepLimits,
    /// Where the step's `plugin` key is, for load errors.
    pub at: Location,
    /// Where its `grants` are.
    pub grants_at: Location,
    /// Where its settings are.
    pub settings_at: Location,
}

impl Config {
    /// Read and validate the configuration at `path`. Does not load plugins (see
    /// [`crate::route::Routes::build`]).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            unlocated(path, format!("cannot read the configuration: {e}; pass --config FILE or create ./millrace.toml"))
        })?;
        Self::parse(path, &text)
    }

    /// Validate `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let mut diag = Diagnostics::new(path, text);
        let file: File = match toml::from_str(text) {
            Ok(file) => file,
            Err(e) => {
                let message = e.message().trim_end().to_string();
                match e.span() {
                    Some(span) => diag.error_at(span, message),
                    None => diag.errors.push(ConfigError {
                        file: path.to_path_buf(),
                        at: None,
                        message,
                    }),
                }
                return Err(ConfigErrors(diag.errors));
            }
        };
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };

        let host = host::read(&mut diag, &dir, &file);
        let telemetry = telemetry::read(&mut diag, &file.telemetry);
        let plants = plants::read(&mut diag, &dir, &file.plants, host.max_in_flight);
        let routes = routes::read(&mut diag, &dir, &file, &host, &plants);
        if routes.is_empty() {
            diag.errors.push(ConfigError {
                file: path.to_path_buf(),
                at: None,
                message: "no routes are configured; add a [routes.NAME] table".into(),
            });
        }
        diag.finish()?;
        let host::Host {
            http,
            admin,
            data_dir,
            compile_cache,
            plugin_dir,
            mqtt_url,
            host_id,
            control_key,
            control_keys_also,
            mqtt_tls,
            amqp_tls,
            max_in_flight,
            intake,
            quarantine,
            connections,
            idempotency_bounds,
            idempotency_window,
            admin_access,
            tls,
            gate_budget,
            stop_timeout,
            ..
        } = host;
        let plants::Plants {
            plants,
            plant_limits,
            trust,
            ..
        } = plants;
        let drop_dir = match file.host.drop_dir.as_deref() {
            Some("") => None,
            Some(d) => Some(dir.join(d)),
            None => Some(data_dir.join("drop")),
        };
        Ok(Config {
            path: path.to_path_buf(),
            http,
            admin,
            max_in_flight,
            data_dir,
            compile_cache,
            plugin_dir,
            amqp: file
                .host
                .amqp
                .as_ref()
                .map(|a| a.get_ref().list())
                .unwrap_or_default(),
            amqp_declare: file.host.amqp_declare.unwrap_or(true),
            instance_pool: file.host.instance_pool.filter(|n| *n > 0),
            control_key,
            control_keys_also,
            amqp_retained_reread: match file.host.amqp_retained_reread_s.unwrap_or(300) {
                0 => None,
                s => Some(std::time::Duration::from_secs(s.clamp(5, 86_400))),
            },
            amqp_publishing: crate::amqp::publisher::Publishing {
                output_headers: file.host.amqp_output_headers.unwrap_or(true),
                event_provenance: file.host.amqp_event_provenance.unwrap_or(false),
                confirm_timeout: std::time::Duration::from_secs(u64::from(
                    file.host.amqp_confirm_timeout_s.unwrap_or(60).max(1),
                )),
            },
            amqp_queues: crate::amqp::config::Queues {
                kind: file
                    .host
                    .amqp_queues
                    .unwrap_or(crate::amqp::config::QueueKind::Quorum),
                delivery_limit: match file.host.amqp_delivery_limit {
                    Some(0) => None,
                    Some(n) => Some(n),
                    None => Some(crate::amqp::config::DEFAULT_DELIVERY_LIMIT),
                },
            },
            mqtt: mqtt_url,
            mqtt_client_id: file
                .host
                .mqtt_client_id
                .clone()
                .unwrap_or_else(|| format!("millrace-{host_id}")),
            mqtt_session_expiry_s: file.host.mqtt_session_expiry_s.unwrap_or(86_400),
            mqtt_max_in_hand: file.host.mqtt_max_in_hand.unwrap_or(10_000).max(1),
            mqtt_tls,
            drop_dir,
            settle: std::time::Duration::from_millis(file.host.drop_settle_ms.unwrap_or(1000)),
            watch_config: file.host.watch_config.unwrap_or(true),
            host_id,
            intake,
            gate_budget,
            stop_timeout,
            quarantine,
            connections,
            idempotency_bounds,
            admin_access,
            tls,
            amqp_tls,
            outbox_max_messages: file.host.outbox_max_messages.unwrap_or(100_000).max(1),
            idempotency_window,
            plants,
            plant_limits,
            trust,
            routes,
            telemetry,
        })
    }
}

/// Ranges of the limits: a value outside is an error at its place in the file, so a typo can
/// never turn a limit off (`deadline_ms = 9223372036854775807`) or refuse everything
/// (`max_body_kib = 0`).
const DEADLINE_MS: std::ops::RangeInclusive<u64> = 1..=3_600_000;
const MEMORY_MIB: std::ops::RangeInclusive<u64> = 1..=4096;
const INSTANCE_REUSE: std::ops::RangeInclusive<u64> = 1..=1_000_000;
const MAX_BODY_KIB: std::ops::RangeInclusive<u64> = 1..=262_144;
const MAX_OUTPUTS: std::ops::RangeInclusive<u64> = 1..=100_000;
const MAX_OUTPUT_KIB: std::ops::RangeInclusive<u64> = 1..=262_144;
/// `host.stop_timeout_s`: at least a second, which also bounds the broker sessions' orderly close.
const STOP_TIMEOUT_S: std::ops::RangeInclusive<u64> = 1..=86_400;

/// `value` if it lies in `range` (else an error at it, naming `key` and the range), or
/// `default` when it is not set.
fn ranged(
    diag: &mut Diagnostics,
    key: &str,
    value: Option<&Spanned<u64>>,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
) -> u64 {
    match value {
        None => default,
        Some(v) if range.contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            diag.error_at(
                v.span(),
                format!(
                    "{key} = {} is out of range; it must be {} to {}",
                    v.get_ref(),
                    range.start(),
                    range.end()
                ),
            );
            default
        }
    }
}

/// The machine's hostname (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `millrace`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "millrace".into())
}

/// Answers to keyed requests are kept a day: longer than any client's retry schedule.
const DEFAULT_IDEMPOTENCY_WINDOW_S: u64 = 24 * 60 * 60;
/// `host.idempotency_window_s`: 0 (nothing kept) to a year.
const IDEMPOTENCY_WINDOW_S: std::ops::RangeInclusive<u64> = 0..=365 * 24 * 60 * 60;

/// Four messages in flight per core: enough to keep every core busy while some wait on the host.
fn default_max_in_flight() -> usize {
    4 * std::thread::available_parallelism().map_or(2, usize::from)
}

fn list(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// Settings reach plugins as JSON; TOML dates become RFC 3339 strings.
pub fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}
