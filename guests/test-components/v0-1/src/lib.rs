//! A handler built against `weir:handler@0.1.0` (the frozen copy in
//! `wit/compat/0.1.0`), with raw bindings: every event done, one log line
//! naming this node. A host at 0.2.0 must still deploy and run it.
#![allow(missing_docs, unsafe_code)]

wit_bindgen::generate!({
    path: "../../../wit/compat/0.1.0",
    world: "weir:handler/handler",
});

use weir::handler::types::Outcome;
use weir::handler::{log, node};

struct V01;

impl Guest for V01 {
    fn handle(batch: Vec<Event>) -> BatchResult {
        log::log(
            log::Level::Info,
            &format!("0.1.0 handler on node {}", node::id()),
        );
        BatchResult {
            outcomes: vec![Outcome::Done; batch.len()],
            effects: Vec::new(),
        }
    }
}

export!(V01);
