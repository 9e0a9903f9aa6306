//! The WIT contract from Python: `guests/python/mail/app.py` built with
//! componentize-py (installed by `.ci/run`), checked and invoked like a Rust
//! handler, and compared with the Rust mail handler on the same events.
//! componentize-py components import `wasi:filesystem` and `wasi:sockets`
//! even when unused: they must deploy, with those denied.

use std::process::Command;

use weir_host::{Effect, Limits, Outcome};

use crate::common::{deploy_on, event, heavy};

#[test]
fn componentize_py_handler_deploys_and_runs() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = dir.path().join("mail_py.wasm");
    let status = Command::new("componentize-py")
        .arg("-d")
        .arg(root.join("wit"))
        .args(["-w", "handler", "componentize", "app", "-p"])
        .arg(root.join("guests/python/mail"))
        .arg("-o")
        .arg(&wasm)
        .current_dir(dir.path())
        .status()
        .unwrap_or_else(|e| {
            panic!("componentize-py not found ({e}): `pip install componentize-py==0.25.1`")
        });
    assert!(status.success());
    let app = deploy_on(
        "mail-py",
        wasm.to_str().unwrap(),
        1,
        &["dom01.example.org"],
        Limits::default(),
    );
    crate::common::assert_fs_and_sockets_denied(&app);
    let batch = [
        event(
            "user-domain-changed",
            "cluster",
            r#"{"domains": ["dom02.example.org"]}"#,
        ),
        event(
            "user-domain-changed",
            "cluster",
            r#"{"domain": "Dom01.Example.org"}"#,
        ),
    ];
    let handled = app.invoke_blocking(&batch).result.unwrap();
    assert_eq!(handled.outcomes, vec![Outcome::Done, Outcome::Done]);
    assert_eq!(
        handled.effects,
        vec![
            Effect::Restart("dovecot.service".into()),
            Effect::Restart("postfix.service".into())
        ]
    );
    let none = app.invoke_blocking(&batch[..1]).result.unwrap();
    assert!(none.effects.is_empty());
    same_answers_as_rust(wasm.to_str().unwrap());
}

/// The Python and Rust mail handlers, deployed as the same app on the same
/// node, give the same outcomes and effects for every event of the corpus
/// (the positive cases and both storms), one at a time and as one batch.
fn same_answers_as_rust(python: &str) {
    let mut events = Vec::new();
    for scenario in ["positive", "node-join-legacy", "node-join-batched"] {
        let path = crate::common::examples_dir()
            .join("ns8")
            .join(scenario)
            .join("events.jsonl");
        for e in weir_host::corpus::read_jsonl::<weir_host::corpus::CorpusEvent>(&path).unwrap() {
            events.push(
                e.to_event(scenario, weir_host::envelope::DEFAULT_MAX_PAYLOAD_BYTES)
                    .unwrap(),
            );
        }
    }
    let (mut compared, mut restarts) = (0, 0);
    // mail1 on node 1 (dom01) and nextcloud1's place on node 2 (dom02), as
    // in examples/ns8/topology.json.
    for (node, domain) in [(1, "dom01.example.org"), (2, "dom02.example.org")] {
        let py = deploy_on("mail-py", python, node, &[domain], Limits::default());
        let rust = deploy_on(
            "mail-rs",
            weir_test_artifacts::MAIL,
            node,
            &[domain],
            Limits::default(),
        );
        for e in &events {
            let p = py.invoke_blocking(std::slice::from_ref(e)).result.unwrap();
            let r = rust
                .invoke_blocking(std::slice::from_ref(e))
                .result
                .unwrap();
            assert_eq!(p, r, "node {node}, event {} from {}", e.id, e.source);
            compared += 1;
            restarts += usize::from(!r.effects.is_empty());
        }
        let p = py.invoke_blocking(&events).result.unwrap();
        let r = rust.invoke_blocking(&events).result.unwrap();
        assert_eq!(p, r, "node {node}, the whole corpus as one batch");
    }
    // Not vacuous: both nodes have a positive case.
    assert_eq!(compared, 2 * events.len());
    assert_eq!(restarts, 2, "one restart case per node");
}
