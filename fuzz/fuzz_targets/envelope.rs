//! Fuzz the event decoder: any payload bytes, as an event's payload and as an
//! event id / domain name, must give a value or a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_host::domain::{DomainSet, normalize};
use weir_host::envelope::{DEFAULT_MAX_PAYLOAD_BYTES, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = parse(data, DEFAULT_MAX_PAYLOAD_BYTES) {
        let set = DomainSet::new(&["example.org", "*.example.org"]).expect("valid set");
        for d in &envelope.domains {
            // An accepted domain matches only if it is a valid normal form.
            if set.contains_normalized(d) {
                assert_eq!(normalize(d).as_deref(), Ok(d.as_str()));
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(n) = normalize(text)
    {
        assert_eq!(normalize(&n).as_deref(), Ok(n.as_str()), "idempotent");
    }
});
