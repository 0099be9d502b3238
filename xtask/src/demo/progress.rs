//! The demo's output: numbered steps, failed checks (printed where they happen
//! and collected for the summary), the closing summary, and redacted secrets.

/// The demo's progress: the current step and what went wrong so far.
#[derive(Debug, Default)]
pub(super) struct Demo {
    step: u32,
    failures: Vec<String>,
}

impl Demo {
    /// Starts the next step and prints its number and title.
    pub(super) fn step(&mut self, title: &str) {
        // Step 1 (building) ran before the demo started.
        self.step = self.step.max(1) + 1;
        println!("\n{}. {title}", self.step);
    }

    /// Records a failure unless `ok`; returns `ok`.
    pub(super) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) -> bool {
        if !ok {
            let what = what();
            println!("   ✗ {what}");
            self.failures.push(format!("step {}: {what}", self.step));
        }
        ok
    }

    /// Prints the summary; `false` when a check failed.
    pub(super) fn finish(self) -> bool {
        println!();
        if self.failures.is_empty() {
            println!("All steps behaved as expected. The temporary database is deleted now.");
            println!("Next: write your own keygate.toml and run `keygate --config keygate.toml`.");
            true
        } else {
            println!("The demo found {} problem(s):", self.failures.len());
            for failure in &self.failures {
                println!("  - {failure}");
            }
            false
        }
    }
}

/// The first `keep` characters and an ellipsis.
pub(super) fn redact(secret: &str, keep: usize) -> String {
    let head: String = secret.chars().take(keep).collect();
    format!("{head}…")
}
