//! Infinite loop: spins forever without calling the host (acks instead when
//! the first payload is `ok`).
use weir_guest::{Batch, EventExt, Handler};

struct Spin;

impl Handler for Spin {
    fn handle(batch: &mut Batch) {
        if batch.events().first().and_then(|e| e.text()) == Some("ok") {
            return;
        }
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

weir_guest::export!(Spin);
