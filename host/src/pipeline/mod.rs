//! The pipeline every transport feeds, and `dlq replay` too: a message of a route takes a slot
//! ([`crate::admission`]), runs the route's chain on a mediation thread ([`chain`],
//! [`workers`]), is dead-lettered in the local store when the chain fails for good (if the
//! source asks for that), and its outputs go to the route's sink ([`sinks`]). Each source maps
//! the typed outcomes of [`Pipeline::mediate`] and [`sinks::Sinks::deliver`] to its own protocol
//! (an HTTP status, an AMQP ack, retry or dead letter).

pub mod chain;
pub mod event;
pub mod sinks;
pub mod workers;

use crate::admission::{Admission, Busy};
use crate::deadletter::{DeadLetterError, DeadLetterStore};
use crate::idempotency::IdempotencyStore;
use crate::plugin::bindings::types::Message;
use crate::route::{Route, Routes};
use crate::telemetry::trace::SpanContext;
use chain::Failure;
use std::sync::Arc;
use workers::{WorkerLost, Workers};

/// What a message needs on its way through the host, shared by every source.
pub struct Pipeline {
    /// The route table (also changed by the control plane: activations, reloads).
    pub routes: Arc<Routes>,
    /// Slots of the host, its plants and routes.
    pub admission: Admission,
    workers: Workers,
    /// Dead letters of routes whose source has no dead-letter queue of its own.
    pub deadletters: Arc<DeadLetterStore>,
    /// Where outputs go.
    pub sinks: sinks::Sinks,
    /// Answers kept per `Idempotency-Key` (HTTP) and settled delivery ids (queues); `None`
    /// when the window is 0.
    pub idempotency: Option<Arc<IdempotencyStore>>,
}

/// What a source does when the plant has no free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenBusy {
    /// Wait for one (a queue source: its prefetch bounds how many wait).
    Wait,
    /// Refuse the message now ([`Mediated::Busy`]; an HTTP caller hears 503).
    Refuse,
}

/// Who records a message whose chain failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The pipeline, in the local dead-letter store.
    DeadLetterHere,
    /// The source (e.g. in its broker's dead-letter queue), or nobody (a replay).
    Caller,
}

/// How a source asks for a message to be mediated.
pub struct Ask {
    pub when_busy: WhenBusy,
    pub on_failure: OnFailure,
    /// Skip the chain when this id of the route was settled before (a redelivery); looked up on
    /// the mediation thread.
    pub settled: Option<(Arc<IdempotencyStore>, String)>,
    /// The message's span at its source: the steps' spans are its children, the outputs carry
    /// it (`traceparent`). `None` when tracing is off.
    pub trace: Option<SpanContext>,
}

/// What a chain's run came to, before any dead letter is written.
enum Ran {
    Settled,
    Mediated(Vec<Message>),
    Failed(Box<FailedRun>),
}

/// A failed run: what writing its dead letter needs; its slot is held until then.
struct FailedRun {
    failure: Box<Failure>,
    message: Message,
    trace: Option<SpanContext>,
    slot: crate::admission::Admitted,
}

/// Why [`Pipeline::mediate`] gave no outputs.
#[derive(Debug)]
pub enum Mediated {
    /// The plant or route has no free slot ([`WhenBusy::Refuse`]).
    Busy(Busy),
    /// The id was settled before: nothing ran.
    Settled,
    /// A step failed; `dead_letter` is the local entry's id when one was recorded
    /// (`Ok(None)`: transient, or left to the caller).
    Failed {
        failure: Box<Failure>,
        dead_letter: Result<Option<i64>, DeadLetterError>,
    },
    /// The mediation thread was lost (its job panicked).
    Lost(WorkerLost),
}

impl Pipeline {
    /// A pipeline over `routes` with `threads` mediation threads.
    pub fn new(
        routes: Arc<Routes>,
        admission: Admission,
        threads: usize,
        deadletters: Arc<DeadLetterStore>,
        sinks: sinks::Sinks,
        idempotency: Option<Arc<IdempotencyStore>>,
    ) -> Pipeline {
        Pipeline {
            routes,
            admission,
            workers: Workers::new(threads),
            deadletters,
            sinks,
            idempotency,
        }
    }

    /// Run `message` through `route`'s chain within a slot of its plant: on a mediation thread,
    /// or on this task when the chain has shown itself short ([`workers::Workers::run_chain`]).
    /// A failed message's dead letter (when asked for here) is written on a mediation thread.
    pub async fn mediate(
        &self,
        route: &Arc<Route>,
        message: Message,
        ask: Ask,
    ) -> Result<Vec<Message>, Mediated> {
        let slot = match ask.when_busy {
            WhenBusy::Wait => self.admission.wait(&route.plant, &route.name).await,
            WhenBusy::Refuse => self
                .admission
                .enter(&route.plant, &route.name)
                .await
                .map_err(Mediated::Busy)?,
        };
        tracing::debug!(route = %route.name, message_id = %message.id, "mediating");
        let settled = ask.settled;
        let trace = ask.trace;
        let ran = {
            let (record, inline) = (&route.inline, &route.meters.inline);
            let route = Arc::clone(route);
            self.workers.run_chain(record, inline, move || {
                // Log lines of this run (the plugin's) carry its trace.
                let _current = crate::telemetry::trace::Current::enter(trace.as_ref());
                let ran = if is_settled(&route, &message, settled) {
                    Ran::Settled
                } else {
                    match chain::run(&route, &message, trace.as_ref()) {
                        Ok(outputs) => Ran::Mediated(outputs),
                        // The slot is kept until the dead letter is written.
                        Err(failure) => {
                            return Ran::Failed(Box::new(FailedRun {
                                failure,
                                message,
                                trace,
                                slot,
                            }));
                        }
                    }
                };
                drop(slot);
                ran
            })
        };
        match ran.await.map_err(Mediated::Lost)? {
            Ran::Settled => Err(Mediated::Settled),
            Ran::Mediated(outputs) => Ok(outputs),
            Ran::Failed(failed) => {
                let FailedRun {
                    failure,
                    message,
                    trace,
                    slot,
                } = *failed;
                // Written on a mediation thread: a store's write never holds an async worker.
                let dead_letter = match ask.on_failure {
                    OnFailure::DeadLetterHere => {
                        let store = Arc::clone(&self.deadletters);
                        let route = Arc::clone(route);
                        self.workers
                            .run(move || {
                                let _current =
                                    crate::telemetry::trace::Current::enter(trace.as_ref());
                                let written =
                                    chain::dead_letter(&store, &route, &message, &failure);
                                (failure, written)
                            })
                            .await
                            .map_err(Mediated::Lost)?
                    }
                    OnFailure::Caller => (failure, Ok(None)),
                };
                drop(slot);
                let (failure, dead_letter) = dead_letter;
                Err(Mediated::Failed {
                    failure,
                    dead_letter,
                })
            }
        }
    }
}

/// The span of `message` at its source (named `name`, of `kind`), under the context it brought
/// (its `traceparent` header or structured CloudEvent attribute); `None` when tracing is off.
pub fn source_span(
    route: &Route,
    message: &Message,
    name: String,
    kind: crate::telemetry::trace::Kind,
) -> Option<crate::telemetry::trace::Span> {
    let tracer = crate::telemetry::trace::tracer();
    if !tracer.enabled() {
        return None;
    }
    let parent = SpanContext::of_message(&message.headers, &message.content_type, &message.body);
    let mut span = tracer.start(name, kind, parent.as_ref())?;
    span.set("millrace.plant", route.plant.as_str());
    span.set("millrace.route", route.name.as_str());
    span.set("millrace.source", route.source.as_str());
    span.set("messaging.message.id", message.id.as_str());
    Some(span)
}

/// Count a transient failure of `attempt` of `message_id` sent round again
/// (`millrace_retries_total`), and note it in the message's lineage.
pub fn retried(route: &Route, message_id: &str, attempt: u32, why: &str) {
    crate::telemetry::metrics()
        .retries
        .with(&[&route.plant, &route.name, &attempt.to_string()])
        .inc();
    crate::lineage::record(route, message_id, None, || crate::lineage::Event::Retry {
        attempt,
        reason: crate::lineage::bounded(why, crate::lineage::MAX_REASON_BYTES),
    });
}

/// Whether `settled` says the message was settled before (an unreadable store mediates).
fn is_settled(
    route: &Route,
    message: &Message,
    settled: Option<(Arc<IdempotencyStore>, String)>,
) -> bool {
    let Some((store, key)) = settled else {
        return false;
    };
    match store.processed(&route.name, &key) {
        Ok(settled) => settled,
        Err(e) => {
            tracing::error!(route = %route.name, message_id = %message.id, error = %e, "idempotency store unreadable; mediating");
            false
        }
    }
}

/// What `GET /readyz` says of one transport.
pub struct Readiness {
    /// Its key in the answer (`broker`).
    pub name: &'static str,
    /// `Ok(state)` (`connected`) or why it cannot serve now.
    pub state: Result<&'static str, String>,
    /// More facts for the answer (`outbox_waiting`).
    pub facts: Vec<(&'static str, serde_json::Value)>,
}

/// A transport whose sessions decide whether the host is ready.
pub trait Ready: Send + Sync {
    fn readiness(&self) -> Readiness;

    /// Gauges of its own for `/metrics` (e.g. the depth of the queues it reads).
    fn gauges(&self) -> Vec<Gauge> {
        Vec::new()
    }
}

/// A gauge family a transport reports when scraped.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    /// Label values (in `labels` order) and a value.
    pub samples: Vec<(Vec<String>, f64)>,
}

/// The host's long-running tasks (transport sessions and sources, outboxes, watchers), each
/// with a name: stopping waits for them, and names the ones it stopped waiting for.
#[derive(Default)]
pub struct Background {
    tasks: tokio::task::JoinSet<()>,
    running: Vec<(tokio::task::Id, &'static str)>,
}

impl Background {
    /// Run `task`, known as `name` (e.g. "amqp session").
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let id = self.tasks.spawn(task).id();
        self.running.push((id, name));
    }

    /// Wait for every task to finish, at most until `until`. Returns the names of those that had
    /// not by then, which are aborted.
    pub async fn finish(mut self, until: tokio::time::Instant) -> Vec<&'static str> {
        let finished = tokio::time::timeout_at(until, async {
            while let Some(done) = self.tasks.join_next_with_id().await {
                // A task that panicked has finished too.
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                self.running.retain(|(running, _)| *running != id);
            }
        })
        .await;
        if finished.is_ok() {
            return Vec::new();
        }
        self.tasks.abort_all();
        self.running.into_iter().map(|(_, name)| name).collect()
    }
}

/// A transport's source half (AMQP, MQTT; HTTP is the listener): started with the host, it
/// takes the messages of its routes and feeds the pipeline until `stopped`, and says whether
/// its session stands. Adding a transport is a folder implementing this and [`sinks::Sink`],
/// registered in `start`.
pub trait Source: Ready {
    /// Start in `background`; an error is configuration to fix (e.g. TLS) and stops the start.
    fn start<'a>(
        self: Arc<Self>,
        background: &'a mut Background,
        stopped: tokio::sync::watch::Receiver<bool>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
}

#[cfg(test)]
mod tests {
    use super::Background;
    use std::time::Duration;

    #[tokio::test]
    async fn finishing_background_work_names_only_the_tasks_that_did_not_finish() {
        let mut done = Background::default();
        done.spawn("quick", async {});
        done.spawn("short", tokio::time::sleep(Duration::from_millis(1)));
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        assert!(done.finish(until).await.is_empty(), "all finished");

        let (dropped, gone) = tokio::sync::oneshot::channel::<()>();
        let mut stuck = Background::default();
        stuck.spawn("stuck", async move {
            let _held = dropped;
            std::future::pending::<()>().await;
        });
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        assert_eq!(stuck.finish(until).await, vec!["stuck"]);
        // The task left unfinished was aborted: what it held is dropped.
        assert!(gone.await.is_err(), "aborted");
    }
}
