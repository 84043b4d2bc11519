//! Logging and metrics: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text
//! (colours only on a terminal) or as one JSON object per line (`[telemetry] log_format =
//! "json"` or `MILLRACE_LOG_FORMAT=json`), each line carrying the trace and span ids of the
//! message it was written for; the host's series ([`metrics`]), served in the Prometheus text
//! format by the admin API (`GET /metrics`); traces ([`trace`]).

pub mod logs;
pub mod metrics;
pub mod series;
pub mod trace;

pub use metrics::metrics;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Whether the environment asks for JSON log lines (`MILLRACE_LOG_FORMAT=json`); `None` when it
/// says nothing.
pub fn json_from_env() -> Option<bool> {
    match std::env::var("MILLRACE_LOG_FORMAT").ok()?.as_str() {
        "json" => Some(true),
        "text" => Some(false),
        _ => None,
    }
}

/// Install the global subscriber once, as JSON lines or text; later calls are no-ops.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.event_format(logs::JsonLines).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
