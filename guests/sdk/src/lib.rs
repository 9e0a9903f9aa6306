//! # weir-guest: write weir event handlers in Rust
//!
//! A weir handler is a WebAssembly component (target `wasm32-wasip2`) that the
//! weir host calls with a batch of cluster events that already passed the
//! app's declarative pre-filter. The handler returns one outcome per event
//! (done, retry later, reject) and the effects it wants (restart or reload a
//! service, publish an event). The host runs each batch on a fresh sandbox
//! under fuel, memory, time and log caps, acks or retries events, and executes
//! granted effects once.
//!
//! This crate is the app author's whole API:
//!
//! - [`Handler`]: the trait you implement, and [`export!`] to export it;
//! - [`Batch`]: the events of one call, with methods to set outcomes and ask
//!   for effects (duplicates collapse);
//! - [`EventExt`]: typed access to an event (payload as JSON, locality,
//!   domain relevance);
//! - [`node`] and [`domains`]: this host's identity and the app's domains;
//! - [`kv`]: cluster state in a JetStream key-value bucket ([`kv::Bucket`],
//!   for apps granted `kv` or `kv_shared`);
//! - [`trace!`], [`debug!`], [`info!`], [`warn!`], [`error!`]: logging into the
//!   host's log, under the app's log budget.
//!
//! ## Example: NS8's mail app
//!
//! Restart dovecot and postfix once when a user domain the app serves changes,
//! if the change is cluster-wide or comes from this node's ldapproxy:
//!
//! ```no_run
//! use weir_guest::{Batch, EventExt, Handler};
//!
//! struct Mail;
//!
//! impl Handler for Mail {
//!     fn handle(batch: &mut Batch) {
//!         let relevant = batch.events().iter().any(|event| {
//!             event.name == "user-domain-changed"
//!                 && event.touches_my_domains()
//!                 && (!event.source.starts_with("module/ldapproxy") || event.is_local())
//!         });
//!         if relevant {
//!             weir_guest::info!("user domain changed: restarting mail services");
//!             batch.restart("dovecot.service");
//!             batch.restart("postfix.service");
//!         }
//!     }
//! }
//!
//! weir_guest::export!(Mail);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type
//! `cdylib`), then check it with `weir check target/wasm32-wasip2/release/mail.wasm`.
//!
//! ## Contract
//!
//! The WIT package is `weir:handler@0.2.0` (`wit/handler.wit` in the weir
//! repository), world `stateful-handler`; the types below are generated from
//! it. A handler that never calls [`kv`] does not import it (the linker
//! drops unused imports), so it deploys without a key-value grant. Every event of the
//! batch gets exactly one outcome; [`Batch`] starts each at
//! [`Outcome::Done`].

extern crate self as weir_guest;

/// Bindings generated from the `weir:handler` WIT package. Most handlers need
/// only the re-exports at the crate root.
#[allow(missing_docs, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "weir:handler/stateful-handler",
        pub_export_macro: true,
        export_macro_name: "__export_handler_world",
        default_bindings_module: "weir_guest::bindings",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq, Hash, Clone],
    });
}

pub use bindings::weir::handler::types::{BatchResult, Effect, Event, Message, Outcome};
pub use bindings::weir::handler::{domains, log::Level, node};

pub mod kv;

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

/// An event handler. Implement it on a unit struct and export it with
/// [`export!`].
///
/// The host calls [`Handler::handle`] once per batch on a fresh instance:
/// statics do not survive between batches.
pub trait Handler {
    /// Handle one batch. Every event starts as [`Outcome::Done`]; change that
    /// with [`Batch::retry`] or [`Batch::reject`], and ask for effects with
    /// [`Batch::restart`], [`Batch::reload`] and [`Batch::publish`].
    ///
    /// A panic traps the instance and fails the batch. The host then runs
    /// the batch's events one at a time, so one poison event does not take
    /// its batch-mates down: an event that succeeds alone is acked, one that
    /// still fails alone is retried with backoff and dead-lettered with the
    /// error at the app's `max_deliver`.
    fn handle(batch: &mut Batch);
}

/// One batch of events plus the answer being built for it.
#[derive(Debug)]
pub struct Batch {
    events: Vec<Event>,
    outcomes: Vec<Outcome>,
    effects: Vec<Effect>,
}

impl Batch {
    /// A batch of `events`, every outcome [`Outcome::Done`], no effects.
    pub fn new(events: Vec<Event>) -> Self {
        let outcomes = vec![Outcome::Done; events.len()];
        Self {
            events,
            outcomes,
            effects: Vec::new(),
        }
    }

    /// The events, in stream order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The outcome currently set for event `index`.
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds.
    pub fn outcome(&self, index: usize) -> &Outcome {
        &self.outcomes[index]
    }

    /// Ask the host to redeliver event `index` after `delay_ms` milliseconds.
    /// The host caps the delay at one hour (`weir_host::pipeline::MAX_RETRY_DELAY`), and each
    /// retry is a delivery: after the app's `delivery.max_deliver` (default
    /// 5) the event is dead-lettered with the reason.
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds.
    pub fn retry(&mut self, index: usize, delay_ms: u32) {
        self.outcomes[index] = Outcome::Retry(delay_ms);
    }

    /// Reject event `index` for good: the host dead-letters it with `reason`.
    ///
    /// # Panics
    ///
    /// If `index` is out of bounds.
    pub fn reject(&mut self, index: usize, reason: impl Into<String>) {
        self.outcomes[index] = Outcome::Reject(reason.into());
    }

    /// Ask for a restart of service `unit` (e.g. `"dovecot.service"`). Asking
    /// twice in one batch yields one effect. The host executes it only if the
    /// app's `[app.grants] restart` names that unit; otherwise it is refused
    /// and counted (`effects_refused`).
    pub fn restart(&mut self, unit: impl Into<String>) {
        self.effect(Effect::Restart(unit.into()));
    }

    /// Ask for a reload of service `unit`. Same rules as [`Batch::restart`],
    /// with the grant `[app.grants] reload`.
    pub fn reload(&mut self, unit: impl Into<String>) {
        self.effect(Effect::Reload(unit.into()));
    }

    /// Ask the host to publish an event `name` with `payload` as this app
    /// (source `module/<app>`). The host publishes only names its
    /// `[app.grants] publish` lists.
    pub fn publish(&mut self, name: impl Into<String>, payload: impl Into<Vec<u8>>) {
        self.effect(Effect::Publish(Message {
            name: name.into(),
            payload: payload.into(),
        }));
    }

    /// Add `effect` unless the batch already asks for an identical one.
    pub fn effect(&mut self, effect: Effect) {
        if !self.effects.contains(&effect) {
            self.effects.push(effect);
        }
    }

    /// The effects asked for so far, in order, without duplicates.
    pub fn effects(&self) -> &[Effect] {
        &self.effects
    }

    /// The answer returned to the host.
    pub fn into_result(self) -> BatchResult {
        BatchResult {
            outcomes: self.outcomes,
            effects: self.effects,
        }
    }
}

/// Convenience accessors on [`Event`].
pub trait EventExt {
    /// The payload parsed as JSON into `T`.
    ///
    /// # Errors
    ///
    /// If the payload is not JSON or does not fit `T` (NS8's `acl-changed`
    /// carries a bare string, for example).
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error>;

    /// The payload as UTF-8 text, or `None` if it is not valid UTF-8.
    fn text(&self) -> Option<&str>;

    /// True if the event names this node as its origin. A cluster-wide event
    /// (no origin node) is not local.
    fn is_local(&self) -> bool;

    /// True if any of the event's (normalised) domains is one of the app's.
    fn touches_my_domains(&self) -> bool;
}

impl EventExt for Event {
    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }

    fn is_local(&self) -> bool {
        self.origin_node.is_some_and(|origin| origin == node::id())
    }

    fn touches_my_domains(&self) -> bool {
        self.domains.iter().any(|d| domains::is_mine(d))
    }
}

/// Run `H` on `events`. Used by [`export!`]; not needed by handlers.
#[doc(hidden)]
pub fn __run<H: Handler>(events: Vec<Event>) -> BatchResult {
    let mut batch = Batch::new(events);
    H::handle(&mut batch);
    batch.into_result()
}

/// Export a [`Handler`] as this component's `handle` function.
///
/// Use it once, at the crate root of a `cdylib` crate:
///
/// ```ignore
/// weir_guest::export!(MyHandler);
/// ```
#[macro_export]
macro_rules! export {
    ($handler:ty) => {
        #[doc(hidden)]
        struct __WeirExport;
        impl $crate::bindings::Guest for __WeirExport {
            fn handle(batch: ::std::vec::Vec<$crate::Event>) -> $crate::BatchResult {
                $crate::__run::<$handler>(batch)
            }
        }
        $crate::bindings::__export_handler_world!(__WeirExport with_types_in $crate::bindings);
    };
}

/// Write one log line at `level` (formatted like [`format!`]).
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::bindings::weir::handler::log::log($level, &::std::format!($($arg)+))
    };
}

/// Log at trace level. See [`log!`].
#[macro_export]
macro_rules! trace { ($($arg:tt)+) => { $crate::log!($crate::Level::Trace, $($arg)+) }; }
/// Log at debug level. See [`log!`].
#[macro_export]
macro_rules! debug { ($($arg:tt)+) => { $crate::log!($crate::Level::Debug, $($arg)+) }; }
/// Log at info level. See [`log!`].
#[macro_export]
macro_rules! info { ($($arg:tt)+) => { $crate::log!($crate::Level::Info, $($arg)+) }; }
/// Log at warn level. See [`log!`].
#[macro_export]
macro_rules! warn { ($($arg:tt)+) => { $crate::log!($crate::Level::Warn, $($arg)+) }; }
/// Log at error level. See [`log!`].
#[macro_export]
macro_rules! error { ($($arg:tt)+) => { $crate::log!($crate::Level::Error, $($arg)+) }; }

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str) -> Event {
        Event {
            id: "1".into(),
            name: name.into(),
            source: "cluster".into(),
            origin_node: None,
            domains: Vec::new(),
            payload: br#"{"n": 7}"#.to_vec(),
            attempt: 1,
            sequence: 1,
            published_ms: 0,
        }
    }

    #[test]
    fn batch_starts_done_and_collapses_identical_effects() {
        let mut batch = Batch::new(vec![event("a"), event("b"), event("c")]);
        batch.retry(1, 50);
        batch.reject(2, "bad");
        batch.restart("x.service");
        batch.restart("x.service");
        batch.reload("x.service");
        batch.publish("done", "1");
        batch.publish("done", "1");
        assert_eq!(batch.outcome(0), &Outcome::Done);
        let result = batch.into_result();
        assert_eq!(
            result.outcomes,
            vec![
                Outcome::Done,
                Outcome::Retry(50),
                Outcome::Reject("bad".into())
            ]
        );
        assert_eq!(result.effects.len(), 3);
    }

    #[test]
    fn payload_as_json_and_text() {
        #[derive(serde::Deserialize)]
        struct P {
            n: u32,
        }
        let e = event("a");
        assert_eq!(e.json::<P>().unwrap().n, 7);
        assert_eq!(e.text(), Some(r#"{"n": 7}"#));
        let mut bare = event("acl-changed");
        bare.payload = b"cluster/acls".to_vec();
        assert!(bare.json::<P>().is_err());
        assert_eq!(bare.text(), Some("cluster/acls"));
    }
}
