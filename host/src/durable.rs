//! The embedded store's SQLite files (dead letters, plant state, kept answers): one way to open
//! them, so each gets the same durability — WAL, `synchronous = FULL` (a commit is on disk
//! before its caller hears of it), a busy timeout so readers in other processes (`millrace dlq
//! list`, `dlq replay`) wait instead of failing — its schema, and one error type naming the file.

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of an embedded store file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file could not be opened, created or given its schema.
    #[error("cannot open the store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// Another process holds the store's lock: its data directory serves another host.
    #[error(
        "{path} is held by another process: a data directory serves one host at a time (give each host its own host.data_dir)"
    )]
    InUse { path: PathBuf },
    /// The store's lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A read or write failed.
    #[error("store {path}: {source}")]
    Sql {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

impl StoreError {
    /// A failed read or write of the file at `path`.
    pub fn sql(path: &Path, source: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Open (or create) `file` in `data_dir` (created if missing) and apply `schema` (idempotent
/// statements); the file's path and its connection.
pub fn open_in(
    data_dir: &Path,
    file: &str,
    schema: &str,
) -> Result<(PathBuf, Connection), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Directory {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let path = data_dir.join(file);
    let open = |source| StoreError::Open {
        path: path.clone(),
        source,
    };
    let conn = Connection::open(&path).map_err(open)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(open)?;
    conn.execute_batch(schema).map_err(open)?;
    Ok((path, conn))
}

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .expect("UTC time formats")
}

/// Add to `table` the columns of `added` it lacks (columns added after a store's first
/// release: a data directory written by an older host opens unchanged).
pub fn add_missing_columns(
    conn: &rusqlite::Connection,
    table: &str,
    added: &[(&str, &str)],
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
    let present: Vec<String> = stmt
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for (column, definition) in added {
        if !present.iter().any(|p| p == column) {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}
