//! NS8 `acl-changed` carries the bare string `cluster/acls`, not JSON. This
//! handler reads it as text: a `cluster/` key reloads the API server that
//! caches ACLs; anything else is rejected (dead-lettered) with the reason.
use weir_guest::{Batch, EventExt, Handler};

struct AclSync;

impl Handler for AclSync {
    fn handle(batch: &mut Batch) {
        let mut reload = false;
        for index in 0..batch.events().len() {
            let event = &batch.events()[index];
            match event.text() {
                Some(key) if key.starts_with("cluster/") => reload = true,
                Some(other) => {
                    let reason = format!("unexpected ACL key {other:?}");
                    batch.reject(index, reason);
                }
                None => batch.reject(index, "payload is not UTF-8"),
            }
        }
        if reload {
            batch.reload("api-server.service");
        }
    }
}

weir_guest::export!(AclSync);
