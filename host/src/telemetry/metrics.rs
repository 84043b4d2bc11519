//! The host's metrics, served in the Prometheus text format (0.0.4) by the admin API's
//! `GET /metrics`.
//!
//! Component series follow Redpanda Connect's names, so dashboards built for it read these:
//! `input_received`, `input_latency_ns`, `processor_received`, `processor_sent`,
//! `processor_error`, `processor_latency_ns`, `output_sent`, `output_error`,
//! `output_latency_ns`, `connection_up`, `connection_failed`, `connection_lost`. Series of the
//! mediation itself are named `millrace_*`; those read from the stores when scraped are written
//! by the admin API ([`write_sampled`]).
//!
//! Cost on the way of a message: a route resolves its series once, when it is built (an
//! activation or reload builds a new one), into [`RouteMeters`]; a message then only adds to
//! atomics. Series are never removed while the process runs (a version's series stay after it
//! is replaced, as Prometheus expects of counters); their number is bounded by the plants,
//! routes, steps and versions configured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

/// A counter's handle (shared by every clone).
#[derive(Clone, Default, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Upper bounds of the latency buckets, in nanoseconds: 10 µs to 30 s.
pub const LATENCY_BUCKETS_NS: [u64; 18] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// A latency histogram's handle, in nanoseconds (cumulative buckets when written out).
#[derive(Clone, Default, Debug)]
pub struct Histogram(Arc<HistogramCells>);

#[derive(Default, Debug)]
pub struct HistogramCells {
    /// Observations per bucket (not cumulative), the last one past every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_NS.len() + 1],
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe_ns(&self, ns: u64) {
        let at = LATENCY_BUCKETS_NS.partition_point(|&bound| bound < ns);
        self.0.buckets[at].fetch_add(1, Relaxed);
        self.0.sum.fetch_add(ns, Relaxed);
        self.0.count.fetch_add(1, Relaxed);
    }

    /// Observe the time since `since`.
    pub fn since(&self, since: Instant) {
        self.observe_ns(u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn count(&self) -> u64 {
        self.0.count.load(Relaxed)
    }

    /// Observations per bucket now (not cumulative; the last past every bound).
    pub fn buckets(&self) -> [u64; LATENCY_BUCKETS_NS.len() + 1] {
        std::array::from_fn(|i| self.0.buckets[i].load(Relaxed))
    }
}

/// A kind of series with its label names; each set of label values is one series.
pub struct Family<M> {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<Vec<String>, M>>,
}

impl<M: Clone + Default> Family<M> {
    const fn new(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Family {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// The series with these label values (in the family's label order), made on first use.
    pub fn with(&self, values: &[&str]) -> M {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        self.series
            .lock()
            .expect("metrics lock")
            .entry(key)
            .or_default()
            .clone()
    }

    fn label_text(&self, values: &[String], extra: Option<(&str, &str)>) -> String {
        label_set(
            self.labels
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str))
                .chain(extra),
        )
    }
}

/// `{name="value",…}` (escaped), or nothing when there are no labels.
fn label_set<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.enumerate() {
        out.push(if i == 0 { '{' } else { ',' });
        let _ = write!(out, "{name}=\"{}\"", escape(value));
    }
    if !out.is_empty() {
        out.push('}');
    }
    out
}

impl Family<Counter> {
    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        for (values, counter) in self.series.lock().expect("metrics lock").iter() {
            let labels = self.label_text(values, None);
            let _ = writeln!(out, "{}{labels} {}", self.name, counter.get());
        }
    }
}

impl Family<Histogram> {
    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        for (values, histogram) in self.series.lock().expect("metrics lock").iter() {
            let cells = &histogram.0;
            let mut cumulative = 0;
            for (i, bucket) in cells.buckets.iter().enumerate() {
                cumulative += bucket.load(Relaxed);
                let bound = LATENCY_BUCKETS_NS
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), u64::to_string);
                let labels = self.label_text(values, Some(("le", &bound)));
                let _ = writeln!(out, "{}_bucket{labels} {cumulative}", self.name);
            }
            let labels = self.label_text(values, None);
            let _ = writeln!(out, "{}_sum{labels} {}", self.name, cells.sum.load(Relaxed));
            let _ = writeln!(
                out,
                "{}_count{labels} {}",
                self.name,
                cells.count.load(Relaxed)
            );
        }
    }
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Write a family read at scrape time (depths, ages, the compile cache's own counts) of `kind`
/// (`gauge`, `counter`): `samples` are label values (in `labels` order) and a value.
pub fn write_sampled(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    labels: &[&str],
    samples: &[(Vec<String>, f64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (values, value) in samples {
        let labels = label_set(
            labels
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str)),
        );
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

const INPUT: &[&str] = &["plant", "route", "source"];
const STEP: &[&str] = &["plant", "route", "step", "plugin", "version"];
const OUTPUT: &[&str] = &["plant", "route", "sink"];
const LINK: &[&str] = &["transport"];

/// The process's series.
pub struct Metrics {
    /// Messages a source took for a route.
    pub input_received: Family<Counter>,
    /// From a message's arrival to its outcome being safe (acknowledged, answered, or
    /// dead-lettered).
    pub input_latency_ns: Family<Histogram>,
    /// Messages a step was called with.
    pub processor_received: Family<Counter>,
    /// Messages a step gave back.
    pub processor_sent: Family<Counter>,
    /// Calls of a step that failed (rejected, retry-later, trap, deadline, memory cap, limit).
    pub processor_error: Family<Counter>,
    pub processor_latency_ns: Family<Histogram>,
    /// Messages a route's sink delivered (confirmed by the broker or the webhook).
    pub output_sent: Family<Counter>,
    /// Messages a route's sink could not deliver (each attempt).
    pub output_error: Family<Counter>,
    pub output_latency_ns: Family<Histogram>,
    pub connection_up: Family<Counter>,
    pub connection_failed: Family<Counter>,
    pub connection_lost: Family<Counter>,
    /// `millrace_dead_letters_total{plant,route,kind,domain}`.
    pub dead_letters: Family<Counter>,
    /// `millrace_retries_total{plant,route,attempt}`: transient failures sent round again,
    /// by the attempt that failed.
    pub retries: Family<Counter>,
    /// `millrace_traps_total{plant,plugin,version,kind}`: calls stopped by the sandbox.
    pub traps: Family<Counter>,
    /// `millrace_instances_created_total{plant,plugin,version}`.
    pub instances_created: Family<Counter>,
    /// `millrace_instances_discarded_total{plant,plugin,version,reason}`.
    pub instances_discarded: Family<Counter>,
    /// `millrace_plugin_refusals_total{plant,origin}`: candidates the gate refused.
    pub refusals: Family<Counter>,
    /// `millrace_plugin_activations_total{plant,plugin,action}`: activations and rollbacks.
    pub activations: Family<Counter>,
    /// `millrace_config_reloads_total{outcome}`.
    pub reloads: Family<Counter>,
    /// `millrace_chains_inline_total{plant,route}`: chains run on the async worker that took
    /// their message instead of a mediation thread.
    pub chains_inline: Family<Counter>,
    /// `millrace_quality_holds_total{plant,route,plugin}`: messages a policy step held back
    /// (rejected with a `hold` reason: quality hold, blocked shipment).
    pub holds: Family<Counter>,
    /// `millrace_lineage_dropped_total`: lineage notes not kept (the writer's queue was full, or
    /// the store refused them).
    pub lineage_dropped: Counter,
    /// `millrace_lineage_pruned_total`: lineage rows pruned by the retention.
    pub lineage_pruned: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            input_received: Family::new("input_received", "Messages taken by a source", INPUT),
            input_latency_ns: Family::new(
                "input_latency_ns",
                "Nanoseconds from a message's arrival until its outcome is safe",
                INPUT,
            ),
            processor_received: Family::new(
                "processor_received",
                "Messages a plugin step was called with",
                STEP,
            ),
            processor_sent: Family::new("processor_sent", "Messages a plugin step gave back", STEP),
            processor_error: Family::new("processor_error", "Plugin step calls that failed", STEP),
            processor_latency_ns: Family::new(
                "processor_latency_ns",
                "Nanoseconds of a plugin step's call",
                STEP,
            ),
            output_sent: Family::new("output_sent", "Messages a sink delivered", OUTPUT),
            output_error: Family::new(
                "output_error",
                "Deliveries a sink could not make (each attempt)",
                OUTPUT,
            ),
            output_latency_ns: Family::new(
                "output_latency_ns",
                "Nanoseconds of a delivery (until confirmed)",
                OUTPUT,
            ),
            connection_up: Family::new("connection_up", "Broker connections made", LINK),
            connection_failed: Family::new(
                "connection_failed",
                "Broker connection attempts that failed",
                LINK,
            ),
            connection_lost: Family::new(
                "connection_lost",
                "Broker connections lost after they were up",
                LINK,
            ),
            dead_letters: Family::new(
                "millrace_dead_letters_total",
                "Messages dead-lettered, by kind and business domain",
                &["plant", "route", "kind", "domain"],
            ),
            retries: Family::new(
                "millrace_retries_total",
                "Messages sent round again after a transient failure, by the attempt that failed",
                &["plant", "route", "attempt"],
            ),
            traps: Family::new(
                "millrace_traps_total",
                "Plugin calls the sandbox stopped, by kind",
                &["plant", "plugin", "version", "kind"],
            ),
            instances_created: Family::new(
                "millrace_instances_created_total",
                "Plugin instances created",
                &["plant", "plugin", "version"],
            ),
            instances_discarded: Family::new(
                "millrace_instances_discarded_total",
                "Plugin instances discarded, by reason",
                &["plant", "plugin", "version", "reason"],
            ),
            refusals: Family::new(
                "millrace_plugin_refusals_total",
                "Plugin candidates refused by the deploy gate",
                &["plant", "origin"],
            ),
            activations: Family::new(
                "millrace_plugin_activations_total",
                "Plugin versions made active (activate or rollback)",
                &["plant", "plugin", "action"],
            ),
            reloads: Family::new(
                "millrace_config_reloads_total",
                "Configuration reloads, applied or refused",
                &["outcome"],
            ),
            chains_inline: Family::new(
                "millrace_chains_inline_total",
                "Chains run on the async worker that took their message (short chains)",
                &["plant", "route"],
            ),
            holds: Family::new(
                "millrace_quality_holds_total",
                "Messages a policy step held back (a quality hold)",
                &["plant", "route", "plugin"],
            ),
            lineage_dropped: Counter::default(),
            lineage_pruned: Counter::default(),
        }
    }

    /// The text exposition of every series.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for family in [
            &self.input_received,
            &self.processor_received,
            &self.processor_sent,
            &self.processor_error,
            &self.output_sent,
            &self.output_error,
            &self.connection_up,
            &self.connection_failed,
            &self.connection_lost,
            &self.dead_letters,
            &self.retries,
            &self.traps,
            &self.instances_created,
            &self.instances_discarded,
            &self.refusals,
            &self.activations,
            &self.reloads,
            &self.holds,
            &self.chains_inline,
        ] {
            family.write(&mut out);
        }
        for (name, help, counter) in [
            (
                "millrace_lineage_dropped_total",
                "Lineage notes not kept (writer queue full or store error)",
                &self.lineage_dropped,
            ),
            (
                "millrace_lineage_pruned_total",
                "Lineage rows pruned by the retention",
                &self.lineage_pruned,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.get()
            );
        }
        for family in [
            &self.input_latency_ns,
            &self.processor_latency_ns,
            &self.output_latency_ns,
        ] {
            family.write(&mut out);
        }
        out
    }
}

/// The process's series.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// One step's series on one route.
#[derive(Debug, Clone, Default)]
pub struct StepMeters {
    pub received: Counter,
    pub sent: Counter,
    pub error: Counter,
    pub latency: Histogram,
}

/// A route's series, resolved when the route is built.
#[derive(Debug, Clone)]
pub struct RouteMeters {
    pub received: Counter,
    pub latency: Histogram,
    pub sent: Counter,
    pub error: Counter,
    pub output_latency: Histogram,
    /// Chains of this route version run inline (`millrace_chains_inline_total`).
    pub inline: Counter,
    pub steps: Vec<StepMeters>,
    /// The route's business domain(s): the families of the event types its steps emit.
    pub domain: String,
}

impl RouteMeters {
    /// Counters shaped like `like` that no series reports (a dry run's).
    pub fn unregistered(like: &RouteMeters) -> RouteMeters {
        RouteMeters {
            received: Counter::default(),
            latency: Histogram::default(),
            sent: Counter::default(),
            error: Counter::default(),
            output_latency: Histogram::default(),
            inline: Counter::default(),
            steps: vec![StepMeters::default(); like.steps.len()],
            domain: like.domain.clone(),
        }
    }

    /// The series of route `route` of `plant`, taking from `source`, delivering to `sink`,
    /// with steps `(plugin, version)` emitting `emits`.
    pub fn new(
        plant: &str,
        route: &str,
        source: &str,
        sink: &str,
        steps: &[(&str, &str)],
        emits: &[&str],
    ) -> RouteMeters {
        let m = metrics();
        let steps = steps
            .iter()
            .enumerate()
            .map(|(i, (plugin, version))| {
                let step = (i + 1).to_string();
                let labels = [plant, route, step.as_str(), plugin, version];
                StepMeters {
                    received: m.processor_received.with(&labels),
                    sent: m.processor_sent.with(&labels),
                    error: m.processor_error.with(&labels),
                    latency: m.processor_latency_ns.with(&labels),
                }
            })
            .collect();
        RouteMeters {
            received: m.input_received.with(&[plant, route, source]),
            latency: m.input_latency_ns.with(&[plant, route, source]),
            sent: m.output_sent.with(&[plant, route, sink]),
            error: m.output_error.with(&[plant, route, sink]),
            output_latency: m.output_latency_ns.with(&[plant, route, sink]),
            inline: m.chains_inline.with(&[plant, route]),
            steps,
            domain: domain_of(emits),
        }
    }
}

/// One step version's instance series on its plant.
#[derive(Debug, Clone)]
pub struct InstanceMeters {
    pub created: Counter,
    /// Discarded after a trap or a breached limit.
    pub failed: Counter,
    /// Discarded after serving its `instance_reuse` share of messages.
    pub served: Counter,
    /// Discarded because the idle pool was full.
    pub pool_full: Counter,
    labels: [String; 3],
}

impl InstanceMeters {
    pub fn new(plant: &str, plugin: &str, version: &str) -> InstanceMeters {
        let m = metrics();
        let discarded = |reason| {
            m.instances_discarded
                .with(&[plant, plugin, version, reason])
        };
        InstanceMeters {
            created: m.instances_created.with(&[plant, plugin, version]),
            failed: discarded("failed"),
            served: discarded("served"),
            pool_full: discarded("pool-full"),
            labels: [plant.into(), plugin.into(), version.into()],
        }
    }

    /// Count a call the sandbox stopped, by `kind` (`trap`, `deadline`, `memory-cap`, `limit`).
    pub fn trapped(&self, kind: &str) {
        let [plant, plugin, version] = &self.labels;
        metrics().traps.with(&[plant, plugin, version, kind]).inc();
    }
}

/// The business domain of event types: for each, the segment before the event's name once a
/// trailing version (`v1`) is dropped — `millrace.production.completed.v1` → `production` —
/// sorted, unique, joined with `+`; `unclassified` when no step says what it emits.
pub fn domain_of(emits: &[&str]) -> String {
    let mut families: Vec<&str> = emits
        .iter()
        .filter_map(|t| {
            let mut parts: Vec<&str> = t.split('.').collect();
            if parts.last().is_some_and(|p| {
                p.len() > 1 && p.starts_with('v') && p[1..].bytes().all(|b| b.is_ascii_digit())
            }) {
                parts.pop();
            }
            (parts.len() >= 2).then(|| parts[parts.len() - 2])
        })
        .collect();
    families.sort_unstable();
    families.dedup();
    if families.is_empty() {
        "unclassified".into()
    } else {
        families.join("+")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_the_families_of_event_types() {
        assert_eq!(
            domain_of(&["millrace.production.completed.v1"]),
            "production"
        );
        assert_eq!(
            domain_of(&[
                "millrace.machine.downtime.v1",
                "millrace.planning.capacity-impact.v1",
                "millrace.machine.downtime.v2"
            ]),
            "machine+planning"
        );
        assert_eq!(domain_of(&["com.acme.quality.hold"]), "quality");
        assert_eq!(domain_of(&[]), "unclassified");
        assert_eq!(domain_of(&["single"]), "unclassified");
    }

    #[test]
    fn histograms_count_into_cumulative_buckets() {
        let family: Family<Histogram> = Family::new("t_latency_ns", "test", &["a"]);
        let h = family.with(&["x\"y"]);
        h.observe_ns(5_000);
        h.observe_ns(30_000);
        h.observe_ns(60_000_000_000);
        let mut out = String::new();
        family.write(&mut out);
        assert!(
            out.contains("t_latency_ns_bucket{a=\"x\\\"y\",le=\"10000\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("t_latency_ns_bucket{a=\"x\\\"y\",le=\"50000\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("t_latency_ns_bucket{a=\"x\\\"y\",le=\"30000000000\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("t_latency_ns_bucket{a=\"x\\\"y\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("t_latency_ns_count{a=\"x\\\"y\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("t_latency_ns_sum{a=\"x\\\"y\"} 60000035000\n"),
            "{out}"
        );
    }
}
