//! What weir's tests (`tests/all`), torture harness (`torture/`) and
//! benches share, so none of them keeps its own copy:
//!
//! - [`config`]: a typed `weir.toml` builder ([`config::ConfigBuilder`]),
//!   which gives a [`weir_host::config::Config`] or its TOML text (for a
//!   `weir run` child process);
//! - [`nats`]: a private nats-server per test, a 3-server cluster, a
//!   publisher, the dead letters of an app;
//! - [`ledger`]: a Jepsen-style ledger (a publisher recording what was
//!   acknowledged, an effect log of what was handled, a checker: lost,
//!   unexpected, re-executed);
//! - [`redis`]: a private redis-server (or a primary and replicas) and an
//!   NS8-style publisher, for `weir bridge`;
//! - [`languages`]: the Python and JavaScript handlers built into
//!   components (componentize-py, componentize-js);
//! - [`otlp`]: an OTLP/HTTP trace receiver decoding what weir exports;
//! - [`rss_bytes`]: a process's resident set size;
//! - [`assert_eventually!`] and [`eventually`]: poll a condition with a
//!   bound;
//! - [`http_get`]: a minimal HTTP/1.0 GET for the daemon's endpoints.

pub mod config;
pub mod hostile;
pub mod languages;
pub mod ledger;
pub mod nats;
pub mod ns8;
pub mod otlp;
pub mod redis;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[doc(hidden)]
pub use tokio as __tokio;

/// How often [`eventually`] and [`assert_eventually!`] poll: 20 ms.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Resident set size of process `pid` (`None`: this process), in bytes,
/// from `/proc/<pid>/status` (`VmRSS`); 0 if unreadable (the process is
/// gone, or this is not Linux).
pub fn rss_bytes(pid: Option<u32>) -> u64 {
    let pid = pid.map_or_else(|| "self".to_owned(), |p| p.to_string());
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Poll `cond` every [`POLL_INTERVAL`] until it holds (`true`) or `within`
/// has passed (`false`).
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// In async code: poll the boolean expression `$cond` every
/// [`POLL_INTERVAL`] for at most `$within`; panic with `$what` (anything
/// `Display`) if it never holds.
#[macro_export]
macro_rules! assert_eventually {
    ($within:expr, $what:expr, $cond:expr) => {{
        let within: ::std::time::Duration = $within;
        let deadline = ::std::time::Instant::now() + within;
        loop {
            let holds: bool = $cond;
            if holds {
                break;
            }
            assert!(
                ::std::time::Instant::now() < deadline,
                "not within {:?}: {}",
                within,
                $what
            );
            $crate::__tokio::time::sleep($crate::POLL_INTERVAL).await;
        }
    }};
}

/// `GET path` over HTTP/1.0: the status code and body, `None` if the
/// connection or the reply fails.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path).await
}

/// `method path` (no body) over HTTP/1.0: the status code and body, `None`
/// if the connection or the reply fails.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    http_request_with(addr, method, path, &[]).await
}

/// [`http_request`] with extra `headers` (`name`, `value`).
pub async fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    s.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: weir\r\n{extra}Content-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}
