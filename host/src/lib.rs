//! millrace host: messages enter through an ingress (`ingress/`), are matched to a route of a
//! plant (`route`), pass the route's chain of Wasm plugins (`chain`, `plugin/`), and leave to a
//! sink (`sink/`) or the dead-letter store (`deadletter`). `config` reads the TOML, `lookup`
//! the plants' reference tables, `state` keeps the plants' durable key-value state, `mediator`
//! wires it all and runs it; `admission` gives each plant its share of the mediation slots.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod broker;
pub mod chain;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod deadletter;
pub mod deploy;
pub mod durable;
pub mod fuzz;
pub mod idempotency;
pub mod ingress;
pub mod lookup;
pub mod mediator;
pub mod outbox;
pub mod plugin;
pub mod quarantine;
pub mod registry;
pub mod route;
pub mod sink;
pub mod state;
pub mod telemetry;
