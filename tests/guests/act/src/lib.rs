//! Test guest: does what the message body says, so one component can play every well-behaved
//! part a test needs. Commands (the whole body, ASCII):
//!
//! - `ok` (or anything not listed): one output, the input unchanged;
//! - `work N`: N iterations of busy work, then one output `worked N` (a slow but finishing
//!   message; the iterations are not a clock, tests never rely on how long they take);
//! - `count`: one output `{"served": N}`, N = messages this instance has mediated, this one
//!   included (shows when an instance is reused or replaced);
//! - `retry MS`: `retry-later` with `after-ms` MS;
//! - `trap`: a panic (a trap on wasm32);
//! - `put KEY VALUE`: stores VALUE under KEY in the plant's state, one output `stored KEY`;
//! - `get KEY`: one output, the value under KEY (empty if none);
//! - `headers`: one output, the message's headers as `name: value` lines.
//!
//! Imports `log` and `state`: a route running it grants both.

use millrace_sdk::{Host, MediationError, Message, Plugin, PluginInfo};
use std::sync::atomic::{AtomicU64, Ordering};

/// Messages this instance has mediated.
static SERVED: AtomicU64 = AtomicU64::new(0);

struct Act;

fn output(input: &Message, body: impl Into<Vec<u8>>) -> Vec<Message> {
    vec![Message {
        id: format!("{}-1", input.id),
        content_type: "text/plain".into(),
        headers: Vec::new(),
        body: body.into(),
        ..input.clone()
    }]
}

impl Plugin for Act {
    fn describe() -> PluginInfo {
        PluginInfo::new("guest-act", "0.1.0").accepts(["*/*"])
    }
    fn new(_host: &impl Host) -> Result<Self, String> {
        Ok(Act)
    }
    fn mediate(&self, host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let text = String::from_utf8_lossy(&input.body).into_owned();
        let mut words = text.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("work"), Some(n), None) => {
                let n: u64 = n.parse().map_err(|_| MediationError::rejected("work N"))?;
                let mut x: u64 = 0;
                for i in 0..n {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
                std::hint::black_box(x);
                Ok(output(&input, format!("worked {n}")))
            }
            (Some("count"), None, None) => Ok(output(&input, format!("{{\"served\": {served}}}"))),
            (Some("retry"), Some(ms), None) => {
                let ms: u32 = ms
                    .parse()
                    .map_err(|_| MediationError::rejected("retry MS"))?;
                Err(MediationError::RetryLater(millrace_sdk::Retry {
                    reason: format!("asked to retry in {ms} ms"),
                    after_ms: Some(ms),
                }))
            }
            (Some("trap"), None, None) => panic!("guest-act was asked to trap"),
            (Some("put"), Some(key), Some(value)) => {
                host.state_put(key, value)?;
                Ok(output(&input, format!("stored {key}")))
            }
            (Some("headers"), None, None) => {
                let lines: Vec<String> = input
                    .headers
                    .iter()
                    .map(|(n, v)| format!("{n}: {v}"))
                    .collect();
                Ok(output(&input, lines.join("\n")))
            }
            (Some("get"), Some(key), None) => {
                let value = host.state_get(key)?.unwrap_or_default();
                Ok(output(&input, value))
            }
            _ => Ok(vec![input]),
        }
    }
}

millrace_sdk::export!(Act);
