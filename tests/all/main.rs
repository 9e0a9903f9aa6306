//! weir's integration tests, as modules of one binary (one link step).
//!
//! - `common`: a shared runtime, event builders, the marker-file host
//!   (with `weir-test-support`'s config builder, NATS helpers, RSS probe
//!   and `assert_eventually!`);
//! - `components`: one test per guest component (generated with
//!   `foreach_component!`, so a new fixture without a test does not compile);
//! - `corpus`: the example handlers on the NS8 node-join corpus;
//! - `nats`: the JetStream edge against a real nats-server per test;
//! - `event_plane`: `weir run` (the `Daemon`) end to end against a real server;
//! - `runtime`: deploy, cache, pool and isolation properties;
//! - `cli`: the `weir` binary (`check`, `invoke`);
//! - `python`: a componentize-py handler against the same WIT;
//! - `faults`: slow and poison events, a full stream, forged sources;
//! - `permissions`: a host on exactly its least-privilege NATS permissions;
//! - `table_bomb`: a table-growth bomb written in component text.
#![allow(missing_docs, clippy::unwrap_used)]

#[macro_use]
extern crate weir_test_support;

mod cli;
mod common;
mod components;
mod corpus;
mod event_plane;
mod faults;
mod nats;
mod permissions;
mod python;
mod runtime;
mod table_bomb;
