//! Configuration reload: the file is read again, validated, and its routes (plugins, step
//! settings, lookup tables) built aside while the running ones serve; then all are put in place
//! at once, with each plant's active plugin versions kept. A configuration that does not load,
//! or that changes a setting only a restart applies, is refused with the reasons and the
//! running one stays. Triggers: saving the file (`host.watch_config`), SIGHUP, and
//! `POST /v1/config/reload` on the admin API.

use super::watch::Settled;
use crate::config::{Config, ConfigErrors};
use crate::mediator::Mediator;
use crate::route::Routes;
use std::path::Path;
use std::sync::Arc;

/// Why a reload was refused. The running configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file, or a plugin it names, is wrong.
    #[error("{0}")]
    Invalid(#[from] ConfigErrors),
    /// Settings that only a restart applies were changed.
    #[error("{} changed; these apply only on restart (put them back to reload the rest, or restart the host)", .0.join(", "))]
    NeedsRestart(Vec<String>),
    /// Active plugin versions could not be applied to the new routes.
    #[error("plugin registry: {0}")]
    Registry(#[from] crate::deploy::DeployError),
}

/// What a reload changed.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub routes: usize,
    /// Whether the broker consumers were restarted (a broker route changed).
    pub broker_restarted: bool,
    pub took_ms: f64,
}

/// Reload the host's configuration file (blocking: plugins may be compiled). Logged and
/// counted (`millrace_config_reloads_total{outcome}`) either way.
pub fn reload(mediator: &Mediator) -> Result<Reloaded, ReloadError> {
    // One reload at a time, so a slower reload of an older file never lands after a newer one.
    static RELOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = RELOADING.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    let result = apply(mediator, started);
    let outcome = match &result {
        Ok(done) => {
            tracing::info!(added = ?done.added, removed = ?done.removed, routes = done.routes, broker_restarted = done.broker_restarted, took_ms = done.took_ms, "configuration reloaded");
            "applied"
        }
        Err(e) => {
            tracing::warn!(file = %mediator.config_path.display(), error = %e, "configuration reload refused; the running configuration stays");
            "refused"
        }
    };
    crate::telemetry::metrics()
        .reloads
        .get_or_create(&crate::telemetry::ReloadLabels {
            outcome: outcome.into(),
        })
        .inc();
    result
}

fn apply(mediator: &Mediator, started: std::time::Instant) -> Result<Reloaded, ReloadError> {
    let config = Config::load(&mediator.config_path)?;
    let changed: Vec<String> = config
        .restart_only()
        .into_iter()
        .zip(mediator.restart_only.iter())
        .filter(|(new, old)| new != *old)
        .map(|((key, _), _)| key.to_string())
        .collect();
    if !changed.is_empty() {
        return Err(ReloadError::NeedsRestart(changed));
    }
    let reloaded = Routes::build(
        &config,
        &mediator.engine,
        &mediator.state,
        &mediator.quarantines,
    )?;
    let mut needs = Vec::new();
    if mediator.broker.is_none() && reloaded.all().iter().any(|r| r.uses_broker()) {
        needs.push("a route now uses the broker (the host started without one)".to_string());
    }
    if mediator.outbox.is_none()
        && reloaded
            .all()
            .iter()
            .any(|r| r.source == crate::config::Source::Http && r.sink == crate::config::Sink::Amqp)
    {
        needs.push("an HTTP route now publishes to the broker (it needs the outbox)".to_string());
    }
    if !needs.is_empty() {
        return Err(ReloadError::NeedsRestart(needs));
    }
    let before = names(&mediator.routes);
    let broker_before = broker_shape(&mediator.routes);
    // The new trust policies apply to the versions the reload puts back in place.
    let previous_trust = mediator.deployer.trust();
    mediator.deployer.set_trust(config.trust.clone());
    if let Err(e) = mediator
        .deployer
        .reload(&mediator.engine, &mediator.routes, reloaded)
    {
        mediator.deployer.set_trust(previous_trust);
        return Err(e.into());
    }
    mediator.admission.configure(&config);
    crate::mediator::apply_quotas(&config, &mediator.state);
    let after = names(&mediator.routes);
    let broker_restarted = broker_shape(&mediator.routes) != broker_before;
    if broker_restarted && let Some(link) = &mediator.broker {
        // Deliveries in hand are finished; unacknowledged ones go back to their queues.
        link.restart("the configuration was reloaded and a broker route changed");
    }
    Ok(Reloaded {
        added: after
            .iter()
            .filter(|n| !before.contains(n))
            .cloned()
            .collect(),
        removed: before
            .iter()
            .filter(|n| !after.contains(n))
            .cloned()
            .collect(),
        routes: after.len(),
        broker_restarted,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

fn names(routes: &Routes) -> Vec<String> {
    let mut names: Vec<String> = routes.all().iter().map(|r| r.name.clone()).collect();
    names.sort();
    names
}

/// What the broker session depends on: each broker route's name, source, sink and AMQP names.
fn broker_shape(routes: &Routes) -> Vec<String> {
    let mut shape: Vec<String> = routes
        .all()
        .iter()
        .filter(|r| r.uses_broker())
        .map(|r| format!("{} {:?} {:?} {:?}", r.name, r.source, r.sink, r.amqp))
        .collect();
    shape.sort();
    shape
}

/// Watch the configuration file's folder (editors save by renaming over the file); `None`,
/// logged, if it cannot be watched. Called before the host says it listens.
pub fn watch_file(file: &Path, settle: std::time::Duration) -> Option<Settled> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    super::watch::watch(&dir, false, settle, Vec::new())
        .inspect_err(|e| {
            tracing::warn!(file = %file.display(), error = %e, "cannot watch the configuration file; reload with SIGHUP or the admin API");
        })
        .ok()
}

/// Reload on every settled change of the configuration file (`settled`, from [`watch_file`])
/// and on SIGHUP, until `shutdown`.
pub async fn serve(
    mediator: Arc<Mediator>,
    mut settled: Option<Settled>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => Some(hup),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; reload through the admin API");
            None
        }
    };
    let name = mediator.config_path.file_name().map(|n| n.to_os_string());
    loop {
        let changed = async {
            match settled.as_mut() {
                Some(s) => s.paths.recv().await,
                None => std::future::pending().await,
            }
        };
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            path = changed => {
                let Some(path) = path else { settled = None; continue };
                if path.file_name() != name.as_deref() {
                    continue;
                }
            }
            _ = hangup => tracing::info!("SIGHUP received; reloading the configuration"),
            _ = shutdown.changed() => break,
        }
        let mediator_ = Arc::clone(&mediator);
        let _ = tokio::task::spawn_blocking(move || reload(&mediator_)).await;
    }
}
