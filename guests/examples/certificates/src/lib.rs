//! Reload `traefik.service` when a certificate for one of this app's host
//! names changes on this node. The certificate names arrive as the event's
//! (host-normalised) domains; a wildcard certificate `*.example.org` covers
//! exactly one extra label (`mail.example.org`).
use weir_guest::{Batch, EventExt, Handler, domains};

struct Certificates;

/// True if certificate name `cert` covers host name `host` (both normalised).
fn covers(cert: &str, host: &str) -> bool {
    match cert.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => cert == host,
    }
}

impl Handler for Certificates {
    fn handle(batch: &mut Batch) {
        let hosts = domains::mine();
        let relevant = batch.events().iter().any(|event| {
            event.name == "certificate-changed"
                && event.is_local()
                && event
                    .domains
                    .iter()
                    .any(|cert| hosts.iter().any(|host| covers(cert, host)))
        });
        if relevant {
            batch.reload("traefik.service");
        }
    }
}

weir_guest::export!(Certificates);
