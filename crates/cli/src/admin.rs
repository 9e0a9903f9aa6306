//! `weir reload` and `weir stats`: a running host's loopback HTTP endpoints,
//! found through the config's `[http] listen`.

use std::net::SocketAddr;
use std::time::Duration;

use weir_host::config::Config;

use crate::exit::{self, Code as _, Failure};

/// Longest `weir reload` waits for the host's answer: 300 s (the host's own
/// bound on a reload, [`weir_host::http::RELOAD_REPLY_TIMEOUT`]).
pub const RELOAD_TIMEOUT: Duration = weir_host::http::RELOAD_REPLY_TIMEOUT;

/// Longest `weir stats` waits for `/stats`: 5 s.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// The host's HTTP address from the config at `config` (an unspecified
/// listen address such as `0.0.0.0` is reached on loopback).
pub fn host_addr(config: &crate::ConfigArg) -> Result<SocketAddr, Failure> {
    let config = Config::load(&config.path()).code(exit::CONFIG)?;
    if !config.http.enabled {
        return Err(Failure {
            code: exit::CONFIG,
            error: anyhow::anyhow!(
                "[http] enabled = false: the host serves no endpoints (send it SIGHUP to reload)"
            ),
        });
    }
    let mut addr = config.http.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr)
}

/// The admin token of the host run with the config at `config`
/// (`[http] admin_token_file`, else the default file `weir run` keeps), for
/// `POST /reload`.
pub fn admin_token(config: &crate::ConfigArg) -> Result<String, Failure> {
    let config = Config::load(&config.path()).code(exit::CONFIG)?;
    weir_host::admin_token::read(&config.http.token_file())
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}: run weir reload as the host's user (or root), with the environment the host has (XDG_STATE_HOME), or send the host SIGHUP"
            )
        })
        .code(exit::NO_PERMISSION)
}

/// `method path` on the host at `addr` (with `Authorization: Bearer
/// <token>` when `token` is given): the status and body. Any status is
/// returned; only a host that does not answer is an error (69).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), Failure> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let sent = match method {
        "POST" => {
            let post = agent.post(&url);
            match token {
                Some(t) => post.header("Authorization", &format!("Bearer {t}")),
                None => post,
            }
            .send_empty()
        }
        _ => agent.get(&url).call(),
    };
    let mut response = sent
        .map_err(|e| {
            anyhow::anyhow!("no weir host answers on {addr} ({e}): is it running with this config?")
        })
        .code(exit::UNAVAILABLE)?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| anyhow::anyhow!("reading the answer of {url}: {e}"))
        .code(exit::UNAVAILABLE)?;
    Ok((status, body))
}
