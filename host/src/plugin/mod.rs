//! Plugins: loading a component (digest, imports), checking it against a step's grants, and
//! running it with limits. Engine config in `engine`, store data and limits in `store`, one
//! file per capability in `capability/`, the generated bindings in `bindings`.
//!
//! Instance strategy: each step keeps a small pool of warm instances of its plugin version.
//! An instance serves messages of that one step (one plant, one route, one plugin digest) only,
//! for at most `instance_reuse` messages, and is discarded after any trap, deadline or memory-cap
//! breach; `instance_reuse = 1` gives every message a fresh instance. What may persist between
//! two messages of one instance: the plugin's own memory (globals, heap, e.g. its parsed
//! settings). Nothing else is shared: no instance is ever handed a message of another plant,
//! route or plugin version.

pub mod bindings;
pub mod bounds;
pub mod capability;
pub mod engine;
pub mod id;
pub mod intake;

pub use id::PluginId;
pub mod signature;
pub mod store;

use crate::lookup::Tables;
use bindings::types;
use bounds::Breach;
use capability::Capability;
use engine::PluginEngine;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{InstanceLimiter, Invocation, Refused, Settings, StepContext};
use wasmtime::component::Component;
use wasmtime::{Store, Trap};

/// Why a plugin could not be loaded for a step.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid component for this host.
    #[error("{path} is not a loadable Wasm component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// The component imports something its step does not grant or the host does not offer.
    #[error("{}", .0.join("; "))]
    Grants(Vec<String>),
    /// The component does not implement the `millrace:mediation/plugin` world.
    #[error("{path} does not implement world millrace:mediation/plugin@0.1.0: {reason}")]
    World { path: PathBuf, reason: String },
    /// Instantiation or `describe`/`check-settings` trapped.
    #[error("plugin {plugin} failed while loading: {reason}")]
    Trapped { plugin: String, reason: String },
    /// `describe` answered something the host cannot use (a name or version that is not a
    /// plain identifier, too many media types).
    #[error("plugin {plugin} describes itself unusably: {reason}")]
    Info { plugin: String, reason: String },
    /// `check-settings` refused the step's settings.
    #[error("plugin {plugin} refused its settings: {reason}")]
    Settings { plugin: String, reason: String },
}

/// A plugin file, compiled (or loaded from the compile cache).
pub struct Artifact {
    pub path: PathBuf,
    pub size: u64,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    pub component: Component,
    /// Import names, e.g. `millrace:mediation/log@0.1.0`.
    pub imports: Vec<String>,
    /// Export names.
    pub exports: Vec<String>,
}

impl Artifact {
    pub fn load(engine: &PluginEngine, path: &Path) -> Result<Artifact, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(engine, path, &bytes)
    }

    pub fn from_bytes(
        engine: &PluginEngine,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Artifact, LoadError> {
        let digest = digest(bytes);
        let component = Component::new(engine.engine(), bytes).map_err(|e| LoadError::Invalid {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        })?;
        let ty = component.component_type();
        let imports = ty
            .imports(engine.engine())
            .map(|(name, _)| name.to_string())
            .collect();
        let exports = ty
            .exports(engine.engine())
            .map(|(name, _)| name.to_string())
            .collect();
        Ok(Artifact {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            digest,
            component,
            imports,
            exports,
        })
    }
}

/// `sha256:<hex>` of a component's bytes: how a plugin version is named in lineage and the
/// registry.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Check `artifact` against `grants` and the world, and pre-instantiate it.
fn link(
    engine: &PluginEngine,
    artifact: &Artifact,
    grants: &[Capability],
) -> Result<bindings::PluginPre<Invocation>, LoadError> {
    capability::check_grants(&artifact.imports, grants).map_err(LoadError::Grants)?;
    let world_error = |e: wasmtime::Error| LoadError::World {
        path: artifact.path.clone(),
        reason: format!("{e:#}"),
    };
    let linker = capability::linker(engine.engine(), grants).map_err(world_error)?;
    let pre = linker
        .instantiate_pre(&artifact.component)
        .map_err(world_error)?;
    bindings::PluginPre::new(pre).map_err(world_error)
}

/// Call `describe` on a fresh instance with every capability granted and no settings
/// (`millrace plugin inspect`, a file the operator chose). Fails if the component does not
/// implement the world.
pub fn describe(
    engine: &PluginEngine,
    artifact: &Artifact,
) -> Result<types::PluginInfo, LoadError> {
    describe_within(
        engine,
        artifact,
        &Capability::ALL,
        StepLimits {
            deadline: Duration::from_secs(5),
            ..StepLimits::default()
        },
    )
}

/// Call `describe` on a fresh instance linked with `grants` only, under `limits`, with no
/// settings, no tables and a throwaway state (the gate, before it knows which steps the plugin
/// is for). Its answer is checked ([`check_info`]).
pub fn describe_within(
    engine: &PluginEngine,
    artifact: &Artifact,
    grants: &[Capability],
    limits: StepLimits,
) -> Result<types::PluginInfo, LoadError> {
    capability::check_grants(&artifact.imports, grants).map_err(LoadError::Grants)?;
    let pre = link(engine, artifact, grants)?;
    let context = Arc::new(StepContext {
        plant: String::new(),
        route: String::new(),
        plugin: artifact.path.display().to_string(),
        settings: Settings::default(),
        tables: Tables::default(),
        state: Arc::new(crate::state::StateStore::in_memory()),
        log_budget: Arc::new(bounds::LogBudget::new(bounds::LOG_BYTES_PER_SECOND)),
    });
    let trapped = |e: wasmtime::Error| LoadError::Trapped {
        plugin: artifact.path.display().to_string(),
        reason: bounds::truncate(&format!("{e:#}"), bounds::MAX_REASON_BYTES),
    };
    let wasi = capability::needs_wasi(&artifact.imports, grants);
    let mut warm = instantiate(&pre, &context, limits, wasi, "describe").map_err(trapped)?;
    let info = {
        let _running = engine::guest_running();
        let info = warm.plugin.call_describe(&mut warm.store);
        within_deadline(&warm.store, info)
    };
    warm.store.data_mut().flush_guest_output();
    let info = info.map_err(trapped)?;
    check_info(&info).map_err(|reason| LoadError::Info {
        plugin: artifact.path.display().to_string(),
        reason,
    })?;
    Ok(info)
}

/// Instantiation refused by the instance's limits (its memories or tables, all together, past
/// the cap at creation).
#[derive(Debug, thiserror::Error)]
struct InstantiationRefused(Refused, usize);

impl std::fmt::Display for InstantiationRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Refused::Memory => write!(
                f,
                "its memories together need more than the step's cap of {} MiB",
                self.1 >> 20
            ),
            Refused::Tables => write!(
                f,
                "its tables together need more than {} elements",
                store::MAX_TABLE_ELEMENTS
            ),
        }
    }
}

/// Tries of an instantiation that failed because the kernel was briefly busy.
const BUSY_TRIES: u32 = 3;

thread_local! {
    static MADE_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Instances this thread has begun to make so far: a chain run that made one is not timed as
/// the chain's own cost ([`crate::pipeline::workers`]). (Instances are dropped on the reaper
/// thread, [`reap`], except one whose call trapped or ran out of time: that run is the chain's.)
pub fn instances_made_here() -> u64 {
    MADE_HERE.get()
}

/// A new instance serving `context`, with its limits and a first deadline set, and WASI
/// state when `wasi` ([`capability::needs_wasi`]: granted and imported). The first instance
/// of a component makes its memory image (a sealed memfd); sealing fails with EBUSY while the
/// kernel still holds the freshly written pages elsewhere, which passes: that failure is tried
/// again with a fresh store.
/// The next call into `store` (instantiation included) ends `deadline` from now: the epoch
/// deadline for guest code, and for a WASI guest the wake-up of its clock waits, which run no
/// guest code.
fn set_deadline(store: &mut Store<Invocation>, deadline: Duration) {
    store.set_epoch_deadline(PluginEngine::ticks(deadline));
    if let Some(wasi) = store.data_mut().wasi.as_mut() {
        wasi.call_until(deadline);
    }
}

/// `called`, the outcome of a call into `store` (instantiation included), unless a clock wait of
/// that call was woken by its deadline: then the interrupt the guest's next epoch check would
/// have met, whenever the ticker ticks.
fn within_deadline<T>(
    store: &Store<Invocation>,
    called: wasmtime::Result<T>,
) -> wasmtime::Result<T> {
    capability::wasi::past_deadline(store.data().wasi.as_ref(), called)
}

fn instantiate(
    pre: &bindings::PluginPre<Invocation>,
    context: &Arc<StepContext>,
    limits: StepLimits,
    wasi: bool,
    message_id: &str,
) -> wasmtime::Result<Warm> {
    let mut tries = 1;
    loop {
        match instantiate_once(pre, context, limits, wasi, message_id) {
            Err(e) if tries < BUSY_TRIES && kernel_busy(&e) => {
                tracing::debug!(error = %format!("{e:#}"), tries, "instantiation met a busy kernel; trying again");
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(u64::from(tries)));
            }
            done => return done,
        }
    }
}

/// Whether `e` comes from an operating-system call that answered EBUSY.
fn kernel_busy(e: &wasmtime::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ResourceBusy)
    })
}

fn instantiate_once(
    pre: &bindings::PluginPre<Invocation>,
    context: &Arc<StepContext>,
    limits: StepLimits,
    wasi: bool,
    message_id: &str,
) -> wasmtime::Result<Warm> {
    MADE_HERE.set(MADE_HERE.get() + 1);
    let mut store = Store::new(
        pre.engine(),
        Invocation {
            step: Arc::clone(context),
            message_id: message_id.to_string(),
            limiter: InstanceLimiter::new(limits.memory_bytes),
            last_error_log: None,
            wasi: wasi.then(capability::wasi::Wasi::default),
        },
    );
    store.limiter(|inv| &mut inv.limiter);
    // What one lift may copy out of the instance: a call's outputs, a host call's arguments.
    store.set_hostcall_fuel(limits.max_output_bytes);
    set_deadline(&mut store, limits.deadline);
    let instantiated = {
        let _running = engine::guest_running();
        pre.instantiate(&mut store)
    };
    let instantiated = within_deadline(&store, instantiated);
    let plugin = match instantiated {
        Ok(plugin) => plugin,
        Err(e) => {
            return Err(match store.data().limiter.refused() {
                Some(refused) => {
                    wasmtime::Error::new(InstantiationRefused(refused, limits.memory_bytes))
                }
                None => e,
            });
        }
    };
    Ok(Warm {
        store,
        plugin,
        served: 0,
    })
}

/// A plugin's description is used in lineage headers, logs and URLs: its name must be a plain
/// identifier (`a-z`, `0-9`, `-`, `_`, `.`, at most 64), its version one too (letters, digits,
/// `.`, `-`, `+`, at most 64), and its lists bounded.
pub fn check_info(info: &types::PluginInfo) -> Result<(), String> {
    let plain = |s: &str, extra: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
    };
    if !plain(&info.name, "-_.") {
        return Err(format!(
            "name {:?} must be 1 to 64 of a-z, 0-9, '-', '_', '.'",
            info.name.escape_debug().take(80).collect::<String>()
        ));
    }
    if !(plain(&info.version.to_ascii_lowercase(), ".-+")) {
        return Err(format!(
            "version {:?} must be 1 to 64 of letters, digits, '.', '-', '+'",
            info.version.escape_debug().take(80).collect::<String>()
        ));
    }
    for (what, list) in [("accepts", &info.accepts), ("emits", &info.emits)] {
        if list.len() > 64
            || list
                .iter()
                .any(|t| t.len() > 256 || t.chars().any(char::is_control))
        {
            return Err(format!(
                "{what} must list at most 64 types of at most 256 bytes without control characters"
            ));
        }
    }
    Ok(())
}

/// Limits of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepLimits {
    /// Wall-clock budget of one `mediate` call.
    pub deadline: Duration,
    /// Cap on the instance's linear memories, all together.
    pub memory_bytes: usize,
    /// Messages one instance may serve before it is replaced (1 = fresh instance per message).
    pub instance_reuse: u32,
    /// Outputs one call may return.
    pub max_outputs: usize,
    /// Bytes one call may hand over (and one host call may pass in): the host stops copying
    /// beyond this.
    pub max_output_bytes: usize,
}

impl Default for StepLimits {
    /// The configuration's defaults (docs/configuration.md).
    fn default() -> Self {
        StepLimits {
            deadline: Duration::from_millis(500),
            memory_bytes: 64 << 20,
            instance_reuse: 1000,
            max_outputs: 1000,
            max_output_bytes: 16 << 20,
        }
    }
}

/// What is left of a message's budget when a step is called.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// The message's whole budget across the chain.
    pub total: Duration,
    /// What is left of it now.
    pub left: Duration,
}

/// How a step failed on one message.
#[derive(Debug, Clone, PartialEq)]
pub enum StepFailure {
    /// The plugin rejected the message (permanent).
    Rejected(types::Rejection),
    /// The plugin asked for a later retry (transient).
    RetryLater(types::Retry),
    /// The call ran past its deadline and was interrupted.
    Deadline(Duration),
    /// The instance tried to grow its memory past the cap.
    MemoryCap(usize),
    /// The plugin trapped (panic, out-of-bounds access, stack overflow...).
    Trap(String),
    /// The plugin broke a bound on what it may hand over, or the message ran out of budget.
    Limit(Breach),
    /// The plugin version is quarantined on this plant (transient: held, not dead-lettered).
    Quarantined(String),
}

impl StepFailure {
    /// The failure's name in dead letters, headers and vectors: `rejected`, `retry-later`,
    /// `deadline`, `memory-cap`, `trap` or `limit`.
    pub fn kind(&self) -> &'static str {
        match self {
            StepFailure::Rejected(_) => "rejected",
            StepFailure::RetryLater(_) => "retry-later",
            StepFailure::Deadline(_) => "deadline",
            StepFailure::MemoryCap(_) => "memory-cap",
            StepFailure::Trap(_) => "trap",
            StepFailure::Limit(_) => "limit",
            StepFailure::Quarantined(_) => "quarantined",
        }
    }
}

/// What one call ran on: a new instance or a pooled one, and the instance's linear memory
/// after the call (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallFacts {
    pub fresh: bool,
    pub memory_bytes: u64,
}

/// What a step is, apart from its plugin: where it runs, what it may use, its limits.
pub struct StepSpec<'a> {
    pub plant: &'a str,
    pub route: &'a str,
    pub grants: Vec<Capability>,
    pub settings: Settings,
    pub tables: Tables,
    /// The store behind the `state` capability.
    pub state: Arc<crate::state::StateStore>,
    pub limits: StepLimits,
    /// The breakers the step's plugin version reports its failures to.
    pub quarantines: Arc<crate::quarantine::Quarantines>,
}

/// A warm instance with the number of messages it has served.
struct Warm {
    store: Store<Invocation>,
    plugin: bindings::Plugin,
    served: u32,
}

/// Idle instances kept per step; beyond this, returned instances are dropped.
const MAX_IDLE: usize = 16;

/// Instances waiting for the reaper thread, at most; past this they are dropped where they are
/// let go.
const REAPER_QUEUE: usize = 256;

/// Drop `instances` on the reaper thread: dropping an instance made on demand unmaps its memory
/// (a system call that also interrupts the other cores to flush their address translations),
/// which would otherwise hold the thread that let it go — often an async worker answering a
/// request, when a step is replaced by an activation or an instance has served its share. When
/// the reaper has [`REAPER_QUEUE`] instances waiting (or cannot start), they are dropped here.
/// (Instances of the pooling allocator do not come here: [`StepRuntime::let_go`].)
fn reap(instances: Vec<Warm>) {
    static REAPER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Vec<Warm>>>> =
        std::sync::OnceLock::new();
    static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    use std::sync::atomic::Ordering;
    let n = instances.len();
    if n == 0 {
        return;
    }
    let reaper = REAPER.get_or_init(|| {
        let (send, receive) = std::sync::mpsc::channel::<Vec<Warm>>();
        std::thread::Builder::new()
            .name("millrace-reaper".into())
            .spawn(move || {
                for instances in receive {
                    let n = instances.len();
                    drop(instances);
                    WAITING.fetch_sub(n, Ordering::AcqRel);
                }
            })
            .ok()
            .map(|_| send)
    });
    let Some(reaper) = reaper else {
        return;
    };
    let taken = WAITING
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w + n <= REAPER_QUEUE).then_some(w + n)
        })
        .is_ok();
    if taken && let Err(back) = reaper.send(instances) {
        WAITING.fetch_sub(n, Ordering::AcqRel);
        drop(back);
    }
}

impl Drop for StepRuntime {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        self.let_go(idle);
    }
}

/// One step of one route: a plugin version, its grants, settings, tables and limits.
pub struct StepRuntime {
    pub id: PluginId,
    /// The component file it was loaded from.
    pub path: PathBuf,
    pub info: types::PluginInfo,
    pub grants: Vec<Capability>,
    pre: bindings::PluginPre<Invocation>,
    context: Arc<StepContext>,
    limits: StepLimits,
    idle: Mutex<Vec<Warm>>,
    quarantines: Arc<crate::quarantine::Quarantines>,
    /// This step's plugin version on its plant, for the breaker.
    subject: crate::quarantine::Subject,
    /// Its instances' series.
    meters: crate::telemetry::metrics::InstanceMeters,
    /// Whether its instances come from the pooling allocator ([`reap`]).
    pooled: bool,
    /// Whether its instances get WASI state ([`capability::needs_wasi`]).
    wasi: bool,
    /// Whether a call may block its thread ([`capability::imports_blocking`]).
    blocking: bool,
}

impl StepRuntime {
    /// Check `artifact` against `grants`, link it, describe it and check its settings.
    pub fn load(
        engine: &PluginEngine,
        artifact: &Artifact,
        spec: StepSpec<'_>,
    ) -> Result<StepRuntime, LoadError> {
        let StepSpec {
            plant,
            route,
            grants,
            settings,
            tables,
            state,
            limits,
            quarantines,
        } = spec;
        let pre = link(engine, artifact, &grants)?;
        let trapped = |reason: String| LoadError::Trapped {
            plugin: artifact.path.display().to_string(),
            reason,
        };
        // A first instance answers `describe` and checks the settings, then becomes the step's
        // first warm instance (under the plugin's own name and version, for its log entries):
        // one instance made per load, not two.
        let mut context = StepContext {
            plant: plant.to_string(),
            route: route.to_string(),
            plugin: artifact.path.display().to_string(),
            settings,
            tables,
            state,
            log_budget: Arc::new(bounds::LogBudget::new(bounds::LOG_BYTES_PER_SECOND)),
        };
        let probe_context = Arc::new(context.clone());
        let wasi = capability::needs_wasi(&artifact.imports, &grants);
        let mut probe = instantiate(&pre, &probe_context, limits, wasi, "load")
            .map_err(|e| trapped(format!("{e:#}")))?;
        let info = {
            let _running = engine::guest_running();
            let info = probe.plugin.call_describe(&mut probe.store);
            within_deadline(&probe.store, info)
        };
        probe.store.data_mut().flush_guest_output();
        let info = info.map_err(|e| trapped(format!("describe: {e:#}")))?;
        check_info(&info).map_err(|reason| LoadError::Info {
            plugin: artifact.path.display().to_string(),
            reason,
        })?;
        context.plugin = format!("{}@{}", info.name, info.version);
        let checked = {
            let _running = engine::guest_running();
            let checked = probe.plugin.call_check_settings(&mut probe.store);
            within_deadline(&probe.store, checked)
        };
        probe.store.data_mut().flush_guest_output();
        checked
            .map_err(|e| trapped(format!("check-settings: {e:#}")))?
            .map_err(|reason| LoadError::Settings {
                plugin: context.plugin.clone(),
                reason: bounds::truncate(&reason, bounds::MAX_REASON_BYTES),
            })?;
        let subject = crate::quarantine::Subject {
            plant: plant.to_string(),
            plugin: info.name.clone(),
            version: info.version.clone(),
            digest: artifact.digest.clone(),
        };
        let step = StepRuntime {
            meters: crate::telemetry::metrics::InstanceMeters::new(
                plant,
                &info.name,
                &info.version,
            ),
            quarantines,
            subject,
            path: artifact.path.clone(),
            id: PluginId {
                name: info.name.clone(),
                version: info.version.clone(),
                digest: artifact.digest.clone(),
            },
            info,
            grants,
            pre,
            context: Arc::new(context),
            limits,
            idle: Mutex::new(Vec::new()),
            pooled: engine.pooled(),
            wasi,
            blocking: capability::imports_blocking(&artifact.imports),
        };
        probe.store.data_mut().step = Arc::clone(&step.context);
        step.meters.created.inc();
        step.idle.lock().expect("idle pool lock").push(probe);
        Ok(step)
    }

    /// The same step — plant, route, grants, settings, tables, limits — on another component
    /// (a candidate version): linked, described and its settings checked like any load.
    pub fn reload(
        &self,
        engine: &PluginEngine,
        artifact: &Artifact,
    ) -> Result<StepRuntime, LoadError> {
        let spec = self.spec(
            Arc::clone(&self.context.state),
            Arc::clone(&self.quarantines),
        );
        StepRuntime::load(engine, artifact, spec)
    }

    /// This step's spec with `state` and `quarantines`.
    fn spec(
        &self,
        state: Arc<crate::state::StateStore>,
        quarantines: Arc<crate::quarantine::Quarantines>,
    ) -> StepSpec<'_> {
        let c = &self.context;
        StepSpec {
            plant: &c.plant,
            route: &c.route,
            grants: self.grants.clone(),
            settings: c.settings.clone(),
            tables: c.tables.clone(),
            state,
            limits: self.limits,
            quarantines,
        }
    }

    /// The same step on a private, empty state and no breaker: what a dry run uses, so it
    /// cannot change the plant's state or trip the step's quarantine.
    pub fn isolated(&self, engine: &PluginEngine) -> Result<StepRuntime, LoadError> {
        let artifact = Artifact::load(engine, &self.path)?;
        let spec = self.spec(
            Arc::new(crate::state::StateStore::in_memory()),
            Arc::new(crate::quarantine::Quarantines::disabled()),
        );
        StepRuntime::load(engine, &artifact, spec)
    }

    /// Whether a call of this step may block its thread: its component imports `state` or
    /// WASI (which its grants then include). Its chains never run inline.
    pub fn may_block(&self) -> bool {
        self.blocking
    }

    fn instantiate(&self, message_id: &str) -> wasmtime::Result<Warm> {
        let warm = instantiate(&self.pre, &self.context, self.limits, self.wasi, message_id)?;
        self.meters.created.inc();
        Ok(warm)
    }

    /// Mediate one message on a warm (or new) instance of this step, with no message budget
    /// beyond the step's own deadline.
    pub fn mediate(&self, input: &types::Message) -> Result<Vec<types::Message>, StepFailure> {
        self.mediate_within(input, None)
    }

    /// Make a new instance of this step and drop it: what a fresh instance costs besides its
    /// call (`instance_reuse = 1`), for benchmarks.
    pub fn instantiate_and_drop(&self) -> Result<(), StepFailure> {
        self.instantiate("benchmark")
            .map(drop)
            .map_err(|e| self.classify(None, e, None))
    }

    /// Mediate one message on a warm (or new) instance of this step. The call gets the step's
    /// deadline or what is left of the message's `budget`, whichever is shorter; its outputs
    /// are checked against the step's bounds ([`bounds::check_outputs`]).
    pub fn mediate_within(
        &self,
        input: &types::Message,
        budget: Option<Budget>,
    ) -> Result<Vec<types::Message>, StepFailure> {
        self.mediate_noted(input, budget, &mut CallFacts::default())
    }

    /// [`StepRuntime::mediate_within`], telling in `facts` what the call ran on.
    pub fn mediate_noted(
        &self,
        input: &types::Message,
        budget: Option<Budget>,
        facts: &mut CallFacts,
    ) -> Result<Vec<types::Message>, StepFailure> {
        if let Some(why) = self.quarantines.check(&self.subject) {
            return Err(StepFailure::Quarantined(why));
        }
        let cut = budget.filter(|b| b.left < self.limits.deadline);
        let deadline = cut.map_or(self.limits.deadline, |b| b.left);
        let pooled = self.idle.lock().expect("idle pool lock").pop();
        facts.fresh = pooled.is_none();
        let mut warm = match pooled {
            Some(warm) => warm,
            None => self
                .instantiate(&input.id)
                .map_err(|e| self.failed(self.classify(None, e, cut)))?,
        };
        let data = warm.store.data_mut();
        data.message_id.clone_from(&input.id);
        data.limiter.reset();
        data.last_error_log = None;
        set_deadline(&mut warm.store, deadline);
        let called = {
            let _running = engine::guest_running();
            warm.plugin.call_mediate(&mut warm.store, input)
        };
        let called = within_deadline(&warm.store, called);
        warm.store.data_mut().flush_guest_output();
        facts.memory_bytes = warm.store.data().limiter.memory_bytes() as u64;
        let result = match called {
            Ok(result) => result,
            // The instance is dropped here: a trapped instance never serves another message.
            Err(e) => return Err(self.failed(self.classify(Some(&warm.store), e, cut))),
        };
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(types::MediationError::Rejected(mut r)) => {
                r.reason = bounds::truncate(&r.reason, bounds::MAX_REASON_BYTES);
                r.field = r
                    .field
                    .map(|f| bounds::truncate(&f, bounds::MAX_FIELD_BYTES));
                self.keep(warm);
                return Err(StepFailure::Rejected(r));
            }
            Err(types::MediationError::RetryLater(mut r)) => {
                r.reason = bounds::truncate(&r.reason, bounds::MAX_REASON_BYTES);
                self.keep(warm);
                return Err(StepFailure::RetryLater(r));
            }
        };
        // An instance that handed over what it may not is not trusted with another message.
        bounds::check_outputs(
            &outputs,
            self.limits.max_outputs,
            self.limits.max_output_bytes,
        )
        .map_err(|breach| self.failed(StepFailure::Limit(breach)))?;
        self.keep(warm);
        Ok(outputs)
    }

    /// Report a failure of the plugin itself (a trap, a breached limit — not a message
    /// budget, which the chain sets) to its breaker; the failure, unchanged.
    fn failed(&self, failure: StepFailure) -> StepFailure {
        let counts = match &failure {
            StepFailure::Trap(_) | StepFailure::Deadline(_) | StepFailure::MemoryCap(_) => true,
            StepFailure::Limit(breach) => !matches!(breach, Breach::Budget(_)),
            _ => false,
        };
        if counts {
            self.meters.trapped(failure.kind());
            self.meters.failed.inc();
            let reason = match &failure {
                StepFailure::Trap(t) => t.clone(),
                StepFailure::Limit(b) => b.reason(),
                other => other.kind().to_string(),
            };
            self.quarantines.failed(&self.subject, &reason);
        }
        failure
    }

    /// Return an instance that served a message to the pool, unless it has served its share.
    fn keep(&self, mut warm: Warm) {
        warm.served += 1;
        if warm.served < self.limits.instance_reuse {
            let mut idle = self.idle.lock().expect("idle pool lock");
            if idle.len() < MAX_IDLE {
                idle.push(warm);
                return;
            }
            self.meters.pool_full.inc();
        } else {
            self.meters.served.inc();
        }
        self.let_go(vec![warm]);
    }

    /// Drop `instances` this step no longer keeps: on the reaper thread ([`reap`]), unless
    /// they come from the pooling allocator, whose drop only returns the slot (no unmapping)
    /// and must not wait, or the next instance may find the pool full.
    fn let_go(&self, instances: Vec<Warm>) {
        if !self.pooled {
            reap(instances);
        }
    }

    /// What a failed call (or instantiation) means. `cut` is the message budget when it made
    /// the call's deadline shorter than the step's: an interrupt then means the budget ran out.
    fn classify(
        &self,
        store: Option<&Store<Invocation>>,
        error: wasmtime::Error,
        cut: Option<Budget>,
    ) -> StepFailure {
        let refused = store
            .and_then(|s| s.data().limiter.refused())
            .or_else(|| error.downcast_ref::<InstantiationRefused>().map(|r| r.0));
        match refused {
            Some(Refused::Memory) => return StepFailure::MemoryCap(self.limits.memory_bytes),
            Some(Refused::Tables) => return StepFailure::Limit(Breach::Tables),
            None => {}
        }
        if is_copy_budget_spent(&error) {
            return StepFailure::Limit(Breach::OutputBytes {
                max: self.limits.max_output_bytes,
            });
        }
        // Every slot of `host.instance_pool` in use: the host's capacity, not the plugin's fault
        // (not counted by its breaker); the message is tried again later.
        if let Some(full) = error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
            return StepFailure::RetryLater(types::Retry {
                reason: format!(
                    "the host's instance pool is full ({full}); raise host.instance_pool"
                ),
                after_ms: Some(100),
            });
        }
        match (error.downcast_ref::<Trap>(), cut) {
            (Some(Trap::Interrupt), Some(budget)) => {
                StepFailure::Limit(Breach::Budget(budget.total))
            }
            (Some(Trap::Interrupt), None) => StepFailure::Deadline(self.limits.deadline),
            _ => {
                let logged = store.and_then(|s| s.data().last_error_log.as_deref());
                StepFailure::Trap(match logged {
                    Some(log) => format!("{} (plugin log: {log})", trap_reason(&error)),
                    None => trap_reason(&error),
                })
            }
        }
    }

    pub fn limits(&self) -> StepLimits {
        self.limits
    }
}

/// Whether the call failed because the host stopped copying data out of the instance (its
/// copy budget, wasmtime's hostcall fuel, ran out). wasmtime reports this with a private error
/// type, so its message is matched; `tests` pins the message so an upgrade that changes it
/// fails there.
fn is_copy_budget_spent(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .to_string()
            .contains("fuel allocated for hostcalls has been exhausted")
    })
}

/// The trap without its Wasm backtrace (which goes to the debug log).
fn trap_reason(error: &wasmtime::Error) -> String {
    tracing::debug!(error = ?error, "plugin trapped");
    match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_busy_kernel_makes_an_instantiation_worth_trying_again() {
        let busy = wasmtime::Error::new(std::io::Error::from(std::io::ErrorKind::ResourceBusy))
            .context("cannot add seals to the memfd")
            .context("instantiating");
        assert!(kernel_busy(&busy));
        let other = wasmtime::Error::new(std::io::Error::from(std::io::ErrorKind::OutOfMemory))
            .context("instantiating");
        assert!(!kernel_busy(&other));
        assert!(!kernel_busy(&wasmtime::Error::msg("a trap")));
    }
}
