//! Retry and reject per event: first attempts retry after 25 ms, events named
//! `*-bad` are rejected, every other event is acked.
use weir_guest::{Batch, Handler};

struct RetryReject;

impl Handler for RetryReject {
    fn handle(batch: &mut Batch) {
        for index in 0..batch.events().len() {
            let event = &batch.events()[index];
            if event.name.ends_with("-bad") {
                let reason = format!("{} is never valid", event.name);
                batch.reject(index, reason);
            } else if event.attempt == 1 {
                batch.retry(index, 25);
            }
        }
    }
}

weir_guest::export!(RetryReject);
