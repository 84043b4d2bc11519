//! millrace host: messages enter through a transport's source (`http/`, `amqp/`, `mqtt/`), are
//! matched to a route of a plant (`route`), run through the route's chain of Wasm plugins in
//! the pipeline (`pipeline/`, `plugin/`) and leave to the route's sink (a transport's other
//! half) or the dead-letter store (`deadletter`). `control/` changes a running host (admin API,
//! plugin versions, reloads); `config` reads the TOML, `lookup` the plants' reference tables,
//! `state` keeps the plants' durable key-value state, `outbox` holds outputs for a broker that is
//! away, `admission` gives each plant its share of the mediation slots, and `start` builds it
//! all from a configuration and runs it.
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
pub mod ids;
pub mod lineage;
pub mod lookup;
pub mod mqtt;
pub mod outbox;
pub mod percent;
pub mod pipeline;
pub mod plugin;
pub mod quarantine;
pub mod route;
pub mod start;
pub mod state;
pub mod telemetry;
