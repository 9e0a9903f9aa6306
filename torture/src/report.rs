//! The result table: one row per measured figure and its bar.

use std::fmt::Write as _;

/// One check.
struct Row {
    test: String,
    injected: String,
    figure: String,
    bar: String,
    pass: Option<bool>,
}

/// Every check of a run, in order.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// Record a check; also printed at once (progress on long runs).
    pub fn check(
        &mut self,
        test: &str,
        injected: &str,
        figure: impl Into<String>,
        bar: &str,
        pass: bool,
    ) {
        let figure = figure.into();
        eprintln!(
            "   [{}] {test}: {figure} (bar {bar})",
            if pass { "pass" } else { "FAIL" }
        );
        self.rows.push(Row {
            test: test.into(),
            injected: injected.into(),
            figure,
            bar: bar.into(),
            pass: Some(pass),
        });
    }

    /// Record the ledger's verdict on a fault scenario whose faults must
    /// dead-letter nothing (default `max_deliver`): `<name>: lost` (with
    /// whether and when the drain ended), `<name>: unexpected` and `<name>:
    /// dead letters from faults`, each with bar 0.
    pub fn ledger_verdict(
        &mut self,
        name: &str,
        injected: &str,
        v: &weir_test_support::ledger::Verdict,
        dead: &std::collections::HashMap<String, String>,
        drained: bool,
        settle: std::time::Duration,
    ) {
        self.check(
            &format!("{name}: lost"),
            injected,
            format!(
                "{} of {} acknowledged (drained in {:.1} s: {drained})",
                v.lost,
                v.acked,
                settle.as_secs_f64()
            ),
            "0",
            v.lost == 0 && drained,
        );
        self.check(
            &format!("{name}: unexpected"),
            injected,
            v.unexpected.to_string(),
            "0",
            v.unexpected == 0,
        );
        self.check(
            &format!("{name}: dead letters from faults"),
            injected,
            format!(
                "{} ({:?})",
                v.dead_lettered,
                weir_test_support::ledger::reasons(dead)
            ),
            "0 (default max_deliver 5)",
            v.dead_lettered == 0 && dead.is_empty(),
        );
    }

    /// Record the duplicate-deliveries check of a fault scenario: deliveries
    /// beyond one per event, at most `faults` × `in_flight` (each fault can
    /// cost the events in flight one delivery).
    pub fn duplicate_deliveries(
        &mut self,
        test: &str,
        injected: &str,
        deliveries: u64,
        events: usize,
        faults: u64,
        in_flight: u64,
    ) {
        let duplicates = deliveries.saturating_sub(events as u64);
        let bound = faults * in_flight;
        self.check(
            test,
            injected,
            format!("{duplicates} ({deliveries} deliveries of {events} events)"),
            &format!("≤ faults × in-flight window = {bound}"),
            duplicates <= bound,
        );
    }

    /// Record an informative figure with no bar.
    pub fn note(&mut self, test: &str, injected: &str, figure: impl Into<String>) {
        self.rows.push(Row {
            test: test.into(),
            injected: injected.into(),
            figure: figure.into(),
            bar: "–".into(),
            pass: None,
        });
    }

    /// A scenario not run (its time budget was spent): a failure, since a
    /// bar nobody measured is not met.
    pub fn skipped(&mut self, scenario: &str, why: &str) {
        self.check(scenario, "–", format!("not run: {why}"), "runs", false);
    }

    /// A scenario that could not run: a failure.
    pub fn failed_to_run(&mut self, scenario: &str, error: &str) {
        self.check(scenario, "–", format!("error: {error}"), "runs", false);
    }

    /// Checks recorded.
    pub fn len(&self) -> usize {
        self.rows.iter().filter(|r| r.pass.is_some()).count()
    }

    /// Checks that missed their bar.
    pub fn failures(&self) -> usize {
        self.rows.iter().filter(|r| r.pass == Some(false)).count()
    }

    /// The table in Markdown.
    pub fn markdown(&self) -> String {
        let mut out =
            String::from("| test | injected | measured | bar | verdict |\n|---|---|---|---|---|\n");
        for r in &self.rows {
            let verdict = match r.pass {
                Some(true) => "pass",
                Some(false) => "**FAIL**",
                None => "–",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {verdict} |",
                r.test, r.injected, r.figure, r.bar
            );
        }
        out
    }
}
