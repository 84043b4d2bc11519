//! The broker-side parts the host declares: for each broker route its sink exchange, its source
//! queue, one delay queue per retry wait and its dead-letter exchange and queue; for the hosts
//! sharing a broker the control exchange, each host's control queue and the last activation of
//! each plant and plugin.
//!
//! Queues are declared of the type `host.amqp_queues` names: **quorum** (the default; replicated
//! on a cluster, at-least-once dead-lettering) or **classic**. A queue that already exists keeps
//! its type: when the declaration of the configured type is refused because the queue exists
//! with other arguments (`PRECONDITION_FAILED`), the other type is tried, and taken if it
//! matches, with a warning. A broker that has no quorum queues refuses their declaration the
//! same way and gets classic queues. A queue declared by an earlier release (without the
//! arguments below marked *since 2026-12*) is kept as it is. A queue that matches none of these
//! (provisioned by someone else with arguments of their own) is used as it is, with a warning.
//!
//! What quorum queues add:
//! - delay queues dead-letter back to the source queue **at least once**
//!   (`x-dead-letter-strategy = at-least-once`, with `x-overflow = reject-publish` that the
//!   strategy requires): a message whose wait expires is not removed from the delay queue until
//!   the source queue has it, so a broker node lost during that hop loses nothing;
//! - source queues carry `x-delivery-limit` (`host.amqp_delivery_limit`, default 20): a message
//!   delivered that many times without being settled (it takes the host down each time, say) is
//!   moved to the route's dead-letter queue by the broker (header `x-first-death-reason` =
//!   `delivery_limit`) instead of coming back forever, at least once as well;
//! - dead-letter, control and retained-activation queues carry a limit no message reaches
//!   ([`NO_DELIVERY_LIMIT`], *since 2026-12*): RabbitMQ 4 would give them 20, and the host gives
//!   retained activations back at every read, `dlq` its dead letters. Delay queues (no
//!   consumer) and source queues with `amqp_delivery_limit = 0` carry none.
//!
//! A host's control queue expires after [`CONTROL_QUEUE_EXPIRY`] without a consumer (*since
//! 2026-12*), and holds at most [`CONTROL_QUEUE_KEPT`] messages and [`CONTROL_QUEUE_BYTES`]
//! bytes, the oldest dropped past either (*since 2026-12-06*).

use super::config::{QueueKind, Queues};
use crate::route::Route;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};
use std::time::Duration;

/// What a queue is for, which decides its arguments.
#[derive(Debug, Clone, Copy)]
pub enum Role<'a> {
    /// A route's source queue; what the broker dead-letters goes to `dead_letter` (exchange);
    /// `single_active`: one consumer at a time (a route with `order_by`).
    Source {
        dead_letter: &'a str,
        single_active: bool,
    },
    /// A delay queue: messages wait `wait`, then go back to queue `back_to`.
    Delay { wait: Duration, back_to: &'a str },
    /// A queue that only holds messages: a route's dead letters.
    Plain,
    /// A host's control queue: removed by the broker after [`CONTROL_QUEUE_EXPIRY`] without a
    /// consumer, so the queue of a host that never returns (a host id that changed) does not
    /// keep receiving every announcement; bounded by [`CONTROL_QUEUE_KEPT`] and
    /// [`CONTROL_QUEUE_BYTES`] meanwhile (the broker drops the oldest past either).
    Control,
    /// Holds what was published to it, at most [`LAST_VALUES_KEPT`] (`x-max-length`); readers
    /// take the latest by its stamp and remove the older ones.
    LastValue,
}

/// Declares on one channel of its own; a refused declaration closes a channel, so it opens a
/// new one after each refusal.
pub struct Declarer<'a> {
    connection: &'a Connection,
    channel: Channel,
    queues: Queues,
}

/// Messages a last-value queue may hold: a safety bound. Its readers remove what is older than
/// the latest they read and give that one back, so it holds the latest and what was announced
/// since the last read; the bound drops a message only past that (on a quorum queue, the one
/// given back first, which may be the newest: measured on 3.10.8).
pub const LAST_VALUES_KEPT: usize = 16;

/// How long a host's control queue outlives its host's last session. A host away longer finds
/// it gone, declares it again and converges from the retained activations.
pub const CONTROL_QUEUE_EXPIRY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Messages a host's control queue holds at most (`x-max-length`); past it the broker drops
/// the oldest (its default overflow, `drop-head`). What it holds waits for a host that is away,
/// and every activation announced meanwhile is also retained per slot, which the host reads
/// before its control queue when it connects (and every `host.amqp_retained_reread_s`, unless
/// 0): a dropped activation is not one the host needs to converge. The bound keeps a fleet's
/// announcements (each carries its component) from growing one queue without end while its
/// host is away for up to [`CONTROL_QUEUE_EXPIRY`], and a publisher flooding it likewise. It is
/// per queue: the broker holds as much for each host's queue, on each node a quorum queue is
/// replicated on.
pub const CONTROL_QUEUE_KEPT: i64 = 1_000;

/// Bytes of message bodies a host's control queue holds at most (`x-max-length-bytes`), the
/// oldest dropped past it: 4 activations of the largest component `host.max_component_mib`
/// accepts by default (64 MiB).
pub const CONTROL_QUEUE_BYTES: i64 = 256 << 20;

/// The `x-delivery-limit` of a quorum queue that is to have none. RabbitMQ 4 gives a quorum
/// queue declared without one a limit of 20, and reading a retained activation or a dead letter
/// gives the message back, which counts as a delivery. `-1`, RabbitMQ 4's "none", is not used:
/// RabbitMQ 3.10 reads it as a limit and drops the message at its first return (measured on
/// 3.10.8).
pub const NO_DELIVERY_LIMIT: i64 = i32::MAX as i64;

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

fn refused(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

/// The arguments of a queue of `kind` for `role`.
pub fn arguments(kind: QueueKind, delivery_limit: Option<u32>, role: Role<'_>) -> FieldTable {
    let mut args = FieldTable::default();
    let quorum = kind == QueueKind::Quorum;
    if quorum {
        args.insert("x-queue-type".into(), text("quorum"));
    }
    match role {
        Role::Source {
            dead_letter,
            single_active,
        } => {
            args.insert("x-dead-letter-exchange".into(), text(dead_letter));
            if single_active {
                args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            }
            if quorum {
                if let Some(limit) = delivery_limit {
                    args.insert(
                        "x-delivery-limit".into(),
                        AMQPValue::LongLongInt(i64::from(limit)),
                    );
                }
                args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
                args.insert("x-overflow".into(), text("reject-publish"));
            }
        }
        Role::Delay { wait, back_to } => {
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(wait.as_millis().min(i64::MAX as u128) as i64),
            );
            args.insert("x-dead-letter-exchange".into(), text(""));
            args.insert("x-dead-letter-routing-key".into(), text(back_to));
            if quorum {
                args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
                args.insert("x-overflow".into(), text("reject-publish"));
            }
        }
        Role::Plain => {}
        Role::Control => {
            let ms = CONTROL_QUEUE_EXPIRY.as_millis() as i64;
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
            args.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(CONTROL_QUEUE_KEPT),
            );
            args.insert(
                "x-max-length-bytes".into(),
                AMQPValue::LongLongInt(CONTROL_QUEUE_BYTES),
            );
        }
        Role::LastValue => {
            let kept = LAST_VALUES_KEPT as i64;
            args.insert("x-max-length".into(), AMQPValue::LongLongInt(kept));
        }
    }
    // Queues the host reads and gives back (retained activations, dead letters under `dlq`)
    // and control queues: no limit on RabbitMQ 4 either. Not a source queue without one
    // (`amqp_delivery_limit = 0`): that would move where a message given back goes (RabbitMQ 3
    // puts it at the front of a quorum queue with a limit, at the back of one without).
    if quorum && matches!(role, Role::Plain | Role::Control | Role::LastValue) {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(NO_DELIVERY_LIMIT),
        );
    }
    args
}

/// `args` (for `role`) as earlier releases declared them, the latest first, each only when it
/// differs from the one before: before control queues' length bounds (*since 2026-12-06*:
/// without `x-max-length` and `x-max-length-bytes` on a control queue), and before delivery
/// limits on every quorum queue and control queues' expiry (without a "none"
/// `x-delivery-limit` and without `x-expires` either). No earlier release declared a
/// retained-activations queue: none for [`Role::LastValue`].
fn earlier_releases(args: &FieldTable, role: Role<'_>) -> Vec<FieldTable> {
    if matches!(role, Role::LastValue) {
        return Vec::new();
    }
    let control = matches!(role, Role::Control);
    let before_bounds = without(args, |key, _| {
        control && matches!(key, "x-max-length" | "x-max-length-bytes")
    });
    let first = without(&before_bounds, |key, value| match key {
        "x-delivery-limit" => *value == AMQPValue::LongLongInt(NO_DELIVERY_LIMIT),
        "x-expires" => true,
        _ => false,
    });
    [(&before_bounds, args), (&first, &before_bounds)]
        .into_iter()
        .filter(|(earlier, later)| earlier.inner() != later.inner())
        .map(|(earlier, _)| earlier.clone())
        .collect()
}

/// `args` without the arguments `added` names.
fn without(args: &FieldTable, added: impl Fn(&str, &AMQPValue) -> bool) -> FieldTable {
    let mut earlier = FieldTable::default();
    for (key, value) in args.inner() {
        if !added(key.as_str(), value) {
            earlier.insert(key.clone(), value.clone());
        }
    }
    earlier
}

impl<'a> Declarer<'a> {
    pub async fn open(connection: &'a Connection, queues: Queues) -> Result<Self, lapin::Error> {
        Ok(Declarer {
            connection,
            channel: connection.create_channel().await?,
            queues,
        })
    }

    /// Declare a durable exchange.
    pub async fn exchange(&mut self, name: &str, kind: ExchangeKind) -> Result<(), lapin::Error> {
        self.channel
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
    }

    /// Declare a durable queue for `role`, of the configured type unless it already exists as
    /// the other (see the module's notes), or as an earlier release of the host declared it.
    /// Returns the type it has.
    pub async fn queue(&mut self, name: &str, role: Role<'_>) -> Result<QueueKind, lapin::Error> {
        let wanted = self.queues.kind;
        let other = match wanted {
            QueueKind::Quorum => QueueKind::Classic,
            QueueKind::Classic => QueueKind::Quorum,
        };
        // In order: each type with the arguments of this release, then of the earlier ones.
        let mut tries = Vec::new();
        for kind in [wanted, other] {
            let args = arguments(kind, self.queues.delivery_limit, role);
            let before = earlier_releases(&args, role);
            tries.push((kind, args, false));
            tries.extend(before.into_iter().map(|args| (kind, args, true)));
        }
        let mut first = None;
        for (kind, args, earlier) in tries {
            let e = match self.declare(name, args).await {
                Ok(()) => {
                    if kind != wanted {
                        tracing::warn!(
                            queue = name,
                            configured = wanted.name(),
                            kept = kind.name(),
                            "the queue exists as a {} queue; kept as it is (host.amqp_queues applies to queues declared new)",
                            kind.name()
                        );
                    }
                    if earlier {
                        tracing::info!(
                            queue = name,
                            "the queue was declared by an earlier release, without x-delivery-limit, x-expires or a control queue's length bounds; kept as it is (on RabbitMQ 4 a quorum queue without x-delivery-limit has a limit of 20, and a control queue without bounds grows while its host is away: see docs/amqp.md)"
                        );
                    }
                    return Ok(kind);
                }
                Err(e) => e,
            };
            if !refused(&e) {
                return Err(e);
            }
            // A refused declaration closes its channel.
            self.channel = self.connection.create_channel().await?;
            first.get_or_insert(e);
        }
        let e = first.expect("a declaration was refused");
        // Declared by someone else with arguments of their own: used as it is. If it is not
        // there at all, the broker refused the arguments themselves (a policy, say): that
        // refusal is the error.
        let passive = self
            .channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        if passive.is_err() {
            self.channel = self.connection.create_channel().await?;
            return Err(e);
        }
        tracing::warn!(
            queue = name,
            "the queue exists with other arguments than the host declares ({e}); used as it is, without the host's dead-lettering, delivery limit or type"
        );
        if matches!(
            role,
            Role::Source {
                single_active: true,
                ..
            }
        ) {
            tracing::warn!(
                queue = name,
                "the route has order_by, which needs the queue's x-single-active-consumer: unless the queue has it, several hosts consume it at once and per-key order is not kept"
            );
        }
        Ok(wanted)
    }

    async fn declare(&self, name: &str, args: FieldTable) -> Result<(), lapin::Error> {
        self.channel
            .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
            .await
            .map(|_| ())
    }

    /// Bind `queue` to `exchange` with `key`.
    pub async fn bind(&self, queue: &str, exchange: &str, key: &str) -> Result<(), lapin::Error> {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Declare what `route` uses: its sink exchange, its source queue (dead-lettering into its
    /// dead-letter exchange), one delay queue per retry wait (expiring back into the source
    /// queue), and the dead-letter exchange and queue. Idempotent.
    pub async fn route(&mut self, route: &Route) -> Result<(), lapin::Error> {
        let a = &route.amqp;
        self.exchange(&a.dead_letter, ExchangeKind::Fanout).await?;
        self.queue(&a.dead_letter, Role::Plain).await?;
        self.bind(&a.dead_letter, &a.dead_letter, "").await?;
        if route.sink == crate::config::Sink::Amqp {
            self.exchange(&a.exchange, ExchangeKind::Topic).await?;
        }
        if route.source == crate::config::Source::Amqp {
            self.queue(
                &a.queue,
                Role::Source {
                    dead_letter: &a.dead_letter,
                    single_active: a.order_by.is_some(),
                },
            )
            .await?;
            for wait in a.retry_delays() {
                self.queue(
                    &a.retry_queue(wait),
                    Role::Delay {
                        wait,
                        back_to: &a.queue,
                    },
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Close the channel (bounded: [`super::session::close_channel`]).
    pub async fn close(self) {
        super::session::close_channel(&self.channel, "declared").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(args: &FieldTable) -> Vec<String> {
        args.inner().keys().map(|k| k.to_string()).collect()
    }

    #[test]
    fn quorum_delay_queues_dead_letter_at_least_once() {
        let delay = Role::Delay {
            wait: Duration::from_millis(500),
            back_to: "q",
        };
        let quorum = arguments(QueueKind::Quorum, Some(20), delay);
        assert_eq!(
            quorum.inner().get("x-dead-letter-strategy"),
            Some(&text("at-least-once"))
        );
        assert_eq!(
            quorum.inner().get("x-overflow"),
            Some(&text("reject-publish"))
        );
        let classic = arguments(QueueKind::Classic, Some(20), delay);
        assert!(
            !names(&classic)
                .iter()
                .any(|n| n == "x-queue-type" || n == "x-dead-letter-strategy" || n == "x-overflow")
        );
    }

    #[test]
    fn only_quorum_queues_carry_a_delivery_limit_and_none_is_a_high_one() {
        let source = Role::Source {
            dead_letter: "dl",
            single_active: false,
        };
        let quorum = arguments(QueueKind::Quorum, Some(7), source);
        assert_eq!(
            quorum.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(7))
        );
        // A source queue without a limit keeps none (where a message given back goes).
        assert!(
            arguments(QueueKind::Quorum, None, source)
                .inner()
                .get("x-delivery-limit")
                .is_none()
        );
        // "None" is a limit no message reaches, not the broker's default (20 on RabbitMQ 4).
        for role in [Role::Plain, Role::Control, Role::LastValue] {
            let limit = Some(7);
            assert_eq!(
                arguments(QueueKind::Quorum, limit, role)
                    .inner()
                    .get("x-delivery-limit"),
                Some(&AMQPValue::LongLongInt(NO_DELIVERY_LIMIT)),
                "{role:?}"
            );
            assert!(
                arguments(QueueKind::Classic, limit, role)
                    .inner()
                    .get("x-delivery-limit")
                    .is_none()
            );
        }
        assert!(
            arguments(QueueKind::Classic, Some(7), source)
                .inner()
                .get("x-delivery-limit")
                .is_none()
        );
    }

    #[test]
    fn control_queues_are_bounded_and_the_earlier_releases_declarations_are_tried_latest_first() {
        for kind in [QueueKind::Quorum, QueueKind::Classic] {
            let now = arguments(kind, Some(20), Role::Control);
            let get = |args: &FieldTable, key: &str| args.inner().get(key).cloned();
            assert_eq!(
                get(&now, "x-max-length"),
                Some(AMQPValue::LongLongInt(CONTROL_QUEUE_KEPT))
            );
            assert_eq!(
                get(&now, "x-max-length-bytes"),
                Some(AMQPValue::LongLongInt(CONTROL_QUEUE_BYTES))
            );
            let earlier = earlier_releases(&now, Role::Control);
            // The release before the bounds: expiry (and the "none" limit on quorum) only.
            let mut expiry_only = names(&now);
            expiry_only.retain(|n| n != "x-max-length" && n != "x-max-length-bytes");
            assert_eq!(names(&earlier[0]), expiry_only, "{kind:?}");
            // The first release: the queue type alone.
            let first: Vec<String> = match kind {
                QueueKind::Quorum => vec!["x-queue-type".into()],
                QueueKind::Classic => vec![],
            };
            assert_eq!(names(&earlier[1]), first, "{kind:?}");
            assert_eq!(earlier.len(), 2);
        }
        // Other queues: the release before limits and expiry only, and none when nothing was
        // added (a classic dead-letter queue); a retained-activations queue's `x-max-length`
        // was there from the start.
        let plain = arguments(QueueKind::Quorum, Some(20), Role::Plain);
        let earlier = earlier_releases(&plain, Role::Plain);
        assert_eq!(earlier.len(), 1);
        assert_eq!(names(&earlier[0]), vec!["x-queue-type".to_string()]);
        let classic = arguments(QueueKind::Classic, Some(20), Role::Plain);
        assert!(earlier_releases(&classic, Role::Plain).is_empty());
        let retained = arguments(QueueKind::Quorum, Some(20), Role::LastValue);
        assert!(earlier_releases(&retained, Role::LastValue).is_empty());
    }
}
