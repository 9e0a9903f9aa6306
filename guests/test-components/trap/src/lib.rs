//! Trap: panics when the first event's payload is `panic`, executes
//! `unreachable` (via abort) when it is `unreachable`, acks otherwise.
use weir_guest::{Batch, EventExt, Handler};

struct Trap;

impl Handler for Trap {
    fn handle(batch: &mut Batch) {
        match batch.events().first().and_then(|e| e.text()) {
            Some("panic") => panic!("handler panicked on purpose"),
            Some("unreachable") => std::process::abort(),
            _ => {}
        }
    }
}

weir_guest::export!(Trap);
