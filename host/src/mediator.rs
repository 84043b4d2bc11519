//! The running host: the engine, the route table, the state and dead-letter stores, built from a
//! configuration; and `run`, which serves the ingresses until SIGTERM/SIGINT.

use crate::config::{Config, ConfigErrors};
use crate::deadletter::DeadLetterStore;
use crate::idempotency::IdempotencyStore;
use crate::ingress;
use crate::plugin::engine::PluginEngine;
use crate::route::Routes;
use crate::state::StateStore;
use std::net::SocketAddr;
use std::sync::Arc;

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration or a plugin it names is wrong.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The Wasm engine could not be set up.
    #[error("{0:#}")]
    Engine(anyhow::Error),
    /// A file of the embedded store (dead letters, kept answers) could not be opened.
    #[error(transparent)]
    Store(#[from] crate::durable::StoreError),
    /// The state store could not be opened.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The broker could not be reached or its topology not declared.
    #[error("{0}; check host.amqp and that the broker runs")]
    Broker(String),
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another address with --http or host.http")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Everything a message needs on its way through the host.
pub struct Mediator {
    pub engine: PluginEngine,
    pub routes: Routes,
    pub deadletters: Arc<DeadLetterStore>,
    /// Client of the routes whose sink is `http`.
    pub webhooks: crate::sink::http::WebhookClient,
    /// Answers to requests with an `Idempotency-Key`; `None` when the window is 0.
    pub idempotency: Option<Arc<IdempotencyStore>>,
    /// One permit per message being mediated (`host.max_in_flight`); bounds the threads and
    /// plugin instances in use at once. Waiting messages queue in arrival order.
    pub slots: Arc<tokio::sync::Semaphore>,
}

impl Mediator {
    /// Load every route of `config` (compiling plugins or taking them from the compile cache
    /// under the data directory) and open the dead-letter store.
    pub fn start(config: &Config) -> Result<Mediator, StartError> {
        let engine = PluginEngine::new(Some(&config.data_dir.join("compile-cache")))
            .map_err(StartError::Engine)?;
        let state = Arc::new(StateStore::open(&config.data_dir)?);
        let routes = Routes::build(config, &engine, &state)?;
        let deadletters = Arc::new(DeadLetterStore::open(&config.data_dir)?);
        let idempotency = if config.idempotency_window.is_zero() {
            None
        } else {
            Some(Arc::new(IdempotencyStore::open(
                &config.data_dir,
                config.idempotency_window,
            )?))
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight));
        Ok(Mediator {
            engine,
            routes,
            deadletters,
            webhooks: crate::sink::http::WebhookClient::default(),
            idempotency,
            slots,
        })
    }
}

/// Run the host on `config` until SIGTERM or SIGINT; then stop accepting, finish in-flight
/// messages and return.
pub async fn run(config: Config, http: Option<SocketAddr>) -> Result<(), StartError> {
    let mediator = Arc::new(tokio::task::block_in_place(|| Mediator::start(&config))?);
    if let Some((hits, misses)) = mediator.engine.cache_stats() {
        tracing::info!(hits, misses, "plugins loaded (compile cache hits/misses)");
    }
    let addr = http.unwrap_or(config.http);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let mut routes: Vec<_> = mediator.routes.iter().map(|r| r.name.clone()).collect();
    routes.sort();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let uses_broker = mediator
        .routes
        .iter()
        .any(|r| r.source == crate::config::Source::Amqp || r.sink == crate::config::Sink::Amqp);
    let broker = match (&config.amqp, uses_broker) {
        (Some(url), true) => {
            let (connected, ready) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(ingress::amqp::serve(
                Arc::clone(&mediator),
                url.clone(),
                connected,
                stopped.clone(),
            ));
            match ready.await {
                Ok(Ok(())) => tracing::info!("connected to the broker; consuming"),
                Ok(Err(e)) => return Err(StartError::Broker(e)),
                Err(_) => return Err(StartError::Broker("the broker task ended".into())),
            }
            Some(task)
        }
        _ => None,
    };
    tracing::info!(routes = %routes.join(","), "millrace listening on http://{bound}");
    // One stable line on stdout for scripts and tests.
    println!("millrace: listening on http://{bound}");
    let mut http_stop = stopped.clone();
    let http = ingress::http::serve(listener, mediator, async move {
        let _ = http_stop.changed().await;
    });
    tokio::pin!(http);
    tokio::select! {
        () = &mut http => {}
        () = shutdown_signal() => {
            let _ = stop.send(true);
            http.await;
        }
    }
    let _ = stop.send(true);
    if let Some(task) = broker {
        let _ = task.await;
    }
    tracing::info!("millrace stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
