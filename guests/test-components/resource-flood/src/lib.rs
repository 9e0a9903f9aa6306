//! Resource flood: creates host resources (clock pollables) and keeps them
//! until it is stopped by the resource-table cap (acks on `ok`).
use weir_guest::{Batch, EventExt, Handler};

struct Flood;

impl Handler for Flood {
    fn handle(batch: &mut Batch) {
        if batch.events().first().and_then(|e| e.text()) == Some("ok") {
            return;
        }
        let mut kept = Vec::new();
        loop {
            kept.push(wasi::clocks::monotonic_clock::subscribe_duration(
                1_000_000_000,
            ));
            std::hint::black_box(&kept);
        }
    }
}

weir_guest::export!(Flood);
