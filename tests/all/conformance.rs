//! The conformance suite: one table of cases run through the Rust, Python
//! (componentize-py) and JavaScript (componentize-js) builds of the same two
//! handlers, `mail` and `domain-relay`, asserting identical outcomes and
//! effects.
//!
//! - The table: every event of the NS8 corpus (`positive`, both node-join
//!   storms) on two nodes, one event at a time and the whole corpus as one
//!   batch; then hand-written cases with their expected answers: a retry, a
//!   reject, payloads that are not a JSON object (bare text, bytes that are
//!   not UTF-8, a bare `NaN`, a JSON array), a publish effect and its
//!   collapse, a foreign ldapproxy.
//! - Python and JavaScript components are built here from `guests/python`
//!   and `guests/js` with the pinned tools (`.ci/run` installs
//!   componentize-py and runs `npm ci` in `guests/js`); Rust's come from
//!   `weir-test-artifacts`.
//! - The componentize tools link `wasi:filesystem` (and componentize-py
//!   `wasi:sockets`) even when unused: the components must deploy, with
//!   those denied.

use std::path::Path;
use std::sync::OnceLock;

use weir_host::envelope::{self, EventMeta};
use weir_host::{App, AppSpec, Effect, EngineConfig, Event, Handled, Message, Outcome, Runtime};

use weir_test_support::languages;

use crate::common::{heavy, invoke_on_own_thread};

/// A handler source language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    /// The file name part of a build in this language: `py` or `js`.
    fn ext(self) -> &'static str {
        match self {
            Lang::Rust => "rs",
            Lang::Python => "py",
            Lang::Js => "js",
        }
    }
}

const LANGS: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];

/// The handlers every language implements.
const HANDLERS: [&str; 2] = ["mail", "domain-relay"];

/// The node and domain of each deployment, as in `examples/ns8/topology.json`
/// (mail1 on node 1 serves dom01; node 2's app serves dom02).
const NODES: [(u32, &str); 2] = [(1, "dom01.example.org"), (2, "dom02.example.org")];

/// The Python and JavaScript builds of [`HANDLERS`], made once per test
/// process into one temporary directory.
fn built() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let _heavy = heavy();
        let dir = tempfile::tempdir().unwrap();
        for name in HANDLERS {
            languages::build_python(name, &dir.path().join(format!("{name}.py.wasm")));
        }
        languages::build_js(&HANDLERS, dir.path());
        for name in HANDLERS {
            let from = dir.path().join(format!("{name}.wasm"));
            std::fs::rename(from, dir.path().join(format!("{name}.js.wasm"))).unwrap();
        }
        // Compile each component once per machine: one test process
        // compiles into the disk cache while the others wait, then load it.
        languages::with_lock("conformance-artifacts", || {
            for handler in HANDLERS {
                for lang in [Lang::Python, Lang::Js] {
                    let file = dir.path().join(format!("{handler}.{}.wasm", lang.ext()));
                    lang_runtime()
                        .deploy_file(AppSpec::new("warm", 1, "node1"), &file)
                        .unwrap_or_else(|e| panic!("deploy {}: {e}", file.display()));
                }
            }
        });
        dir
    })
    .path()
}

/// The runtime the suite deploys on: compiled components cached on disk in
/// `<target>/lang-components/artifacts` (a Python component is about 18 MB
/// of wasm and takes seconds to compile), as `weir run` caches them.
fn lang_runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(EngineConfig {
            cache_dir: Some(languages::cache_dir().join("artifacts")),
            ..EngineConfig::default()
        })
        .expect("runtime")
    })
}

/// The component file of `handler` in `lang`.
fn component(handler: &str, lang: Lang) -> String {
    match (lang, handler) {
        (Lang::Rust, "mail") => weir_test_artifacts::MAIL.to_owned(),
        (Lang::Rust, "domain-relay") => weir_test_artifacts::DOMAIN_RELAY.to_owned(),
        (Lang::Rust, other) => panic!("no Rust build of {other}"),
        (_, _) => built()
            .join(format!("{handler}.{}.wasm", lang.ext()))
            .display()
            .to_string(),
    }
}

/// `handler` deployed in every language on `node` serving `domain`.
fn deploy_all(handler: &str, node: u32, domain: &str) -> Vec<(Lang, App)> {
    LANGS
        .iter()
        .map(|&lang| {
            let name = format!("{handler}-{lang:?}").to_lowercase();
            let mut spec = AppSpec::new(&name, node, format!("node{node}"));
            spec.domains = vec![domain.to_owned()];
            let app = lang_runtime()
                .deploy_file(spec, component(handler, lang).as_ref())
                .unwrap_or_else(|e| panic!("deploy {name}: {e}"));
            if lang != Lang::Rust {
                assert_io_denied(&app);
            }
            (lang, app)
        })
        .collect()
}

/// The componentize tools link `wasi:filesystem` (both) and `wasi:sockets`
/// (componentize-py) even when unused: the component deploys, and each of
/// those imports is denied.
fn assert_io_denied(app: &App) {
    let io: Vec<_> = app
        .report()
        .imports
        .iter()
        .filter(|i| i.name.starts_with("wasi:filesystem/") || i.name.starts_with("wasi:sockets/"))
        .collect();
    assert!(!io.is_empty(), "{}: no filesystem import", app.name());
    for import in io {
        assert_eq!(
            import.grant.label(),
            "denied",
            "{}: {}",
            app.name(),
            import.name
        );
    }
}

/// Run `batch` through every language's app and return the one answer they
/// all give; panics naming the language that differs.
fn agreed(apps: &[(Lang, App)], batch: &[Event], case: &str) -> Handled {
    let mut answers = apps.iter().map(|(lang, app)| {
        let inv = invoke_on_own_thread(app, batch);
        let result = inv
            .result
            .unwrap_or_else(|e| panic!("{case}: {lang:?} failed: {e}"));
        (*lang, result)
    });
    let (_, rust) = answers.next().unwrap();
    for (lang, answer) in answers {
        assert_eq!(answer, rust, "{case}: {lang:?} differs from Rust");
    }
    rust
}

/// Every event of the NS8 corpus (positive cases and both storms).
fn corpus() -> Vec<Event> {
    let mut events = Vec::new();
    for scenario in ["positive", "node-join-legacy", "node-join-batched"] {
        let path = crate::common::examples_dir()
            .join("ns8")
            .join(scenario)
            .join("events.jsonl");
        for e in weir_host::corpus::read_jsonl::<weir_host::corpus::CorpusEvent>(&path).unwrap() {
            events.push(
                e.to_event(scenario, envelope::DEFAULT_MAX_PAYLOAD_BYTES)
                    .unwrap(),
            );
        }
    }
    events
}

/// An event with raw payload bytes (which may be neither JSON nor UTF-8).
fn raw_event(name: &str, source: &str, payload: &[u8]) -> Event {
    let meta = EventMeta {
        id: format!("conformance:{name}:{}", payload.len()),
        name: name.into(),
        source: source.into(),
        attempt: 1,
        sequence: 1,
        published_ms: 0,
    };
    envelope::event(meta, payload.to_vec(), envelope::DEFAULT_MAX_PAYLOAD_BYTES).unwrap()
}

const UDC: &str = "user-domain-changed";

fn restarts() -> Vec<Effect> {
    vec![
        Effect::Restart("dovecot.service".into()),
        Effect::Restart("postfix.service".into()),
    ]
}

fn relay(domains: &str) -> Effect {
    Effect::Publish(Message {
        name: "mail-domains-changed".into(),
        payload: domains.as_bytes().to_vec(),
    })
}

/// One hand-written case on node 1 (dom01): the event and the expected
/// effects of `mail` and outcome and effects of `domain-relay`.
struct Case {
    label: &'static str,
    event: Event,
    mail: Vec<Effect>,
    relay: (Outcome, Vec<Effect>),
}

fn cases() -> Vec<Case> {
    let not_object = || Outcome::Reject("payload is not a JSON object".into());
    let case = |label, event, mail, relay| Case {
        label,
        event,
        mail,
        relay,
    };
    vec![
        case(
            "cluster-wide change of my domain",
            raw_event(
                UDC,
                "cluster",
                br#"{"domains": ["Dom01.Example.org.", "dom02.example.org"]}"#,
            ),
            restarts(),
            (Outcome::Done, vec![relay("dom01.example.org")]),
        ),
        case(
            "a change of someone else's domain",
            raw_event(UDC, "cluster", br#"{"domain": "dom02.example.org"}"#),
            vec![],
            (Outcome::Done, vec![]),
        ),
        case(
            "my domain from this node's ldapproxy",
            raw_event(
                UDC,
                "module/ldapproxy1",
                br#"{"node_id": 1, "domain": "dom01.example.org"}"#,
            ),
            restarts(),
            (Outcome::Done, vec![relay("dom01.example.org")]),
        ),
        case(
            "my domain from another node's ldapproxy",
            raw_event(
                UDC,
                "module/ldapproxy2",
                br#"{"node_id": 2, "domain": "dom01.example.org"}"#,
            ),
            vec![],
            (Outcome::Done, vec![]),
        ),
        case(
            "directory still syncing: retry",
            raw_event(
                UDC,
                "cluster",
                br#"{"domain": "dom01.example.org", "syncing": true}"#,
            ),
            restarts(),
            (Outcome::Retry(1_000), vec![]),
        ),
        case(
            "bare-text payload: reject",
            raw_event(UDC, "cluster", b"cluster/acls"),
            vec![],
            (not_object(), vec![]),
        ),
        // An object payload that parsers could read differently (invalid
        // UTF-8, NaN, 1e400, a repeated key) never reaches a handler: the
        // host dead-letters it as malformed (envelope.rs). These are not
        // objects, so they do reach it.
        case(
            "a payload that is not UTF-8: reject",
            raw_event(UDC, "cluster", b"\xff\xfe{}"),
            vec![],
            (not_object(), vec![]),
        ),
        case(
            "a bare NaN (Python's json reads it): reject",
            raw_event(UDC, "cluster", b"NaN"),
            vec![],
            (not_object(), vec![]),
        ),
        case(
            "a JSON array is not an object: reject",
            raw_event(UDC, "cluster", br#"["dom01.example.org"]"#),
            vec![],
            (not_object(), vec![]),
        ),
        case(
            "another event name",
            raw_event("acl-changed", "cluster", b"cluster/acls"),
            vec![],
            (Outcome::Done, vec![]),
        ),
    ]
}

#[test]
fn the_corpus_gets_the_same_answers_in_every_language() {
    let events = corpus();
    for handler in HANDLERS {
        let mut effects = 0;
        for (node, domain) in NODES {
            let apps = deploy_all(handler, node, domain);
            for e in &events {
                let case = format!("{handler} on node {node}, event {} from {}", e.id, e.source);
                let answer = agreed(&apps, std::slice::from_ref(e), &case);
                effects += usize::from(!answer.effects.is_empty());
            }
            let whole = format!("{handler} on node {node}, the corpus as one batch");
            let answer = agreed(&apps, &events, &whole);
            assert_eq!(answer.outcomes.len(), events.len());
        }
        // Not vacuous: the positive corpus has one relevant change per node
        // for both handlers.
        assert_eq!(effects, 2, "{handler}: events with effects");
    }
}

#[test]
fn every_case_gets_its_expected_answer_in_every_language() {
    let cases = cases();
    let (node, domain) = NODES[0];
    let mail = deploy_all("mail", node, domain);
    let relays = deploy_all("domain-relay", node, domain);
    for case in &cases {
        let one = std::slice::from_ref(&case.event);
        let answer = agreed(&mail, one, case.label);
        assert_eq!(answer.outcomes, vec![Outcome::Done], "mail: {}", case.label);
        assert_eq!(answer.effects, case.mail, "mail: {}", case.label);
        let answer = agreed(&relays, one, case.label);
        let expected = (answer.outcomes[0].clone(), answer.effects.clone());
        assert_eq!(expected, case.relay, "domain-relay: {}", case.label);
    }
    // The whole table as one batch: outcomes in order, effects collapsed
    // (two cases publish the same message, one restart pair for mail).
    let batch: Vec<Event> = cases.iter().map(|c| c.event.clone()).collect();
    let answer = agreed(&mail, &batch, "mail: the table as one batch");
    assert_eq!(answer.effects, restarts());
    let answer = agreed(&relays, &batch, "domain-relay: the table as one batch");
    let outcomes: Vec<Outcome> = cases.iter().map(|c| c.relay.0.clone()).collect();
    assert_eq!(answer.outcomes, outcomes);
    assert_eq!(answer.effects, vec![relay("dom01.example.org")]);
}
