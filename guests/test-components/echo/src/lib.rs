//! Echo: each event's outcome mirrors its payload: `retry:MS` retries after
//! MS ms, `reject:REASON` rejects with REASON, `restart:UNIT` acks and asks for
//! a restart of UNIT, `publish:NAME PAYLOAD` acks and publishes event NAME
//! with PAYLOAD, anything else acks.
use weir_guest::{Batch, EventExt, Handler};

struct Echo;

impl Handler for Echo {
    fn handle(batch: &mut Batch) {
        for index in 0..batch.events().len() {
            let text = batch.events()[index].text().unwrap_or_default().to_owned();
            if let Some(ms) = text.strip_prefix("retry:") {
                batch.retry(index, ms.parse().unwrap_or(0));
            } else if let Some(reason) = text.strip_prefix("reject:") {
                batch.reject(index, reason);
            } else if let Some(unit) = text.strip_prefix("restart:") {
                batch.restart(unit);
            } else if let Some(rest) = text.strip_prefix("publish:") {
                let (name, payload) = rest.split_once(' ').unwrap_or((rest, ""));
                batch.publish(name, payload);
            }
        }
    }
}

weir_guest::export!(Echo);
