//! The dead-letter store of the embedded default: an SQLite file in the data directory.
//!
//! Each entry keeps the message as it arrived (headers and body), which step failed, the
//! plugin's name, version and digest, the kind of failure and its reason. A write is committed
//! (WAL, `synchronous = FULL`) before the sender hears about the failure, so an entry survives a
//! crash or restart. SQLite lets `millrace dlq list` read the file while a host is writing it.

use crate::durable::now_rfc3339;
use crate::plugin::id::PluginId;
use rusqlite::{Connection, OpenFlags, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name of the store inside the data directory.
pub const FILE: &str = "deadletters.sqlite";

/// Errors of the dead-letter store.
pub use crate::durable::StoreError as DeadLetterError;

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A plugin rejected it.
    Rejected,
    /// A plugin ran past its deadline.
    Deadline,
    /// A plugin hit its memory cap.
    MemoryCap,
    /// A plugin trapped.
    Trap,
    /// A plugin broke a bound on what it hands over (outputs, bytes, invalid headers, tables),
    /// or the message ran out of its budget across the chain.
    Limit,
    /// Every attempt a transient failure allows was used (a source without a broker-side
    /// dead-letter queue: MQTT).
    AttemptsExhausted,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rejected => "rejected",
            Kind::Deadline => "deadline",
            Kind::MemoryCap => "memory-cap",
            Kind::Trap => "trap",
            Kind::Limit => "limit",
            Kind::AttemptsExhausted => "attempts-exhausted",
        }
    }

    fn parse(text: &str) -> Kind {
        match text {
            "rejected" => Kind::Rejected,
            "deadline" => Kind::Deadline,
            "memory-cap" => Kind::MemoryCap,
            "limit" => Kind::Limit,
            "attempts-exhausted" => Kind::AttemptsExhausted,
            _ => Kind::Trap,
        }
    }
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    /// Store-assigned, increasing.
    pub id: i64,
    /// When it was recorded, RFC 3339 UTC.
    pub at: String,
    pub plant: String,
    pub route: String,
    pub message_id: String,
    /// 1-based step of the route's chain that failed.
    pub step: u32,
    pub plugin: PluginId,
    pub kind: Kind,
    pub reason: String,
    pub field: Option<String>,
    pub position: Option<u32>,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    #[serde(serialize_with = "serialize_body")]
    pub body: Vec<u8>,
    /// When `millrace dlq replay` delivered it, RFC 3339 UTC; `None` while it waits.
    pub replayed_at: Option<String>,
    /// The chain it ran on: `name@version+digest` of each step, in order (empty in entries
    /// recorded before lineage was kept).
    pub lineage: String,
}

impl DeadLetter {
    /// The message as it was when it failed, to run again.
    pub fn message(&self) -> crate::plugin::bindings::types::Message {
        crate::plugin::bindings::types::Message {
            id: self.message_id.clone(),
            plant: self.plant.clone(),
            route: self.route.clone(),
            content_type: self.content_type.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }
}

fn serialize_body<S: serde::Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
    match std::str::from_utf8(body) {
        Ok(text) => s.serialize_str(text),
        Err(_) => s.serialize_str(&format!("<{} bytes, not UTF-8>", body.len())),
    }
}

/// The store.
pub struct DeadLetterStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    plant TEXT NOT NULL,
    route TEXT NOT NULL,
    message_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    plugin TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    field TEXT,
    position INTEGER,
    content_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_route ON dead_letters (route, id);
";

/// Columns added after the first release of the store, with their definitions.
const ADDED_COLUMNS: &[(&str, &str)] = &[("replayed_at", "TEXT"), ("lineage", "TEXT")];

impl DeadLetterStore {
    /// Open (or create) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<DeadLetterStore, DeadLetterError> {
        let (path, conn) = crate::durable::open_in(data_dir, FILE, SCHEMA)?;
        crate::durable::add_missing_columns(&conn, "dead_letters", ADDED_COLUMNS).map_err(
            |source| DeadLetterError::Open {
                path: path.clone(),
                source,
            },
        )?;
        Ok(DeadLetterStore {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// Open an existing store for reading only (`millrace dlq list`, also while a host runs).
    /// `Ok(None)` if there is no store yet.
    pub fn open_read_only(data_dir: &Path) -> Result<Option<DeadLetterStore>, DeadLetterError> {
        let path = data_dir.join(FILE);
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
            |source| DeadLetterError::Open {
                path: path.clone(),
                source,
            },
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|source| DeadLetterError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Some(DeadLetterStore {
            path,
            conn: Mutex::new(conn),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, source: rusqlite::Error) -> DeadLetterError {
        DeadLetterError::sql(&self.path, source)
    }

    /// Record one entry (its `id` and `at` are assigned here); returns the id once committed.
    pub fn record(&self, entry: &DeadLetter) -> Result<i64, DeadLetterError> {
        let headers = serde_json::to_string(&entry.headers).expect("string pairs serialize");
        let at = now_rfc3339();
        let conn = self.conn.lock().expect("dead-letter connection lock");
        conn.execute(
            "INSERT INTO dead_letters (at, plant, route, message_id, step, plugin, version, digest, kind, reason, field, position, content_type, headers, body, lineage)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                at,
                entry.plant,
                entry.route,
                entry.message_id,
                entry.step,
                entry.plugin.name,
                entry.plugin.version,
                entry.plugin.digest,
                entry.kind.as_str(),
                entry.reason,
                entry.field,
                entry.position,
                entry.content_type,
                headers,
                entry.body,
                entry.lineage,
            ],
        )
        .map_err(|e| self.sql(e))?;
        Ok(conn.last_insert_rowid())
    }

    /// Entries in the order they were recorded, optionally of one route.
    pub fn list(&self, route: Option<&str>) -> Result<Vec<DeadLetter>, DeadLetterError> {
        self.select(
            "WHERE (?1 IS NULL OR route = ?1) ORDER BY id LIMIT ?2",
            route,
            u32::MAX,
        )
    }

    /// The oldest `limit` entries of `route` not replayed yet.
    pub fn pending(&self, route: &str, limit: u32) -> Result<Vec<DeadLetter>, DeadLetterError> {
        self.select(
            "WHERE route = ?1 AND replayed_at IS NULL ORDER BY id LIMIT ?2",
            Some(route),
            limit,
        )
    }

    /// The latest `limit` entries, the newest first (replayed ones too).
    pub fn latest(&self, limit: u32) -> Result<Vec<DeadLetter>, DeadLetterError> {
        self.select(
            "WHERE (?1 IS NULL OR route = ?1) ORDER BY id DESC LIMIT ?2",
            None,
            limit,
        )
    }

    /// Entry `id`, if kept.
    pub fn get(&self, id: i64) -> Result<Option<DeadLetter>, DeadLetterError> {
        let id = id.to_string();
        Ok(self
            .select("WHERE id = CAST(?1 AS INTEGER) LIMIT ?2", Some(&id), 1)?
            .pop())
    }

    /// Per plant and route, the entries not replayed yet: how many, and the age in seconds of
    /// the oldest.
    pub fn waiting(&self) -> Result<Vec<(String, String, u64, f64)>, DeadLetterError> {
        let conn = self.conn.lock().expect("dead-letter connection lock");
        let mut statement = conn
            .prepare_cached(
                "SELECT plant, route, COUNT(*), (julianday('now') - julianday(MIN(at))) * 86400.0
                 FROM dead_letters WHERE replayed_at IS NULL GROUP BY plant, route ORDER BY plant, route",
            )
            .map_err(|e| self.sql(e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get::<_, i64>(2)? as u64,
                    row.get::<_, Option<f64>>(3)?.unwrap_or(0.0).max(0.0),
                ))
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Record that entry `id` was replayed and delivered.
    pub fn mark_replayed(&self, id: i64) -> Result<(), DeadLetterError> {
        let conn = self.conn.lock().expect("dead-letter connection lock");
        conn.execute(
            "UPDATE dead_letters SET replayed_at = ?1 WHERE id = ?2",
            params![now_rfc3339(), id],
        )
        .map_err(|e| self.sql(e))?;
        Ok(())
    }

    fn select(
        &self,
        filter: &str,
        route: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let conn = self.conn.lock().expect("dead-letter connection lock");
        // A store written before a column was added, opened read-only, lacks it.
        let present: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('dead_letters')")
            .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
            .map_err(|e| self.sql(e))?;
        let column = |name: &'static str| {
            if present.iter().any(|p| p == name) {
                name
            } else {
                "NULL"
            }
        };
        let (replayed, lineage) = (column("replayed_at"), column("lineage"));
        let filter = if replayed != "NULL" {
            filter.to_string()
        } else {
            filter.replace("AND replayed_at IS NULL", "")
        };
        let mut stmt = conn
            .prepare(&format!(
                "SELECT id, at, plant, route, message_id, step, plugin, version, digest, kind, reason, field, position, content_type, headers, body, {replayed}, {lineage}
                 FROM dead_letters {filter}"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![route, limit], |row| {
                let headers: String = row.get(14)?;
                let kind: String = row.get(9)?;
                Ok(DeadLetter {
                    id: row.get(0)?,
                    at: row.get(1)?,
                    plant: row.get(2)?,
                    route: row.get(3)?,
                    message_id: row.get(4)?,
                    step: row.get(5)?,
                    plugin: PluginId {
                        name: row.get(6)?,
                        version: row.get(7)?,
                        digest: row.get(8)?,
                    },
                    kind: Kind::parse(&kind),
                    reason: row.get(10)?,
                    field: row.get(11)?,
                    position: row.get(12)?,
                    content_type: row.get(13)?,
                    headers: serde_json::from_str(&headers).unwrap_or_default(),
                    body: row.get(15)?,
                    replayed_at: row.get(16)?,
                    lineage: row.get::<_, Option<String>>(17)?.unwrap_or_default(),
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> DeadLetter {
        DeadLetter {
            id: 0,
            at: String::new(),
            plant: "p".into(),
            route: "r".into(),
            message_id: "m-1".into(),
            step: 1,
            plugin: PluginId {
                name: "x".into(),
                version: "1.0.0".into(),
                digest: "sha256:00".into(),
            },
            kind: Kind::Rejected,
            reason: "bad".into(),
            field: Some("quantity".into()),
            position: Some(33),
            content_type: "text/plain".into(),
            headers: vec![("a".into(), "b".into())],
            body: vec![0xff, b'x'],
            replayed_at: None,
            lineage: "a@1.0.0+sha256:00".into(),
        }
    }

    #[test]
    fn replayed_entries_leave_the_pending_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(dir.path()).unwrap();
        let first = store.record(&entry()).unwrap();
        let second = store.record(&entry()).unwrap();
        store.mark_replayed(first).unwrap();
        let pending = store.pending("r", 10).unwrap();
        assert_eq!(pending.iter().map(|e| e.id).collect::<Vec<_>>(), [second]);
        assert!(store.pending("other", 10).unwrap().is_empty());
        let all = store.list(None).unwrap();
        assert!(all[0].replayed_at.is_some() && all[1].replayed_at.is_none());
        drop(store);
        // Reopening (and its column check) keeps the marks.
        let reopened = DeadLetterStore::open(dir.path()).unwrap();
        assert_eq!(reopened.pending("r", 10).unwrap().len(), 1);
    }

    #[test]
    fn entries_survive_reopening_and_are_readable_while_the_writer_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::open(dir.path()).unwrap();
        let id = store.record(&entry()).unwrap();
        let reader = DeadLetterStore::open_read_only(dir.path())
            .unwrap()
            .unwrap();
        let listed = reader.list(None).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, id);
        assert_eq!(listed[0].body, vec![0xff, b'x']);
        assert_eq!(listed[0].headers, vec![("a".to_string(), "b".to_string())]);
        drop(store);
        let reopened = DeadLetterStore::open(dir.path()).unwrap();
        assert_eq!(reopened.list(Some("r")).unwrap().len(), 1);
        assert_eq!(reopened.list(Some("other")).unwrap().len(), 0);
    }

    #[test]
    fn no_store_yet_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            DeadLetterStore::open_read_only(dir.path())
                .unwrap()
                .is_none()
        );
    }
}
