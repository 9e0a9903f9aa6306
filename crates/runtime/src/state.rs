//! The per-batch store state: WASI context that grants nothing, the resource
//! table, the whole-instance memory limiter, the app's identity for the
//! `node` and `domains` imports, and the log sink for the `log` import.
//!
//! Lifetime: one [`HostState`] per batch, created in
//! [`crate::App::invoke_blocking`] and dropped with the store.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::weir::handler::{domains, log, node};
use crate::domain::DomainSet;
use crate::guest_log::LogSink;
use crate::limits::{Limits, MAX_CORE_INSTANCES_PER_STORE};

/// What the `node` and `domains` imports answer for one app on this node.
#[derive(Debug, Clone)]
pub struct AppIdentity {
    /// App name, e.g. `"mail1"`.
    pub app: Arc<str>,
    /// This node's id.
    pub node_id: u32,
    /// This node's name.
    pub node_name: String,
    /// The app's domains.
    pub domains: DomainSet,
    /// Whether the app is granted the real clocks (else frozen ones).
    pub clocks: bool,
    /// Its key-value grant and store (the `kv` import).
    pub kv: Arc<crate::kv::KvAccess>,
}

/// The clock an app without the `clocks` grant sees: always the Unix epoch
/// (wall) or 0 (monotonic), with a one-second resolution. Time cannot be
/// measured with it, so neither can other apps' or the host's activity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Sums the sizes of all linear memories of the instance and refuses growth
/// past the app's cap (wasmtime's `StoreLimits` caps each memory separately).
#[derive(Debug)]
pub(crate) struct InstanceLimiter {
    pub(crate) memory_limit: usize,
    pub(crate) memory_total: usize,
    pub(crate) memory_high_water: usize,
    pub(crate) table_elements: usize,
    /// Set when a growth was refused: `(limit, requested)`.
    pub(crate) memory_exceeded: Option<(usize, usize)>,
    pub(crate) table_exceeded: Option<(usize, usize)>,
}

/// Marker error returned from the limiter so the trap maps to
/// [`crate::InvokeError::MemoryLimit`].
#[derive(Debug, thiserror::Error)]
#[error("linear memory limit exceeded")]
pub(crate) struct MemoryLimitExceeded;

/// Marker error for a guest still blocked in a WASI wait (`poll`,
/// `pollable.block`) at its batch's deadline: the wait is abandoned and the
/// guest stopped, classified as [`crate::InvokeError::Timeout`].
#[derive(Debug, thiserror::Error)]
#[error("batch deadline reached while the guest waited in wasi:io/poll")]
pub(crate) struct DeadlineReached;

/// The `wasi:io/poll` version wasmtime-wasi 48 links (guests importing an
/// older 0.2 minor version are matched to it).
const WASI_IO_POLL: &str = "wasi:io/poll@0.2.12";

/// Replace `wasi:io/poll`'s two blocking functions, `poll` and
/// `[method]pollable.block`, with versions bounded by the batch's deadline.
/// Epoch interruption only stops a guest while wasm runs; a guest waiting in
/// the host (a clock subscription of an hour, `u64::MAX`, a stream that never
/// becomes ready) would hold its thread and pool slot for as long as it
/// asked. Every blocking WASI call weir links waits in one of these two
/// (stdin is empty, stdout and stderr are always writable, there are no
/// files or sockets), so bounding them bounds every wait: at the deadline
/// the wait is dropped and the guest is stopped with
/// [`crate::InvokeError::Timeout`]. The warm path is unchanged (no async
/// calls, no per-call cost); see README "Deadlines".
pub(crate) fn bound_blocking_waits(
    linker: &mut wasmtime::component::Linker<HostState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    use wasmtime_wasi::p2::bindings::io::poll::{Host as _, HostPollable as _};
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_IO_POLL)?;
    poll.func_wrap(
        "poll",
        |mut store: wasmtime::StoreContextMut<'_, HostState>,
         (pollables,): (Vec<Resource<DynPollable>>,)| {
            let state = store.data_mut();
            let deadline = tokio::time::Instant::from_std(state.deadline);
            let table = &mut state.table;
            // The timer is made inside the runtime `in_tokio` enters.
            match wasmtime_wasi::runtime::in_tokio(async {
                tokio::time::timeout_at(deadline, table.poll(pollables)).await
            }) {
                Ok(ready) => Ok((ready?,)),
                Err(_) => Err(wasmtime::Error::new(DeadlineReached)),
            }
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: wasmtime::StoreContextMut<'_, HostState>,
         (pollable,): (Resource<DynPollable>,)| {
            let state = store.data_mut();
            let deadline = tokio::time::Instant::from_std(state.deadline);
            let table = &mut state.table;
            match wasmtime_wasi::runtime::in_tokio(async {
                tokio::time::timeout_at(deadline, table.block(pollable)).await
            }) {
                Ok(done) => done,
                Err(_) => Err(wasmtime::Error::new(DeadlineReached)),
            }
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Marker error for a refused table growth.
#[derive(Debug, thiserror::Error)]
#[error("table element limit exceeded")]
pub(crate) struct TableLimitExceeded;

impl wasmtime::ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_total - current.min(self.memory_total) + desired;
        // Past the slot's maximum the growth would fail quietly (-1); stop the
        // guest with the typed error instead.
        if total > self.memory_limit || maximum.is_some_and(|m| desired > m) {
            self.memory_exceeded = Some((self.memory_limit, total));
            return Err(wasmtime::Error::new(MemoryLimitExceeded));
        }
        self.memory_total = total;
        self.memory_high_water = self.memory_high_water.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements || maximum.is_some_and(|m| desired > m) {
            self.table_exceeded = Some((self.table_elements, desired));
            return Err(wasmtime::Error::new(TableLimitExceeded));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES_PER_STORE
    }

    fn tables(&self) -> usize {
        MAX_CORE_INSTANCES_PER_STORE
    }

    fn memories(&self) -> usize {
        MAX_CORE_INSTANCES_PER_STORE
    }
}

/// Store data for one batch.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: InstanceLimiter,
    pub(crate) identity: Arc<AppIdentity>,
    pub(crate) log: LogSink,
    /// What this batch's `kv` calls used.
    pub(crate) kv_budget: crate::kv::KvBudget,
    /// Whether this batch's thread was demoted (see
    /// [`crate::limits::LONG_BATCH_TICKS`]).
    pub(crate) demoted: bool,
    /// When the batch's deadline passes (bounds WASI waits).
    pub(crate) deadline: std::time::Instant,
}

impl HostState {
    /// State for one batch of the app `identity` under `limits`.
    pub(crate) fn new(identity: Arc<AppIdentity>, limits: &Limits, log: LogSink) -> Self {
        // Deny by capability: no preopened directories, no environment or
        // arguments, no sockets or name lookup, empty stdin; stdout and stderr
        // go into the log budget. Clocks are frozen unless granted; random is
        // provided.
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(log.stdio(false))
            .stderr(log.stdio(true))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if !identity.clocks {
            builder.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        let wasi = builder.build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.resource_table_entries);
        Self {
            wasi,
            table,
            limiter: InstanceLimiter {
                memory_limit: limits.memory_bytes,
                memory_total: 0,
                memory_high_water: 0,
                table_elements: limits.table_elements,
                memory_exceeded: None,
                table_exceeded: None,
            },
            identity,
            log,
            kv_budget: crate::kv::KvBudget::default(),
            demoted: false,
            deadline: std::time::Instant::now()
                + std::time::Duration::from_millis(limits.deadline_ms),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl node::Host for HostState {
    fn id(&mut self) -> u32 {
        self.identity.node_id
    }

    fn name(&mut self) -> String {
        self.identity.node_name.clone()
    }

    fn is_local(&mut self, origin: Option<u32>) -> bool {
        origin == Some(self.identity.node_id)
    }
}

impl domains::Host for HostState {
    fn mine(&mut self) -> Vec<String> {
        self.identity.domains.listed().to_vec()
    }

    fn is_mine(&mut self, domain: String) -> bool {
        self.identity.domains.is_mine(&domain)
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        self.log.line(level, &message);
    }
}

impl crate::bindings::weir::handler::types::Host for HostState {}

/// `weir:handler@0.1.0`'s imports answer exactly as 0.2.0's.
mod v0_1 {
    use super::HostState;
    use crate::bindings::v0_1::weir::handler::{domains, log, node, types};
    use crate::bindings::weir::handler as current;

    impl node::Host for HostState {
        fn id(&mut self) -> u32 {
            current::node::Host::id(self)
        }

        fn name(&mut self) -> String {
            current::node::Host::name(self)
        }

        fn is_local(&mut self, origin: Option<u32>) -> bool {
            current::node::Host::is_local(self, origin)
        }
    }

    impl domains::Host for HostState {
        fn mine(&mut self) -> Vec<String> {
            current::domains::Host::mine(self)
        }

        fn is_mine(&mut self, domain: String) -> bool {
            current::domains::Host::is_mine(self, domain)
        }
    }

    impl log::Host for HostState {
        fn log(&mut self, level: log::Level, message: String) {
            use current::log::Level as L;
            let level = match level {
                log::Level::Trace => L::Trace,
                log::Level::Debug => L::Debug,
                log::Level::Info => L::Info,
                log::Level::Warn => L::Warn,
                log::Level::Error => L::Error,
            };
            current::log::Host::log(self, level, message);
        }
    }

    impl types::Host for HostState {}
}
