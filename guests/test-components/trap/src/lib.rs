//! Trap: panics when the first event's payload is `panic` or when any
//! event's payload is `poison`, executes `unreachable` (via abort) when the
//! first is `unreachable`, acks otherwise. A host that runs a failed
//! batch's events alone sees exactly the `poison` events fail.
use weir_guest::{Batch, EventExt, Handler};

struct Trap;

impl Handler for Trap {
    fn handle(batch: &mut Batch) {
        if batch.events().iter().any(|e| e.text() == Some("poison")) {
            panic!("handler panicked on a poison event");
        }
        match batch.events().first().and_then(|e| e.text()) {
            Some("panic") => panic!("handler panicked on purpose"),
            Some("unreachable") => std::process::abort(),
            _ => {}
        }
    }
}

weir_guest::export!(Trap);
