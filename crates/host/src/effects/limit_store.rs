//! Effect rate-limit windows ([`super::limit`]) in the replicated
//! key-value bucket named by [`subjects::limits_bucket`]
//! (`WEIR_LIMITS` by default): keys `n<node>.<app>.<digest>` for node
//! limits, `cluster.<app>.<digest>` for cluster limits, where the digest is
//! the first 32 hex characters of the SHA-256 of the limit's `effect`
//! pattern. Each slot is taken by compare-and-set, so hosts never together
//! exceed a cluster limit.

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::limit::LimitScope;
use crate::nats::{Transport, TransportError, js_err, subjects};

/// How long the bucket keeps a window: 2 days (twice the longest window,
/// [`super::limit::MAX_LIMIT_WINDOW_S`]).
pub const LIMITS_TTL: std::time::Duration = std::time::Duration::from_secs(2 * 86_400);

/// Cap on the limits bucket: 16 MiB.
pub const LIMITS_MAX_BYTES: i64 = 16 << 20;

/// Compare-and-set rounds before taking a slot gives up (the batch is
/// retried): 32.
pub const MAX_SLOT_ROUNDS: usize = 32;

/// One limit's current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Window {
    /// When it opened, ms since the Unix epoch.
    start_ms: u64,
    /// Executions counted in it.
    count: u32,
}

/// The limit windows of one node (and of the cluster).
#[derive(Clone)]
pub struct LimitStore {
    pub(super) store: kv::Store,
    pub(super) node: u32,
}

impl std::fmt::Debug for LimitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitStore")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl LimitStore {
    /// The store of `node` in the bucket named after `transport`'s events
    /// stream ([`subjects::limits_bucket`]), looked up or created with the
    /// configured replicas, [`LIMITS_TTL`] and [`LIMITS_MAX_BYTES`].
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the bucket can be neither found nor
    /// created.
    pub async fn open(transport: &Transport, node: u32) -> Result<Self, TransportError> {
        let store = transport
            .bucket(
                &subjects::limits_bucket(transport.stream()),
                "weir effect rate-limit windows",
                LIMITS_TTL,
                LIMITS_MAX_BYTES,
            )
            .await?;
        Ok(Self { store, node })
    }
    /// The key of the limit on `pattern` of `app` in `scope`.
    pub fn key(&self, scope: LimitScope, app: &str, pattern: &str) -> String {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(pattern.as_bytes());
        let owner = match scope {
            LimitScope::Node => format!("n{}", self.node),
            LimitScope::Cluster => "cluster".to_owned(),
        };
        format!("{owner}.{app}.{}", hex::encode(&digest[..16]))
    }

    /// Take one execution slot of the limit at `key` (`max` per `window_ms`)
    /// at `now_ms`: `Ok(Ok(()))` if taken, `Ok(Err(next))` if the window is
    /// full, `next` being when the next one opens (ms since the Unix epoch).
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the bucket cannot be read or written,
    /// or [`MAX_SLOT_ROUNDS`] writers beat this one in a row.
    pub async fn take(
        &self,
        key: &str,
        max: u32,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Result<(), u64>, TransportError> {
        for _ in 0..MAX_SLOT_ROUNDS {
            let entry = self
                .store
                .entry(key)
                .await
                .map_err(|e| js_err("limit window get")(e))?;
            let (current, revision) = match entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<Window>(&e.value).ok(),
                    Some(e.revision),
                ),
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            };
            let window = match current {
                Some(w) if now_ms < w.start_ms + window_ms => w,
                _ => Window {
                    start_ms: now_ms,
                    count: 0,
                },
            };
            if window.count >= max {
                return Ok(Err(window.start_ms + window_ms));
            }
            let next = Window {
                count: window.count + 1,
                ..window
            };
            let value = Bytes::from(
                serde_json::to_vec(&next).map_err(|e| js_err("limit window encode")(e))?,
            );
            let written = match revision {
                None => self.store.create(key, value).await.map(drop).map_err(|e| {
                    (e.kind() != kv::CreateErrorKind::AlreadyExists)
                        .then(|| js_err("limit window create")(e))
                }),
                Some(rev) => self
                    .store
                    .update(key, value, rev)
                    .await
                    .map(drop)
                    .map_err(|e| {
                        (e.kind() != kv::UpdateErrorKind::WrongLastRevision)
                            .then(|| js_err("limit window update")(e))
                    }),
            };
            match written {
                Ok(()) => return Ok(Ok(())),
                Err(Some(e)) => return Err(e),
                Err(None) => continue,
            }
        }
        Err(TransportError::JetStream {
            operation: "limit window",
            source: format!("{MAX_SLOT_ROUNDS} concurrent writers in a row").into(),
        })
    }
}
