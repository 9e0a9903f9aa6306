//! The host side of the `kv` import: each call checked against the app's
//! grant, the key rules and the batch's budget ([`crate::kv`]), then run on
//! the app's [`KvBackend`] and waited for until the batch's deadline.

use std::sync::Arc;

use crate::bindings::weir::handler::kv::{self, Entry, Error};
use crate::kv::{
    KvBackend, KvFailure, KvFuture, MAX_BYTES_PER_BATCH, MAX_CALLS_PER_BATCH, MAX_INCREMENT_ROUNDS,
    MAX_KEYS_PER_CALL, MAX_VALUE_BYTES, check_key,
};
use crate::state::HostState;

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
