//! Cluster state: the app's JetStream key-value bucket, or a shared one.
//!
//! Granted in `weir.toml`: `[app.grants] kv = true` gives the app its own
//! bucket ([`Bucket::own`]), `kv_shared = ["name"]` a bucket several apps
//! share ([`Bucket::shared`]). Every call is bounded by the host: keys up to
//! 256 bytes of `A-Z a-z 0-9 - _ / = .`, values up to 64 KiB, at most 100
//! calls and 1 MiB per batch, each call waiting at most until the batch's
//! deadline. Past a bound the call returns an [`Error`]; nothing else
//! happens to the batch unless the handler says so (retry or reject the
//! event).
//!
//! ```no_run
//! use weir_guest::kv::Bucket;
//!
//! // Count events per source, across every node.
//! # fn f(event: &weir_guest::Event) -> Result<(), weir_guest::kv::Error> {
//! let seen = Bucket::own().increment(&format!("seen.{}", event.source.replace('/', ".")), 1)?;
//! # let _ = seen; Ok(()) }
//! ```

use crate::bindings::weir::handler::kv as raw;
pub use crate::bindings::weir::handler::kv::{Entry, Error};

/// Most rounds of [`Bucket::update`] before it gives up with the last
/// conflict: 16.
pub const MAX_UPDATE_ROUNDS: u32 = 16;

/// A bucket the app is granted: its own, or a shared one by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    name: String,
}

impl Bucket {
    /// The app's own bucket (`grants.kv = true`).
    pub fn own() -> Self {
        Self {
            name: String::new(),
        }
    }

    /// The shared bucket `name` (`grants.kv_shared = ["name"]`).
    pub fn shared(name: &str) -> Self {
        Self {
            name: name.to_owned(),
        }
    }

    /// The value and revision of `key`, `None` if absent.
    ///
    /// # Errors
    ///
    /// As the host says ([`Error`]).
    pub fn get(&self, key: &str) -> Result<Option<Entry>, Error> {
        raw::get(&self.name, key)
    }

    /// Write `value` under `key`; the new revision.
    ///
    /// # Errors
    ///
    /// As the host says ([`Error`]).
    pub fn put(&self, key: &str, value: &[u8]) -> Result<u64, Error> {
        raw::put(&self.name, key, value)
    }

    /// Write `value` only if `key` is still at `revision` (0: absent); the
    /// new revision, or [`Error::Conflict`] with the current one.
    ///
    /// # Errors
    ///
    /// As the host says ([`Error`]).
    pub fn compare_and_set(&self, key: &str, value: &[u8], revision: u64) -> Result<u64, Error> {
        raw::compare_and_set(&self.name, key, value, revision)
    }

    /// Delete `key`.
    ///
    /// # Errors
    ///
    /// As the host says ([`Error`]).
    pub fn delete(&self, key: &str) -> Result<(), Error> {
        raw::delete(&self.name, key)
    }

    /// Up to `limit` keys under the dotted `prefix` (`""`: all).
    ///
    /// # Errors
    ///
    /// As the host says ([`Error`]).
    pub fn keys(&self, prefix: &str, limit: u32) -> Result<Vec<String>, Error> {
        raw::keys(&self.name, prefix, limit)
    }

    /// Add `delta` to the decimal counter under `key` (absent: 0),
    /// atomically across hosts; the new value.
    ///
    /// # Errors
    ///
    /// As the host says ([`Error`]).
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64, Error> {
        raw::increment(&self.name, key, delta)
    }

    /// Read-modify-write `key` without losing a concurrent update: `change`
    /// gets the current value (`None` if absent) and returns the new one;
    /// retried on conflict, at most [`MAX_UPDATE_ROUNDS`] times. Each round
    /// costs two calls of the batch's budget.
    ///
    /// # Errors
    ///
    /// The host's [`Error`], or the last [`Error::Conflict`].
    pub fn update(
        &self,
        key: &str,
        mut change: impl FnMut(Option<&[u8]>) -> Vec<u8>,
    ) -> Result<u64, Error> {
        let mut last = Error::Conflict(0);
        for _ in 0..MAX_UPDATE_ROUNDS {
            let current = self.get(key)?;
            let (value, revision) = match &current {
                Some(e) => (Some(e.value.as_slice()), e.revision),
                None => (None, 0),
            };
            match self.compare_and_set(key, &change(value), revision) {
                Ok(rev) => return Ok(rev),
                Err(e @ Error::Conflict(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

/// A sentence for `error` (the generated `Display` prints the variant as
/// debug output).
pub fn message(error: &Error) -> String {
    match error {
        Error::Denied(b) => format!("bucket {b:?} is not granted"),
        Error::InvalidKey(why) => format!("invalid key: {why}"),
        Error::TooLarge(cap) => format!("value larger than {cap} bytes"),
        Error::OverBudget(what) => format!("over budget: {what}"),
        Error::Conflict(rev) => format!("conflict: the key is at revision {rev}"),
        Error::Unavailable(why) => format!("store unavailable: {why}"),
    }
}
