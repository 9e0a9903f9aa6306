//! A private redis-server per test or demo (Debian's `redis-server`:
//! random loopback port, no persistence, a temporary directory, killed on
//! drop), and publishing on it as NS8 does (`PUBLISH channel payload`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nats::free_port;

/// The binary: `$WEIR_REDIS_SERVER`, else `redis-server` on `PATH`.
pub fn binary() -> PathBuf {
    std::env::var_os("WEIR_REDIS_SERVER").map_or_else(|| "redis-server".into(), PathBuf::from)
}

/// Longest wait for a redis-server to answer: 10 s.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    replica_of: Option<u16>,
    /// Extra arguments (TLS, ACL users); with them, readiness is the port
    /// accepting connections (the check cannot authenticate).
    extra: Vec<String>,
}

impl RedisServer {
    /// Start one on a free port; panics with the install hint if
    /// redis-server is missing or does not answer within
    /// [`START_TIMEOUT`].
    pub fn start() -> Self {
        Self::start_replica(None)
    }

    /// Start a replica of the server on `primary`'s port (`None`: a
    /// primary). A replica delivers the primary's PUBLISHes to its own
    /// subscribers, as NS8's per-node replicas do.
    pub fn start_replica(primary: Option<u16>) -> Self {
        let mut s = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temporary directory"),
            replica_of: primary,
            extra: Vec::new(),
        };
        s.spawn();
        s
    }

    /// Start one with `args` added to its command line, each config line's
    /// words as separate arguments (`["--user", "weir", "on", ">pw",
    /// "allchannels", "+@all"]`). With `tls`, the port is a TLS port
    /// (`--tls-port`; the plain port is off): give the `--tls-*` files in
    /// `args`.
    pub fn start_with(args: &[&str], tls: bool) -> Self {
        let port = free_port();
        let mut extra: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        if tls {
            extra.extend(["--tls-port".to_owned(), port.to_string()]);
        }
        let mut s = Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("temporary directory"),
            replica_of: None,
            extra,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let tls = self.extra.iter().any(|a| a == "--tls-port");
        let plain_port = if tls { 0 } else { self.port };
        let mut cmd = Command::new(binary());
        cmd.args(["--port", &plain_port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            // A replica's first sync starts at once (Redis 7 waits 5 s for
            // more replicas by default).
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(primary) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (Debian: apt-get install redis-server)",
                    binary().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let up = if self.extra.is_empty() {
                self.info("replication").is_some_and(|info| {
                    self.replica_of.is_none() || info.contains("master_link_status:up")
                })
            } else {
                std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            };
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `INFO section`, if the server answers.
    fn info(&self, section: &str) -> Option<String> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        redis::cmd("INFO").arg(section).query(&mut conn).ok()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL the server (subscribers see their connection drop).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A publishing connection, as an NS8 agent's.
pub struct RedisPublisher {
    conn: redis::aio::MultiplexedConnection,
}

impl RedisPublisher {
    /// Connect with `client` (credentials and TLS already set, e.g. from
    /// `weir_bridge::BridgeConfig::redis_client`).
    ///
    /// # Errors
    ///
    /// Redis does not answer or refuses the credentials.
    pub async fn with_client(client: redis::Client) -> anyhow::Result<Self> {
        Ok(Self {
            conn: client.get_multiplexed_async_connection().await?,
        })
    }

    /// Connect to `url`.
    ///
    /// # Errors
    ///
    /// Redis does not answer.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            conn: client.get_multiplexed_async_connection().await?,
        })
    }

    /// `PUBLISH channel payload`: how many subscribers received it.
    ///
    /// # Errors
    ///
    /// The connection failed (Redis down).
    pub async fn publish(&mut self, channel: &str, payload: &[u8]) -> anyhow::Result<u64> {
        Ok(redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut self.conn)
            .await?)
    }

    /// Clients subscribed to all of a bridge's patterns now (`CLIENT LIST`,
    /// `psub=` at least `weir_bridge::channel::PATTERNS.len()`): each
    /// bridge is one once its last `PSUBSCRIBE` is done. Counting a client
    /// at its first pattern let a test publish on a channel of a pattern a
    /// bridge had not subscribed yet (seen under nextest's parallel load: 22
    /// of 26 messages received).
    ///
    /// # Errors
    ///
    /// The connection failed.
    pub async fn pattern_subscribers(&mut self) -> anyhow::Result<u64> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut self.conn)
            .await?;
        Ok(list
            .lines()
            .filter(|l| {
                l.split(' ').any(|f| {
                    f.strip_prefix("psub=")
                        .and_then(|n| n.parse::<usize>().ok())
                        .is_some_and(|n| n >= weir_bridge::channel::PATTERNS.len())
                })
            })
            .count() as u64)
    }
}
