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
    if args.reads_a_broker() {
        with_thread_stacks();
    }
    // `run` sets up logging once its configuration is read (`[telemetry] log_format`).
    if !args.runs_host() {
        telemetry::init(telemetry::json_from_env().unwrap_or(false));
    }
    ExitCode::from(cli::args::dispatch(args) as u8)
}

/// Run this command again (the same process, `exec`) with `RUST_MIN_STACK` at
/// [`millrace_host::amqp::THREAD_STACK_BYTES`] unless it is that much already: the stack every
/// thread gets that is started without a size of its own, the broker client's I/O thread
/// among them, which is set only by that variable and read once. If the command cannot be run
/// again, it goes on as it is, and says so.
fn with_thread_stacks() {
    use std::os::unix::process::CommandExt;
    let wanted = millrace_host::amqp::THREAD_STACK_BYTES;
    let set = std::env::var("RUST_MIN_STACK")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if set.is_some_and(|n| n >= wanted) {
        return;
    }
    let mut args = std::env::args_os();
    let Ok(exe) = std::env::current_exe() else {
        eprintln!(
            "warning: cannot find this program to give its threads larger stacks; going on with the default"
        );
        return;
    };
    let mut again = std::process::Command::new(exe);
    if let Some(name) = args.next() {
        again.arg0(name);
    }
    let failed = again
        .args(args)
        .env("RUST_MIN_STACK", wanted.to_string())
        .exec();
    eprintln!(
        "warning: cannot run again with larger thread stacks ({failed}); going on with the default"
    );
}
