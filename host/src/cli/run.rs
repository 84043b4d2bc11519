//! `millrace run`: the host, until SIGTERM/SIGINT.

use crate::config::Config;
use crate::start;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `millrace run`: load `config` and serve it; the exit code.
pub fn run(
    config: PathBuf,
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    insecure_admin: bool,
) -> i32 {
    let config = match Config::load(&config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    crate::telemetry::init(crate::telemetry::json_from_env().unwrap_or(config.telemetry.log_json));
    crate::telemetry::trace::configure(&config.telemetry.otel);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(start::run(config, http, admin, insecure_admin)) {
        Ok(()) => 0,
        Err(e @ start::StartError::Config(_)) => {
            eprintln!("{e}");
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
