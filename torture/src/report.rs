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

    /// A scenario not run.
    pub fn skipped(&mut self, scenario: &str, why: &str) {
        eprintln!("   [skip] {scenario}: {why}");
        self.note(scenario, "–", format!("skipped: {why}"));
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
