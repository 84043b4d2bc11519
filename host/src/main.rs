//! The `millrace` command line: parse, set up logging, run the command (`cli::args`).
#![forbid(unsafe_code)]

use clap::Parser;
use millrace_host::{cli, telemetry};
use std::process::ExitCode;

/// mimalloc rather than the C library's allocator: a message's way through the host is many
/// small allocations freed on other threads, where glibc's malloc spent about a fifth of the
/// host's CPU (docs/performance.md, MQTT route throughput).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    // `run` sets up logging once its configuration is read (`[telemetry] log_format`).
    if !args.runs_host() {
        telemetry::init(telemetry::json_from_env().unwrap_or(false));
    }
    ExitCode::from(cli::args::dispatch(args) as u8)
}
