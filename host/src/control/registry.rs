//! Plugin versions per plant: every version deployed to a plant (its component kept by digest
//! under `DATA_DIR/registry/blobs/`), which version of each plugin is active there, and the
//! history of activations and rollbacks (`DATA_DIR/registry/registry.sqlite`). Survives restarts;
//! on start the host activates what was last active.
//!
//! The versions a configuration names are registered on start (origin `config`), so the first
//! activation of an uploaded version can be rolled back to them.

use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The plant already has this version of the plugin, with other bytes.
    #[error(
        "plant {plant} already has {plugin}@{version} with digest {digest}; give the new build its own version"
    )]
    VersionTaken {
        plant: String,
        plugin: String,
        version: String,
        digest: String,
    },
    /// No such version was deployed to the plant.
    #[error("plant {plant} has no version {version} of {plugin}; deployed: {known}")]
    UnknownVersion {
        plant: String,
        plugin: String,
        version: String,
        known: String,
    },
    /// Nothing to roll back to.
    #[error("plant {plant}: {plugin} has no earlier active version to roll back to")]
    NoPrevious { plant: String, plugin: String },
    /// A component file could not be written or read.
    #[error("registry file {path}: {source}")]
    Blob {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::durable::StoreError),
}

/// One deployed version.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Version {
    pub plant: String,
    pub plugin: String,
    pub version: String,
    pub digest: String,
    pub deployed_by: String,
    pub deployed_at: String,
    /// `config`, `upload` or `drop`.
    pub origin: String,
}

/// A version about to be kept.
#[derive(Debug, Clone, Copy)]
pub struct NewVersion<'a> {
    pub plant: &'a str,
    pub plugin: &'a str,
    pub version: &'a str,
    /// `sha256:<hex>` of the bytes.
    pub digest: &'a str,
    /// Who deploys it.
    pub by: &'a str,
    /// `config`, `upload` or `drop`.
    pub origin: &'a str,
}

/// One activation (or rollback) in a plant's history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Activation {
    pub seq: i64,
    pub plant: String,
    pub plugin: String,
    pub version: String,
    pub digest: String,
    pub previous_version: Option<String>,
    /// `activate` or `rollback`.
    pub action: String,
    pub by: String,
    pub at: String,
    /// Where it stands in the slot's order across hosts ([`Stamp`]).
    #[serde(flatten)]
    pub stamp: Stamp,
}

/// The order of a slot's activations across the hosts that share them: milliseconds, never
/// less than one past the slot's last stamp known here (so an activation made after seeing
/// another is always later, whatever the clocks say), then the id of the host it was made on
/// (so two made at once order the same everywhere). An announcement is applied only when its
/// stamp is later than the slot's; activations recorded before stamps existed have 0 and "".
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Stamp {
    #[serde(rename = "stamp_ms")]
    pub ms: i64,
    #[serde(rename = "stamp_host")]
    pub host: String,
}

impl Stamp {
    /// A stamp for an activation made now on `host`, after `last`.
    pub fn next(last: &Stamp, host: &str) -> Stamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Stamp {
            ms: now.max(last.ms.saturating_add(1)),
            host: host.to_string(),
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS versions (
    plant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    deployed_by TEXT NOT NULL,
    deployed_at TEXT NOT NULL,
    origin TEXT NOT NULL,
    PRIMARY KEY (plant, plugin, version)
);
CREATE TABLE IF NOT EXISTS activations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    plant TEXT NOT NULL,
    plugin TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    previous_version TEXT,
    action TEXT NOT NULL,
    by TEXT NOT NULL,
    at TEXT NOT NULL,
    stamp_ms INTEGER NOT NULL DEFAULT 0,
    stamp_host TEXT NOT NULL DEFAULT ''
);
";

/// Registries written before stamps: their activations get the two columns (0 and '').
const STAMPED: &str = "
BEGIN;
ALTER TABLE activations ADD COLUMN stamp_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE activations ADD COLUMN stamp_host TEXT NOT NULL DEFAULT '';
COMMIT;
";

/// The registry of one data directory.
pub struct Registry {
    dir: PathBuf,
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl Registry {
    /// Open (or create) the registry under `data_dir/registry`.
    pub fn open(data_dir: &Path) -> Result<Registry, RegistryError> {
        let dir = data_dir.join("registry");
        let (path, conn) = crate::durable::open_in(&dir, "registry.sqlite", SCHEMA)?;
        let sql = |source| crate::durable::StoreError::sql(&path, source);
        let stamped: bool = conn
            .query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('activations') WHERE name = 'stamp_ms'",
                [],
                |row| row.get(0),
            )
            .map_err(sql)?;
        if !stamped {
            conn.execute_batch(STAMPED).map_err(sql)?;
        }
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(|source| RegistryError::Blob {
            path: blobs,
            source,
        })?;
        Ok(Registry {
            dir,
            path,
            conn: Mutex::new(conn),
        })
    }

    fn sql(&self, source: rusqlite::Error) -> RegistryError {
        crate::durable::StoreError::sql(&self.path, source).into()
    }

    /// Where the component with `digest` (`sha256:<hex>`) is kept.
    pub fn blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join("blobs").join(format!("{hex}.wasm"))
    }

    /// Keep `bytes` as version `version` of `plugin` for `plant`. The same bytes again are
    /// accepted (nothing changes); other bytes under a taken version are refused.
    pub fn add(&self, new: &NewVersion<'_>, bytes: &[u8]) -> Result<Version, RegistryError> {
        let NewVersion {
            plant,
            plugin,
            version,
            digest,
            by,
            origin,
        } = *new;
        if let Some(kept) = self.version(plant, plugin, version)? {
            if kept.digest == digest {
                return Ok(kept);
            }
            return Err(RegistryError::VersionTaken {
                plant: plant.into(),
                plugin: plugin.into(),
                version: version.into(),
                digest: kept.digest,
            });
        }
        let blob = self.blob(digest);
        if !blob.exists() {
            // Written whole under a temporary name, then renamed: never half a file.
            let partial = blob.with_extension("partial");
            std::fs::write(&partial, bytes)
                .and_then(|()| std::fs::rename(&partial, &blob))
                .map_err(|source| RegistryError::Blob {
                    path: blob.clone(),
                    source,
                })?;
        }
        let now = crate::durable::now_rfc3339();
        self.conn
            .lock()
            .expect("registry lock")
            .execute(
                "INSERT INTO versions (plant, plugin, version, digest, deployed_by, deployed_at, origin)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![plant, plugin, version, digest, by, now, origin],
            )
            .map_err(|e| self.sql(e))?;
        Ok(Version {
            plant: plant.into(),
            plugin: plugin.into(),
            version: version.into(),
            digest: digest.into(),
            deployed_by: by.into(),
            deployed_at: now,
            origin: origin.into(),
        })
    }

    fn version(
        &self,
        plant: &str,
        plugin: &str,
        version: &str,
    ) -> Result<Option<Version>, RegistryError> {
        let conn = self.conn.lock().expect("registry lock");
        conn.query_row(
            "SELECT plant, plugin, version, digest, deployed_by, deployed_at, origin FROM versions
             WHERE plant = ?1 AND plugin = ?2 AND version = ?3",
            params![plant, plugin, version],
            row_version,
        )
        .optional()
        .map_err(|e| self.sql(e))
    }

    /// Version `version` of `plugin` on `plant`, or why not.
    pub fn find(&self, plant: &str, plugin: &str, version: &str) -> Result<Version, RegistryError> {
        match self.version(plant, plugin, version)? {
            Some(v) => Ok(v),
            None => Err(RegistryError::UnknownVersion {
                plant: plant.into(),
                plugin: plugin.into(),
                version: version.into(),
                known: self
                    .versions(plant, plugin)?
                    .iter()
                    .map(|v| v.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Every version of `plugin` deployed to `plant`, oldest first.
    pub fn versions(&self, plant: &str, plugin: &str) -> Result<Vec<Version>, RegistryError> {
        let conn = self.conn.lock().expect("registry lock");
        let mut select = conn
            .prepare(
                "SELECT plant, plugin, version, digest, deployed_by, deployed_at, origin FROM versions
                 WHERE plant = ?1 AND plugin = ?2 ORDER BY deployed_at, rowid",
            )
            .map_err(|e| self.sql(e))?;
        let rows = select
            .query_map(params![plant, plugin], row_version)
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Record that `version` became active (`action` `activate` or `rollback`) at `stamp`.
    pub fn record(
        &self,
        version: &Version,
        previous: Option<&str>,
        action: &str,
        by: &str,
        stamp: Stamp,
    ) -> Result<Activation, RegistryError> {
        let at = crate::durable::now_rfc3339();
        let conn = self.conn.lock().expect("registry lock");
        conn.execute(
            "INSERT INTO activations (plant, plugin, version, digest, previous_version, action, by, at, stamp_ms, stamp_host)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                version.plant,
                version.plugin,
                version.version,
                version.digest,
                previous,
                action,
                by,
                at,
                stamp.ms,
                stamp.host
            ],
        )
        .map_err(|e| self.sql(e))?;
        Ok(Activation {
            seq: conn.last_insert_rowid(),
            plant: version.plant.clone(),
            plugin: version.plugin.clone(),
            version: version.version.clone(),
            digest: version.digest.clone(),
            previous_version: previous.map(str::to_string),
            action: action.into(),
            by: by.into(),
            at,
            stamp,
        })
    }

    /// The stamp of the last activation of `plugin` on `plant` (the default when none).
    pub fn stamp(&self, plant: &str, plugin: &str) -> Result<Stamp, RegistryError> {
        let conn = self.conn.lock().expect("registry lock");
        conn.query_row(
            "SELECT stamp_ms, stamp_host FROM activations WHERE plant = ?1 AND plugin = ?2
             ORDER BY seq DESC LIMIT 1",
            params![plant, plugin],
            |row| {
                Ok(Stamp {
                    ms: row.get(0)?,
                    host: row.get(1)?,
                })
            },
        )
        .optional()
        .map(Option::unwrap_or_default)
        .map_err(|e| self.sql(e))
    }

    /// The activations of `plugin` on `plant` (every plugin when `None`), oldest first.
    pub fn history(
        &self,
        plant: &str,
        plugin: Option<&str>,
    ) -> Result<Vec<Activation>, RegistryError> {
        let conn = self.conn.lock().expect("registry lock");
        let mut select = conn
            .prepare(
                "SELECT seq, plant, plugin, version, digest, previous_version, action, by, at,
                        stamp_ms, stamp_host
                 FROM activations WHERE plant = ?1 AND (?2 IS NULL OR plugin = ?2) ORDER BY seq",
            )
            .map_err(|e| self.sql(e))?;
        let rows = select
            .query_map(params![plant, plugin], |row| {
                Ok(Activation {
                    seq: row.get(0)?,
                    plant: row.get(1)?,
                    plugin: row.get(2)?,
                    version: row.get(3)?,
                    digest: row.get(4)?,
                    previous_version: row.get(5)?,
                    action: row.get(6)?,
                    by: row.get(7)?,
                    at: row.get(8)?,
                    stamp: Stamp {
                        ms: row.get(9)?,
                        host: row.get(10)?,
                    },
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// What was last activated on `plant`, per plugin.
    pub fn active(&self, plant: &str) -> Result<Vec<Activation>, RegistryError> {
        let mut last = std::collections::BTreeMap::new();
        for activation in self.history(plant, None)? {
            last.insert(activation.plugin.clone(), activation);
        }
        Ok(last.into_values().collect())
    }
}

fn row_version(row: &rusqlite::Row<'_>) -> rusqlite::Result<Version> {
    Ok(Version {
        plant: row.get(0)?,
        plugin: row.get(1)?,
        version: row.get(2)?,
        digest: row.get(3)?,
        deployed_by: row.get(4)?,
        deployed_at: row.get(5)?,
        origin: row.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new<'a>(
        plant: &'a str,
        plugin: &'a str,
        version: &'a str,
        digest: &'a str,
    ) -> NewVersion<'a> {
        NewVersion {
            plant,
            plugin,
            version,
            digest,
            by: "ops",
            origin: "upload",
        }
    }

    #[test]
    fn versions_are_kept_per_plant_taken_versions_refused_and_history_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path()).unwrap();
        let v1 = registry
            .add(&new("a", "stamp", "1.0.0", "sha256:01"), b"one")
            .unwrap();
        assert_eq!(
            registry
                .add(&new("a", "stamp", "1.0.0", "sha256:01"), b"one")
                .unwrap(),
            v1,
            "the same bytes again change nothing"
        );
        let taken = registry.add(&new("a", "stamp", "1.0.0", "sha256:02"), b"two");
        assert!(
            matches!(taken, Err(RegistryError::VersionTaken { .. })),
            "{taken:?}"
        );
        let v2 = registry
            .add(&new("a", "stamp", "2.0.0", "sha256:02"), b"two")
            .unwrap();
        assert_eq!(std::fs::read(registry.blob("sha256:02")).unwrap(), b"two");
        registry
            .record(
                &v2,
                Some("1.0.0"),
                "activate",
                "ops",
                Stamp::next(&Stamp::default(), "h"),
            )
            .unwrap();
        drop(registry);
        let registry = Registry::open(dir.path()).unwrap();
        let active = registry.active("a").unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].version, "2.0.0");
        assert_eq!(active[0].previous_version.as_deref(), Some("1.0.0"));
        assert!(registry.active("b").unwrap().is_empty(), "plants apart");
        assert!(matches!(
            registry.find("a", "stamp", "9.9.9"),
            Err(RegistryError::UnknownVersion { .. })
        ));
    }

    #[test]
    fn a_registry_from_before_stamps_gets_them_and_the_last_activation_gives_the_slot_its_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let before = SCHEMA
            .replace("    stamp_ms INTEGER NOT NULL DEFAULT 0,\n", "")
            .replace(",\n    stamp_host TEXT NOT NULL DEFAULT ''", "");
        assert!(!before.contains("stamp_"), "{before}");
        let registry_dir = dir.path().join("registry");
        let (_, conn) = crate::durable::open_in(&registry_dir, "registry.sqlite", &before).unwrap();
        conn.execute(
            "INSERT INTO activations (plant, plugin, version, digest, action, by, at)
             VALUES ('a', 'stamp', '1.0.0', 'sha256:01', 'activate', 'ops', 'then')",
            [],
        )
        .unwrap();
        drop(conn);
        let registry = Registry::open(dir.path()).unwrap();
        assert_eq!(
            registry.history("a", None).unwrap()[0].stamp,
            Stamp::default()
        );
        assert_eq!(registry.stamp("a", "stamp").unwrap(), Stamp::default());
        assert_eq!(registry.stamp("a", "other").unwrap(), Stamp::default());
        let v2 = registry
            .add(&new("a", "stamp", "2.0.0", "sha256:02"), b"two")
            .unwrap();
        // Later than the last stamp even when this host's clock says otherwise.
        let ahead = Stamp {
            ms: i64::MAX / 2,
            host: "b".into(),
        };
        registry
            .record(&v2, Some("1.0.0"), "activate", "ops via b", ahead.clone())
            .unwrap();
        assert_eq!(registry.stamp("a", "stamp").unwrap(), ahead);
        let next = Stamp::next(&ahead, "a");
        assert_eq!(next.ms, ahead.ms + 1);
        assert!(next > ahead);
        // Made at the same millisecond: the host's id orders them, the same on every host.
        let (on_a, on_b) = (
            Stamp {
                ms: 7,
                host: "host-a".into(),
            },
            Stamp {
                ms: 7,
                host: "host-b".into(),
            },
        );
        assert!(on_b > on_a);
        drop(registry);
        let registry = Registry::open(dir.path()).unwrap();
        assert_eq!(
            registry.history("a", Some("stamp")).unwrap()[1].stamp,
            ahead
        );
    }
}
