//! Traces: one trace per business message across every hop, W3C Trace Context in and out,
//! spans exported over OTLP/HTTP (protobuf) when an endpoint is configured.
//!
//! - In: a message's `traceparent`/`tracestate` headers (an HTTP request's headers, an AMQP
//!   message's headers, an MQTT message's user properties all become message headers), else
//!   the `traceparent` attribute of a structured CloudEvent body.
//! - Spans: one per message at its source (kind server for HTTP, consumer for a queue or
//!   topic), a child per step (plugin, version, digest, decision, instance memory), a child per
//!   delivery (kind client or producer, the sink's outcome).
//! - Out: every output carries `traceparent` (and `tracestate`) naming the message's span: as
//!   a header where the sink has headers (AMQP, webhook, MQTT user property) and as the
//!   CloudEvent's `traceparent` attribute of a structured event. Retries through the delay
//!   queues, outbox entries and dead letters keep the input's headers, so a message retried and
//!   replayed stays one trace.
//! - Export: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` +
//!   `/v1/traces`; headers from `OTEL_EXPORTER_OTLP_TRACES_HEADERS` / `OTEL_EXPORTER_OTLP_HEADERS`
//!   (`k=v,k2=v2`); sampling from `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`,
//!   `traceidratio`, `parentbased_*`, default `parentbased_always_on`) and
//!   `OTEL_TRACES_SAMPLER_ARG`; `OTEL_SERVICE_NAME` (default `millrace`);
//!   `OTEL_BSP_SCHEDULE_DELAY` (ms between exports, default 5000), `OTEL_BSP_MAX_QUEUE_SIZE`
//!   (spans waiting, default 2048: past it spans are dropped and counted).
//!
//! No endpoint: no span is made and nothing is exported; a message pays one flag check.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a span stands in its trace (W3C Trace Context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// `tracestate`, passed on unchanged.
    pub state: String,
}

impl SpanContext {
    /// Parse a `traceparent` value (version 00, or a later version read as 00); `None` when it
    /// is not one (all-zero ids are invalid).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let parts: Vec<&str> = traceparent.trim().split('-').collect();
        let [version, trace, span, flags, ..] = parts.as_slice() else {
            return None;
        };
        if version.len() != 2 || *version == "ff" || (*version == "00" && parts.len() != 4) {
            return None;
        }
        let trace_id: [u8; 16] = hex_lower(trace)?.try_into().ok()?;
        let span_id: [u8; 8] = hex_lower(span)?.try_into().ok()?;
        let flags = hex_lower(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] || flags.len() != 1 {
            return None;
        }
        Some(SpanContext {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
            state: bounded_state(tracestate.unwrap_or_default()),
        })
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            u8::from(self.sampled)
        )
    }

    /// The context in `headers` (`traceparent`, `tracestate`, any case).
    pub fn from_headers(headers: &[(String, String)]) -> Option<SpanContext> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        SpanContext::parse(get("traceparent")?, get("tracestate"))
    }

    /// The context a message brings: its headers, else its structured CloudEvent's attribute.
    pub fn of_message(
        headers: &[(String, String)],
        content_type: &str,
        body: &[u8],
    ) -> Option<SpanContext> {
        SpanContext::from_headers(headers).or_else(|| {
            if !crate::pipeline::event::is_structured(content_type) {
                return None;
            }
            let event: serde_json::Value = serde_json::from_slice(body).ok()?;
            SpanContext::parse(
                event.get("traceparent")?.as_str()?,
                event.get("tracestate").and_then(|s| s.as_str()),
            )
        })
    }
}

/// A `tracestate` as the sender wrote it, or nothing when it is past W3C's bounds (512 bytes,
/// 32 members): it is copied into every span and every output, so a sender cannot make it cost
/// more than that.
fn bounded_state(tracestate: &str) -> String {
    let state = tracestate.trim();
    if state.len() > MAX_TRACESTATE_BYTES || state.split(',').count() > MAX_TRACESTATE_MEMBERS {
        return String::new();
    }
    state.to_string()
}

/// W3C Trace Context's bounds on `tracestate`.
const MAX_TRACESTATE_BYTES: usize = 512;
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Lower-case hex only, as the W3C format wants.
fn hex_lower(text: &str) -> Option<Vec<u8>> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode(text).ok()
}

/// The `traceparent` and `tracestate` of `headers` (any case), for a sink to write.
pub fn carried(headers: &[(String, String)]) -> impl Iterator<Item = (&'static str, &str)> {
    headers.iter().filter_map(|(k, v)| {
        if k.eq_ignore_ascii_case("traceparent") {
            Some(("traceparent", v.as_str()))
        } else if k.eq_ignore_ascii_case("tracestate") {
            Some(("tracestate", v.as_str()))
        } else {
            None
        }
    })
}

/// Set `traceparent`/`tracestate` in `headers` to `context` (replacing what was there).
pub fn inject(headers: &mut Vec<(String, String)>, context: &SpanContext) {
    headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case("traceparent") && !k.eq_ignore_ascii_case("tracestate")
    });
    headers.push(("traceparent".into(), context.traceparent()));
    if !context.state.is_empty() {
        headers.push(("tracestate".into(), context.state.clone()));
    }
}

/// Set a structured CloudEvent's `traceparent` (and `tracestate`, removed when the context has
/// none) extension attributes; other bodies are left as they are.
pub fn inject_event(content_type: &str, body: &mut Vec<u8>, context: &SpanContext) {
    let traceparent = context.traceparent();
    // As in the headers: the event carries the message's `tracestate` or none, never one a
    // plugin wrote.
    if context.state.is_empty() {
        let attributes = [("traceparent", traceparent.as_str())];
        crate::pipeline::event::set_attributes(content_type, body, &attributes, &["tracestate"]);
    } else {
        let attributes = [
            ("traceparent", traceparent.as_str()),
            ("tracestate", context.state.as_str()),
        ];
        crate::pipeline::event::set_attributes(content_type, body, &attributes, &[]);
    }
}

/// OTLP span kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

/// A span being recorded; [`Span::end`] hands it to the exporter.
#[derive(Debug)]
pub struct Span {
    pub context: SpanContext,
    parent: Option<[u8; 8]>,
    name: String,
    kind: Kind,
    start: u64,
    attributes: Vec<(&'static str, Value)>,
    /// `Some(message)`: the span failed.
    error: Option<String>,
}

impl Span {
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push((key, value.into()));
    }

    /// Mark the span failed, with why.
    pub fn fail(&mut self, why: impl Into<String>) {
        self.error = Some(why.into());
    }

    /// End it now and hand it to the exporter (a span not sampled is dropped).
    pub fn end(self) {
        if !self.context.sampled {
            return;
        }
        let end = now_ns();
        tracer().export(Finished { span: self, end });
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A span ended, waiting for export.
#[derive(Debug)]
struct Finished {
    span: Span,
    end: u64,
}

/// Which root traces are sampled, and whether a parent's decision is followed.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sampler {
    /// Of traces this host starts, the share kept (0.0 to 1.0).
    ratio: f64,
    /// Follow the incoming context's sampled flag.
    parent_based: bool,
}

impl Sampler {
    fn from_env(name: Option<&str>, arg: Option<&str>) -> Sampler {
        let ratio = arg
            .and_then(|a| a.trim().parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(1.0);
        match name.map(str::trim).unwrap_or("parentbased_always_on") {
            "always_on" => Sampler {
                ratio: 1.0,
                parent_based: false,
            },
            "always_off" => Sampler {
                ratio: 0.0,
                parent_based: false,
            },
            "traceidratio" => Sampler {
                ratio,
                parent_based: false,
            },
            "parentbased_always_off" => Sampler {
                ratio: 0.0,
                parent_based: true,
            },
            "parentbased_traceidratio" => Sampler {
                ratio,
                parent_based: true,
            },
            other => {
                if other != "parentbased_always_on" {
                    tracing::warn!(
                        sampler = other,
                        "OTEL_TRACES_SAMPLER not known; sampling every trace"
                    );
                }
                Sampler {
                    ratio: 1.0,
                    parent_based: true,
                }
            }
        }
    }

    fn sample(&self, trace_id: &[u8; 16], parent: Option<&SpanContext>) -> bool {
        if let (true, Some(parent)) = (self.parent_based, parent) {
            return parent.sampled;
        }
        // The trace id's low 8 bytes against the ratio, as OpenTelemetry's TraceIdRatioBased.
        let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes"));
        (low >> 1) < ((self.ratio * (1u64 << 63) as f64) as u64) || self.ratio >= 1.0
    }
}

/// End `span` (when there is one), failed with `failed`'s reason when given.
pub fn end(span: Option<Span>, failed: Option<String>) {
    if let Some(mut span) = span {
        if let Some(why) = failed {
            span.fail(why);
        }
        span.end();
    }
}

thread_local! {
    static CURRENT: std::cell::Cell<Option<([u8; 16], [u8; 8])>> = const { std::cell::Cell::new(None) };
}

/// The span a thread works for (a message's, while its chain runs on a mediation thread): log
/// lines written meanwhile carry its trace and span ids. Restores the one before when dropped.
pub struct Current(Option<([u8; 16], [u8; 8])>);

impl Current {
    pub fn enter(context: Option<&SpanContext>) -> Current {
        Current(CURRENT.replace(context.map(|c| (c.trace_id, c.span_id))))
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.set(self.0);
    }
}

/// The trace and span ids the current thread works for, if any.
pub fn current() -> Option<([u8; 16], [u8; 8])> {
    CURRENT.get()
}

/// The process's tracer: off unless an OTLP endpoint is configured.
pub struct Tracer {
    sampler: Sampler,
    queue: Option<mpsc::SyncSender<Finished>>,
    /// Spans dropped because the export queue was full.
    pub dropped: AtomicU64,
    flushed: Mutex<Option<mpsc::Sender<mpsc::Sender<()>>>>,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// The process's tracer: as [`configure`] set it, else from the environment on first use.
pub fn tracer() -> &'static Tracer {
    TRACER.get_or_init(|| Tracer::from_env(|k| std::env::var(k).ok()))
}

/// Configure the process's tracer from `settings` (`[telemetry]`, by the standard variable
/// each stands for), the environment filling the rest. Only before the first span: later, the
/// tracer already made stays (and this says so).
pub fn configure(settings: &[(&'static str, String)]) {
    let made = TRACER.set(Tracer::from_env(|k| {
        settings
            .iter()
            .find(|(var, _)| *var == k)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(k).ok())
    }));
    if made.is_err() && !settings.is_empty() {
        tracing::warn!("[telemetry] trace settings not applied: the tracer was already running");
    }
}

impl Tracer {
    fn from_env(var: impl Fn(&str) -> Option<String>) -> Tracer {
        let sampler = Sampler::from_env(
            var("OTEL_TRACES_SAMPLER").as_deref(),
            var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        );
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .filter(|e| !e.is_empty())
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .filter(|e| !e.is_empty())
                    .map(|e| format!("{}/v1/traces", e.trim_end_matches('/')))
            });
        let off = Tracer {
            sampler,
            queue: None,
            dropped: AtomicU64::new(0),
            flushed: Mutex::new(None),
        };
        let Some(endpoint) = endpoint else {
            return off;
        };
        if sampler.ratio == 0.0 && !sampler.parent_based {
            return off;
        }
        let headers = parse_headers(
            &var("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
                .or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"))
                .unwrap_or_default(),
        );
        let delay = var("OTEL_BSP_SCHEDULE_DELAY")
            .and_then(|d| d.parse::<u64>().ok())
            .map_or(Duration::from_secs(5), Duration::from_millis);
        let capacity = var("OTEL_BSP_MAX_QUEUE_SIZE")
            .and_then(|d| d.parse::<usize>().ok())
            .unwrap_or(2048)
            .clamp(1, 1_000_000);
        let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| "millrace".into());
        let (queue, spans) = mpsc::sync_channel(capacity);
        let (flush, flushes) = mpsc::channel();
        let exporter = Exporter {
            endpoint: endpoint.clone(),
            headers,
            service,
            delay,
        };
        std::thread::Builder::new()
            .name("millrace-otlp".into())
            .spawn(move || exporter.run(spans, flushes))
            .expect("the export thread starts");
        tracing::info!(endpoint = %endpoint, "exporting traces over OTLP/HTTP");
        Tracer {
            sampler,
            queue: Some(queue),
            dropped: AtomicU64::new(0),
            flushed: Mutex::new(Some(flush)),
        }
    }

    /// Whether spans are made at all.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Start a span named `name` under `parent` (a new trace when none); `None` when tracing
    /// is off.
    pub fn start(
        &self,
        name: impl Into<String>,
        kind: Kind,
        parent: Option<&SpanContext>,
    ) -> Option<Span> {
        self.queue.as_ref()?;
        let trace_id = match parent {
            Some(p) => p.trace_id,
            None => crate::ids::random_bytes(),
        };
        let sampled = self.sampler.sample(&trace_id, parent);
        let span_id = loop {
            let id: [u8; 8] = crate::ids::random_bytes()[..8].try_into().expect("8 bytes");
            if id != [0; 8] {
                break id;
            }
        };
        Some(Span {
            context: SpanContext {
                trace_id,
                span_id,
                sampled,
                state: parent.map(|p| p.state.clone()).unwrap_or_default(),
            },
            parent: parent.map(|p| p.span_id),
            name: name.into(),
            kind,
            start: now_ns(),
            attributes: Vec::new(),
            error: None,
        })
    }

    fn export(&self, finished: Finished) {
        if let Some(queue) = &self.queue
            && queue.try_send(finished).is_err()
        {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Export what waits now; returns once sent (or after `within`).
    pub fn flush(&self, within: Duration) {
        let Some(flush) = self.flushed.lock().expect("flush lock").clone() else {
            return;
        };
        let (done, wait) = mpsc::channel();
        if flush.send(done).is_ok() {
            let _ = wait.recv_timeout(within);
        }
    }
}

/// `k=v,k2=v2` with percent-encoded values, as OTEL_EXPORTER_OTLP_HEADERS writes them.
fn parse_headers(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let v = crate::percent::decode(v.trim());
            (!k.trim().is_empty()).then(|| (k.trim().to_string(), v))
        })
        .collect()
}

/// The export thread: batches of at most [`BATCH`] spans, every `delay` or when a batch is
/// full, POSTed as one `ExportTraceServiceRequest`.
struct Exporter {
    endpoint: String,
    headers: Vec<(String, String)>,
    service: String,
    delay: Duration,
}

/// Spans in one export request, at most.
const BATCH: usize = 512;

/// How often the export thread takes what waits in the queue.
const TICK: Duration = Duration::from_millis(25);

impl Exporter {
    fn run(self, spans: mpsc::Receiver<Finished>, flushes: mpsc::Receiver<mpsc::Sender<()>>) {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .http_status_as_error(false)
                .build(),
        );
        let mut batch = Vec::new();
        let mut next = std::time::Instant::now() + self.delay;
        let mut warned = false;
        loop {
            // Polled, not waited on: a thread blocked on the queue would be woken for every
            // span, a wake-up on the way of every message.
            std::thread::sleep(TICK);
            loop {
                match spans.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            let flush = flushes.try_recv().ok();
            let due = std::time::Instant::now() >= next;
            if (due || batch.len() >= BATCH || flush.is_some()) && !batch.is_empty() {
                for chunk in batch.chunks(BATCH) {
                    let body = encode(&self.service, chunk);
                    let mut request = agent
                        .post(&self.endpoint)
                        .header("content-type", "application/x-protobuf");
                    for (k, v) in &self.headers {
                        request = request.header(k.as_str(), v.as_str());
                    }
                    match request.send(&body[..]) {
                        Ok(r) if r.status().is_success() => warned = false,
                        Ok(r) if !warned => {
                            warned = true;
                            tracing::warn!(endpoint = %self.endpoint, status = r.status().as_u16(), spans = chunk.len(), "the OTLP endpoint refused spans; dropped");
                        }
                        Err(e) if !warned => {
                            warned = true;
                            tracing::warn!(endpoint = %self.endpoint, error = %e, spans = chunk.len(), "the OTLP endpoint is unreachable; spans dropped");
                        }
                        _ => {}
                    }
                }
                batch.clear();
            }
            if due {
                next = std::time::Instant::now() + self.delay;
            }
            if let Some(done) = flush {
                let _ = done.send(());
            }
        }
    }
}

// ---- OTLP protobuf (opentelemetry/proto/collector/trace/v1, trace/v1, common/v1) ----------

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn message_field(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes_field(out, field, &inner);
}

/// A `KeyValue` (key 1, `AnyValue` 2: string 1, bool 2, int 3).
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message_field(out, field, |kv| {
        bytes_field(kv, 1, key.as_bytes());
        message_field(kv, 2, |any| match value {
            Value::Text(s) => bytes_field(any, 1, s.as_bytes()),
            Value::Bool(b) => {
                tag(any, 2, 0);
                varint(any, u64::from(*b));
            }
            Value::Int(i) => {
                tag(any, 3, 0);
                varint(any, *i as u64);
            }
        });
    });
}

/// An `ExportTraceServiceRequest` of `spans` from service `service`.
fn encode(service: &str, spans: &[Finished]) -> Vec<u8> {
    let mut out = Vec::new();
    message_field(&mut out, 1, |resource_spans| {
        message_field(resource_spans, 1, |resource| {
            key_value(resource, 1, "service.name", &Value::from(service));
        });
        message_field(resource_spans, 2, |scope_spans| {
            message_field(scope_spans, 1, |scope| {
                bytes_field(scope, 1, b"millrace");
                bytes_field(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for finished in spans {
                let span = &finished.span;
                message_field(scope_spans, 2, |s| {
                    bytes_field(s, 1, &span.context.trace_id);
                    bytes_field(s, 2, &span.context.span_id);
                    if !span.context.state.is_empty() {
                        bytes_field(s, 3, span.context.state.as_bytes());
                    }
                    if let Some(parent) = &span.parent {
                        bytes_field(s, 4, parent);
                    }
                    bytes_field(s, 5, span.name.as_bytes());
                    tag(s, 6, 0);
                    varint(s, span.kind as u64);
                    tag(s, 7, 1);
                    s.extend_from_slice(&span.start.to_le_bytes());
                    tag(s, 8, 1);
                    s.extend_from_slice(&finished.end.to_le_bytes());
                    for (k, v) in &span.attributes {
                        key_value(s, 9, k, v);
                    }
                    // Status: message 2, code 3 (1 ok, 2 error).
                    message_field(s, 15, |status| {
                        if let Some(why) = &span.error {
                            bytes_field(status, 2, why.as_bytes());
                            tag(status, 3, 0);
                            varint(status, 2);
                        } else {
                            tag(status, 3, 0);
                            varint(status, 1);
                        }
                    });
                });
            }
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_and_prints_as_w3c_says() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = SpanContext::parse(t, Some("congo=t61rcWkgMzE")).unwrap();
        assert!(c.sampled);
        assert_eq!(c.traceparent(), t);
        assert_eq!(c.state, "congo=t61rcWkgMzE");
        // A hostile tracestate is not carried on.
        let long = "k=".to_string() + &"v".repeat(600);
        let many = (0..40)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        for state in [long, many] {
            assert_eq!(SpanContext::parse(t, Some(&state)).unwrap().state, "");
        }
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(SpanContext::parse(bad, None), None, "{bad}");
        }
        // A later version may add fields; its first four are read as version 00's.
        assert!(
            SpanContext::parse(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x",
                None
            )
            .is_some_and(|c| !c.sampled)
        );
    }

    #[test]
    fn a_structured_event_carries_its_context_in_and_out() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let body = format!(r#"{{"specversion":"1.0","id":"1","traceparent":"{parent}"}}"#);
        let c =
            SpanContext::of_message(&[], "application/cloudevents+json", body.as_bytes()).unwrap();
        assert_eq!(c.traceparent(), parent);
        for written in [
            r#"{"specversion":"1.0","id":"2"}"#,
            " { } ",
            r#"{"id":"3","traceparent":"00-00000000000000000000000000000001-0000000000000001-00"}"#,
        ] {
            let mut out = written.as_bytes().to_vec();
            inject_event("application/cloudevents+json; charset=utf-8", &mut out, &c);
            let event: serde_json::Value = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
            assert_eq!(event["traceparent"], parent, "{written}");
        }
        let with_state = SpanContext {
            state: "a=\"b\"".into(),
            ..c.clone()
        };
        let mut out = br#"{"id":"4"}"#.to_vec();
        inject_event("application/cloudevents+json", &mut out, &with_state);
        let event: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(event["tracestate"], "a=\"b\"");
        assert_eq!(event["id"], "4");
        // A context without state takes away a tracestate the plugin wrote, as the headers do.
        for written in [
            r#"{"id":"5","tracestate":"plugin=1","n":1E2}"#,
            r#"{"tracestate":"plugin=1"}"#,
        ] {
            let mut out = written.as_bytes().to_vec();
            inject_event("application/cloudevents+json", &mut out, &c);
            let text = String::from_utf8(out).unwrap();
            let event: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(event.get("tracestate"), None, "{text}");
            assert_eq!(event["traceparent"], parent, "{text}");
            if written.contains("1E2") {
                assert!(text.ends_with(r#""id":"5","n":1E2}"#), "{text}");
            }
        }
        let mut headers = vec![("TraceParent".to_string(), "old".to_string())];
        inject(&mut headers, &c);
        assert_eq!(headers, [("traceparent".to_string(), parent.to_string())]);
    }

    #[test]
    fn samplers_follow_the_parent_or_the_ratio() {
        let sampled = SpanContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            None,
        )
        .unwrap();
        let not = SpanContext {
            sampled: false,
            ..sampled.clone()
        };
        let parent_based = Sampler::from_env(None, None);
        assert!(parent_based.sample(&sampled.trace_id, Some(&sampled)));
        assert!(!parent_based.sample(&not.trace_id, Some(&not)));
        let never = Sampler::from_env(Some("traceidratio"), Some("0"));
        let always = Sampler::from_env(Some("traceidratio"), Some("1"));
        let half = Sampler::from_env(Some("traceidratio"), Some("0.5"));
        let kept = (0..2000)
            .filter(|_| half.sample(&crate::ids::random_bytes(), None))
            .count();
        assert!((700..1300).contains(&kept), "{kept} of 2000");
        assert!(!never.sample(&crate::ids::random_bytes(), None));
        assert!(always.sample(&crate::ids::random_bytes(), None));
    }

    #[test]
    fn otlp_headers_are_read_percent_decoded() {
        assert_eq!(
            parse_headers("api-key=a%20b, x=1,bad"),
            [
                ("api-key".to_string(), "a b".to_string()),
                ("x".to_string(), "1".to_string())
            ]
        );
    }
}
