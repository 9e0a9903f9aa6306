//! An app's deployed versions and its canary as the daemon arms it: which
//! component the pipeline runs, and the task that watches, reports or
//! shadows ([`crate::canary`]).

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use weir_runtime::kv::KvBackend;
use weir_runtime::{App, DeployError, Runtime};

use crate::canary::guard::{self, Canary};
use crate::canary::shadow::Shadow;
use crate::canary::{CanaryConfig, CanaryMode, CanaryPlan};
use crate::config::AppPlan;
use crate::nats::{EffectRecords, Transport};
use crate::pipeline::{Observer, Swap, SwapSlot};
use crate::stats::{AppStats, CanaryStatus};

/// An app compiled, checked and prepared: its component and, when this
/// node runs its canary, the candidate.
pub(super) struct Deployed {
    pub app: App,
    /// SHA-256 of the component file, hex.
    pub digest: String,
    /// The candidate and its SHA-256, on a node that runs it.
    pub candidate: Option<(App, String)>,
}

impl Deployed {
    /// What a reload compares to tell a changed component: the digest,
    /// and the candidate's after a `+`.
    pub fn digests(&self) -> String {
        digests(
            &self.digest,
            self.candidate.as_ref().map(|(_, c)| c.as_str()),
        )
    }
}

/// A component's digest, and its candidate's after a `+`: what a reload
/// compares ([`Deployed::digests`]).
pub(super) fn digests(stable: &str, candidate: Option<&str>) -> String {
    match candidate {
        Some(c) => format!("{stable}+{c}"),
        None => stable.to_owned(),
    }
}

/// A component's SHA-256, hex.
pub(super) fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Read, compile, check and prepare one app, and its candidate when this
/// node runs it.
pub(super) fn deploy(runtime: &Runtime, app: &AppPlan) -> Result<Deployed, DeployError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| DeployError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let bytes = read(&app.component)?;
    let candidate = match app.canary.as_ref().filter(|c| c.runs_candidate()) {
        Some(canary) => {
            let bytes = read(&canary.config.component)?;
            Some((runtime.deploy(app.spec.clone(), &bytes)?, digest(&bytes)))
        }
        None => None,
    };
    Ok(Deployed {
        app: runtime.deploy(app.spec.clone(), &bytes)?,
        digest: digest(&bytes),
        candidate,
    })
}

/// The record a rollback leaves among the node's effect records (kept
/// [`crate::nats::EFFECT_RECORD_TTL`], 24 h), so a restart does not try
/// the same candidate again: `canary-` and the first 32 hex digits of the
/// SHA-256 of the `[app.canary]` section and both components' digests. A
/// change to any of them is a new trial.
pub(super) fn rollback_record(canary: &CanaryConfig, stable: &str, candidate: &str) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(canary).unwrap_or_default());
    h.update(stable.as_bytes());
    h.update(b"+");
    h.update(candidate.as_bytes());
    let digest = hex::encode(h.finalize());
    format!("canary-{}", digest.get(..32).unwrap_or(&digest))
}

/// Whether this node rolled back `plan`'s live candidate before (a record
/// of [`rollback_record`]). A record that cannot be read counts as none
/// (logged): the candidate gets its trial, its guard rails still watched.
pub(super) async fn rolled_back_before(
    records: &EffectRecords,
    plan: &AppPlan,
    deployed: &Deployed,
) -> bool {
    let (Some(canary), Some((_, candidate))) = (&plan.canary, &deployed.candidate) else {
        return false;
    };
    if canary.config.mode != CanaryMode::Live {
        return false;
    }
    let record = rollback_record(&canary.config, &deployed.digest, candidate);
    match records.contains(&plan.spec.name, &record).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(app = %plan.spec.name, error = %e, "canary: earlier rollbacks not read; the candidate gets its trial");
            false
        }
    }
}

/// What the pipeline of an armed app runs.
pub(super) struct Armed {
    /// The component it starts with (the candidate of a live canary here).
    pub app: App,
    /// The shadow run, on a node that shadows.
    pub observer: Option<Arc<dyn Observer>>,
    /// The task that watches the guard rails, reports this node's window
    /// or runs the shadow candidate (aborted when dropped).
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// Everything [`arm`] needs of one app.
pub(super) struct Arming<'a> {
    pub plan: &'a AppPlan,
    pub node: u32,
    pub deployed: Deployed,
    /// The app's live buckets (the shadow candidate reads them).
    pub live_kv: Option<Arc<dyn KvBackend>>,
    pub stats: Arc<AppStats>,
    pub swaps: Arc<SwapSlot>,
    pub transport: &'a Transport,
    /// Where a rollback is recorded.
    pub records: Option<EffectRecords>,
    /// This node rolled this candidate back before ([`rolled_back_before`]).
    pub rolled_back: bool,
}

/// Arm `a`'s canary, if it has one that concerns this node: a live
/// candidate runs with [`guard::watch`] ready to leave the stable
/// component in the pipeline's swap slot; a reference node runs
/// [`guard::report`]; a shadowing node runs the stable component with a
/// [`Shadow`] observer.
pub(super) fn arm(a: Arming<'_>) -> Armed {
    let Deployed {
        app,
        digest,
        candidate,
    } = a.deployed;
    let stable = Armed {
        app: app.clone(),
        observer: None,
        task: None,
    };
    let Some(CanaryPlan { config, here }) = a.plan.canary.clone() else {
        a.stats.set_canary(None);
        return stable;
    };
    let canary = |candidate: String| Canary {
        app: a.plan.spec.name.clone(),
        node: a.node,
        config: config.clone(),
        record: rollback_record(&config, &digest, &candidate),
        records: a.records.clone(),
        stable: digest.clone(),
        candidate,
        stats: a.stats.clone(),
        transport: a.transport.clone(),
    };
    match (config.mode, here, candidate) {
        (CanaryMode::Live, true, Some((_, candidate_digest))) if a.rolled_back => {
            let record = rollback_record(&config, &digest, &candidate_digest);
            tracing::warn!(app = %a.plan.spec.name, %record, "canary: this candidate was rolled back before; the stable component runs until [app.canary] or a component changes");
            a.stats.set_canary(Some(CanaryStatus {
                reason: Some(format!(
                    "rolled back before (record {record} among the node's effect records, kept 24 h)"
                )),
                ..CanaryStatus::new(
                    config.mode.as_str(),
                    "rolled_back",
                    &candidate_digest,
                    config.window_s,
                )
            }));
            stable
        }
        (CanaryMode::Live, true, Some((candidate, candidate_digest))) => {
            let swaps = a.swaps.clone();
            let back = Swap {
                app,
                filter: a.plan.filter.clone(),
                effects: a.plan.effects.clone(),
                delivery: a.plan.delivery.clone(),
                new_component: true,
                observer: None,
            };
            let rollback = move || swaps.put(back);
            Armed {
                app: candidate,
                observer: None,
                task: Some(tokio::spawn(guard::watch(
                    canary(candidate_digest),
                    rollback,
                ))),
            }
        }
        (CanaryMode::Shadow, true, Some((candidate, candidate_digest))) => {
            a.stats.set_canary(Some(CanaryStatus::new(
                config.mode.as_str(),
                "shadow",
                &candidate_digest,
                config.window_s,
            )));
            let (shadow, task) = Shadow::start(candidate, a.stats.clone(), a.live_kv);
            Armed {
                app,
                observer: Some(shadow),
                task: Some(task),
            }
        }
        (CanaryMode::Live, false, _) => Armed {
            task: Some(tokio::spawn(guard::report(canary(String::new())))),
            ..stable
        },
        _ => {
            a.stats.set_canary(None);
            stable
        }
    }
}
