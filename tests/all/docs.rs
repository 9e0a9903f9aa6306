//! The documentation, checked: the book's generated reference pages match
//! what `weir reference` prints (regenerate with `WEIR_REGENERATE_DOCS=1`),
//! every relative link, anchor and `{{#include}}` of every Markdown file
//! resolves, every `weir.toml` excerpt in the book parses with the
//! configuration types, and the README stays within its size.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Set to rewrite the generated pages instead of comparing them.
const REGENERATE_ENV: &str = "WEIR_REGENERATE_DOCS";

/// The README's size cap: 12 KiB.
const README_MAX_BYTES: u64 = 12 * 1024;

#[test]
fn the_reference_pages_are_what_weir_generates() {
    let mut stale = Vec::new();
    for page in ["cli", "config", "exit-codes", "metrics"] {
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["reference", page])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let generated = String::from_utf8(out.stdout).unwrap();
        let path = root().join(format!("docs/src/reference/{page}.md"));
        if std::env::var_os(REGENERATE_ENV).is_some() {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale generated pages (regenerate: {REGENERATE_ENV}=1 scripts/test -E 'test(/^docs::/)'): {stale:?}"
    );
}

#[test]
fn the_readme_stays_short() {
    let size = std::fs::metadata(root().join("README.md")).unwrap().len();
    assert!(
        size <= README_MAX_BYTES,
        "README.md is {size} bytes, over {README_MAX_BYTES}"
    );
}

/// Every Markdown file of the repository, outside build and dependency
/// directories.
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(
                name.as_str(),
                "target" | "node_modules" | ".git" | ".tools" | "book" | "templates"
            ) {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// mdBook's and GitHub's anchor of a heading: lower case, letters, digits,
/// `-` and `_` kept, spaces to `-`, the rest dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            c if c.is_whitespace() => Some('-'),
            _ => None,
        })
        .collect()
}

/// The text outside code fences and inline code.
fn prose(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        let mut kept = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                kept.push_str(part);
            }
        }
        lines.push(kept);
    }
    lines
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .iter()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| slug(h.trim_start_matches('#')))
        .collect()
}

/// `(target, line)` of each Markdown link in `text`.
fn links(text: &str) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for (n, line) in prose(text).iter().enumerate() {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            found.push((rest[..end].to_owned(), n + 1));
            rest = &rest[end..];
        }
    }
    found
}

#[test]
fn every_relative_link_anchor_and_include_resolves() {
    let mut files = Vec::new();
    markdown_files(&root(), &mut files);
    assert!(files.len() > 20, "found {} Markdown files", files.len());
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let dir = file.parent().unwrap();
        for (target, line) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{}:{line}: {target}: no such file", file.display()));
                continue;
            }
            if !anchor.is_empty() && resolved.extension().is_some_and(|e| e == "md") {
                let target_text = std::fs::read_to_string(&resolved).unwrap();
                if !anchors(&target_text).contains(anchor) {
                    broken.push(format!(
                        "{}:{line}: {target}: no such heading",
                        file.display()
                    ));
                }
            }
        }
        for (n, line) in text.lines().enumerate() {
            if let Some(start) = line.find("{{#include ") {
                let rest = &line[start + "{{#include ".len()..];
                let spec = rest.split("}}").next().unwrap();
                let (path, anchor) = spec.split_once(':').unwrap_or((spec, ""));
                let path = path.trim();
                let Ok(included) = std::fs::read_to_string(dir.join(path)) else {
                    broken.push(format!(
                        "{}:{}: include {path}: no such file",
                        file.display(),
                        n + 1
                    ));
                    continue;
                };
                // mdBook's `path:name` takes the lines between `ANCHOR: name`
                // and `ANCHOR_END: name`, and nothing (silently) without them.
                // `path:start:end` (either may be empty) is a line range.
                let anchor = anchor.trim();
                let is_range = anchor
                    .split(':')
                    .all(|n| n.is_empty() || n.parse::<usize>().is_ok());
                let marked = included.contains(&format!("ANCHOR: {anchor}"))
                    && included.contains(&format!("ANCHOR_END: {anchor}"));
                if !is_range && !marked {
                    broken.push(format!(
                        "{}:{}: include {path}: no ANCHOR: {anchor} … ANCHOR_END: {anchor}",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_checker_sees_a_broken_link_and_anchor() {
    let text =
        "# A heading\n\nsee [x](missing.md) and [y](#a-heading) and [z](#nope) `[no](code.md)`\n";
    let found: Vec<_> = links(text).into_iter().map(|(t, _)| t).collect();
    assert_eq!(found, ["missing.md", "#a-heading", "#nope"]);
    let a = anchors(text);
    assert!(a.contains("a-heading") && !a.contains("nope"), "{a:?}");
    assert_eq!(
        slug("Adopting weir on NS8: the Redis bridge"),
        "adopting-weir-on-ns8-the-redis-bridge"
    );
}

/// The ```` ```toml ```` blocks of `text`, with the line each starts on.
fn toml_blocks(text: &str) -> Vec<(String, usize)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, usize)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == "```toml" => current = Some((String::new(), n + 2)),
            Some((block, start)) if line.trim_start() == "```" => {
                blocks.push((std::mem::take(block), *start));
                current = None;
            }
            Some((block, _)) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// Every `weir.toml` excerpt in the book, laid over the complete example
/// (`weir config example`) section by section, parses with weir's
/// configuration types (unknown keys are refused there) and, for
/// `[bridge]`, with weir-bridge's. A key renamed in the code and not in the
/// book fails here.
#[test]
fn every_config_excerpt_in_the_book_parses() {
    let example = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["config", "example"])
        .output()
        .unwrap();
    let example: toml::Table = toml::from_str(&String::from_utf8(example.stdout).unwrap()).unwrap();
    let mut files = Vec::new();
    markdown_files(&root().join("docs/src"), &mut files);
    let (mut checked, mut wrong) = (0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (block, line) in toml_blocks(&text) {
            let at = format!("{}:{line}", file.display());
            let Ok(excerpt) = toml::from_str::<toml::Table>(&block) else {
                wrong.push(format!("{at}: not TOML"));
                continue;
            };
            // A `weir.toml` excerpt has only the example's sections (and
            // `[bridge]`, which the example leaves commented out); the other
            // blocks are Cargo manifests and the like.
            let is_config = |k: &String| example.contains_key(k) || k == "bridge";
            if excerpt.is_empty() || !excerpt.keys().all(is_config) {
                continue;
            }
            checked += 1;
            let mut whole = example.clone();
            for (key, value) in excerpt {
                whole.insert(key, value);
            }
            if let Err(e) = weir_host::config::Config::parse(&toml::to_string(&whole).unwrap()) {
                wrong.push(format!("{at}: {e}"));
            }
            if let Some(toml::Value::Table(bridge)) = whole.get("bridge")
                && let Err(e) =
                    weir_bridge::BridgeConfig::from_section(bridge, Path::new("/etc/weir"))
            {
                wrong.push(format!("{at}: {}", e.join("; ")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "config excerpts that do not parse:\n{}",
        wrong.join("\n")
    );
    assert!(
        checked >= 4,
        "only {checked} weir.toml excerpts found in the book"
    );
    eprintln!("{checked} weir.toml excerpts parse");
}

/// The metric families `weir reference metrics` lists (from live
/// registries), with their kinds: `(name, kind)`.
fn metric_families() -> Vec<(String, String)> {
    let page = std::fs::read_to_string(root().join("docs/src/reference/metrics.md")).unwrap();
    page.lines()
        .filter_map(|l| {
            let mut cells = l.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_owned(), cells.next()?.to_owned()))
        })
        .collect()
}

/// First words after `weir_` that make a token a metric name (the rest:
/// crates, consumers, modules).
const METRIC_STEMS: &[&str] = &[
    "events",
    "batches",
    "dead",
    "redeliveries",
    "effect",
    "effects",
    "kv",
    "fuel",
    "memory",
    "consumer",
    "quarantines",
    "app",
    "apps",
    "outcomes",
    "traps",
    "settle",
    "bridge",
];

/// Every metric the book, the evidence files and the alerting rules name
/// is one weir exposes: a family of the generated metrics page, or one of
/// its exposed series (`_total` of a counter; `_bucket`, `_sum`, `_count` of
/// a histogram).
/// The Grafana dashboard is JSON Grafana can import: panels with unique
/// ids, each (rows aside) with at least one query; every query of a host
/// metric selects the dashboard's `$node` and `$app`. (That every metric
/// it names exists is [`every_metric_the_docs_name_exists`].)
#[test]
fn the_grafana_dashboard_is_importable_and_filters_by_node_and_app() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/weir-dashboard.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let variables: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "node", "app"]);
    let (mut ids, mut queries) = (BTreeSet::new(), 0);
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{title}: id repeated"
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            queries += 1;
            if expr.contains("weir_") && !expr.contains("weir_bridge_") {
                assert!(
                    expr.contains(r#"node=~"$node""#) && expr.contains(r#"app=~"$app""#),
                    "{title}: {expr}"
                );
            }
        }
    }
    assert!(
        ids.len() > 25 && queries > 30,
        "{} panels, {queries} queries",
        ids.len()
    );
}

#[test]
fn every_metric_the_docs_name_exists() {
    let families = metric_families();
    assert!(families.len() > 30, "{} families read", families.len());
    let kind = |name: &str| {
        families
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_str())
    };
    let exists = |token: &str| {
        kind(token).is_some()
            || token.strip_suffix("_total").and_then(kind) == Some("counter")
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| token.strip_suffix(s).and_then(kind) == Some("histogram"))
    };
    let mut files = Vec::new();
    markdown_files(&root().join("docs/src"), &mut files);
    files.retain(|f| !f.ends_with("reference/metrics.md"));
    files.extend(
        [
            "README.md",
            "RELIABILITY.md",
            "PERFORMANCE.md",
            "deploy/prometheus/weir-alerts.yml",
            "deploy/grafana/weir-dashboard.json",
        ]
        .map(|f| root().join(f)),
    );
    let (mut named, mut unknown) = (BTreeSet::new(), Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (at, _) in text.match_indices("weir_") {
            if at > 0
                && (text.as_bytes()[at - 1].is_ascii_alphanumeric()
                    || text.as_bytes()[at - 1] == b'_')
            {
                continue;
            }
            let token: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let token = token.trim_end_matches('_');
            let stem = token
                .get("weir_".len()..)
                .unwrap_or("")
                .split('_')
                .next()
                .unwrap_or("");
            if !METRIC_STEMS.contains(&stem) || token == "weir_bridge" {
                continue;
            }
            if exists(token) {
                named.insert(token.to_owned());
            } else {
                unknown.push(format!("{}: {token}", file.display()));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics weir does not expose:\n{}",
        unknown.join("\n")
    );
    assert!(
        named.len() >= 10,
        "only {} metrics named: {named:?}",
        named.len()
    );
    eprintln!("{} metric names in the docs exist", named.len());
}
