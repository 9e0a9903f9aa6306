//! `weir stats --config weir.toml`: a running host's `/stats` as a table,
//! one row per app; `--json` for the raw object, `--watch` to refresh;
//! `--shadow` for the shadow-mode report (what NS8's handler scripts would
//! have been run for beside what weir invoked and the effects it would
//! execute).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::admin::{self, STATS_TIMEOUT};
use crate::exit::{self, Code as _, Failure};

/// `weir stats`.
#[derive(clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    config: crate::ConfigArg,
    /// Print `/stats` as it is (JSON).
    #[arg(long)]
    json: bool,
    /// Shadow-mode report: per app, the deliveries NS8 would have run its
    /// handler script for, weir's invocations, and the effects weir
    /// executed (with `[effects] executor = "log"`: would have executed).
    #[arg(long, conflicts_with = "json")]
    shadow: bool,
    /// Refresh every SECONDS (default 2) until interrupted.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<u64>,
}

/// How one cell is read from an app's object.
type Cell = fn(&Value) -> String;

/// The columns of the table: header and how to read it from one app.
const COLUMNS: [(&str, Cell); 14] = [
    ("APP", |a| text(&a["app"])),
    ("STATE", state),
    ("RECEIVED", |a| text(&a["received"])),
    ("SKIPPED", |a| text(&a["skipped"])),
    ("INVOKED", |a| text(&a["invoked_events"])),
    ("BATCHES", |a| text(&a["batches"])),
    ("DONE/RETRY/REJECT", |a| {
        let o = &a["outcomes"];
        format!(
            "{}/{}/{}",
            text(&o["done"]),
            text(&o["retry"]),
            text(&o["reject"])
        )
    }),
    ("DEAD", |a| text(&a["dead_letters"])),
    ("EFFECTS", |a| text(&a["effects_executed"])),
    ("PENDING", |a| text(&a["effects_pending"])),
    ("TRAPS", |a| {
        let n: u64 = a["traps"]
            .as_object()
            .map(|t| t.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        n.to_string()
    }),
    ("QUARANTINES", |a| text(&a["quarantines"])),
    ("LAG", |a| text(&a["consumer_lag"])),
    ("P99_MS", |a| {
        a["settle_latency_p99_ms"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"))
    }),
];

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn state(app: &Value) -> String {
    match app["state"].as_str() {
        Some("quarantined") => {
            let left_s = app["until_ms"]
                .as_u64()
                .map(|until| until.saturating_sub(now_ms()) / 1_000)
                .unwrap_or(0);
            format!("quarantined ({left_s} s)")
        }
        Some(s) => s.to_owned(),
        None => "-".to_owned(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `columns` of `apps` as left-aligned text columns, a header line first.
fn grid(columns: &[(&str, Cell)], apps: &[Value]) -> String {
    let rows: Vec<Vec<String>> = apps
        .iter()
        .map(|a| columns.iter().map(|(_, f)| f(a)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(columns.iter().map(|(h, _)| (*h).to_owned()).collect());
    out.push('\n');
    for row in rows {
        out += &line(row);
        out.push('\n');
    }
    out
}

/// One line on an app's canary (`/stats`' `canary`), or `None`.
fn canary(a: &Value) -> Option<String> {
    let c = a.get("canary").filter(|c| c.is_object())?;
    let w = &c["window"];
    let counts = |w: &Value| {
        format!(
            "{} events, {} failed, {} rejected, {} effects",
            text(&w["events"]),
            text(&w["failed"]),
            text(&w["rejected"]),
            text(&w["effects"])
        )
    };
    let candidate = text(&c["candidate"]);
    let line = match c["state"].as_str() {
        Some("trial") => {
            let reference = if c["reference"].is_object() {
                format!(
                    "reference ({} nodes): {}",
                    text(&c["reference_nodes"]),
                    counts(&c["reference"])
                )
            } else {
                "no reference yet".to_owned()
            };
            format!(
                "candidate {candidate} on trial; last {} s: {}; {reference}",
                text(&c["window_s"]),
                counts(w)
            )
        }
        Some("rolled_back") => format!(
            "candidate {candidate} ROLLED BACK: {}; the stable component runs until [app.canary] or a component changes",
            text(&c["reason"])
        ),
        Some("reference") => format!(
            "stable component here, reporting its window to the candidate's nodes; last {} s: {}",
            text(&c["window_s"]),
            counts(w)
        ),
        Some("shadow") => format!(
            "candidate {candidate} in shadow: {} of {} events changed, {} failed, {} batches skipped",
            text(&a["shadow_changed_events"]),
            text(&a["shadow_events"]),
            text(&a["shadow_failed_events"]),
            text(&a["shadow_skipped_batches"])
        ),
        _ => return None,
    };
    Some(format!("{}: canary: {line}\n", text(&a["app"])))
}

/// `/stats` as a table: a header line, one line per app, then the last
/// errors of quarantined apps, the apps' canaries and the last reload.
pub fn table(stats: &Value) -> String {
    let apps = stats["apps"].as_array().cloned().unwrap_or_default();
    let mut out = format!("node {}\n", text(&stats["node"]));
    out += &grid(&COLUMNS, &apps);
    for a in &apps {
        if let Some(e) = a["last_error"].as_str() {
            out += &format!("{}: last error: {e}\n", text(&a["app"]));
        }
    }
    for a in &apps {
        out += &canary(a).unwrap_or_default();
    }
    let last = &stats["reload"]["last"];
    if last.is_object() {
        let what = if last["ok"].as_bool() == Some(true) {
            "applied".to_owned()
        } else {
            format!("refused: {}", text(&last["problems"]))
        };
        out += &format!("last reload {what}\n");
    }
    out
}

/// NS8's handler runs for an app: one per distinct event delivered (NS8
/// runs an app's handler script once for every event of a name it has a
/// handler for), so weir's own redeliveries (`redelivered`: naks, ack
/// waits after a fault) are not counted.
fn ns8_runs(a: &Value) -> u64 {
    let received = a["received"].as_u64().unwrap_or(0);
    received.saturating_sub(a["redelivered"].as_u64().unwrap_or(0))
}

/// The shadow report's columns: NS8's handler runs ([`ns8_runs`]), weir's
/// invocations and events, and the effects.
const SHADOW_COLUMNS: [(&str, Cell); 7] = [
    ("APP", |a| text(&a["app"])),
    ("NS8 RUNS", |a| ns8_runs(a).to_string()),
    ("WEIR INVOCATIONS", |a| text(&a["batches"])),
    ("EVENTS INVOKED", |a| text(&a["invoked_events"])),
    ("SKIPPED", |a| text(&a["skipped"])),
    ("EFFECTS", |a| {
        let pending = a["effects_pending"].as_u64().unwrap_or(0);
        let done = text(&a["effects_executed"]);
        if pending > 0 {
            format!("{done} (+{pending} pending)")
        } else {
            done
        }
    }),
    ("WHICH", |a| {
        let list: Vec<String> = a["effects"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k} x{}", text(v))).collect())
            .unwrap_or_default();
        if list.is_empty() {
            "-".to_owned()
        } else {
            list.join(", ")
        }
    }),
];

/// The shadow-mode report of `/stats`: one row per app and a summary;
/// `dry_run` (`executor = "log"`) says the effects were only logged.
pub fn shadow(stats: &Value, dry_run: bool) -> String {
    let apps = stats["apps"].as_array().cloned().unwrap_or_default();
    let sum = |k: &str| -> u64 { apps.iter().filter_map(|a| a[k].as_u64()).sum() };
    let (runs, invocations, effects) = (
        apps.iter().map(ns8_runs).sum::<u64>(),
        sum("batches"),
        sum("effects_executed"),
    );
    let mode = if dry_run {
        "executor = \"log\": effects are logged, none executed"
    } else {
        "executor = \"command\": effects are executed"
    };
    let mut out = format!("shadow report, node {} ({mode})\n", text(&stats["node"]));
    out += &grid(&SHADOW_COLUMNS, &apps);
    let ratio = if invocations > 0 {
        format!("{:.1}x fewer", runs as f64 / invocations as f64)
    } else {
        "none".to_owned()
    };
    let verb = if dry_run {
        "would have executed"
    } else {
        "executed"
    };
    out += &format!(
        "NS8 would have run {runs} handler processes; weir ran {invocations} sandboxes ({ratio}) and {verb} {effects} effects\n"
    );
    out
}

/// Print once, or every `--watch` seconds until interrupted; 69 if no host
/// answers.
pub fn run(args: StatsArgs) -> Result<ExitCode, Failure> {
    let addr = admin::host_addr(&args.config)?;
    let dry_run = weir_host::config::Config::read(&args.config.path())
        .is_ok_and(|c| matches!(c.effects.executor, weir_host::effects::Executor::Log));
    loop {
        let (status, body) = admin::request(addr, "GET", "/stats", None, STATS_TIMEOUT)?;
        if status != 200 {
            return Err(anyhow::anyhow!("/stats answered HTTP {status}: {body}"))
                .code(exit::UNAVAILABLE);
        }
        if args.json {
            println!("{}", body.trim());
        } else {
            let stats: Value = serde_json::from_str(&body)
                .map_err(|e| anyhow::anyhow!("/stats is not JSON: {e}"))
                .code(exit::UNAVAILABLE)?;
            if args.watch.is_some() {
                // Clear the screen and go home, as watch(1) does.
                print!("\x1b[2J\x1b[H");
            }
            if args.shadow {
                print!("{}", shadow(&stats, dry_run));
            } else {
                print!("{}", table(&stats));
            }
        }
        let Some(every) = args.watch else {
            return Ok(ExitCode::SUCCESS);
        };
        std::thread::sleep(Duration::from_secs(every.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_app_with_state_and_last_error() {
        let stats = serde_json::json!({
            "node": 1,
            "apps": [
                {"app": "mail", "state": "running", "received": 10, "skipped": 4,
                 "invoked_events": 6, "batches": 2, "outcomes": {"done": 6, "retry": 0, "reject": 0},
                 "dead_letters": 0, "effects_executed": 1, "traps": {}, "quarantines": 0,
                 "consumer_lag": 0, "settle_latency_p99_ms": 21.04},
                {"app": "bad", "state": "quarantined", "until_ms": 0, "last_error": "trap: unreachable",
                 "received": 5, "skipped": 0, "invoked_events": 5, "batches": 5,
                 "outcomes": {"done": 0, "retry": 0, "reject": 0}, "dead_letters": 0,
                 "effects_executed": 0, "traps": {"trap": 5}, "quarantines": 1,
                 "consumer_lag": 3, "settle_latency_p99_ms": 0.0}
            ],
            "reload": {"applied": 0, "refused": 1, "last": {"ok": false, "problems": ["x"]}}
        });
        let t = table(&stats);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "node 1");
        assert!(lines[1].starts_with("APP   STATE"), "{t}");
        assert!(lines[2].starts_with("mail  running"), "{t}");
        assert!(lines[2].ends_with("21.0"), "{t}");
        assert!(lines[3].starts_with("bad   quarantined (0 s)"), "{t}");
        assert!(lines[3].contains(" 5  "), "traps summed: {t}");
        assert_eq!(lines[4], "bad: last error: trap: unreachable");
        assert_eq!(lines[5], "last reload refused: [\"x\"]");
    }

    #[test]
    fn canaries_get_a_line_each_by_state() {
        let w = serde_json::json!({"events": 40, "failed": 12, "rejected": 0, "effects": 3});
        let stats = serde_json::json!({
            "node": 3,
            "apps": [
                {"app": "a", "canary": {"state": "trial", "candidate": "abc", "window_s": 60,
                 "window": w, "reference": w, "reference_nodes": 2}},
                {"app": "b", "canary": {"state": "rolled_back", "candidate": "def",
                 "reason": "12 of 40 events failed"}},
                {"app": "c", "canary": {"state": "shadow", "candidate": "123"},
                 "shadow_changed_events": 5, "shadow_events": 50, "shadow_failed_events": 4,
                 "shadow_skipped_batches": 0},
                {"app": "d"}
            ]
        });
        let t = table(&stats);
        assert!(
            t.contains("a: canary: candidate abc on trial; last 60 s: 40 events, 12 failed, 0 rejected, 3 effects; reference (2 nodes): 40 events"),
            "{t}"
        );
        assert!(
            t.contains("b: canary: candidate def ROLLED BACK: 12 of 40 events failed;"),
            "{t}"
        );
        assert!(
            t.contains("c: canary: candidate 123 in shadow: 5 of 50 events changed, 4 failed, 0 batches skipped"),
            "{t}"
        );
        assert!(!t.contains("d: canary"), "{t}");
    }

    #[test]
    fn shadow_puts_ns8_runs_beside_weir_invocations_and_effects() {
        let stats = serde_json::json!({
            "node": 4,
            "apps": [
                {"app": "mail1", "received": 25, "batches": 1, "invoked_events": 1, "skipped": 24,
                 "effects_executed": 2, "effects_pending": 0,
                 "effects": {"restart:dovecot.service": 1, "restart:postfix.service": 1}},
                {"app": "mail2", "received": 28, "redelivered": 3, "batches": 0, "invoked_events": 0, "skipped": 25,
                 "effects_executed": 0, "effects_pending": 1, "effects": {}}
            ]
        });
        let t = shadow(&stats, true);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].contains("node 4") && lines[0].contains("none executed"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("APP    NS8 RUNS  WEIR INVOCATIONS"),
            "{t}"
        );
        assert!(lines[2].starts_with("mail1  25        1"), "{t}");
        assert!(
            lines[2].ends_with("restart:dovecot.service x1, restart:postfix.service x1"),
            "{t}"
        );
        // mail2 had 3 redeliveries (a fault, a nak): NS8 runs once per event.
        assert!(lines[3].starts_with("mail2  25        0"), "{t}");
        assert!(
            lines[3].contains("0 (+1 pending)") && lines[3].ends_with('-'),
            "{t}"
        );
        assert_eq!(
            lines[4],
            "NS8 would have run 50 handler processes; weir ran 1 sandboxes (50.0x fewer) and would have executed 2 effects"
        );
    }
}
