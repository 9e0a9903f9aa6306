//! Huge return: payload `string:BYTES` rejects the first event with a reason
//! of BYTES bytes; `list:COUNT` asks for COUNT publish effects with empty names
//! and payloads (millions of tiny items); anything else acks.
use weir_guest::{Batch, Effect, EventExt, Handler, Message};

struct Huge;

impl Handler for Huge {
    fn handle(batch: &mut Batch) {
        let text = batch
            .events()
            .first()
            .and_then(|e| e.text())
            .unwrap_or_default()
            .to_owned();
        if let Some(bytes) = text.strip_prefix("string:") {
            let n: usize = bytes.parse().unwrap_or(0);
            batch.reject(0, "x".repeat(n));
        } else if let Some(count) = text.strip_prefix("list:") {
            let n: usize = count.parse().unwrap_or(0);
            // Bypass the SDK's deduplication on purpose: the host must cope.
            let effects = vec![
                Effect::Publish(Message {
                    name: String::new(),
                    payload: Vec::new()
                });
                n
            ];
            let outcomes = vec![weir_guest::Outcome::Done; batch.events().len()];
            RESULT.with(|r| *r.borrow_mut() = Some(weir_guest::BatchResult { outcomes, effects }));
        }
    }
}

thread_local! {
    static RESULT: std::cell::RefCell<Option<weir_guest::BatchResult>> = const { std::cell::RefCell::new(None) };
}

struct Export;
impl weir_guest::bindings::Guest for Export {
    fn handle(events: Vec<weir_guest::Event>) -> weir_guest::BatchResult {
        let mut batch = Batch::new(events);
        Huge::handle(&mut batch);
        RESULT
            .with(|r| r.borrow_mut().take())
            .unwrap_or_else(|| batch.into_result())
    }
}
weir_guest::bindings::__export_handler_world!(Export with_types_in weir_guest::bindings);
