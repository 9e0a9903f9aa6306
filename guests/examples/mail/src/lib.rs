//! NS8 mail: restart dovecot and postfix once per batch when a user domain the
//! app serves changes, if the change is cluster-wide (e.g. the openldap
//! password rotation) or announced by this node's own ldapproxy (ldapproxy
//! port remaps are node-local: apps talk to 127.0.0.1).
// ANCHOR: handler
use weir_guest::{Batch, EventExt, Handler};

struct Mail;

impl Handler for Mail {
    fn handle(batch: &mut Batch) {
        let relevant = batch.events().iter().any(|event| {
            event.name == "user-domain-changed"
                && event.touches_my_domains()
                && (!event.source.starts_with("module/ldapproxy") || event.is_local())
        });
        if relevant {
            weir_guest::info!("user domain changed: restarting mail services");
            batch.restart("dovecot.service");
            batch.restart("postfix.service");
        }
    }
}

weir_guest::export!(Mail);
// ANCHOR_END: handler
