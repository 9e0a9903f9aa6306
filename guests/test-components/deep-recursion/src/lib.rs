//! Deep recursion: recurses without bound until the wasm stack overflows
//! (acks instead when the first payload is `ok`).
use weir_guest::{Batch, EventExt, Handler};

struct Recurse;

#[inline(never)]
#[allow(unconditional_recursion)]
fn descend(depth: u64, pad: [u64; 8]) -> u64 {
    let pad = std::hint::black_box(pad);
    descend(depth + 1, pad).wrapping_add(pad[(depth % 8) as usize])
}

impl Handler for Recurse {
    fn handle(batch: &mut Batch) {
        if batch.events().first().and_then(|e| e.text()) == Some("ok") {
            return;
        }
        std::hint::black_box(descend(0, [1; 8]));
    }
}

weir_guest::export!(Recurse);
