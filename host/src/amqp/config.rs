//! The broker's sections of the configuration: a route's `[routes.R.amqp]` (queue, exchange,
//! retries and their arithmetic), the URL's form, and the link's TLS material (`[amqp_tls]`).

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use serde::Deserialize;

/// Why `url` is not a broker URL, if it is not one.
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<lapin::uri::AMQPUri>()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `host.amqp`: one broker URL, or the URLs of a cluster's nodes (tried in turn).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BrokerUrls {
    One(String),
    Nodes(Vec<String>),
}

impl BrokerUrls {
    pub fn list(&self) -> Vec<String> {
        match self {
            BrokerUrls::One(url) => vec![url.clone()],
            BrokerUrls::Nodes(urls) => urls.clone(),
        }
    }
}

/// The type of queue the host declares (`host.amqp_queues`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// Replicated (Raft) queues; what RabbitMQ recommends for data that must not be lost.
    Quorum,
    /// Single-node queues (mirrored only by a broker policy).
    Classic,
}

impl QueueKind {
    pub fn name(self) -> &'static str {
        match self {
            QueueKind::Quorum => "quorum",
            QueueKind::Classic => "classic",
        }
    }
}

/// How the host declares its queues: `host.amqp_queues` (default quorum) and
/// `host.amqp_delivery_limit` (default 20; 0 for none), see [`super::topology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queues {
    pub kind: QueueKind,
    /// Deliveries of one message from a quorum source queue before the broker dead-letters it.
    pub delivery_limit: Option<u32>,
}

/// The default of `host.amqp_delivery_limit`.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

impl Default for Queues {
    fn default() -> Self {
        Queues {
            kind: QueueKind::Quorum,
            delivery_limit: Some(DEFAULT_DELIVERY_LIMIT),
        }
    }
}

/// The broker link's TLS material (`[amqp_tls]`), for `amqps://` URLs: CA certificates to trust
/// besides the public web roots, and a client certificate (with `?auth_mechanism=external` in
/// the URL, the broker takes it as the login: SASL EXTERNAL). The files are read at every
/// connection, so a rotated certificate is used from the next one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AmqpTls {
    /// CA certificates, PEM, the broker's certificate may chain to.
    pub ca: Option<std::path::PathBuf>,
    /// The client certificate chain, PEM.
    pub cert: Option<std::path::PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<std::path::PathBuf>,
}

impl AmqpTls {
    /// Read the files; an error names the file and what is wrong.
    pub fn load(&self) -> Result<OwnedTLSConfig, String> {
        use crate::http::tls::pem_certificates;
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let cert_chain = match &self.ca {
            Some(ca) => Some(
                String::from_utf8(pem_certificates("broker CA", ca)?.0)
                    .map_err(|_| format!("broker CA {}: not PEM text", ca.display()))?,
            ),
            None => None,
        };
        let identity = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let (pem, _) = pem_certificates("client certificate", cert)?;
                let key_pem =
                    std::fs::read(key).map_err(|e| format!("client key {}: {e}", key.display()))?;
                if let Err(e) = PrivateKeyDer::from_pem_slice(&key_pem) {
                    return Err(format!("client key {}: {e}", key.display()));
                }
                Some(OwnedIdentity::PKCS8 { pem, key: key_pem })
            }
            _ => {
                return Err(
                    "[amqp_tls] cert and key go together (the client certificate and its key)"
                        .into(),
                );
            }
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

/// `[routes.R.amqp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSection {
    queue: Option<String>,
    prefetch: Option<u16>,
    exchange: Option<String>,
    routing_key: Option<String>,
    max_attempts: Option<u32>,
    retry_delay_ms: Option<u64>,
    retry_max_delay_ms: Option<u64>,
    order_by: Option<OrderBy>,
}

/// `routes.R.amqp.order_by`: which deliveries of a route keep their order. Deliveries with the
/// same key are mediated one after another, in the order the queue gave them; different keys run
/// concurrently. The source queue gets a single active consumer, so one host at a time consumes
/// it (the others stand by and take over when it goes).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum OrderBy {
    /// Every delivery: the whole queue in order.
    Queue,
    /// Deliveries with the same routing key.
    RoutingKey,
    /// Deliveries with the same value of this header (lower case; none: the key is empty).
    Header(String),
}

impl std::fmt::Display for OrderBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderBy::Queue => f.write_str("queue"),
            OrderBy::RoutingKey => f.write_str("routing-key"),
            OrderBy::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl TryFrom<String> for OrderBy {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "queue" => Ok(OrderBy::Queue),
            "routing-key" => Ok(OrderBy::RoutingKey),
            _ => match text.strip_prefix("header:") {
                Some(name) if !name.trim().is_empty() => {
                    Ok(OrderBy::Header(name.trim().to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "order_by {text:?} is not one of \"queue\", \"routing-key\", \"header:NAME\""
                )),
            },
        }
    }
}

/// A route's broker settings (used when its source or sink is `amqp`).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteAmqp {
    /// Source queue (durable), default `millrace.ROUTE`.
    pub queue: String,
    /// Deliveries in flight per consumer, default 32.
    pub prefetch: u16,
    /// Sink exchange (durable topic), default `millrace.events`.
    pub exchange: String,
    /// Routing key template: `{type}` (the CloudEvent type, else the content type), `{plant}`,
    /// `{route}`, `{subject}`; default `{plant}.{type}`.
    pub routing_key: String,
    /// Where permanent failures go: exchange `millrace.ROUTE.dead-letter` → queue of that name.
    pub dead_letter: String,
    /// Runs of one message before a transient failure becomes a dead letter (default 5).
    pub max_attempts: u32,
    /// Wait before the first retry (default 1 s); doubled for each further one.
    pub retry_delay: std::time::Duration,
    /// Longest wait between two attempts (default 60 s).
    pub retry_max_delay: std::time::Duration,
    /// Which deliveries keep their order (none: all run concurrently, competing hosts).
    pub order_by: Option<OrderBy>,
}

impl RouteAmqp {
    /// Route `route`'s settings from its section (defaults where it is silent).
    pub fn from_section(route: &str, section: Option<&AmqpSection>) -> RouteAmqp {
        RouteAmqp {
            queue: section
                .and_then(|a| a.queue.clone())
                .unwrap_or_else(|| format!("millrace.{route}")),
            prefetch: section.and_then(|a| a.prefetch).unwrap_or(32).max(1),
            exchange: section
                .and_then(|a| a.exchange.clone())
                .unwrap_or_else(|| "millrace.events".into()),
            routing_key: section
                .and_then(|a| a.routing_key.clone())
                .unwrap_or_else(|| "{plant}.{type}".into()),
            dead_letter: format!("millrace.{route}.dead-letter"),
            max_attempts: section.and_then(|a| a.max_attempts).unwrap_or(5).max(1),
            retry_delay: std::time::Duration::from_millis(
                section
                    .and_then(|a| a.retry_delay_ms)
                    .unwrap_or(1000)
                    .max(1),
            ),
            retry_max_delay: std::time::Duration::from_millis(
                section
                    .and_then(|a| a.retry_max_delay_ms)
                    .unwrap_or(60_000)
                    .max(1),
            ),
            order_by: section.and_then(|a| a.order_by.clone()),
        }
    }

    /// The wait before attempt `attempt + 1` after attempt `attempt` (1-based) failed.
    pub fn retry_delay_after(&self, attempt: u32) -> std::time::Duration {
        crate::backoff::after(self.retry_delay, self.retry_max_delay, attempt)
    }

    /// Every distinct wait between attempts, shortest first (one delay queue each).
    pub fn retry_delays(&self) -> Vec<std::time::Duration> {
        let mut delays: Vec<_> = (1..self.max_attempts)
            .map(|a| self.retry_delay_after(a))
            .collect();
        delays.dedup();
        delays
    }

    /// The delay queue holding messages for `delay` before they return to the source queue.
    pub fn retry_queue(&self, delay: std::time::Duration) -> String {
        format!("{}.retry.{}ms", self.queue, delay.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn amqp(max_attempts: u32, delay_ms: u64, max_ms: u64) -> RouteAmqp {
        RouteAmqp {
            queue: "q".into(),
            prefetch: 1,
            exchange: "x".into(),
            routing_key: "{type}".into(),
            dead_letter: "d".into(),
            max_attempts,
            retry_delay: Duration::from_millis(delay_ms),
            retry_max_delay: Duration::from_millis(max_ms),
            order_by: None,
        }
    }

    #[test]
    fn retry_waits_double_up_to_the_cap_with_one_delay_queue_per_distinct_wait() {
        let a = amqp(7, 1000, 5000);
        let waits: Vec<_> = (1..7).map(|n| a.retry_delay_after(n).as_millis()).collect();
        assert_eq!(waits, [1000, 2000, 4000, 5000, 5000, 5000]);
        let queues: Vec<_> = a
            .retry_delays()
            .into_iter()
            .map(|d| a.retry_queue(d))
            .collect();
        assert_eq!(
            queues,
            [
                "q.retry.1000ms",
                "q.retry.2000ms",
                "q.retry.4000ms",
                "q.retry.5000ms"
            ]
        );
        assert!(
            amqp(1, 1000, 5000).retry_delays().is_empty(),
            "one attempt: no retries"
        );
        assert_eq!(
            amqp(64, 1000, 60_000).retry_delay_after(60).as_millis(),
            60_000,
            "no overflow"
        );
    }
}
