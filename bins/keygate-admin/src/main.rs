//! `keygate-admin`: the operator's CLI for migrations, accounts, API keys and usage.
//!
//! Thin by design: it parses arguments (with `--config`, the gateway's file for the
//! database and key prefix), opens the store, calls `keygate-store` and
//! `keygate-keys`, and prints. Every failure is one line on stderr and a non-zero
//! exit; `--json` prints exactly one JSON document on stdout.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI talks on stdout and stderr"
)]

mod cli;
mod commands;
mod config;
mod control;
mod output;

use std::io::Write as _;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let (mut cli, matches) = match cli::parse() {
        Ok(parsed) => parsed,
        Err(err) => return cli::report_usage_error(err),
    };
    if let Err(err) = config::apply(&mut cli, &matches) {
        // Like a usage error: nothing ran.
        let line = one_line(&format!("{err:#}"));
        let _ = writeln!(std::io::stderr(), "keygate-admin: {line}");
        return ExitCode::from(2);
    }
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let line = one_line(&format!("{err:#}"));
            let _ = writeln!(std::io::stderr(), "keygate-admin: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Folds a message onto one line so each failure is exactly one line on stderr.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
