//! Marker: proves each batch gets fresh memory. Every batch
//!
//! 1. reads a static counter of batches this instance has handled (a reused
//!    instance would show a count above 0),
//! 2. allocates a zeroed 1 MiB block (the allocator trusts fresh wasm pages to
//!    be zero, so a recycled slot that was not wiped would show old bytes) and
//!    looks for another batch's marker in it,
//! 3. fills the block with its own marker (`WEIR-MARKER:<first event id>`) and
//!    leaks it, so the bytes stay in linear memory when the instance ends.
//!
//! With payload `trap` it traps after marking (a poisoned instance).
//! Otherwise it publishes one `marker-report` effect with `{"batches_before": n,
//! "foreign_marker": bool, "nonzero_bytes": n}` and acks every event.
use std::sync::atomic::{AtomicU64, Ordering};

use weir_guest::{Batch, EventExt, Handler};

/// Bytes of the marker block: 1 MiB, beyond the guest's initial heap.
const BLOCK_BYTES: usize = 1 << 20;

static BATCHES: AtomicU64 = AtomicU64::new(0);

struct Marker;

impl Handler for Marker {
    fn handle(batch: &mut Batch) {
        let batches_before = BATCHES.fetch_add(1, Ordering::SeqCst);
        let mine = format!(
            "WEIR-MARKER:{}",
            batch.events().first().map_or("none", |e| e.id.as_str())
        );
        let mut block = vec![0u8; BLOCK_BYTES];
        let nonzero_bytes = block.iter().filter(|b| **b != 0).count();
        let foreign_marker = block.windows(12).any(|w| w == b"WEIR-MARKER:");
        for chunk in block.chunks_mut(mine.len()) {
            chunk.copy_from_slice(&mine.as_bytes()[..chunk.len()]);
        }
        // Keep the marked bytes in linear memory past the end of the batch.
        std::mem::forget(std::hint::black_box(block));
        // `trap`: leave the marker and poison the instance.
        if batch.events().first().and_then(|e| e.text()) == Some("trap") {
            panic!("trapping with a marker in memory");
        }
        batch.publish(
            "marker-report",
            format!(
                r#"{{"batches_before": {batches_before}, "foreign_marker": {foreign_marker}, "nonzero_bytes": {nonzero_bytes}}}"#
            ),
        );
    }
}

weir_guest::export!(Marker);
