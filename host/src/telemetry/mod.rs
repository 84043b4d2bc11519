//! Logging and metrics: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), colours
//! only on a terminal; the host's series ([`metrics`]), served in the Prometheus text format by
//! the admin API (`GET /metrics`).

pub mod metrics;
pub mod trace;

pub use metrics::metrics;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber once; later calls are no-ops.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
