//! # weir-host: the event plane
//!
//! weir is a per-node host that receives batched cluster events over NATS
//! JetStream and runs each application's handler, a WebAssembly component
//! targeting the `weir:handler` world, on a fresh sandbox per batch. This
//! crate is the event plane: it takes events from JetStream, filters and
//! batches them, hands the batches to the sandbox (`weir-runtime`,
//! re-exported as [`runtime`] and at this crate's root) and settles what the
//! handlers decided. The crates below it: `weir-runtime` (the sandbox, no
//! NATS), `weir-edge` (the NATS connection and subjects it shares with
//! `weir-bridge`), `weir-private-dir`.
//!
//! Modules, in data-flow order:
//!
//! - [`nats`]: the event plane's JetStream state on the shared connection
//!   (`weir_edge::nats`, re-exported there): one durable consumer per app,
//!   effect records, handlers' kv buckets, unreadable deliveries;
//! - [`envelope`]: decode a payload into an [`Event`];
//! - [`filter`]: the declarative pre-filter;
//! - [`pipeline`]: batch, invoke, settle (ack / nak / dead letter);
//! - [`effects`]: grants, idempotency, debounce, rate limits, executors, and
//!   their stores (pending effects, limit windows);
//! - [`stats`]: per-app counters and latency histograms (Prometheus);
//! - [`canary`]: a candidate component on chosen nodes, live with guard
//!   rails and automatic rollback, or in shadow beside the stable one;
//! - [`replay`]: a candidate component beside the app's own on the events
//!   the stream holds, effects intercepted, decisions compared (`weir
//!   replay`);
//! - [`config`]: `weir.toml`, every problem at once, parsed once into a
//!   [`config::Plan`]; each section is defined by the module that uses it
//!   (`[bridge]` is kept as text for `weir-bridge`);
//! - [`daemon`]: `weir run` as a library: start in named phases, serve,
//!   drain ([`Daemon`]);
//! - [`http`]: the adapter serving `/health`, `/ready`, `/stats`,
//!   `/metrics` and `/reload` over what the daemon gives it;
//! - [`admin_token`]: the token `/reload` requires;
//! - [`permissions`]: the least-privilege NATS permissions of a host and of
//!   its node's bridge;
//! - [`corpus`]: the NS8 event corpus format (JSON Lines).
//!
//! ```no_run
//! use weir_host::{AppSpec, EngineConfig, Runtime, envelope};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::new(EngineConfig::default())?;
//! let mut spec = AppSpec::new("mail1", 1, "node1");
//! spec.domains = vec!["dom01.example.org".into()];
//! let app = runtime.deploy_file(spec, "mail.wasm".as_ref())?;
//! let meta = envelope::EventMeta {
//!     id: "1".into(),
//!     name: "user-domain-changed".into(),
//!     source: "cluster".into(),
//!     ..Default::default()
//! };
//! let event = envelope::event(meta, br#"{"domains": ["dom01.example.org"]}"#.to_vec(), 1 << 20)?;
//! let invocation = app.invoke(vec![event]).await;
//! println!("{:?}", invocation.result?.effects);
//! # Ok(()) }
//! ```

pub mod admin_token;
pub mod canary;
pub mod config;
pub mod corpus;
pub mod daemon;
pub mod effects;
pub mod envelope;
pub mod filter;
pub mod http;
pub mod nats;
pub mod permissions;
pub mod pipeline;
pub mod replay;
pub mod stats;

/// The sandbox (`weir-runtime`), whose main types are also re-exported at
/// this crate's root.
pub use weir_runtime as runtime;
pub use weir_runtime::domain;

pub use daemon::Daemon;
pub use weir_runtime::{
    App, AppIdentity, AppSpec, BatchResult, CheckReport, DeployError, DomainSet, Effect,
    EngineConfig, Event, Grant, Handled, ImportReport, Invocation, InvokeError, InvokeStats,
    Limits, LoadSource, Message, Outcome, Runtime, raw,
};

/// A current-thread tokio runtime for unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
