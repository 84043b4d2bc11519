//! The broker connection (RabbitMQ via lapin): connect, declare the topology the routes use,
//! hand the session to the AMQP ingress and the outbox, and reconnect with backoff when the
//! connection or a channel is lost. Its state is the host's readiness (`/readyz`).
//!
//! Reconnecting is done here rather than by lapin's recovery: a lost session is dropped whole
//! (its unacknowledged deliveries go back to the queue at the broker) and a new connection with
//! new channels and consumers replaces it, so no half-recovered channel is ever used.

use super::config::AmqpTls;
use crate::amqp::publisher::AmqpPublisher;
use crate::route::Routes;
use futures_lite::StreamExt;
use lapin::{Connection, ConnectionProperties};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// First wait before reconnecting; doubled after each failed try up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two connection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Longest a connection may take to open (TCP, TLS, the AMQP handshake and login): a node that
/// takes the TCP connection and never answers (hung, or a proxy in front of a dead node) is
/// given up for the next one, as a node that refuses is.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the host waits for the broker to answer the close of a channel or a connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// How the host declares its queues.
    pub queues: super::config::Queues,
    lost: mpsc::UnboundedSender<String>,
}

impl Session {
    /// Report that the session is unusable (e.g. a publish failed on a closed channel): the
    /// supervisor drops it and connects again.
    pub fn lost(&self, reason: String) {
        let _ = self.lost.send(reason);
    }
}

/// Whether `error` ended one channel only: an AMQP soft error, which the broker reports by
/// closing that channel, not the connection.
fn channel_only(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Soft(_))
    )
}

/// Close `channel` (within [`CLOSE_TIMEOUT`]) before it is dropped. A channel only dropped is
/// closed by lapin in the background, and when the connection is closed meanwhile that close
/// finds the channel closing and lapin fails the whole connection ("invalid channel state:
/// Closing") instead of closing it.
pub async fn close_channel(channel: &lapin::Channel, why: &str) {
    if tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, why.into()))
        .await
        .is_err()
    {
        tracing::warn!(
            channel = channel.id(),
            within_s = CLOSE_TIMEOUT.as_secs(),
            "the broker did not answer a channel's close; left to close with the connection"
        );
    }
}

/// Close `connection` (within [`CLOSE_TIMEOUT`]): a broker that does not answer the close is
/// not waited for, the connection ends with its last handle either way.
pub async fn close_connection(connection: &Connection, why: &str) {
    if tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, why.into()))
        .await
        .is_err()
    {
        tracing::warn!(
            within_s = CLOSE_TIMEOUT.as_secs(),
            "the broker did not answer the connection's close; going on without"
        );
    }
}

/// Open a connection to `url` (its TLS material read now), however long it takes: through
/// [`open_at`] only.
async fn open(url: &str, tls: &AmqpTls, name: &str) -> Result<Connection, OpenError> {
    let config = tls.load().map_err(OpenError::Files)?;
    // Frames of at most MAX_FRAME_BYTES, whatever the URL or the broker propose: a frame bounds
    // how deeply a sender can nest a message's headers (super::THREAD_STACK_BYTES).
    let mut uri: lapin::uri::AMQPUri = url.parse().map_err(OpenError::Url)?;
    let frame_max = uri
        .query
        .frame_max
        .filter(|&n| n > 0)
        .unwrap_or(super::MAX_FRAME_BYTES);
    uri.query.frame_max = Some(frame_max.min(super::MAX_FRAME_BYTES));
    let runtime = lapin::runtime::default_runtime().map_err(OpenError::Broker)?;
    // lapin (4.12.3) opens the socket on its I/O thread while this task registers the reply to the
    // protocol header it then awaits. A refusal that came before the registration was never
    // given to that reply: the attempt waited forever, and with it every later open to the node
    // (`Attempts`). The I/O thread opens the socket only once the first poll has registered it.
    let (registered, gate) = watch::channel(false);
    let connecting = lapin::Connection::connector(
        uri,
        runtime,
        async move |uri, runtime| {
            // Set before the sender is dropped (`wait_for` reads the value first), unless the
            // attempt ended before its first poll did.
            let mut gate = gate.clone();
            if gate.wait_for(|registered| *registered).await.is_err() {
                return Err(std::io::Error::other("the connection attempt was dropped").into());
            }
            lapin::tcp::AMQPUriTcpExt::connect_with_config_async(&uri, config.as_ref(), &runtime)
                .await
                .map_err(|e| {
                    if runtime.is_runtime_shutdown_error(&e) {
                        lapin::ErrorKind::RuntimeShutdownError(Arc::new(e)).into()
                    } else {
                        e.into()
                    }
                })
        },
        ConnectionProperties::default().with_connection_name(name.into()),
    );
    let mut connecting = std::pin::pin!(connecting);
    let first = std::future::poll_fn(|cx| Poll::Ready(connecting.as_mut().poll(cx))).await;
    registered.send_replace(true);
    match first {
        Poll::Ready(opened) => opened,
        Poll::Pending => connecting.await,
    }
    .map_err(OpenError::Broker)
}

/// Open a connection to `url`, node `at` of `attempts`, within [`OPEN_TIMEOUT`].
async fn open_at(
    attempts: &Attempts<Result<Connection, OpenError>>,
    at: usize,
    url: &str,
    tls: &AmqpTls,
    name: &str,
) -> Result<Connection, OpenError> {
    let (url, tls, name) = (url.to_string(), tls.clone(), name.to_string());
    let opening = || async move { open(&url, &tls, &name).await };
    match attempts.outcome(at, OPEN_TIMEOUT, opening).await {
        Some(Ok(opened)) => opened,
        Some(Err(failed)) => Err(OpenError::Failed(failed.to_string())),
        None => Err(OpenError::Unanswered),
    }
}

/// Connection attempts given up on after [`OPEN_TIMEOUT`], by node. lapin cannot cancel an
/// attempt (its I/O thread and socket live until the node answers or closes the connection), so
/// the next open to that node waits on the attempt still pending there instead of starting
/// another: a node that never answers holds at most one thread and one socket of the host.
pub struct Attempts<T>(std::sync::Mutex<std::collections::HashMap<usize, JoinHandle<T>>>);

impl<T> Default for Attempts<T> {
    fn default() -> Self {
        Attempts(std::sync::Mutex::default())
    }
}

impl<T: Send + 'static> Attempts<T> {
    /// The outcome of the attempt at node `at` (the one pending there, else a new one made by
    /// `start`), or `None` when it has not come within `limit`; the attempt is then kept.
    pub async fn outcome<F>(
        &self,
        at: usize,
        limit: Duration,
        start: impl FnOnce() -> F,
    ) -> Option<Result<T, tokio::task::JoinError>>
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let pending = self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&at);
        let mut attempt = pending.unwrap_or_else(|| tokio::spawn(start()));
        match tokio::time::timeout(limit, &mut attempt).await {
            Ok(outcome) => Some(outcome),
            Err(_) => {
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(at, attempt);
                None
            }
        }
    }
}

/// Open a connection to the first of `urls` that takes it (the nodes of a cluster), starting
/// at `first`, each within [`OPEN_TIMEOUT`]. Returns the connection and the index of its URL,
/// or the last error.
pub async fn open_any(
    urls: &[String],
    first: usize,
    tls: &AmqpTls,
    name: &str,
    attempts: &Attempts<Result<Connection, OpenError>>,
) -> Result<(Connection, usize), String> {
    let mut last = String::from("host.amqp lists no broker URL");
    for n in 0..urls.len() {
        let at = (first + n) % urls.len();
        match open_at(attempts, at, &urls[at], tls, name).await {
            Ok(connection) => return Ok((connection, at)),
            Err(e) => last = format!("broker {}: {e}", redact(&urls[at])),
        }
        if n + 1 < urls.len() {
            tracing::warn!(error = %last, "a broker node did not take the connection; trying the next");
        }
    }
    Err(last)
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The TLS files did not load.
    #[error("{0}")]
    Files(String),
    /// The broker URL does not parse (checked with the configuration, so not expected here).
    #[error("the broker URL: {0}")]
    Url(String),
    /// The broker could not be reached, refused the login, or its certificate.
    #[error("{0}")]
    Broker(lapin::Error),
    /// The connection was not open within [`OPEN_TIMEOUT`].
    #[error("the connection did not open within {} s", OPEN_TIMEOUT.as_secs())]
    Unanswered,
    /// The attempt's task ended without an outcome (a panic in the client).
    #[error("the connection attempt failed: {0}")]
    Failed(String),
}

impl OpenError {
    /// The connection was made and then cut (reset, aborted, closed): not a broker that is away.
    pub fn is_cut(&self) -> bool {
        let OpenError::Broker(e) = self else {
            return false;
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                )
            {
                return true;
            }
            source = err.source();
        }
        false
    }

    /// A TLS problem (a certificate the link does not accept, a handshake the broker refused, TLS
    /// files that do not load): configuration to fix, not a broker that is away.
    pub fn is_tls(&self) -> bool {
        match self {
            OpenError::Files(_) => true,
            OpenError::Broker(e) => {
                let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
                while let Some(err) = source {
                    if err.is::<rustls::Error>() {
                        return true;
                    }
                    if let Some(io) = err.downcast_ref::<std::io::Error>()
                        && let Some(inner) = io.get_ref()
                        && inner.is::<rustls::Error>()
                    {
                        return true;
                    }
                    source = err.source();
                }
                false
            }
            OpenError::Url(_) | OpenError::Unanswered | OpenError::Failed(_) => false,
        }
    }
}

/// The supervisor's shared state.
pub struct BrokerLink {
    /// One URL, or one per node of a cluster.
    urls: Vec<String>,
    /// The node to try first at the next connection: the one after the node last lost.
    next: std::sync::atomic::AtomicUsize,
    tls: AmqpTls,
    declare: bool,
    queues: super::config::Queues,
    /// What outputs carry and how long a confirm may take.
    publishing: super::publisher::Publishing,
    state: watch::Sender<Link>,
    /// Bumped by [`BrokerLink::restart`]: a session set up from routes read before a bump is
    /// not used.
    generation: std::sync::atomic::AtomicU64,
    /// Attempts to open a connection still pending at a node that did not answer in time.
    attempts: Attempts<Result<Connection, OpenError>>,
}

impl BrokerLink {
    pub fn new(
        urls: Vec<String>,
        tls: AmqpTls,
        declare: bool,
        queues: super::config::Queues,
        publishing: super::publisher::Publishing,
    ) -> BrokerLink {
        let (state, _) = watch::channel(Link::Down {
            reason: "not connected yet".into(),
            since: SystemTime::now(),
        });
        BrokerLink {
            urls,
            next: std::sync::atomic::AtomicUsize::new(0),
            tls,
            declare,
            queues,
            publishing,
            state,
            generation: std::sync::atomic::AtomicU64::new(0),
            attempts: Attempts::default(),
        }
    }

    /// How the host declares its queues.
    pub fn queues(&self) -> super::config::Queues {
        self.queues
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

    /// Connect (to the first node that takes the connection, from the one after the node last
    /// lost) and declare every broker route's topology (unless `host.amqp_declare` is off).
    async fn connect(
        &self,
        routes: &Routes,
    ) -> Result<(Session, mpsc::UnboundedReceiver<String>), String> {
        use std::sync::atomic::Ordering;
        let first = self.next.load(Ordering::Relaxed);
        let (connection, at) =
            open_any(&self.urls, first, &self.tls, "millrace", &self.attempts).await?;
        // A session lost later starts the next connection at the following node.
        self.next.store(at + 1, Ordering::Relaxed);
        if self.urls.len() > 1 {
            tracing::info!(broker = %redact(&self.urls[at]), "connected to a node of the cluster");
        }
        self.declare_on(connection, routes)
            .await
            .map_err(|e| format!("broker {}: {e}", redact(&self.urls[at])))
    }

    /// Check, at start, that the link's TLS works: a certificate problem is configuration to
    /// fix and stops the start (a broker that is away is waited for instead).
    pub async fn check_tls(&self) -> Result<(), String> {
        let Some(url) = self.urls.first() else {
            return Ok(());
        };
        if !url.starts_with("amqps://") {
            return Ok(());
        }
        // A broker that refuses the host's certificate sends an alert and closes; the host may
        // read the alert (a TLS error) or, when its next write crossed the close, only see the
        // connection cut. Cut right after the handshake every time: the same refusal.
        const TRIES: usize = 3;
        let mut cut = Vec::new();
        for _ in 0..TRIES {
            match open_at(&self.attempts, 0, url, &self.tls, "millrace (TLS check)").await {
                Ok(connection) => {
                    close_connection(&connection, "TLS checked").await;
                    return Ok(());
                }
                Err(e) if e.is_tls() => {
                    return Err(format!(
                        "broker {}: TLS: {e}; see [amqp_tls] (ca, cert, key)",
                        redact(url)
                    ));
                }
                Err(e) if e.is_cut() => cut.push(e.to_string()),
                // Away or slow: the supervisor keeps trying.
                _ => return Ok(()),
            }
        }
        Err(format!(
            "broker {}: the broker closed the connection after the TLS handshake {TRIES} times ({}); it probably refuses this host's client certificate ([amqp_tls] cert: issued by a CA the broker trusts?)",
            redact(url),
            cut.last().map(String::as_str).unwrap_or_default()
        ))
    }

    async fn declare_on(
        &self,
        connection: Connection,
        routes: &Routes,
    ) -> Result<(Session, mpsc::UnboundedReceiver<String>), lapin::Error> {
        let connection = Arc::new(connection);
        let publisher = AmqpPublisher::open(&connection, self.publishing).await?;
        if self.declare {
            let mut declarer = super::topology::Declarer::open(&connection, self.queues).await?;
            for route in routes.all().iter().filter(|r| r.uses_broker()) {
                declarer.route(route).await?;
            }
            declarer.close().await;
        }
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let mut events = connection.events_listener();
        let on_error = lost.clone();
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    // The broker closed one channel (e.g. a read it refused): whoever used that
                    // channel sees its own call fail and decides; the session goes on.
                    lapin::Event::Error(e) if channel_only(&e) => {
                        tracing::info!(error = %e, "the broker closed a channel; the session goes on");
                    }
                    lapin::Event::Error(e) => {
                        let _ = on_error.send(format!("connection error: {e}"));
                    }
                    // Flow control (a memory or disk alarm): publishes wait, unconfirmed, and
                    // the confirm timeout does not run meanwhile.
                    lapin::Event::ConnectionBlocked(reason) => {
                        tracing::warn!(%reason, "the broker blocks this connection's publishes; they wait");
                    }
                    lapin::Event::ConnectionUnblocked => {
                        tracing::info!("the broker no longer blocks this connection's publishes");
                    }
                    _ => {}
                }
            }
        });
        Ok((
            Session {
                connection,
                publisher,
                queues: self.queues,
                lost,
            },
            lost_rx,
        ))
    }
}

/// Handed to whatever runs on a session: call [`Ready::up`] once it serves (consumers
/// started); the link then reports the session up.
pub struct Ready {
    link: Arc<BrokerLink>,
    generation: u64,
    session: Session,
    was_up: Arc<std::sync::atomic::AtomicBool>,
}

impl Ready {
    /// The session serves: report it up (unless the routes changed while it was set up).
    pub fn up(self) {
        if self
            .link
            .generation
            .load(std::sync::atomic::Ordering::SeqCst)
            != self.generation
        {
            self.session
                .lost("the routes changed while connecting".into());
            return;
        }
        self.was_up
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("connected to the broker; consuming");
        crate::telemetry::metrics()
            .connection_up
            .with(&["amqp"])
            .inc();
        self.link.state.send_replace(Link::Up(self.session));
    }
}

/// Keep a session with the broker until `shutdown` turns true: connect (declaring the topology
/// of `routes`), run `serve` on the session until it returns why it ended (the session was
/// lost: `lost` said so, or a consumer ended), then connect again after a growing pause.
pub async fn supervise<Serve, Served>(
    link: Arc<BrokerLink>,
    routes: Arc<Routes>,
    mut shutdown: watch::Receiver<bool>,
    serve: Serve,
) where
    Serve: Fn(Session, mpsc::UnboundedReceiver<String>, Ready) -> Served,
    Served: std::future::Future<Output = String>,
{
    let mut pause = RECONNECT_MIN;
    let metrics = crate::telemetry::metrics();
    while !*shutdown.borrow() {
        let generation = link.generation.load(std::sync::atomic::Ordering::SeqCst);
        // Stopping does not wait for a connection being made (a broker slow to answer).
        let connected = tokio::select! {
            connected = link.connect(&routes) => connected,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let reason = match connected {
            Ok((session, lost)) => {
                let was_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let ready = Ready {
                    link: Arc::clone(&link),
                    generation,
                    session: session.clone(),
                    was_up: Arc::clone(&was_up),
                };
                let ended = serve(session.clone(), lost, ready).await;
                let counted = if was_up.load(std::sync::atomic::Ordering::Relaxed) {
                    pause = RECONNECT_MIN;
                    &metrics.connection_lost
                } else {
                    &metrics.connection_failed
                };
                if !*shutdown.borrow() {
                    counted.with(&["amqp"]).inc();
                }
                if *shutdown.borrow() {
                    link.state.send_replace(Link::Down {
                        reason: "the host is stopping".into(),
                        since: SystemTime::now(),
                    });
                    close_connection(&session.connection, "millrace shutting down").await;
                    break;
                }
                ended
            }
            Err(e) => {
                metrics.connection_failed.with(&["amqp"]).inc();
                e
            }
        };
        // The state first: once the warning is out, /readyz names the same reason.
        link.state.send_replace(Link::Down {
            reason: reason.clone(),
            since: SystemTime::now(),
        });
        tracing::warn!(reason = %reason, retry_in_ms = pause.as_millis() as u64, "broker unavailable; reconnecting");
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

    #[tokio::test]
    async fn a_node_that_does_not_answer_holds_one_attempt_and_its_late_answer_is_taken() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let attempts = Attempts::<u32>::default();
        let started = AtomicUsize::new(0);
        let (answer, answered) = tokio::sync::oneshot::channel::<u32>();
        let mut answered = Some(answered);
        for _ in 0..3 {
            let outcome = attempts
                .outcome(0, Duration::from_millis(20), || {
                    started.fetch_add(1, Ordering::SeqCst);
                    let answered = answered.take().expect("the answer is taken once");
                    async move { answered.await.unwrap_or(0) }
                })
                .await;
            assert!(outcome.is_none(), "no answer yet");
        }
        assert_eq!(
            started.load(Ordering::SeqCst),
            1,
            "one attempt, waited on 3 times"
        );
        answer.send(7).unwrap();
        let late = attempts
            .outcome(0, Duration::from_secs(60), || -> std::future::Ready<u32> {
                panic!("a second attempt at a node with one pending")
            })
            .await;
        assert_eq!(late.unwrap().unwrap(), 7, "the pending attempt's answer");
        let other = attempts
            .outcome(1, Duration::from_secs(60), || std::future::ready(9))
            .await;
        assert_eq!(other.unwrap().unwrap(), 9, "another node: its own attempt");
        let again = attempts
            .outcome(0, Duration::from_secs(60), || std::future::ready(8))
            .await;
        assert_eq!(
            again.unwrap().unwrap(),
            8,
            "answered: the next open is a new attempt"
        );
    }

    /// lapin 4.12.3 opens the TCP connection on its I/O thread while the caller registers the
    /// reply it awaits; a refusal that came in between left that reply unanswered and the attempt
    /// waiting forever. The window is a few instructions wide and cannot be forced from outside
    /// lapin: this repeats refusals, each to be answered (before the gate, 1 of 7 runs of 20,000
    /// beside three busy loops was left waiting; none of 6 such runs after it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_connection_is_reported_never_left_waiting() {
        const ATTEMPTS: usize = 2000;
        // Bound, never listening: every connection to it is refused, and no one else can take it.
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = held.local_addr().unwrap().port();
        let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let tls = AmqpTls::default();
        for n in 1..=ATTEMPTS {
            // A guard against the hang, not a timing assertion: a refusal is answered at once.
            match tokio::time::timeout(OPEN_TIMEOUT, open(&url, &tls, "test")).await {
                Ok(Err(OpenError::Broker(_))) => {}
                Ok(Err(other)) => panic!("not the broker's refusal: {other}"),
                Ok(Ok(_)) => panic!("nothing listens on {port}"),
                Err(_) => panic!("attempt {n} of {ATTEMPTS} was left waiting"),
            }
        }
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("amqp://guest:secret@10.0.0.1:5672/%2f"),
            "amqp://guest:***@10.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://10.0.0.1"), "amqp://10.0.0.1");
    }
}
