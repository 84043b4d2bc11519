//! AMQP 0-9-1 (RabbitMQ via lapin), every part of it: the supervised broker session
//! (`session`), the consumer of queue routes (`source`), the queues and exchanges the host declares
//! (`topology`), the confirm-mode publisher (`publisher`), the outbox that holds outputs while the broker
//! is away (`outbox`), activations shared between hosts (`broadcast`), and the replay of broker
//! dead letters (`replay`). Nothing outside this folder speaks lapin.

pub mod backlog;
pub mod broadcast;
pub mod config;
pub mod outbox;
pub mod publisher;
pub mod replay;
pub mod session;
pub mod source;
pub mod topology;

use crate::config::{Sink, Source};
use crate::control::deploy::Deployer;
use crate::control::reload::Reloadable;
use crate::idempotency::SettledLog;
use crate::pipeline::{Background, Pipeline, Readiness, Ready};
use crate::route::{Route, RouteDiff};
use session::{BrokerLink, Link};
use std::sync::Arc;
use tokio::sync::watch;

/// The broker transport of a host whose routes use the broker.
pub struct Amqp {
    pub link: Arc<BrokerLink>,
    pub pipeline: Arc<Pipeline>,
    /// Outputs waiting for the broker, when a route needs it.
    pub outbox: Option<Arc<crate::outbox::Outbox>>,
    /// Writer of settled delivery ids (group commit), when the pipeline keeps them.
    pub settled: Option<SettledLog>,
    /// Activations to announce to, and apply from, the hosts on the broker.
    pub deployer: Arc<Deployer>,
    /// This host among the hosts on the broker: its id and the fleet's control key.
    pub fleet: Arc<broadcast::Fleet>,
    /// How often each session reads the retained activations again (`None`: never).
    pub retained_reread: Option<std::time::Duration>,
    /// The depth of the queues its routes read, as last read.
    pub backlog: Arc<backlog::Backlog>,
}

impl crate::pipeline::Source for Amqp {
    /// Check the link's TLS (a certificate problem stops the start), then run in `background`
    /// until `stopped`: the session supervisor (topology, consumers, other hosts'
    /// activations), the outbox drainer, and the announcer of this host's activations.
    fn start<'a>(
        self: Arc<Self>,
        background: &'a mut Background,
        stopped: watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(self.start_in(background, stopped))
    }
}

impl Amqp {
    async fn start_in(
        self: Arc<Self>,
        background: &mut Background,
        stopped: watch::Receiver<bool>,
    ) -> Result<(), String> {
        self.link.check_tls().await?;
        let amqp = Arc::clone(&self);
        let shutdown = stopped.clone();
        background.spawn(
            "amqp session",
            session::supervise(
                Arc::clone(&self.link),
                Arc::clone(&self.pipeline.routes),
                stopped.clone(),
                move |session, lost, ready| {
                    let (amqp, shutdown) = (Arc::clone(&amqp), shutdown.clone());
                    async move {
                        // Stopping does not wait for the set-up's broker calls.
                        let mut stopping = shutdown.clone();
                        let control = tokio::select! {
                            control = broadcast::follow(
                                Arc::clone(&amqp.deployer),
                                Arc::clone(&amqp.fleet),
                                &session,
                                amqp.retained_reread,
                            ) => control,
                            _ = stopping.wait_for(|stop| *stop) => {
                                return "the host is stopping".to_string();
                            }
                        };
                        let ended = source::consume(amqp, session, lost, shutdown, ready).await;
                        if let Some(control) = control {
                            let stopped = *stopping.borrow();
                            control.stop(stopped).await;
                        }
                        ended
                    }
                },
            ),
        );
        background.spawn(
            "amqp backlog",
            backlog::watch(
                Arc::clone(&self.backlog),
                Arc::clone(&self.link),
                Arc::clone(&self.pipeline.routes),
                stopped.clone(),
            ),
        );
        if let Some(outbox) = self.outbox.as_ref().map(Arc::clone) {
            let link = Arc::clone(&self.link);
            background.spawn("amqp outbox", async move {
                outbox::drain(&outbox, &link, stopped).await
            });
        }
        // Ends with the process (the deployer never drops its sender before).
        tokio::spawn(broadcast::announce_all(
            Arc::clone(&self.link),
            Arc::clone(&self.deployer),
            Arc::clone(&self.fleet),
        ));
        Ok(())
    }
}

/// The largest frame the host takes from a broker (RabbitMQ's default `frame_max`): it bounds
/// a message's header table, and so how deeply a sender can nest it.
pub const MAX_FRAME_BYTES: u32 = 128 * 1024;

/// Stack of the threads that take messages from a broker (the client's I/O thread parses a
/// delivery's header table, the async workers drop it), and of every other thread started
/// without a size of its own: the parser and the drop of a header table recurse once per
/// level of nesting, and [`MAX_FRAME_BYTES`] allows about 26,000 levels of nested arrays.
/// Measured with such a header (`amqp::headers_nested_as_deep_as_a_frame_allows...`): 16 MiB
/// aborted the host, 64 MiB held; four times that. Address space only: a thread uses what it
/// touches.
pub const THREAD_STACK_BYTES: u64 = 256 << 20;

/// Whether any of `routes` takes from or publishes to the broker.
pub fn used_by(routes: &[Arc<Route>]) -> bool {
    routes.iter().any(|r| r.uses_broker())
}

/// Whether any of `routes` takes messages from a source without a broker session and publishes
/// to the broker (its outputs wait in the outbox).
pub fn needs_outbox(routes: &[Arc<Route>]) -> bool {
    routes
        .iter()
        .any(|r| r.source != Source::Amqp && r.sink == Sink::Amqp)
}

/// The broker's part in a configuration reload.
pub struct AmqpReload {
    pub link: Option<Arc<BrokerLink>>,
    pub outbox: bool,
}

impl Reloadable for AmqpReload {
    fn needs_restart(&self, routes: &[Arc<Route>]) -> Vec<String> {
        let mut needs = Vec::new();
        if self.link.is_none() && used_by(routes) {
            needs.push("a route now uses the broker (the host started without one)".to_string());
        }
        if !self.outbox && needs_outbox(routes) {
            needs.push(
                "an HTTP route now publishes to the broker (it needs the outbox)".to_string(),
            );
        }
        needs
    }

    fn reloaded(&self, diff: &RouteDiff) -> bool {
        // The session depends on each broker route's name, source, sink and broker names.
        let changed = diff
            .added
            .iter()
            .chain(&diff.removed)
            .any(|r| r.uses_broker())
            || diff.changed.iter().any(|(before, after)| {
                (before.uses_broker() || after.uses_broker())
                    && (before.source != after.source
                        || before.sink != after.sink
                        || before.amqp != after.amqp)
            });
        match &self.link {
            Some(link) if changed => {
                // Deliveries in hand are finished; unacknowledged ones go back to their queues.
                link.restart("the configuration was reloaded and a broker route changed");
                true
            }
            _ => false,
        }
    }
}

/// `/readyz`'s broker entry: connected, or why not; and how many outputs wait.
impl Ready for Amqp {
    fn readiness(&self) -> Readiness {
        let waiting = self.outbox.as_ref().map(|o| o.held());
        let state = match self.link.link() {
            Link::Up(_) => Ok("connected"),
            Link::Down { reason, since } => {
                let for_s = since.elapsed().map_or(0, |d| d.as_secs());
                Err(format!(
                    "the broker is not connected (for {for_s} s): {reason}"
                ))
            }
        };
        Readiness {
            name: "broker",
            state,
            facts: vec![("outbox_waiting", serde_json::json!(waiting))],
        }
    }

    fn gauges(&self) -> Vec<crate::pipeline::Gauge> {
        let reading = self.backlog.get();
        let labels = &["plant", "route", "queue", "role"];
        let sample = |pick: fn(&(u32, u32)) -> u32| {
            reading
                .iter()
                .map(|((plant, route, queue, role), counts)| {
                    (
                        vec![
                            plant.clone(),
                            route.clone(),
                            queue.clone(),
                            role.to_string(),
                        ],
                        f64::from(pick(counts)),
                    )
                })
                .collect()
        };
        vec![
            crate::pipeline::Gauge {
                name: "millrace_amqp_queue_messages",
                help: "Messages ready in a broker queue a route reads (its source or dead-letter queue), as last read",
                labels,
                samples: sample(|c| c.0),
            },
            crate::pipeline::Gauge {
                name: "millrace_amqp_queue_consumers",
                help: "Consumers of a broker queue a route reads, as last read",
                labels,
                samples: sample(|c| c.1),
            },
        ]
    }
}

/// Sink `amqp`: [`Via::Direct`] publishes on the current broker session and waits for the
/// broker's confirms; [`Via::Held`] puts the outputs in the outbox (on disk), which the running
/// host publishes in order when the broker is up.
///
/// [`Via::Direct`]: crate::pipeline::sinks::Via::Direct
/// [`Via::Held`]: crate::pipeline::sinks::Via::Held
pub struct AmqpSink {
    pub link: Option<Arc<BrokerLink>>,
    pub outbox: Option<Arc<crate::outbox::Outbox>>,
}

impl crate::pipeline::sinks::Sink for AmqpSink {
    fn deliver<'a>(
        &'a self,
        route: &'a Route,
        outputs: Vec<crate::plugin::bindings::types::Message>,
        via: crate::pipeline::sinks::Via,
    ) -> crate::pipeline::sinks::Delivering<'a> {
        use crate::pipeline::sinks::{Delivered, DeliveryError, Via};
        Box::pin(async move {
            match (via, &self.outbox, &self.link) {
                (Via::Held, Some(outbox), _) => {
                    // Only what can be published is held: one that cannot would stop the
                    // outbox, which publishes in order, for every route.
                    let entries = outputs
                        .into_iter()
                        .map(|o| {
                            let key = publisher::routing_key(&route.amqp.routing_key, &o);
                            publisher::check_publishable(&route.amqp.exchange, &key, &o)
                                .map(|()| (route.amqp.exchange.clone(), key, o))
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| DeliveryError::Unavailable(e.to_string()))?;
                    outbox.hold(route.lineage(), &entries)
                }
                (_, _, Some(link)) => {
                    let Link::Up(session) = link.link() else {
                        return Err(DeliveryError::SessionLost(
                            "the broker is not connected".into(),
                        ));
                    };
                    session
                        .publisher
                        .publish(route, &outputs)
                        .await
                        .map(Delivered::Published)
                        .map_err(|e| {
                            if e.channel_lost() {
                                DeliveryError::SessionLost(e.to_string())
                            } else {
                                DeliveryError::Unavailable(e.to_string())
                            }
                        })
                }
                _ => Err(DeliveryError::NoSink {
                    route: route.name.clone(),
                    kind: route.sink,
                }),
            }
        })
    }
}
