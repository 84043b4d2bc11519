//! Which plugin ran: the name every record of a step (dead letters, lineage, quarantines)
//! carries.

/// Name, version and digest of the plugin that ran a step (for dead letters and lineage).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginId {
    pub name: String,
    pub version: String,
    pub digest: String,
}
