//! The control plane: what changes the running host without restarting it. The admin API
//! (`api`, with its tokens in `auth` and its record in `audit`), the plugin registry
//! (`registry`) and the one path versions take into a plant (`deploy`), the drop folder
//! (`drop`), configuration reloads (`reload`) and the file watching both use (`watch`).
//! Messages never pass through here.

pub mod api;
pub mod audit;
pub mod auth;
pub mod console;
pub mod deploy;
pub mod drop;
pub mod observe;
pub mod registry;
pub mod reload;
mod watch;

use crate::pipeline::Pipeline;
use crate::quarantine::Quarantines;
use crate::state::StateStore;
use std::sync::Arc;

/// What the control plane acts on: the deployer (engine and route table), the pipeline's
/// admission (reloads resize it), the plants' state quotas, and the transports to restart when a
/// reload changes what they serve.
pub struct Control {
    pub deployer: Arc<deploy::Deployer>,
    pub pipeline: Arc<Pipeline>,
    pub quarantines: Arc<Quarantines>,
    pub state: Arc<StateStore>,
    /// The configuration file, read again by a reload.
    pub config_path: std::path::PathBuf,
    /// The data directory (the stores the admin API reads: lineage).
    pub data_dir: std::path::PathBuf,
    /// The settings only a restart applies, as started.
    pub restart_only: Vec<(&'static str, String)>,
    /// What the listeners accept (the admin API's body timeout).
    pub connections: crate::http::connections::ConnectionLimits,
    /// Called after a reload with the routes before and after; each transport restarts its
    /// sessions if what it serves changed. `Err` names a transport the reloaded routes need but
    /// this host did not start (a restart is needed).
    pub transports: Vec<Box<dyn reload::Reloadable>>,
}

/// Give each plant's state its quota from `config` (at start and on a reload).
pub fn apply_quotas(config: &crate::config::Config, state: &StateStore) {
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
