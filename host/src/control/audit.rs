//! The admin API's audit log: every request that changes something or is refused — who (the
//! credential's name), from where, what (method, path, plant), when and the answer's status —
//! in `DATA_DIR/audit.sqlite`, committed before the answer is sent. Append-only: nothing in
//! the host updates or deletes an entry, and the file's triggers refuse it. Read with `GET
//! /v1/audit` (filtered by plant, caller, and the id to continue after).

use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// File name of the log inside the data directory.
pub const FILE: &str = "audit.sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    peer TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    plant TEXT,
    status INTEGER NOT NULL,
    detail TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub id: i64,
    /// RFC 3339 UTC.
    pub at: String,
    /// The credential's name (`anonymous` when none was given or known).
    pub who: String,
    /// The client's address.
    pub peer: String,
    pub method: String,
    pub path: String,
    pub plant: Option<String>,
    pub status: u16,
    /// The refusal's reason, or what was done.
    pub detail: String,
}

/// What to list.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub plant: Option<String>,
    pub who: Option<String>,
    /// Entries after this id.
    pub after: Option<i64>,
    pub limit: u32,
}

/// The log.
pub struct AuditLog {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl AuditLog {
    pub fn open(data_dir: &Path) -> Result<AuditLog, crate::durable::StoreError> {
        let (path, conn) = crate::durable::open_in(data_dir, FILE, SCHEMA)?;
        Ok(AuditLog {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// Append `entry` (its `id` and `at` are assigned here).
    pub fn record(&self, entry: &Entry) -> Result<(), crate::durable::StoreError> {
        let conn = self.conn.lock().expect("audit lock");
        conn.execute(
            "INSERT INTO audit (at, who, peer, method, path, plant, status, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                crate::durable::now_rfc3339(),
                entry.who,
                entry.peer,
                entry.method,
                entry.path,
                entry.plant,
                entry.status,
                crate::plugin::bounds::truncate(&entry.detail, 2048),
            ],
        )
        .map_err(|e| crate::durable::StoreError::sql(&self.path, e))?;
        Ok(())
    }

    /// Entries matching `query`, oldest first.
    pub fn list(&self, query: &Query) -> Result<Vec<Entry>, crate::durable::StoreError> {
        let conn = self.conn.lock().expect("audit lock");
        let mut stmt = conn
            .prepare(
                "SELECT id, at, who, peer, method, path, plant, status, detail FROM audit
                 WHERE (?1 IS NULL OR plant = ?1) AND (?2 IS NULL OR who = ?2) AND id > ?3
                 ORDER BY id LIMIT ?4",
            )
            .map_err(|e| crate::durable::StoreError::sql(&self.path, e))?;
        let rows = stmt
            .query_map(
                params![
                    query.plant,
                    query.who,
                    query.after.unwrap_or(0),
                    query.limit.clamp(1, 1000)
                ],
                |row| {
                    Ok(Entry {
                        id: row.get(0)?,
                        at: row.get(1)?,
                        who: row.get(2)?,
                        peer: row.get(3)?,
                        method: row.get(4)?,
                        path: row.get(5)?,
                        plant: row.get(6)?,
                        status: row.get(7)?,
                        detail: row.get(8)?,
                    })
                },
            )
            .map_err(|e| crate::durable::StoreError::sql(&self.path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| crate::durable::StoreError::sql(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(who: &str, plant: Option<&str>) -> Entry {
        Entry {
            id: 0,
            at: String::new(),
            who: who.into(),
            peer: "127.0.0.1:1".into(),
            method: "POST".into(),
            path: "/v1/x".into(),
            plant: plant.map(str::to_string),
            status: 200,
            detail: "done".into(),
        }
    }

    #[test]
    fn entries_are_appended_listed_by_filter_and_never_changed() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        log.record(&entry("ops", Some("a"))).unwrap();
        log.record(&entry("ops", Some("b"))).unwrap();
        log.record(&entry("watch", None)).unwrap();
        let all = log
            .list(&Query {
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(all.len(), 3);
        let a = log
            .list(&Query {
                plant: Some("a".into()),
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(a.len(), 1);
        let after = log
            .list(&Query {
                after: Some(all[0].id),
                limit: 10,
                ..Query::default()
            })
            .unwrap();
        assert_eq!(after.len(), 2);
        // The file itself refuses changes.
        let conn = log.conn.lock().unwrap();
        assert!(conn.execute("DELETE FROM audit", []).is_err());
        assert!(conn.execute("UPDATE audit SET who = 'x'", []).is_err());
    }
}
