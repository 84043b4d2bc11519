//! Sinks: where a route's outputs go. The embedded default has one, `reply` (the HTTP
//! response); broker and webhook sinks join here.

pub mod reply;
