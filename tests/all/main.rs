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
//! - `scaffold`: `weir new` projects in Rust, Python and JavaScript build,
//!   check and invoke out of the box;
//! - `conformance`: the Rust, Python and JavaScript builds of the same
//!   handlers agree on one table of cases (corpus, retry, reject, non-JSON,
//!   publish);
//! - `faults`: slow and poison events, a full stream, forged sources;
//! - `hostile`: header blocks the NATS client cannot read or misreads,
//!   published raw, mixed with well-formed events;
//! - `permissions`: a host on exactly its least-privilege NATS permissions;
//! - `bridge`: `weir bridge` with real redis-server and nats-server
//!   (mapping, N bridges, Redis restarted, NATS down, folding);
//! - `auth`: mutual TLS with a TLS-first handshake, an nkey user, a JWT user
//!   from a `.creds` file;
//! - `cluster`: a 3-server cluster, R3 streams, servers SIGKILLed under load;
//! - `canary`: a candidate on one of three hosts, rolled back when it
//!   traps, kept when healthy, counted in shadow;
//! - `operations`: reload under load, quarantine, `/ready`, SIGHUP,
//!   `weir reload` and `weir stats`;
//! - `traces`: `weir run` exporting OTLP to a receiver in the test: an
//!   event's trace through its batch and the effects it caused, `weir
//!   publish` traces, malformed `traceparent`s, a collector down or slow;
//! - `table_bomb`: a table-growth bomb written in component text;
//! - `layout`: no module cycle in any crate, each crate's dependency graph;
//! - `docs`: the generated reference pages, every Markdown link, the README's size.
#![allow(missing_docs, clippy::unwrap_used)]

#[macro_use]
extern crate weir_test_support;

mod auth;
mod bridge;
mod canary;
mod cli;
mod cluster;
mod cluster_state;
mod common;
mod components;
mod conformance;
mod corpus;
mod docs;
mod event_plane;
mod faults;
mod hostile;
mod kv;
mod layout;
mod nats;
mod operations;
mod permissions;
mod replay;
mod runtime;
mod scaffold;
mod table_bomb;
mod traces;
