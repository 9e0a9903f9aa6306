//! Serving an HTTP router on a socket until told to stop: the listening
//! part shared by the host's endpoints (`weir_host::http`) and the
//! bridge's (`weir-bridge`), with no knowledge of what they serve.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::sync::watch;

/// Bind `listen` and serve `router` until `stop` turns true (the host's
/// endpoints, the bridge's); logs `what` it serves. Returns the task and
/// the address bound (port 0 resolved).
///
/// # Errors
///
/// The address cannot be bound (taken, not local).
pub async fn serve_router(
    listen: SocketAddr,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("failed to listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(addr = %addr, serving = what, "HTTP endpoints");
    Ok((task, addr))
}
