//! Integration tests: the real `millrace` binary, real HTTP, real components built from source
//! by `scripts/build-plugins` (plugins in `target/plugins/`, test guests in
//! `target/test-guests/`). One test binary, one module per area.

mod admin_auth;
mod amqp;
mod amqp_faults;
mod amqp_order;
mod amqp_tls;
mod authoring;
mod cli;
mod cluster;
mod config_errors;
mod console;
mod events;
mod examples;
mod fuzz;
mod harness;
mod hostile;
mod hot_reload;
mod hot_reload_amqp;
mod http;
mod ingress_abuse;
mod instances;
mod limits;
mod metrics;
mod mqtt;
mod mqtt_faults;
mod mqtt_flows;
mod mqtt_tls;
mod ports;
mod replay;
mod signing;
mod sparkplug;
mod state;
mod tls;
mod traces;
mod wasi;
