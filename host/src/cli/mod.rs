//! The `millrace` commands other than `run`, one file per command group. Each returns the
//! process exit code; output goes to stdout, errors to stderr.

pub mod admin;
pub mod args;
pub mod author;
pub mod check;
pub mod dlq;
pub mod plugin;
pub mod run;
pub mod trace;

pub use admin::{ADMIN_CA_ENV, ADMIN_TOKEN_ENV, admin_call, admin_token, deploy};
pub use check::check;
pub use dlq::{dlq_list, dlq_replay};
pub use plugin::{TestRun, bundle, inspect, keygen, sign, test, vectors, verify};
