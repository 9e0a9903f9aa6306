//! The one host `bindgen!` site for the `weir:handler` WIT package.
//!
//! The generated types (`Event`, `Outcome`, `Effect`, `Message`,
//! `BatchResult`) are re-exported at the crate root; the host traits for the
//! `node`, `domains` and `log` imports are implemented in `runtime::state`.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "weir:handler/handler",
    additional_derives: [PartialEq, Eq, Hash],
});

pub use weir::handler::types::{Effect, Message, Outcome};
