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
    /// The plugin registry could not be opened or its active versions restored.
    #[error("plugin registry: {0}")]
    Registry(#[from] crate::deploy::DeployError),
    /// The state store could not be opened.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The admin API or TLS cannot be served as configured (no credentials, insecure beyond
    /// loopback, TLS files that do not load).
    #[error("{0}")]
    Admin(String),
    /// A listener (messages or admin) could not be bound.
    #[error("cannot listen on {addr} ({listener}): {source}; pick another address with {flag}")]
    Bind {
        addr: SocketAddr,
        /// `HTTP` or `admin API`.
        listener: &'static str,
        /// Where the address comes from.
        flag: &'static str,
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
    /// The broker session and its state, when a route uses the broker.
    pub broker: Option<Arc<crate::broker::BrokerLink>>,
    /// Writer of settled AMQP delivery ids (group commit); with `idempotency`.
    pub settled: Option<crate::idempotency::SettledLog>,
    /// Outputs of HTTP-in/broker-out routes waiting for the broker; when such a route exists.
    pub outbox: Option<Arc<crate::outbox::Outbox>>,
    /// Plugin versions per plant: deploy, activate, roll back.
    pub deployer: crate::deploy::Deployer,
    /// The threads chains run on (`host.max_in_flight` of them).
    pub workers: crate::chain::Workers,
    /// Slots of the host, its plants and routes: bounds the threads and plugin instances in use
    /// at once, and each plant's share of them.
    pub admission: crate::admission::Admission,
    /// The plugin versions' circuit breakers.
    pub quarantines: Arc<crate::quarantine::Quarantines>,
    /// What each listener accepts (connections, header and body timeouts).
    pub connections: crate::ingress::connections::ConnectionLimits,
    /// The plants' shared state, for routes built again by a configuration reload.
    pub state: Arc<StateStore>,
    /// The configuration file, read again by a reload.
    pub config_path: std::path::PathBuf,
    /// The settings only a restart applies, as started ([`Config::restart_only`]).
    pub restart_only: Vec<(&'static str, String)>,
    /// This host's name among hosts sharing a broker (`host.id`).
    pub host_id: String,
}

impl Mediator {
    /// Load every route of `config` (compiling plugins or taking them from the compile cache
    /// under the data directory) and open the dead-letter store.
    pub fn start(config: &Config) -> Result<Mediator, StartError> {
        let engine = PluginEngine::new(Some(&config.data_dir.join("compile-cache")))
            .map_err(StartError::Engine)?;
        let state = Arc::new(StateStore::open(&config.data_dir)?);
        let quarantines = Arc::new(crate::quarantine::Quarantines::new(config.quarantine));
        let routes = Routes::build(config, &engine, &state, &quarantines)?;

        let registry = crate::registry::Registry::open(&config.data_dir)
            .map_err(crate::deploy::DeployError::from)?;
        let deployer = crate::deploy::Deployer::new(
            registry,
            crate::deploy::GateLimits {
                intake: config.intake,
                budget: config.gate_budget,
                cache_dir: config.data_dir.join("compile-cache"),
                scratch_dir: crate::plugin::intake::scratch_dir(&config.data_dir),
            },
        );
        deployer.set_trust(config.trust.clone());
        deployer.restore(&engine, &routes)?;
        let deadletters = Arc::new(DeadLetterStore::open(&config.data_dir)?);
        let idempotency = if config.idempotency_window.is_zero() {
            None
        } else {
            Some(Arc::new(IdempotencyStore::open_bounded(
                &config.data_dir,
                config.idempotency_window,
                config.idempotency_bounds,
            )?))
        };
        let admission = crate::admission::Admission::new(config);
        apply_quotas(config, &state);
        let broker = match &config.amqp {
            Some(url) if routes.all().iter().any(|r| r.uses_broker()) => {
                Some(Arc::new(crate::broker::BrokerLink::new(
                    url.clone(),
                    config.amqp_tls.clone(),
                    config.amqp_declare,
                )))
            }
            _ => None,
        };
        let outbox =
            if routes.all().iter().any(|r| {
                r.source == crate::config::Source::Http && r.sink == crate::config::Sink::Amqp
            }) {
                Some(Arc::new(crate::outbox::Outbox::open(
                    &config.data_dir,
                    config.outbox_max_messages,
                )?))
            } else {
                None
            };
        let settled = idempotency
            .as_ref()
            .map(|store| store.settled_log())
            .transpose()?;
        Ok(Mediator {
            deployer,
            workers: crate::chain::Workers::new(config.max_in_flight),
            broker,
            settled,
            outbox,
            engine,
            routes,
            deadletters,
            webhooks: crate::sink::http::WebhookClient::default(),
            idempotency,
            admission,
            quarantines,
            connections: config.connections,
            state,
            config_path: config.path.clone(),
            restart_only: config.restart_only(),
            host_id: config.host_id.clone(),
        })
    }
}

/// Give each plant's state its quota from `config` (at start and on a reload).
pub fn apply_quotas(config: &Config, state: &StateStore) {
    for (plant, limits) in &config.plant_limits {
        state.set_quota(
            plant,
            crate::state::Quota {
                max_keys: limits.state_max_keys,
                max_bytes: limits.state_max_bytes,
            },
        );
    }
}

/// Run the host on `config` until SIGTERM or SIGINT; then stop accepting, finish in-flight
/// messages and return.
pub async fn run(
    config: Config,
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    insecure_admin: bool,
) -> Result<(), StartError> {
    let mediator = Arc::new(tokio::task::block_in_place(|| Mediator::start(&config))?);
    if let Some((hits, misses)) = mediator.engine.cache_stats() {
        tracing::info!(hits, misses, "plugins loaded (compile cache hits/misses)");
    }
    let tls = config
        .tls
        .as_ref()
        .map(crate::ingress::tls::Tls::load)
        .transpose()
        .map_err(StartError::Admin)?
        .map(Arc::new);
    let tls_on = |listener: bool| tls.clone().filter(|_| listener);
    let http_tls = tls_on(config.tls.as_ref().is_some_and(|t| t.http));
    let admin_tls = tls_on(config.tls.as_ref().is_some_and(|t| t.admin));
    let http_scheme = if http_tls.is_some() { "https" } else { "http" };
    let addr = http.unwrap_or(config.http);
    let (listener, bound) = listen(addr, "HTTP", "--http or host.http").await?;
    let mut routes: Vec<_> = mediator
        .routes
        .all()
        .iter()
        .map(|r| r.name.clone())
        .collect();
    routes.sort();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The broker is reached in the background (with backoff): the host serves HTTP, and takes
    // HTTP-in/broker-out messages into the outbox, while it is away. `/readyz` says which.
    let mut background = tokio::task::JoinSet::new();
    if let Some(link) = mediator.broker.as_ref().map(Arc::clone) {
        link.check_tls().await.map_err(StartError::Admin)?;
        background.spawn(crate::broker::supervise(
            Arc::clone(&mediator),
            stopped.clone(),
        ));
        if let Some(outbox) = mediator.outbox.as_ref().map(Arc::clone) {
            let stopped = stopped.clone();
            background.spawn(async move { outbox.drain(&link, stopped).await });
        }
    }
    // Watching starts before the host says it listens, so nothing saved or dropped after
    // that is missed.
    if let Some(watched) = config
        .drop_dir
        .as_deref()
        .and_then(|dir| crate::admin::drop::watch(&mediator, dir, config.settle))
    {
        background.spawn(crate::admin::drop::serve(
            Arc::clone(&mediator),
            watched,
            stopped.clone(),
        ));
    }
    if mediator.quarantines.policy().action == crate::quarantine::Action::Rollback {
        background.spawn(roll_back_quarantined(
            Arc::clone(&mediator),
            stopped.clone(),
        ));
    }
    let config_file = config
        .watch_config
        .then(|| crate::admin::reload::watch_file(&config.path, config.settle))
        .flatten();
    background.spawn(crate::admin::reload::serve(
        Arc::clone(&mediator),
        config_file,
        stopped.clone(),
    ));
    if let Some(addr) = admin.or(config.admin) {
        let access = crate::admin::auth::Access::new(
            config.admin_access.tokens.clone(),
            config.admin_access.tokens_file.clone(),
            config.admin_access.allowed_hosts.clone(),
            insecure_admin,
        );
        if insecure_admin && !addr.ip().is_loopback() {
            return Err(StartError::Admin(format!(
                "--insecure-admin is for local development only: bind the admin API to a loopback address (it is {addr})"
            )));
        }
        if !access.usable() {
            return Err(StartError::Admin(
                "the admin API needs credentials: add [[admin.tokens]] (`millrace admin token` makes one) or admin.tokens_file, or run with --insecure-admin for local development".into(),
            ));
        }
        let (listener, bound) = listen(addr, "admin API", "--admin or host.admin").await?;
        if insecure_admin {
            tracing::warn!(
                "admin API on http://{bound} WITHOUT AUTHENTICATION (--insecure-admin): anyone who reaches it may deploy code"
            );
        } else if !bound.ip().is_loopback() && admin_tls.is_none() {
            tracing::warn!(
                "admin API bound to {bound} beyond loopback without TLS: its tokens travel in clear; bind it to 127.0.0.1 or put a TLS proxy in front"
            );
        }
        let audit = crate::admin::audit::AuditLog::open(&config.data_dir)?;
        let scheme = if admin_tls.is_some() { "https" } else { "http" };
        tracing::info!("admin API on {scheme}://{bound}");
        println!("millrace: admin on {scheme}://{bound}");
        background.spawn(crate::admin::serve(
            listener,
            Arc::new(crate::admin::AdminApi {
                mediator: Arc::clone(&mediator),
                access,
                audit,
                bound,
            }),
            admin_tls,
            stopped.clone(),
        ));
    }
    tracing::info!(routes = %routes.join(","), "millrace listening on {http_scheme}://{bound}");
    // One stable line on stdout for scripts and tests.
    println!("millrace: listening on {http_scheme}://{bound}");
    let mut http_stop = stopped.clone();
    let http = ingress::http::serve(listener, mediator, http_tls, async move {
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
    while background.join_next().await.is_some() {}
    tracing::info!("millrace stopped");
    Ok(())
}

/// With `limits.quarantine_action = "rollback"`: roll each plant whose plugin version was
/// quarantined back to the version active before (announced to other hosts like any
/// activation); a plant with no earlier version keeps the quarantine.
async fn roll_back_quarantined(
    mediator: Arc<Mediator>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tripped = mediator.quarantines.subscribe();
    loop {
        let subject = tokio::select! {
            s = tripped.recv() => match s { Some(s) => s, None => return },
            _ = shutdown.changed() => return,
        };
        let m = Arc::clone(&mediator);
        let (plant, plugin) = (subject.plant.clone(), subject.plugin.clone());
        let rolled = tokio::task::spawn_blocking(move || {
            m.deployer
                .rollback(&m.engine, &m.routes, &plant, &plugin, "quarantine")
        })
        .await;
        match rolled {
            Ok(Ok(activated)) => {
                tracing::warn!(plant = %subject.plant, plugin = %subject.plugin, from = %subject.version, to = %activated.activation.version, "quarantined version rolled back");
                crate::admin::broadcast::announce(&mediator, &activated.activation).await;
            }
            Ok(Err(e)) => {
                tracing::error!(plant = %subject.plant, plugin = %subject.plugin, error = %e, "quarantined version not rolled back; it stays quarantined");
            }
            Err(e) => tracing::error!(error = %e, "the rollback task failed"),
        }
    }
}

/// Bind `addr` for `listener` (named, with the `flag` that sets it, if that fails); the
/// listener and the address it got.
async fn listen(
    addr: SocketAddr,
    listener: &'static str,
    flag: &'static str,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let failed = |source| StartError::Bind {
        addr,
        listener,
        flag,
        source,
    };
    let bound = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let local = bound.local_addr().map_err(failed)?;
    Ok((bound, local))
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
