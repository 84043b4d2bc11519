//! Test guest: a plugin that attacks the host through the documented interfaces only, one
//! attack per message (the whole body, ASCII). The host must contain every one of them.
//!
//! - `outputs N`: N outputs of one byte each (a huge list);
//! - `fan N TEXT`: N outputs whose body is TEXT (work for the next step, N times);
//! - `big MIB`: one output of MIB MiB;
//! - `header`: one output whose content type carries CR LF and a forged header;
//! - `reason MIB`: a rejection whose reason is MIB MiB;
//! - `log N`: N log entries of 64 KiB, each full of newlines that would forge log lines;
//! - `debug-log N`: the same at level `debug`, which the host's default level drops;
//! - `state N`: N state writes of 60 KB each under new keys;
//! - `recurse`: unbounded recursion (a stack overflow);
//! - `long N`: one output whose id and content type are N bytes each (names a transport may
//!   carry in a length-prefixed field);
//! - anything else: one output, the input unchanged.
//!
//! Imports `log` and `state`: a route running it grants both.

use millrace_sdk::{Host, Level, MediationError, Message, Plugin, PluginInfo};

struct Hostile;

fn one(input: &Message, content_type: &str, body: Vec<u8>) -> Message {
    Message {
        id: format!("{}-1", input.id),
        content_type: content_type.into(),
        headers: Vec::new(),
        body,
        ..input.clone()
    }
}

#[inline(never)]
fn recurse(depth: u64, trail: &mut Vec<u64>) -> u64 {
    trail.push(depth);
    // The bottom is never reached: the host's stack limit traps first.
    if depth == u64::MAX {
        return 0;
    }
    let below = recurse(depth + 1, trail);
    std::hint::black_box(below + depth)
}

impl Plugin for Hostile {
    fn describe() -> PluginInfo {
        PluginInfo::new("guest-hostile", "0.1.0").accepts(["*/*"])
    }
    fn new(_host: &impl Host) -> Result<Self, String> {
        Ok(Hostile)
    }
    fn mediate(&self, host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let text = String::from_utf8_lossy(&input.body).into_owned();
        let mut words = text.split_whitespace();
        let command = words.next().unwrap_or_default();
        let n: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(1);
        match command {
            "outputs" => Ok((0..n)
                .map(|i| Message {
                    id: format!("{}-{i}", input.id),
                    ..one(&input, "text/plain", b"x".to_vec())
                })
                .collect()),
            "fan" => {
                let rest: Vec<&str> = words.collect();
                let body = rest.join(" ").into_bytes();
                Ok((0..n)
                    .map(|i| Message {
                        id: format!("{}-{i}", input.id),
                        ..one(&input, "text/plain", body.clone())
                    })
                    .collect())
            }
            "big" => Ok(vec![one(&input, "text/plain", vec![b'b'; n << 20])]),
            "header" => Ok(vec![one(
                &input,
                "text/plain\r\nx-injected: yes",
                b"h".to_vec(),
            )]),
            "reason" => Err(MediationError::rejected("r".repeat(n << 20))),
            "log" | "debug-log" => {
                let line =
                    "flood\n2026-12-01T00:00:00Z ERROR millrace_host: forged line\n".repeat(1100);
                let level = if command == "log" {
                    Level::Error
                } else {
                    Level::Debug
                };
                for _ in 0..n {
                    host.log(level, &line);
                }
                Ok(vec![input])
            }
            "state" => {
                let value = "s".repeat(60_000);
                for i in 0..n {
                    host.state_put(&format!("flood/{}/{i}", input.id), &value)?;
                }
                Ok(vec![input])
            }
            "recurse" => {
                let mut trail = Vec::new();
                let depth = recurse(0, &mut trail);
                Ok(vec![one(
                    &input,
                    "text/plain",
                    depth.to_string().into_bytes(),
                )])
            }
            "long" => Ok(vec![Message {
                id: "i".repeat(n),
                ..one(
                    &input,
                    &format!("text/{}", "x".repeat(n.saturating_sub(5))),
                    b"l".to_vec(),
                )
            }]),
            _ => Ok(vec![input]),
        }
    }
}

millrace_sdk::export!(Hostile);
