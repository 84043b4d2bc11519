//! The wasmtime engine every plugin shares: component model (one memory per core module), epoch
//! interruption driven by a ticker thread that follows the clock, and an on-disk cache of
//! compiled artifacts so a restart does not recompile.

use std::path::Path;
use std::time::Duration;
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

/// How often the epoch advances; deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

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
}

impl Codegen {
    /// The setting named `name`: `inlining`, `speed-and-size`, `without-deadline-checks`.
    pub fn named(name: &str) -> Option<Codegen> {
        Some(match name {
            "inlining" => Codegen::Inlining,
            "speed-and-size" => Codegen::SpeedAndSize,
            "without-deadline-checks" => Codegen::WithoutDeadlineChecks,
            _ => return None,
        })
    }
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
        // Guests get 512 KiB of native stack for deep recursion; deeper is a stack-overflow trap.
        config.max_wasm_stack(512 * 1024);
        adjust(&mut config);
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create compile cache directory {}: {e}",
                    dir.display()
                )
            })?;
            let dir = dir
                .canonicalize()
                .map_err(|e| anyhow::anyhow!("compile cache directory {}: {e}", dir.display()))?;
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
            .spawn(move || {
                // The epoch follows the clock, not the number of wake-ups: a ticker woken late
                // (a busy machine) catches up, so a deadline in ticks stays a deadline in time.
                let started = std::time::Instant::now();
                let mut ticks: u64 = 0;
                while let Some(engine) = weak.upgrade() {
                    let due = (started.elapsed().as_micros() / EPOCH_TICK.as_micros()) as u64;
                    while ticks < due {
                        engine.increment_epoch();
                        ticks += 1;
                    }
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
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

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Module, Store, Trap};

    /// A core module whose `spin` export never returns.
    const SPIN: &str = r#"(module (func (export "spin") (loop (br 0))))"#;

    fn compile(engine: &PluginEngine) -> Module {
        Module::new(engine.engine(), wat::parse_str(SPIN).unwrap()).unwrap()
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
        let mut store = Store::new(again.engine(), ());
        store.set_epoch_deadline(PluginEngine::ticks(Duration::from_millis(5)));
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "spin")
            .unwrap();
        let trap = spin.call(&mut store, ()).unwrap_err();
        assert_eq!(trap.downcast_ref::<Trap>(), Some(&Trap::Interrupt));

        // Other settings (here: code compiled without the epoch checks deadlines rely on): the
        // cached code is not taken; it is compiled again for these settings.
        let other = PluginEngine::build(Some(dir.path()), |c| {
            c.epoch_interruption(false);
        })
        .unwrap();
        compile(&other);
        assert_eq!(other.cache_stats(), Some((0, 1)), "not reused");
    }
}
