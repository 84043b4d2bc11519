//! Logging and metrics: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), colours
//! only on a terminal; counters of plugin deployments and config reloads, served in the
//! Prometheus text format by the admin API (`GET /metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::io::IsTerminal;
use std::sync::LazyLock;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber once; later calls are no-ops.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Labels of a refused plugin candidate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub plant: String,
    /// `upload`, `drop` or `broadcast`.
    pub origin: String,
}

/// Labels of an activation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivationLabels {
    pub plant: String,
    pub plugin: String,
    /// `activate` or `rollback`.
    pub action: String,
}

/// Labels of a configuration reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied` or `refused`.
    pub outcome: String,
}

/// The host's counters.
pub struct Metrics {
    registry: Registry,
    /// `millrace_plugin_refusals_total`: candidates the gate refused.
    pub refusals: Family<RefusalLabels, Counter>,
    /// `millrace_plugin_activations_total`: activations and rollbacks done.
    pub activations: Family<ActivationLabels, Counter>,
    /// `millrace_config_reloads_total`: configuration reloads applied or refused.
    pub reloads: Family<ReloadLabels, Counter>,
}

impl Metrics {
    /// The Prometheus text exposition of every counter.
    pub fn text(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// The process's counters.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
        let mut registry = Registry::default();
        let refusals = Family::default();
        registry.register(
            "millrace_plugin_refusals",
            "Plugin candidates refused by the deploy gate",
            refusals.clone(),
        );
        let activations = Family::default();
        registry.register(
            "millrace_plugin_activations",
            "Plugin versions made active (activate or rollback)",
            activations.clone(),
        );
        let reloads = Family::default();
        registry.register(
            "millrace_config_reloads",
            "Configuration reloads, applied or refused",
            reloads.clone(),
        );
        Metrics {
            registry,
            refusals,
            activations,
            reloads,
        }
    });
    &METRICS
}
