//! # weir-host: run sandboxed WebAssembly event handlers
//!
//! weir is a per-node host that receives batched cluster events and runs each
//! application's handler, a WebAssembly component targeting the
//! `weir:handler@0.1.0` world, on a fresh sandbox per batch with fuel, memory,
//! time, hostcall-byte, log and effect caps. This crate is the runtime: the
//! engine, deploying components, invoking them on batches, and the helpers
//! handlers import (node identity, domain relevance, logging).
//!
//! Layout: the two planes have a folder each; the stages of the data path
//! and the composition root sit at the top.
//!
//! - [`runtime`]: the sandbox plane, which never imports NATS: [`Runtime`]
//!   (one engine, linker, epoch ticker and instance pool per process),
//!   [`Runtime::deploy`], [`App::invoke`] (a fresh store and instance per
//!   batch), [`Limits`], typed [`DeployError`]s and [`InvokeError`]s;
//! - [`nats`]: the event plane's edge, the only code that imports
//!   `async_nats`: the connection, streams, one durable consumer per app,
//!   dead letters, effect records, subject names, the embedded nats-server;
//! - the stages of one app's data path, in order: [`envelope`] (decode a
//!   payload into an [`Event`]), [`filter`] (the declarative pre-filter),
//!   [`pipeline`] (batch, invoke, settle: ack / nak / dead letter),
//!   [`effects`] (grants, idempotency, executors);
//! - [`daemon`]: `weir run` as a library: start in named phases, serve,
//!   drain ([`Daemon`]); [`http`]: `/health`, `/stats`, `/metrics`;
//! - [`config`]: `weir.toml`, every problem at once, parsed once into a
//!   [`config::Plan`]; each section is defined by the module that uses it;
//! - [`stats`]: per-app counters and latency histograms (Prometheus);
//! - [`domain`]: UTS-46 domain normalisation and the app's [`DomainSet`];
//! - [`corpus`]: the NS8 event corpus format (JSON Lines);
//! - [`permissions`]: the least-privilege NATS permissions of a host;
//! - [`private_dir`]: the cache and state directories, opened as capability
//!   handles and refused unless private;
//! - `bindings`: the WIT contract, read by both planes.
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
mod bindings;
pub mod bridge;
pub mod config;
pub mod corpus;
pub mod daemon;
pub mod domain;
pub mod effects;
pub mod envelope;
pub mod filter;
pub mod http;
pub mod nats;
pub mod permissions;
pub mod pipeline;
pub mod private_dir;
pub mod runtime;
mod serve;
pub mod stats;

pub use bindings::{BatchResult, Effect, Event, Message, Outcome};
pub use daemon::Daemon;
pub use domain::DomainSet;
pub use runtime::cache::LoadSource;
pub use runtime::state::AppIdentity;
pub use runtime::{
    App, AppSpec, CheckReport, DeployError, EngineConfig, Grant, Handled, ImportReport, Invocation,
    InvokeError, InvokeStats, Limits, Runtime,
};

/// Raw wasmtime pieces for benchmarks that compare weir against a raw
/// `Store::new` + `InstancePre::instantiate` + typed call of the same
/// component: a minimal store state (default WASI context, resource table,
/// trivial imports; no limiter, log budget or result validation). Not a
/// stable API.
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
