//! Sinks: where a route's outputs go: `reply` (the HTTP response) and `http` (a webhook);
//! the broker sink joins here.

pub mod http;
pub mod reply;
