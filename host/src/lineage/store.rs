//! The lineage file (`DATA_DIR/lineage.db`): one row per event of a message, written in batches
//! by the writer thread, read by the admin API and `millrace trace`, pruned by age and count.
//!
//! Unlike the dead letters, a lineage row is a record, not the message: the file is never
//! synced to disk by the host (`synchronous = OFF`), so keeping lineage adds no disk flush to
//! the flushes the message stores need. A host crash loses nothing written; an operating-system
//! crash or power cut may lose the last moments, or damage the file — a damaged file is moved
//! aside (`lineage.db.damaged-<ms>`) and a new one started.

use super::{Note, Retention};
use crate::durable::StoreError;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::path::{Path, PathBuf};

const FILE: &str = "lineage.db";
/// The writer's page cache, at most (KiB): the pages of the indexes a batch of rows touches
/// stay in memory between batches (without it, ids in no order cost a read of the file per row).
const CACHE_KIB: i64 = 32 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS paths (
    seq INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    plant TEXT NOT NULL,
    route TEXT NOT NULL,
    subject TEXT,
    trace_id TEXT,
    events TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS paths_message ON paths(message_id);
CREATE INDEX IF NOT EXISTS paths_time ON paths(at_ms);
CREATE INDEX IF NOT EXISTS paths_subject ON paths(subject) WHERE subject IS NOT NULL;
CREATE INDEX IF NOT EXISTS paths_trace ON paths(trace_id) WHERE trace_id IS NOT NULL;
";

/// The lineage file.
pub struct LineageStore {
    path: PathBuf,
    conn: Connection,
}

/// One event of a message, as read back.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub seq: i64,
    pub at: String,
    pub plant: String,
    pub route: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The event (`event` names it) and its facts.
    #[serde(flatten)]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// A message's path: its events in order, the messages its outputs became (when they have a
/// path of their own here), and the other messages of its trace.
#[derive(Debug, Clone, Serialize)]
pub struct MessagePath {
    pub id: String,
    pub plant: String,
    pub route: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub hops: Vec<Hop>,
    /// Ids of its outputs that were taken in again (another route's input) and have a path.
    pub children: Vec<String>,
    /// Other messages of the same trace (at most 50).
    pub related: Vec<String>,
}

/// A message as a search finds it.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub id: String,
    pub plant: String,
    pub route: String,
    pub first_at: String,
    pub last_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Its latest event (`delivered`, `dead-lettered`, …).
    pub last_event: String,
}

/// What to search for; `None` is any.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub plant: Option<String>,
    pub route: Option<String>,
    pub subject: Option<String>,
    /// Events at or after, Unix milliseconds.
    pub after_ms: Option<i64>,
    /// Events at or before, Unix milliseconds.
    pub before_ms: Option<i64>,
    /// Only these plants (the caller's), `None`: every plant.
    pub plants: Option<Vec<String>>,
    pub limit: u32,
}

impl LineageStore {
    /// Open (or create) the file in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<LineageStore, StoreError> {
        let opened = Self::open_checked(data_dir);
        let Err(StoreError::Open { path, source }) = opened else {
            return opened;
        };
        // A damaged file (an OS crash while unsynced): keep it for a look, start a new one.
        let aside = path.with_extension(format!("db.damaged-{}", super::now_ms()));
        tracing::warn!(file = %path.display(), moved_to = %aside.display(), error = %source, "the lineage file is unreadable; starting a new one");
        std::fs::rename(&path, &aside).map_err(|_| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        Self::open_checked(data_dir)
    }

    fn open_checked(data_dir: &Path) -> Result<LineageStore, StoreError> {
        let (path, conn) = crate::durable::open_in(data_dir, FILE, SCHEMA)?;
        let open = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        conn.pragma_update(None, "synchronous", "OFF")
            .map_err(open)?;
        // Room for the indexes' pages a batch touches: ids and trace ids come in any order.
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(open)?;
        // Reads the header and schema: a file damaged there fails here.
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(open)?;
        Ok(LineageStore { path, conn })
    }

    /// Open the file of `data_dir` for reading; `None` when none was written yet.
    pub fn open_read_only(data_dir: &Path) -> Result<Option<LineageStore>, StoreError> {
        let path = data_dir.join(FILE);
        if !path.exists() {
            return Ok(None);
        }
        let open = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(open)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open)?;
        Ok(Some(LineageStore { path, conn }))
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |e| StoreError::sql(&self.path, e)
    }

    /// Write `notes` in one transaction: one row per message (and route) of the batch, holding
    /// its events in order.
    pub fn write(&mut self, notes: &[Box<Note>]) -> Result<(), StoreError> {
        // The notes of each row, in order: a row's first note, then for every note the next
        // note of its row (`usize::MAX`: none).
        let mut firsts: Vec<usize> = Vec::new();
        let mut next = vec![usize::MAX; notes.len()];
        // SipHash with a random key: message ids are the senders', chosen by anyone.
        let mut last: std::collections::HashMap<(&str, &str, &str), usize> =
            std::collections::HashMap::with_capacity(notes.len());
        for (at, note) in notes.iter().enumerate() {
            let key = (
                note.message_id.as_str(),
                note.plant.as_str(),
                note.route.as_str(),
            );
            match last.insert(key, at) {
                Some(before) => next[before] = at,
                None => firsts.push(at),
            }
        }
        let path = self.path.clone();
        let sql = |e| StoreError::sql(&path, e);
        let tx = self.conn.transaction().map_err(sql)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO paths (message_id, at_ms, plant, route, subject, trace_id, events)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql)?;
            let mut events: Vec<u8> = Vec::new();
            let mut event: Vec<u8> = Vec::new();
            for first in firsts {
                let row = std::iter::successors(Some(first), |&at| {
                    Some(next[at]).filter(|&n| n != usize::MAX)
                })
                .map(|at| &*notes[at]);
                events.clear();
                events.push(b'[');
                let mut subject = None;
                let mut trace_id = None;
                for (i, note) in row.enumerate() {
                    if i > 0 {
                        events.push(b',');
                    }
                    // `{"at_ms":…,` and then the event's members (`"event":…`, as it is tagged):
                    // one object, written without serde's flattening.
                    event.clear();
                    serde_json::to_writer(&mut event, &note.event).expect("events serialize");
                    use std::io::Write as _;
                    write!(events, "{{\"at_ms\":{},", note.at_ms).expect("a Vec takes bytes");
                    events.extend_from_slice(&event[1..]);
                    if subject.is_none() {
                        subject = note.subject.as_deref();
                    }
                    trace_id = trace_id.or(note.trace_id);
                }
                events.push(b']');
                let events = std::str::from_utf8(&events).expect("JSON is UTF-8");
                let first = &notes[first];
                insert
                    .execute(params![
                        first.message_id,
                        first.at_ms,
                        first.plant,
                        first.route,
                        subject,
                        trace_id.map(hex::encode),
                        events,
                    ])
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    }

    /// Delete rows older than the retention, then the oldest past its row count.
    pub fn prune(&self, retention: Retention) -> Result<u64, StoreError> {
        let cutoff = super::now_ms() - retention.max_age.as_millis() as i64;
        let mut pruned = self
            .conn
            .execute("DELETE FROM paths WHERE at_ms < ?1", params![cutoff])
            .map_err(self.sql())? as u64;
        let newest: Option<i64> = self
            .conn
            .query_row("SELECT max(seq) FROM paths", [], |r| r.get(0))
            .map_err(self.sql())?;
        if let Some(newest) = newest {
            let keep_from = newest - retention.max_rows as i64;
            pruned += self
                .conn
                .execute("DELETE FROM paths WHERE seq <= ?1", params![keep_from])
                .map_err(self.sql())? as u64;
        }
        if pruned > 0 {
            crate::telemetry::metrics().lineage_pruned.add(pruned);
        }
        Ok(pruned)
    }

    /// The path of message `id`; `None` when nothing of it is kept (or it is of a plant not in
    /// `plants`).
    pub fn path_of(
        &self,
        id: &str,
        plants: Option<&[String]>,
    ) -> Result<Option<MessagePath>, StoreError> {
        // Ids are kept cut to a bound; a long one is looked up as it was kept.
        let kept = super::bounded(id, super::MAX_ID_BYTES);
        let id = kept.as_str();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, plant, route, subject, trace_id, events FROM paths
                 WHERE message_id = ?1 ORDER BY seq LIMIT 1000",
            )
            .map_err(self.sql())?;
        type Row = (i64, String, String, Option<String>, Option<String>, String);
        let rows: Vec<Row> = stmt
            .query_map(params![id], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                ))
            })
            .map_err(self.sql())?
            .collect::<Result<_, _>>()
            .map_err(self.sql())?;
        let mut hops = Vec::new();
        for (seq, plant, route, subject, trace_id, events) in rows {
            let events: Vec<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_str(&events).unwrap_or_default();
            for mut detail in events {
                let at_ms = detail
                    .remove("at_ms")
                    .and_then(|v| v.as_i64())
                    .unwrap_or_default();
                hops.push(Hop {
                    seq,
                    at: rfc3339(at_ms),
                    plant: plant.clone(),
                    route: route.clone(),
                    subject: subject.clone(),
                    trace_id: trace_id.clone(),
                    detail,
                });
            }
        }
        let Some(first) = hops.first() else {
            return Ok(None);
        };
        if plants.is_some_and(|p| !p.contains(&first.plant)) {
            return Ok(None);
        }
        let (plant, route) = (first.plant.clone(), first.route.clone());
        let subject = hops.iter().find_map(|h| h.subject.clone());
        let trace_id = hops.iter().find_map(|h| h.trace_id.clone());
        let outputs: Vec<String> = hops
            .iter()
            .filter_map(|h| h.detail.get("outputs")?.as_array().cloned())
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let mut children = Vec::new();
        let mut known = self
            .conn
            .prepare_cached("SELECT 1 FROM paths WHERE message_id = ?1 LIMIT 1")
            .map_err(self.sql())?;
        for output in outputs {
            if output != id
                && !children.contains(&output)
                && known
                    .query_row(params![output], |_| Ok(()))
                    .optional()
                    .map_err(self.sql())?
                    .is_some()
            {
                children.push(output);
            }
        }
        let related = match &trace_id {
            None => Vec::new(),
            Some(trace) => {
                let mut stmt = self
                    .conn
                    .prepare_cached(
                        "SELECT message_id FROM paths WHERE trace_id = ?1 AND message_id != ?2
                         GROUP BY message_id ORDER BY min(seq) LIMIT 50",
                    )
                    .map_err(self.sql())?;
                stmt.query_map(params![trace, id], |r| r.get(0))
                    .map_err(self.sql())?
                    .collect::<Result<_, _>>()
                    .map_err(self.sql())?
            }
        };
        Ok(Some(MessagePath {
            id: id.to_string(),
            plant,
            route,
            subject,
            trace_id,
            hops,
            children,
            related,
        }))
    }

    /// Messages matching `search`, the latest first.
    pub fn search(&self, search: &Search) -> Result<Vec<Found>, StoreError> {
        let plants = search
            .plants
            .as_ref()
            .map(|p| serde_json::to_string(p).expect("names serialize"));
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT message_id, plant, route, min(at_ms), max(at_ms), max(subject),
                        (SELECT json_extract(l.events, '$[#-1].event') FROM paths l
                         WHERE l.message_id = h.message_id ORDER BY seq DESC LIMIT 1)
                 FROM paths h
                 WHERE (?1 IS NULL OR plant = ?1)
                   AND (?2 IS NULL OR route = ?2)
                   AND (?3 IS NULL OR message_id IN (SELECT message_id FROM paths WHERE subject = ?3))
                   AND (?4 IS NULL OR at_ms >= ?4)
                   AND (?5 IS NULL OR at_ms <= ?5)
                   AND (?6 IS NULL OR plant IN (SELECT value FROM json_each(?6)))
                 GROUP BY message_id, plant, route
                 ORDER BY max(seq) DESC
                 LIMIT ?7",
            )
            .map_err(self.sql())?;
        stmt.query_map(
            params![
                search.plant,
                search.route,
                search.subject,
                search.after_ms,
                search.before_ms,
                plants,
                search.limit.clamp(1, 1000),
            ],
            |row| {
                Ok(Found {
                    id: row.get(0)?,
                    plant: row.get(1)?,
                    route: row.get(2)?,
                    first_at: rfc3339(row.get(3)?),
                    last_at: rfc3339(row.get(4)?),
                    subject: row.get(5)?,
                    last_event: row.get(6)?,
                })
            },
        )
        .map_err(self.sql())?
        .collect::<Result<_, _>>()
        .map_err(self.sql())
    }

    /// Rows kept now.
    pub fn rows(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT count(*) FROM paths", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(self.sql())
    }
}

/// Unix milliseconds as RFC 3339 UTC.
pub fn rfc3339(ms: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// An RFC 3339 time (or Unix milliseconds) as Unix milliseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

#[cfg(test)]
mod tests {
    use super::super::{Event, Note, StepHop};
    use super::*;

    fn note(id: &str, at_ms: i64, event: Event, body: Option<&str>) -> Box<Note> {
        Box::new(Note {
            message_id: id.into(),
            plant: "p1".into(),
            route: "r1".into(),
            trace_id: Some([7; 16]),
            at_ms,
            event,
            subject: body.and_then(|b| super::super::subject_of(b.as_bytes())),
        })
    }

    fn mediated(outputs: &[&str]) -> Event {
        Event::Mediated {
            source: "http",
            steps: vec![StepHop {
                step: 1,
                plugin: "csv-records".into(),
                version: "1.0.0".into(),
                digest: "sha256:ab".into(),
                duration_us: 40,
                decision: "outputs",
                outputs: outputs.len(),
                instance: "reused",
                memory_bytes: 1 << 17,
            }],
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            more_outputs: 0,
        }
    }

    #[test]
    fn a_path_links_outputs_subjects_and_prunes_by_age_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LineageStore::open(dir.path()).unwrap();
        let now = super::super::now_ms();
        store
            .write(&[
                note("m1", now, mediated(&["o1"]), Some(r#"{"subject":"WO-7"}"#)),
                // Another message's note between a message's two: still one row each.
                note("o1", now + 2, mediated(&[]), None),
                note(
                    "m1",
                    now + 1,
                    Event::Delivered {
                        sink: "amqp",
                        outcome: "delivered",
                        count: 1,
                    },
                    None,
                ),
            ])
            .unwrap();
        let path = store.path_of("m1", None).unwrap().unwrap();
        assert_eq!(path.hops.len(), 2, "two events, one row");
        assert_eq!(store.rows().unwrap(), 2);
        assert_eq!(path.subject.as_deref(), Some("WO-7"));
        assert_eq!(path.children, vec!["o1".to_string()]);
        assert_eq!(path.related, vec!["o1".to_string()]);
        assert_eq!(path.hops[1].detail["event"], "delivered");
        assert!(
            store
                .path_of("m1", Some(&["p2".to_string()]))
                .unwrap()
                .is_none()
        );
        let found = store
            .search(&Search {
                subject: Some("WO-7".into()),
                limit: 10,
                ..Search::default()
            })
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].last_event, "delivered");
        // Old rows go by age; then the count bound keeps the newest.
        store
            .write(&[note("old", now - 10_000_000, mediated(&[]), None)])
            .unwrap();
        let retention = Retention {
            enabled: true,
            max_age: std::time::Duration::from_secs(3600),
            max_rows: 1,
        };
        assert_eq!(store.prune(retention).unwrap(), 2, "the old row, then m1's");
        assert_eq!(store.rows().unwrap(), 1);
        assert!(store.path_of("old", None).unwrap().is_none());
        assert!(store.path_of("m1", None).unwrap().is_none());
        assert!(store.path_of("o1", None).unwrap().is_some());
    }

    #[test]
    fn a_plugin_naming_huge_ids_and_reasons_makes_bounded_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LineageStore::open(dir.path()).unwrap();
        let huge = "x".repeat(1 << 20);
        let mut note = note("m1", super::super::now_ms(), mediated(&[]), None);
        // What the recorder keeps of a hostile run: ids, outputs and reasons cut to their bounds.
        note.message_id = super::super::bounded(&huge, super::super::MAX_ID_BYTES);
        note.event = Event::Failed {
            source: "http",
            steps: Vec::new(),
            step: 1,
            kind: "rejected".into(),
            reason: super::super::bounded(&huge, super::super::MAX_REASON_BYTES),
        };
        store.write(&[note]).unwrap();
        let events: String = store
            .conn
            .query_row("SELECT events || message_id FROM paths", [], |r| r.get(0))
            .unwrap();
        assert!(events.len() < 2 * 1024, "{} bytes", events.len());
        // Found by the id as sent: it is looked up as it was kept.
        let path = store.path_of(&huge, None).unwrap().unwrap();
        assert_eq!(path.hops[0].detail["event"], "failed");
    }

    #[test]
    fn times_read_as_rfc3339_or_milliseconds() {
        assert_eq!(parse_time("1000"), Some(1000));
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(rfc3339(1500), "1970-01-01T00:00:01.500Z");
        assert_eq!(parse_time("yesterday"), None);
    }
}
