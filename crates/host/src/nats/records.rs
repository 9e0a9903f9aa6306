//! Effect idempotency records: which effects a node has already executed,
//! in the replicated key-value bucket [`EFFECT_RECORDS_BUCKET`](super::EFFECT_RECORDS_BUCKET).

use async_nats::jetstream::kv;

use bytes::Bytes;

use super::{TransportError, js_err};

/// Effect idempotency records of one node (or of the cluster,
/// [`EffectRecords::cluster`]): keys `n<node>.<app>.<digest>` (`cluster.<app>.<digest>`) in
/// the [`EFFECT_RECORDS_BUCKET`](super::EFFECT_RECORDS_BUCKET) bucket, where the digest is the SHA-256 of
/// (app, event id, effect) in hex, first 32 characters.
#[derive(Clone)]
pub struct EffectRecords {
    pub(super) store: kv::Store,
    pub(super) prefix: String,
}

impl std::fmt::Debug for EffectRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EffectRecords")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EffectRecords {
    /// The same bucket under the cluster's prefix, `cluster`: the records of
    /// `scope = "cluster"` apps, whose events any node may handle (a
    /// redelivery to another node finds the record of the first).
    #[must_use]
    pub fn cluster(&self) -> Self {
        Self {
            store: self.store.clone(),
            prefix: "cluster".to_owned(),
        }
    }

    fn key(&self, app: &str, digest: &str) -> String {
        format!("{}.{app}.{digest}", self.prefix)
    }

    /// Whether the record `digest` of `app` exists.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the bucket cannot be read.
    pub async fn contains(&self, app: &str, digest: &str) -> Result<bool, TransportError> {
        self.store
            .get(self.key(app, digest))
            .await
            .map(|v| v.is_some())
            .map_err(|e| js_err("effect record get")(e))
    }

    /// Store the records `digests` of `app`, concurrently, each acknowledged
    /// by JetStream.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] for the first record not stored.
    pub async fn insert(&self, app: &str, digests: &[String]) -> Result<(), TransportError> {
        let puts = digests
            .iter()
            .map(|d| self.store.put(self.key(app, d), Bytes::from_static(b"1")));
        for result in futures::future::join_all(puts).await {
            result.map_err(|e| js_err("effect record put")(e))?;
        }
        Ok(())
    }
}
