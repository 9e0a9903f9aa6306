//! Pending effects: effects waiting for their debounce window to close, in
//! the replicated key-value bucket named by
//! [`subjects::pending_effects_bucket`]
//! (`WEIR_PENDING` by default), so a host killed inside a window executes
//! them when it (or the next host of its node) starts.
//!
//! Every change is a compare-and-set on the key's revision: two batches of
//! one app that ask for the same effect at once both join the same window,
//! and an execution that raced with a join keeps the joined events pending.

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};

use crate::nats::{Transport, TransportError, js_err, subjects};
use weir_runtime::{Effect, Message};

/// How long the bucket keeps a key after its last write (a pending effect,
/// or the marker left when one is executed): 48 h, beyond the longest
/// debounce wait (10 h) and the longest rate-limit window (24 h). A pending
/// effect whose execution fails is rewritten at each failure, so it does not
/// expire while it is being retried.
pub const PENDING_TTL: std::time::Duration = std::time::Duration::from_secs(48 * 3600);

/// Cap on the pending-effects bucket: 64 MiB. When full, recording a new
/// pending effect fails, the batch that asked for it is retried (nothing is
/// acked without its effect recorded).
pub const PENDING_MAX_BYTES: i64 = 64 << 20;

/// An effect as the bucket stores it (the WIT type has no serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoredEffect {
    /// [`Effect::Restart`].
    Restart {
        /// The unit.
        unit: String,
    },
    /// [`Effect::Reload`].
    Reload {
        /// The unit.
        unit: String,
    },
    /// [`Effect::Publish`].
    Publish {
        /// Event name.
        name: String,
        /// Payload bytes.
        payload: Vec<u8>,
    },
}

impl From<&Effect> for StoredEffect {
    fn from(effect: &Effect) -> Self {
        match effect {
            Effect::Restart(unit) => Self::Restart { unit: unit.clone() },
            Effect::Reload(unit) => Self::Reload { unit: unit.clone() },
            Effect::Publish(m) => Self::Publish {
                name: m.name.clone(),
                payload: m.payload.clone(),
            },
        }
    }
}

impl From<&StoredEffect> for Effect {
    fn from(effect: &StoredEffect) -> Self {
        match effect {
            StoredEffect::Restart { unit } => Self::Restart(unit.clone()),
            StoredEffect::Reload { unit } => Self::Reload(unit.clone()),
            StoredEffect::Publish { name, payload } => Self::Publish(Message {
                name: name.clone(),
                payload: payload.clone(),
            }),
        }
    }
}

/// One pending effect: what to execute, for which events, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEffect {
    /// The app that asked for it.
    pub app: String,
    /// The effect.
    pub effect: StoredEffect,
    /// Ids of the events that asked for it, in order of request, without
    /// repeats; at most [`super::MAX_PENDING_EVENTS`] (later ones
    /// are counted in `requests` only).
    pub event_ids: Vec<String>,
    /// Batches that asked for it in this window.
    pub requests: u64,
    /// When the window opened (the first request), ms since the Unix epoch.
    pub first_ms: u64,
    /// When it is executed, ms since the Unix epoch: the last request plus
    /// the window, never later than `first_ms` plus the longest wait.
    pub due_ms: u64,
    /// The window in ms (`debounce_ms` when it opened).
    pub window_ms: u64,
    /// The longest wait in ms from `first_ms`.
    pub max_wait_ms: u64,
    /// The rate limit that applies to it, checked when it is executed.
    #[serde(default)]
    pub limit: Option<super::limit::EffectLimit>,
    /// Failed executions so far (each rewrites the entry, so the bucket's
    /// age limit counts from the last one).
    #[serde(default)]
    pub failures: u32,
    /// Its records are the cluster's (a `scope = "cluster"` app), not the
    /// node's.
    pub shared: bool,
    /// The `traceparent` of the effect span that opened the window, when
    /// traces were exported: its execution is a span of that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// A revisioned read of a pending effect.
#[derive(Debug, Clone)]
pub struct Revisioned {
    /// The effect.
    pub pending: PendingEffect,
    /// The key's revision, for compare-and-set.
    pub revision: u64,
}

/// The pending effects of one node: keys `n<node>.<app>.<digest>` where the
/// digest is the first 32 hex characters of the SHA-256 of the effect as
/// [`super::describe`] names it.
#[derive(Clone)]
pub struct PendingStore {
    pub(super) store: kv::Store,
    pub(super) prefix: String,
}

impl std::fmt::Debug for PendingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A compare-and-set lost to another writer: read again and retry.
#[derive(Debug)]
pub struct Conflict;

impl PendingStore {
    /// The store of `node` in the bucket named after `transport`'s events
    /// stream ([`subjects::pending_effects_bucket`]), looked up or created with the
    /// configured replicas, [`PENDING_TTL`] and [`PENDING_MAX_BYTES`].
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the bucket can be neither found nor
    /// created.
    pub async fn open(transport: &Transport, node: u32) -> Result<Self, TransportError> {
        let store = transport
            .bucket(
                &subjects::pending_effects_bucket(transport.stream()),
                "weir pending (debounced) effects",
                PENDING_TTL,
                PENDING_MAX_BYTES,
            )
            .await?;
        Ok(Self {
            store,
            prefix: format!("n{node}"),
        })
    }
    /// The key of `effect` (as described) of `app` on this node.
    pub fn key(&self, app: &str, described: &str) -> String {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(described.as_bytes());
        format!("{}.{app}.{}", self.prefix, hex::encode(&digest[..16]))
    }

    /// The pending effect under `key` with its revision; `None` when there
    /// is none (never written, executed, or expired).
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the bucket cannot be read or the
    /// value is not a pending effect.
    pub async fn get(&self, key: &str) -> Result<Option<Revisioned>, TransportError> {
        let Some(entry) = self
            .store
            .entry(key)
            .await
            .map_err(|e| js_err("pending effect get")(e))?
        else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let pending =
            serde_json::from_slice(&entry.value).map_err(|e| js_err("pending effect decode")(e))?;
        Ok(Some(Revisioned {
            pending,
            revision: entry.revision,
        }))
    }

    /// Write `pending` under `key`: created if `revision` is `None` (or the
    /// key was deleted), else only if the key is still at `revision`.
    /// Acknowledged by JetStream (replicated) before it returns.
    ///
    /// # Errors
    ///
    /// `Ok(Err(Conflict))` if another writer got there first;
    /// [`TransportError::JetStream`] otherwise.
    pub async fn write(
        &self,
        key: &str,
        pending: &PendingEffect,
        revision: Option<u64>,
    ) -> Result<Result<u64, Conflict>, TransportError> {
        let value = Bytes::from(
            serde_json::to_vec(pending).map_err(|e| js_err("pending effect encode")(e))?,
        );
        match revision {
            None => match self.store.create(key, value).await {
                Ok(rev) => Ok(Ok(rev)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(Err(Conflict)),
                Err(e) => Err(js_err("pending effect create")(e)),
            },
            Some(rev) => match self.store.update(key, value, rev).await {
                Ok(rev) => Ok(Ok(rev)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Err(Conflict)),
                Err(e) => Err(js_err("pending effect update")(e)),
            },
        }
    }

    /// Remove the pending effect under `key` if it is still at `revision`.
    ///
    /// # Errors
    ///
    /// `Ok(Err(Conflict))` if it changed since (read it again);
    /// [`TransportError::JetStream`] if the bucket cannot be written.
    pub async fn remove(
        &self,
        key: &str,
        revision: u64,
    ) -> Result<Result<(), Conflict>, TransportError> {
        match self.store.delete_expect_revision(key, Some(revision)).await {
            Ok(()) => Ok(Ok(())),
            Err(e) => match self.get(key).await? {
                Some(now) if now.revision != revision => Ok(Err(Conflict)),
                None => Ok(Ok(())),
                Some(_) => Err(js_err("pending effect delete")(e)),
            },
        }
    }

    /// The keys of this node's pending effects.
    ///
    /// # Errors
    ///
    /// [`TransportError::JetStream`] if the bucket cannot be listed.
    pub async fn keys(&self) -> Result<Vec<String>, TransportError> {
        let own = format!("{}.", self.prefix);
        let keys = self
            .store
            .keys()
            .await
            .map_err(|e| js_err("pending effect keys")(e))?;
        let keys: Vec<String> = keys
            .try_collect()
            .await
            .map_err(|e| js_err("pending effect keys")(e))?;
        Ok(keys.into_iter().filter(|k| k.starts_with(&own)).collect())
    }
}
