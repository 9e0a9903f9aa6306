//! The WIT contract from Python: `guests/python/mail/app.py` built with
//! componentize-py (installed by `.ci/run`), checked and invoked like a Rust
//! handler. componentize-py components import `wasi:filesystem` and
//! `wasi:sockets` even when unused: they must deploy, with those denied.

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
        vec![Effect::Restart("dovecot.service".into())]
    );
    let none = app.invoke_blocking(&batch[..1]).result.unwrap();
    assert!(none.effects.is_empty());
}
