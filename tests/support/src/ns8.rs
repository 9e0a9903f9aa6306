//! The NS8 corpus deployments (`examples/ns8/`) as `weir.toml` text: what
//! the storm demo and the storm bench run on each node.

use weir_host::corpus::Topology;

/// The `weir.toml` of `node` on the NATS server at `nats_url`, serving HTTP
/// on `127.0.0.1:<http_port>`: the node agent (`echo`, the `[[node.rule]]`
/// rules of `rules`) and each of the node's apps in `topology` (the `mail`
/// example, its domain, the `[[app.rule]]` rules and `[app.effects]` of
/// `rules`, restart granted for dovecot and postfix).
///
/// # Panics
///
/// If `rules` has no `[[node.rule]]` table (`examples/ns8/rules.toml` has).
pub fn node_config(
    node: u32,
    nats_url: &str,
    http_port: u16,
    topology: &Topology,
    rules: &str,
) -> String {
    let (app_rules, node_rules) = rules
        .split_once("[[node.rule]]")
        .expect("rules.toml has [[node.rule]]");
    let mut c = format!(
        "[node]\nid = {node}\nname = \"node{node}\"\n[nats]\nurl = \"{nats_url}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n\n\
         [[app]]\nname = \"node\"\ncomponent = \"{echo}\"\n[[app.rule]]{node_rules}\n",
        echo = weir_test_artifacts::ECHO,
    );
    for a in topology.apps.iter().filter(|a| a.node == node) {
        c += &format!(
            "[[app]]\nname = \"{}\"\ncomponent = \"{}\"\ndomains = [\"{}\"]\n{}\n[app.grants]\nrestart = [\"dovecot.service\", \"postfix.service\"]\n",
            a.name,
            weir_test_artifacts::MAIL,
            a.domain,
            app_rules
        );
    }
    c
}

/// Event names of the node agents' rules (`[[node.rule]]`) in `rules`.
///
/// # Panics
///
/// If `rules` is not TOML with a `[[node.rule]]` list of rules.
pub fn node_event_names(rules: &str) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Rules {
        node: Agent,
    }
    #[derive(serde::Deserialize)]
    struct Agent {
        rule: Vec<weir_host::filter::RuleConfig>,
    }
    let parsed: Rules = toml::from_str(rules).expect("rules.toml parses");
    parsed
        .node
        .rule
        .iter()
        .flat_map(|r| r.event.to_vec())
        .collect()
}
