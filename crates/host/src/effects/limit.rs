//! Effect rate limits (`[[app.effects.limit]]`), per node or for the whole
//! cluster, kept in NATS.
//!
//! A limit allows at most `max` executions of the effects it matches per
//! window of `per_s` seconds. The window and its count live in the
//! replicated `WEIR_LIMITS` bucket ([`super::LimitStore`]), changed
//! by compare-and-set, so a `scope = "cluster"` limit holds across every
//! host that runs the app (a `node` limit across restarts of one node's
//! host). Windows are fixed: the first execution opens one, the count
//! resets when it ends.
//!
//! Over the limit an effect is, as `over` says:
//! - `defer` (default): recorded as pending ([`super::debounce`]) and
//!   executed at the start of the next window (identical effects deferred
//!   to the same window run once), never dropped;
//! - `refuse`: not executed, counted (`effects_limited` in `/stats`) and
//!   logged; its events are still acked.
//!
//! The first limit of the app that matches an effect applies. Limits need a
//! NATS connection; in-process use (`weir invoke`) executes effects
//! unlimited.

use serde::{Deserialize, Serialize};

use weir_runtime::Effect;

/// Longest limit window: 86,400 s (one day; the bucket keeps a window's
/// count for as long).
pub const MAX_LIMIT_WINDOW_S: u64 = 86_400;

/// Whose executions a limit counts.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    /// This node's host only. The default.
    #[default]
    Node,
    /// Every host of the cluster that runs the app.
    Cluster,
}

/// What happens to an effect over its limit.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Over {
    /// Executed at the start of the next window. The default.
    #[default]
    Defer,
    /// Not executed; counted and logged.
    Refuse,
}

/// `[[app.effects.limit]]`: at most `max` executions per `per_s` seconds of
/// the effects matching `effect`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EffectLimit {
    /// `<kind>:<target>`: kind `restart`, `reload` or `publish`; target a
    /// unit or event name, `*` for any, or a prefix ending in `*`
    /// (`restart:*`, `restart:dovecot.service`, `publish:cert-*`).
    pub effect: String,
    /// Executions allowed per window, at least 1.
    pub max: u32,
    /// Window length in seconds, 1 to [`MAX_LIMIT_WINDOW_S`].
    pub per_s: u64,
    /// Whose executions count. Default [`LimitScope::Node`].
    #[serde(default)]
    pub scope: LimitScope,
    /// What happens over the limit. Default [`Over::Defer`].
    #[serde(default)]
    pub over: Over,
}

impl EffectLimit {
    /// Every problem with this limit (empty if valid), unprefixed.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match self.effect.split_once(':') {
            Some(("restart" | "reload" | "publish", target)) if !target.is_empty() => {
                if target[..target.len() - 1].contains('*') {
                    p.push(format!(
                        "limit effect {:?}: '*' may only end the target",
                        self.effect
                    ));
                }
            }
            _ => p.push(format!(
                "limit effect {:?} must be <restart|reload|publish>:<target>",
                self.effect
            )),
        }
        if self.max == 0 {
            p.push(format!("limit {:?}: max must be at least 1", self.effect));
        }
        if self.per_s == 0 || self.per_s > MAX_LIMIT_WINDOW_S {
            p.push(format!(
                "limit {:?}: per_s = {} must be 1 to {MAX_LIMIT_WINDOW_S}",
                self.effect, self.per_s
            ));
        }
        p
    }

    /// Whether this limit counts `effect`.
    pub fn matches(&self, effect: &Effect) -> bool {
        let (kind, target) = match effect {
            Effect::Restart(u) => ("restart", u.as_str()),
            Effect::Reload(u) => ("reload", u.as_str()),
            Effect::Publish(m) => ("publish", m.name.as_str()),
        };
        let Some((k, pattern)) = self.effect.split_once(':') else {
            return false;
        };
        k == kind
            && match pattern.strip_suffix('*') {
                Some(prefix) => target.starts_with(prefix),
                None => target == pattern,
            }
    }

    /// The window in ms.
    pub fn window_ms(&self) -> u64 {
        self.per_s * 1_000
    }
}

/// The first of `limits` that matches `effect`.
pub fn applicable<'a>(limits: &'a [EffectLimit], effect: &Effect) -> Option<&'a EffectLimit> {
    limits.iter().find(|l| l.matches(effect))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(effect: &str) -> EffectLimit {
        EffectLimit {
            effect: effect.to_owned(),
            max: 3,
            per_s: 60,
            scope: LimitScope::Cluster,
            over: Over::Refuse,
        }
    }

    #[test]
    fn patterns_match_kind_and_target() {
        let restart = Effect::Restart("dovecot.service".into());
        assert!(limit("restart:*").matches(&restart));
        assert!(limit("restart:dove*").matches(&restart));
        assert!(limit("restart:dovecot.service").matches(&restart));
        assert!(!limit("reload:*").matches(&restart));
        assert!(!limit("restart:postfix.service").matches(&restart));
        let publish = Effect::Publish(weir_runtime::Message {
            name: "cert-requested".into(),
            payload: Vec::new(),
        });
        assert!(limit("publish:cert-*").matches(&publish));
        let limits = [limit("reload:*"), limit("restart:*")];
        assert_eq!(
            applicable(&limits, &restart).map(|l| l.effect.as_str()),
            Some("restart:*")
        );
    }

    #[test]
    fn problems_name_each_field() {
        let mut bad = limit("stop:x");
        bad.max = 0;
        bad.per_s = MAX_LIMIT_WINDOW_S + 1;
        let p = bad.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(limit("restart:a*b").problems()[0].contains("may only end"));
        assert!(limit("restart:*").problems().is_empty());
    }
}
