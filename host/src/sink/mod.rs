//! Sinks: where a route's outputs go: `reply` (the HTTP response), `http` (a webhook) and
//! `amqp` (a RabbitMQ exchange).

pub mod amqp;
pub mod http;
pub mod reply;
