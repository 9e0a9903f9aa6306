//! A replayed version's key-value buckets: reads see the live buckets as
//! they are now, writes stay in this process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use weir_runtime::kv::{KvBackend, KvFailure, KvFuture};

/// First revision an overlay write gets: 2^48, above any revision a live
/// bucket reaches in practice, so a handler's compare-and-set on a value it
/// read back from the overlay never matches a live revision by chance.
pub const OVERLAY_FIRST_REVISION: u64 = 1 << 48;

/// A value and its revision, as a [`KvBackend`] returns them.
type Entry = (Vec<u8>, u64);

/// An overlay over `base` (the app's live buckets, read only; `None`: no
/// live buckets, reads find nothing). Each replayed version gets its own,
/// so one version's writes are never read by the other.
#[derive(Debug)]
pub struct OverlayKv {
    base: Option<Arc<dyn KvBackend>>,
    /// (bucket, key) -> the value and revision written here, or `None`
    /// for a delete.
    written: Mutex<BTreeMap<(String, String), Option<Entry>>>,
    last: Mutex<u64>,
}

impl OverlayKv {
    /// An empty overlay over `base`.
    pub fn new(base: Option<Arc<dyn KvBackend>>) -> Self {
        Self {
            base,
            written: Mutex::default(),
            last: Mutex::new(OVERLAY_FIRST_REVISION - 1),
        }
    }

    /// Forget every write (the shadow run clears its overlay before each
    /// batch, which keeps it bounded by one batch's kv calls).
    pub fn clear(&self) {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Keys written or deleted here, in all buckets.
    pub fn writes(&self) -> usize {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn local(&self, bucket: &str, key: &str) -> Option<Option<Entry>> {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(bucket.to_owned(), key.to_owned()))
            .cloned()
    }

    fn write(&self, bucket: &str, key: &str, value: Option<Vec<u8>>) -> u64 {
        let revision = {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            *last += 1;
            *last
        };
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                (bucket.to_owned(), key.to_owned()),
                value.map(|v| (v, revision)),
            );
        revision
    }

    async fn current(&self, bucket: &str, key: &str) -> Result<Option<Entry>, KvFailure> {
        if let Some(local) = self.local(bucket, key) {
            return Ok(local);
        }
        match &self.base {
            Some(base) => base.get(bucket, key).await,
            None => Ok(None),
        }
    }
}

impl KvBackend for OverlayKv {
    fn get<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, Option<(Vec<u8>, u64)>> {
        Box::pin(self.current(bucket, key))
    }

    fn put<'a>(&'a self, bucket: &'a str, key: &'a str, value: Vec<u8>) -> KvFuture<'a, u64> {
        Box::pin(async move { Ok(self.write(bucket, key, Some(value))) })
    }

    fn compare_and_set<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> KvFuture<'a, u64> {
        Box::pin(async move {
            let current = self.current(bucket, key).await?.map_or(0, |(_, r)| r);
            if current == revision {
                Ok(self.write(bucket, key, Some(value)))
            } else {
                Err(KvFailure::Conflict(current))
            }
        })
    }

    fn delete<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, ()> {
        Box::pin(async move {
            self.write(bucket, key, None);
            Ok(())
        })
    }

    fn keys<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
        limit: usize,
    ) -> KvFuture<'a, Vec<String>> {
        Box::pin(async move {
            // The live keys (up to `limit` plus what the overlay may hide),
            // with the overlay's deletes removed and its puts added.
            let (mut keys, written) = {
                let written = self
                    .written
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .filter(|((b, _), _)| b == bucket)
                    .map(|((_, k), v)| (k.clone(), v.is_some()))
                    .collect::<Vec<_>>();
                (std::collections::BTreeSet::new(), written)
            };
            if let Some(base) = &self.base {
                let hidden = written.iter().filter(|(_, live)| !live).count();
                keys.extend(
                    base.keys(bucket, prefix, limit.saturating_add(hidden))
                        .await?,
                );
            }
            let under = format!("{prefix}.");
            for (key, live) in written {
                if !live {
                    keys.remove(&key);
                } else if prefix.is_empty() || key.starts_with(&under) {
                    keys.insert(key);
                }
            }
            Ok(keys.into_iter().take(limit).collect())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use weir_runtime::kv::MemoryKv;

    #[test]
    fn writes_stay_in_the_overlay_and_reads_fall_through() {
        let rt = crate::test_runtime();
        rt.block_on(async {
            let live = Arc::new(MemoryKv::default());
            live.put("", "a.1", b"live".to_vec()).await.unwrap();
            live.put("", "a.2", b"live".to_vec()).await.unwrap();
            let one = OverlayKv::new(Some(live.clone()));
            let other = OverlayKv::new(Some(live.clone()));

            let (value, revision) = one.get("", "a.1").await.unwrap().unwrap();
            assert_eq!(value, b"live");
            let mine = one
                .compare_and_set("", "a.1", b"mine".to_vec(), revision)
                .await
                .unwrap();
            assert!(mine >= OVERLAY_FIRST_REVISION);
            one.delete("", "a.2").await.unwrap();
            one.put("", "a.3", b"new".to_vec()).await.unwrap();

            assert_eq!(one.get("", "a.1").await.unwrap().unwrap().0, b"mine");
            assert_eq!(one.get("", "a.2").await.unwrap(), None);
            assert_eq!(one.keys("", "a", 10).await.unwrap(), ["a.1", "a.3"]);
            assert_eq!(
                one.compare_and_set("", "a.1", b"x".to_vec(), revision)
                    .await,
                Err(KvFailure::Conflict(mine))
            );
            // Neither the live buckets nor the other version see any of it.
            assert_eq!(live.get("", "a.1").await.unwrap().unwrap().0, b"live");
            assert_eq!(live.keys("", "a", 10).await.unwrap(), ["a.1", "a.2"]);
            assert_eq!(other.get("", "a.1").await.unwrap().unwrap().0, b"live");
            assert_eq!(one.writes(), 3);
            assert_eq!(other.writes(), 0);
        });
    }
}
