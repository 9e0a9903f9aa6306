//! Every cap the host puts on a handler, with its default and unit.
//!
//! Per-app caps live in [`Limits`] (overridable per app); process-wide bounds
//! of the engine live in [`crate::EngineConfig`]. Each default is a named
//! constant here so docs, config and tests agree on one number.

use std::time::Duration;

/// Default fuel per batch: 1,000,000,000 units. Wasmtime charges about one
/// unit per wasm instruction, so this is on the order of a second of guest CPU
/// on this project's reference machine (2 cores): far above what an event
/// handler needs (the NS8 examples use under 1,000,000 per batch) and low
/// enough that a runaway loop stops on fuel or on the deadline, whichever
/// comes first.
pub const DEFAULT_FUEL_PER_BATCH: u64 = 1_000_000_000;

/// Default linear memory cap for a whole instance, summed over all its
/// memories: 64 MiB. A Rust handler needs about 1–2 MiB; componentize-py
/// handlers about 20–30 MiB.
pub const DEFAULT_MEMORY_BYTES: usize = 64 << 20;

/// Default wall-clock deadline per batch, instantiation included: 2,000 ms.
/// Enforced with epoch interruption, so a guest is stopped between the
/// deadline and the deadline plus two [`EPOCH_TICK`]s.
pub const DEFAULT_DEADLINE_MS: u64 = 2_000;

/// Default cap on bytes a guest may hand the host in one call (strings and
/// lists lifted into host memory: the batch result, a log line): 8 MiB.
/// Enforced by `Store::set_hostcall_fuel` (wasmtime's default is 128 MiB).
pub const DEFAULT_HOSTCALL_BYTES: usize = 8 << 20;

/// Default cap on live component-model handles and host resource-table
/// entries (WASI streams, pollables) per instance: 1,000 (wasmtime's default
/// for handles is 100,000). A handler needs a handful.
pub const DEFAULT_RESOURCE_TABLE_ENTRIES: usize = 1_000;

/// Default cap on table elements per wasm table: 100,000 (Rust guests use a
/// few hundred for indirect calls).
pub const DEFAULT_TABLE_ELEMENTS: usize = 100_000;

/// Most table elements any app may be given: 100,000, the size of each table
/// slot in the instance pool (wasmtime's pool default is 20,000, which would
/// silently undercut an app's cap).
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Default log lines a handler may write per batch: 100. Excess lines are
/// dropped, counted and summarised in one host line.
pub const DEFAULT_LOG_LINES_PER_BATCH: u32 = 100;

/// Default log bytes a handler may write per batch: 16 KiB.
pub const DEFAULT_LOG_BYTES_PER_BATCH: u64 = 16 << 10;

/// Default log lines per app per minute across batches: 1,000.
pub const DEFAULT_LOG_LINES_PER_MINUTE: u32 = 1_000;

/// Default log bytes per app per minute across batches: 256 KiB.
pub const DEFAULT_LOG_BYTES_PER_MINUTE: u64 = 256 << 10;

/// Longest log line kept, in bytes: longer lines are truncated (and marked
/// with `…`). Also the most stdout/stderr bytes buffered without a newline.
pub const MAX_LOG_LINE_BYTES: usize = 1_024;

/// Default cap on distinct effects per batch, after identical effects
/// collapse: 64. More is a [`crate::InvokeError::EffectLimit`].
pub const DEFAULT_MAX_EFFECTS_PER_BATCH: usize = 64;

/// Default most events per batch (one handler invocation): 64.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// Default most payload bytes per batch: 1 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1 << 20;

/// Default time a partial batch waits for more events: 20 ms.
pub const DEFAULT_LINGER_MS: u64 = 20;

/// Longest reject reason kept, in bytes; longer reasons are truncated at a
/// character boundary. Dead letters carry it, so it stays small.
pub const MAX_REJECT_REASON_BYTES: usize = 1_024;

/// Longest trap message kept in [`crate::InvokeError::Trap`], in bytes.
pub const MAX_TRAP_MESSAGE_BYTES: usize = 2_048;

/// Core instances a single store may create: 64. A Rust component has about
/// 4; a componentize-py component about 20.
pub const MAX_CORE_INSTANCES_PER_STORE: usize = 64;

/// Period of the engine's epoch ticker: 10 ms. Deadlines are rounded up to
/// whole ticks; epoch checks cost about a third more on call-heavy loops
/// regardless of the period, so a short tick is cheap.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Epoch ticks after which a running batch is demoted: 2 (20 ms). Its thread's
/// nice value is raised by [`LONG_BATCH_NICE`] for the rest of the batch, so
/// short batches of other apps and the host's own threads win the CPU from a
/// guest spinning towards its deadline. An app whose last batch ran this long
/// starts its next batch demoted.
pub const LONG_BATCH_TICKS: u64 = 2;

/// How much a long batch's thread is niced: 10 (Linux weight 110 against
/// 1024 at nice 0, so a normal thread gets ~90% of a contended core).
pub const LONG_BATCH_NICE: i32 = 10;

/// Per-app caps on one batch's sandbox. Construct with [`Limits::default`]
/// and override fields as needed; [`Limits::problems`] reports nonsensical
/// values.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel per batch (≈ wasm instructions). Default
    /// [`DEFAULT_FUEL_PER_BATCH`].
    pub fuel: u64,
    /// Linear memory bytes for the whole instance. Default
    /// [`DEFAULT_MEMORY_BYTES`]; at most the engine's `max_memory_bytes`.
    pub memory_bytes: usize,
    /// Wall-clock deadline per batch in milliseconds. Default
    /// [`DEFAULT_DEADLINE_MS`].
    pub deadline_ms: u64,
    /// Bytes a guest may hand the host per call. Default
    /// [`DEFAULT_HOSTCALL_BYTES`].
    pub hostcall_bytes: usize,
    /// Live handles / resource-table entries. Default
    /// [`DEFAULT_RESOURCE_TABLE_ENTRIES`].
    pub resource_table_entries: usize,
    /// Elements per wasm table. Default [`DEFAULT_TABLE_ELEMENTS`].
    pub table_elements: usize,
    /// Log lines per batch. Default [`DEFAULT_LOG_LINES_PER_BATCH`].
    pub log_lines_per_batch: u32,
    /// Log bytes per batch. Default [`DEFAULT_LOG_BYTES_PER_BATCH`].
    pub log_bytes_per_batch: u64,
    /// Log lines per minute for the app. Default
    /// [`DEFAULT_LOG_LINES_PER_MINUTE`].
    pub log_lines_per_minute: u32,
    /// Log bytes per minute for the app. Default
    /// [`DEFAULT_LOG_BYTES_PER_MINUTE`].
    pub log_bytes_per_minute: u64,
    /// Distinct effects per batch. Default [`DEFAULT_MAX_EFFECTS_PER_BATCH`].
    pub max_effects: usize,
    /// Most events per batch. Default [`DEFAULT_MAX_BATCH`]. Used by the event
    /// plane, not the sandbox.
    pub max_batch: usize,
    /// Most payload bytes per batch. Default [`DEFAULT_MAX_BATCH_BYTES`].
    pub max_batch_bytes: usize,
    /// Longest wait for a partial batch to fill, in ms. Default
    /// [`DEFAULT_LINGER_MS`].
    pub linger_ms: u64,
    /// Linger only when there is something to batch with (events already
    /// queued, or a burst in progress), ending at the first millisecond
    /// without a new event; `linger_ms` stays the bound. Default `true`;
    /// `false` always waits up to `linger_ms` for a partial batch (most
    /// batching, more latency). See
    /// `weir_host::nats::AppConsumer::next_batch`.
    pub linger_adaptive: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_FUEL_PER_BATCH,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            deadline_ms: DEFAULT_DEADLINE_MS,
            hostcall_bytes: DEFAULT_HOSTCALL_BYTES,
            resource_table_entries: DEFAULT_RESOURCE_TABLE_ENTRIES,
            table_elements: DEFAULT_TABLE_ELEMENTS,
            log_lines_per_batch: DEFAULT_LOG_LINES_PER_BATCH,
            log_bytes_per_batch: DEFAULT_LOG_BYTES_PER_BATCH,
            log_lines_per_minute: DEFAULT_LOG_LINES_PER_MINUTE,
            log_bytes_per_minute: DEFAULT_LOG_BYTES_PER_MINUTE,
            max_effects: DEFAULT_MAX_EFFECTS_PER_BATCH,
            max_batch: DEFAULT_MAX_BATCH,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            linger_ms: DEFAULT_LINGER_MS,
            linger_adaptive: true,
        }
    }
}

impl Limits {
    /// Deadline as epoch ticks beyond the current epoch: the deadline rounded
    /// up to whole [`EPOCH_TICK`]s, plus one because the current tick is
    /// already partly spent. The guest is therefore stopped after at least
    /// `deadline_ms` and at most `deadline_ms` + 2 ticks.
    pub fn deadline_ticks(&self) -> u64 {
        let tick_ms = EPOCH_TICK.as_millis() as u64;
        self.deadline_ms.div_ceil(tick_ms) + 1
    }

    /// Every problem with these limits, one message each (empty if valid).
    /// `max_memory_bytes` is the engine's per-memory slot size.
    pub fn problems(&self, max_memory_bytes: usize) -> Vec<String> {
        let mut problems = Vec::new();
        let mut positive = |name: &str, value: u64| {
            if value == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        };
        positive("fuel", self.fuel);
        positive("memory_bytes", self.memory_bytes as u64);
        positive("deadline_ms", self.deadline_ms);
        positive("hostcall_bytes", self.hostcall_bytes as u64);
        positive("resource_table_entries", self.resource_table_entries as u64);
        positive("table_elements", self.table_elements as u64);
        positive("max_batch", self.max_batch as u64);
        positive("max_batch_bytes", self.max_batch_bytes as u64);
        if self.table_elements > MAX_TABLE_ELEMENTS {
            problems.push(format!(
                "table_elements = {} exceeds the pool's table slot of {MAX_TABLE_ELEMENTS} elements",
                self.table_elements
            ));
        }
        if self.memory_bytes > max_memory_bytes {
            problems.push(format!(
                "memory_bytes = {} exceeds the engine's memory slot of {} bytes \
                 (engine max_memory_bytes); raise the engine's or lower the app's",
                self.memory_bytes, max_memory_bytes
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_defaults() {
        let l = Limits::default();
        assert_eq!(l.fuel, 1_000_000_000);
        assert_eq!(l.memory_bytes, 64 * 1024 * 1024);
        assert_eq!(l.deadline_ms, 2_000);
        assert_eq!(l.hostcall_bytes, 8 * 1024 * 1024);
        assert_eq!(l.resource_table_entries, 1_000);
        assert_eq!(l.log_lines_per_batch, 100);
        assert_eq!(l.log_bytes_per_batch, 16 * 1024);
        assert_eq!(l.log_lines_per_minute, 1_000);
        assert_eq!(l.log_bytes_per_minute, 256 * 1024);
        assert_eq!(l.max_effects, 64);
        assert_eq!(l.max_batch, 64);
        assert_eq!(l.max_batch_bytes, 1024 * 1024);
        assert_eq!(l.linger_ms, 20);
        assert_eq!(EPOCH_TICK, Duration::from_millis(10));
    }

    #[test]
    fn deadline_rounds_up_and_adds_one_tick() {
        let mut l = Limits {
            deadline_ms: 200,
            ..Limits::default()
        };
        assert_eq!(l.deadline_ticks(), 21);
        l.deadline_ms = 201;
        assert_eq!(l.deadline_ticks(), 22);
    }

    #[test]
    fn problems_reports_all_at_once() {
        let l = Limits {
            fuel: 0,
            deadline_ms: 0,
            memory_bytes: 10,
            ..Limits::default()
        };
        let p = l.problems(5);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[2].contains("memory_bytes = 10 exceeds the engine's memory slot of 5"));
        let tables = Limits {
            table_elements: MAX_TABLE_ELEMENTS + 1,
            ..Limits::default()
        };
        let p = tables.problems(DEFAULT_MEMORY_BYTES);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("exceeds the pool's table slot of 100000"),
            "{p:?}"
        );
    }

    #[test]
    fn limits_from_toml_reject_unknown_fields() {
        let err = toml::from_str::<Limits>("fuel = 5\nfule = 6").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let l: Limits = toml::from_str("fuel = 5").unwrap();
        assert_eq!(l.fuel, 5);
        assert_eq!(l.memory_bytes, DEFAULT_MEMORY_BYTES);
    }
}
