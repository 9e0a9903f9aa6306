//! The host `bindgen!` sites for the `weir:handler` WIT package.
//!
//! - The current version, 0.2.0 (`wit/handler.wit`), world
//!   `stateful-handler`: its generated types (`Event`, `Outcome`, `Effect`,
//!   `Message`, `BatchResult`) are re-exported at the crate root, its
//!   `StatefulHandlerPre` instantiates every component (the `handle` export
//!   is the same in every version: component types are checked by
//!   structure), and its imports (`node`, `domains`, `log`, `kv`) are
//!   implemented in `state` and `kv_host`.
//! - 0.1.0 (`wit/compat/0.1.0/`), kept so components built against it
//!   deploy unchanged: only its imports are linked (`node`, `domains`, `log`
//!   at `@0.1.0`), answering exactly as 0.2.0's. Component-model semver
//!   treats 0.1 and 0.2 as incompatible, so wasmtime cannot match one to the
//!   other by itself.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "weir:handler/stateful-handler",
    additional_derives: [PartialEq, Eq, Hash],
});

pub use weir::handler::types::{Effect, Message, Outcome};

/// The pre-instantiated handler of any version (see the module docs).
pub type HandlerPre<T> = StatefulHandlerPre<T>;

/// `weir:handler@0.1.0`, for its imports only.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../../wit/compat/0.1.0",
        world: "weir:handler/handler",
    });
}
