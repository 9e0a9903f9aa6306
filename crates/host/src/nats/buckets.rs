//! Handlers' key-value buckets on JetStream: the [`KvBackend`] behind the
//! `weir:handler/kv` import.
//!
//! An app granted `kv` gets its own bucket, [`subjects::app_kv_bucket`]
//! (`WEIR_KV_<app>`); `kv_shared = ["name"]` grants
//! [`subjects::shared_kv_bucket`] (`WEIR_KVS_<name>`), which every app
//! granted that name shares. Buckets are created at start (or by the reload
//! that adds the app) with the configured replicas, one revision kept per
//! key, and [`KV_BUCKET_MAX_BYTES`]; an existing one is used as it is.

use std::collections::HashMap;

use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;

use super::{Transport, TransportError, subjects};
use weir_runtime::kv::{KvBackend, KvFailure, KvFuture, KvGrant};

/// Cap on each handler bucket weir creates: 64 MiB. A full bucket refuses
/// writes (`unavailable` to the handler); nothing stored is dropped.
pub const KV_BUCKET_MAX_BYTES: i64 = 64 << 20;

/// One app's buckets: its own (if granted) and the shared ones it is
/// granted, by name.
#[derive(Clone)]
pub struct AppBuckets {
    client: async_nats::Client,
    own: Option<kv::Store>,
    shared: HashMap<String, kv::Store>,
    /// Granted buckets that do not exist, read as empty ([`open_existing`]:
    /// `""` for the app's own).
    absent: Vec<String>,
}

impl std::fmt::Debug for AppBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBuckets")
            .field("own", &self.own.as_ref().map(|s| &s.name))
            .field("shared", &self.shared.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> KvFailure {
    KvFailure::Unavailable(e.to_string())
}

impl AppBuckets {
    fn store(&self, bucket: &str) -> Result<&kv::Store, KvFailure> {
        if bucket.is_empty() {
            self.own.as_ref()
        } else {
            self.shared.get(bucket)
        }
        .ok_or_else(|| KvFailure::Unavailable(format!("bucket {bucket:?} is not set up")))
    }

    /// The current revision of `key` (0 if absent), for a conflict report.
    async fn revision(store: &kv::Store, key: &str) -> u64 {
        match store.entry(key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => e.revision,
            _ => 0,
        }
    }
}

impl KvBackend for AppBuckets {
    fn get<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, Option<(Vec<u8>, u64)>> {
        Box::pin(async move {
            if self.absent.iter().any(|b| b == bucket) {
                return Ok(None);
            }
            let store = self.store(bucket)?;
            match store.entry(key).await.map_err(unavailable)? {
                Some(e) if e.operation == kv::Operation::Put => {
                    Ok(Some((e.value.to_vec(), e.revision)))
                }
                _ => Ok(None),
            }
        })
    }

    fn put<'a>(&'a self, bucket: &'a str, key: &'a str, value: Vec<u8>) -> KvFuture<'a, u64> {
        Box::pin(async move {
            let store = self.store(bucket)?;
            store.put(key, value.into()).await.map_err(unavailable)
        })
    }

    fn compare_and_set<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        value: Vec<u8>,
        revision: u64,
    ) -> KvFuture<'a, u64> {
        Box::pin(async move {
            let store = self.store(bucket)?;
            let written = if revision == 0 {
                store.create(key, value.into()).await.map_err(|e| {
                    if e.kind() == kv::CreateErrorKind::AlreadyExists {
                        None
                    } else {
                        Some(unavailable(e))
                    }
                })
            } else {
                store
                    .update(key, value.into(), revision)
                    .await
                    .map_err(|e| {
                        if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                            None
                        } else {
                            Some(unavailable(e))
                        }
                    })
            };
            match written {
                Ok(rev) => Ok(rev),
                Err(Some(e)) => Err(e),
                Err(None) => Err(KvFailure::Conflict(Self::revision(store, key).await)),
            }
        })
    }

    fn delete<'a>(&'a self, bucket: &'a str, key: &'a str) -> KvFuture<'a, ()> {
        Box::pin(async move {
            let store = self.store(bucket)?;
            store.delete(key).await.map_err(unavailable)
        })
    }

    fn keys<'a>(
        &'a self,
        bucket: &'a str,
        prefix: &'a str,
        limit: usize,
    ) -> KvFuture<'a, Vec<String>> {
        Box::pin(async move {
            if self.absent.iter().any(|b| b == bucket) {
                return Ok(Vec::new());
            }
            let store = self.store(bucket)?;
            let filter = if prefix.is_empty() {
                format!("{}>", store.prefix)
            } else {
                format!("{}{prefix}.>", store.prefix)
            };
            let consumer = store
                .stream
                .create_consumer(jetstream::consumer::push::OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    filter_subject: filter,
                    headers_only: true,
                    replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                    deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?;
            let mut keys = Vec::new();
            if consumer.cached_info().num_pending == 0 || limit == 0 {
                return Ok(keys);
            }
            let mut messages = consumer.messages().await.map_err(unavailable)?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(unavailable)?;
                let info = message.info().map_err(unavailable)?;
                let pending = info.pending;
                let deleted = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
                if !deleted && let Some(key) = message.subject.strip_prefix(store.prefix.as_str()) {
                    keys.push(key.to_owned());
                }
                if pending == 0 || keys.len() >= limit {
                    break;
                }
            }
            Ok(keys)
        })
    }
}

/// The buckets `grant` gives app `app`, each looked up or created (with
/// the configured replicas, one revision per key,
/// [`KV_BUCKET_MAX_BYTES`]).
///
/// # Errors
///
/// [`TransportError::JetStream`] for the first bucket that can be
/// neither found nor created.
pub(crate) async fn open(
    transport: &Transport,
    app: &str,
    grant: &KvGrant,
) -> Result<AppBuckets, TransportError> {
    let own = if grant.own {
        Some(
            transport
                .bucket(
                    &subjects::app_kv_bucket(transport.stream(), app),
                    &format!("weir key-value bucket of app {app}"),
                    std::time::Duration::ZERO,
                    KV_BUCKET_MAX_BYTES,
                )
                .await?,
        )
    } else {
        None
    };
    let mut shared = HashMap::new();
    for name in &grant.shared {
        let store = transport
            .bucket(
                &subjects::shared_kv_bucket(transport.stream(), name),
                &format!("weir shared key-value bucket {name}"),
                std::time::Duration::ZERO,
                KV_BUCKET_MAX_BYTES,
            )
            .await?;
        shared.insert(name.clone(), store);
    }
    Ok(AppBuckets {
        client: transport.client().clone(),
        own,
        shared,
        absent: Vec::new(),
    })
}

/// The buckets `grant` gives app `app` as they are, for reading (`weir
/// replay`): none is created, and one that does not exist reads as empty.
///
/// # Errors
///
/// [`TransportError::JetStream`] for the first bucket that cannot be looked
/// up (other than not existing).
pub async fn open_existing(
    transport: &Transport,
    app: &str,
    grant: &KvGrant,
) -> Result<AppBuckets, TransportError> {
    let mut buckets = AppBuckets {
        client: transport.client().clone(),
        own: None,
        shared: HashMap::new(),
        absent: Vec::new(),
    };
    let mut wanted = Vec::new();
    if grant.own {
        wanted.push((
            String::new(),
            subjects::app_kv_bucket(transport.stream(), app),
        ));
    }
    for name in &grant.shared {
        wanted.push((
            name.clone(),
            subjects::shared_kv_bucket(transport.stream(), name),
        ));
    }
    for (id, bucket) in wanted {
        // Looked up as a stream first: only "not found" reads as empty.
        match transport
            .jetstream()
            .get_stream(format!("KV_{bucket}"))
            .await
        {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                buckets.absent.push(id);
                continue;
            }
            Err(e) => return Err(super::js_err("key-value bucket")(e)),
        }
        let store = transport
            .jetstream()
            .get_key_value(&bucket)
            .await
            .map_err(super::js_err("key-value bucket"))?;
        if id.is_empty() {
            buckets.own = Some(store);
        } else {
            buckets.shared.insert(id, store);
        }
    }
    Ok(buckets)
}
