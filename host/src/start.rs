//! Starting the host: the pipeline, the control plane and the transports, built from a
//! configuration; and `run`, which serves them until SIGTERM/SIGINT.

use crate::config::{Config, ConfigErrors};
use crate::deadletter::DeadLetterStore;
use crate::idempotency::IdempotencyStore;

use crate::config::Sink;
use crate::control::Control;
use crate::http::connections::ConnectionLimits;
use crate::http::source::HttpSource;
use crate::http::webhook::WebhookClient;
use crate::pipeline::Pipeline;
use crate::pipeline::sinks::Sinks;
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
    Registry(#[from] crate::control::deploy::DeployError),
    /// The state store could not be opened.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The admin API or TLS cannot be served as configured (no credentials, insecure beyond
    /// loopback, TLS files that do not load).
    #[error("{0}")]
    Admin(String),
    /// The SIGTERM or SIGINT handler could not be installed.
    #[error("cannot catch SIGTERM and SIGINT: {0}")]
    Signals(#[source] std::io::Error),
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

/// A started host: the pipeline every transport feeds, the control plane, and the broker
/// transport when a route uses the broker.
pub struct Host {
    pub pipeline: Arc<Pipeline>,
    pub control: Arc<Control>,
    /// The transports' sources (AMQP, MQTT) the routes use.
    pub sources: Vec<Arc<dyn crate::pipeline::Source>>,
}

impl Host {
    /// Load every route of `config` (compiling plugins or taking them from the compile cache
    /// under the data directory) and open the stores.
    pub fn start(config: &Config) -> Result<Host, StartError> {
        let engine = Arc::new(
            PluginEngine::with_pool(Some(&config.compile_cache), config.pool())
                .map_err(StartError::Engine)?,
        );
        let state = Arc::new(StateStore::open(&config.data_dir)?);
        let quarantines = Arc::new(crate::quarantine::Quarantines::new(config.quarantine));
        let routes = Arc::new(Routes::build(config, &engine, &state, &quarantines)?);

        let registry = crate::control::registry::Registry::open(&config.data_dir)
            .map_err(crate::control::deploy::DeployError::from)?;
        let deployer = Arc::new(crate::control::deploy::Deployer::new(
            registry,
            &config.host_id,
            crate::control::deploy::GateLimits {
                intake: config.intake,
                budget: config.gate_budget,
                cache_dir: config.compile_cache.clone(),
                scratch_dir: crate::plugin::intake::scratch_dir(&config.data_dir),
            },
            Arc::clone(&engine),
            Arc::clone(&routes),
        ));
        deployer.set_trust(config.trust.clone());
        deployer.restore()?;
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
        crate::control::apply_quotas(config, &state);
        let all = routes.all();
        let link = if !config.amqp.is_empty() && crate::amqp::used_by(&all) {
            Some(Arc::new(crate::amqp::session::BrokerLink::new(
                config.amqp.clone(),
                config.amqp_tls.clone(),
                config.amqp_declare,
                config.amqp_queues,
                config.amqp_publishing,
            )))
        } else {
            None
        };
        let outbox = if crate::amqp::needs_outbox(&all) {
            Some(Arc::new(crate::outbox::Outbox::open(
                &config.data_dir,
                crate::amqp::outbox::FILE,
                config.outbox_max_messages,
            )?))
        } else {
            None
        };
        let settled = idempotency
            .as_ref()
            .map(|store| store.settled_log())
            .transpose()?;
        let has_outbox = outbox.is_some();
        let mqtt_link = match &config.mqtt {
            Some(url) if crate::mqtt::used_by(&all) => {
                Some(Arc::new(crate::mqtt::session::MqttLink::new(
                    url.clone(),
                    config.mqtt_tls.clone(),
                    config.mqtt_client_id.clone(),
                    config.mqtt_session_expiry_s,
                    Arc::clone(&routes),
                )))
            }
            _ => None,
        };
        let mqtt_outbox = if mqtt_link.is_some() && crate::mqtt::needs_outbox(&all) {
            Some(Arc::new(crate::outbox::Outbox::open(
                &config.data_dir,
                crate::mqtt::OUTBOX_FILE,
                config.outbox_max_messages,
            )?))
        } else {
            None
        };
        let pipeline = Arc::new(Pipeline::new(
            Arc::clone(&routes),
            crate::admission::Admission::new(config),
            config.max_in_flight,
            deadletters,
            {
                let mut sinks = Sinks::default();
                sinks.register(Sink::Http, Arc::new(WebhookClient::default()));
                sinks.register(
                    Sink::Amqp,
                    Arc::new(crate::amqp::AmqpSink {
                        link: link.clone(),
                        outbox: outbox.clone(),
                    }),
                );
                sinks.register(
                    Sink::Mqtt,
                    Arc::new(crate::mqtt::MqttSink {
                        link: mqtt_link.clone(),
                        outbox: mqtt_outbox.clone(),
                    }),
                );
                sinks
            },
            idempotency,
        ));
        let amqp = link.as_ref().map(|link| {
            Arc::new(crate::amqp::Amqp {
                link: Arc::clone(link),
                pipeline: Arc::clone(&pipeline),
                outbox: outbox.clone(),
                settled: settled.clone(),
                deployer: Arc::clone(&deployer),
                fleet: Arc::new(crate::amqp::broadcast::Fleet {
                    id: config.host_id.clone(),
                    key: config.control_key.clone(),
                    also: config.control_keys_also.clone(),
                }),
                retained_reread: config.amqp_retained_reread,
                backlog: Arc::default(),
            })
        });
        let control = Arc::new(Control {
            deployer,
            pipeline: Arc::clone(&pipeline),
            quarantines,
            state,
            config_path: config.path.clone(),
            data_dir: config.data_dir.clone(),
            restart_only: config.restart_only(),
            connections: config.connections,
            transports: vec![
                Box::new(crate::amqp::AmqpReload {
                    link,
                    outbox: has_outbox,
                }),
                Box::new(crate::mqtt::MqttReload {
                    link: mqtt_link.clone(),
                    outbox: mqtt_outbox.is_some(),
                }),
            ],
        });
        let mqtt = mqtt_link.map(|link| {
            Arc::new(crate::mqtt::Mqtt {
                link,
                pipeline: Arc::clone(&pipeline),
                outbox: mqtt_outbox,
                settled,
                max_in_hand: config.mqtt_max_in_hand,
                recent: Default::default(),
            })
        });
        let mut sources: Vec<Arc<dyn crate::pipeline::Source>> = Vec::new();
        if let Some(amqp) = amqp {
            sources.push(amqp);
        }
        if let Some(mqtt) = mqtt {
            sources.push(mqtt);
        }
        Ok(Host {
            pipeline,
            control,
            sources,
        })
    }

    /// What the message listener serves with.
    pub fn http_source(&self, connections: ConnectionLimits) -> HttpSource {
        let ready = self
            .sources
            .iter()
            .map(|s| Arc::clone(s) as Arc<dyn crate::pipeline::Ready>)
            .collect();
        HttpSource {
            pipeline: Arc::clone(&self.pipeline),
            connections,
            ready,
        }
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
    // Lineage first, so the first message's path is kept; a store that cannot be opened leaves
    // it off and says so (messages flow regardless).
    if let Err(e) = crate::lineage::start(&config.data_dir, config.telemetry.lineage) {
        tracing::error!(error = %e, "message lineage is off");
    }
    let host = tokio::task::block_in_place(|| Host::start(&config))?;
    if let Some((hits, misses)) = host.control.deployer.engine().cache_stats() {
        tracing::info!(hits, misses, "plugins loaded (compile cache hits/misses)");
    }
    let tls = config
        .tls
        .as_ref()
        .map(crate::http::tls::Tls::load)
        .transpose()
        .map_err(StartError::Admin)?
        .map(Arc::new);
    let tls_on = |listener: bool| tls.clone().filter(|_| listener);
    let http_tls = tls_on(config.tls.as_ref().is_some_and(|t| t.http));
    let admin_tls = tls_on(config.tls.as_ref().is_some_and(|t| t.admin));
    let http_scheme = if http_tls.is_some() { "https" } else { "http" };
    let addr = http.unwrap_or(config.http);
    let (listener, bound) = listen(addr, "HTTP", "--http or host.http").await?;
    let mut routes: Vec<_> = host
        .pipeline
        .routes
        .all()
        .iter()
        .map(|r| r.name.clone())
        .collect();
    routes.sort();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The signals are caught from here on, before any source takes a message: one sent as soon
    // as the host takes messages or says it listens (a supervisor, a test) finds the handlers in
    // place, not the default action that ends the process with messages in hand. One that comes
    // before the host serves is acted on once it does.
    let shutdown = shutdown_signal().map_err(StartError::Signals)?;
    // The broker is reached in the background (with backoff): the host serves HTTP, and takes
    // HTTP-in/broker-out messages into the outbox, while it is away. `/readyz` says which.
    let mut background = crate::pipeline::Background::default();
    for source in &host.sources {
        Arc::clone(source)
            .start(&mut background, stopped.clone())
            .await
            .map_err(StartError::Admin)?;
    }
    // Watching starts before the host says it listens, so nothing saved or dropped after
    // that is missed.
    if let Some(watched) = config
        .drop_dir
        .as_deref()
        .and_then(|dir| crate::control::drop::watch(&host.control.deployer, dir, config.settle))
    {
        background.spawn(
            "drop folder",
            crate::control::drop::serve(
                Arc::clone(&host.control.deployer),
                watched,
                stopped.clone(),
            ),
        );
    }
    if host.control.quarantines.policy().action == crate::quarantine::Action::Rollback {
        background.spawn(
            "quarantine rollback",
            roll_back_quarantined(Arc::clone(&host.control), stopped.clone()),
        );
    }
    let config_file = config
        .watch_config
        .then(|| crate::control::reload::watch_file(&config.path, config.settle))
        .flatten();
    background.spawn(
        "metric series",
        crate::telemetry::series::run(Arc::clone(&host.pipeline.routes), stopped.clone()),
    );
    background.spawn(
        "configuration reload",
        crate::control::reload::serve(Arc::clone(&host.control), config_file, stopped.clone()),
    );
    if let Some(addr) = admin.or(config.admin) {
        let access = crate::control::auth::Access::new(
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
        let audit = crate::control::audit::AuditLog::open(&config.data_dir)?;
        let scheme = if admin_tls.is_some() { "https" } else { "http" };
        tracing::info!("admin API on {scheme}://{bound}");
        println!("millrace: admin on {scheme}://{bound}");
        background.spawn(
            "admin API",
            crate::control::api::serve(
                listener,
                Arc::new(crate::control::api::AdminApi {
                    control: Arc::clone(&host.control),
                    access,
                    audit,
                    bound,
                    links: host
                        .sources
                        .iter()
                        .map(|s| Arc::clone(s) as Arc<dyn crate::pipeline::Ready>)
                        .collect(),
                }),
                admin_tls,
                stopped.clone(),
            ),
        );
    }
    tracing::info!(routes = %routes.join(","), "millrace listening on {http_scheme}://{bound}");
    // One stable line on stdout for scripts and tests.
    println!("millrace: listening on {http_scheme}://{bound}");
    let mut http_stop = stopped.clone();
    let source = Arc::new(host.http_source(config.connections));
    let http = crate::http::source::serve(listener, source, http_tls, async move {
        let _ = http_stop.changed().await;
    });
    tokio::pin!(http);
    let http_finished = tokio::select! {
        () = &mut http => true,
        () = shutdown => false,
    };
    let _ = stop.send(true);
    // Requests and deliveries in hand finish within their message budget; past the longest
    // budget and a margin for their publishes and acks (or `host.stop_timeout_s`), the host
    // stops without them (the broker gives unacknowledged deliveries back; an HTTP client sees
    // its connection close).
    let drain = config.stop_timeout.unwrap_or_else(|| {
        host.pipeline
            .routes
            .all()
            .iter()
            .map(|r| r.budget.time)
            .max()
            .unwrap_or_default()
            + STOP_MARGIN
    });
    let until = tokio::time::Instant::now() + drain;
    let mut unfinished = Vec::new();
    if !http_finished && tokio::time::timeout_at(until, &mut http).await.is_err() {
        unfinished.push("HTTP requests");
    }
    unfinished.extend(background.finish(until).await);
    if !unfinished.is_empty() {
        tracing::warn!(
            unfinished = %unfinished.join(","),
            within_s = drain.as_secs(),
            "stopping with work unfinished: deliveries not acknowledged go back to the broker"
        );
    }
    // Spans of the last messages go out before the process ends.
    tokio::task::block_in_place(|| {
        crate::telemetry::trace::tracer().flush(std::time::Duration::from_secs(5));
        crate::lineage::flush(std::time::Duration::from_secs(5));
    });
    tracing::info!("millrace stopped");
    Ok(())
}

/// With `limits.quarantine_action = "rollback"`: roll each plant whose plugin version was
/// quarantined back to the version active before (announced to other hosts like any
/// activation), if that version still runs here; a plant with no earlier version keeps the
/// quarantine.
async fn roll_back_quarantined(
    control: Arc<Control>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tripped = control.quarantines.subscribe();
    loop {
        let subject = tokio::select! {
            s = tripped.recv() => match s { Some(s) => s, None => return },
            _ = shutdown.changed() => return,
        };
        let deployer = Arc::clone(&control.deployer);
        let (plant, plugin, version) = (
            subject.plant.clone(),
            subject.plugin.clone(),
            subject.version.clone(),
        );
        let rolled = tokio::task::spawn_blocking(move || {
            deployer.roll_back_quarantined(&plant, &plugin, &version)
        })
        .await;
        match rolled {
            Ok(Ok(None)) => {
                tracing::info!(plant = %subject.plant, plugin = %subject.plugin, version = %subject.version, "a quarantined version no longer running; nothing rolled back");
            }
            Ok(Ok(Some(activated))) => {
                tracing::warn!(plant = %subject.plant, plugin = %subject.plugin, from = %subject.version, to = %activated.activation.version, "quarantined version rolled back");
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

/// How long stopping waits for deliveries in hand beyond the longest message budget.
const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Install the SIGTERM and SIGINT handlers now; the future ends when either signal comes.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
