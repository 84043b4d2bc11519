//! The embedded store's SQLite files (dead letters, plant state, kept answers): one way to open
//! them, so each gets the same durability — WAL, `synchronous = FULL` (a commit is on disk
//! before its caller hears of it), a busy timeout so readers in other processes (`millrace dlq
//! list`, `dlq replay`) wait instead of failing — and its schema.

use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// Open (or create) the SQLite file at `path` and apply `schema` (idempotent statements).
pub fn open(path: &Path, schema: &str) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(schema)?;
    Ok(conn)
}
