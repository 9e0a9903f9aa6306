//! Echo, version 2 (reload tests): every event is done, and `restart:UNIT`
//! asks for a restart of `v2-UNIT` (where `echo` asks for `UNIT`), so an
//! effect tells which version handled its events.
use weir_guest::{Batch, EventExt, Handler};

struct EchoV2;

impl Handler for EchoV2 {
    fn handle(batch: &mut Batch) {
        let units: Vec<String> = batch
            .events()
            .iter()
            .filter_map(|e| {
                e.text()?
                    .strip_prefix("restart:")
                    .map(|u| format!("v2-{u}"))
            })
            .collect();
        for unit in units {
            batch.restart(unit);
        }
    }
}

weir_guest::export!(EchoV2);
