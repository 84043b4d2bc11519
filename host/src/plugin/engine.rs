//! The wasmtime engine every plugin shares: component model (one memory per core module), epoch
//! interruption driven by a ticker thread that follows the clock, and an on-disk cache of
//! compiled artifacts so a restart does not recompile.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

/// How often the epoch advances; deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How long after the last guest code ran the ticker keeps ticking every [`EPOCH_TICK`].
const TICKING_AFTER_LAST_CALL: Duration = Duration::from_secs(1);

/// How often an idle ticker wakes (no guest code for [`TICKING_AFTER_LAST_CALL`]): it then
/// advances the epoch by one tick per wake, so the epoch runs slower than the clock and a
/// deadline counted from it comes late, never early. A call wakes it at once ([`guest_running`]);
/// guest code run without saying so would still be stopped, at most 10× late.
const IDLE_WAKE: Duration = Duration::from_millis(10);

/// What the epoch tickers know of guest code running: one for the process ([`ACTIVITY`]);
/// tests make their own.
struct Activity {
    /// Guest calls in progress.
    running: AtomicUsize,
    /// Guest calls started so far: a ticker that sees it move keeps ticking.
    entered: AtomicU64,
    /// Tickers in their idle wait, and what wakes them.
    idle: AtomicUsize,
    wake: (Mutex<()>, Condvar),
}

impl Activity {
    const fn new() -> Activity {
        Activity {
            running: AtomicUsize::new(0),
            entered: AtomicU64::new(0),
            idle: AtomicUsize::new(0),
            wake: (Mutex::new(()), Condvar::new()),
        }
    }

    fn enter(&'static self) -> GuestRunning {
        self.entered.fetch_add(1, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.idle.load(Ordering::SeqCst) > 0 {
            let _waking = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.1.notify_all();
        }
        GuestRunning(self)
    }
}

/// Guest code run by every engine of the process.
static ACTIVITY: Activity = Activity::new();

/// Held while guest code runs (instantiation, a call and its post-return): keeps the epoch
/// ticker at full rate, and wakes it when it idles. Every call into a plugin goes through one.
pub struct GuestRunning(&'static Activity);

/// Guest code is about to run on some engine of this process: see [`GuestRunning`].
pub fn guest_running() -> GuestRunning {
    ACTIVITY.enter()
}

impl Drop for GuestRunning {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a released slot keeps resident of each memory: the fastest of 0, 64 KiB and 1 MiB for
/// a fresh instance of `mes-fixed-width` (docs/performance.md, fresh instances).
pub const POOL_KEEP_RESIDENT: usize = 64 << 10;

/// Instances made from a pool reserved up front (wasmtime's pooling allocator) instead of
/// mapped and unmapped one by one: `host.instance_pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstancePool {
    /// Instances alive at once, at most: every step's warm ones, the ones running, the probes
    /// of deploys. One more is refused (the message fails as a transient failure).
    pub instances: u32,
    /// The largest linear memory of one instance; each slot reserves this much address space
    /// (not memory) plus a guard.
    pub max_memory_bytes: u64,
    /// Bytes of each memory a released slot keeps mapped and zeroes for the next instance (no
    /// page faults, no unmapping for those); the rest is given back to the kernel.
    pub keep_resident_bytes: usize,
}

impl InstancePool {
    fn config(self) -> PoolingAllocationConfig {
        let mut pool = PoolingAllocationConfig::default();
        // A component holds a few core instances (the guest, wasi adapters, shims).
        pool.total_component_instances(self.instances);
        pool.total_core_instances(self.instances.saturating_mul(4));
        pool.total_memories(self.instances.saturating_mul(2));
        pool.total_tables(self.instances.saturating_mul(4));
        pool.max_memory_size(self.max_memory_bytes as usize);
        pool.linear_memory_keep_resident(self.keep_resident_bytes);
        pool.table_keep_resident(self.keep_resident_bytes.min(64 << 10));
        pool
    }
}

/// Code-generation settings measured against the host's own ([`PluginEngine::for_measurement`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codegen {
    /// Cranelift inlines calls between Wasm functions, within and across a component's modules.
    Inlining,
    /// Cranelift's `speed_and_size` optimisation level instead of `speed`.
    SpeedAndSize,
    /// No epoch checks in the compiled code: what the deadline checks cost. Measurement only.
    WithoutDeadlineChecks,
    /// Linear memories never move (`memory_may_move(false)`): the base pointer may be kept.
    FixedMemory,
    /// Tables filled at instantiation (`table_lazy_init(false)`): indirect calls skip the check.
    EagerTables,
    /// The host's settings, and a perf map of the compiled code (`/tmp/perf-PID.map`) so that
    /// `perf report` names a guest's functions (from the component's name section, when it was
    /// built with one). Measurement only: it changes no code.
    PerfMap,
}

impl Codegen {
    /// Every setting, by the name [`Codegen::named`] takes.
    pub const ALL: [(&'static str, Codegen); 6] = [
        ("inlining", Codegen::Inlining),
        ("speed-and-size", Codegen::SpeedAndSize),
        ("without-deadline-checks", Codegen::WithoutDeadlineChecks),
        ("fixed-memory", Codegen::FixedMemory),
        ("eager-tables", Codegen::EagerTables),
        ("perf-map", Codegen::PerfMap),
    ];

    /// The setting named `name` (one of [`Codegen::ALL`]).
    pub fn named(name: &str) -> Option<Codegen> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, codegen)| *codegen)
    }
}

/// The folder under a compile cache `dir` that wasmtime's cache writes to, and the only one its
/// cleanup touches (it deletes files it did not write): a cache named on a folder that holds
/// other files leaves them alone.
const CODE_FOLDER: &str = "compiled";

/// `dir/compiled`, made (mode 700) if missing, after checking that no other user can put code
/// in it: its files are loaded as native code. It must be a folder of the host's user (not a
/// symlink), writable by that user alone (group and other write bits are removed); no folder
/// above it may belong to another user than root or the host's, or be writable by group or
/// others (unless sticky, like /tmp): they could swap the cache for another.
fn code_folder(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let code = dir.join(CODE_FOLDER);
    let named = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("compile cache directory {}: {e}", code.display())
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&code)
        .map_err(|e| named(&format!("cannot create it: {e}")))?;
    let meta = std::fs::symlink_metadata(&code).map_err(|e| named(&e))?;
    if !meta.is_dir() {
        return Err(named(&"not a directory (a symlink is not followed)"));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(named(&format!(
            "it belongs to user {} and the host runs as {me}; its files are loaded as native code",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        std::fs::set_permissions(&code, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| named(&format!("cannot make it writable by its owner only: {e}")))?;
    }
    let code = code.canonicalize().map_err(|e| named(&e))?;
    for above in code.ancestors().skip(1) {
        let meta =
            std::fs::metadata(above).map_err(|e| named(&format!("{}: {e}", above.display())))?;
        if meta.uid() != 0 && meta.uid() != me {
            return Err(named(&format!(
                "{} belongs to user {}, who could swap the cache; its files are loaded as native code, so every folder above it must be root's or the host's user's",
                above.display(),
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
            return Err(named(&format!(
                "{} is writable by others (mode {:o}), who could swap the cache; its files are loaded as native code",
                above.display(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(code)
}

/// The shared engine and its epoch ticker (stopped when the last engine handle is dropped).
#[derive(Clone)]
pub struct PluginEngine {
    engine: Engine,
    cache: Option<Cache>,
    /// Whether instances come from the pooling allocator (`host.instance_pool`).
    pooled: bool,
}

impl PluginEngine {
    /// An engine whose compiled artifacts are cached under `cache_dir` (none: compile every time).
    pub fn new(cache_dir: Option<&Path>) -> anyhow::Result<PluginEngine> {
        Self::build(cache_dir, |_| {})
    }

    /// [`PluginEngine::new`] whose instances come from `pool` when one is given.
    pub fn with_pool(
        cache_dir: Option<&Path>,
        pool: Option<InstancePool>,
    ) -> anyhow::Result<PluginEngine> {
        let pooled = pool.is_some();
        let mut engine = Self::build(cache_dir, |config| {
            if let Some(pool) = pool {
                config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool.config()));
            }
        })?;
        engine.pooled = pooled;
        Ok(engine)
    }

    /// An engine with one code-generation setting the host does not use, to measure what it
    /// would change (the mediation benchmark's `ENGINE`; docs/performance.md). The host never
    /// builds one: [`Codegen::WithoutDeadlineChecks`] compiles guests that no deadline stops.
    pub fn for_measurement(codegen: Codegen) -> anyhow::Result<PluginEngine> {
        Self::build(None, |config| match codegen {
            Codegen::Inlining => {
                config.compiler_inlining(wasmtime::Inlining::Yes);
            }
            Codegen::SpeedAndSize => {
                config.cranelift_opt_level(wasmtime::OptLevel::SpeedAndSize);
            }
            Codegen::WithoutDeadlineChecks => {
                config.epoch_interruption(false);
            }
            Codegen::FixedMemory => {
                config.memory_may_move(false);
            }
            Codegen::EagerTables => {
                config.table_lazy_init(false);
            }
            Codegen::PerfMap => {
                config.profiler(wasmtime::ProfilingStrategy::PerfMap);
            }
        })
    }

    /// [`PluginEngine::new`] with the settings changed by `adjust` after the host's own.
    fn build(
        cache_dir: Option<&Path>,
        adjust: impl FnOnce(&mut Config),
    ) -> anyhow::Result<PluginEngine> {
        let mut config = Config::new();
        let mut cached = None;
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // One memory per core module: what every toolchain emits. A component may still hold
        // several modules, each with its memory; the instance's limiter caps them together.
        config.wasm_multi_memory(false);
        // No typed function references and no GC, neither of which any plugin toolchain emits:
        // this build has no GC runtime, and a `call_indirect` checked against a declared subtype
        // aborted the process in such builds of wasmtime before 48.0.9 (GHSA-rc4p-x33f-vpr2).
        // A module using them is refused when it is compiled, naming the proposal.
        config.wasm_gc(false);
        config.wasm_features(wasmtime::WasmFeatures::FUNCTION_REFERENCES, false);
        // Guests get 512 KiB of native stack for deep recursion; deeper is a stack-overflow trap.
        config.max_wasm_stack(512 * 1024);
        adjust(&mut config);
        if let Some(dir) = cache_dir {
            let dir = code_folder(dir)?;
            let mut cache = CacheConfig::new();
            cache.with_directory(&dir);
            let cache = Cache::new(cache)
                .map_err(|e| anyhow::anyhow!("compile cache at {}: {e}", dir.display()))?;
            config.cache(Some(cache.clone()));
            cached = Some(cache);
        }
        let engine = Engine::new(&config)
            .map_err(|e| anyhow::anyhow!("cannot create the Wasm engine: {e}"))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("millrace-epoch".into())
            .spawn(move || tick(weak, &ACTIVITY))
            .map_err(|e| anyhow::anyhow!("cannot start the epoch ticker thread: {e}"))?;
        Ok(PluginEngine {
            engine,
            cache: cached,
            pooled: false,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether instances come from the pooling allocator (`host.instance_pool`).
    pub fn pooled(&self) -> bool {
        self.pooled
    }

    /// Compile-cache hits and misses since start, when a cache is configured.
    pub fn cache_stats(&self) -> Option<(usize, usize)> {
        self.cache
            .as_ref()
            .map(|c| (c.cache_hits(), c.cache_misses()))
    }

    /// Deadline in epoch ticks: rounded up, plus one because the current tick is partly gone.
    pub fn ticks(deadline: Duration) -> u64 {
        deadline.as_millis().div_ceil(EPOCH_TICK.as_millis()) as u64 + 1
    }
}

/// The epoch ticker of one engine, until the engine is dropped. While guest code runs (and for
/// [`TICKING_AFTER_LAST_CALL`] after) the epoch follows the clock, not the number of wake-ups:
/// a ticker woken late (a busy machine) catches up, so a deadline in ticks stays a deadline in
/// time. Idle, it wakes every [`IDLE_WAKE`] (not every tick: ~100 wake-ups a second instead of
/// 1,000 on a host with nothing to do) and advances one tick per wake; the idle time is not
/// caught up afterwards, so no deadline set meanwhile comes early.
fn tick(weak: wasmtime::EngineWeak, activity: &Activity) {
    let mut since = Instant::now();
    let mut ticks: u64 = 0;
    let mut seen = activity.entered.load(Ordering::Relaxed);
    let mut last_call = Instant::now();
    while let Some(engine) = weak.upgrade() {
        let entered = activity.entered.load(Ordering::Relaxed);
        if entered != seen || activity.running.load(Ordering::SeqCst) > 0 {
            seen = entered;
            last_call = Instant::now();
        }
        if last_call.elapsed() < TICKING_AFTER_LAST_CALL {
            let due = (since.elapsed().as_micros() / EPOCH_TICK.as_micros()) as u64;
            while ticks < due {
                engine.increment_epoch();
                ticks += 1;
            }
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
            continue;
        }
        engine.increment_epoch();
        drop(engine);
        activity.idle.fetch_add(1, Ordering::SeqCst);
        {
            let waiting = activity.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            if activity.running.load(Ordering::SeqCst) == 0 {
                drop(activity.wake.1.wait_timeout(waiting, IDLE_WAKE));
            }
        }
        activity.idle.fetch_sub(1, Ordering::SeqCst);
        // Full rate from here on, counted from now.
        since = Instant::now();
        ticks = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Module, Store, Trap};

    /// A core module whose `spin` export never returns and whose `nop` export returns at once.
    const SPIN: &str =
        r#"(module (func $spin (export "spin") (loop (br 0))) (func $nop (export "nop")))"#;

    fn compile(engine: &PluginEngine) -> Module {
        Module::new(engine.engine(), wat::parse_str(SPIN).unwrap()).unwrap()
    }

    /// Runs `module`'s `spin` under `deadline`: it must end as an interrupt.
    fn spin_is_interrupted(engine: &Engine, module: &Module, deadline: Duration) {
        let mut store = Store::new(engine, ());
        store.set_epoch_deadline(PluginEngine::ticks(deadline));
        let instance = wasmtime::Instance::new(&mut store, module, &[]).unwrap();
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .unwrap();
        let trap = spin.call(&mut store, ()).unwrap_err();
        assert_eq!(trap.downcast_ref::<Trap>(), Some(&Trap::Interrupt));
    }

    /// Polls `done` until it holds; fails (rather than hangs) after 20 s.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < until, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_idle_ticker_wakes_for_a_call_and_a_spinning_guest_is_stopped_either_way() {
        let activity: &'static Activity = Box::leak(Box::new(Activity::new()));
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let module = Module::new(&engine, wat::parse_str(SPIN).unwrap()).unwrap();
        let weak = engine.weak();
        std::thread::spawn(move || tick(weak, activity));
        let spin = move |deadline| spin_is_interrupted(&engine, &module, deadline);

        // No guest code for a while: the ticker idles.
        eventually("the ticker idles", || {
            activity.idle.load(Ordering::SeqCst) > 0
        });
        // A call wakes it back to full rate, and stays until it ends.
        let running = activity.enter();
        eventually("the ticker is back at full rate", || {
            activity.idle.load(Ordering::SeqCst) == 0
        });
        spin(Duration::from_millis(5));
        drop(running);

        // Guest code run without saying so is still stopped, by the idle ticks.
        eventually("the ticker idles again", || {
            activity.idle.load(Ordering::SeqCst) > 0
        });
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = std::sync::Arc::clone(&stopped);
        std::thread::spawn(move || {
            spin(Duration::from_millis(3));
            done.store(true, Ordering::SeqCst);
        });
        eventually("a spinning call with no guard is stopped", || {
            stopped.load(Ordering::SeqCst)
        });
    }

    #[test]
    fn every_measurement_setting_is_found_by_its_name_and_runs_code() {
        let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()));
        // wasmtime appends to the map: one left by an earlier process of this id must not count.
        let _ = std::fs::remove_file(&map);
        for (name, codegen) in Codegen::ALL {
            assert_eq!(Codegen::named(name), Some(codegen));
            let engine = PluginEngine::for_measurement(codegen).unwrap();
            let module = compile(&engine);
            let mut store = Store::new(engine.engine(), ());
            store.set_epoch_deadline(PluginEngine::ticks(Duration::from_secs(5)));
            let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
            let nop = instance
                .get_typed_func::<(), ()>(&mut store, "nop")
                .unwrap();
            nop.call(&mut store, ()).unwrap();
            if codegen != Codegen::WithoutDeadlineChecks {
                spin_is_interrupted(engine.engine(), &module, Duration::from_millis(5));
            }
            if codegen == Codegen::PerfMap {
                // The perf map names the compiled function for `perf report`.
                let written = std::fs::read_to_string(&map).unwrap_or_default();
                let _ = std::fs::remove_file(&map);
                assert!(written.contains("spin"), "perf map: {written:?}");
            }
        }
        assert_eq!(Codegen::named("no-such-setting"), None);
    }

    #[test]
    fn compiled_code_is_reused_only_by_an_engine_with_the_same_settings() {
        let dir = tempfile::tempdir().unwrap();
        let first = PluginEngine::new(Some(dir.path())).unwrap();
        compile(&first);
        assert_eq!(first.cache_stats(), Some((0, 1)), "compiled and stored");

        // Same settings: taken from the cache, and its epoch checks still stop a spinning call.
        let again = PluginEngine::new(Some(dir.path())).unwrap();
        let module = compile(&again);
        assert_eq!(again.cache_stats(), Some((1, 0)), "reused");
        spin_is_interrupted(again.engine(), &module, Duration::from_millis(5));

        // Other settings (here: code compiled without the epoch checks deadlines rely on): the
        // cached code is not taken; it is compiled again for these settings.
        let other = PluginEngine::build(Some(dir.path()), |c| {
            c.epoch_interruption(false);
        })
        .unwrap();
        compile(&other);
        assert_eq!(other.cache_stats(), Some((0, 1)), "not reused");
    }

    #[test]
    fn a_compile_cache_others_could_write_to_is_refused_or_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        // A folder above the code that others may write to: refused.
        mode(&cache, 0o777);
        let refused = PluginEngine::new(Some(&cache)).err().expect("refused");
        assert!(
            refused
                .to_string()
                .contains("is writable by others (mode 777)"),
            "{refused}"
        );
        // The code's own folder is made writable by the host's user alone.
        mode(&cache, 0o755);
        let code = cache.join(CODE_FOLDER);
        mode(&code, 0o777);
        assert!(PluginEngine::new(Some(&cache)).is_ok());
        let now = std::fs::metadata(&code).unwrap().permissions().mode();
        assert_eq!(now & 0o777, 0o700);
        // A symlink in its place is not followed.
        std::fs::remove_dir_all(&code).unwrap();
        std::os::unix::fs::symlink(dir.path(), &code).unwrap();
        let refused = PluginEngine::new(Some(&cache)).err().expect("refused");
        assert!(refused.to_string().contains("not a directory"), "{refused}");
    }
}
