//! Real nats-server helpers: one private server per test (random loopback
//! port, temporary JetStream directory, stopped on drop), a publisher, the
//! dead letters of an app.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use weir_host::nats::{DEFAULT_DEAD_STREAM, DEFAULT_STREAM, NatsServer, Subjects, Transport};

/// The servers of `url`: one URL, or several separated by commas (a seed
/// list, as the helpers of this crate accept wherever they take a URL).
pub fn seed_list(url: &str) -> Vec<String> {
    url.split(',').map(str::to_owned).collect()
}

/// A private server; panics with the install hint if nats-server is missing.
/// Keep the directory alive as long as the server.
pub fn server() -> (NatsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = NatsServer::start(&dir.path().join("js")).unwrap_or_else(|e| panic!("{e}"));
    (server, dir)
}

/// A producer connection to `url` (one server or a seed list, see
/// [`seed_list`]; default prefix and stream) that has
/// created the streams.
///
/// # Errors
///
/// The connection or the stream setup failed.
pub async fn publisher(url: &str) -> anyhow::Result<Transport> {
    let t = Transport::connect_with(
        &seed_list(url),
        "publisher",
        Subjects::default(),
        DEFAULT_STREAM,
        weir_host::nats::ConnectAuth::default(),
    )
    .await?;
    t.ensure_streams().await?;
    Ok(t)
}

/// Publish `count` cluster-wide `user-domain-changed` events for `domain`
/// (payload `{"domains": [domain]}`), `gap` apart, ids `<prefix><n>`: a
/// storm of relevant events for an NS8 mail app serving `domain`.
///
/// # Errors
///
/// The first publish JetStream does not acknowledge.
pub async fn publish_domain_storm(
    publisher: &Transport,
    domain: &str,
    prefix: &str,
    count: usize,
    gap: Duration,
) -> anyhow::Result<()> {
    let payload = bytes::Bytes::from(format!(r#"{{"domains":["{domain}"]}}"#));
    for i in 0..count {
        publisher
            .publish_event(
                "user-domain-changed",
                "cluster",
                payload.clone(),
                &format!("{prefix}{i}"),
            )
            .await?;
        tokio::time::sleep(gap).await;
    }
    Ok(())
}

/// Wait (at most `within`) until the durable consumer `name` exists on the
/// events stream at `url` (one server or a seed list): a `weir run` child has
/// created its consumers, so an event published from now on is its.
/// Whether it did.
pub async fn wait_consumer(url: &str, name: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    // A server still starting (an embedded one) is retried until `within`.
    let Ok(client) = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(seed_list(url))
        .await
    else {
        return false;
    };
    let js = async_nats::jetstream::new(client);
    loop {
        if let Ok(stream) = js.get_stream(DEFAULT_STREAM).await
            && stream.consumer_info(name).await.is_ok()
        {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// Every dead letter stored for `app` on node 1 at `url` (one server or a
/// seed list), by original event
/// id (read with an ephemeral consumer until a fetch comes back empty).
///
/// # Errors
///
/// The server is unreachable or the dead-letter stream does not exist.
pub async fn dead_letters(url: &str, app: &str) -> anyhow::Result<BTreeMap<String, DeadLetter>> {
    let client = async_nats::connect(seed_list(url)).await?;
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

/// A cluster of private nats-servers on loopback: full-mesh routes,
/// JetStream on each (one store directory each), stopped on drop. Servers
/// are named `n0`, `n1`, ...; each keeps its client port across
/// [`Cluster::kill`] and [`Cluster::restart`].
pub struct Cluster {
    // `None` only while a restart runs on a blocking thread.
    servers: Vec<Option<NatsServer>>,
    _dir: tempfile::TempDir,
}

/// A free loopback port (bound, then released: another process could take
/// it in between, which a test would see as a start error).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Cluster {
    /// Start `n` servers and wait until JetStream answers through each;
    /// panics with the install hint if nats-server is missing, or if the
    /// cluster does not form within 30 s.
    pub async fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut servers = Vec::with_capacity(n);
        for (i, port) in routes.iter().enumerate() {
            let seeds = routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let file = dir.path().join(format!("n{i}.conf"));
            std::fs::write(
                &file,
                format!(
                    "server_name: n{i}\ncluster {{ name: weir-test, listen: \"127.0.0.1:{port}\", routes: [{seeds}] }}\n"
                ),
            )
            .expect("server config");
            let store = dir.path().join(format!("js{i}"));
            let server = tokio::task::spawn_blocking(move || {
                NatsServer::start_with_config(&store, &file).unwrap_or_else(|e| panic!("{e}"))
            })
            .await
            .expect("start thread");
            servers.push(Some(server));
        }
        let cluster = Self { servers, _dir: dir };
        for i in 0..n {
            cluster.wait_jetstream(i).await;
        }
        cluster
    }

    /// Every server's client URL, in order (a seed list).
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    fn server(&self, i: usize) -> &NatsServer {
        self.servers[i].as_ref().expect("server present")
    }

    /// Server `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        self.server(i).url()
    }

    /// Server `i`'s process id (`None` while it is killed).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.servers[i].as_ref().and_then(NatsServer::pid)
    }

    /// The number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The index of the server with client `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        (0..self.servers.len()).find(|&i| self.server(i).port() == port)
    }

    /// SIGKILL server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(s) = &mut self.servers[i] {
            s.kill();
        }
    }

    /// Delete killed server `i`'s JetStream store (a lost disk): it comes
    /// back from [`Cluster::restart`] with what its peers give it.
    pub fn wipe_store(&mut self, i: usize) {
        assert!(
            self.pid(i).is_none(),
            "kill server {i} before wiping its store"
        );
        let store = self._dir.path().join(format!("js{i}"));
        std::fs::remove_dir_all(&store).expect("remove the store");
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&store)
            .expect("an empty store");
    }

    /// Start server `i` again (same port, store and routes) and wait until
    /// JetStream answers through it.
    pub async fn restart(&mut self, i: usize) {
        let mut server = self.servers[i].take().expect("server present");
        let server = tokio::task::spawn_blocking(move || {
            server.restart().unwrap_or_else(|e| panic!("{e}"));
            server
        })
        .await
        .expect("restart thread");
        self.servers[i] = Some(server);
        self.wait_jetstream(i).await;
    }

    /// Wait (up to 30 s) until a JetStream request through server `i` is
    /// answered (the meta group has a leader).
    pub async fn wait_jetstream(&self, i: usize) {
        let url = self.url(i);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(client) = async_nats::connect(&url).await {
                let js = async_nats::jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "JetStream did not answer through {url} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The name (`n<i>`) of the leader of `stream`, asked through any live
    /// server.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        let client = async_nats::connect(self.urls()).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.ok()?;
        stream.info().await.ok()?.cluster.as_ref()?.leader.clone()
    }

    /// The name (`n<i>`) of the leader of `consumer` on `stream`.
    pub async fn consumer_leader(&self, stream: &str, consumer: &str) -> Option<String> {
        let client = async_nats::connect(self.urls()).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(stream).await.ok()?;
        let info = stream.consumer_info(consumer).await.ok()?;
        info.cluster.as_ref()?.leader.clone()
    }

    /// The name (`n<i>`) of the server holding the consumer `base` now,
    /// under whichever of its names ([`current_consumer`]) is in use.
    pub async fn current_consumer_leader(&self, stream: &str, base: &str) -> Option<String> {
        let client = async_nats::connect(self.urls()).await.ok()?;
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(stream).await.ok()?;
        let info = current_consumer(&stream, base).await?;
        info.cluster.as_ref()?.leader.clone()
    }

    /// Move the leader of `consumer` on `stream` to server `i` by asking
    /// the current leader to step down until the election lands there (at
    /// most 20 tries); whether it did.
    pub async fn move_consumer_leader(&self, stream: &str, consumer: &str, i: usize) -> bool {
        let want = format!("n{i}");
        let Ok(client) = async_nats::connect(self.urls()).await else {
            return false;
        };
        for _ in 0..20 {
            if self.consumer_leader(stream, consumer).await.as_deref() == Some(want.as_str()) {
                return true;
            }
            let _ = client
                .request(
                    format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}"),
                    bytes::Bytes::new(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }

    /// The index of a server named `n<i>`.
    pub fn index_of_name(name: &str) -> Option<usize> {
        name.strip_prefix('n')?.parse().ok()
    }
}

/// One message of a stream, as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its subject.
    pub subject: String,
    /// Its payload.
    pub payload: bytes::Bytes,
    /// Its `Nats-Msg-Id`, if any.
    pub msg_id: Option<String>,
    /// Its headers, as `name: value` pairs.
    pub headers: Vec<(String, String)>,
}

/// Every message stored in `stream` on the server at `url`, in stream
/// order (empty if the stream does not exist).
///
/// # Errors
///
/// The connection or a read failed.
pub async fn stored(url: &str, stream: &str) -> anyhow::Result<Vec<Stored>> {
    let client = async_nats::connect(seed_list(url).join(",")).await?;
    let js = async_nats::jetstream::new(client);
    let Ok(mut s) = js.get_stream(stream).await else {
        return Ok(Vec::new());
    };
    let state = s.info().await?.state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let Ok(m) = s.get_raw_message(seq).await else {
            continue;
        };
        let headers: Vec<(String, String)> = m
            .headers
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
            .collect();
        out.push(Stored {
            subject: m.subject.to_string(),
            payload: m.payload,
            msg_id: m
                .headers
                .get(weir_host::nats::subjects::MSG_ID_HEADER)
                .map(|v| v.to_string()),
            headers,
        });
    }
    Ok(out)
}

/// The info of consumer `base` under the name weir uses now: of its names
/// (`weir_host::nats::subjects::consumer_generation`; a failover makes the
/// consumer again under the next), the newest that answers; `None` if none
/// does.
pub async fn current_consumer(
    stream: &async_nats::jetstream::stream::Stream,
    base: &str,
) -> Option<async_nats::jetstream::consumer::Info> {
    let mut newest: Option<async_nats::jetstream::consumer::Info> = None;
    for generation in 0..weir_host::nats::subjects::CONSUMER_GENERATIONS {
        let name = weir_host::nats::subjects::consumer_generation(base, generation);
        if let Ok(info) = stream.consumer_info(&name).await
            && newest.as_ref().is_none_or(|n| info.created > n.created)
        {
            newest = Some(info);
        }
    }
    newest
}
