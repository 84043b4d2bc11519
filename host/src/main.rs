//! The `millrace` command line: parse, set up logging, run the command (`cli::args`).
#![forbid(unsafe_code)]

use clap::Parser;
use millrace_host::{cli, telemetry};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    telemetry::init();
    ExitCode::from(cli::args::dispatch(args) as u8)
}
