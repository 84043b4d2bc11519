//! Ingress: where messages enter the host. Each transport turns what it receives into a
//! [`crate::plugin::bindings::types::Message`] for one route and hands it to [`crate::chain`].

pub mod amqp;
pub mod connections;
pub mod http;
pub mod problem;
pub mod tls;
