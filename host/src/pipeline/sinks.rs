//! Where a route's outputs go: the one dispatch on the sink kind. `reply` hands them back to the
//! source (the HTTP caller's answer); every other kind is a [`Sink`] a transport registers
//! (`http` a webhook, `amqp` an exchange, `mqtt` a topic). How each one reaches its far side —
//! confirms, an outbox, acknowledgements — stays inside its transport.

use crate::config;
use crate::plugin::bindings::types::Message;
use crate::route::Route;
use crate::telemetry::trace;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A piece of an address template: text copied as it is, or the name between a `{` and a `}`.
enum Piece<'a> {
    Text(&'a str),
    Name(&'a str),
}

/// The pieces of `template` in order. A name runs from the last `{` before a `}` to it, so in
/// `{{plant}` the first `{` is text; a `}` with no `{` before it, and a `{` never closed, are text.
fn pieces<'a>(template: &'a str, mut piece: impl FnMut(Piece<'a>)) {
    let mut rest = template;
    while let Some(close) = rest.find('}') {
        match rest[..close].rfind('{') {
            Some(open) => {
                if open > 0 {
                    piece(Piece::Text(&rest[..open]));
                }
                piece(Piece::Name(&rest[open + 1..close]));
            }
            None => piece(Piece::Text(&rest[..=close])),
        }
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        piece(Piece::Text(rest));
    }
}

/// An output's address from a sink's `template` (an AMQP routing key, an MQTT topic): each
/// `{name}` ([`placeholders`]) filled by `fill(name, into)`, which appends the value and says
/// whether it knows the name (one it does not stays as it is written). One pass: what a value
/// holds (a `{subject}` in an event's `type`, say) is copied, never filled in turn.
pub fn address(template: &str, mut fill: impl FnMut(&str, &mut String) -> bool) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    pieces(template, |piece| match piece {
        Piece::Text(text) => out.push_str(text),
        Piece::Name(name) => {
            if !fill(name, &mut out) {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        }
    });
    out
}

/// The names an address `template` gives, in order, as [`address`] reads them (for checking a
/// template when the configuration is read).
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut names = Vec::new();
    pieces(template, |piece| {
        if let Piece::Name(name) = piece {
            names.push(name);
        }
    });
    names
}

/// What the caller waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The far side itself (the broker's confirm, the webhook's 2xx): a queue source acknowledges
    /// its delivery only then.
    Direct,
    /// A durable hold is enough (the outbox on disk, published when the broker is up), where the
    /// sink has one; else the far side.
    Held,
}

/// Where the outputs went.
#[derive(Debug)]
pub enum Delivered {
    /// Sink `reply`: the outputs, for the source to answer with.
    Reply(Vec<Message>),
    /// Taken by the webhook (2xx), this many.
    Webhook(usize),
    /// Confirmed or acknowledged by the broker, this many.
    Published(usize),
    /// Held durably (`accepted`), `waiting` in the hold now.
    Held { accepted: usize, waiting: usize },
}

/// Why the outputs were not delivered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The far side did not take them (unreachable, refused, not confirmed): worth a retry.
    #[error("{0}")]
    Unavailable(String),
    /// The session to the broker is gone (the caller's own session with it).
    #[error("{0}")]
    SessionLost(String),
    /// The durable hold is full.
    #[error("{0}")]
    Full(String),
    /// The durable hold could not keep them.
    #[error("{0}")]
    Store(String),
    /// No sink of the route's kind runs in this process.
    #[error("route {route} delivers to {kind:?}, which this process does not run")]
    NoSink { route: String, kind: config::Sink },
}

/// The span of one delivery, a child of the message's span its outputs carry: `publish` to a
/// broker (kind producer), `POST` to a webhook (kind client).
fn deliver_span(route: &Route, outputs: &[Message], count: u64) -> Option<trace::Span> {
    let tracer = trace::tracer();
    if !tracer.enabled() {
        return None;
    }
    let parent = trace::SpanContext::from_headers(&outputs.first()?.headers)?;
    let (name, kind) = match route.sink {
        config::Sink::Http => ("POST".to_string(), trace::Kind::Client),
        sink => (format!("publish {}", sink.as_str()), trace::Kind::Producer),
    };
    let mut span = tracer.start(name, kind, Some(&parent))?;
    span.set("millrace.sink", route.sink.as_str());
    span.set("messaging.batch.message_count", count as i64);
    match route.sink {
        config::Sink::Amqp => {
            span.set("messaging.system", "rabbitmq");
            span.set("messaging.destination.name", route.amqp.exchange.as_str());
        }
        config::Sink::Mqtt => span.set("messaging.system", "mqtt"),
        config::Sink::Http => {
            if let Some(webhook) = &route.webhook {
                span.set("url.full", webhook.url.to_string());
            }
        }
        config::Sink::Reply => {}
    }
    Some(span)
}

/// Future of one delivery.
pub type Delivering<'a> =
    Pin<Box<dyn Future<Output = Result<Delivered, DeliveryError>> + Send + 'a>>;

/// A transport's sink half.
pub trait Sink: Send + Sync {
    /// Deliver `outputs` of `route` as `via` asks.
    fn deliver<'a>(&'a self, route: &'a Route, outputs: Vec<Message>, via: Via) -> Delivering<'a>;
}

/// The sinks of this process, by kind.
#[derive(Clone, Default)]
pub struct Sinks {
    by_kind: HashMap<config::Sink, Arc<dyn Sink>>,
}

impl Sinks {
    /// Deliver to `kind` with `sink` from now on.
    pub fn register(&mut self, kind: config::Sink, sink: Arc<dyn Sink>) {
        self.by_kind.insert(kind, sink);
    }

    /// Deliver `outputs` of `route` (made of message `of`) to its sink, counted in the route's
    /// `output_*` series (held durably counts as sent: the hold delivers it) and noted in the
    /// message's lineage.
    pub async fn deliver(
        &self,
        route: &Route,
        of: &str,
        outputs: Vec<Message>,
        via: Via,
    ) -> Result<Delivered, DeliveryError> {
        let delivered = self.deliver_counted(route, outputs, via).await;
        crate::lineage::record(route, of, None, || {
            use crate::lineage::Event;
            let sink = route.sink.as_str();
            let taken = |outcome, count| Event::Delivered {
                sink,
                outcome,
                count,
            };
            match &delivered {
                Ok(Delivered::Reply(o)) => taken("reply", o.len()),
                Ok(Delivered::Held { accepted, .. }) => taken("held", *accepted),
                Ok(Delivered::Webhook(n) | Delivered::Published(n)) => taken("delivered", *n),
                Err(e) => Event::NotDelivered {
                    sink,
                    reason: crate::lineage::bounded(
                        &e.to_string(),
                        crate::lineage::MAX_REASON_BYTES,
                    ),
                },
            }
        });
        delivered
    }

    async fn deliver_counted(
        &self,
        route: &Route,
        outputs: Vec<Message>,
        via: Via,
    ) -> Result<Delivered, DeliveryError> {
        let meters = &route.meters;
        let count = outputs.len() as u64;
        if route.sink == config::Sink::Reply {
            meters.sent.add(count);
            return Ok(Delivered::Reply(outputs));
        }
        let Some(sink) = self.by_kind.get(&route.sink) else {
            meters.error.add(count);
            return Err(DeliveryError::NoSink {
                route: route.name.clone(),
                kind: route.sink,
            });
        };
        let mut span = deliver_span(route, &outputs, count);
        let started = std::time::Instant::now();
        let delivered = sink.deliver(route, outputs, via).await;
        meters.output_latency.since(started);
        if let Some(mut span) = span.take() {
            match &delivered {
                Ok(Delivered::Held { .. }) => span.set("millrace.outcome", "held"),
                Ok(_) => span.set("millrace.outcome", "delivered"),
                Err(e) => span.fail(e.to_string()),
            }
            span.end();
        }
        match &delivered {
            Ok(_) => meters.sent.add(count),
            Err(_) => meters.error.add(count),
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::address;

    #[test]
    fn an_address_is_filled_in_one_pass_and_keeps_what_it_does_not_know() {
        let fill = |name: &str, out: &mut String| match name {
            "a" => {
                out.push_str("{b}");
                true
            }
            "b" => {
                out.push('B');
                true
            }
            _ => false,
        };
        assert_eq!(address("x.{a}.{b}", fill), "x.{b}.B");
        assert_eq!(address("{c}/{b}", fill), "{c}/B");
        assert_eq!(address("pre{b}mid{open", fill), "preBmid{open");
        // A name starts at the last `{` before its `}`: the braces around it are text.
        assert_eq!(address("}{}{{b}", fill), "}{}{B");
        assert_eq!(address("{{b}}", fill), "{B}");
        assert_eq!(address("{x{b}y}", fill), "{xBy}");
        assert_eq!(address("", fill), "");
        assert_eq!(address("{", fill), "{");
        assert_eq!(address("é{b}ü{é}", fill), "éBü{é}");
        assert_eq!(
            super::placeholders("}{}{{b}.{x{c}y}{open"),
            vec!["", "b", "c"]
        );
    }
}
