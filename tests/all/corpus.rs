//! The example handlers on real NS8 payloads (`examples/ns8/`, copied from
//! the shared corpus), in-process, no NATS. The ground truth is the corpus's
//! `ideal_effect`: the domain is the app's and the event is cluster-wide or
//! from the app's own node.

use std::collections::{BTreeMap, HashMap};

use weir_host::corpus::{self, CorpusEvent, Delivery, Topology};
use weir_host::{Effect, Event, Limits, Outcome, envelope};

use crate::common::{deploy_on, event, examples_dir};

fn load(scenario: &str) -> (BTreeMap<u64, Event>, Vec<Delivery>, Topology) {
    let dir = examples_dir().join("ns8");
    let events = corpus::read_jsonl::<CorpusEvent>(&dir.join(scenario).join("events.jsonl"))
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.seq,
                e.to_event(scenario, envelope::DEFAULT_MAX_PAYLOAD_BYTES)
                    .unwrap(),
            )
        })
        .collect();
    let deliveries = corpus::read_jsonl(&dir.join(scenario).join("deliveries.jsonl")).unwrap();
    (
        events,
        deliveries,
        corpus::read_topology(&dir.join("topology.json")).unwrap(),
    )
}

/// Every `user-domain-changed` delivery of the corpus, one event per
/// invocation: the mail handler asks for its restarts exactly when the ground
/// truth says the effect is needed. Returns (deliveries checked, effects).
fn per_event(scenario: &str) -> (usize, usize) {
    let (events, deliveries, topology) = load(scenario);
    let mail = weir_test_artifacts::MAIL;
    let apps: HashMap<String, weir_host::App> = topology
        .apps
        .iter()
        .map(|a| {
            (
                format!("module/{}", a.name),
                deploy_on(&a.name, mail, a.node, &[&a.domain], Limits::default()),
            )
        })
        .collect();
    let (mut checked, mut effects) = (0, 0);
    for d in &deliveries {
        let event = &events[&d.seq];
        let Some(app) = apps.get(&d.agent) else {
            continue;
        };
        if event.name != "user-domain-changed" {
            continue;
        }
        let handled = app
            .invoke_blocking(std::slice::from_ref(event))
            .result
            .unwrap();
        assert_eq!(handled.outcomes, vec![Outcome::Done]);
        assert_eq!(
            !handled.effects.is_empty(),
            d.ideal_effect,
            "{scenario} seq {} to {}: effects {:?}",
            d.seq,
            d.agent,
            handled.effects
        );
        checked += 1;
        effects += usize::from(!handled.effects.is_empty());
    }
    (checked, effects)
}

#[test]
fn legacy_storm_per_event_matches_ground_truth() {
    // The field report: 300 handler runs for user-domain-changed, 0 needed.
    assert_eq!(per_event("node-join-legacy"), (300, 0));
}

#[test]
fn batched_storm_per_event_matches_ground_truth() {
    assert_eq!(per_event("node-join-batched"), (12, 0));
}

/// The node-join storms have no relevant `user-domain-changed` at all, so a
/// handler (or rule) that drops every one would pass them: these deliveries
/// are positive (a cluster-wide openldap announcement, a local ldapproxy
/// change, the legacy scalar) and near misses (the same change from another
/// node's ldapproxy).
#[test]
fn positive_cases_per_event_match_ground_truth() {
    assert_eq!(per_event("positive"), (24, 3));
}

#[test]
fn legacy_storm_in_one_batch_per_app_costs_one_invocation_each() {
    let (events, _, topology) = load("node-join-legacy");
    let udc: Vec<Event> = events
        .values()
        .filter(|e| e.name == "user-domain-changed")
        .cloned()
        .collect();
    assert_eq!(udc.len(), 50);
    for a in &topology.apps {
        let app = deploy_on(
            &a.name,
            weir_test_artifacts::MAIL,
            a.node,
            &[&a.domain],
            Limits::default(),
        );
        let inv = app.invoke_blocking(&udc);
        let handled = inv.result.unwrap();
        assert_eq!(handled.outcomes.len(), 50);
        assert_eq!(handled.effects, vec![], "{}: no restart is needed", a.name);
    }
}

#[test]
fn cluster_wide_announcement_reaches_apps_on_every_node() {
    // openldap's password rotation: one event for the whole cluster, with a
    // node_id that is not the receiving app's node.
    let payload = r#"{"domain":"dom.test","domains":["dom.test"],"node_id":1}"#;
    for node in [1, 2, 3] {
        let app = deploy_on(
            &format!("mail-node{node}"),
            weir_test_artifacts::MAIL,
            node,
            &["dom.test"],
            Limits::default(),
        );
        let handled = app
            .invoke_blocking(&[event("user-domain-changed", "module/openldap1", payload)])
            .result
            .unwrap();
        assert_eq!(
            handled.effects,
            vec![
                Effect::Restart("dovecot.service".into()),
                Effect::Restart("postfix.service".into())
            ],
            "node {node}"
        );
    }
    // The same payload from another node's ldapproxy is node-local: no restart.
    let app = deploy_on(
        "mail-node2-ldapproxy",
        weir_test_artifacts::MAIL,
        2,
        &["dom.test"],
        Limits::default(),
    );
    let handled = app
        .invoke_blocking(&[event("user-domain-changed", "module/ldapproxy1", payload)])
        .result
        .unwrap();
    assert_eq!(handled.effects, vec![]);
}

/// `acl-changed` from the corpus carries the bare string `cluster/acls`.
pub fn acl_cases(path: &str) {
    let (events, _, _) = load("node-join-legacy");
    let acl: Vec<Event> = events
        .values()
        .filter(|e| e.name == "acl-changed")
        .cloned()
        .collect();
    assert_eq!(acl.len(), 6);
    assert!(
        acl.iter().all(|e| e.payload == b"cluster/acls"
            && e.domains.is_empty()
            && e.origin_node.is_none())
    );
    let app = deploy_on("acl-sync", path, 1, &[], Limits::default());
    let handled = app.invoke_blocking(&acl).result.unwrap();
    assert_eq!(handled.outcomes, vec![Outcome::Done; 6]);
    assert_eq!(
        handled.effects,
        vec![Effect::Reload("api-server.service".into())]
    );
    let odd = app
        .invoke_blocking(&[event("acl-changed", "cluster", "module/x/acls")])
        .result
        .unwrap();
    assert_eq!(
        odd.outcomes,
        vec![Outcome::Reject(
            "unexpected ACL key \"module/x/acls\"".into()
        )]
    );
    assert_eq!(odd.effects, vec![]);
}

/// `certificate-changed` as NS8's traefik publishes it (node id, certificate
/// names as domains).
pub fn certificates_cases(path: &str) {
    let app = deploy_on(
        "certificates",
        path,
        2,
        &["mail.example.org"],
        Limits::default(),
    );
    let reload = vec![Effect::Reload("traefik.service".into())];
    let cases = [
        (r#"{"node_id": 2, "domain": "mail.example.org"}"#, true),
        (r#"{"node_id": "2", "domains": ["*.EXAMPLE.org"]}"#, true),
        (r#"{"node_id": 1, "domain": "mail.example.org"}"#, false),
        (r#"{"node_id": 2, "domain": "webmail.example.org"}"#, false),
        (
            r#"{"node_id": 2, "domains": ["*.mail.example.org"]}"#,
            false,
        ),
        (r#"{"domain": "mail.example.org"}"#, false),
    ];
    for (payload, expected) in cases {
        let handled = app
            .invoke_blocking(&[event("certificate-changed", "module/traefik2", payload)])
            .result
            .unwrap();
        assert_eq!(handled.effects == reload, expected, "{payload}");
    }
}

#[derive(serde::Deserialize)]
struct Ns8Rules {
    app: AgentRules,
    node: AgentRules,
}

#[derive(serde::Deserialize)]
struct AgentRules {
    rule: Vec<weir_host::filter::RuleConfig>,
}

/// The pre-filter decides exactly as the ground truth for every delivery of
/// both node-join corpora, apps and node agents alike. Returns (deliveries,
/// relevant).
fn prefilter(scenario: &str) -> (usize, usize) {
    use weir_host::filter::{Filter, Verdict};
    let rules: Ns8Rules =
        toml::from_str(&std::fs::read_to_string(examples_dir().join("ns8/rules.toml")).unwrap())
            .unwrap();
    let (events, deliveries, topology) = load(scenario);
    let (mut checked, mut relevant) = (0, 0);
    for d in &deliveries {
        let filter = if let Some(node) = d.agent.strip_prefix("node/") {
            Filter::new(
                &rules.node.rule,
                node.parse().unwrap(),
                weir_host::DomainSet::default(),
            )
            .unwrap()
        } else {
            let name = d.agent.strip_prefix("module/").unwrap();
            let a = topology.apps.iter().find(|a| a.name == name).unwrap();
            Filter::new(
                &rules.app.rule,
                a.node,
                weir_host::DomainSet::new(&[&a.domain]).unwrap(),
            )
            .unwrap()
        };
        let verdict = filter.check(&events[&d.seq]);
        assert_eq!(
            matches!(verdict, Verdict::Relevant(_)),
            d.ideal_effect,
            "{scenario} seq {} to {}: {verdict:?}",
            d.seq,
            d.agent
        );
        checked += 1;
        relevant += usize::from(matches!(verdict, Verdict::Relevant(_)));
    }
    (checked, relevant)
}

#[test]
fn prefilter_matches_ground_truth_legacy() {
    // 340 deliveries: 300 user-domain-changed (none relevant) + 40 node events.
    assert_eq!(prefilter("node-join-legacy"), (340, 40));
}

#[test]
fn prefilter_matches_ground_truth_batched() {
    assert_eq!(prefilter("node-join-batched"), (52, 40));
}

#[test]
fn prefilter_matches_ground_truth_positive() {
    // 4 events × 6 apps; relevant: nextcloud1 (seq 0), mail1 (seq 1),
    // ejabberd1 (seq 3). Not seq 2: node 2's ldapproxy, mail1 is on node 1.
    assert_eq!(prefilter("positive"), (24, 3));
}
