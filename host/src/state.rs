//! The plants' durable key-value state (capability `state`): an SQLite file in the data
//! directory, one namespace per plant.
//!
//! A write is committed (WAL, `synchronous = FULL`) before the plugin's call returns, so a fact a
//! plugin recorded (a lot on hold) survives a crash or restart. Only
//! `plugin::capability::state` reaches this store on behalf of plugins, always with the plant of
//! the step it serves; nothing here lets one plant name another's keys.

use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name of the store inside the data directory.
pub const FILE: &str = "state.sqlite";
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 65_536;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store's file failed.
    #[error(transparent)]
    Store(#[from] crate::durable::StoreError),
    /// A key or value over the limits.
    #[error("{what} is {len} bytes; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    /// The plant's state is full: the write would take it past its quota.
    #[error(
        "plant {plant}'s state is full: {what} would be {would}, the quota is {quota} (plants.{plant}.{key})"
    )]
    Quota {
        plant: String,
        what: &'static str,
        would: u64,
        quota: u64,
        key: &'static str,
    },
}

/// How much one plant's state may hold.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub max_keys: u64,
    /// Bytes of keys and values together.
    pub max_bytes: u64,
}

/// What one plant's state holds now.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    keys: u64,
    bytes: u64,
}

/// The store.
pub struct StateStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Quotas per plant (none: unbounded, e.g. the throwaway stores of `plugin test`).
    quotas: std::sync::RwLock<std::collections::HashMap<String, Quota>>,
    /// Usage per plant, read from the file the first time a plant writes, then kept up to date
    /// by every write (all writes go through `conn`'s lock).
    usage: Mutex<std::collections::HashMap<String, Usage>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS state (
    plant TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (plant, key)
) WITHOUT ROWID;
";

impl StateStore {
    /// Open (or create) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<StateStore, StateError> {
        let (path, conn) = crate::durable::open_in(data_dir, FILE, SCHEMA)?;
        Ok(StateStore {
            path,
            conn: Mutex::new(conn),
            quotas: Default::default(),
            usage: Default::default(),
        })
    }

    /// Bound what `plant`'s state may hold from now on (writes that would pass it fail; what is
    /// there stays).
    pub fn set_quota(&self, plant: &str, quota: Quota) {
        self.quotas
            .write()
            .expect("state quotas lock")
            .insert(plant.to_string(), quota);
    }

    /// A store in memory, gone when dropped (conformance vectors, `plugin test`, `inspect`).
    pub fn in_memory() -> StateStore {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().expect("SQLite opens an in-memory database");
        conn.execute_batch(SCHEMA)
            .expect("the state schema applies to an empty database");
        StateStore {
            path,
            conn: Mutex::new(conn),
            quotas: Default::default(),
            usage: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, source: rusqlite::Error) -> StateError {
        crate::durable::StoreError::sql(&self.path, source).into()
    }

    fn check_key(key: &str) -> Result<(), StateError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(StateError::TooLarge {
                what: "the key",
                len: key.len(),
                limit: MAX_KEY_BYTES,
            });
        }
        Ok(())
    }

    /// The value of `key` in `plant`'s namespace.
    pub fn get(&self, plant: &str, key: &str) -> Result<Option<String>, StateError> {
        Self::check_key(key)?;
        let conn = self.conn.lock().expect("state connection lock");
        conn.prepare_cached("SELECT value FROM state WHERE plant = ?1 AND key = ?2")
            .and_then(|mut read| {
                read.query_row(params![plant, key], |row| row.get(0))
                    .optional()
            })
            .map_err(|e| self.sql(e))
    }

    /// Store `value` under `key` in `plant`'s namespace; committed when this returns.
    pub fn put(&self, plant: &str, key: &str, value: &str) -> Result<(), StateError> {
        Self::check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(StateError::TooLarge {
                what: "the value",
                len: value.len(),
                limit: MAX_VALUE_BYTES,
            });
        }
        let conn = self.conn.lock().expect("state connection lock");
        let mut usage = self.usage.lock().expect("state usage lock");
        let now = self.usage_of(&conn, &mut usage, plant)?;
        let previous = Self::stored_length(&conn, plant, key).map_err(|e| self.sql(e))?;
        let after = match previous {
            Some(old) => Usage {
                keys: now.keys,
                bytes: now.bytes - (key.len() as u64 + old as u64)
                    + (key.len() + value.len()) as u64,
            },
            None => Usage {
                keys: now.keys + 1,
                bytes: now.bytes + (key.len() + value.len()) as u64,
            },
        };
        if let Some(quota) = self.quotas.read().expect("state quotas lock").get(plant) {
            if after.keys > quota.max_keys && previous.is_none() {
                return Err(StateError::Quota {
                    plant: plant.into(),
                    what: "its key count",
                    would: after.keys,
                    quota: quota.max_keys,
                    key: "state_max_keys",
                });
            }
            if after.bytes > quota.max_bytes && after.bytes > now.bytes {
                return Err(StateError::Quota {
                    plant: plant.into(),
                    what: "its size in bytes",
                    would: after.bytes,
                    quota: quota.max_bytes,
                    key: "state_max_mib",
                });
            }
        }
        conn.prepare_cached(
            "INSERT INTO state (plant, key, value, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (plant, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .and_then(|mut write| write.execute(params![plant, key, value, crate::durable::now_rfc3339()]))
        .map_err(|e| self.sql(e))?;
        usage.insert(plant.to_string(), after);
        Ok(())
    }

    /// The length in bytes of the value stored under `key`, if any. Statements on the hot path
    /// are cached on the connection: parsing one costs more than running it.
    fn stored_length(conn: &Connection, plant: &str, key: &str) -> rusqlite::Result<Option<i64>> {
        conn.prepare_cached(
            "SELECT length(CAST(value AS BLOB)) FROM state WHERE plant = ?1 AND key = ?2",
        )?
        .query_row(params![plant, key], |row| row.get(0))
        .optional()
    }

    /// What `plant`'s state holds (read from the file the first time).
    fn usage_of(
        &self,
        conn: &Connection,
        usage: &mut std::collections::HashMap<String, Usage>,
        plant: &str,
    ) -> Result<Usage, StateError> {
        if let Some(known) = usage.get(plant) {
            return Ok(*known);
        }
        let (keys, bytes): (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(length(CAST(key AS BLOB)) + length(CAST(value AS BLOB))), 0)
                 FROM state WHERE plant = ?1",
                params![plant],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(|e| self.sql(e))?;
        let found = Usage {
            keys: keys as u64,
            bytes: bytes as u64,
        };
        usage.insert(plant.to_string(), found);
        Ok(found)
    }

    /// Remove `key` from `plant`'s namespace; `true` if it was there.
    pub fn delete(&self, plant: &str, key: &str) -> Result<bool, StateError> {
        Self::check_key(key)?;
        let conn = self.conn.lock().expect("state connection lock");
        let mut usage = self.usage.lock().expect("state usage lock");
        let old = Self::stored_length(&conn, plant, key).map_err(|e| self.sql(e))?;
        let removed = conn
            .prepare_cached("DELETE FROM state WHERE plant = ?1 AND key = ?2")
            .and_then(|mut delete| delete.execute(params![plant, key]))
            .map_err(|e| self.sql(e))?;
        if let (Some(old), Some(known)) = (old, usage.get_mut(plant)) {
            known.keys -= 1;
            known.bytes -= key.len() as u64 + old as u64;
        }
        Ok(removed > 0)
    }

    /// Every key and value of `plant`, sorted by key.
    pub fn entries(&self, plant: &str) -> Result<Vec<(String, String)>, StateError> {
        let conn = self.conn.lock().expect("state connection lock");
        let mut stmt = conn
            .prepare("SELECT key, value FROM state WHERE plant = ?1 ORDER BY key")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![plant], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plants_do_not_see_each_others_keys() {
        let store = StateStore::in_memory();
        store.put("plant-a", "hold/L1", "a").unwrap();
        store.put("plant-b", "hold/L1", "b").unwrap();
        assert_eq!(
            store.get("plant-a", "hold/L1").unwrap().as_deref(),
            Some("a")
        );
        assert!(store.delete("plant-b", "hold/L1").unwrap());
        assert_eq!(store.get("plant-b", "hold/L1").unwrap(), None);
        assert_eq!(
            store.get("plant-a", "hold/L1").unwrap().as_deref(),
            Some("a")
        );
        assert!(!store.delete("plant-b", "hold/L1").unwrap());
    }

    #[test]
    fn put_replaces_and_entries_are_sorted() {
        let store = StateStore::in_memory();
        store.put("p", "b", "1").unwrap();
        store.put("p", "a", "2").unwrap();
        store.put("p", "b", "3").unwrap();
        assert_eq!(
            store.entries("p").unwrap(),
            vec![("a".into(), "2".into()), ("b".into(), "3".into())]
        );
    }

    #[test]
    fn oversized_keys_and_values_are_refused() {
        let store = StateStore::in_memory();
        let key = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(
            store.put("p", &key, "v"),
            Err(StateError::TooLarge { .. })
        ));
        let value = "v".repeat(MAX_VALUE_BYTES + 1);
        assert!(matches!(
            store.put("p", "k", &value),
            Err(StateError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_plant_cannot_write_past_its_quota_and_another_plant_is_not_affected() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.put("p", "before", "x").unwrap();
        store.set_quota(
            "p",
            Quota {
                max_keys: 3,
                max_bytes: 100,
            },
        );
        store.put("p", "k1", "v").unwrap();
        store.put("p", "k2", "v").unwrap();
        assert!(matches!(
            store.put("p", "k3", "v"),
            Err(StateError::Quota {
                key: "state_max_keys",
                ..
            })
        ));
        // Replacing a key's value is not a new key; growing past the bytes is refused.
        store.put("p", "k2", "w").unwrap();
        assert!(matches!(
            store.put("p", "k2", &"v".repeat(200)),
            Err(StateError::Quota {
                key: "state_max_mib",
                ..
            })
        ));
        // Deleting makes room again.
        assert!(store.delete("p", "k1").unwrap());
        store.put("p", "k3", "v").unwrap();
        // Another plant has its own (here none).
        for i in 0..10 {
            store.put("q", &format!("k{i}"), "v").unwrap();
        }
        // Usage read from the file when a store is opened again.
        drop(store);
        let reopened = StateStore::open(dir.path()).unwrap();
        reopened.set_quota(
            "p",
            Quota {
                max_keys: 3,
                max_bytes: 100,
            },
        );
        assert!(matches!(
            reopened.put("p", "k4", "v"),
            Err(StateError::Quota { .. })
        ));
    }

    #[test]
    fn state_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        StateStore::open(dir.path())
            .unwrap()
            .put("p", "hold/L1", "since")
            .unwrap();
        let reopened = StateStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.get("p", "hold/L1").unwrap().as_deref(),
            Some("since")
        );
    }
}
