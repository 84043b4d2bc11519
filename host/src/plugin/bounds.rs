//! What may cross from a plugin into the host, and how much: the outputs of one call (count,
//! bytes, well-formed ids, content types and headers), log entries (length, control characters,
//! rate per step) and the texts a plugin writes into dead letters and problem documents.
//!
//! The host copies a call's outputs out of the instance under a copy budget (wasmtime's
//! hostcall fuel, `max_output_kib`): a guest that returns one buffer many times, or a huge list,
//! is stopped while the host copies, not after.

use crate::plugin::bindings::types::Message;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A bound the host enforces on what a plugin hands over, broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Breach {
    /// More outputs than the step (per call) or the route (per message) allows.
    Outputs { count: usize, max: usize },
    /// More output bytes than the step (per call) or the route (per message) allows.
    OutputBytes { max: usize },
    /// An output the host cannot pass on (what is wrong with it).
    InvalidOutput(String),
    /// The message's time budget across the whole chain ran out.
    Budget(Duration),
    /// More table elements than an instance may hold.
    Tables,
}

impl Breach {
    /// A sentence for the dead letter and the sender.
    pub fn reason(&self) -> String {
        match self {
            Breach::Outputs { count, max } => {
                format!("the plugin returned {count} outputs; at most {max} are allowed")
            }
            Breach::OutputBytes { max } => format!(
                "the plugin handed over more than {} KiB (outputs, a reason or a host call's arguments); the host stopped copying",
                max / 1024
            ),
            Breach::InvalidOutput(what) => format!("the plugin returned an invalid output: {what}"),
            Breach::Budget(budget) => format!(
                "the message's budget of {} ms across the chain ran out",
                budget.as_millis()
            ),
            Breach::Tables => format!(
                "the plugin's tables exceed {} elements",
                crate::plugin::store::MAX_TABLE_ELEMENTS
            ),
        }
    }
}

/// Longest output id (it becomes an AMQP `message-id` and an HTTP `Idempotency-Key`): what an
/// AMQP short string holds.
pub const MAX_ID_BYTES: usize = 255;
/// Longest output content type (an AMQP short string too).
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;
/// Headers one output may carry.
pub const MAX_HEADERS: usize = 64;
/// Longest header name.
pub const MAX_HEADER_NAME_BYTES: usize = 128;
/// Longest header value.
pub const MAX_HEADER_VALUE_BYTES: usize = 4096;

/// Bytes an output stands for: its body and every text the host passes on.
pub fn output_bytes(m: &Message) -> usize {
    m.body.len()
        + m.id.len()
        + m.content_type.len()
        + m.headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
}

/// Check the outputs of one call: at most `max_outputs`, at most `max_bytes` together, and each
/// one something every sink can carry (ids, content types and headers that are valid HTTP and
/// AMQP header values: no control characters, bounded lengths).
pub fn check_outputs(
    outputs: &[Message],
    max_outputs: usize,
    max_bytes: usize,
) -> Result<(), Breach> {
    if outputs.len() > max_outputs {
        return Err(Breach::Outputs {
            count: outputs.len(),
            max: max_outputs,
        });
    }
    let bytes: usize = outputs.iter().map(output_bytes).sum();
    if bytes > max_bytes {
        return Err(Breach::OutputBytes { max: max_bytes });
    }
    for (i, m) in outputs.iter().enumerate() {
        let at = |what: String| Breach::InvalidOutput(format!("output {}: {what}", i + 1));
        if m.id.is_empty() || m.id.len() > MAX_ID_BYTES || !is_header_text(&m.id) {
            return Err(at(format!(
                "id {} must be 1 to {MAX_ID_BYTES} bytes without control characters",
                shown(&m.id)
            )));
        }
        if m.content_type.is_empty()
            || m.content_type.len() > MAX_CONTENT_TYPE_BYTES
            || !is_header_text(&m.content_type)
        {
            return Err(at(format!(
                "content type {} must be 1 to {MAX_CONTENT_TYPE_BYTES} bytes without control characters",
                shown(&m.content_type)
            )));
        }
        if m.headers.len() > MAX_HEADERS {
            return Err(at(format!(
                "{} headers; at most {MAX_HEADERS}",
                m.headers.len()
            )));
        }
        for (name, value) in &m.headers {
            if name.is_empty() || name.len() > MAX_HEADER_NAME_BYTES || !is_token(name) {
                return Err(at(format!(
                    "header name {} must be 1 to {MAX_HEADER_NAME_BYTES} token characters (letters, digits, !#$%&'*+-.^_`|~)",
                    shown(name)
                )));
            }
            if value.len() > MAX_HEADER_VALUE_BYTES || !is_header_text(value) {
                return Err(at(format!(
                    "header {name}: value {} must be at most {MAX_HEADER_VALUE_BYTES} bytes without control characters",
                    shown(value)
                )));
            }
        }
    }
    Ok(())
}

/// Visible ASCII, spaces and tabs, and UTF-8 beyond ASCII: no CR, LF, NUL or other controls.
fn is_header_text(s: &str) -> bool {
    // The controls (`char::is_control`) are U+0000–U+001F, U+007F and U+0080–U+009F; in UTF-8
    // the last are the only characters whose encoding starts 0xC2 0x80–0x9F. So the bytes are
    // enough, with no decoding.
    let bytes = s.as_bytes();
    !bytes.iter().enumerate().any(|(i, &b)| {
        (b < 0x20 && b != b'\t')
            || b == 0x7f
            || (b == 0xc2
                && bytes
                    .get(i + 1)
                    .is_some_and(|next| (0x80..=0x9f).contains(next)))
    })
}

/// An HTTP token (RFC 9110 §5.6.2).
fn is_token(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A text for an error message: escaped, at most 64 characters.
fn shown(s: &str) -> String {
    let escaped: String = s.escape_debug().take(64).collect();
    if s.escape_debug().count() > 64 {
        format!("\"{escaped}…\"")
    } else {
        format!("\"{escaped}\"")
    }
}

/// Longest reason a plugin's rejection or retry carries into a dead letter or a problem
/// document; longer ones are cut (and say so).
pub const MAX_REASON_BYTES: usize = 4096;
/// Longest `field` of a rejection.
pub const MAX_FIELD_BYTES: usize = 256;

/// `text` cut to at most `max` bytes at a character boundary, saying how much was cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes cut)", &text[..end], text.len() - end)
}

/// Longest log entry a plugin writes; longer ones are cut.
pub const MAX_LOG_ENTRY_BYTES: usize = 2048;
/// Log bytes a step may write per second (all its instances together), with a burst of as
/// much again; entries beyond are dropped and counted.
pub const LOG_BYTES_PER_SECOND: usize = 64 * 1024;

/// A log entry as the host writes it: at most [`MAX_LOG_ENTRY_BYTES`], control characters
/// (newlines included) escaped, so one entry is one line and cannot forge others.
pub fn log_entry(message: &str) -> String {
    let cut = truncate(message, MAX_LOG_ENTRY_BYTES);
    if cut.chars().any(char::is_control) {
        cut.chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect()
    } else {
        cut
    }
}

/// A token bucket of log bytes for one step (all its instances together), and the entries it
/// dropped since they were last reported.
#[derive(Debug)]
pub struct LogBudget {
    bucket: Mutex<Bucket>,
    /// Entries dropped since the last report: read on every call, taken only when not zero.
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    per_second: usize,
    available: f64,
    at: Instant,
}

impl LogBudget {
    pub fn new(per_second: usize) -> LogBudget {
        LogBudget {
            bucket: Mutex::new(Bucket {
                per_second,
                available: (2 * per_second) as f64,
                at: Instant::now(),
            }),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether an entry of `bytes` may be written now (then it is counted; else it is counted
    /// as dropped).
    pub fn take(&self, bytes: usize) -> bool {
        let mut bucket = self.bucket.lock().expect("log budget lock");
        let now = Instant::now();
        let refill = now.duration_since(bucket.at).as_secs_f64() * bucket.per_second as f64;
        bucket.available = (bucket.available + refill).min((2 * bucket.per_second) as f64);
        bucket.at = now;
        if bucket.available >= bytes as f64 {
            bucket.available -= bytes as f64;
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// The entries dropped since the last call of this (which reports them).
    pub fn take_dropped(&self) -> u64 {
        if self.dropped.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(id: &str, content_type: &str, headers: &[(&str, &str)], body: &[u8]) -> Message {
        Message {
            id: id.into(),
            plant: "p".into(),
            route: "r".into(),
            content_type: content_type.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn outputs_are_bounded_in_number_and_bytes() {
        let three = vec![out("a", "text/plain", &[], b"x"); 3];
        assert_eq!(
            check_outputs(&three, 2, 1 << 20),
            Err(Breach::Outputs { count: 3, max: 2 })
        );
        let big = vec![out("a", "text/plain", &[], &[0; 1000])];
        assert_eq!(
            check_outputs(&big, 10, 999),
            Err(Breach::OutputBytes { max: 999 })
        );
        assert_eq!(check_outputs(&big, 10, 2000), Ok(()));
    }

    #[test]
    fn ids_content_types_and_headers_that_could_split_a_header_are_refused() {
        for bad in [
            out("a", "text/plain\r\nx-injected: 1", &[], b""),
            out("a\nb", "text/plain", &[], b""),
            out("", "text/plain", &[], b""),
            out("a", "", &[], b""),
            out("a", "text/plain", &[("x-ok", "v\r\nset-cookie: x")], b""),
            out("a", "text/plain", &[("bad name", "v")], b""),
            out("a", "text/plain", &[("x\0", "v")], b""),
            out(&"i".repeat(MAX_ID_BYTES + 1), "text/plain", &[], b""),
        ] {
            let refused = check_outputs(std::slice::from_ref(&bad), 10, 1 << 20);
            assert!(
                matches!(refused, Err(Breach::InvalidOutput(_))),
                "{bad:?}: {refused:?}"
            );
        }
        let fine = out(
            "order-7-1",
            "application/cloudevents+json; charset=utf-8",
            &[("x-lot", "L 7 — Ä")],
            b"{}",
        );
        assert_eq!(check_outputs(&[fine], 10, 1 << 20), Ok(()));
    }

    #[test]
    fn log_entries_are_one_line_and_bounded() {
        assert_eq!(
            log_entry("a\nERROR forged line\r\n"),
            "a\\nERROR forged line\\r\\n"
        );
        let long = log_entry(&"é".repeat(MAX_LOG_ENTRY_BYTES));
        assert!(long.len() < MAX_LOG_ENTRY_BYTES + 40, "{}", long.len());
        assert!(long.ends_with("more bytes cut)"));
    }

    #[test]
    fn header_text_is_every_character_but_the_controls_tab_allowed() {
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            let expected = c == '\t' || !c.is_control();
            for text in [c.to_string(), format!("a{c}é"), format!("\u{a0}{c}")] {
                assert_eq!(is_header_text(&text), expected, "{text:?}");
            }
        }
        assert!(is_header_text(""));
        assert!(!is_header_text("ok\u{85}"), "NEL, a C1 control");
        assert!(
            is_header_text("\u{a0}\u{100}"),
            "a no-break space: 0xC2 followed by 0xA0"
        );
    }

    #[test]
    fn a_log_budget_lets_a_burst_through_then_drops() {
        let budget = LogBudget::new(1000);
        assert!(budget.take(2000), "the burst");
        assert!(!budget.take(1000), "then nothing until it refills");
        assert_eq!(budget.take_dropped(), 1);
        assert_eq!(budget.take_dropped(), 0, "a drop is reported once");
    }
}
