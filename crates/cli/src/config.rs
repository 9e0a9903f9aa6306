//! `weir config example`: a complete, commented `weir.toml`, and every key
//! as a Markdown table (the book's `reference/config.md`, printed by the
//! hidden `weir reference config`). Both are generated from the configuration types
//! themselves ([`schemars`] schemas of `weir_host::config::Config` and
//! `weir_bridge::BridgeConfig`: their doc comments, types and defaults), so
//! they never drift from what `weir run` accepts; a test parses the example
//! with the same `deny_unknown_fields` types.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::Value;

use crate::exit::Failure;

/// `weir config`.
#[derive(clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Print a complete, commented weir.toml: every section and key with its
    /// default, the required ones with an example value.
    Example,
}

/// Values for the keys that have no default, as the example shows them.
const EXAMPLES: &[(&str, &str)] = &[
    ("node.id", "1"),
    ("node.name", "\"node1\""),
    ("app.name", "\"mail\""),
    ("app.component", "\"/var/lib/weir/mail.wasm\""),
    ("app.rule.event", "\"user-domain-changed\""),
    ("app.rule.field.name", "\"domains\""),
    ("app.effects.limit.effect", "\"restart:*\""),
    ("app.effects.limit.max", "1"),
    ("app.effects.limit.per_s", "60"),
    ("app.canary.component", "\"/var/lib/weir/mail-v2.wasm\""),
    ("app.canary.nodes", "[2]"),
    ("bridge.redis_url", "\"redis://127.0.0.1:6379\""),
    ("telemetry.endpoint", "\"http://127.0.0.1:4318\""),
    (
        "telemetry.headers",
        "{ authorization = \"Bearer <token>\" }",
    ),
    ("telemetry.max_queue_spans", "2048"),
    ("telemetry.protocol", "\"http/protobuf\""),
    (
        "telemetry.resource_attributes",
        "{ \"deployment.environment.name\" = \"prod\" }",
    ),
    ("telemetry.sampler", "\"parentbased_traceidratio\""),
    ("telemetry.sampler_arg", "0.1"),
    ("telemetry.service_name", "\"weir\""),
    ("telemetry.timeout_ms", "10000"),
];

/// Run `weir config <what>`.
pub fn run(args: ConfigArgs) -> Result<ExitCode, Failure> {
    let text = match args.what {
        What::Example => example(),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// The schema of `T` as JSON.
fn schema_of<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

/// A schema node with its `$ref` resolved against `root`'s `$defs`.
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    let target = node.get("$ref").and_then(Value::as_str).or_else(|| {
        // `Option<Struct>`: anyOf [{$ref}, {type: null}].
        node.get("anyOf")?
            .as_array()?
            .iter()
            .find_map(|n| n.get("$ref")?.as_str())
    });
    match target.and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => root.pointer(&format!("/$defs/{name}")).unwrap_or(node),
        None => node,
    }
}

/// Rustdoc prose as plain text: `[`X`]` links lose their brackets.
fn plain(doc: &str) -> String {
    let mut out = String::new();
    let mut rest = doc;
    while let Some(i) = rest.find("[`") {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(end) = rest.find("`]") {
            out.push_str(&rest[..end + 1]);
            rest = &rest[end + 2..];
            // A `[`x`](target)` link: drop the target.
            if rest.starts_with('(')
                && let Some(close) = rest.find(')')
            {
                rest = &rest[close + 1..];
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` as `#` comment lines of at most 78 columns.
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 78 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    if line.len() > 1 {
        out.push_str(&line);
        out.push('\n');
    }
}

/// What kind of value a property holds.
enum Kind<'a> {
    /// A table (`[section]`) with this schema.
    Table(&'a Value),
    /// An array of tables (`[[section]]`) of this schema.
    Tables(&'a Value),
    /// A value written inline.
    Scalar,
}

fn kind<'a>(root: &'a Value, prop: &'a Value) -> Kind<'a> {
    let resolved = resolve(root, prop);
    if resolved.get("properties").is_some() {
        return Kind::Table(resolved);
    }
    if let Some(items) = prop.get("items") {
        let item = resolve(root, items);
        if item.get("properties").is_some() {
            return Kind::Tables(item);
        }
    }
    Kind::Scalar
}

/// A default or example value as TOML.
fn toml_value(value: &Value) -> Option<String> {
    let wrapped = serde_json::json!({ "v": value });
    let table: toml::Table = serde_json::from_value(wrapped).ok()?;
    let text = toml::to_string(&table).ok()?;
    Some(text.trim().strip_prefix("v = ")?.to_owned())
}

/// The sections of `weir.toml` in the order a reader meets them (the
/// schema's own order is alphabetical); other keys keep that order.
const SECTION_ORDER: &[&str] = &["node", "nats", "http", "engine", "effects", "app"];

fn properties(schema: &Value) -> Vec<(&String, &Value)> {
    let mut props: Vec<(&String, &Value)> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    if !props.iter().any(|(k, _)| *k == "node") {
        return props;
    }
    props.sort_by_key(|(k, _)| {
        SECTION_ORDER
            .iter()
            .position(|s| s == k)
            .unwrap_or(SECTION_ORDER.len())
    });
    props
}

/// Each property of `schema` with its dotted name under `path`.
fn keys<'a>(schema: &'a Value, path: &str) -> Vec<(&'a String, &'a Value, String)> {
    properties(schema)
        .into_iter()
        .map(|(key, prop)| {
            let full = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            (key, prop, full)
        })
        .collect()
}

fn description(root: &Value, prop: &Value) -> String {
    let own = prop.get("description").and_then(Value::as_str);
    plain(own.unwrap_or_else(|| {
        resolve(root, prop)
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
    }))
}

fn example_for(path: &str) -> Option<&'static str> {
    EXAMPLES.iter().find(|(k, _)| *k == path).map(|(_, v)| *v)
}

/// One table's keys (`path` is its dotted name; `prefix` comments every
/// line out, for the sections that are examples only).
fn write_table(out: &mut String, root: &Value, schema: &Value, path: &str, prefix: &str) {
    let mut nested = Vec::new();
    for (key, prop, full) in keys(schema, path) {
        match kind(root, prop) {
            Kind::Table(s) => nested.push((full, prop, s, false)),
            Kind::Tables(s) => nested.push((full, prop, s, true)),
            Kind::Scalar => {
                out.push('\n');
                let mut doc = String::new();
                comment(&mut doc, &description(root, prop));
                out.push_str(&doc);
                let default = prop.get("default").filter(|d| !d.is_null());
                let line = match (default.and_then(toml_value), example_for(&full)) {
                    (_, Some(example)) => format!("{prefix}{key} = {example}"),
                    (Some(value), None) => format!("{prefix}{key} = {value}"),
                    (None, None) => format!("# {key} = "),
                };
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    for (full, prop, s, many) in nested {
        out.push('\n');
        comment(out, &description(root, prop));
        // Arrays of tables other than `[[app]]` and its rule, and optional
        // tables (`[app.canary]`), are shown commented out: an example, not
        // a default.
        let optional = prop
            .get("anyOf")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter()
                    .any(|n| n.get("type").and_then(Value::as_str) == Some("null"))
            });
        let commented = if optional || (many && !matches!(full.as_str(), "app" | "app.rule")) {
            "# "
        } else {
            prefix
        };
        let header = if many {
            format!("[[{full}]]")
        } else {
            format!("[{full}]")
        };
        writeln!(out, "{commented}{header}").ok();
        write_table(out, root, s, &full, commented);
    }
}

/// The commented example `weir.toml`.
pub fn example() -> String {
    let root = schema_of::<weir_host::config::Config>();
    let mut out = String::new();
    out.push_str(&format!(
        "# weir.toml: every section and key of weir {}, with its default.\n\
         # Generated by `weir config example` from the configuration types.\n\
         # Keys shown with a value and no `#` are the defaults (or, for the\n\
         # required ones, an example); `# key = ` has no default.\n",
        env!("CARGO_PKG_VERSION")
    ));
    write_table(&mut out, &root, &root, "", "");
    let bridge = schema_of::<weir_bridge::BridgeConfig>();
    out.push('\n');
    comment(
        &mut out,
        "`weir bridge` (NS8's Redis events into NATS) reads [bridge]; `weir run` checks it and does not use it.",
    );
    out.push_str("# [bridge]\n");
    write_table(&mut out, &bridge, &bridge, "bridge", "# ");
    out
}

/// One Markdown table per section.
fn write_reference(out: &mut String, root: &Value, schema: &Value, path: &str) {
    let header = if path.is_empty() {
        "top level".to_owned()
    } else {
        format!("`[{path}]`")
    };
    let mut rows = String::new();
    let mut nested = Vec::new();
    for (key, prop, full) in keys(schema, path) {
        match kind(root, prop) {
            Kind::Table(s) | Kind::Tables(s) => nested.push((full, s)),
            Kind::Scalar => {
                let default = prop
                    .get("default")
                    .filter(|d| !d.is_null())
                    .and_then(toml_value)
                    .map_or_else(|| "–".to_owned(), |v| format!("`{v}`"));
                let text = description(root, prop).replace('|', "\\|");
                writeln!(rows, "| `{key}` | {default} | {text} |").ok();
            }
        }
    }
    if !rows.is_empty() {
        writeln!(
            out,
            "\n## {header}\n\n| key | default | meaning |\n|---|---|---|"
        )
        .ok();
        out.push_str(&rows);
    }
    for (full, s) in nested {
        write_reference(out, root, s, &full);
    }
}

/// `docs/src/reference/config.md`.
pub fn reference() -> String {
    let mut out = String::from(
        "# weir.toml\n\n<!-- Generated by `weir reference config`; regenerate with\n     \
         `WEIR_REGENERATE_DOCS=1 scripts/test -E 'test(/^docs::/)'`. -->\n\n\
         Every key of `weir.toml`, with its default (`–`: none). The file is\n\
         read by `weir run`, `weir bridge` and the other commands with `--config`;\n\
         `weir check --config FILE` checks one, and `weir config example` prints\n\
         all of it with comments. A reload (SIGHUP, `weir reload`) applies the\n\
         `[[app]]` sections and `nats.delete_consumer`; every other change needs\n\
         a restart.\n",
    );
    let root = schema_of::<weir_host::config::Config>();
    write_reference(&mut out, &root, &root, "");
    let bridge = schema_of::<weir_bridge::BridgeConfig>();
    write_reference(&mut out, &bridge, &bridge, "bridge");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_with_the_config_types() {
        let text = example();
        let config: weir_host::config::Config =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.apps.len(), 1, "{text}");
        assert_eq!(config.apps[0].rule.len(), 1, "{text}");
        // Every default shown is the default.
        let defaults = weir_host::config::Config::parse(
            "[node]\nid = 1\nname = \"node1\"\n[[app]]\nname = \"mail\"\ncomponent = \"/var/lib/weir/mail.wasm\"\n[[app.rule]]\nevent = \"user-domain-changed\"\n",
        )
        .unwrap();
        assert_eq!(
            toml::to_string(&config).unwrap(),
            toml::to_string(&defaults).unwrap()
        );
        // The [bridge] section, uncommented, parses with its own type.
        let bridge: String = text
            .lines()
            .skip_while(|l| *l != "# [bridge]")
            .skip(1)
            .filter_map(|l| l.strip_prefix("# "))
            // `key = ` lines have no default: not set.
            .filter(|l| l.contains(" = ") && !l.trim_end().ends_with('='))
            .collect::<Vec<_>>()
            .join("\n");
        let table: toml::Table =
            toml::from_str(&bridge).unwrap_or_else(|e| panic!("{e}\n{bridge}"));
        weir_bridge::BridgeConfig::from_section(&table, std::path::Path::new("/"))
            .unwrap_or_else(|e| panic!("{e:?}\n{bridge}"));
        // So does the commented-out [app.canary], with no problem.
        let canary = uncommented(&text, "# [app.canary]");
        let canary: weir_host::canary::CanaryConfig =
            toml::from_str(&canary).unwrap_or_else(|e| panic!("{e}\n{canary}"));
        assert_eq!(canary.problems(), Vec::<String>::new());
        assert_eq!(canary.nodes, Some(vec![2]));
        // And the commented-out [telemetry] (export stays off as printed).
        assert!(config.telemetry.is_none(), "{text}");
        let telemetry = uncommented(&text, "# [telemetry]");
        let telemetry: weir_edge::telemetry::TelemetryConfig =
            toml::from_str(&telemetry).unwrap_or_else(|e| panic!("{e}\n{telemetry}"));
        assert_eq!(telemetry.problems(), Vec::<String>::new());
        assert_eq!(telemetry.endpoint.as_deref(), Some("http://127.0.0.1:4318"));
    }

    /// The example's keys of the commented-out table `header` (`# [x]`),
    /// uncommented, up to the next table; keys without an example left out.
    fn uncommented(text: &str, header: &str) -> String {
        text.lines()
            .skip_while(|l| *l != header)
            .skip(1)
            .take_while(|l| !l.starts_with("# [") && !l.starts_with('['))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = ") && !l.trim_end().ends_with('='))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn rustdoc_links_become_plain_text() {
        assert_eq!(
            plain("Default [`DEFAULT_X`] (1 GiB); see [`a::b`](crate::a::b)."),
            "Default `DEFAULT_X` (1 GiB); see `a::b`."
        );
    }
}
