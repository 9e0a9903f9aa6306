//! {{name}}: restart `{{name}}.service` once per batch when a user domain the
//! app serves changes, cluster-wide or announced by this node's own
//! ldapproxy.
use weir_guest::{Batch, EventExt, Handler};

struct App;

impl Handler for App {
    fn handle(batch: &mut Batch) {
        let relevant = batch.events().iter().any(|event| {
            event.name == "user-domain-changed"
                && event.touches_my_domains()
                && (!event.source.starts_with("module/ldapproxy") || event.is_local())
        });
        if relevant {
            weir_guest::info!("user domain changed: restarting {{name}}.service");
            batch.restart("{{name}}.service");
        }
    }
}

weir_guest::export!(App);
