//! `millrace check`: the configuration and every plugin it names, loaded as `run` would.

use crate::config::Config;
use crate::plugin::engine::PluginEngine;
use crate::route::Routes;
use std::path::Path;
use std::sync::Arc;

/// `millrace check`: validate the configuration and load every plugin it names.
pub fn check(config_path: &Path) -> i32 {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    let engine = match PluginEngine::new(Some(&config.compile_cache)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    // Loading checks settings only; the plants' state is neither read nor written.
    let state = Arc::new(crate::state::StateStore::in_memory());
    match Routes::build(
        &config,
        &engine,
        &state,
        &Arc::new(crate::quarantine::Quarantines::disabled()),
    ) {
        Ok(routes) => {
            let mut names = routes.all();
            names.sort_by(|a, b| a.name.cmp(&b.name));
            for route in names {
                let chain: Vec<String> = route
                    .steps
                    .iter()
                    .map(|s| format!("{}@{} ({})", s.id.name, s.id.version, short(&s.id.digest)))
                    .collect();
                println!(
                    "route {} (plant {}): {}",
                    route.name,
                    route.plant,
                    chain.join(" -> ")
                );
            }
            if let Some((hits, misses)) = engine.cache_stats() {
                println!("compile cache: {hits} hit(s), {misses} miss(es)");
            }
            println!("ok: {}", config.path.display());
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            1
        }
    }
}

pub(super) fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}
