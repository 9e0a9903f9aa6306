//! Errors at the crate's public boundaries, one enum per phase: deploying a
//! component ([`DeployError`]) and invoking it on a batch ([`InvokeError`]).

use std::path::PathBuf;
use std::time::Duration;

use wasmtime::Trap;

use crate::limits::{Limits, MAX_TRAP_MESSAGE_BYTES};
use crate::state::{DeadlineReached, HostState, MemoryLimitExceeded, TableLimitExceeded};

/// Why a component could not be deployed (loaded, checked, prepared) or
/// checked by `weir check`. Deploy errors are configuration problems: they are
/// reported before any event is consumed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The component file could not be read.
    #[error("failed to read component {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component is larger than the engine's `max_component_bytes`.
    #[error("component is {size} bytes, over the cap of {cap} bytes (engine max_component_bytes)")]
    TooLarge {
        /// Size in bytes.
        size: usize,
        /// Cap in bytes.
        cap: usize,
    },
    /// The bytes are not a WebAssembly component (a core module, a truncated
    /// file, random bytes).
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// Compilation failed (invalid component).
    #[error("failed to compile component: {0}")]
    Compile(String),
    /// Compilation took longer than the engine's `compile_timeout`.
    #[error("compiling the component took longer than {0:?}")]
    CompileTimeout(Duration),
    /// The component's imports or exports do not fit the `weir:handler`
    /// world. Every problem is listed, one per line.
    #[error("component refused:\n  {}", .0.join("\n  "))]
    Refused(Vec<String>),
    /// The app's configuration is invalid. Every problem is listed.
    #[error("invalid app configuration:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    /// The precompiled-artifact cache failed (I/O, permissions).
    #[error("artifact cache: {0}")]
    Cache(String),
}

/// Why one batch invocation failed. The instance is discarded in every case;
/// the next batch runs on a fresh one. Every variant but
/// [`InvokeError::Host`] is the guest's doing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The batch used all its fuel.
    #[error("out of fuel: the batch used its {limit} units")]
    OutOfFuel {
        /// Fuel per batch.
        limit: u64,
    },
    /// The batch ran past its wall-clock deadline.
    #[error("timeout: the batch ran past its deadline of {deadline_ms} ms")]
    Timeout {
        /// Deadline in milliseconds.
        deadline_ms: u64,
    },
    /// The instance tried to grow its linear memory past the cap.
    #[error(
        "memory limit: the instance asked for {requested} bytes of linear memory, the cap is {limit}"
    )]
    MemoryLimit {
        /// Cap in bytes (whole instance).
        limit: usize,
        /// Total bytes the failing growth asked for.
        requested: usize,
    },
    /// The guest overflowed the wasm stack (`max_wasm_stack`).
    #[error("stack overflow")]
    StackOverflow,
    /// The guest handed the host more data in one call than the cap.
    #[error("hostcall limit: the guest handed the host more than {limit} bytes in one call")]
    HostcallLimit {
        /// Cap in bytes.
        limit: usize,
    },
    /// The guest created more handles, table elements or instances than
    /// allowed.
    #[error("resource limit: {0}")]
    ResourceLimit(String),
    /// The batch asked for more distinct effects than the cap.
    #[error("effect limit: {requested} distinct effects, the cap is {limit}")]
    EffectLimit {
        /// Cap on distinct effects per batch.
        limit: usize,
        /// Distinct effects asked for.
        requested: usize,
    },
    /// The handler's result breaks the contract (wrong number of outcomes).
    #[error("contract violation: {0}")]
    ContractViolation(String),
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, ...).
    #[error("trap: {0}")]
    Trap(String),
    /// The host failed (a bug or shutdown), not the guest.
    #[error("host error: {0}")]
    Host(String),
}

impl InvokeError {
    /// A short stable name for metrics and logs: `out_of_fuel`, `timeout`,
    /// `memory_limit`, `stack_overflow`, `hostcall_limit`, `resource_limit`,
    /// `effect_limit`, `contract_violation`, `trap`, `host`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OutOfFuel { .. } => "out_of_fuel",
            Self::Timeout { .. } => "timeout",
            Self::MemoryLimit { .. } => "memory_limit",
            Self::StackOverflow => "stack_overflow",
            Self::HostcallLimit { .. } => "hostcall_limit",
            Self::ResourceLimit(_) => "resource_limit",
            Self::EffectLimit { .. } => "effect_limit",
            Self::ContractViolation(_) => "contract_violation",
            Self::Trap(_) => "trap",
            Self::Host(_) => "host",
        }
    }
}

impl InvokeError {
    /// Map a failed instantiate or call to the typed error, using what the
    /// limiter recorded (memory and table caps) and the trap code.
    pub(super) fn classify(e: &wasmtime::Error, state: &HostState, limits: &Limits) -> Self {
        if let Some((limit, requested)) = state.limiter.memory_exceeded {
            return Self::MemoryLimit { limit, requested };
        }
        if let Some((limit, requested)) = state.limiter.table_exceeded {
            return Self::ResourceLimit(format!(
                "table grew to {requested} elements, the cap is {limit}"
            ));
        }
        if e.is::<MemoryLimitExceeded>() {
            return Self::MemoryLimit {
                limit: limits.memory_bytes,
                requested: 0,
            };
        }
        if e.is::<TableLimitExceeded>() {
            return Self::ResourceLimit("table element limit exceeded".into());
        }
        if e.is::<DeadlineReached>() {
            return Self::Timeout {
                deadline_ms: limits.deadline_ms,
            };
        }
        if let Some(trap) = e.downcast_ref::<Trap>() {
            match trap {
                Trap::OutOfFuel => return Self::OutOfFuel { limit: limits.fuel },
                Trap::Interrupt => {
                    return Self::Timeout {
                        deadline_ms: limits.deadline_ms,
                    };
                }
                Trap::StackOverflow => return Self::StackOverflow,
                _ => {}
            }
        }
        let message = format!("{e:#}");
        if message.contains("fuel allocated for hostcalls has been exhausted") {
            return Self::HostcallLimit {
                limit: limits.hostcall_bytes,
            };
        }
        // wasmtime's messages for a full guest handle table and a full host
        // resource table (wasmtime 48: `vm/component/handle_table.rs`,
        // `component/resource_table.rs`).
        if message.contains("store handle limit exceeded")
            || message.contains("resource table has no free keys")
        {
            return Self::ResourceLimit(truncate(message, MAX_TRAP_MESSAGE_BYTES));
        }
        Self::Trap(truncate(message, MAX_TRAP_MESSAGE_BYTES))
    }
}

/// `s` cut to at most `max` bytes at a char boundary, `…` appended if cut.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}
