//! The `weir:handler/kv` import (WIT 0.2.0): cluster state for handlers,
//! granted per app and bounded per call and per batch.
//!
//! The runtime knows nothing of NATS: an app's buckets are reached through
//! a [`KvBackend`] attached after the host connects
//! ([`crate::runtime::App::attach_kv`]; the JetStream implementation is
//! [`crate::nats::buckets`]). A call is checked here first: the bucket must be
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

use crate::bindings::weir::handler::kv::{self, Entry, Error};
use crate::runtime::state::HostState;

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
    grant: KvGrant,
    backend: std::sync::OnceLock<Arc<dyn KvBackend>>,
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

impl HostState {
    /// Check the grant, the key and the budget for one call moving `bytes`
    /// bytes; the backend.
    fn kv_call(
        &mut self,
        bucket: &str,
        key: Option<&str>,
        bytes: usize,
    ) -> Result<Arc<dyn KvBackend>, Error> {
        let access = self.identity.kv.clone();
        let granted = if bucket.is_empty() {
            access.grant.own
        } else {
            access.grant.shared.iter().any(|b| b == bucket)
        };
        if !granted {
            return Err(Error::Denied(bucket.to_owned()));
        }
        if let Some(key) = key {
            check_key(key).map_err(Error::InvalidKey)?;
        }
        self.kv_budget.calls += 1;
        if self.kv_budget.calls > MAX_CALLS_PER_BATCH {
            return Err(Error::OverBudget(format!(
                "more than {MAX_CALLS_PER_BATCH} kv calls in one batch"
            )));
        }
        self.kv_charge(key.map_or(0, str::len) + bytes)?;
        access.backend.get().cloned().ok_or_else(|| {
            Error::Unavailable("no key-value store on this host (no NATS)".to_owned())
        })
    }

    fn kv_charge(&mut self, bytes: usize) -> Result<(), Error> {
        self.kv_budget.bytes += bytes as u64;
        if self.kv_budget.bytes > MAX_BYTES_PER_BATCH {
            return Err(Error::OverBudget(format!(
                "more than {MAX_BYTES_PER_BATCH} bytes of kv keys and values in one batch"
            )));
        }
        Ok(())
    }

    /// Run a backend call, waiting at most until the batch's deadline.
    fn kv_wait<T>(&self, call: KvFuture<'_, T>) -> Result<T, Error> {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        match wasmtime_wasi::runtime::in_tokio(async {
            tokio::time::timeout_at(deadline, call).await
        }) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(KvFailure::Conflict(rev))) => Err(Error::Conflict(rev)),
            Ok(Err(KvFailure::Unavailable(why))) => Err(Error::Unavailable(why)),
            Err(_) => Err(Error::Unavailable(
                "the store did not answer before the batch's deadline".to_owned(),
            )),
        }
    }

    fn check_value(value: &[u8]) -> Result<(), Error> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(Error::TooLarge(MAX_VALUE_BYTES as u64));
        }
        Ok(())
    }
}

/// The calls themselves; [`kv::Host`] counts their errors.
impl HostState {
    fn kv_get(&mut self, bucket: String, key: String) -> Result<Option<Entry>, Error> {
        let backend = self.kv_call(&bucket, Some(&key), 0)?;
        let got = self.kv_wait(backend.get(&bucket, &key))?;
        if let Some((value, _)) = &got {
            self.kv_charge(value.len())?;
        }
        Ok(got.map(|(value, revision)| Entry { value, revision }))
    }

    fn kv_put(&mut self, bucket: String, key: String, value: Vec<u8>) -> Result<u64, Error> {
        Self::check_value(&value)?;
        let backend = self.kv_call(&bucket, Some(&key), value.len())?;
        self.kv_wait(backend.put(&bucket, &key, value))
    }

    fn kv_compare_and_set(
        &mut self,
        bucket: String,
        key: String,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<u64, Error> {
        Self::check_value(&value)?;
        let backend = self.kv_call(&bucket, Some(&key), value.len())?;
        self.kv_wait(backend.compare_and_set(&bucket, &key, value, revision))
    }

    fn kv_delete(&mut self, bucket: String, key: String) -> Result<(), Error> {
        let backend = self.kv_call(&bucket, Some(&key), 0)?;
        self.kv_wait(backend.delete(&bucket, &key))
    }

    fn kv_keys(
        &mut self,
        bucket: String,
        prefix: String,
        limit: u32,
    ) -> Result<Vec<String>, Error> {
        if !prefix.is_empty() {
            check_key(&prefix).map_err(Error::InvalidKey)?;
        }
        let backend = self.kv_call(&bucket, None, prefix.len())?;
        let limit = limit.min(MAX_KEYS_PER_CALL) as usize;
        let keys = self.kv_wait(backend.keys(&bucket, &prefix, limit))?;
        self.kv_charge(keys.iter().map(String::len).sum())?;
        Ok(keys)
    }

    fn kv_increment(&mut self, bucket: String, key: String, delta: i64) -> Result<i64, Error> {
        let backend = self.kv_call(&bucket, Some(&key), 20)?;
        for _ in 0..MAX_INCREMENT_ROUNDS {
            let current = self.kv_wait(backend.get(&bucket, &key))?;
            let (value, revision) = match &current {
                None => (0, 0),
                Some((bytes, revision)) => {
                    let text = std::str::from_utf8(bytes).unwrap_or("");
                    let n = text.trim().parse::<i64>().map_err(|_| {
                        Error::Unavailable(format!("{key:?} does not hold a decimal integer"))
                    })?;
                    (n, *revision)
                }
            };
            let next = value.checked_add(delta).ok_or_else(|| {
                Error::Unavailable(format!("{key:?} would overflow a 64-bit integer"))
            })?;
            match self.kv_wait(backend.compare_and_set(
                &bucket,
                &key,
                next.to_string().into_bytes(),
                revision,
            )) {
                Ok(_) => return Ok(next),
                Err(Error::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Unavailable(format!(
            "{MAX_INCREMENT_ROUNDS} concurrent writers in a row on {key:?}"
        )))
    }
}

/// Count `result` as an error of the batch's kv calls if it is one.
fn counted<T>(state: &mut HostState, result: Result<T, Error>) -> Result<T, Error> {
    if result.is_err() {
        state.kv_budget.errors += 1;
    }
    result
}

impl kv::Host for HostState {
    fn get(&mut self, bucket: String, key: String) -> Result<Option<Entry>, Error> {
        let r = self.kv_get(bucket, key);
        counted(self, r)
    }

    fn put(&mut self, bucket: String, key: String, value: Vec<u8>) -> Result<u64, Error> {
        let r = self.kv_put(bucket, key, value);
        counted(self, r)
    }

    fn compare_and_set(
        &mut self,
        bucket: String,
        key: String,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<u64, Error> {
        let r = self.kv_compare_and_set(bucket, key, value, revision);
        counted(self, r)
    }

    fn delete(&mut self, bucket: String, key: String) -> Result<(), Error> {
        let r = self.kv_delete(bucket, key);
        counted(self, r)
    }

    fn keys(&mut self, bucket: String, prefix: String, limit: u32) -> Result<Vec<String>, Error> {
        let r = self.kv_keys(bucket, prefix, limit);
        counted(self, r)
    }

    fn increment(&mut self, bucket: String, key: String, delta: i64) -> Result<i64, Error> {
        let r = self.kv_increment(bucket, key, delta);
        counted(self, r)
    }
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
