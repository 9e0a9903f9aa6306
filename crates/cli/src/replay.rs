//! `weir replay --app NAME --component NEW.wasm`: what a new version of an
//! app's handler would have done on the events the stream holds, beside the
//! version it runs now, effects intercepted ([`weir_host::replay`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use weir_host::config::Config;
use weir_host::nats::{Subjects, Transport};
use weir_host::replay::compare::VersionTally;
use weir_host::replay::{self, Options, Range, Report, Versions};

use crate::ConfigArg;
use crate::exit::{self, Code as _, Failure};

/// Effects named per changed event and side; more are counted: 6.
pub const MAX_LISTED_EFFECTS: usize = 6;

/// Longest `weir replay` waits for a NATS server before giving up: 10 s.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// `weir replay`.
#[derive(clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The app (an `[[app]]` of the config): its rules, node, domains,
    /// limits and kv grants, and its component as the stable version.
    #[arg(long)]
    app: String,
    /// The candidate component (`.wasm`) to compare with the app's.
    #[arg(long, value_name = "NEW.wasm")]
    component: PathBuf,
    /// Only events published in the last this long (`24h`, `30m`, `7d`).
    /// Default: everything the stream holds.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["from_seq", "to_seq"])]
    since: Option<Duration>,
    /// First stream sequence to replay.
    #[arg(long, value_name = "N")]
    from_seq: Option<u64>,
    /// Last stream sequence to replay (default: the last stored).
    #[arg(long, value_name = "M")]
    to_seq: Option<u64>,
    /// Deliveries per batch (default: the app's `max_batch`); 1 replays
    /// each event alone, so a changed event is one whose own decision
    /// differs.
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Changed events to list (all are counted).
    #[arg(long, default_value_t = replay::DEFAULT_CHANGE_LIMIT)]
    limit: usize,
    /// Print the report as one JSON object on the last line of standard
    /// output (the human summary goes to standard error).
    #[arg(long)]
    json: bool,
}

/// Exit 0 when no event changed, [`exit::CHANGED`] when some did, 64 for a
/// bad range, 65 for a component that cannot be deployed, 69 when NATS or
/// the stream cannot be read, 78 for the configuration.
pub fn run(args: ReplayArgs) -> Result<ExitCode, Failure> {
    let range = match (args.since, args.from_seq, args.to_seq) {
        (Some(ago), _, _) => Range::Since(ago),
        (None, None, None) => Range::All,
        (None, from, to) => {
            if let (Some(f), Some(t)) = (from, to)
                && f > t
            {
                return Err(anyhow::anyhow!("--from-seq {f} is after --to-seq {t}"))
                    .code(exit::USAGE);
            }
            Range::Sequences {
                from: from.unwrap_or(0),
                to,
            }
        }
    };
    if args.batch == Some(0) {
        return Err(anyhow::anyhow!("--batch must be greater than 0")).code(exit::USAGE);
    }
    let path = args.config.path();
    let plan = Config::read(&path)
        .code(exit::CONFIG)?
        .plan()
        .map_err(|problems| anyhow::anyhow!("{}: {}", path.display(), problems.join("; ")))
        .code(exit::CONFIG)?;
    let Some(app) = plan.apps.iter().find(|a| a.spec.name == args.app) else {
        let names: Vec<&str> = plan.apps.iter().map(|a| a.spec.name.as_str()).collect();
        return Err(anyhow::anyhow!(
            "{} has no app {:?} (its apps: {names:?})",
            path.display(),
            args.app
        ))
        .code(exit::USAGE);
    };
    let nats = &plan.config.nats;
    let Some(servers) = nats.client_servers() else {
        return Err(anyhow::anyhow!(
            "{}: the embedded server's port is chosen at start (embedded_port = 0): set [nats] url",
            path.display()
        ))
        .code(exit::CONFIG);
    };
    let subjects = Subjects::new(&nats.prefix).code(exit::CONFIG)?;
    let auth = nats.auth("_INBOX".to_owned()).code(exit::CONFIG)?;

    let runtime = crate::one_app_runtime()?;
    let deploy = |file: &std::path::Path| {
        runtime
            .deploy_file(app.spec.clone(), file)
            .with_context(|| format!("{}", file.display()))
            .code(exit::DATA)
    };
    let versions = Versions {
        stable: deploy(&app.component)?,
        candidate: deploy(&args.component)?,
    };
    let options = Options {
        range,
        batch: args.batch,
        limit: args.limit,
        ..Options::default()
    };
    crate::tokio_runtime()?.block_on(async {
        let transport =
            Transport::connect_with(&servers, "weir-replay", subjects, &nats.stream, auth)
                .await
                .code(exit::UNAVAILABLE)?;
        if tokio::time::timeout(CONNECT_WAIT, transport.wait_connected())
            .await
            .is_err()
        {
            return Err(anyhow::anyhow!(
                "no NATS server answered at {} within {} s",
                servers.join(","),
                CONNECT_WAIT.as_secs()
            ))
            .code(exit::UNAVAILABLE);
        }
        let grant = versions.stable.kv_grant().clone();
        if grant.any() {
            let live = weir_host::nats::buckets::open_existing(&transport, &args.app, &grant)
                .await
                .code(exit::UNAVAILABLE)?;
            replay::attach_overlays(&versions, Some(Arc::new(live)));
        }
        let report = replay::replay(&transport, &app.filter, &versions, &options, |p| {
            eprintln!(
                "replay: {} of {} sequences read ({}%), {} events through both versions",
                p.read,
                p.range,
                p.read * 100 / p.range.max(1),
                p.events
            );
        })
        .await
        .with_context(|| format!("reading stream {}", nats.stream))
        .code(exit::UNAVAILABLE)?;
        let summary = summary(&args, &app.component, &report);
        if args.json {
            eprint!("{summary}");
            println!("{}", serde_json::to_string(&report).code(exit::SOFTWARE)?);
        } else {
            print!("{summary}");
        }
        Ok(if report.changed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(exit::CHANGED)
        })
    })
}

/// The human report: what was read, both versions side by side, the
/// changed events.
fn summary(args: &ReplayArgs, stable: &std::path::Path, r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "replay of app {} : {} (stable) vs {} (candidate)",
        args.app,
        stable.display(),
        args.component.display()
    );
    if r.from > r.to {
        let _ = writeln!(
            s,
            "  nothing to replay: the stream holds sequences {}..={}",
            r.stream_first, r.stream_last
        );
    } else {
        let _ = writeln!(
            s,
            "  sequences {}..={} of the stream's {}..={}",
            r.from, r.to, r.stream_first, r.stream_last
        );
    }
    if r.missing > 0 {
        let _ = writeln!(
            s,
            "  not replayed: {} sequences of the range the stream no longer holds (removed by its age or size limits)",
            r.missing
        );
    }
    if r.since_before_oldest {
        let _ = writeln!(
            s,
            "  not replayed: the range begins before the stream's oldest event (seq {}); earlier ones were removed",
            r.stream_first
        );
    }
    let _ = writeln!(
        s,
        "  read {}: {} other apps' events, {} undecodable (a host dead-letters them), {} skipped by the app's rules; {} gaps",
        r.read, r.other_events, r.undecodable, r.skipped, r.gaps
    );
    let rate = if r.elapsed_ms > 0 {
        r.events as f64 * 1000.0 / r.elapsed_ms as f64
    } else {
        0.0
    };
    let _ = writeln!(
        s,
        "  {} events in {} batches of up to {} deliveries (as a live host fetches them with linger off), through both versions in {:.1} s ({:.0} events/s)",
        r.events,
        r.batches,
        r.batch,
        r.elapsed_ms as f64 / 1000.0,
        rate
    );
    let _ = writeln!(
        s,
        "  effects intercepted: none executed, acknowledged or published; kv reads the live buckets, writes stay here"
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "  {:<36} {:>14} {:>14}", "", "stable", "candidate");
    // A decision or effect row that differs is marked `*`.
    let row = |s: &mut String, name: &str, a: String, b: String| {
        let mark = if a == b { "" } else { "  *" };
        let _ = writeln!(s, "  {name:<36} {a:>14} {b:>14}{mark}");
    };
    let figure = |s: &mut String, name: &str, a: String, b: String| {
        let _ = writeln!(s, "  {name:<36} {a:>14} {b:>14}");
    };
    for outcome in ["done", "retry", "reject", "failed"] {
        let get = |t: &VersionTally| t.outcomes.get(outcome).copied().unwrap_or(0).to_string();
        row(&mut s, outcome, get(&r.stable), get(&r.candidate));
    }
    let mut kinds: Vec<&String> = r
        .stable
        .traps
        .keys()
        .chain(r.candidate.traps.keys())
        .collect();
    kinds.sort();
    kinds.dedup();
    row(
        &mut s,
        "failed invocations",
        r.stable.trap_count().to_string(),
        r.candidate.trap_count().to_string(),
    );
    for kind in kinds {
        let get = |t: &VersionTally| t.traps.get(kind).copied().unwrap_or(0).to_string();
        row(
            &mut s,
            &format!("  {kind}"),
            get(&r.stable),
            get(&r.candidate),
        );
    }
    let mut effects: Vec<&String> = r
        .stable
        .effects
        .keys()
        .chain(r.candidate.effects.keys())
        .collect();
    effects.sort();
    effects.dedup();
    for effect in effects {
        let get = |t: &VersionTally| t.effects.get(effect).copied().unwrap_or(0).to_string();
        row(&mut s, effect, get(&r.stable), get(&r.candidate));
    }
    let per_batch = |t: &VersionTally, v: u64| v.checked_div(t.invocations).unwrap_or(0);
    figure(
        &mut s,
        "fuel per invocation (mean)",
        per_batch(&r.stable, r.stable.fuel).to_string(),
        per_batch(&r.candidate, r.candidate.fuel).to_string(),
    );
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    figure(
        &mut s,
        "time per invocation (mean)",
        ms(per_batch(&r.stable, r.stable.time_us)),
        ms(per_batch(&r.candidate, r.candidate.time_us)),
    );
    figure(
        &mut s,
        "slowest invocation",
        ms(r.stable.time_max_us),
        ms(r.candidate.time_max_us),
    );
    let _ = writeln!(s);
    if r.changed == 0 {
        let _ = writeln!(s, "changed: none of {} events", r.events);
        return s;
    }
    let _ = writeln!(
        s,
        "changed: {} of {} events{}",
        r.changed,
        r.events,
        if (r.changes.len() as u64) < r.changed {
            format!(" (the first {}; --limit for more)", r.changes.len())
        } else {
            String::new()
        }
    );
    for c in &r.changes {
        let _ = writeln!(s, "  seq {}  id {}  {}", c.sequence, c.id, c.subject);
        let _ = write!(s, "    {} -> {}", c.stable, c.candidate);
        let (gone, new) = (
            difference(&c.stable_effects, &c.candidate_effects),
            difference(&c.candidate_effects, &c.stable_effects),
        );
        if !gone.is_empty() || !new.is_empty() {
            let _ = write!(s, "; batch effects");
            if !gone.is_empty() {
                let _ = write!(s, " without {}", listed(&gone));
            }
            if !new.is_empty() {
                let _ = write!(s, " with {}", listed(&new));
            }
        } else if c.stable == c.candidate {
            let _ = write!(s, "; a published event's payload differs");
        }
        let _ = writeln!(s);
    }
    s
}

/// `a` without `b`, as multisets, in `a`'s order.
fn difference(a: &[String], b: &[String]) -> Vec<String> {
    let mut left: Vec<&String> = b.iter().collect();
    a.iter()
        .filter(|e| match left.iter().position(|l| l == e) {
            Some(i) => {
                left.swap_remove(i);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}

/// `[a, b, c]`, at most [`MAX_LISTED_EFFECTS`] named (`… and N more`).
fn listed(effects: &[String]) -> String {
    let shown = effects.len().min(MAX_LISTED_EFFECTS);
    let more = effects.len() - shown;
    let mut text = effects[..shown].join(", ");
    if more > 0 {
        text.push_str(&format!(" … and {more} more"));
    }
    format!("[{text}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn effects_gained_and_lost_are_multiset_differences() {
        let a = strings(&["restart:a", "restart:a", "restart:b"]);
        let b = strings(&["restart:a", "restart:c"]);
        assert_eq!(difference(&a, &b), strings(&["restart:a", "restart:b"]));
        assert_eq!(difference(&b, &a), strings(&["restart:c"]));
        assert!(difference(&a, &a).is_empty());
    }

    #[test]
    fn long_effect_lists_are_cut_and_counted() {
        let many: Vec<String> = (0..MAX_LISTED_EFFECTS + 3)
            .map(|i| format!("e{i}"))
            .collect();
        let text = listed(&many);
        assert!(text.ends_with(" … and 3 more]"), "{text}");
        assert!(!text.contains(&format!("e{MAX_LISTED_EFFECTS}")), "{text}");
        assert_eq!(listed(&many[..2]), "[e0, e1]");
    }
}
