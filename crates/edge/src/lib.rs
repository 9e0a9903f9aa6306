//! # weir-edge: the NATS connection and loopback HTTP listener weir's host and bridge share
//!
//! Both `weir run` (the event plane, `weir-host`) and `weir bridge`
//! (`weir-bridge`) talk to the same JetStream streams under the same subject
//! names and serve their endpoints the same way; this crate holds that
//! shared edge and nothing of either, so the bridge does not link the
//! sandbox and the host does not link Redis.
//!
//! - [`nats`]: [`nats::NatsConfig`] (`[nats]`), [`nats::Transport`] (one
//!   connection, the events and dead-letter streams, publishing, key-value
//!   buckets), [`nats::subjects`] (every subject, stream, bucket, consumer
//!   and header name), [`nats::connect`] (credentials and TLS),
//!   [`nats::server`] (a private nats-server process);
//! - [`serve`]: serve an axum router on a socket until told to stop;
//! - [`telemetry`]: trace export over OTLP ([`telemetry::Telemetry`],
//!   `[telemetry]`) and W3C trace context in NATS headers
//!   ([`telemetry::context`]).

pub mod nats;
pub mod serve;
pub mod telemetry;
