//! HTTP, both halves: the message listener (`source`: `POST /v1/routes/{route}/messages`), its
//! connection bounds, TLS and body reading (shared with the admin API), RFC 9457 problems, and the two HTTP
//! sinks: the answer to the caller (`reply`) and a webhook (`webhook`).

pub mod body;
pub mod connections;
pub mod problem;
pub mod reply;
pub mod source;
pub mod tls;
pub mod webhook;
