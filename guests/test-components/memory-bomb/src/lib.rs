//! Memory bomb: allocates and touches 1 MiB chunks until it is stopped (acks
//! instead when the first payload is `ok`).
use weir_guest::{Batch, EventExt, Handler};

struct Bomb;

impl Handler for Bomb {
    fn handle(batch: &mut Batch) {
        if batch.events().first().and_then(|e| e.text()) == Some("ok") {
            return;
        }
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xA5; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

weir_guest::export!(Bomb);
