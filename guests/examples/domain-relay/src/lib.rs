//! Announce user-domain changes that concern this app to the rest of it: for
//! each relevant `user-domain-changed` (about one of its domains, cluster-wide
//! or from this node's ldapproxy) publish `mail-domains-changed` with the
//! app's domains among the event's, one per line. A payload that is not a
//! JSON object is rejected (dead-lettered with the reason); one that says the
//! directory is still syncing (`"syncing": true`) is retried after 1,000 ms.
//! The same handler as `guests/python/domain-relay` and
//! `guests/js/domain-relay`; `tests/all/conformance.rs` compares the three.
use weir_guest::{Batch, EventExt, Handler, domains};

/// Delay before a syncing directory is asked again, in milliseconds.
const SYNC_RETRY_MS: u32 = 1_000;

struct DomainRelay;

impl Handler for DomainRelay {
    fn handle(batch: &mut Batch) {
        for index in 0..batch.events().len() {
            let event = &batch.events()[index];
            if event.name != "user-domain-changed" {
                continue;
            }
            let Ok(serde_json::Value::Object(payload)) = event.json::<serde_json::Value>() else {
                batch.reject(index, "payload is not a JSON object");
                continue;
            };
            if payload.get("syncing") == Some(&serde_json::Value::Bool(true)) {
                batch.retry(index, SYNC_RETRY_MS);
                continue;
            }
            let local = !event.source.starts_with("module/ldapproxy") || event.is_local();
            let mine: Vec<&str> = event
                .domains
                .iter()
                .filter(|d| domains::is_mine(d))
                .map(String::as_str)
                .collect();
            if local && !mine.is_empty() {
                let payload = mine.join("\n");
                batch.publish("mail-domains-changed", payload);
            }
        }
    }
}

weir_guest::export!(DomainRelay);
