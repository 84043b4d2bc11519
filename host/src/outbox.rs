//! The local outbox of routes whose source holds no session with their sink's broker (HTTP in,
//! broker out): outputs are written to a file in the data directory (the caller hears 202 once
//! they are on disk) and the transport's drainer publishes them in the order they were accepted,
//! deleting each only after the broker confirmed it. The plant keeps sending while the broker is
//! away; what was accepted survives a host restart. Each transport has its own file and says
//! what an entry's two address fields are: AMQP `outbox.sqlite` (`target` the exchange, `key`
//! the routing key), MQTT `mqtt-outbox.sqlite` (`target` the topic, `key` `retain` or empty).
//!
//! Bounded by `host.outbox_max_messages`: a message whose outputs do not fit is refused (503
//! with `Retry-After`) rather than accepted and lost. A host that dies between the broker's
//! confirm and the delete publishes that batch again after its restart, with the same output
//! ids (at least once; consumers deduplicate by `message-id`).

use crate::plugin::bindings::types::Message;
use rusqlite::{Connection, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Why outputs were not accepted into the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The outbox holds `held` of at most `max` outputs; `more` did not fit.
    #[error(
        "the outbox is full ({held} of {max} outputs wait for the broker; {more} more do not fit)"
    )]
    Full {
        held: usize,
        max: usize,
        more: usize,
    },
    #[error(transparent)]
    Store(#[from] crate::durable::StoreError),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    plant TEXT NOT NULL,
    route TEXT NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    lineage TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
";

/// Columns added after the first release of the outbox: `headers`, the output's trace context
/// (`traceparent`, `tracestate`) as a JSON array of name/value pairs.
const ADDED_COLUMNS: &[(&str, &str)] = &[("headers", "TEXT")];

/// An output waiting for the broker.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub seq: i64,
    /// Where it goes (the transport's first address field).
    pub target: String,
    /// How it goes (the transport's second address field).
    pub key: String,
    /// The chain that made it (`millrace-lineage`).
    pub lineage: String,
    pub output: Message,
}

/// The outbox file.
pub struct Outbox {
    path: PathBuf,
    conn: Mutex<Connection>,
    held: AtomicUsize,
    max: usize,
    wake: Notify,
}

impl Outbox {
    /// Open (or create) the outbox `file` in `data_dir`, holding at most `max` outputs.
    pub fn open(
        data_dir: &Path,
        file: &str,
        max: usize,
    ) -> Result<Outbox, crate::durable::StoreError> {
        let (path, conn) = crate::durable::open_in(data_dir, file, SCHEMA)?;
        crate::durable::add_missing_columns(&conn, "outbox", ADDED_COLUMNS)
            .map_err(|e| crate::durable::StoreError::sql(&path, e))?;
        let held: i64 = conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0))
            .map_err(|e| crate::durable::StoreError::sql(&path, e))?;
        Ok(Outbox {
            path,
            conn: Mutex::new(conn),
            held: AtomicUsize::new(held as usize),
            max,
            wake: Notify::new(),
        })
    }

    fn sql(&self, source: rusqlite::Error) -> crate::durable::StoreError {
        crate::durable::StoreError::sql(&self.path, source)
    }

    /// Outputs waiting.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Keep one message's outputs, each with its target and key, all or none; on disk when this
    /// returns.
    pub fn put(
        &self,
        lineage: &str,
        outputs: &[(String, String, Message)],
    ) -> Result<(), OutboxError> {
        let mut conn = self.conn.lock().expect("outbox connection lock");
        let held = self.held();
        if held + outputs.len() > self.max {
            return Err(OutboxError::Full {
                held,
                max: self.max,
                more: outputs.len(),
            });
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let tx = conn.transaction().map_err(|e| self.sql(e))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO outbox (exchange, routing_key, message_id, plant, route, content_type, body, lineage, at_ms, headers)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(|e| self.sql(e))?;
            for (target, key, output) in outputs {
                let carried: Vec<(&str, &str)> =
                    crate::telemetry::trace::carried(&output.headers).collect();
                let headers = (!carried.is_empty())
                    .then(|| serde_json::to_string(&carried).expect("string pairs serialize"));
                insert
                    .execute(params![
                        target,
                        key,
                        output.id,
                        output.plant,
                        output.route,
                        output.content_type,
                        output.body,
                        lineage,
                        now,
                        headers
                    ])
                    .map_err(|e| self.sql(e))?;
            }
        }
        tx.commit().map_err(|e| self.sql(e))?;
        self.held.fetch_add(outputs.len(), Ordering::Relaxed);
        self.wake.notify_one();
        Ok(())
    }

    /// The oldest `n` waiting outputs, in the order they were accepted.
    pub fn oldest(&self, n: usize) -> Result<Vec<Waiting>, crate::durable::StoreError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        let mut select = conn
            .prepare_cached(
                "SELECT seq, exchange, routing_key, message_id, plant, route, content_type, body, lineage, headers
                 FROM outbox ORDER BY seq LIMIT ?1",
            )
            .map_err(|e| self.sql(e))?;
        let rows = select
            .query_map(params![n as i64], |row| {
                Ok(Waiting {
                    seq: row.get(0)?,
                    target: row.get(1)?,
                    key: row.get(2)?,
                    lineage: row.get(8)?,
                    output: Message {
                        id: row.get(3)?,
                        plant: row.get(4)?,
                        route: row.get(5)?,
                        content_type: row.get(6)?,
                        headers: row
                            .get::<_, Option<String>>(9)?
                            .and_then(|h| serde_json::from_str(&h).ok())
                            .unwrap_or_default(),
                        body: row.get(7)?,
                    },
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Forget outputs up to and including `seq` (the broker confirmed them).
    pub fn remove_through(&self, seq: i64) -> Result<(), crate::durable::StoreError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        let removed = conn
            .prepare_cached("DELETE FROM outbox WHERE seq <= ?1")
            .and_then(|mut forget| forget.execute(params![seq]))
            .map_err(|e| self.sql(e))?;
        self.held.fetch_sub(
            removed.min(self.held.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// [`Outbox::put`] for a sink: the outputs held (on disk), or why not, as the pipeline says
    /// it. Blocking (a write and fsync) on a runtime thread that may block.
    pub fn hold(
        &self,
        lineage: &str,
        outputs: &[(String, String, Message)],
    ) -> Result<crate::pipeline::sinks::Delivered, crate::pipeline::sinks::DeliveryError> {
        use crate::pipeline::sinks::{Delivered, DeliveryError};
        tokio::task::block_in_place(|| self.put(lineage, outputs)).map_err(|e| match e {
            full @ OutboxError::Full { .. } => DeliveryError::Full(full.to_string()),
            OutboxError::Store(e) => {
                DeliveryError::Store(format!("the outbox could not keep the outputs: {e}"))
            }
        })?;
        Ok(Delivered::Held {
            accepted: outputs.len(),
            waiting: self.held(),
        })
    }

    /// Wait until something may be waiting: a put here, or a second passed (another process,
    /// `millrace dlq replay`, may have added outputs to the file; the count is read again).
    pub async fn idle(&self) {
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => self.refresh_count(),
        }
    }

    /// Re-read the count (another process may have added outputs).
    fn refresh_count(&self) {
        let conn = self.conn.lock().expect("outbox connection lock");
        if let Ok(n) = conn.query_row("SELECT COUNT(*) FROM outbox", [], |row| {
            row.get::<_, i64>(0)
        }) {
            self.held.store(n as usize, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(id: &str) -> (String, String, Message) {
        (
            "ex".into(),
            "plant-a.type".into(),
            Message {
                id: id.into(),
                plant: "plant-a".into(),
                route: "r".into(),
                content_type: "application/cloudevents+json".into(),
                headers: Vec::new(),
                body: id.as_bytes().to_vec(),
            },
        )
    }

    #[test]
    fn an_output_keeps_its_trace_context_and_an_older_outbox_opens() {
        let dir = tempfile::tempdir().unwrap();
        // An outbox written before the headers column existed.
        let conn = rusqlite::Connection::open(dir.path().join("outbox.sqlite")).unwrap();
        conn.execute_batch(&SCHEMA.replace("IF NOT EXISTS ", ""))
            .unwrap();
        drop(conn);
        let outbox = Outbox::open(dir.path(), "outbox.sqlite", 10).unwrap();
        let (target, key, mut traced) = output("t-1");
        traced.headers = vec![
            ("x-other".into(), "not kept".into()),
            (
                "traceparent".into(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
            ("tracestate".into(), "vendor=abc".into()),
        ];
        outbox
            .put("p@1+sha256:00", &[(target, key, traced), output("t-2")])
            .unwrap();
        let waiting = outbox.oldest(10).unwrap();
        assert_eq!(
            waiting[0].output.headers,
            [
                (
                    "traceparent".to_string(),
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string()
                ),
                ("tracestate".to_string(), "vendor=abc".to_string()),
            ]
        );
        assert!(waiting[1].output.headers.is_empty());
    }

    #[test]
    fn outputs_wait_in_acceptance_order_across_reopens_and_the_bound_refuses_whole_messages() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), "outbox.sqlite", 3).unwrap();
        outbox
            .put("p@1+sha256:00", &[output("a-1"), output("a-2")])
            .unwrap();
        let full = outbox.put("p@1+sha256:00", &[output("b-1"), output("b-2")]);
        assert!(
            matches!(
                full,
                Err(OutboxError::Full {
                    held: 2,
                    max: 3,
                    more: 2
                })
            ),
            "{full:?}"
        );
        outbox.put("p@1+sha256:00", &[output("c-1")]).unwrap();
        drop(outbox);
        let outbox = Outbox::open(dir.path(), "outbox.sqlite", 3).unwrap();
        assert_eq!(outbox.held(), 3);
        let waiting = outbox.oldest(10).unwrap();
        let ids: Vec<_> = waiting.iter().map(|w| w.output.id.as_str()).collect();
        assert_eq!(ids, ["a-1", "a-2", "c-1"]);
        outbox.remove_through(waiting[1].seq).unwrap();
        assert_eq!(outbox.held(), 1);
        assert_eq!(outbox.oldest(10).unwrap()[0].output.id, "c-1");
    }
}
