//! Infinite loop: spins forever without calling the host. Acks instead when
//! the first payload is `ok`; with `spin:N` it spins N iterations, then acks
//! (a slow but finite handler).
use weir_guest::{Batch, EventExt, Handler};

struct Spin;

impl Handler for Spin {
    fn handle(batch: &mut Batch) {
        let first = batch.events().first().and_then(|e| e.text());
        if first == Some("ok") {
            return;
        }
        if let Some(n) = first
            .and_then(|t| t.strip_prefix("spin:"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            let mut x: u64 = 0;
            for i in 0..n {
                x = std::hint::black_box(x.wrapping_add(i));
            }
            return;
        }
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

weir_guest::export!(Spin);
