//! Drives the `weir:handler/kv` import from each event's payload:
//!
//! - `incr:KEY`: `increment` the own bucket's counter;
//! - `cas-incr:KEY`: read-modify-write the own bucket's counter with
//!   `compare-and-set` (the SDK's `update`);
//! - `shared-incr:BUCKET:KEY`: the same in shared bucket `BUCKET`;
//! - `put:KEY=VALUE`: `put`;
//! - `big:N`: `put` an N-byte value;
//! - `spam:N`: N `get`s;
//! - `keys:PREFIX`: `keys`, the result stored under `listing` (comma-joined).
//!
//! A kv error rejects the event with the error's text.
use weir_guest::kv::{Bucket, Error};
use weir_guest::{Batch, Handler};

struct KvProbe;

fn counter_plus_one(current: Option<&[u8]>) -> Vec<u8> {
    let n: i64 = current
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    (n + 1).to_string().into_bytes()
}

fn run(directive: &str) -> Result<(), Error> {
    let own = Bucket::own();
    let (op, arg) = directive.split_once(':').unwrap_or((directive, ""));
    match op {
        "incr" => own.increment(arg, 1).map(drop),
        "cas-incr" => own.update(arg, counter_plus_one).map(drop),
        "shared-incr" => {
            let (bucket, key) = arg.split_once(':').unwrap_or((arg, "n"));
            Bucket::shared(bucket)
                .update(key, counter_plus_one)
                .map(drop)
        }
        "put" => {
            let (key, value) = arg.split_once('=').unwrap_or((arg, ""));
            own.put(key, value.as_bytes()).map(drop)
        }
        "big" => own
            .put("big", &vec![b'x'; arg.parse().unwrap_or(0)])
            .map(drop),
        "spam" => {
            for _ in 0..arg.parse::<u32>().unwrap_or(0) {
                own.get("spam")?;
            }
            Ok(())
        }
        "keys" => {
            let mut keys = own.keys(arg, 100)?;
            keys.sort();
            own.put("listing", keys.join(",").as_bytes()).map(drop)
        }
        _ => Ok(()),
    }
}

impl Handler for KvProbe {
    fn handle(batch: &mut Batch) {
        for i in 0..batch.events().len() {
            let directive = String::from_utf8_lossy(&batch.events()[i].payload).into_owned();
            if let Err(e) = run(&directive) {
                batch.reject(i, format!("kv: {}", weir_guest::kv::message(&e)));
            }
        }
    }
}

weir_guest::export!(KvProbe);
