//! `keygate-admin`: the operator's CLI for migrations, accounts, API keys and usage.
//!
//! Thin by design: it parses arguments, opens the store, calls `keygate-store` and
//! `keygate-keys`, and prints. Every failure is one line on stderr and a non-zero
//! exit; `--json` prints exactly one JSON document on stdout.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a CLI talks on stdout and stderr"
)]

mod cli;
mod commands;
mod output;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return cli::report_usage_error(err),
    };
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
