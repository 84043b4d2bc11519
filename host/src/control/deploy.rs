//! The one path a plugin version takes into a plant, whichever way it came (the admin API, a
//! CLI call, a file dropped in the watched directory): compile it off the message path, gate
//! it (the world, every step of the plant that runs the plugin, the sample vectors it carries),
//! keep it in the registry; activate it (an atomic swap of the plant's affected routes), roll
//! back; install a reloaded configuration. Activations and reloads are serialized per host.
//! The deployer owns the engine and the route table it changes, and announces every activation
//! made here to whoever subscribed ([`Deployer::announcements`]: the hosts sharing a broker).

use crate::control::registry::{Activation, NewVersion, Registry, RegistryError, Stamp, Version};
use crate::plugin::engine::PluginEngine;
use crate::plugin::{Artifact, LoadError};
use crate::route::{Routes, SwapError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Why a deployment, activation or rollback did not happen. The running version keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The bytes are not a component of the contract's world.
    #[error("{0}")]
    Invalid(#[from] LoadError),
    /// A step of the plant refused the candidate (capabilities, settings, world), or no route
    /// of the plant runs the plugin.
    #[error("{0}")]
    Refused(#[from] SwapError),
    /// The sample vectors the candidate carries do not pass.
    #[error("{0}")]
    Vectors(String),
    /// The plant's trust policy refuses the version (unsigned, or not by enough trusted keys).
    #[error("{0}")]
    Untrusted(String),
    #[error("{0}")]
    Registry(#[from] RegistryError),
}

/// Where an activation was made: here (stamped now), or on another host (with the stamp its
/// announcement carries, or the announcing host's id when it carries none).
enum Made<'a> {
    Here,
    /// Here, and only while the routes still run this version (else nothing is done).
    HereReplacing(&'a str),
    Elsewhere(Result<Stamp, &'a str>),
}

/// A plugin of a plant: what an activation changes.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    pub plant: &'a str,
    pub plugin: &'a str,
}

/// What an activation did.
#[derive(Debug, serde::Serialize)]
pub struct Activated {
    pub activation: Activation,
    pub routes: Vec<String>,
    /// From the call to the new routes being installed.
    pub took_ms: f64,
}

/// A candidate the gate refused (kept in memory, the last [`KEPT_REFUSALS`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    pub at: String,
    pub plant: String,
    /// `upload`, `drop` or `broadcast`.
    pub origin: String,
    pub by: String,
    pub digest: String,
    pub reason: String,
}

/// How many refusals [`Deployer::refusals`] remembers.
pub const KEPT_REFUSALS: usize = 100;

/// How many compiled versions a host keeps in memory beyond the code its routes run: the most
/// recently deployed or activated. Activating one of the others reads its compiled code back
/// from the compile cache on disk (a few milliseconds) instead of finding it in memory.
pub const KEPT_COMPILED: usize = 64;

/// Values by key, at most `limit` of them: inserting one more forgets the least recently used.
struct Recent<T> {
    limit: usize,
    uses: u64,
    kept: HashMap<String, (T, u64)>,
}

impl<T: Clone> Recent<T> {
    fn new(limit: usize) -> Recent<T> {
        Recent {
            limit,
            uses: 0,
            kept: HashMap::new(),
        }
    }

    fn get(&mut self, key: &str) -> Option<T> {
        self.uses += 1;
        let uses = self.uses;
        self.kept.get_mut(key).map(|(value, used)| {
            *used = uses;
            value.clone()
        })
    }

    fn insert(&mut self, key: String, value: T) {
        self.uses += 1;
        self.kept.insert(key, (value, self.uses));
        while self.kept.len() > self.limit {
            let Some(oldest) = self
                .kept
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.kept.remove(&oldest);
        }
    }

    fn remove(&mut self, key: &str) {
        self.kept.remove(key);
    }
}

/// What the gate may spend on one candidate, and where it compiles.
#[derive(Debug, Clone)]
pub struct GateLimits {
    /// Size and compilation budget ([`crate::plugin::intake`]).
    pub intake: crate::plugin::intake::IntakeLimits,
    /// Time for running the candidate: describe, every step's load, its sample vectors.
    pub budget: std::time::Duration,
    /// The host's compile cache (the compiling child fills it).
    pub cache_dir: std::path::PathBuf,
    /// Where candidates are written for the compiling child.
    pub scratch_dir: std::path::PathBuf,
}

/// Deploys, activations and rollbacks of one host.
pub struct Deployer {
    pub registry: Registry,
    /// This host's id (`host.id`): the stamps of the activations made here carry it.
    host_id: String,
    engine: Arc<PluginEngine>,
    routes: Arc<Routes>,
    /// Where activations made on this host are announced, once someone subscribed.
    announce: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Activation>>>,
    /// The gate's budget for untrusted candidates.
    gate: GateLimits,
    /// The plants that accept only signed plugins (from the configuration, kept up to date by
    /// reloads).
    trust: std::sync::RwLock<
        std::collections::BTreeMap<String, crate::plugin::signature::TrustPolicy>,
    >,
    /// Compiled components by digest, so an activation does not compile: the last
    /// [`KEPT_COMPILED`] deployed or activated (the routes hold the ones they run anyway).
    compiled: Mutex<Recent<Arc<Artifact>>>,
    /// One activation or configuration reload at a time.
    activating: Mutex<()>,
    refusals: Mutex<std::collections::VecDeque<Refusal>>,
}

impl Deployer {
    pub fn new(
        registry: Registry,
        host_id: &str,
        gate: GateLimits,
        engine: Arc<PluginEngine>,
        routes: Arc<Routes>,
    ) -> Deployer {
        Deployer {
            registry,
            host_id: host_id.to_string(),
            engine,
            routes,
            announce: Mutex::new(None),
            gate,
            trust: Default::default(),
            compiled: Mutex::new(Recent::new(KEPT_COMPILED)),
            activating: Mutex::new(()),
            refusals: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// The engine plugins are compiled with.
    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// The route table activations change.
    pub fn routes(&self) -> &Arc<Routes> {
        &self.routes
    }

    /// Every activation and rollback made on this host from now on (not those applied from an
    /// announcement of another host). One subscriber: a second call replaces the first.
    pub fn announcements(&self) -> tokio::sync::mpsc::UnboundedReceiver<Activation> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.announce.lock().expect("announce lock") = Some(tx);
        rx
    }

    /// Take the plants' trust policies from a (re)loaded configuration.
    pub fn set_trust(
        &self,
        trust: std::collections::BTreeMap<String, crate::plugin::signature::TrustPolicy>,
    ) {
        *self.trust.write().expect("trust lock") = trust;
    }

    /// The plants' trust policies now.
    pub fn trust(
        &self,
    ) -> std::collections::BTreeMap<String, crate::plugin::signature::TrustPolicy> {
        self.trust.read().expect("trust lock").clone()
    }

    /// Whether `bytes` satisfy `plant`'s trust policy (any bytes do on a plant without one).
    fn trusted(
        &self,
        plant: &str,
        bytes: &[u8],
    ) -> Result<(), crate::plugin::signature::SignatureError> {
        match self.trust.read().expect("trust lock").get(plant) {
            Some(policy) => crate::plugin::signature::check(bytes, plant, policy),
            None => Ok(()),
        }
    }

    /// The largest component the gate takes (`host.max_component_mib`).
    pub fn max_component_bytes(&self) -> usize {
        self.gate.intake.max_bytes
    }

    /// The latest refused candidates, oldest first.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.refusals
            .lock()
            .expect("refusals lock")
            .iter()
            .cloned()
            .collect()
    }

    fn artifact(
        &self,
        engine: &PluginEngine,
        digest: &str,
        bytes: Option<&[u8]>,
    ) -> Result<Arc<Artifact>, DeployError> {
        if let Some(kept) = self.compiled.lock().expect("compiled lock").get(digest) {
            return Ok(kept);
        }
        let path = self.registry.blob(digest);
        let artifact = Arc::new(match bytes {
            Some(bytes) => Artifact::from_bytes(engine, &path, bytes)?,
            None => Artifact::load(engine, &path)?,
        });
        self.compiled
            .lock()
            .expect("compiled lock")
            .insert(artifact.digest.clone(), Arc::clone(&artifact));
        Ok(artifact)
    }

    /// Put a reloaded configuration's routes in place of `current`'s, all at once: its
    /// versions registered and each plant's active versions applied first ([`Deployer::restore`]),
    /// never between two halves of an activation.
    pub fn reload(&self, reloaded: Routes) -> Result<(), DeployError> {
        let _one_at_a_time = self.activating.lock().expect("activation lock");
        self.restore_on(&reloaded)?;
        self.routes.replace(reloaded);
        Ok(())
    }

    /// Register the versions the configuration runs (origin `config`), so later activations
    /// can be rolled back to them, then put back what was last active on each plant.
    pub fn restore(&self) -> Result<(), DeployError> {
        self.restore_on(&self.routes)
    }

    fn restore_on(&self, routes: &Routes) -> Result<(), DeployError> {
        let engine = &*self.engine;
        for route in routes.all() {
            for step in &route.steps {
                let bytes = std::fs::read(&step.path).map_err(|source| RegistryError::Blob {
                    path: step.path.clone(),
                    source,
                })?;
                let id = &step.id;
                let new = NewVersion {
                    plant: &route.plant,
                    plugin: &id.name,
                    version: &id.version,
                    digest: &id.digest,
                    by: "config",
                    origin: "config",
                };
                match self.registry.add(&new, &bytes) {
                    Ok(_) => {}
                    // The file changed but kept its version number: the registered bytes stand.
                    Err(e @ RegistryError::VersionTaken { .. }) => {
                        tracing::warn!(error = %e, "configured plugin differs from the registered version of the same number");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut plants: Vec<String> = routes.all().iter().map(|r| r.plant.clone()).collect();
        plants.sort();
        plants.dedup();
        for plant in plants {
            for active in self.registry.active(&plant)? {
                let running = routes.all().iter().any(|r| {
                    r.plant == plant
                        && r.steps
                            .iter()
                            .any(|s| s.id.name == active.plugin && s.id.digest != active.digest)
                });
                if running {
                    let artifact = self.artifact(engine, &active.digest, None)?;
                    routes.install(routes.with_plugin(
                        engine,
                        &plant,
                        &active.plugin,
                        &artifact,
                    )?);
                    tracing::info!(plant = %plant, plugin = %active.plugin, version = %active.version, "restored the active version");
                }
            }
        }
        Ok(())
    }

    /// Compile and gate `bytes` as a new version for `plant`, and keep it (not active yet).
    /// A refusal is logged, counted (`millrace_plugin_refusals_total`) and remembered
    /// ([`Deployer::refusals`]).
    pub fn deploy(
        &self,
        plant: &str,
        bytes: &[u8],
        by: &str,
        origin: &str,
    ) -> Result<Version, DeployError> {
        let digest = crate::plugin::digest(bytes);
        let deployed = self.gate_and_keep(plant, bytes, &digest, by, origin);
        if let Err(e) = &deployed {
            // A refused candidate is not kept, compiled or otherwise.
            self.compiled.lock().expect("compiled lock").remove(&digest);
            self.refused(plant, origin, by, &digest, &e.to_string());
        }
        deployed
    }

    /// Record a refused candidate: logged, counted (`millrace_plugin_refusals_total`),
    /// remembered ([`Deployer::refusals`]). `digest` is `unread` for a file refused before it
    /// was read.
    pub fn refused(&self, plant: &str, origin: &str, by: &str, digest: &str, reason: &str) {
        tracing::warn!(plant, origin, by, digest = %digest, error = %reason, "plugin candidate refused");
        crate::telemetry::metrics()
            .refusals
            .with(&[plant, origin])
            .inc();
        let mut kept = self.refusals.lock().expect("refusals lock");
        if kept.len() == KEPT_REFUSALS {
            kept.pop_front();
        }
        kept.push_back(Refusal {
            at: crate::durable::now_rfc3339(),
            plant: plant.into(),
            origin: origin.into(),
            by: by.into(),
            digest: digest.into(),
            reason: reason.into(),
        });
    }

    fn gate_and_keep(
        &self,
        plant: &str,
        bytes: &[u8],
        digest: &str,
        by: &str,
        origin: &str,
    ) -> Result<Version, DeployError> {
        let (engine, routes) = (&*self.engine, &*self.routes);
        // The gate. Before anything runs: the size, the shape, the imports against what the
        // plant grants at all, and a compilation bounded in memory and time (a child process).
        let started = std::time::Instant::now();
        let until = started + self.gate.budget;
        // Named by its digest in every reason: refusals never show the host's paths.
        let name = std::path::PathBuf::from(format!(
            "candidate {}",
            &digest[..digest.len().min("sha256:".len() + 12)]
        ));
        let refused = |reason: String| {
            DeployError::Invalid(LoadError::Invalid {
                path: name.clone(),
                reason,
            })
        };
        // Step 0: on a plant that trusts only signed plugins, the signatures, before the bytes
        // are read any further.
        if bytes.len() > self.gate.intake.max_bytes {
            return Err(refused(format!(
                "the component is {} bytes; at most {} MiB are accepted (host.max_component_mib)",
                bytes.len(),
                self.gate.intake.max_bytes >> 20
            )));
        }
        self.trusted(plant, bytes)
            .map_err(|e| refused(format!("refused by plant {plant}'s trust policy: {e}")))?;
        let shape =
            crate::plugin::intake::shape(bytes, self.gate.intake.max_bytes).map_err(refused)?;
        let wanted =
            crate::plugin::intake::capabilities(&shape.imports, &routes.plant_grants(plant))
                .map_err(refused)?;
        let kept = self.compiled.lock().expect("compiled lock").get(digest);
        let artifact = match kept {
            Some(kept) => kept,
            None => Arc::new(crate::plugin::intake::compile(
                engine,
                &self.gate.cache_dir,
                &self.gate.scratch_dir,
                &name,
                bytes,
                self.gate.intake,
            )?),
        };
        self.compiled
            .lock()
            .expect("compiled lock")
            .insert(digest.to_string(), Arc::clone(&artifact));
        // Then its code, with only the capabilities it imports, under the plant's tightest
        // limits: describe (which plugin is it?), every step of the plant that runs it takes it
        // (its grants, settings, limits), and the sample vectors it carries pass under the
        // first such step's grants and limits, all within the gate's time budget.
        let info = crate::plugin::describe_within(
            engine,
            &artifact,
            &wanted,
            routes.strictest_limits(plant),
        )?;
        routes.with_plugin(engine, plant, &info.name, &artifact)?;
        let step = routes
            .running(plant, &info.name)
            .ok_or_else(|| SwapError::Unused {
                plant: plant.into(),
                plugin: info.name.clone(),
            })?;
        let sandbox = crate::conformance::Sandbox {
            grants: step.grants.clone(),
            limits: step.limits(),
            until: Some(until),
            warm_repeat: false,
        };
        if let Some(cases) = crate::conformance::run_embedded(engine, &artifact, bytes, &sandbox)
            .map_err(DeployError::Vectors)?
        {
            tracing::info!(plant, plugin = %info.name, version = %info.version, cases, "sample vectors passed");
        }
        if std::time::Instant::now() > until {
            return Err(DeployError::Vectors(format!(
                "the gate's time budget of {} s ran out (host.gate_budget_s)",
                self.gate.budget.as_secs()
            )));
        }
        let version = self.registry.add(
            &NewVersion {
                plant,
                plugin: &info.name,
                version: &info.version,
                digest,
                by,
                origin,
            },
            bytes,
        )?;
        tracing::info!(plant, plugin = %info.name, version = %info.version, digest = %digest, by, "plugin version deployed");
        Ok(version)
    }

    /// Make `version` of `plugin` the one `plant` runs: the affected routes are rebuilt on it
    /// and installed at once. `action` is `activate` or `rollback` (for the history).
    pub fn activate(
        &self,
        slot: Slot<'_>,
        version: &str,
        by: &str,
        action: &str,
    ) -> Result<Activated, DeployError> {
        let activated = self
            .activate_here(slot, version, by, action, Made::Here)?
            .expect("an activation made here is never older");
        Ok(activated)
    }

    /// Announce `activation` to the other hosts (when someone subscribed): what
    /// [`Deployer::activate`] does, and what a host does again for its own activation that
    /// the broker's retained one does not have yet (made while the broker was away).
    pub fn announce(&self, activation: &Activation) {
        if let Some(announce) = &*self.announce.lock().expect("announce lock") {
            let _ = announce.send(activation.clone());
        }
    }

    /// [`Deployer::activate`] for an activation another host announced, not announced again:
    /// applied only when `stamp` is later than the slot's (`None`, nothing done, when it is
    /// not). An announcement without a stamp (from a host of an earlier release) is applied as
    /// it comes, stamped here as made on `from`.
    pub fn apply_announced(
        &self,
        slot: Slot<'_>,
        version: &str,
        by: &str,
        action: &str,
        stamp: Result<Stamp, &str>,
    ) -> Result<Option<Activated>, DeployError> {
        self.activate_here(slot, version, by, action, Made::Elsewhere(stamp))
    }

    /// Whether an announcement stamped `stamp` is later than what `slot` last activated here.
    pub fn is_later(&self, slot: Slot<'_>, stamp: &Stamp) -> Result<bool, DeployError> {
        Ok(*stamp > self.registry.stamp(slot.plant, slot.plugin)?)
    }

    fn activate_here(
        &self,
        slot: Slot<'_>,
        version: &str,
        by: &str,
        action: &str,
        made: Made<'_>,
    ) -> Result<Option<Activated>, DeployError> {
        let (engine, routes) = (&*self.engine, &*self.routes);
        let Slot { plant, plugin } = slot;
        let started = std::time::Instant::now();
        let _one_at_a_time = self.activating.lock().expect("activation lock");
        if let Made::HereReplacing(replaced) = made
            && (routes
                .running(plant, plugin)
                .is_none_or(|s| s.id.version != replaced)
                || self.previous(plant, plugin)? != version)
        {
            // Another activation came between the caller's look and the lock.
            tracing::info!(
                plant,
                plugin,
                version,
                replaced,
                "the version to replace no longer runs, or its predecessor changed; nothing done"
            );
            return Ok(None);
        }
        let last = self.registry.stamp(plant, plugin)?;
        let here = matches!(made, Made::Here | Made::HereReplacing(_));
        let stamp = match made {
            Made::Here | Made::HereReplacing(_) => Stamp::next(&last, &self.host_id),
            Made::Elsewhere(Ok(stamp)) if stamp <= last => {
                tracing::info!(plant, plugin, version, stamp_ms = stamp.ms, from = %stamp.host, last_ms = last.ms, last_from = %last.host, "an announced activation not later than this slot's last one; skipped");
                return Ok(None);
            }
            Made::Elsewhere(Ok(stamp)) => stamp,
            Made::Elsewhere(Err(from)) => Stamp::next(&last, from),
        };
        let target = self.registry.find(plant, plugin, version)?;
        // Kept versions were checked when they came in; a trust policy may have come since.
        if self.trust.read().expect("trust lock").contains_key(plant) {
            let path = self.registry.blob(&target.digest);
            let bytes =
                std::fs::read(&path).map_err(|source| RegistryError::Blob { path, source })?;
            self.trusted(plant, &bytes).map_err(|e| {
                DeployError::Untrusted(format!(
                    "version {version} is refused by plant {plant}'s trust policy: {e}"
                ))
            })?;
        }
        let previous = routes.running(plant, plugin).map(|s| s.id.version.clone());
        let artifact = self.artifact(engine, &target.digest, None)?;
        let rebuilt = routes.with_plugin(engine, plant, plugin, &artifact)?;
        let mut names: Vec<String> = rebuilt.iter().map(|r| r.name.clone()).collect();
        names.sort();
        // Recorded before the routes change: an activation that cannot be recorded is not
        // made, and whoever sees the new version serve finds it in the history.
        let activation = self
            .registry
            .record(&target, previous.as_deref(), action, by, stamp)?;
        routes.install(rebuilt);
        let took_ms = started.elapsed().as_secs_f64() * 1000.0;
        if here {
            // Under the activation lock: announced in the order they were made.
            self.announce(&activation);
        }
        tracing::info!(plant, plugin, version, previous = ?previous, action, by, took_ms, "plugin version active");
        crate::telemetry::metrics()
            .activations
            .with(&[plant, plugin, action])
            .inc();
        Ok(Some(Activated {
            activation,
            routes: names,
            took_ms,
        }))
    }

    /// Go back to the version that was active before the current one.
    pub fn rollback(&self, plant: &str, plugin: &str, by: &str) -> Result<Activated, DeployError> {
        let previous = self.previous(plant, plugin)?;
        self.activate(Slot { plant, plugin }, &previous, by, "rollback")
    }

    /// [`Deployer::rollback`] of a quarantined version, by `quarantine`: done only while the
    /// routes still run `quarantined` (`None` when another activation came first: a message
    /// still in flight on the old version must not bring it back).
    pub fn roll_back_quarantined(
        &self,
        plant: &str,
        plugin: &str,
        quarantined: &str,
    ) -> Result<Option<Activated>, DeployError> {
        // Checked first without the lock (a version replaced by a reload has no history to go
        // back through), then again under it.
        if self
            .routes
            .running(plant, plugin)
            .is_none_or(|s| s.id.version != quarantined)
        {
            return Ok(None);
        }
        let previous = self.previous(plant, plugin)?;
        self.activate_here(
            Slot { plant, plugin },
            &previous,
            "quarantine",
            "rollback",
            Made::HereReplacing(quarantined),
        )
    }

    /// The version active before the slot's last activation.
    fn previous(&self, plant: &str, plugin: &str) -> Result<String, DeployError> {
        Ok(self
            .registry
            .history(plant, Some(plugin))?
            .pop()
            .and_then(|last| last.previous_version)
            .ok_or_else(|| RegistryError::NoPrevious {
                plant: plant.into(),
                plugin: plugin.into(),
            })?)
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn the_least_recently_used_is_forgotten_past_the_limit() {
        let mut recent = Recent::new(2);
        recent.insert("a".into(), 1);
        recent.insert("b".into(), 2);
        // Using a makes b the least recently used.
        assert_eq!(recent.get("a"), Some(1));
        recent.insert("c".into(), 3);
        assert_eq!(recent.get("b"), None);
        assert_eq!(recent.get("a"), Some(1));
        assert_eq!(recent.get("c"), Some(3));
        recent.remove("a");
        assert_eq!(recent.get("a"), None);
        recent.insert("d".into(), 4);
        recent.insert("e".into(), 5);
        assert_eq!(recent.kept.len(), 2);
        assert_eq!(recent.get("c"), None);
    }
}
