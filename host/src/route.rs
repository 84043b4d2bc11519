//! The route table: each configured route of a plant with its loaded chain of plugin steps.
//!
//! Building it compiles (or loads from the compile cache) every plugin the configuration names,
//! checks each against its step's grants, and calls its `check-settings`; every failure is
//! reported at the step's place in the configuration file.

use crate::amqp::config::RouteAmqp;
use crate::config::{Config, ConfigErrors, Diagnostics, Sink, Source, Webhook};
use crate::plugin::engine::PluginEngine;
use crate::plugin::{Artifact, LoadError, StepRuntime, StepSpec};
use crate::state::StateStore;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One route of one plant, ready to mediate.
pub struct Route {
    pub name: String,
    pub plant: String,
    pub source: Source,
    pub sink: Sink,
    /// Where sink `http` delivers.
    pub webhook: Option<Webhook>,
    /// Queue, exchange and dead-letter names for source/sink `amqp`.
    pub amqp: RouteAmqp,
    /// Topics, QoS and retries for source/sink `mqtt`.
    pub mqtt: crate::mqtt::config::RouteMqtt,
    pub max_body_bytes: usize,
    /// What one message may use across the chain.
    pub budget: crate::config::MessageBudget,
    /// Who may post to it (HTTP), when set.
    pub auth: Option<crate::config::RouteAuth>,
    /// The chain, in order. Shared between versions of the route that differ in other steps.
    pub steps: Vec<Arc<StepRuntime>>,
    lineage: String,
    /// The route's series (its steps' at their versions), resolved once, here.
    pub meters: crate::telemetry::metrics::RouteMeters,
    /// Whether this version's chain has shown itself short enough to run inline.
    pub inline: Arc<crate::pipeline::workers::Inline>,
}

/// What a route is apart from its steps.
struct RouteBase {
    name: String,
    plant: String,
    source: Source,
    sink: Sink,
    webhook: Option<Webhook>,
    amqp: RouteAmqp,
    mqtt: crate::mqtt::config::RouteMqtt,
    max_body_bytes: usize,
    budget: crate::config::MessageBudget,
    auth: Option<crate::config::RouteAuth>,
}

/// The [`RouteBase`] of a configured route or a running one (both have these fields).
macro_rules! base_of {
    ($route:expr) => {
        RouteBase {
            name: $route.name.clone(),
            plant: $route.plant.clone(),
            source: $route.source,
            sink: $route.sink,
            webhook: $route.webhook.clone(),
            amqp: $route.amqp.clone(),
            mqtt: $route.mqtt.clone(),
            max_body_bytes: $route.max_body_bytes,
            budget: $route.budget,
            auth: $route.auth.clone(),
        }
    };
}

impl Route {
    /// Why a message of `len` bytes is refused, when it is over the route's `max_body_kib` (a
    /// source with no caller to answer dead-letters it with this reason).
    pub fn over_max_body(&self, len: usize) -> Option<String> {
        (len > self.max_body_bytes).then(|| {
            format!(
                "the message is {len} bytes, over the route's max_body_kib ({} KiB)",
                self.max_body_bytes / 1024
            )
        })
    }

    /// The chain this version of the route runs: `name@version+digest` of each step, comma
    /// separated. Outputs and dead letters carry it (`millrace-lineage`).
    pub fn lineage(&self) -> &str {
        &self.lineage
    }

    /// A route with these steps (its lineage derived once, here).
    fn with_steps(base: RouteBase, steps: Vec<Arc<StepRuntime>>) -> Route {
        let lineage = steps
            .iter()
            .map(|s| format!("{}@{}+{}", s.id.name, s.id.version, s.id.digest))
            .collect::<Vec<_>>()
            .join(",");
        let versions: Vec<(&str, &str)> = steps
            .iter()
            .map(|s| (s.id.name.as_str(), s.id.version.as_str()))
            .collect();
        let emits: Vec<&str> = steps
            .iter()
            .flat_map(|s| s.info.emits.iter().map(String::as_str))
            .collect();
        let meters = crate::telemetry::metrics::RouteMeters::new(
            &base.plant,
            &base.name,
            base.source.as_str(),
            base.sink.as_str(),
            &versions,
            &emits,
        );
        let inline = Arc::new(crate::pipeline::workers::Inline::new(
            !steps.iter().any(|s| s.may_block()),
            &base.plant,
            &base.name,
        ));
        let RouteBase {
            name,
            plant,
            source,
            sink,
            webhook,
            amqp,
            mqtt,
            max_body_bytes,
            budget,
            auth,
        } = base;
        Route {
            name,
            plant,
            source,
            sink,
            webhook,
            amqp,
            mqtt,
            max_body_bytes,
            budget,
            auth,
            steps,
            lineage,
            meters,
            inline,
        }
    }

    /// This route for a dry run: steps that keep state run on a private, empty state, and no
    /// series counts the run.
    pub fn isolated(&self, engine: &PluginEngine) -> Result<Route, String> {
        let mut steps = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            if step
                .grants
                .contains(&crate::plugin::capability::Capability::State)
            {
                let own = step.isolated(engine).map_err(|e| e.to_string())?;
                steps.push(Arc::new(own));
            } else {
                steps.push(Arc::clone(step));
            }
        }
        let mut route = Route::with_steps(base_of!(self), steps);
        route.meters = crate::telemetry::metrics::RouteMeters::unregistered(&route.meters);
        Ok(route)
    }

    /// Whether `other` is the same route: the same transports, names, bounds and step versions.
    pub fn same_as(&self, other: &Route) -> bool {
        self.name == other.name
            && self.plant == other.plant
            && self.source == other.source
            && self.sink == other.sink
            && self.webhook == other.webhook
            && self.amqp == other.amqp
            && self.mqtt == other.mqtt
            && self.max_body_bytes == other.max_body_bytes
            && self.budget == other.budget
            && self.auth == other.auth
            && self.lineage == other.lineage
    }

    /// Whether the route takes from or publishes to the broker.
    pub fn uses_broker(&self) -> bool {
        self.source == Source::Amqp || self.sink == Sink::Amqp
    }

    /// Whether the first step accepts `content_type` (parameters ignored; `*/*` accepts all).
    pub fn accepts(&self, content_type: &str) -> bool {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let Some(first) = self.steps.first() else {
            return false;
        };
        first.info.accepts.iter().any(|a| {
            a == "*/*"
                || a.eq_ignore_ascii_case(&media)
                || a.strip_suffix("/*")
                    .is_some_and(|prefix| media.split('/').next() == Some(prefix))
        })
    }

    /// Media types the first step accepts.
    pub fn accepted(&self) -> &[String] {
        self.steps
            .first()
            .map_or(&[], |s| s.info.accepts.as_slice())
    }
}

/// All routes by name.
/// What a reload changes in the route table, by route name.
#[derive(Default)]
pub struct RouteDiff {
    pub added: Vec<Arc<Route>>,
    pub removed: Vec<Arc<Route>>,
    /// Same name, something else differs: (before, after).
    pub changed: Vec<(Arc<Route>, Arc<Route>)>,
}

impl RouteDiff {
    /// The difference from `before` to `after`.
    pub fn between(before: &[Arc<Route>], after: &[Arc<Route>]) -> RouteDiff {
        let find = |routes: &[Arc<Route>], name: &str| {
            routes.iter().find(|r| r.name == name).map(Arc::clone)
        };
        let mut diff = RouteDiff::default();
        for route in after {
            match find(before, &route.name) {
                None => diff.added.push(Arc::clone(route)),
                Some(old) if !old.same_as(route) => diff.changed.push((old, Arc::clone(route))),
                Some(_) => {}
            }
        }
        for route in before {
            if find(after, &route.name).is_none() {
                diff.removed.push(Arc::clone(route));
            }
        }
        for list in [&mut diff.added, &mut diff.removed] {
            list.sort_by(|a, b| a.name.cmp(&b.name));
        }
        diff.changed.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        diff
    }

    /// Every route the diff touches, before or after the change.
    pub fn touched(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.added
            .iter()
            .chain(&self.removed)
            .chain(self.changed.iter().flat_map(|(a, b)| [a, b]))
    }
}

pub struct Routes {
    by_name: std::sync::RwLock<HashMap<String, Arc<Route>>>,
}

impl Routes {
    /// Load every route of `config` with `engine`; steps granted `state` use `state`.
    pub fn build(
        config: &Config,
        engine: &PluginEngine,
        state: &Arc<StateStore>,
        quarantines: &Arc<crate::quarantine::Quarantines>,
    ) -> Result<Routes, ConfigErrors> {
        let text = std::fs::read_to_string(&config.path).unwrap_or_default();
        let mut diag = Diagnostics::new(&config.path, &text);
        let mut artifacts: HashMap<PathBuf, Result<Arc<Artifact>, String>> = HashMap::new();
        let mut by_name = HashMap::new();
        for route in &config.routes {
            let tables = config.plants.get(&route.plant).cloned().unwrap_or_default();
            let mut steps = Vec::new();
            for step in &route.steps {
                let artifact = artifacts
                    .entry(step.plugin_path.clone())
                    .or_insert_with(|| load_artifact(engine, step, config.intake.max_bytes));
                let artifact = match artifact {
                    Ok(a) => Arc::clone(a),
                    Err(e) => {
                        diag.error_at_location(step.at, e.clone());
                        continue;
                    }
                };
                if let Some(policy) = config.trust.get(&route.plant) {
                    let signed = std::fs::read(&step.plugin_path)
                        .map_err(|e| e.to_string())
                        .and_then(|bytes| {
                            crate::plugin::signature::check(&bytes, &route.plant, policy)
                                .map_err(|e| e.to_string())
                        });
                    if let Err(e) = signed {
                        diag.error_at_location(
                            step.at,
                            format!(
                                "route {}: plugin {} is refused by plant {}'s trust policy: {e}",
                                route.name,
                                step.plugin_path.display(),
                                route.plant
                            ),
                        );
                        continue;
                    }
                }
                let spec = StepSpec {
                    plant: &route.plant,
                    route: &route.name,
                    grants: step.grants.clone(),
                    settings: step.settings.clone(),
                    tables: Arc::clone(&tables),
                    state: Arc::clone(state),
                    limits: step.limits,
                    quarantines: Arc::clone(quarantines),
                };
                let loaded = StepRuntime::load(engine, &artifact, spec);
                match loaded {
                    Ok(runtime) => steps.push(Arc::new(runtime)),
                    Err(e @ LoadError::Grants(_)) => {
                        diag.error_at_location(step.grants_at, format!("route {}: {e}", route.name))
                    }
                    Err(e @ LoadError::Settings { .. }) => diag.error_at_location(
                        step.settings_at,
                        format!("route {}: {e}; fix the step's settings", route.name),
                    ),
                    Err(e) => diag.error_at_location(step.at, format!("route {}: {e}", route.name)),
                }
            }
            by_name.insert(
                route.name.clone(),
                Arc::new(Route::with_steps(base_of!(route), steps)),
            );
        }
        diag.finish()?;
        Ok(Routes {
            by_name: std::sync::RwLock::new(by_name),
        })
    }

    /// Of the routes `takes` says yes to, the first by name (a fixed choice, the same on every
    /// host, when several would); read in place, nothing copied but the one found.
    pub fn first(&self, takes: impl Fn(&Route) -> bool) -> Option<Arc<Route>> {
        self.by_name
            .read()
            .expect("route table lock")
            .values()
            .filter(|r| takes(r))
            .min_by(|a, b| a.name.cmp(&b.name))
            .cloned()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        self.by_name
            .read()
            .expect("route table lock")
            .get(name)
            .cloned()
    }

    /// Every route as it is now.
    pub fn all(&self) -> Vec<Arc<Route>> {
        self.by_name
            .read()
            .expect("route table lock")
            .values()
            .cloned()
            .collect()
    }

    /// A step running `plugin` on `plant` now (activations keep every route of a plant on one
    /// version of a plugin), if any route of the plant runs it.
    pub fn running(&self, plant: &str, plugin: &str) -> Option<Arc<StepRuntime>> {
        self.all()
            .iter()
            .filter(|r| r.plant == plant)
            .flat_map(|r| r.steps.iter())
            .find(|s| s.id.name == plugin)
            .cloned()
    }

    /// Every capability some step of `plant` is granted: what a candidate for the plant may
    /// import at most.
    pub fn plant_grants(&self, plant: &str) -> Vec<crate::plugin::capability::Capability> {
        let mut grants: Vec<_> = self
            .all()
            .iter()
            .filter(|r| r.plant == plant)
            .flat_map(|r| r.steps.iter().flat_map(|s| s.grants.clone()))
            .collect();
        grants.sort();
        grants.dedup();
        grants
    }

    /// The tightest limits among `plant`'s steps (shortest deadline, smallest memory cap, fewest
    /// outputs): what a candidate runs under before the gate knows which steps it is for.
    pub fn strictest_limits(&self, plant: &str) -> crate::plugin::StepLimits {
        let mut limits: Option<crate::plugin::StepLimits> = None;
        for step in self
            .all()
            .iter()
            .filter(|r| r.plant == plant)
            .flat_map(|r| r.steps.clone())
        {
            let l = step.limits();
            limits = Some(match limits {
                None => l,
                Some(m) => crate::plugin::StepLimits {
                    deadline: m.deadline.min(l.deadline),
                    memory_bytes: m.memory_bytes.min(l.memory_bytes),
                    instance_reuse: 1,
                    max_outputs: m.max_outputs.min(l.max_outputs),
                    max_output_bytes: m.max_output_bytes.min(l.max_output_bytes),
                },
            });
        }
        limits.unwrap_or_default()
    }

    /// The routes of `plant` as they would be with `artifact` in place of plugin `plugin`, in
    /// every step that runs it. Each affected step is reloaded with its own grants, settings,
    /// tables and limits — the gate: the world, the capabilities the plant grants the step, the
    /// settings — and nothing is installed ([`Routes::install`] does that).
    pub fn with_plugin(
        &self,
        engine: &PluginEngine,
        plant: &str,
        plugin: &str,
        artifact: &Artifact,
    ) -> Result<Vec<Arc<Route>>, SwapError> {
        let current = self.all();
        let mut replaced = Vec::new();
        for route in current.iter().filter(|r| r.plant == plant) {
            if !route.steps.iter().any(|s| s.id.name == plugin) {
                continue;
            }
            let mut steps = Vec::with_capacity(route.steps.len());
            for (index, step) in route.steps.iter().enumerate() {
                if step.id.name != plugin {
                    steps.push(Arc::clone(step));
                    continue;
                }
                let candidate = step
                    .reload(engine, artifact)
                    .map_err(|e| SwapError::Refused {
                        route: route.name.clone(),
                        step: index + 1,
                        reason: e.to_string(),
                    })?;
                if candidate.id.name != plugin {
                    return Err(SwapError::Refused {
                        route: route.name.clone(),
                        step: index + 1,
                        reason: format!(
                            "the component is plugin {:?}, not {plugin:?}",
                            candidate.id.name
                        ),
                    });
                }
                steps.push(Arc::new(candidate));
            }
            replaced.push(Arc::new(Route::with_steps(base_of!(route), steps)));
        }
        if replaced.is_empty() {
            return Err(SwapError::Unused {
                plant: plant.into(),
                plugin: plugin.into(),
            });
        }
        Ok(replaced)
    }

    /// Take every route of `other` in place of this table's (routes it lacks are gone), at once.
    pub fn replace(&self, other: Routes) {
        let new = other.by_name.into_inner().expect("route table lock");
        *self.by_name.write().expect("route table lock") = new;
    }

    /// Replace the routes of the same names with `routes`, all at once. A message holds the
    /// route it started with until it is done, so it runs one version of each step throughout.
    pub fn install(&self, routes: Vec<Arc<Route>>) {
        let mut table = self.by_name.write().expect("route table lock");
        for route in routes {
            table.insert(route.name.clone(), route);
        }
    }
}

/// Why a plugin version was not put in place.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// A step refused the candidate; nothing changed.
    #[error("route {route}, step {step}: {reason}")]
    Refused {
        route: String,
        step: usize,
        reason: String,
    },
    /// No route of the plant runs the plugin.
    #[error("no route of plant {plant} runs plugin {plugin}")]
    Unused { plant: String, plugin: String },
}

fn load_artifact(
    engine: &PluginEngine,
    step: &crate::config::StepConfig,
    max_bytes: usize,
) -> Result<Arc<Artifact>, String> {
    let Ok(meta) = std::fs::metadata(&step.plugin_path) else {
        return Err(format!(
            "plugin {:?}: file {} not found; build the project's plugins with scripts/build-plugins, or give a path to a .wasm component",
            step.plugin,
            step.plugin_path.display()
        ));
    };
    if meta.len() > max_bytes as u64 {
        return Err(format!(
            "plugin {:?}: {} is {} bytes; at most {} MiB are accepted (host.max_component_mib)",
            step.plugin,
            step.plugin_path.display(),
            meta.len(),
            max_bytes >> 20
        ));
    }
    Artifact::load(engine, &step.plugin_path)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}
