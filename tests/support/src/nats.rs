//! Real nats-server helpers: one private server per test (random loopback
//! port, temporary JetStream directory, stopped on drop), a publisher, the
//! dead letters of an app.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use weir_host::nats::{DEFAULT_DEAD_STREAM, DEFAULT_STREAM, NatsServer, Subjects, Transport};

/// A private server; panics with the install hint if nats-server is missing.
/// Keep the directory alive as long as the server.
pub fn server() -> (NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = NatsServer::start(&dir.path().join("js")).unwrap_or_else(|e| panic!("{e}"));
    (server, dir)
}

/// A producer connection to `url` (default prefix and stream) that has
/// created the streams.
///
/// # Errors
///
/// The connection or the stream setup failed.
pub async fn publisher(url: &str) -> anyhow::Result<Transport> {
    let t = Transport::connect(url, "publisher", Subjects::default(), DEFAULT_STREAM).await?;
    t.ensure_streams().await?;
    Ok(t)
}

/// One stored dead letter (its `Weir-*` headers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadLetter {
    /// `Weir-Dead-Reason`.
    pub reason: String,
    /// `Weir-Original-Id`.
    pub id: String,
    /// `Weir-Attempts`.
    pub attempts: String,
}

/// Every dead letter stored for `app` on node 1 at `url`, by original event
/// id (read with an ephemeral consumer until a fetch comes back empty).
///
/// # Errors
///
/// The server is unreachable or the dead-letter stream does not exist.
pub async fn dead_letters(url: &str, app: &str) -> anyhow::Result<BTreeMap<String, DeadLetter>> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(DEFAULT_DEAD_STREAM).await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: format!("weir.dead.1.{app}"),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("dead-letter reader: {e}"))?;
    let mut out = BTreeMap::new();
    loop {
        let mut msgs = consumer
            .fetch()
            .max_messages(1_000)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("dead-letter fetch: {e}"))?;
        let mut got = 0;
        while let Some(Ok(m)) = msgs.next().await {
            got += 1;
            let h = m.headers.clone().unwrap_or_default();
            let get = |k: &str| h.get(k).map(ToString::to_string).unwrap_or_default();
            let letter = DeadLetter {
                reason: get("Weir-Dead-Reason"),
                id: get("Weir-Original-Id"),
                attempts: get("Weir-Attempts"),
            };
            out.insert(letter.id.clone(), letter);
        }
        if got == 0 {
            return Ok(out);
        }
    }
}
