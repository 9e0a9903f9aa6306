//! Unknown import: a handler that also imports `acme:vault/secrets`, an
//! interface weir does not provide. `weir check` and deploy must refuse it and
//! name the import.
#![allow(missing_docs, unsafe_code)]

wit_bindgen::generate!({
    inline: r#"
        package test:unknown-import;
        world probe {
            include weir:handler/handler@0.2.0;
            import acme:vault/secrets@1.0.0;
        }
    "#,
    path: ["../../../wit", "wit"],
    world: "test:unknown-import/probe",
    generate_all,
});

use weir::handler::types::Outcome;

struct Unknown;

impl Guest for Unknown {
    fn handle(batch: Vec<Event>) -> BatchResult {
        let _secret = acme::vault::secrets::get("root");
        BatchResult {
            outcomes: vec![Outcome::Done; batch.len()],
            effects: Vec::new(),
        }
    }
}

export!(Unknown);
