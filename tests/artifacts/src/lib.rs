//! Paths of the guest components compiled by this crate's build script
//! (`guests/` built for `wasm32-wasip2` in release mode), for tests and
//! benches.
#![allow(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
