//! Effect spam: payload `same` asks for 1,000 restarts of one unit (the SDK's
//! deduplication is bypassed); `distinct` asks for 1,000 different units.
use weir_guest::{BatchResult, Effect, EventExt, Outcome};

struct Spam;

impl weir_guest::bindings::Guest for Spam {
    fn handle(events: Vec<weir_guest::Event>) -> BatchResult {
        let distinct = events.first().and_then(|e| e.text()) == Some("distinct");
        let effects = (0..1000)
            .map(|i| {
                Effect::Restart(if distinct {
                    format!("unit{i}.service")
                } else {
                    "x.service".into()
                })
            })
            .collect();
        BatchResult {
            outcomes: vec![Outcome::Done; events.len()],
            effects,
        }
    }
}

weir_guest::bindings::__export_handler_world!(Spam with_types_in weir_guest::bindings);
