//! What weir grants for each import of a component, and whether it can be
//! deployed. Used at deploy and by `weir check`.
//!
//! Capabilities are denied by context, not by import: WASI p2 is linked, but
//! with a context that grants nothing, because real guests import more than
//! they use (a componentize-py handler imports `wasi:filesystem` and
//! `wasi:sockets` even when unused). Interfaces weir does not link at all
//! (`wasi:http`, unknown packages) are refused at deploy, each named.

use std::time::Duration;

use wasmtime::component::types::ComponentItem;

use crate::cache::LoadSource;

/// What weir grants for one import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Linked and usable: `weir:handler` imports, `wasi:io`, `wasi:clocks`,
    /// `wasi:random`, stdio (into the log budget), `wasi:cli/exit`.
    Provided,
    /// Linked, but every use fails or sees nothing (the reason says what).
    Denied(&'static str),
    /// Not linked: the component cannot be deployed.
    Refused(String),
}

impl Grant {
    /// `provided`, `denied` or `refused`.
    pub fn label(&self) -> &'static str {
        match self {
            Grant::Provided => "provided",
            Grant::Denied(_) => "denied",
            Grant::Refused(_) => "refused",
        }
    }
}

/// The interface part of an import name: `wasi:cli/stdout@0.2.6` ->
/// `wasi:cli/stdout`.
fn unversioned(name: &str) -> &str {
    name.split_once('@').map_or(name, |(n, _)| n)
}

/// Classify one import by name (see [`Grant`]).
pub fn classify(name: &str) -> Grant {
    let iface = unversioned(name);
    let (package, _) = iface.split_once('/').unwrap_or((iface, ""));
    match iface {
        "weir:handler/node"
        | "weir:handler/domains"
        | "weir:handler/log"
        | "weir:handler/types"
        | "weir:handler/kv" => {
            return Grant::Provided;
        }
        "wasi:cli/stdout" | "wasi:cli/stderr" => return Grant::Provided,
        "wasi:cli/stdin" => return Grant::Denied("stdin is empty"),
        "wasi:cli/environment" => return Grant::Denied("no environment variables, no arguments"),
        "wasi:cli/exit" => return Grant::Provided,
        "wasi:cli/terminal-input"
        | "wasi:cli/terminal-output"
        | "wasi:cli/terminal-stdin"
        | "wasi:cli/terminal-stdout"
        | "wasi:cli/terminal-stderr" => return Grant::Denied("no terminal"),
        "wasi:filesystem/preopens" => return Grant::Denied("no preopened directories"),
        "wasi:filesystem/types" => return Grant::Denied("no file is reachable without a preopen"),
        "wasi:sockets/network" | "wasi:sockets/instance-network" => {
            return Grant::Denied("every address is refused");
        }
        "wasi:sockets/tcp" | "wasi:sockets/tcp-create-socket" => {
            return Grant::Denied("TCP is disabled");
        }
        "wasi:sockets/udp" | "wasi:sockets/udp-create-socket" => {
            return Grant::Denied("UDP is disabled");
        }
        "wasi:sockets/ip-name-lookup" => return Grant::Denied("name lookup is disabled"),
        _ => {}
    }
    match package {
        "wasi:io" | "wasi:clocks" | "wasi:random" => Grant::Provided,
        "wasi:http" => {
            Grant::Refused("weir provides no HTTP: handlers return effects instead (componentize-js: build with `--disable http fetch-event`)".into())
        }
        _ if package.starts_with("weir:") => Grant::Refused("not part of weir:handler@0.1".into()),
        _ => Grant::Refused("weir does not provide this interface".into()),
    }
}

/// One import and its grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// Full import name, e.g. `wasi:filesystem/types@0.2.6`.
    pub name: String,
    /// What weir grants for it.
    pub grant: Grant,
}

/// The outcome of checking a component against the `weir:handler` world.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// Component size in bytes.
    pub size: usize,
    /// Every import, in the component's order.
    pub imports: Vec<ImportReport>,
    /// Every export name with its kind (`func`, `instance`, ...).
    pub exports: Vec<(String, &'static str)>,
    /// Every reason the component cannot be deployed (empty if it can).
    pub problems: Vec<String>,
    /// How the compiled form was obtained.
    pub source: LoadSource,
    /// Time to obtain it.
    pub load_time: Duration,
}

impl CheckReport {
    /// True if the component can be deployed.
    pub fn deployable(&self) -> bool {
        self.problems.is_empty()
    }
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "func",
        ComponentItem::CoreFunc(_) => "core func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

/// Imports, exports and problems of `component` (without linking).
pub(crate) fn inspect(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> (Vec<ImportReport>, Vec<(String, &'static str)>, Vec<String>) {
    let ty = component.component_type();
    let mut problems = Vec::new();
    let imports: Vec<ImportReport> = ty
        .imports(engine)
        .map(|(name, _)| ImportReport {
            name: name.to_owned(),
            grant: classify(name),
        })
        .collect();
    for import in &imports {
        if let Grant::Refused(why) = &import.grant {
            problems.push(format!("import `{}` refused: {why}", import.name));
        }
    }
    let exports: Vec<(String, &'static str)> = ty
        .exports(engine)
        .map(|(n, item)| (n.to_owned(), kind(&item.ty)))
        .collect();
    match exports.iter().find(|(n, _)| n == "handle") {
        Some((_, "func")) => {}
        Some((_, other)) => problems.push(format!("export `handle` is a {other}, expected a func")),
        None => problems
            .push("missing export `handle` (the weir:handler world's entry point)".to_owned()),
    }
    (imports, exports, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        assert_eq!(classify("weir:handler/log@0.1.0"), Grant::Provided);
        assert_eq!(classify("weir:handler/kv@0.2.0"), Grant::Provided);
        assert_eq!(classify("wasi:io/streams@0.2.6"), Grant::Provided);
        assert_eq!(classify("wasi:clocks/wall-clock@0.2.0"), Grant::Provided);
        assert_eq!(classify("wasi:cli/stderr@0.2.6"), Grant::Provided);
        assert_eq!(classify("wasi:cli/environment@0.2.6").label(), "denied");
        assert_eq!(classify("wasi:filesystem/types@0.2.6").label(), "denied");
        assert_eq!(classify("wasi:sockets/tcp@0.2.6").label(), "denied");
        assert_eq!(
            classify("wasi:http/outgoing-handler@0.2.6").label(),
            "refused"
        );
        assert_eq!(classify("acme:vault/secrets@1.0.0").label(), "refused");
        assert_eq!(classify("weir:handler/secrets@0.2.0").label(), "refused");
        assert_eq!(classify("plain-name").label(), "refused");
    }
}
