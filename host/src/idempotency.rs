//! Idempotent ingress. HTTP: the final answer to a request with an `Idempotency-Key` is kept (an
//! SQLite file in the data directory) for `host.idempotency_window_s`, and a repeat of the
//! request within the window gets that answer again without running the chain a second time —
//! no second output, no second dead letter, no second write to a plant's state.
//!
//! Keys are scoped by route. A repeat must carry the same content type and body (compared by
//! SHA-256); the same key with another body is refused. While the first request is being
//! mediated, a repeat is told to come back (409). Only final answers are kept: outputs (2xx)
//! and rejections (422); a transient failure (5xx) may succeed when retried, so it is not.
//!
//! Bounded: at most `max_keys` answers and `max_bytes` of them are kept (the oldest are evicted
//! first: a resend of an evicted request is mediated again), and an answer larger than
//! `max_answer_bytes` is given but not kept.
//!
//! AMQP: the ids of settled deliveries (per route, same window) are kept, so a redelivery of a
//! message already settled — the host died before its ack reached the broker — is acknowledged
//! without a second run. A filter in memory ([`seen`]) answers most lookups of ids never settled
//! without reading the file.

mod seen;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// File name of the store inside the data directory.
pub const FILE: &str = "idempotency.sqlite";
/// The file a host holds locked while it has the store open.
pub const LOCK_FILE: &str = "idempotency.lock";

/// Lock `path` (created if missing) for this process, or say who holds it.
fn lock(path: &Path) -> Result<std::fs::File, IdempotencyError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| IdempotencyError::Lock {
            path: path.to_path_buf(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(IdempotencyError::InUse {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(IdempotencyError::Lock {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Errors of the store.
pub use crate::durable::StoreError as IdempotencyError;

/// An answer as it was sent.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What to do with a keyed request.
#[derive(Debug)]
pub enum Begin {
    /// First time (or the kept answer expired): mediate, then [`InFlight::finish`].
    Fresh(InFlight),
    /// Answered before: send this again.
    Answered(StoredAnswer),
    /// The key was used for another content type or body.
    Mismatch,
    /// The first request with this key is still being mediated.
    InProgress,
}

/// A keyed request being mediated; dropping it without [`InFlight::finish`] keeps nothing.
#[derive(Debug)]
pub struct InFlight {
    store: Arc<IdempotencyStore>,
    route: String,
    key: String,
    fingerprint: String,
}

/// How much the store keeps of HTTP answers.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Answers kept at most (`host.idempotency_max_keys`, default 1,000,000).
    pub max_keys: u64,
    /// Bytes of kept answers at most (`host.idempotency_max_mib`, default 1024).
    pub max_bytes: u64,
    /// Larger answers are given but not kept (`host.idempotency_max_answer_kib`, default 1024).
    pub max_answer_bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_keys: 1_000_000,
            max_bytes: 1024 << 20,
            max_answer_bytes: 1 << 20,
        }
    }
}

/// The store.
pub struct IdempotencyStore {
    path: PathBuf,
    window: Duration,
    bounds: Bounds,
    conn: Mutex<Connection>,
    /// Held while the store is open: the filter knows only the ids this process settles, so
    /// no other process may settle ids in the same file meanwhile.
    _lock: std::fs::File,
    /// Settled ids, as a filter: an id it does not hold was not settled.
    seen: Arc<seen::Seen>,
    in_flight: Mutex<HashSet<(String, String)>>,
    /// Answers kept, their bytes (read from the file when opened, kept up to date under
    /// `conn`'s lock), and the time the last one was kept.
    kept: Mutex<(u64, u64, i64)>,
}

/// Bytes one kept answer stands for, as SQL over a row of `answers`.
const ROW_BYTES: &str = "length(CAST(route AS BLOB)) + length(CAST(key AS BLOB)) + length(CAST(headers AS BLOB)) + length(body) + 64";

impl std::fmt::Debug for IdempotencyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyStore")
            .field("path", &self.path)
            .field("window", &self.window)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS answers (
    route TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (route, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_at ON answers (at_ms);
CREATE TABLE IF NOT EXISTS processed (
    route TEXT NOT NULL,
    message_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (route, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS processed_at ON processed (at_ms);
";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// SHA-256 of the content type and the body: what makes two requests "the same".
pub fn fingerprint(content_type: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(content_type.as_bytes());
    hash.update([0]);
    hash.update(body);
    hex::encode(hash.finalize())
}

impl IdempotencyStore {
    /// Open (or create) the store in `data_dir`, keeping answers for `window`.
    pub fn open(data_dir: &Path, window: Duration) -> Result<IdempotencyStore, IdempotencyError> {
        Self::open_bounded(data_dir, window, Bounds::default())
    }

    /// [`IdempotencyStore::open`] with its bounds.
    pub fn open_bounded(
        data_dir: &Path,
        window: Duration,
        bounds: Bounds,
    ) -> Result<IdempotencyStore, IdempotencyError> {
        let (path, conn) = crate::durable::open_in(data_dir, FILE, SCHEMA)?;
        let lock = lock(&data_dir.join(LOCK_FILE))?;
        let kept: (i64, i64) = conn
            .query_row(
                &format!("SELECT COUNT(*), COALESCE(SUM({ROW_BYTES}), 0) FROM answers"),
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(|e| IdempotencyError::sql(&path, e))?;
        let seen = Arc::new(seen::Seen::new());
        read_settled(&path, &seen);
        Ok(IdempotencyStore {
            path,
            window,
            bounds,
            conn: Mutex::new(conn),
            _lock: lock,
            seen,
            in_flight: Mutex::new(HashSet::new()),
            kept: Mutex::new((kept.0 as u64, kept.1 as u64, 0)),
        })
    }

    fn sql(&self, source: rusqlite::Error) -> IdempotencyError {
        IdempotencyError::sql(&self.path, source)
    }

    /// Look `key` up on `route` for a request with `fingerprint`.
    pub fn begin(
        self: &Arc<Self>,
        route: &str,
        key: &str,
        fingerprint: String,
    ) -> Result<Begin, IdempotencyError> {
        let slot = (route.to_string(), key.to_string());
        let mut in_flight = self.in_flight.lock().expect("in-flight keys lock");
        if in_flight.contains(&slot) {
            return Ok(Begin::InProgress);
        }
        let oldest = now_ms() - self.window.as_millis() as i64;
        let found = {
            let conn = self.conn.lock().expect("idempotency connection lock");
            conn.prepare_cached(
                "SELECT fingerprint, status, headers, body FROM answers
                 WHERE route = ?1 AND key = ?2 AND at_ms >= ?3",
            )
            .and_then(|mut read| {
                read.query_row(params![route, key, oldest], |row| {
                    let headers: String = row.get(2)?;
                    Ok((
                        row.get::<_, String>(0)?,
                        StoredAnswer {
                            status: row.get(1)?,
                            headers: serde_json::from_str(&headers).unwrap_or_default(),
                            body: row.get(3)?,
                        },
                    ))
                })
                .optional()
            })
            .map_err(|e| self.sql(e))?
        };
        match found {
            Some((kept, answer)) if kept == fingerprint => Ok(Begin::Answered(answer)),
            Some(_) => Ok(Begin::Mismatch),
            None => {
                in_flight.insert(slot);
                Ok(Begin::Fresh(InFlight {
                    store: Arc::clone(self),
                    route: route.to_string(),
                    key: key.to_string(),
                    fingerprint,
                }))
            }
        }
    }

    fn keep(&self, flight: &InFlight, answer: &StoredAnswer) -> Result<(), IdempotencyError> {
        let size = answer.body.len()
            + answer
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>();
        if size > self.bounds.max_answer_bytes {
            tracing::info!(route = %flight.route, key = %flight.key, bytes = size, "answer larger than host.idempotency_max_answer_kib: given, not kept");
            return Ok(());
        }
        let headers = serde_json::to_string(&answer.headers).expect("string pairs serialize");
        let conn = self.conn.lock().expect("idempotency connection lock");
        let mut kept = self.kept.lock().expect("idempotency bounds lock");
        // Strictly increasing under the lock, so "oldest" is well defined within a millisecond.
        let now = now_ms().max(kept.2 + 1);
        kept.2 = now;
        let removed = |rows: Vec<i64>, kept: &mut (u64, u64, i64)| {
            kept.0 = kept.0.saturating_sub(rows.len() as u64);
            kept.1 = kept.1.saturating_sub(rows.iter().sum::<i64>() as u64);
        };
        let replaced: Vec<i64> = conn
            .prepare_cached(&format!(
                "DELETE FROM answers WHERE route = ?1 AND key = ?2 RETURNING {ROW_BYTES}"
            ))
            .and_then(|mut delete| {
                delete
                    .query_map(params![flight.route, flight.key], |row| row.get(0))?
                    .collect()
            })
            .map_err(|e| self.sql(e))?;
        removed(replaced, &mut kept);
        let added: i64 = conn
            .prepare_cached(&format!(
                "INSERT INTO answers (route, key, fingerprint, at_ms, status, headers, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING {ROW_BYTES}"
            ))
            .and_then(|mut insert| {
                insert.query_row(
                    params![
                        flight.route,
                        flight.key,
                        flight.fingerprint,
                        now,
                        answer.status,
                        headers,
                        answer.body
                    ],
                    |row| row.get(0),
                )
            })
            .map_err(|e| self.sql(e))?;
        kept.0 += 1;
        kept.1 += added as u64;
        let expired: Vec<i64> = conn
            .prepare_cached(&format!(
                "DELETE FROM answers WHERE at_ms < ?1 RETURNING {ROW_BYTES}"
            ))
            .and_then(|mut delete| {
                delete
                    .query_map(params![now - self.window.as_millis() as i64], |row| {
                        row.get(0)
                    })?
                    .collect()
            })
            .map_err(|e| self.sql(e))?;
        removed(expired, &mut kept);
        // Over a bound: the oldest answers go first, a batch at a time.
        while kept.0 > self.bounds.max_keys || kept.1 > self.bounds.max_bytes {
            let batch = if kept.0 > self.bounds.max_keys {
                (kept.0 - self.bounds.max_keys).min(256)
            } else {
                16
            };
            let evicted: Vec<i64> = conn
                .prepare_cached(&format!(
                    "DELETE FROM answers WHERE (route, key) IN
                       (SELECT route, key FROM answers ORDER BY at_ms LIMIT ?1)
                     RETURNING {ROW_BYTES}"
                ))
                .and_then(|mut delete| {
                    delete
                        .query_map(params![batch as i64], |row| row.get(0))?
                        .collect()
                })
                .map_err(|e| self.sql(e))?;
            if evicted.is_empty() {
                break;
            }
            tracing::debug!(
                evicted = evicted.len(),
                "idempotency store over its bounds: oldest answers evicted"
            );
            removed(evicted, &mut kept);
        }
        Ok(())
    }

    /// Answers kept and their bytes.
    pub fn kept(&self) -> (u64, u64) {
        let kept = self.kept.lock().expect("idempotency bounds lock");
        (kept.0, kept.1)
    }
}

/// Broker deliveries: which message ids a route has settled (outputs confirmed or dead letter
/// confirmed), so a redelivery of one of them is acknowledged without a second run.
impl IdempotencyStore {
    /// Whether `message_id` was settled on `route` within the window.
    pub fn processed(&self, route: &str, message_id: &str) -> Result<bool, IdempotencyError> {
        if !self.seen.may_hold(route, message_id) {
            return Ok(false);
        }
        let oldest = now_ms() - self.window.as_millis() as i64;
        let conn = self.conn.lock().expect("idempotency connection lock");
        conn.prepare_cached(
            "SELECT 1 FROM processed WHERE route = ?1 AND message_id = ?2 AND at_ms >= ?3",
        )
        .and_then(|mut lookup| {
            lookup
                .query_row(params![route, message_id, oldest], |_| Ok(()))
                .optional()
        })
        .map(|found| found.is_some())
        .map_err(|e| self.sql(e))
    }

    /// Record that `message_id` was settled on `route`; committed when this returns.
    pub fn mark_processed(&self, route: &str, message_id: &str) -> Result<(), IdempotencyError> {
        let mut conn = self.conn.lock().expect("idempotency connection lock");
        self.mark_all(&mut conn, &[(route.to_string(), message_id.to_string())])
    }

    /// Record several settled ids in one transaction on `conn` (one disk flush for all).
    fn mark_all(
        &self,
        conn: &mut Connection,
        settled: &[(String, String)],
    ) -> Result<(), IdempotencyError> {
        let now = now_ms();
        let oldest = now - self.window.as_millis() as i64;
        // Into the filter first: from the commit on, a lookup must find them.
        self.seen
            .add(settled.iter().map(|(r, m)| (r.as_str(), m.as_str())), now);
        let tx = conn.transaction().map_err(|e| self.sql(e))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO processed (route, message_id, at_ms) VALUES (?1, ?2, ?3)",
                )
                .map_err(|e| self.sql(e))?;
            for (route, message_id) in settled {
                insert
                    .execute(params![route, message_id, now])
                    .map_err(|e| self.sql(e))?;
            }
        }
        tx.prepare_cached("DELETE FROM processed WHERE at_ms < ?1")
            .and_then(|mut expire| expire.execute(params![oldest]))
            .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))?;
        // What the file no longer holds, the filter may forget: only once that is committed.
        self.seen.forget_before(oldest);
        Ok(())
    }

    /// A writer, on its own connection, that commits the settled ids of concurrent deliveries
    /// together: while one commit is on its way the next ones queue, and go in the following
    /// transaction. Lookups ([`Self::processed`]) are not held up by its commits.
    pub fn settled_log(self: &Arc<Self>) -> Result<SettledLog, IdempotencyError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let (_, mut conn) = crate::durable::open_in(dir, FILE, SCHEMA)?;
        // A settled id only saves a second run: its commits reach the operating system before
        // the acknowledgement (a killed host keeps them) but are not each waited for on the
        // disk; a power loss may forget the last ones, which then run again (copies, never a
        // loss).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.sql(e))?;
        let (tx, rx) = std::sync::mpsc::channel::<Mark>();
        let store = Arc::clone(self);
        std::thread::Builder::new()
            .name("millrace-settled".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < 1024 {
                        match rx.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let ids: Vec<_> = batch.iter().map(|m| m.id.clone()).collect();
                    let result = store.mark_all(&mut conn, &ids).map_err(|e| e.to_string());
                    for mark in batch {
                        let _ = mark.done.send(result.clone());
                    }
                }
            })
            .expect("the settled-ids writer thread starts");
        Ok(SettledLog { tx })
    }
}

/// Read every id `path` holds settled into `seen`, on a thread of its own (until it is done,
/// lookups read the store). Those past the window too: the file keeps them until the next
/// commit, and a clock set back would make them count again. A failure is logged and leaves
/// lookups on the store.
fn read_settled(path: &Path, seen: &Arc<seen::Seen>) {
    let (path, seen) = (path.to_path_buf(), Arc::clone(seen));
    let read = move || -> rusqlite::Result<u64> {
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mut past = seen::Generations::default();
        let mut ids = 0;
        let mut rows =
            conn.prepare("SELECT route, message_id, at_ms FROM processed ORDER BY at_ms")?;
        let mut rows = rows.query([])?;
        while let Some(row) = rows.next()? {
            // Anything but text fails the read, which leaves every lookup on the store: an id
            // left out would be reported as never settled.
            let (route, id): (String, String) = (row.get(0)?, row.get(1)?);
            past.add(seen.hash(&route, &id), row.get(2)?);
            ids += 1;
        }
        seen.complete(past);
        Ok(ids)
    };
    let started = std::time::Instant::now();
    let spawned = std::thread::Builder::new()
        .name("millrace-settled-read".into())
        .spawn(move || match read() {
            Ok(ids) => tracing::info!(
                ids,
                read_ms = started.elapsed().as_millis() as u64,
                "settled ids read into the filter"
            ),
            Err(e) => tracing::warn!(error = %e, "settled ids not read into the filter; every lookup reads the store"),
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "settled ids not read into the filter; every lookup reads the store");
    }
}

struct Mark {
    id: (String, String),
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Handle of [`IdempotencyStore::settled_log`]; the writer stops when every handle is dropped.
#[derive(Clone)]
pub struct SettledLog {
    tx: std::sync::mpsc::Sender<Mark>,
}

impl SettledLog {
    /// Record that `message_id` was settled on `route`; committed when this returns.
    pub async fn mark(&self, route: &str, message_id: &str) -> Result<(), String> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.tx
            .send(Mark {
                id: (route.to_string(), message_id.to_string()),
                done,
            })
            .map_err(|_| "the settled-ids writer stopped".to_string())?;
        committed
            .await
            .map_err(|_| "the settled-ids writer stopped".to_string())?
    }
}

impl InFlight {
    /// Keep `answer` if it is final (2xx or 422); committed before this returns.
    pub fn finish(self, answer: &StoredAnswer) -> Result<(), IdempotencyError> {
        if (200..300).contains(&answer.status) || answer.status == 422 {
            self.store.keep(&self, answer)?;
        }
        Ok(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.store
            .in_flight
            .lock()
            .expect("in-flight keys lock")
            .remove(&(self.route.clone(), self.key.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_keeps_at_most_its_bounds_evicting_the_oldest_and_not_keeping_big_answers() {
        let dir = tempfile::tempdir().unwrap();
        let bounds = Bounds {
            max_keys: 10,
            max_bytes: 1 << 20,
            max_answer_bytes: 1000,
        };
        let store = Arc::new(
            IdempotencyStore::open_bounded(dir.path(), Duration::from_secs(600), bounds).unwrap(),
        );
        let keep = |key: &str, body: Vec<u8>| {
            let Begin::Fresh(flight) = store
                .begin("r", key, fingerprint("t", key.as_bytes()))
                .unwrap()
            else {
                panic!("{key} is not fresh");
            };
            flight
                .finish(&StoredAnswer {
                    status: 200,
                    headers: vec![],
                    body,
                })
                .unwrap();
        };
        for i in 0..25 {
            keep(&format!("k{i}"), vec![b'x'; 100]);
        }
        assert_eq!(store.kept().0, 10, "at most 10 kept");
        // The oldest went first: k0 is mediated again, k24 is answered.
        assert!(matches!(
            store.begin("r", "k0", fingerprint("t", b"k0")).unwrap(),
            Begin::Fresh(_)
        ));
        assert!(matches!(
            store.begin("r", "k24", fingerprint("t", b"k24")).unwrap(),
            Begin::Answered(_)
        ));
        // An answer over the size bound is given but not kept.
        keep("big", vec![b'x'; 5000]);
        assert!(matches!(
            store.begin("r", "big", fingerprint("t", b"big")).unwrap(),
            Begin::Fresh(_)
        ));
        // The counts survive reopening.
        let (keys, bytes) = store.kept();
        drop(store);
        let reopened =
            IdempotencyStore::open_bounded(dir.path(), Duration::from_secs(600), bounds).unwrap();
        assert_eq!(reopened.kept(), (keys, bytes));
    }

    fn answer(status: u16) -> StoredAnswer {
        StoredAnswer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"[1]".to_vec(),
        }
    }

    fn store(window: Duration) -> (tempfile::TempDir, Arc<IdempotencyStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(IdempotencyStore::open(dir.path(), window).unwrap());
        (dir, store)
    }

    #[test]
    fn a_final_answer_is_given_again_for_the_same_request() {
        let (_dir, store) = store(Duration::from_secs(60));
        let Begin::Fresh(flight) = store.begin("r", "k", "f1".into()).unwrap() else {
            panic!("first use is fresh")
        };
        assert!(matches!(
            store.begin("r", "k", "f1".into()).unwrap(),
            Begin::InProgress
        ));
        flight.finish(&answer(200)).unwrap();
        assert!(
            matches!(store.begin("r", "k", "f1".into()).unwrap(), Begin::Answered(a) if a == answer(200))
        );
        assert!(matches!(
            store.begin("r", "k", "f2".into()).unwrap(),
            Begin::Mismatch
        ));
        assert!(
            matches!(
                store.begin("other-route", "k", "f1".into()).unwrap(),
                Begin::Fresh(_)
            ),
            "keys are per route"
        );
    }

    #[test]
    fn transient_answers_are_not_kept_and_answers_survive_reopening() {
        let (dir, store) = store(Duration::from_secs(60));
        let Begin::Fresh(flight) = store.begin("r", "k", "f".into()).unwrap() else {
            panic!()
        };
        flight.finish(&answer(503)).unwrap();
        let Begin::Fresh(flight) = store.begin("r", "k", "f".into()).unwrap() else {
            panic!("a 503 is not kept")
        };
        flight.finish(&answer(422)).unwrap();
        drop(store);
        let reopened =
            Arc::new(IdempotencyStore::open(dir.path(), Duration::from_secs(60)).unwrap());
        assert!(
            matches!(reopened.begin("r", "k", "f".into()).unwrap(), Begin::Answered(a) if a.status == 422)
        );
    }

    #[test]
    fn processed_ids_are_per_route_and_survive_reopening() {
        let (dir, store) = store(Duration::from_secs(60));
        assert!(!store.processed("r", "m-1").unwrap());
        store.mark_processed("r", "m-1").unwrap();
        assert!(store.processed("r", "m-1").unwrap());
        assert!(!store.processed("other", "m-1").unwrap());
        drop(store);
        let reopened = IdempotencyStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        assert!(reopened.processed("r", "m-1").unwrap());
        // Once the ids the file held are read into the filter, it answers for them too.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !reopened.seen.is_complete() {
            assert!(
                std::time::Instant::now() < deadline,
                "the filter was never read"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(reopened.processed("r", "m-1").unwrap());
        assert!(!reopened.processed("r", "m-2").unwrap());
        reopened.mark_processed("r", "m-2").unwrap();
        assert!(reopened.processed("r", "m-2").unwrap());
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused_while_the_first_is_open() {
        let (dir, store) = store(Duration::from_secs(60));
        let second = IdempotencyStore::open(dir.path(), Duration::from_secs(60));
        assert!(
            matches!(second, Err(IdempotencyError::InUse { .. })),
            "{:?}",
            second.map(|_| ())
        );
        drop(store);
        IdempotencyStore::open(dir.path(), Duration::from_secs(60)).expect("free once closed");
    }

    #[test]
    fn answers_expire_after_the_window() {
        let (_dir, store) = store(Duration::ZERO);
        let Begin::Fresh(flight) = store.begin("r", "k", "f".into()).unwrap() else {
            panic!()
        };
        flight.finish(&answer(200)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(
            store.begin("r", "k", "f".into()).unwrap(),
            Begin::Fresh(_)
        ));
    }
}
