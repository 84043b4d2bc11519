//! Message lineage: the path each message took through the host — the chain it ran (each step's
//! plugin, version, digest, duration and decision), where its outputs went or the dead letter it
//! became, its retries and replays — kept in the embedded store (`DATA_DIR/lineage.db`) for the
//! admin API (`GET /v1/messages/{id}`, `GET /v1/messages?…`) and `millrace trace ID`.
//!
//! The hot path only hands a [`Note`] to a bounded queue ([`note`]); one writer thread turns
//! notes into rows in batches and prunes what is past the retention ([`store`]). When the queue
//! is full the note is dropped and counted (`millrace_lineage_dropped_total`): lineage never
//! slows or blocks a message. Off (`[telemetry] lineage = false`): nothing is queued.

pub mod store;

use serde::Serialize;
use std::sync::OnceLock;
use std::time::Duration;

/// Longest reason a note keeps (bytes; the dead letter keeps the whole of it).
pub const MAX_REASON_BYTES: usize = 1024;
/// Output ids a note keeps; the rest are counted (`more_outputs`).
pub const MAX_OUTPUT_IDS: usize = 64;
/// Longest message id kept (bytes): a plugin names its outputs' ids, of any length.
pub const MAX_ID_BYTES: usize = 256;
/// Longest subject kept (bytes).
pub const MAX_SUBJECT_BYTES: usize = 256;
/// Largest body the writer reads a subject from.
const MAX_SUBJECT_BODY: usize = 64 * 1024;
/// Notes waiting for the writer, at most.
const QUEUE: usize = 16_384;

/// What the host keeps of lineage (`[telemetry]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retention {
    /// Whether lineage is kept at all (`lineage`, default true).
    pub enabled: bool,
    /// How long a row is kept (`lineage_retention_h`, default 168: a week).
    pub max_age: Duration,
    /// Rows kept at most, the oldest pruned first (`lineage_max_rows`, default 1,000,000). A
    /// row is the events of one message on one route that were written together — usually its
    /// whole way through the route; a retried message has one per attempt.
    pub max_rows: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            enabled: true,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_rows: 1_000_000,
        }
    }
}

/// One step of a chain as the message passed it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepHop {
    pub step: u32,
    pub plugin: String,
    pub version: String,
    pub digest: String,
    pub duration_us: u64,
    /// `outputs`, or the failure's kind (`rejected`, `retry-later`, `deadline`, `trap`, …).
    pub decision: &'static str,
    pub outputs: usize,
    /// Whether the call ran on a new instance (`fresh`) or a pooled one (`reused`).
    pub instance: &'static str,
    /// The instance's linear memory after the call, in bytes.
    pub memory_bytes: u64,
}

/// What happened to a message at one point of its way.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The chain ran to its end.
    Mediated {
        source: &'static str,
        steps: Vec<StepHop>,
        outputs: Vec<String>,
        #[serde(skip_serializing_if = "is_zero")]
        more_outputs: usize,
    },
    /// A step failed.
    Failed {
        source: &'static str,
        steps: Vec<StepHop>,
        step: u32,
        kind: String,
        reason: String,
    },
    /// Recorded as a dead letter: in the local store (`local`, with its id) or the broker's
    /// dead-letter queue (`broker`).
    DeadLettered {
        store: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        dead_letter: Option<i64>,
        kind: String,
        reason: String,
    },
    /// Sent round again after a transient failure (`attempt` failed).
    Retry { attempt: u32, reason: String },
    /// The outputs reached the sink (`outcome`: `delivered`, `held` in the outbox, or `reply`).
    Delivered {
        sink: &'static str,
        outcome: &'static str,
        count: usize,
    },
    /// The sink did not take the outputs.
    NotDelivered { sink: &'static str, reason: String },
    /// A dead letter of it was run again (by `by`).
    Replayed {
        #[serde(skip_serializing_if = "Option::is_none")]
        dead_letter: Option<i64>,
        by: String,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One row to be: a message's event, with where and when.
pub struct Note {
    pub message_id: String,
    pub plant: String,
    pub route: String,
    pub trace_id: Option<[u8; 16]>,
    pub at_ms: i64,
    pub event: Event,
    /// The message's subject: what a header named (`ce-subject`), else the `subject` attribute
    /// of its first JSON output (or of the input, when it gave none), bounded.
    pub subject: Option<String>,
}

enum Job {
    Note(Box<Note>),
    Flush(flume::Sender<()>),
}

/// The process's lineage recorder: the writer's queue.
struct Recorder {
    queue: flume::Sender<Job>,
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();

/// Start keeping lineage in `data_dir` as `retention` says (once per process; later calls keep
/// the first). An error (the store cannot be opened) leaves lineage off and is returned.
pub fn start(data_dir: &std::path::Path, retention: Retention) -> Result<(), String> {
    if !retention.enabled || RECORDER.get().is_some() {
        return Ok(());
    }
    let writer = store::LineageStore::open(data_dir).map_err(|e| e.to_string())?;
    let (queue, jobs) = flume::bounded(QUEUE);
    std::thread::Builder::new()
        .name("millrace-lineage".into())
        .spawn(move || write_loop(writer, jobs, retention))
        .map_err(|e| format!("cannot start the lineage writer: {e}"))?;
    let _ = RECORDER.set(Recorder { queue });
    Ok(())
}

/// Whether notes are kept (callers skip building them otherwise).
pub fn enabled() -> bool {
    RECORDER.get().is_some() && !QUIET.get()
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While held, this thread notes nothing (a dry run is no part of a message's path).
pub struct Quiet(bool);

impl Quiet {
    pub fn enter() -> Quiet {
        Quiet(QUIET.replace(true))
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        QUIET.set(self.0);
    }
}

/// Hand `note` to the writer; dropped (and counted) when its queue is full.
pub fn note(note: Note) {
    let Some(recorder) = RECORDER.get() else {
        return;
    };
    if QUIET.get() {
        return;
    }
    if recorder.queue.try_send(Job::Note(Box::new(note))).is_err() {
        crate::telemetry::metrics().lineage_dropped.inc();
    }
}

/// A note of `event` for message `message_id` of `route` now.
pub fn of(
    route: &crate::route::Route,
    message_id: &str,
    trace_id: Option<[u8; 16]>,
    event: Event,
) -> Note {
    Note {
        message_id: bounded(message_id, MAX_ID_BYTES),
        plant: route.plant.clone(),
        route: route.name.clone(),
        trace_id,
        at_ms: now_ms(),
        event,
        subject: None,
    }
}

/// Note `event` (made only when lineage is kept) for message `message_id` of `route` now.
pub fn record(
    route: &crate::route::Route,
    message_id: &str,
    trace_id: Option<[u8; 16]>,
    event: impl FnOnce() -> Event,
) {
    if enabled() {
        note(of(route, message_id, trace_id, event()));
    }
}

/// Wait (at most `within`) until every note handed over so far is written.
pub fn flush(within: Duration) {
    let Some(recorder) = RECORDER.get() else {
        return;
    };
    let (done, written) = flume::bounded(1);
    if recorder
        .queue
        .send_timeout(Job::Flush(done), within)
        .is_ok()
    {
        // After the send: the writer that clears the flag then finds the job.
        FLUSH_ASKED.store(true, std::sync::atomic::Ordering::Release);
        let _ = written.recv_timeout(within);
    }
}

/// Set when a flush waits, so that the writer stops gathering and writes now.
static FLUSH_ASKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `text` cut to at most `max` bytes on a character boundary.
pub fn bounded(text: &str, max: usize) -> String {
    crate::plugin::bounds::truncate(text, max)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `subject` of a JSON body (a CloudEvent's attribute, read as
/// [`crate::pipeline::event::read_attributes`] reads it), bounded.
pub fn subject_of(body: &[u8]) -> Option<String> {
    if body.len() > MAX_SUBJECT_BODY || body.first().is_some_and(|b| *b != b'{') {
        return None;
    }
    let [subject] = crate::pipeline::event::read_attributes(body, ["subject"]);
    subject
        .filter(|text| !text.is_empty())
        .map(|text| bounded(&text, MAX_SUBJECT_BYTES))
}

/// Whether a body of `content_type` may carry a subject the writer can read.
pub fn may_name_subject(content_type: &str, body: &[u8]) -> bool {
    content_type.contains("json") && body.len() <= MAX_SUBJECT_BODY
}

/// The writer's nice value: messages come first. When the host's threads want more CPU than
/// the machine has, the writer gets what they leave (about a tenth of a core against each busy
/// one), its queue fills and notes are dropped and counted, rather than the writer taking CPU
/// from the messages.
const WRITER_NICE: i32 = 10;

/// Give the calling thread the writer's lower priority (on Linux a thread's nice value is its
/// own), never a higher one than it has (a host started with a larger nice value keeps it); a
/// host that cannot keeps the writer at its priority.
fn lower_priority() {
    let lowered = rustix::process::getpriority_process(None).and_then(|nice| {
        if nice < WRITER_NICE {
            rustix::process::setpriority_process(None, WRITER_NICE)
        } else {
            Ok(())
        }
    });
    if let Err(e) = lowered {
        tracing::debug!(error = %e, "lineage: the writer keeps its priority");
    }
}

/// Pruning runs at least this often, and after this many rows.
const PRUNE_EVERY: Duration = Duration::from_secs(30);
const PRUNE_AFTER_ROWS: u64 = 10_000;
/// Notes written in one transaction, at most: as many as the queue holds. Under load a batch is
/// thousands of rows, and a page of an index that ids in no order (a sender's UUIDs, trace ids)
/// touch is written once per batch, not once per row (`cargo bench -p millrace-host --bench
/// lineage`).
pub const BATCH: usize = QUEUE;
/// How long the writer gathers notes before a write, at most (unless a flush is asked for).
const GATHER: Duration = Duration::from_millis(250);
/// Notes waiting after which the writer writes without gathering longer: half the queue, so
/// that notes keep finding room while it writes.
const WRITE_AT: usize = QUEUE / 2;
/// How often the writer looks whether [`WRITE_AT`] notes wait while it gathers.
const GATHER_STEP: Duration = Duration::from_millis(10);

/// The next batch, from the job `first` taken off `jobs` (none: the wait for one timed out) and
/// what waits behind it: the notes to write (at most [`BATCH`]) and the flushes to answer once
/// they are written. Gathers for [`GATHER`] first, unless [`WRITE_AT`] notes already wait or a
/// flush is asked for.
#[allow(clippy::vec_box)] // the notes stay in the boxes they came through the queue in
fn take_batch(
    jobs: &flume::Receiver<Job>,
    first: Option<Job>,
) -> (Vec<Box<Note>>, Vec<flume::Sender<()>>) {
    // Let notes gather for a moment before writing: the writer wakes once per batch, not once
    // per note (a wake-up costs more than the note), and fewer, larger transactions touch each
    // page of the file once per batch. What already waits is taken at once, whatever the rate.
    if matches!(first, Some(Job::Note(_))) {
        let gathering = std::time::Instant::now();
        while gathering.elapsed() < GATHER
            && jobs.len() < WRITE_AT
            && !FLUSH_ASKED.load(std::sync::atomic::Ordering::Acquire)
        {
            std::thread::sleep(GATHER_STEP);
        }
    }
    FLUSH_ASKED.store(false, std::sync::atomic::Ordering::Release);
    let mut notes = Vec::new();
    let mut flushes = Vec::new();
    let mut next = first;
    while let Some(job) = next.take() {
        match job {
            Job::Note(note) => notes.push(note),
            Job::Flush(done) => flushes.push(done),
        }
        if notes.len() >= BATCH {
            break;
        }
        next = jobs.try_recv().ok();
    }
    (notes, flushes)
}

fn write_loop(mut store: store::LineageStore, jobs: flume::Receiver<Job>, retention: Retention) {
    lower_priority();
    let mut last_prune = std::time::Instant::now();
    let mut since_prune = 0u64;
    if let Err(e) = store.prune(retention) {
        tracing::warn!(error = %e, "lineage: pruning failed");
    }
    loop {
        let first = match jobs.recv_timeout(PRUNE_EVERY) {
            Ok(job) => Some(job),
            Err(flume::RecvTimeoutError::Timeout) => None,
            Err(flume::RecvTimeoutError::Disconnected) => return,
        };
        let (notes, flushes) = take_batch(&jobs, first);
        if !notes.is_empty() {
            since_prune += notes.len() as u64;
            if let Err(e) = store.write(&notes) {
                crate::telemetry::metrics()
                    .lineage_dropped
                    .add(notes.len() as u64);
                tracing::warn!(error = %e, rows = notes.len(), "lineage: rows not written");
            }
        }
        if since_prune >= PRUNE_AFTER_ROWS || last_prune.elapsed() >= PRUNE_EVERY {
            if let Err(e) = store.prune(retention) {
                tracing::warn!(error = %e, "lineage: pruning failed");
            }
            last_prune = std::time::Instant::now();
            since_prune = 0;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_note(id: usize) -> Job {
        Job::Note(Box::new(Note {
            message_id: format!("m-{id}"),
            plant: "p".into(),
            route: "r".into(),
            trace_id: None,
            at_ms: 0,
            event: Event::Retry {
                attempt: 1,
                reason: String::new(),
            },
            subject: None,
        }))
    }

    #[test]
    fn the_writer_takes_every_note_that_waits_in_one_batch_up_to_its_bound() {
        // The writer once took at most 2,048 notes per gathering pause, which capped it at
        // about 20,000 notes a second under load and dropped the rest.
        let (queue, jobs) = flume::bounded(QUEUE);
        for id in 0..QUEUE {
            queue.try_send(a_note(id)).unwrap();
        }
        let first = jobs.try_recv().ok();
        let (notes, flushes) = take_batch(&jobs, first);
        assert_eq!(notes.len(), QUEUE, "a full queue is one batch");
        assert!(flushes.is_empty());
        assert!(jobs.is_empty());
        // A flush behind notes comes back with them, to be answered once they are written.
        let (done, _written) = flume::bounded(1);
        queue.try_send(a_note(0)).unwrap();
        queue.try_send(Job::Flush(done)).unwrap();
        FLUSH_ASKED.store(true, std::sync::atomic::Ordering::Release);
        let first = jobs.try_recv().ok();
        let (notes, flushes) = take_batch(&jobs, first);
        assert_eq!((notes.len(), flushes.len()), (1, 1));
    }

    #[test]
    fn the_writer_runs_below_the_normal_priority_and_no_other_thread_does() {
        let here = rustix::process::getpriority_process(None).unwrap();
        let writer = std::thread::spawn(|| {
            lower_priority();
            rustix::process::getpriority_process(None).unwrap()
        });
        assert_eq!(writer.join().unwrap(), here.max(WRITER_NICE));
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), here);
        // A thread already below the writer's priority stays there.
        let lower = std::thread::spawn(move || {
            rustix::process::setpriority_process(None, here.max(WRITER_NICE + 5)).unwrap();
            lower_priority();
            rustix::process::getpriority_process(None).unwrap()
        });
        assert_eq!(lower.join().unwrap(), here.max(WRITER_NICE + 5));
    }

    #[test]
    fn a_subject_is_read_from_a_json_event_only() {
        assert_eq!(
            subject_of(br#"{"type":"t","subject":"WO-1","data":{"x":[1,2]}}"#).as_deref(),
            Some("WO-1")
        );
        assert_eq!(subject_of(br#"{"subject":42}"#).as_deref(), Some("42"));
        assert_eq!(subject_of(br#"{"subject":""}"#), None);
        assert_eq!(subject_of(br#"{"data":{"subject":"x"}}"#), None);
        assert_eq!(subject_of(b"A|B|C"), None);
        let long = format!(r#"{{"subject":"{}"}}"#, "é".repeat(400));
        let cut = subject_of(long.as_bytes()).unwrap();
        assert!(
            cut.starts_with("éé") && cut.ends_with("bytes cut)"),
            "{cut}"
        );
        assert!(cut.len() < MAX_SUBJECT_BYTES + 32, "{cut}");
    }

    #[test]
    fn a_hostile_body_on_the_messages_way_is_read_within_its_bounds_or_not_at_all() {
        // Read on the message's way: a sender's or a plugin's body, whatever it holds. Nesting
        // as deep as the size bound allows is skipped without recursion (no stack to exhaust).
        let deep = format!(
            r#"{{"data":{}1{},"subject":"x"}}"#,
            "[".repeat(30_000),
            "]".repeat(30_000)
        );
        assert!(deep.len() <= MAX_SUBJECT_BODY);
        assert_eq!(subject_of(deep.as_bytes()).as_deref(), Some("x"));
        let padding = "x".repeat(MAX_SUBJECT_BODY);
        let big = format!(r#"{{"subject":"WO-1","pad":"{padding}"}}"#);
        assert_eq!(
            subject_of(big.as_bytes()),
            None,
            "a body past the bound is not read"
        );
        assert!(!may_name_subject("application/json", big.as_bytes()));
        // Read no further than the subject: a body cut short after it still names it.
        assert_eq!(subject_of(br#"{"subject":"WO-1""#).as_deref(), Some("WO-1"));
        assert_eq!(subject_of(br#"{"subject":"WO-1"#), None, "cut short");
        assert_eq!(subject_of(br#"{"data":[1,"subject":"WO-1"}"#), None);
        assert_eq!(subject_of(b"{\"subject\":\"\xff\"}"), None, "not UTF-8");
        assert_eq!(subject_of(br#"{"subject":["a"]}"#), None);
    }
}
