//! The broker connection (RabbitMQ via lapin): connect, declare the topology the routes use,
//! hand the session to the AMQP ingress and the outbox, and reconnect with backoff when the
//! connection or a channel is lost. Its state is the host's readiness (`/readyz`).
//!
//! Reconnecting is done here rather than by lapin's recovery: a lost session is dropped whole
//! (its unacknowledged deliveries go back to the queue at the broker) and a new connection with
//! new channels and consumers replaces it, so no half-recovered channel is ever used.

use crate::mediator::Mediator;
use crate::sink::amqp::AmqpPublisher;
use futures_lite::StreamExt;
use lapin::{Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};

/// First wait before reconnecting; doubled after each failed try up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two connection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Where the host stands with the broker.
#[derive(Clone)]
pub enum Link {
    /// Connected, topology declared, consumers running.
    Up(Session),
    /// Not connected; why, and since when.
    Down { reason: String, since: SystemTime },
}

/// One connection to the broker and what runs on it.
#[derive(Clone)]
pub struct Session {
    pub connection: Arc<Connection>,
    /// The confirm-mode publishing channel.
    pub publisher: AmqpPublisher,
    lost: mpsc::UnboundedSender<String>,
}

impl Session {
    /// Report that the session is unusable (e.g. a publish failed on a closed channel): the
    /// supervisor drops it and connects again.
    pub fn lost(&self, reason: String) {
        let _ = self.lost.send(reason);
    }
}

/// The supervisor's shared state.
pub struct BrokerLink {
    url: String,
    declare: bool,
    state: watch::Sender<Link>,
    /// Bumped by [`BrokerLink::restart`]: a session set up from routes read before a bump is
    /// not used.
    generation: std::sync::atomic::AtomicU64,
}

impl BrokerLink {
    pub fn new(url: String, declare: bool) -> BrokerLink {
        let (state, _) = watch::channel(Link::Down {
            reason: "not connected yet".into(),
            since: SystemTime::now(),
        });
        BrokerLink {
            url,
            declare,
            state,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The current state.
    pub fn link(&self) -> Link {
        self.state.borrow().clone()
    }

    /// Drop the current session (if any) so the supervisor connects again at once, declaring
    /// the topology and starting consumers for the routes as they are now. Not ready from this
    /// call until the new session's consumers run.
    pub fn restart(&self, reason: &str) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let previous = self.state.send_replace(Link::Down {
            reason: format!("reconnecting: {reason}"),
            since: SystemTime::now(),
        });
        if let Link::Up(session) = previous {
            session.lost(reason.to_string());
        }
    }

    /// Follow the state as it changes.
    pub fn watch(&self) -> watch::Receiver<Link> {
        self.state.subscribe()
    }

    /// Connect and declare every broker route's topology (unless `host.amqp_declare` is off).
    async fn connect(
        &self,
        mediator: &Mediator,
    ) -> Result<(Session, mpsc::UnboundedReceiver<String>), lapin::Error> {
        let connection = Connection::connect(
            &self.url,
            ConnectionProperties::default().with_connection_name("millrace".into()),
        )
        .await?;
        let publisher = AmqpPublisher::open(&connection).await?;
        if self.declare {
            for route in mediator.routes.all().iter().filter(|r| r.uses_broker()) {
                publisher.declare(route).await?;
            }
        }
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let mut events = connection.events_listener();
        let on_error = lost.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let lapin::Event::Error(e) = event {
                    let _ = on_error.send(format!("connection error: {e}"));
                }
            }
        });
        Ok((
            Session {
                connection: Arc::new(connection),
                publisher,
                lost,
            },
            lost_rx,
        ))
    }
}

/// Keep a session with the broker until `shutdown` turns true: connect, consume (the AMQP
/// ingress) until the session is lost, then connect again after a growing pause.
pub async fn supervise(mediator: Arc<Mediator>, mut shutdown: watch::Receiver<bool>) {
    let Some(link) = mediator.broker.as_ref().map(Arc::clone) else {
        return;
    };
    let mut pause = RECONNECT_MIN;
    while !*shutdown.borrow() {
        let generation = link.generation.load(std::sync::atomic::Ordering::SeqCst);
        let reason = match link.connect(&mediator).await {
            Ok((session, lost)) => {
                let was_up = std::sync::atomic::AtomicBool::new(false);
                let up = || {
                    if link.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
                        // The routes changed while this session was being set up.
                        session.lost("the routes changed while connecting".into());
                        return;
                    }
                    was_up.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!("connected to the broker; consuming");
                    link.state.send_replace(Link::Up(session.clone()));
                };
                let control =
                    crate::admin::broadcast::follow(Arc::clone(&mediator), &session).await;
                let ended = crate::ingress::amqp::consume(
                    Arc::clone(&mediator),
                    session.clone(),
                    lost,
                    shutdown.clone(),
                    up,
                )
                .await;
                if let Some(control) = control {
                    control.abort();
                }
                if was_up.load(std::sync::atomic::Ordering::Relaxed) {
                    pause = RECONNECT_MIN;
                }
                if *shutdown.borrow() {
                    link.state.send_replace(Link::Down {
                        reason: "the host is stopping".into(),
                        since: SystemTime::now(),
                    });
                    let _ = session
                        .connection
                        .close(200, "millrace shutting down".into())
                        .await;
                    break;
                }
                ended
            }
            Err(e) => format!("broker {}: {e}", redact(&link.url)),
        };
        tracing::warn!(reason = %reason, retry_in_ms = pause.as_millis() as u64, "broker unavailable; reconnecting");
        link.state.send_replace(Link::Down {
            reason,
            since: SystemTime::now(),
        });
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => break,
        }
        pause = (pause * 2).min(RECONNECT_MAX);
    }
}

/// The broker URL without its password, for logs and readiness answers.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("amqp://guest:secret@10.0.0.1:5672/%2f"),
            "amqp://guest:***@10.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://10.0.0.1"), "amqp://10.0.0.1");
    }
}
