//! Project automation: `cargo xtask tidy` (also run as a test),
//! `cargo xtask demo [--requests N]` and
//! `cargo xtask bench [--quick] [--pin] [--no-write] [--upstream mock|nginx]
//! [--observability] [--callgrind]`; automation stays in Rust.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "xtask reports on the terminal"
)]

mod admin_cli;
mod bench;
mod bench_callgrind;
mod bench_doc;
mod bench_load;
mod bench_memory;
mod bench_nginx;
mod bench_report;
mod bench_serve;
mod bench_setup;
mod demo;
mod tidy;
mod tidy_modules;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tidy") => match tidy::check(&workspace_root()) {
            Ok(()) => {
                println!("tidy: ok");
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for problem in problems {
                    eprintln!("tidy: {problem}");
                }
                ExitCode::FAILURE
            }
        },
        Some("demo") => {
            let result = demo::Options::parse(&args[1..])
                .and_then(|options| demo::run(&workspace_root(), &options));
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("bench") => match bench::main(&workspace_root(), &args[1..]) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: cargo xtask tidy | cargo xtask demo [--requests N] | cargo xtask bench [--quick] [--pin] [--no-write] [--upstream mock|nginx] [--observability] [--callgrind]"
            );
            ExitCode::from(2)
        }
    }
}

fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), PathBuf::from)
}
