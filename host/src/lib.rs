//! millrace host: messages enter through an ingress (`ingress/`), are matched to a route of a
//! plant (`route`), pass the route's chain of Wasm plugins (`chain`, `plugin/`), and leave to a
//! sink (`sink/`) or the dead-letter store (`deadletter`). `config` reads the TOML, `lookup`
//! the plants' reference tables, `state` keeps the plants' durable key-value state, `mediator`
//! wires it all and runs it; `admission` gives each plant its share of the mediation slots.
#![forbid(unsafe_code)]

pub mod admission;
pub mod amqp;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod control;
pub mod deadletter;
pub mod durable;
pub mod fuzz;
pub mod http;
pub mod idempotency;
pub mod lookup;
pub mod mqtt;
pub mod outbox;
pub mod pipeline;
pub mod plugin;
pub mod quarantine;
pub mod route;
pub mod start;
pub mod state;
pub mod telemetry;
