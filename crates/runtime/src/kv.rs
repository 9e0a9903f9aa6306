//! The `weir:handler/kv` import (WIT 0.2.0): cluster state for handlers,
//! granted per app and bounded per call and per batch.
//!
//! The runtime knows nothing of NATS: an app's buckets are reached through
//! a [`KvBackend`] attached after the host connects
//! ([`crate::App::attach_kv`]; the JetStream implementation is
//! `weir_host::nats::buckets`). A call is checked here first: the bucket must be
//! granted ([`KvGrant`]), the key valid ([`MAX_KEY_BYTES`], JetStream's key
//! characters), the value within [`MAX_VALUE_BYTES`], and the batch within
//! [`MAX_CALLS_PER_BATCH`] calls and [`MAX_BYTES_PER_BATCH`] bytes. Then it
//! waits for the store at most until the batch's deadline: a store that does
//! not answer in time gives `unavailable`, and the deadline then stops the
//! guest as usual.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest key: 256 bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// Largest value: 65,536 bytes (64 KiB).
pub const MAX_VALUE_BYTES: usize = 64 << 10;

/// Most `kv` calls per batch: 100.
pub const MAX_CALLS_PER_BATCH: u32 = 100;

/// Most bytes of keys and values per batch, both directions: 1 MiB.
pub const MAX_BYTES_PER_BATCH: u64 = 1 << 20;

/// Most keys one `keys` call returns: 1,000.
pub const MAX_KEYS_PER_CALL: u32 = 1_000;

/// Compare-and-set rounds of one `increment` before it gives up with
/// `unavailable`: 32.
pub const MAX_INCREMENT_ROUNDS: u32 = 32;

/// `[app.grants]`' key-value part: which buckets the app may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct KvGrant {
    /// The app's own bucket (`bucket = ""` in calls).
    pub own: bool,
    /// Shared buckets by name.
    pub shared: Vec<String>,
}

impl KvGrant {
    /// Whether any bucket is granted (a component importing `kv` deploys
    /// only then).
    pub fn any(&self) -> bool {
        self.own || !self.shared.is_empty()
    }
}

/// A store refusal or failure, as the backend reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvFailure {
    /// Compare-and-set lost; the key's current revision (0: absent).
    Conflict(u64),
    /// Anything else, described.
    Unavailable(String),
}

/// A boxed future of a backend call.
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvFailure>> + Send + 'a>>;

/// Where an app's buckets live. `bucket` is `""` for the app's own bucket
/// or a granted shared bucket's name (the runtime checked the grant).
pub trait KvBackend: Send + Sync + std::fmt::Debug {
    /// The value and revision of `key`; `None` if absent or deleted.
    fn get<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, Option<(Vec<u8>, u64)>>;
    /// Write `value`; the new revision.
    fn put<'a>(&'a self, bucket: &'a str, key: &'a str, value: Vec<u8>) -> KvFuture<'a, u64>;
    /// Write `value` if `key` is at `revision` (0: absent); the new
    /// revision or [`KvFailure::Conflict`].
    fn compare_and_set<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> KvFuture<'a, u64>;
    /// Delete `key`.
    fn delete<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, ()>;
    /// Up to `limit` keys under the dotted `prefix` (`""`: all).
    fn keys<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
        limit: usize,
    ) -> KvFuture<'a, Vec<String>>;
}

/// Buckets in this process's memory: for `weir invoke` and tests, where
/// there is no NATS. Same semantics as the JetStream buckets (revisions
/// increase per bucket, compare-and-set, dotted-prefix listing), gone when
/// the process ends.
#[derive(Debug, Default)]
pub struct MemoryKv {
    buckets: std::sync::Mutex<std::collections::HashMap<String, MemoryBucket>>,
}

#[derive(Debug, Default)]
struct MemoryBucket {
    entries: std::collections::BTreeMap<String, (Vec<u8>, u64)>,
    last: u64,
}

impl MemoryKv {
    fn with<T>(&self, bucket: &str, f: impl FnOnce(&mut MemoryBucket) -> T) -> T {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(buckets.entry(bucket.to_owned()).or_default())
    }
}

impl MemoryBucket {
    fn write(&mut self, key: &str, value: Vec<u8>) -> u64 {
        self.last += 1;
        self.entries.insert(key.to_owned(), (value, self.last));
        self.last
    }
}

impl KvBackend for MemoryKv {
    fn get<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, Option<(Vec<u8>, u64)>> {
        let got = self.with(bucket, |b| b.entries.get(key).cloned());
        Box::pin(async move { Ok(got) })
    }

    fn put<'a>(&'a self, bucket: &'a str, key: &'a str, value: Vec<u8>) -> KvFuture<'a, u64> {
        let rev = self.with(bucket, |b| b.write(key, value));
        Box::pin(async move { Ok(rev) })
    }

    fn compare_and_set<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> KvFuture<'a, u64> {
        let result = self.with(bucket, |b| {
            let current = b.entries.get(key).map_or(0, |(_, r)| *r);
            if current == revision {
                Ok(b.write(key, value))
            } else {
                Err(KvFailure::Conflict(current))
            }
        });
        Box::pin(async move { result })
    }

    fn delete<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, ()> {
        self.with(bucket, |b| b.entries.remove(key));
        Box::pin(async move { Ok(()) })
    }

    fn keys<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
        limit: usize,
    ) -> KvFuture<'a, Vec<String>> {
        let under = format!("{prefix}.");
        let keys = self.with(bucket, |b| {
            b.entries
                .keys()
                .filter(|k| prefix.is_empty() || k.starts_with(&under))
                .take(limit)
                .cloned()
                .collect()
        });
        Box::pin(async move { Ok(keys) })
    }
}

/// The `kv` state of one batch: grant, backend and what the batch used.
#[derive(Debug, Default)]
pub(crate) struct KvBudget {
    pub(crate) calls: u32,
    pub(crate) bytes: u64,
    pub(crate) errors: u32,
}

/// The app's grant and backend, shared by its batches.
#[derive(Debug, Default)]
pub struct KvAccess {
    pub(crate) grant: KvGrant,
    pub(crate) backend: std::sync::OnceLock<Arc<dyn KvBackend>>,
}

impl KvAccess {
    /// Access for `grant`, no backend yet.
    pub fn new(grant: KvGrant) -> Self {
        Self {
            grant,
            backend: std::sync::OnceLock::new(),
        }
    }

    /// The grant.
    pub fn grant(&self) -> &KvGrant {
        &self.grant
    }

    /// Attach the backend (once; later calls are ignored).
    pub fn attach(&self, backend: Arc<dyn KvBackend>) {
        let _ = self.backend.set(backend);
    }
}

/// Check a key: 1 to [`MAX_KEY_BYTES`] bytes of `A-Z a-z 0-9 - _ / = .`,
/// not starting or ending with `.` (JetStream's key rules).
///
/// # Errors
///
/// What is wrong with it.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key is empty".to_owned());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key is {} bytes, more than {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if key.starts_with('.') || key.ends_with('.') || key.contains("..") {
        return Err(format!(
            "{key:?} starts or ends with '.', or has an empty token"
        ));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '=' | '.')))
    {
        return Err(format!("{key:?} contains {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_buckets_compare_and_set_and_list_by_prefix() {
        let kv = MemoryKv::default();
        crate::test_runtime().block_on(async {
            let r1 = kv
                .compare_and_set("", "a.x", b"1".to_vec(), 0)
                .await
                .unwrap();
            assert_eq!(
                kv.compare_and_set("", "a.x", b"2".to_vec(), 0).await,
                Err(KvFailure::Conflict(r1))
            );
            let r2 = kv
                .compare_and_set("", "a.x", b"2".to_vec(), r1)
                .await
                .unwrap();
            assert!(r2 > r1);
            kv.put("", "a.y", b"3".to_vec()).await.unwrap();
            kv.put("", "ab", b"4".to_vec()).await.unwrap();
            kv.put("other", "a.z", b"5".to_vec()).await.unwrap();
            assert_eq!(kv.keys("", "a", 10).await.unwrap(), ["a.x", "a.y"]);
            assert_eq!(kv.keys("", "", 10).await.unwrap().len(), 3);
            kv.delete("", "a.x").await.unwrap();
            assert_eq!(kv.get("", "a.x").await.unwrap(), None);
            assert_eq!(
                kv.get("other", "a.z").await.unwrap(),
                Some((b"5".to_vec(), 1))
            );
        });
    }

    #[test]
    fn keys_follow_jetstream_rules() {
        assert!(check_key("users.alice").is_ok());
        assert!(check_key("a/b=c_d-e").is_ok());
        for bad in ["", ".a", "a.", "a..b", "a b", "a*", "a>"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }
}
