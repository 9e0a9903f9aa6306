//! # weir-runtime: the sandbox
//!
//! weir's sandbox plane, with no NATS, HTTP or Redis in its dependency tree
//! (`cargo tree -p weir-runtime`): one wasmtime [`Engine`], one [`Linker`],
//! one epoch ticker thread, the precompiled-artifact cache, the
//! instance-pool permits and the threads batches run on. An embedder that
//! wants only to run `weir:handler` components on batches (a test harness, a
//! UDF host) depends on this crate alone; the event plane (`weir-host`)
//! feeds it batches from NATS.
//!
//! Pool slots are shared, not reserved per app: any number of apps deploy
//! into one pool, and a batch waits (in arrival order, so no app starves
//! another) for a free slot. What must fit is memory: at most
//! `pool_instances` instances live at once, each capped at its app's
//! `memory_bytes` ([`memory_problem`]).
//!
//! Lifetime: created once per process ([`Runtime::new`]); apps are deployed
//! into it ([`Runtime::deploy`]); batches run on fresh stores
//! ([`App::invoke`]).
//!
//! Modules, in the order a batch meets them:
//!
//! - `bindings`: the WIT contract (`weir:handler@0.2.0`, and 0.1.0 for old
//!   components); its types are re-exported here ([`Event`], [`Outcome`],
//!   [`Effect`], [`BatchResult`]);
//! - [`limits`]: every per-app cap with its default ([`Limits`]);
//! - [`check`]: what weir grants for each import ([`CheckReport`]);
//! - `cache`: the precompiled-artifact cache (a private directory,
//!   `weir-private-dir`);
//! - [`error`]: [`DeployError`] and [`InvokeError`];
//! - [`deploy`]: [`AppSpec`], [`Runtime::check`] and [`Runtime::deploy`];
//! - [`domain`]: UTS-46 domain normalisation and the app's [`DomainSet`];
//! - `state`: the store's state and the `node`, `domains` and `log` imports;
//! - [`guest_log`]: guest logging under a budget;
//! - [`kv`]: the `kv` import's grant, budget and the [`kv::KvBackend`]
//!   trait the event plane implements (JetStream KV in `weir-host`); `kv_host`:
//!   the import's calls;
//! - [`invoke`]: [`App::invoke`], one fresh store and instance per batch,
//!   the answer validated into [`Handled`];
//! - [`threads`] and `priority`: the OS threads batches run on, demoted
//!   when a batch runs long (a demoted thread is retired);
//! - [`raw`]: the least state and linker to instantiate a handler outside
//!   weir (the benches' floors).

mod bindings;
pub mod check;
pub mod deploy;
pub mod domain;
pub mod error;
pub mod guest_log;
pub mod invoke;
pub mod kv;
mod kv_host;
pub mod limits;
pub mod threads;

pub(crate) mod cache;
pub use cache::default_cache_dir;
pub mod priority;
pub(crate) mod state;

pub use check::{CheckReport, Grant, ImportReport};
pub use deploy::AppSpec;
pub use error::{DeployError, InvokeError};
pub use invoke::{App, Handled, Invocation, InvokeStats};
pub use limits::Limits;

/// The WIT packages a component may target, newest first: the current
/// contract (`wit/handler.wit`) and the previous one, still linked
/// (`wit/compat/0.1.0`).
pub const WIT_PACKAGES: &[&str] = &["weir:handler@0.2.0", "weir:handler@0.1.0"];

/// The wasmtime release weir is built on (the workspace pins it exactly;
/// a test checks this against `Cargo.lock`).
pub const WASMTIME_VERSION: &str = "48.0.10";

pub use bindings::{BatchResult, Effect, Event, Message, Outcome};
pub use cache::LoadSource;
pub use domain::DomainSet;
pub use state::AppIdentity;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use cache::ArtifactCache;
use limits::{DEFAULT_MEMORY_BYTES, EPOCH_TICK};
use state::HostState;

/// Default number of component instances that may be live at once (the
/// pooling allocator's slots and the invocation permits), shared by all
/// apps: 64. A 2-core node runs 2 batches at a time; the rest is room for
/// batches that wait on I/O (a guest blocked in a WASI call until its
/// deadline) without holding up other apps.
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

/// Linear-memory bytes each pool slot keeps resident between instances when
/// the reset can scan for dirty pages (`PAGEMAP_SCAN`, see [`ResetPolicy`]):
/// 2 MiB. Resetting the pages a guest wrote with `memset` instead of
/// `madvise` saves page faults on the next instantiation; a Rust handler's
/// whole memory (about 1.1 MiB) fits.
pub const POOL_MEMORY_KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// Table bytes each pool slot keeps resident between instances: 64 KiB.
pub const POOL_TABLE_KEEP_RESIDENT_BYTES: usize = 64 << 10;

/// Process-wide engine settings. Every field has a `DEFAULT_*` constant.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
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
    /// Directory for precompiled artifacts; `None` keeps them in memory only
    /// (in-process use), unless the host resolves [`EngineConfig::disk_cache`].
    /// Default `None`.
    pub cache_dir: Option<PathBuf>,
    /// Keep precompiled artifacts on disk in the host's state directory when
    /// `cache_dir` is not set: `weir run` (the daemon) then uses
    /// [`default_cache_dir`], so a restart deserializes instead of
    /// compiling (a Python or JavaScript component costs seconds to
    /// compile, see the README's per-language table). `false` keeps them in
    /// memory only. A [`Runtime`] built directly ignores it. Default `true`.
    pub disk_cache: bool,
    /// `weir run` reloads by itself when the config file or a component
    /// file changes on disk (debounced; see the binary's `watch` module).
    /// Default `false` (reload with SIGHUP or `weir reload`).
    pub watch: bool,
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
            disk_cache: true,
            watch: false,
        }
    }
}

impl EngineConfig {
    /// This configuration as the daemon runs it: with `disk_cache` and no
    /// `cache_dir`, the cache directory is [`default_cache_dir`].
    pub fn for_host(&self) -> Self {
        let mut config = self.clone();
        if config.disk_cache && config.cache_dir.is_none() {
            config.cache_dir = Some(cache::default_cache_dir());
        }
        config
    }

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

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    config: EngineConfig,
    cache: ArtifactCache,
    permits: Arc<tokio::sync::Semaphore>,
    threads: Arc<threads::BatchThreads>,
    pooling: bool,
    reset: ResetPolicy,
}

/// The process-wide runtime. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.inner.config)
            .field("pooling", &self.inner.pooling)
            .field("reset", &self.inner.reset)
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

/// How pool slots are reset between instances.
///
/// wasmtime 48's `PAGEMAP_SCAN` reset looks only at pages that are present:
/// a dirty page that was swapped out is neither reset nor decommitted, and
/// the next instance in the slot could read the previous one's data
/// (wasmtime pull request #14357, open as of the pinned 48.0.8). That needs
/// swap. So weir reads `/proc/swaps` at start:
///
/// - no active swap area: [`ResetPolicy::Scan`], the scan and
///   [`POOL_MEMORY_KEEP_RESIDENT_BYTES`] kept resident (no page of the
///   process can be swapped out);
/// - swap active, or `/proc/swaps` unreadable: [`ResetPolicy::Decommit`], no
///   scan and nothing kept resident, so every used page is decommitted with
///   `madvise`, swapped ones included. (Keeping 2 MiB resident without the
///   scan means a 2 MiB `memset` per batch, slower still.)
///
/// Swap enabled after weir started is not seen: restart weir after adding
/// swap. Costs on the invoke bench are in the README ("Sandbox freshness").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetPolicy {
    /// `PAGEMAP_SCAN` for dirty pages, 2 MiB kept resident (no swap).
    Scan,
    /// Decommit every used page (swap active or unknown).
    Decommit,
}

impl ResetPolicy {
    /// The policy for a node whose `/proc/swaps` reads `swaps` (`None`:
    /// unreadable).
    pub fn for_swaps(swaps: Option<&str>) -> Self {
        match swaps {
            // The header line only: no swap area.
            Some(text) if text.lines().skip(1).all(|l| l.trim().is_empty()) => Self::Scan,
            _ => Self::Decommit,
        }
    }

    /// The policy for this node.
    pub fn for_this_node() -> Self {
        Self::for_swaps(std::fs::read_to_string("/proc/swaps").ok().as_deref())
    }

    fn keep_resident(self) -> usize {
        match self {
            Self::Scan => POOL_MEMORY_KEEP_RESIDENT_BYTES,
            Self::Decommit => 0,
        }
    }
}

fn pooling_config(config: &EngineConfig, reset: ResetPolicy) -> PoolingAllocationConfig {
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
        .linear_memory_keep_resident(reset.keep_resident())
        .table_keep_resident(POOL_TABLE_KEEP_RESIDENT_BYTES)
        .pagemap_scan(match reset {
            ResetPolicy::Scan => wasmtime::Enabled::Auto,
            ResetPolicy::Decommit => wasmtime::Enabled::No,
        })
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
        let reset = ResetPolicy::for_this_node();
        let (engine, pooling) = if config.pooling {
            let mut c = base_config(&config);
            c.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
                &config, reset,
            )));
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
        crate::bindings::StatefulHandler::add_to_linker::<_, HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| DeployError::Config(vec![format!("failed to link weir:handler: {e}")]))?;
        link_v0_1(&mut linker).map_err(|e| {
            DeployError::Config(vec![format!("failed to link weir:handler@0.1.0: {e}")])
        })?;
        crate::state::bound_blocking_waits(&mut linker).map_err(|e| {
            DeployError::Config(vec![format!(
                "failed to link the bounded wasi:io/poll: {e}"
            )])
        })?;
        let cache = ArtifactCache::new(config.cache_dir.clone())?;
        spawn_epoch_ticker(&engine);
        tracing::info!(
            pool_instances = config.pool_instances,
            pooling,
            reset = ?reset,
            max_memory_bytes = config.max_memory_bytes,
            "runtime ready"
        );
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                permits: Arc::new(tokio::sync::Semaphore::new(config.pool_instances as usize)),
                threads: Arc::default(),
                engine,
                linker,
                cache,
                config,
                pooling,
                reset,
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

    /// How pool slots are reset between instances on this node.
    pub fn reset_policy(&self) -> ResetPolicy {
        self.inner.reset
    }

    /// Batch threads retired so far because a long batch left them demoted
    /// and their priority could not be restored (see [`threads`]).
    pub fn retired_threads(&self) -> u64 {
        self.inner.threads.retired()
    }
}

/// This node's physical memory in bytes (`MemTotal` of `/proc/meminfo`);
/// `None` where it cannot be read.
pub fn node_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The memory arithmetic of a pool: `pool_instances` live instances, each
/// of at most `largest_app_memory` bytes of linear memory (the largest
/// `memory_bytes` of the apps), must fit in `node_memory` bytes. Returns the
/// problem with the arithmetic, or `None` if it fits (or the node's memory
/// is unknown).
pub fn memory_problem(
    pool_instances: u32,
    largest_app_memory: usize,
    node_memory: Option<u64>,
) -> Option<String> {
    let node = node_memory?;
    let need = u64::from(pool_instances).saturating_mul(largest_app_memory as u64);
    (need > node).then(|| {
        format!(
            "engine.pool_instances = {pool_instances} instances × {} MiB (the largest app memory_bytes) = {} MiB of linear memory at most, more than this node's {} MiB (MemTotal): lower engine.pool_instances or the apps' memory_bytes",
            largest_app_memory >> 20,
            need >> 20,
            node >> 20
        )
    })
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

/// Link `weir:handler@0.1.0`'s imports (see `bindings`).
fn link_v0_1(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use crate::bindings::v0_1::weir::handler::{domains, log, node};
    node::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    domains::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    log::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
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
    fn the_host_keeps_artifacts_on_disk_unless_told_not_to() {
        let default = EngineConfig::default();
        assert!(default.disk_cache);
        assert_eq!(default.for_host().cache_dir, Some(default_cache_dir()));
        let memory_only = EngineConfig {
            disk_cache: false,
            ..EngineConfig::default()
        };
        assert_eq!(memory_only.for_host().cache_dir, None);
        let chosen = EngineConfig {
            cache_dir: Some("/srv/weir/artifacts".into()),
            ..EngineConfig::default()
        };
        assert_eq!(
            chosen.for_host().cache_dir,
            Some(PathBuf::from("/srv/weir/artifacts"))
        );
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
    fn the_dirty_page_scan_is_used_only_without_swap() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert_eq!(ResetPolicy::for_swaps(Some(header)), ResetPolicy::Scan);
        let with_swap = format!("{header}/dev/zram0  partition\t4194300\t0\t100\n");
        assert_eq!(
            ResetPolicy::for_swaps(Some(&with_swap)),
            ResetPolicy::Decommit
        );
        assert_eq!(ResetPolicy::for_swaps(None), ResetPolicy::Decommit);
        assert_eq!(ResetPolicy::Decommit.keep_resident(), 0);
        assert_eq!(ResetPolicy::Scan.keep_resident(), 2 << 20);
    }

    #[test]
    fn memory_arithmetic() {
        let gib = 1u64 << 30;
        assert_eq!(memory_problem(64, 64 << 20, Some(4 * gib)), None);
        let p = memory_problem(64, 64 << 20, Some(2 * gib)).unwrap();
        assert!(
            p.contains("64 instances × 64 MiB (the largest app memory_bytes) = 4096 MiB of linear memory at most, more than this node's 2048 MiB"),
            "{p}"
        );
        assert_eq!(memory_problem(64, 64 << 20, None), None);
        assert!(node_memory_bytes().is_some_and(|m| m > 0));
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

#[doc(hidden)]
pub mod raw {
    use wasmtime::component::{HasSelf, Linker, ResourceTable};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    pub use crate::bindings::HandlerPre;
    use crate::bindings::weir::handler::{domains, log, node, types};

    /// The least state that can instantiate a handler: node 1, no domains
    /// unless [`RawState::for_app`] gives some.
    pub struct RawState {
        wasi: WasiCtx,
        table: ResourceTable,
        node: u32,
        domains: crate::DomainSet,
    }

    impl Default for RawState {
        fn default() -> Self {
            Self::for_app(1, crate::DomainSet::default())
        }
    }

    impl RawState {
        /// A state whose `node` and `domains` imports answer for an app on
        /// node `node` serving `domains` (what the storm bench's warm
        /// instances need to decide as weir's do).
        pub fn for_app(node: u32, domains: crate::DomainSet) -> Self {
            Self {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
                node,
                domains,
            }
        }
    }

    impl WasiView for RawState {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    impl node::Host for RawState {
        fn id(&mut self) -> u32 {
            self.node
        }
        fn name(&mut self) -> String {
            String::new()
        }
        fn is_local(&mut self, origin: Option<u32>) -> bool {
            origin == Some(self.node)
        }
    }

    impl domains::Host for RawState {
        fn mine(&mut self) -> Vec<String> {
            self.domains.listed().to_vec()
        }
        fn is_mine(&mut self, domain: String) -> bool {
            self.domains.is_mine(&domain)
        }
    }

    impl log::Host for RawState {
        fn log(&mut self, _level: log::Level, _message: String) {}
    }

    impl types::Host for RawState {}

    /// A linker with WASI p2 and the `weir:handler@0.2.0` imports of the
    /// `handler` world (no `kv`) for [`RawState`].
    ///
    /// # Errors
    ///
    /// If linking fails (a wasmtime bug).
    pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<RawState>> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        node::add_to_linker::<_, HasSelf<RawState>>(&mut linker, |s| s)?;
        domains::add_to_linker::<_, HasSelf<RawState>>(&mut linker, |s| s)?;
        log::add_to_linker::<_, HasSelf<RawState>>(&mut linker, |s| s)?;
        Ok(linker)
    }
}

/// A current-thread tokio runtime for unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
