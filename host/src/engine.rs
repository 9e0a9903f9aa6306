//! The process-wide runtime: one wasmtime [`Engine`], one [`Linker`], one epoch
//! ticker thread, the precompiled-artifact cache and the instance-pool
//! permits.
//!
//! Lifetime: created once per process ([`Runtime::new`]); apps are deployed
//! into it ([`Runtime::deploy`]); batches run on fresh stores
//! ([`crate::App::invoke`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::cache::ArtifactCache;
use crate::error::DeployError;
use crate::limits::{DEFAULT_MEMORY_BYTES, EPOCH_TICK};
use crate::state::HostState;

/// Default number of component instances that may be live at once (the
/// pooling allocator's slots and the invocation permits): 64.
pub const DEFAULT_POOL_INSTANCES: u32 = 64;

/// Default size of one linear-memory slot in the pool, the most any app may
/// set as `memory_bytes`: 256 MiB.
pub const DEFAULT_MAX_MEMORY_BYTES: usize = 256 << 20;

/// Default maximum wasm stack: 512 KiB (wasmtime's default). Engine-wide: a
/// deeper recursion traps with [`crate::InvokeError::StackOverflow`].
pub const DEFAULT_MAX_WASM_STACK_BYTES: usize = 512 << 10;

/// Default cap on a component's size before compiling: 64 MiB (a
/// componentize-py handler is about 18 MB).
pub const DEFAULT_MAX_COMPONENT_BYTES: usize = 64 << 20;

/// Default time allowed to compile one component: 120 s (an 18 MB Python
/// component compiles in about 10 s on 2 cores).
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// Core instances per component instance budgeted in the pool: 8 (a Rust
/// component has about 4).
pub const POOL_CORE_INSTANCES_PER_COMPONENT: u32 = 8;

/// Most core instances one component may contain: 64 (a componentize-py
/// component has about 20).
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;

/// Linear memories budgeted per component instance in the pool: 2.
pub const POOL_MEMORIES_PER_COMPONENT: u32 = 2;

/// Tables budgeted per component instance in the pool: 8 (wit-component
/// shim modules each carry a table).
pub const POOL_TABLES_PER_COMPONENT: u32 = 8;

/// Linear-memory bytes each pool slot keeps resident between instances: 2 MiB.
/// Resetting them with `memset` instead of `madvise` saves page faults on the
/// next instantiation; a Rust handler's whole memory (about 1.1 MiB) fits.
pub const POOL_MEMORY_KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// Table bytes each pool slot keeps resident between instances: 64 KiB.
pub const POOL_TABLE_KEEP_RESIDENT_BYTES: usize = 64 << 10;

/// Instances each app may use at once: 1 (batches of an app run in order).
pub const INSTANCES_PER_APP: u32 = 1;

/// Process-wide engine settings. Every field has a `DEFAULT_*` constant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Component instances live at once. Default [`DEFAULT_POOL_INSTANCES`].
    pub pool_instances: u32,
    /// Use the pooling allocator (fast instantiation, reserved address
    /// space). If the pool cannot be created, the runtime falls back to
    /// on-demand allocation and logs a warning. Default `true`.
    pub pooling: bool,
    /// Linear-memory slot size in bytes. Default [`DEFAULT_MAX_MEMORY_BYTES`].
    pub max_memory_bytes: usize,
    /// Maximum wasm stack in bytes. Default [`DEFAULT_MAX_WASM_STACK_BYTES`].
    pub max_wasm_stack_bytes: usize,
    /// Cap on component size in bytes. Default
    /// [`DEFAULT_MAX_COMPONENT_BYTES`].
    pub max_component_bytes: usize,
    /// Compile timeout in milliseconds. Default [`DEFAULT_COMPILE_TIMEOUT`].
    pub compile_timeout_ms: u64,
    /// Directory for precompiled artifacts; `None` keeps them in memory only.
    /// Default `None`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            pool_instances: DEFAULT_POOL_INSTANCES,
            pooling: true,
            max_memory_bytes: DEFAULT_MAX_MEMORY_BYTES,
            max_wasm_stack_bytes: DEFAULT_MAX_WASM_STACK_BYTES,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            compile_timeout_ms: DEFAULT_COMPILE_TIMEOUT.as_millis() as u64,
            cache_dir: None,
        }
    }
}

impl EngineConfig {
    /// Every problem with this configuration (empty if valid).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.pool_instances == 0 {
            p.push("pool_instances must be greater than 0".to_owned());
        }
        if self.max_memory_bytes < DEFAULT_MEMORY_BYTES {
            p.push(format!(
                "max_memory_bytes = {} is below the default per-app memory_bytes of {DEFAULT_MEMORY_BYTES}",
                self.max_memory_bytes
            ));
        }
        if self.max_wasm_stack_bytes < 64 << 10 {
            p.push(format!(
                "max_wasm_stack_bytes = {} is below 64 KiB",
                self.max_wasm_stack_bytes
            ));
        }
        if self.compile_timeout_ms == 0 {
            p.push("compile_timeout_ms must be greater than 0".to_owned());
        }
        p
    }
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) config: EngineConfig,
    pub(crate) cache: ArtifactCache,
    pub(crate) permits: Arc<tokio::sync::Semaphore>,
    pub(crate) deployed: AtomicU32,
    pooling: bool,
}

/// The process-wide runtime. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .field("pooling", &self.inner.pooling)
            .finish_non_exhaustive()
    }
}

fn base_config(config: &EngineConfig) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true)
        .concurrency_support(false)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(config.max_wasm_stack_bytes)
        .memory_init_cow(true)
        .parallel_compilation(true);
    c
}

fn pooling_config(config: &EngineConfig) -> PoolingAllocationConfig {
    let n = config.pool_instances;
    let mut p = PoolingAllocationConfig::default();
    p.total_component_instances(n)
        .total_core_instances(n.saturating_mul(POOL_CORE_INSTANCES_PER_COMPONENT))
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .total_memories(n.saturating_mul(POOL_MEMORIES_PER_COMPONENT))
        .max_memories_per_component(POOL_MEMORIES_PER_COMPONENT)
        .total_tables(n.saturating_mul(POOL_TABLES_PER_COMPONENT))
        .max_tables_per_component(POOL_TABLES_PER_COMPONENT)
        .table_elements(crate::limits::MAX_TABLE_ELEMENTS)
        .max_memory_size(config.max_memory_bytes)
        .linear_memory_keep_resident(POOL_MEMORY_KEEP_RESIDENT_BYTES)
        .table_keep_resident(POOL_TABLE_KEEP_RESIDENT_BYTES)
        .pagemap_scan(wasmtime::Enabled::Auto)
        .total_stacks(0);
    p
}

impl Runtime {
    /// Create the engine (cranelift, epoch interruption, fuel, pooling
    /// allocator sized from `config`, component-model concurrency off), link
    /// WASI p2 with a deny-all context and the `weir:handler` imports, and
    /// start the epoch ticker thread, which stops once the engine is dropped.
    ///
    /// # Errors
    ///
    /// [`DeployError::Config`] with every problem in `config`;
    /// [`DeployError::Cache`] if the cache directory cannot be created. A
    /// pool that cannot be reserved is not an error: the runtime logs a
    /// warning and allocates on demand.
    pub fn new(config: EngineConfig) -> Result<Self, DeployError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(DeployError::Config(problems));
        }
        let (engine, pooling) = if config.pooling {
            let mut c = base_config(&config);
            c.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(&config)));
            match Engine::new(&c) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        pool_instances = config.pool_instances,
                        "pooling allocator unavailable, falling back to on-demand allocation"
                    );
                    (Self::on_demand(&config)?, false)
                }
            }
        } else {
            (Self::on_demand(&config)?, false)
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| DeployError::Config(vec![format!("failed to link WASI: {e}")]))?;
        crate::bindings::Handler::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| DeployError::Config(vec![format!("failed to link weir:handler: {e}")]))?;
        let cache = ArtifactCache::new(config.cache_dir.clone())?;
        spawn_epoch_ticker(&engine);
        tracing::info!(
            pool_instances = config.pool_instances,
            pooling,
            max_memory_bytes = config.max_memory_bytes,
            "runtime ready"
        );
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                permits: Arc::new(tokio::sync::Semaphore::new(config.pool_instances as usize)),
                engine,
                linker,
                cache,
                config,
                deployed: AtomicU32::new(0),
                pooling,
            }),
        })
    }

    fn on_demand(config: &EngineConfig) -> Result<Engine, DeployError> {
        Engine::new(&base_config(config))
            .map_err(|e| DeployError::Config(vec![format!("failed to create engine: {e}")]))
    }

    /// The wasmtime engine (for benches and tools that compare against raw
    /// wasmtime).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The engine configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// True if the pooling allocator is in use (false after a fallback).
    pub fn pooling(&self) -> bool {
        self.inner.pooling
    }

    /// Apps currently deployed.
    pub fn deployed_apps(&self) -> u32 {
        self.inner.deployed.load(Ordering::Relaxed)
    }
}

/// Start the thread that advances the engine's epoch every [`EPOCH_TICK`]. It
/// holds only a weak reference and exits within one tick of the engine being
/// dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        });
    if let Err(e) = spawned {
        // Without the ticker deadlines never fire; fuel still bounds guests.
        tracing::error!(error = %e, "failed to start the epoch ticker: deadlines disabled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_defaults() {
        let c = EngineConfig::default();
        assert_eq!(c.pool_instances, 64);
        assert!(c.pooling);
        assert_eq!(c.max_memory_bytes, 256 * 1024 * 1024);
        assert_eq!(c.max_wasm_stack_bytes, 512 * 1024);
        assert_eq!(c.max_component_bytes, 64 * 1024 * 1024);
        assert_eq!(c.compile_timeout_ms, 120_000);
        assert_eq!(c.cache_dir, None);
    }

    #[test]
    fn config_problems_all_at_once() {
        let c = EngineConfig {
            pool_instances: 0,
            compile_timeout_ms: 0,
            max_memory_bytes: 1,
            ..Default::default()
        };
        assert_eq!(c.problems().len(), 3, "{:?}", c.problems());
        let err = Runtime::new(c).unwrap_err();
        assert!(matches!(err, DeployError::Config(p) if p.len() == 3));
    }

    #[test]
    fn ticker_stops_when_engine_dropped() {
        let engine = Engine::default();
        let weak = engine.weak();
        spawn_epoch_ticker(&engine);
        drop(engine);
        std::thread::sleep(EPOCH_TICK * 3);
        assert!(weak.upgrade().is_none());
    }
}
