//! Canary rollouts: a candidate component for an app on chosen nodes,
//! `[app.canary]`.
//!
//! ```toml
//! [[app]]
//! name = "mail1"
//! component = "handlers/mail.wasm"        # the stable version
//!
//! [app.canary]
//! component = "handlers/mail-v2.wasm"     # the candidate
//! nodes = [2]                             # or: percent = 34
//! mode = "live"                           # or "shadow"
//! window_s = 60
//! max_trap_ratio = 0.05
//! max_reject_ratio = 0.05
//! max_effect_ratio = 2.0
//! ```
//!
//! - **`mode = "live"`**: on the chosen nodes the candidate handles the
//!   app's events for real; the other nodes run the stable component and
//!   report their window (core NATS,
//!   [`weir_edge::nats::subjects::Subjects::canary_reference`], every
//!   [`REPORT_INTERVAL`]). A chosen node checks its guard rails every
//!   [`CHECK_INTERVAL`] ([`guard::verdict`]); when one trips, the
//!   pipeline swaps back to the stable component before its next batch
//!   (the reload path: the batch in progress finishes, events it failed
//!   come back to the stable one), logs why at warn, counts
//!   `weir_canary_rollbacks_total`, shows `"rolled_back"` with the reason
//!   in `/stats`, and publishes the rollback on
//!   [`weir_edge::nats::subjects::Subjects::canary_rolled_back`]. The
//!   candidate is not tried again until `[app.canary]` or a component
//!   changes: the rollback is recorded among the node's effect records
//!   (24 h), so a restart on the same configuration keeps it off.
//! - **`mode = "shadow"`**: on the chosen nodes the stable component
//!   handles events as always and the candidate runs on the same batches
//!   afterwards, its effects intercepted and its kv writes kept in an
//!   overlay ([`shadow`]); differences are counted in `/stats` and
//!   `/metrics`.
//!
//! Promotion is a configuration change: the candidate becomes
//! `component` and the section goes.

pub mod guard;
pub mod shadow;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Default guard-rail window: 60 s.
pub const DEFAULT_WINDOW_S: u64 = 60;
/// Shortest window: 5 s (a few reference reports).
pub const MIN_WINDOW_S: u64 = 5;
/// Longest window: 1 day.
pub const MAX_WINDOW_S: u64 = 86_400;
/// Default events the candidate must decide in the window before a guard
/// rail is checked: 20.
pub const DEFAULT_MIN_EVENTS: u64 = 20;
/// Default margin of the candidate's failed-event ratio over the stable
/// version's: 0.05 (5 percentage points).
pub const DEFAULT_MAX_TRAP_RATIO: f64 = 0.05;
/// Default margin of the candidate's reject ratio over the stable
/// version's: 0.05.
pub const DEFAULT_MAX_REJECT_RATIO: f64 = 0.05;
/// Default bound of the candidate's effects per event as a multiple of
/// the stable version's: 2.0.
pub const DEFAULT_MAX_EFFECT_RATIO: f64 = 2.0;
/// Effects per event the candidate may ask for above
/// `max_effect_ratio` × the stable version's: 0.01 (one per 100 events),
/// so a stable version that asks for none does not trip the rail on a
/// single effect.
pub const EFFECT_RATE_SLACK: f64 = 0.01;
/// How often a candidate's node checks its guard rails: 1 s.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often a reference node publishes its window: 2 s.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// A reference report older than this is dropped: 6 s (three reports).
pub const REFERENCE_STALE: Duration = Duration::from_secs(6);

/// How the candidate runs on its nodes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CanaryMode {
    /// The candidate handles the app's events (default), guard rails
    /// watched.
    #[default]
    Live,
    /// The stable version handles them; the candidate runs beside it on
    /// the same batches, effects intercepted, differences counted.
    Shadow,
}

impl CanaryMode {
    /// `"live"` or `"shadow"`.
    pub fn as_str(self) -> &'static str {
        match self {
            CanaryMode::Live => "live",
            CanaryMode::Shadow => "shadow",
        }
    }
}

fn default_window_s() -> u64 {
    DEFAULT_WINDOW_S
}
fn default_min_events() -> u64 {
    DEFAULT_MIN_EVENTS
}
fn default_max_trap_ratio() -> f64 {
    DEFAULT_MAX_TRAP_RATIO
}
fn default_max_reject_ratio() -> f64 {
    DEFAULT_MAX_REJECT_RATIO
}
fn default_max_effect_ratio() -> f64 {
    DEFAULT_MAX_EFFECT_RATIO
}

/// `[app.canary]`: a candidate component, where it runs, and its guard
/// rails.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The candidate component; relative paths are resolved against the
    /// config file.
    pub component: PathBuf,
    /// `"live"` (default) or `"shadow"` ([`CanaryMode`]).
    #[serde(default)]
    pub mode: CanaryMode,
    /// The node ids that run the candidate. Give `nodes` or `percent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<u32>>,
    /// Or: about this share of nodes, 1 to 100, chosen by node id and app
    /// name ([`chosen_by_percent`]: the same nodes every time, different
    /// nodes for different apps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// The guard rails' window, seconds ([`MIN_WINDOW_S`] to
    /// [`MAX_WINDOW_S`]); default [`DEFAULT_WINDOW_S`].
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    /// Events the candidate must decide in the window before the rails
    /// are checked (and the reference must have, to be compared with);
    /// default [`DEFAULT_MIN_EVENTS`].
    #[serde(default = "default_min_events")]
    pub min_events: u64,
    /// Roll back when the candidate's share of failed events (trap or cap)
    /// exceeds the stable version's by more than this (0 to 1); default
    /// [`DEFAULT_MAX_TRAP_RATIO`]. Without a reference the stable share is
    /// taken as 0.
    #[serde(default = "default_max_trap_ratio")]
    pub max_trap_ratio: f64,
    /// The same for rejected events; default [`DEFAULT_MAX_REJECT_RATIO`].
    #[serde(default = "default_max_reject_ratio")]
    pub max_reject_ratio: f64,
    /// Roll back when the candidate asks for more than this many times
    /// the stable version's effects per event (plus
    /// [`EFFECT_RATE_SLACK`]); at least 1; default
    /// [`DEFAULT_MAX_EFFECT_RATIO`]. Needs a reference: not checked until
    /// one has `min_events` events in its window.
    #[serde(default = "default_max_effect_ratio")]
    pub max_effect_ratio: f64,
}

impl CanaryConfig {
    /// Whether `node` runs the candidate of `app`.
    pub fn chooses(&self, app: &str, node: u32) -> bool {
        match (&self.nodes, self.percent) {
            (Some(nodes), _) => nodes.contains(&node),
            (None, Some(percent)) => chosen_by_percent(app, node, percent),
            (None, None) => false,
        }
    }

    /// Every problem (empty if valid), unprefixed. The component's
    /// existence is checked with the app's.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match (&self.nodes, self.percent) {
            (Some(_), Some(_)) => p.push("give nodes or percent, not both".to_owned()),
            (None, None) => p.push("give nodes = [..] or percent".to_owned()),
            (Some(nodes), None) if nodes.is_empty() => {
                p.push("nodes is empty: no node would run the candidate".to_owned());
            }
            (None, Some(percent)) if !(1..=100).contains(&percent) => {
                p.push(format!("percent = {percent}: must be 1 to 100"));
            }
            _ => {}
        }
        if !(MIN_WINDOW_S..=MAX_WINDOW_S).contains(&self.window_s) {
            p.push(format!(
                "window_s = {}: must be {MIN_WINDOW_S} to {MAX_WINDOW_S}",
                self.window_s
            ));
        }
        if self.min_events == 0 {
            p.push("min_events must be at least 1".to_owned());
        }
        for (name, value) in [
            ("max_trap_ratio", self.max_trap_ratio),
            ("max_reject_ratio", self.max_reject_ratio),
        ] {
            if !(0.0..=1.0).contains(&value) {
                p.push(format!("{name} = {value}: must be 0 to 1"));
            }
        }
        if !(self.max_effect_ratio.is_finite() && self.max_effect_ratio >= 1.0) {
            p.push(format!(
                "max_effect_ratio = {}: must be at least 1",
                self.max_effect_ratio
            ));
        }
        p
    }
}

/// Whether `node` falls in the first `percent` of 100 buckets for `app`:
/// the first 8 bytes of SHA-256(`app`, 0, `node` as 4 bytes big-endian),
/// modulo 100. Deterministic across hosts and restarts.
pub fn chosen_by_percent(app: &str, node: u32, percent: u8) -> bool {
    let mut h = Sha256::new();
    h.update(app.as_bytes());
    h.update([0]);
    h.update(node.to_be_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first) % 100 < u64::from(percent)
}

/// An app's canary as this node runs it ([`crate::config::AppPlan`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryPlan {
    /// The section, its component path resolved.
    pub config: CanaryConfig,
    /// This node runs the candidate.
    pub here: bool,
}

impl CanaryPlan {
    /// Whether this node deploys the candidate.
    pub fn runs_candidate(&self) -> bool {
        self.here
    }

    /// Whether this node reports its stable window to the candidate's
    /// nodes (a live canary elsewhere).
    pub fn reports(&self) -> bool {
        !self.here && self.config.mode == CanaryMode::Live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> CanaryConfig {
        toml::from_str(&format!("component = \"c.wasm\"\n{extra}")).unwrap()
    }

    #[test]
    fn defaults_and_problems() {
        let c = config("nodes = [2]");
        assert_eq!(c.mode, CanaryMode::Live);
        assert_eq!(c.window_s, DEFAULT_WINDOW_S);
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert!(c.chooses("mail", 2) && !c.chooses("mail", 1));
        let p = config("nodes = [2]\npercent = 10\nwindow_s = 1\nmax_trap_ratio = 2.0\nmax_effect_ratio = 0.5\nmin_events = 0").problems();
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p[0].contains("not both"), "{p:?}");
        assert_eq!(config("").problems().len(), 1);
        assert_eq!(config("nodes = []").problems().len(), 1);
        assert_eq!(config("percent = 0").problems().len(), 1);
        assert!(toml::from_str::<CanaryConfig>("component = \"c\"\nnodez = [1]").is_err());
    }

    #[test]
    fn percent_chooses_about_that_share_and_the_same_nodes_every_time() {
        let chosen = (1..=1_000)
            .filter(|n| chosen_by_percent("mail", *n, 30))
            .count();
        assert!((250..=350).contains(&chosen), "{chosen} of 1000 at 30%");
        assert_eq!(
            (1..=1_000)
                .filter(|n| chosen_by_percent("mail", *n, 100))
                .count(),
            1_000
        );
        let again = (1..=1_000)
            .filter(|n| chosen_by_percent("mail", *n, 30))
            .count();
        assert_eq!(chosen, again);
        let other: Vec<u32> = (1..=50)
            .filter(|n| chosen_by_percent("web", *n, 30))
            .collect();
        let mail: Vec<u32> = (1..=50)
            .filter(|n| chosen_by_percent("mail", *n, 30))
            .collect();
        assert_ne!(other, mail, "apps get different nodes");
    }
}
