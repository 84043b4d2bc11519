//! Configuration reload: the file is read again, validated, and its routes (plugins, step
//! settings, lookup tables) built aside while the running ones serve; then all are put in place
//! at once, with each plant's active plugin versions kept. A configuration that does not load,
//! or that changes a setting only a restart applies, is refused with the reasons and the
//! running one stays. Triggers: saving the file (`host.watch_config`), SIGHUP, and
//! `POST /v1/config/reload` on the admin API.

use super::Control;
use super::watch::Settled;
use crate::config::{Config, ConfigErrors};
use crate::route::{Route, RouteDiff, Routes};
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
    Registry(#[from] crate::control::deploy::DeployError),
}

/// What a reload changed.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Routes whose settings or step versions differ.
    pub changed: Vec<String>,
    pub routes: usize,
    /// Whether a transport's sessions were restarted (a route it serves changed).
    pub broker_restarted: bool,
    pub took_ms: f64,
}

/// A transport's part in a reload: whether it can serve the reloaded routes without a restart,
/// and restarting its sessions when the routes it serves changed.
pub trait Reloadable: Send + Sync {
    /// Why `routes` need this transport started differently (a restart), if they do.
    fn needs_restart(&self, routes: &[Arc<Route>]) -> Vec<String>;
    /// Apply `diff` (already in the route table); whether sessions were restarted.
    fn reloaded(&self, diff: &RouteDiff) -> bool;
}

/// Reload the host's configuration file (blocking: plugins may be compiled). Logged and
/// counted (`millrace_config_reloads_total{outcome}`) either way.
pub fn reload(control: &Control) -> Result<Reloaded, ReloadError> {
    // One reload at a time, so a slower reload of an older file never lands after a newer one.
    static RELOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = RELOADING.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    let result = apply(control, started);
    let outcome = match &result {
        Ok(done) => {
            tracing::info!(added = ?done.added, removed = ?done.removed, changed = ?done.changed, routes = done.routes, broker_restarted = done.broker_restarted, took_ms = done.took_ms, "configuration reloaded");
            "applied"
        }
        Err(e) => {
            tracing::warn!(file = %control.config_path.display(), error = %e, "configuration reload refused; the running configuration stays");
            "refused"
        }
    };
    crate::telemetry::metrics().reloads.with(&[outcome]).inc();
    result
}

fn apply(control: &Control, started: std::time::Instant) -> Result<Reloaded, ReloadError> {
    let config = Config::load(&control.config_path)?;
    let changed: Vec<String> = config
        .restart_only()
        .into_iter()
        .zip(control.restart_only.iter())
        .filter(|(new, old)| new != *old)
        .map(|((key, _), _)| key.to_string())
        .collect();
    if !changed.is_empty() {
        return Err(ReloadError::NeedsRestart(changed));
    }
    let deployer = &control.deployer;
    let reloaded = Routes::build(
        &config,
        deployer.engine(),
        &control.state,
        &control.quarantines,
    )?;
    let after = reloaded.all();
    let needs: Vec<String> = control
        .transports
        .iter()
        .flat_map(|t| t.needs_restart(&after))
        .collect();
    if !needs.is_empty() {
        return Err(ReloadError::NeedsRestart(needs));
    }
    let before = deployer.routes().all();
    // The new trust policies apply to the versions the reload puts back in place.
    let previous_trust = deployer.trust();
    deployer.set_trust(config.trust.clone());
    if let Err(e) = deployer.reload(reloaded) {
        deployer.set_trust(previous_trust);
        return Err(e.into());
    }
    control.pipeline.admission.configure(&config);
    super::apply_quotas(&config, &control.state);
    let diff = RouteDiff::between(&before, &deployer.routes().all());
    let mut broker_restarted = false;
    for transport in &control.transports {
        broker_restarted |= transport.reloaded(&diff);
    }
    let names = |routes: &[Arc<Route>]| routes.iter().map(|r| r.name.clone()).collect();
    Ok(Reloaded {
        added: names(&diff.added),
        removed: names(&diff.removed),
        changed: diff.changed.iter().map(|(r, _)| r.name.clone()).collect(),
        routes: deployer.routes().all().len(),
        broker_restarted,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
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
    control: Arc<Control>,
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
    let name = control.config_path.file_name().map(|n| n.to_os_string());
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
        let control_ = Arc::clone(&control);
        let _ = tokio::task::spawn_blocking(move || reload(&control_)).await;
    }
}
