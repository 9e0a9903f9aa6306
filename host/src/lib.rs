//! # weir-host: run sandboxed WebAssembly event handlers
//!
//! weir is a per-node host that receives batched cluster events and runs each
//! application's handler, a WebAssembly component targeting the
//! `weir:handler@0.1.0` world, on a fresh sandbox per batch with fuel, memory,
//! time, hostcall-byte, log and effect caps. This crate is the runtime: the
//! engine, deploying components, invoking them on batches, and the helpers
//! handlers import (node identity, domain relevance, logging).
//!
//! Layout:
//!
//! - [`engine`]: [`Runtime`], the process-wide engine, linker, epoch ticker
//!   and instance pool ([`EngineConfig`]);
//! - [`threads`]: the OS threads batches run on (a demoted one is retired);
//! - [`app`]: [`Runtime::deploy`] and [`App::invoke`], one fresh store and
//!   instance per batch, typed [`InvokeError`]s;
//! - [`limits`]: every per-app cap with its default ([`Limits`]);
//! - [`config`]: `weir.toml`, validated with every problem at once;
//! - [`check`]: what weir grants for each import ([`CheckReport`], used by
//!   `weir check`);
//! - [`envelope`]: payload normalisation into [`Event`] fields;
//! - [`corpus`]: the NS8 event corpus format (JSON Lines);
//! - [`filter`]: the declarative pre-filter (per-app relevance rules);
//! - [`subjects`]: NATS subject, stream and consumer names;
//! - [`nats_server`]: a private nats-server process (embedded default, tests);
//! - [`transport`]: the NATS JetStream edge (the only module importing `async_nats`);
//! - [`pipeline`]: one app's consume → filter → batch → invoke → ack loop;
//! - [`host`]: `weir run` as a library: start, serve, drain;
//! - [`effects`]: grants, idempotency and executors for effects;
//! - [`stats`]: per-app counters for `/stats` and `/metrics`;
//! - [`domain`]: UTS-46 domain normalisation and the app's [`DomainSet`];
//! - [`guest_log`]: guest logging under a budget;
//! - `bindings`, `state`, `cache`: the WIT bindings, store state and
//!   precompiled-artifact cache.
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

pub mod app;
mod bindings;
mod cache;
pub mod check;
pub mod config;
pub mod corpus;
pub mod domain;
pub mod effects;
pub mod engine;
pub mod envelope;
mod error;
pub mod filter;
pub mod guest_log;
pub mod host;
pub mod limits;
pub mod nats_server;
pub mod permissions;
pub mod pipeline;
mod priority;
mod state;
pub mod stats;
pub mod subjects;
pub mod threads;
pub mod transport;

pub use app::{App, AppSpec, Handled, Invocation, InvokeStats};
pub use bindings::{BatchResult, Effect, Event, Message, Outcome};
pub use cache::LoadSource;
pub use check::{CheckReport, Grant, ImportReport};
pub use domain::DomainSet;
pub use engine::{EngineConfig, Runtime};
pub use error::{DeployError, InvokeError};
pub use host::Host;
pub use limits::Limits;
pub use state::AppIdentity;

/// Raw wasmtime pieces for benchmarks that compare weir against a raw
/// `Store::new` + `InstancePre::instantiate` + typed call of the same
/// component: a minimal store state (default WASI context, resource table,
/// trivial imports; no limiter, log budget or result validation). Not a
/// stable API.
#[doc(hidden)]
pub mod raw {
    use wasmtime::component::{HasSelf, Linker, ResourceTable};
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    use crate::bindings::weir::handler::{domains, log, node, types};
    pub use crate::bindings::{Handler, HandlerPre};

    /// The least state that can instantiate a handler.
    pub struct RawState {
        wasi: WasiCtx,
        table: ResourceTable,
    }

    impl Default for RawState {
        fn default() -> Self {
            Self {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
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
            1
        }
        fn name(&mut self) -> String {
            String::new()
        }
        fn is_local(&mut self, origin: Option<u32>) -> bool {
            origin == Some(1)
        }
    }

    impl domains::Host for RawState {
        fn mine(&mut self) -> Vec<String> {
            Vec::new()
        }
        fn is_mine(&mut self, _domain: String) -> bool {
            false
        }
    }

    impl log::Host for RawState {
        fn log(&mut self, _level: log::Level, _message: String) {}
    }

    impl types::Host for RawState {}

    /// A linker with WASI p2 and the `weir:handler` imports for [`RawState`].
    ///
    /// # Errors
    ///
    /// If linking fails (a wasmtime bug).
    pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<RawState>> {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Handler::add_to_linker::<_, HasSelf<RawState>>(&mut linker, |s| s)?;
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
