//! A route's chain: the message passes each step in order (fan-out multiplies the messages the
//! next step sees); a failure at any step stops the chain and dead-letters the original message.

use crate::deadletter::{DeadLetter, DeadLetterError, DeadLetterStore, Kind};
use crate::plugin::bindings::types::Message;
use crate::plugin::bounds::{Breach, output_bytes};
use crate::plugin::{Budget, CallFacts, PluginId, StepFailure};
use crate::route::Route;
use crate::telemetry::trace::{self, SpanContext};

/// Where in the chain a message failed, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// 1-based step index.
    pub step: u32,
    pub plugin: PluginId,
    pub failure: StepFailure,
}

impl Failure {
    /// The dead-letter kind, `None` for transient failures (the sender retries them).
    pub fn dead_letter_kind(&self) -> Option<Kind> {
        match self.failure {
            StepFailure::Rejected(_) => Some(Kind::Rejected),
            StepFailure::RetryLater(_) => None,
            StepFailure::Deadline(_) => Some(Kind::Deadline),
            StepFailure::MemoryCap(_) => Some(Kind::MemoryCap),
            StepFailure::Trap(_) => Some(Kind::Trap),
            StepFailure::Limit(_) => Some(Kind::Limit),
            StepFailure::Quarantined(_) => None,
        }
    }

    /// A sentence for the dead-letter entry and the sender.
    pub fn reason(&self) -> String {
        match &self.failure {
            StepFailure::Rejected(r) => r.reason.clone(),
            StepFailure::RetryLater(r) => r.reason.clone(),
            StepFailure::Deadline(d) => format!(
                "the plugin ran past its deadline of {} ms and was stopped",
                d.as_millis()
            ),
            StepFailure::MemoryCap(bytes) => {
                format!(
                    "the plugin tried to grow its memory past the cap of {} MiB and was stopped",
                    bytes / (1024 * 1024)
                )
            }
            StepFailure::Trap(t) => format!("the plugin failed: {t}"),
            StepFailure::Limit(breach) => breach.reason(),
            StepFailure::Quarantined(why) => why.clone(),
        }
    }
}

/// Run `input` through every step of `route`, within the route's message budget: the chain's
/// time (each call gets its step's deadline or what is left, whichever is shorter), and the
/// outputs at each stage (how many, how many bytes). Blocking (Wasm runs on this thread): call
/// it from a blocking-capable thread.
///
/// With `trace` (the message's span), each call is a child span, and every output carries the
/// message's span as its `traceparent` (header, and attribute of a structured CloudEvent).
/// When lineage is kept, the run is noted (`mediated` or `failed`, each step's call).
pub fn run(
    route: &Route,
    input: &Message,
    trace: Option<&SpanContext>,
) -> Result<Vec<Message>, Box<Failure>> {
    let mut hops = crate::lineage::enabled().then(Vec::new);
    let _current = trace::Current::enter(trace);
    let ran = run_steps(route, input, trace, hops.as_mut());
    if let Some(steps) = hops {
        noted(route, input, trace, steps, &ran);
    }
    ran
}

fn run_steps(
    route: &Route,
    input: &Message,
    trace: Option<&SpanContext>,
    mut hops: Option<&mut Vec<crate::lineage::StepHop>>,
) -> Result<Vec<Message>, Box<Failure>> {
    let started = std::time::Instant::now();
    let budget = route.budget;
    let mut messages: Vec<Message> = Vec::new();
    for (index, step) in route.steps.iter().enumerate() {
        let failed = |failure| {
            Box::new(Failure {
                step: index as u32 + 1,
                plugin: step.id.clone(),
                failure,
            })
        };
        // The first step reads the input in place: no copy on the hot path.
        let inputs = if index == 0 {
            std::slice::from_ref(input)
        } else {
            messages.as_slice()
        };
        let mut next = Vec::with_capacity(inputs.len());
        let mut bytes = 0;
        for message in inputs {
            let left = budget.time.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(failed(StepFailure::Limit(Breach::Budget(budget.time))));
            }
            let meters = &route.meters.steps[index];
            meters.received.inc();
            let mut span = trace.and_then(|parent| {
                trace::tracer().start(
                    format!("step {} {}", index + 1, step.id.name),
                    trace::Kind::Internal,
                    Some(parent),
                )
            });
            let called = std::time::Instant::now();
            let mut facts = CallFacts::default();
            let outputs = step.mediate_noted(
                message,
                Some(Budget {
                    total: budget.time,
                    left,
                }),
                &mut facts,
            );
            meters.latency.since(called);
            if let Some(mut span) = span.take() {
                step_span(&mut span, index, step, &outputs, facts);
                span.end();
            }
            if let Some(hops) = hops.as_deref_mut() {
                hops.push(step_hop(index, step, called, &outputs, facts));
            }
            let outputs = outputs.map_err(|failure| {
                meters.error.inc();
                if let StepFailure::Rejected(r) = &failure
                    && is_hold(&r.reason)
                {
                    crate::telemetry::metrics()
                        .holds
                        .with(&[&route.plant, &route.name, &step.id.name])
                        .inc();
                }
                failed(failure)
            })?;
            meters.sent.add(outputs.len() as u64);
            for mut output in outputs {
                // A plugin cannot move a message to another plant or route.
                output.plant.clone_from(&route.plant);
                output.route.clone_from(&route.name);
                bytes += output_bytes(&output);
                next.push(output);
            }
            if next.len() > budget.max_outputs {
                return Err(failed(StepFailure::Limit(Breach::Outputs {
                    count: next.len(),
                    max: budget.max_outputs,
                })));
            }
            if bytes > budget.max_output_bytes {
                return Err(failed(StepFailure::Limit(Breach::OutputBytes {
                    max: budget.max_output_bytes,
                })));
            }
        }
        messages = next;
    }
    if let Some(context) = trace {
        for output in &mut messages {
            trace::inject(&mut output.headers, context);
            trace::inject_event(&output.content_type, &mut output.body, context);
        }
    }
    Ok(messages)
}

/// Whether a rejection is a quality hold: its reason says a lot (or the message) is on hold —
/// the convention policy plugins follow (docs/observability.md).
pub fn is_hold(reason: &str) -> bool {
    reason.to_ascii_lowercase().contains("on hold")
}

/// A step's span: the plugin version it ran, what it decided, the instance it ran on.
fn step_span(
    span: &mut trace::Span,
    index: usize,
    step: &crate::plugin::StepRuntime,
    outputs: &Result<Vec<Message>, crate::plugin::StepFailure>,
    facts: CallFacts,
) {
    span.set("millrace.step", index as i64 + 1);
    span.set("millrace.plugin.name", step.id.name.as_str());
    span.set("millrace.plugin.version", step.id.version.as_str());
    span.set("millrace.plugin.digest", step.id.digest.as_str());
    span.set(
        "millrace.instance",
        if facts.fresh { "fresh" } else { "reused" },
    );
    span.set("millrace.memory_bytes", facts.memory_bytes as i64);
    match outputs {
        Ok(outputs) => {
            span.set("millrace.decision", "outputs");
            span.set("millrace.outputs", outputs.len() as i64);
        }
        Err(failure) => {
            span.set("millrace.decision", failure.kind());
            span.fail(failure.kind());
        }
    }
}

/// A step's call as lineage keeps it.
fn step_hop(
    index: usize,
    step: &crate::plugin::StepRuntime,
    called: std::time::Instant,
    outputs: &Result<Vec<Message>, StepFailure>,
    facts: CallFacts,
) -> crate::lineage::StepHop {
    crate::lineage::StepHop {
        step: index as u32 + 1,
        plugin: step.id.name.clone(),
        version: step.id.version.clone(),
        digest: step.id.digest.clone(),
        duration_us: called.elapsed().as_micros() as u64,
        decision: match outputs {
            Ok(_) => "outputs",
            Err(f) => f.kind(),
        },
        outputs: outputs.as_ref().map_or(0, Vec::len),
        instance: if facts.fresh { "fresh" } else { "reused" },
        memory_bytes: facts.memory_bytes,
    }
}

/// Note the run of `input` on `route` in its lineage.
fn noted(
    route: &Route,
    input: &Message,
    trace: Option<&SpanContext>,
    steps: Vec<crate::lineage::StepHop>,
    ran: &Result<Vec<Message>, Box<Failure>>,
) {
    use crate::lineage::{Event, MAX_OUTPUT_IDS, MAX_REASON_BYTES, bounded, may_name_subject};
    let source = route.source.as_str();
    // The body the subject is read from: the first output that may name one, else the input.
    let mut subject_from = None;
    let event = match ran {
        Ok(outputs) => {
            subject_from = outputs
                .iter()
                .find(|output| may_name_subject(&output.content_type, &output.body))
                .map(|output| output.body.as_slice());
            Event::Mediated {
                source,
                steps,
                outputs: outputs
                    .iter()
                    .take(MAX_OUTPUT_IDS)
                    .map(|o| bounded(&o.id, crate::lineage::MAX_ID_BYTES))
                    .collect(),
                more_outputs: outputs.len().saturating_sub(MAX_OUTPUT_IDS),
            }
        }
        Err(failure) => Event::Failed {
            source,
            steps,
            step: failure.step,
            kind: failure.failure.kind().to_string(),
            reason: bounded(&failure.reason(), MAX_REASON_BYTES),
        },
    };
    if subject_from.is_none() && may_name_subject(&input.content_type, &input.body) {
        subject_from = Some(input.body.as_slice());
    }
    let mut note = crate::lineage::of(route, &input.id, trace.map(|t| t.trace_id), event);
    // A subject named by the input's header comes first; else the one the body names, read here
    // so that the note carries a bounded subject, not a copy of the body.
    note.subject = input
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("ce-subject"))
        .map(|(_, v)| bounded(v, crate::lineage::MAX_SUBJECT_BYTES))
        .or_else(|| subject_from.and_then(crate::lineage::subject_of));
    crate::lineage::note(note);
}

/// Note that `message_id` of `route` became dead letter `id` (`None`: in the broker's queue).
pub fn noted_dead_letter(
    route: &Route,
    message_id: &str,
    headers: &[(String, String)],
    (store, id): (&'static str, Option<i64>),
    kind: &str,
    reason: &str,
) {
    let trace_id = SpanContext::from_headers(headers).map(|c| c.trace_id);
    crate::lineage::record(route, message_id, trace_id, || {
        crate::lineage::Event::DeadLettered {
            store,
            dead_letter: id,
            kind: kind.to_string(),
            reason: crate::lineage::bounded(reason, crate::lineage::MAX_REASON_BYTES),
        }
    });
}

/// The dead letter of `input` on `route`, failed at `(step, plugin)`.
fn entry(
    route: &Route,
    input: &Message,
    (step, plugin): (u32, PluginId),
    kind: Kind,
    reason: String,
    (field, position): (Option<String>, Option<u32>),
) -> DeadLetter {
    DeadLetter {
        id: 0,
        at: String::new(),
        plant: route.plant.clone(),
        route: route.name.clone(),
        message_id: input.id.clone(),
        step,
        plugin,
        kind,
        reason,
        field,
        position,
        content_type: input.content_type.clone(),
        headers: input.headers.clone(),
        body: input.body.clone(),
        replayed_at: None,
        lineage: route.lineage().to_string(),
    }
}

/// Record `input` as a dead letter the route refused before its chain ran (e.g. a body over
/// the route's bound from a source that cannot refuse it to a caller): kind `limit`, step 0.
pub fn dead_letter_refused(
    store: &DeadLetterStore,
    route: &Route,
    input: &Message,
    reason: String,
) -> Result<i64, DeadLetterError> {
    let source = PluginId {
        name: format!(
            "source:{}",
            format!("{:?}", route.source).to_ascii_lowercase()
        ),
        version: String::new(),
        digest: String::new(),
    };
    let entry = entry(route, input, (0, source), Kind::Limit, reason, (None, None));
    let id = store.record(&entry)?;
    counted(route, Kind::Limit.as_str());
    noted_dead_letter(
        route,
        &input.id,
        &input.headers,
        ("local", Some(id)),
        Kind::Limit.as_str(),
        &entry.reason,
    );
    tracing::warn!(plant = %route.plant, route = %route.name, message_id = %input.id, dead_letter = id, "dead-lettered: {}", entry.reason);
    Ok(id)
}

/// Count a dead letter of `route` (`millrace_dead_letters_total`), wherever it is kept.
pub fn counted(route: &Route, kind: &str) {
    crate::telemetry::metrics()
        .dead_letters
        .with(&[&route.plant, &route.name, kind, &route.meters.domain])
        .inc();
}

/// Record `input` as a dead letter after `attempts` runs that each failed for a transient
/// reason, the last one `why` (at step `failure`'s, or at the sink when `None`).
pub fn dead_letter_exhausted(
    store: &DeadLetterStore,
    route: &Route,
    input: &Message,
    attempts: u32,
    why: &str,
    failure: Option<&Failure>,
) -> Result<i64, DeadLetterError> {
    let (step, plugin) = match failure {
        Some(f) => (f.step, f.plugin.clone()),
        None => (
            route.steps.len() as u32 + 1,
            PluginId {
                name: format!("sink:{}", format!("{:?}", route.sink).to_ascii_lowercase()),
                version: String::new(),
                digest: String::new(),
            },
        ),
    };
    let entry = entry(
        route,
        input,
        (step, plugin),
        Kind::AttemptsExhausted,
        format!("{attempts} attempts failed; the last: {why}"),
        (None, None),
    );
    let id = store.record(&entry)?;
    counted(route, Kind::AttemptsExhausted.as_str());
    noted_dead_letter(
        route,
        &input.id,
        &input.headers,
        ("local", Some(id)),
        Kind::AttemptsExhausted.as_str(),
        &entry.reason,
    );
    tracing::warn!(plant = %route.plant, route = %route.name, message_id = %input.id, attempts, dead_letter = id, "dead-lettered: {}", entry.reason);
    Ok(id)
}

/// Record `input` as a dead letter for `failure`; `Ok(None)` if the failure is transient.
pub fn dead_letter(
    store: &DeadLetterStore,
    route: &Route,
    input: &Message,
    failure: &Failure,
) -> Result<Option<i64>, DeadLetterError> {
    let Some(kind) = failure.dead_letter_kind() else {
        return Ok(None);
    };
    let (field, position) = match &failure.failure {
        StepFailure::Rejected(r) => (r.field.clone(), r.position),
        _ => (None, None),
    };
    let entry = entry(
        route,
        input,
        (failure.step, failure.plugin.clone()),
        kind,
        failure.reason(),
        (field, position),
    );
    let id = store.record(&entry)?;
    counted(route, kind.as_str());
    noted_dead_letter(
        route,
        &input.id,
        &input.headers,
        ("local", Some(id)),
        kind.as_str(),
        &entry.reason,
    );
    tracing::warn!(
        plant = %route.plant, route = %route.name, message_id = %input.id, step = failure.step,
        plugin = %failure.plugin.name, version = %failure.plugin.version, kind = kind.as_str(), dead_letter = id,
        "dead-lettered: {}", entry.reason
    );
    Ok(Some(id))
}
