//! Entry points for fuzzing the two ways untrusted text reaches the host before any plugin runs:
//! the configuration file ([`config`]) and the HTTP envelope of a message ([`Envelope`]: raw
//! bytes through the real HTTP/1.1 connection handling and request handler, with a real route
//! and plugin behind it). Each returns `Err` naming a broken promise; a panic is one too.
//!
//! Used by the coverage-guided targets in `fuzz/` (libFuzzer) and by the bounded run in the test
//! suite, which mutates the seed corpus with [`Mutator`] (`tests/all/fuzz.rs`).

use crate::config::Config;
use crate::start::Host;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Parse `data` as a configuration file; whether it was accepted. Promises: no panic; every
/// error is located inside the text (line and column of the file as given) or names no place.
pub fn config(data: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(data);
    // A folder that does not exist: relative paths in the text lead nowhere.
    let path = Path::new("/nonexistent/millrace-fuzz/millrace.toml");
    let Err(errors) = Config::parse(path, &text) else {
        return Ok(true);
    };
    if errors.0.is_empty() {
        return Err("refused with no error".into());
    }
    let lines = text.split('\n').count();
    for e in &errors.0 {
        if let Some(at) = &e.at
            && (at.line == 0 || at.line > lines || at.col == 0)
        {
            return Err(format!(
                "error located at {}:{} outside the text ({lines} lines): {}",
                at.line, at.col, e.message
            ));
        }
        if e.message.trim().is_empty() {
            return Err("an error without a message".into());
        }
    }
    Ok(false)
}

/// A host's message listener without a socket: raw request bytes in, raw answer bytes out.
pub struct Envelope {
    runtime: tokio::runtime::Runtime,
    handler: crate::http::connections::Handler,
    limits: crate::http::connections::ConnectionLimits,
    _data: tempfile::TempDir,
}

impl Envelope {
    /// A host of the configuration at `config` (its plugins built), with its data in a fresh
    /// folder and the header and body timeouts cut to 2 s (a request cut short waits for them).
    pub fn new(config: &Path) -> Result<Envelope, String> {
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(config).map_err(|e| e.to_string())?;
        let mut config = Config::parse(config, &text).map_err(|e| e.to_string())?;
        config.data_dir = data.path().to_path_buf();
        config.compile_cache = data.path().join("compile-cache");
        config.connections.header_timeout = Duration::from_secs(2);
        config.connections.body_timeout = Duration::from_secs(2);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let host = runtime.block_on(async {
            Host::start(&config).map_err(|e| format!("the host does not start: {e}"))
        })?;
        let limits = config.connections;
        Ok(Envelope {
            runtime,
            handler: crate::http::source::handler(Arc::new(host.http_source(limits))),
            limits,
            _data: data,
        })
    }

    /// Send `data` as everything a client writes on one connection (then it stops writing), and
    /// read the whole answer. Promises: no panic; the connection ends; every answer is HTTP/1.x
    /// with a status the host documents (never 500); a problem document is JSON of that status.
    pub fn run(&self, data: &[u8]) -> Result<Vec<u16>, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let data = data.to_vec();
        let answer = self.runtime.block_on(async {
            let (client, server) = tokio::io::duplex(1 << 16);
            let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
            let served = tokio::spawn(crate::http::connections::serve_http(
                server,
                peer,
                self.limits,
                None,
                Arc::clone(&self.handler),
                None,
            ));
            let (mut read, mut write) = tokio::io::split(client);
            let writer = tokio::spawn(async move {
                let _ = write.write_all(&data).await;
                let _ = write.shutdown().await;
            });
            let mut answer = Vec::new();
            // A guard: the host answers or closes long before (timeouts of 2 s, plugin deadline).
            let read =
                tokio::time::timeout(Duration::from_secs(60), read.read_to_end(&mut answer)).await;
            writer.abort();
            let _ = served.await;
            match read {
                Ok(_) => Ok(answer),
                Err(_) => Err("the connection did not end within 60 s".to_string()),
            }
        })?;
        statuses(&answer)
    }
}

/// The statuses of the HTTP/1.1 answers in `bytes`, each checked.
fn statuses(mut bytes: &[u8]) -> Result<Vec<u16>, String> {
    let mut seen = Vec::new();
    while !bytes.is_empty() {
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Err(format!(
                "an answer cut in its head: {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
        };
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP/1.x status line: {status_line:?}"))?;
        if status == 500 || !(100..600).contains(&status) {
            return Err(format!("answered {status}: {head}"));
        }
        let header = |name: &str| {
            head.split("\r\n").skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let length: usize = match header("content-length") {
            Some(v) => v
                .parse()
                .map_err(|_| format!("content-length {v:?} in {head}"))?,
            None if header("transfer-encoding").is_some() => {
                return Err(format!("a chunked answer: {head}"));
            }
            None => 0,
        };
        let body_start = end + 4;
        if bytes.len() < body_start + length {
            return Err(format!("an answer shorter than its content-length: {head}"));
        }
        let body = &bytes[body_start..body_start + length];
        if header("content-type").as_deref() == Some("application/problem+json") {
            let doc: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| format!("a problem document that is not JSON ({e}): {head}"))?;
            if doc["status"] != status || !doc["type"].is_string() {
                return Err(format!(
                    "a problem document of another status: {head}\n{doc}"
                ));
            }
        }
        seen.push(status);
        bytes = &bytes[body_start + length..];
    }
    Ok(seen)
}

/// A deterministic byte mutator for bounded runs without coverage feedback: each input is a
/// seed with a few stacked edits (bit flips, byte changes, insertions of interesting bytes or
/// dictionary words, deletions, duplications, splices with another seed, truncation).
pub struct Mutator {
    state: u64,
    dictionary: Vec<Vec<u8>>,
}

impl Mutator {
    pub fn new(seed: u64, dictionary: &[&[u8]]) -> Mutator {
        Mutator {
            state: seed | 1,
            dictionary: dictionary.iter().map(|w| w.to_vec()).collect(),
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// One mutant of a seed of `corpus`.
    pub fn mutant(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut data = corpus[self.below(corpus.len())].clone();
        for _ in 0..=self.below(6) {
            let at = self.below(data.len() + 1);
            match self.below(9) {
                0 if !data.is_empty() => {
                    let i = at.min(data.len() - 1);
                    data[i] ^= 1 << self.below(8);
                }
                1 if !data.is_empty() => {
                    let i = at.min(data.len() - 1);
                    data[i] = self.next() as u8;
                }
                2 => {
                    const INTERESTING: &[u8] = b"\0\r\n\t \"'\\=[]{}.,:;#%/-+0129\x7f\xff\xc3\xa9";
                    let b = INTERESTING[self.below(INTERESTING.len())];
                    data.insert(at, b);
                }
                3 if !self.dictionary.is_empty() => {
                    let i = self.below(self.dictionary.len());
                    let word = self.dictionary[i].clone();
                    data.splice(at..at, word);
                }
                4 if !data.is_empty() => {
                    let len = self.below(16.min(data.len() - at.min(data.len() - 1)) + 1);
                    let from = at.min(data.len() - 1);
                    data.drain(from..(from + len).min(data.len()));
                }
                5 if !data.is_empty() => {
                    let from = at.min(data.len() - 1);
                    let len = self.below(64).min(data.len() - from);
                    let copy = data[from..from + len].to_vec();
                    let to = self.below(data.len() + 1);
                    data.splice(to..to, copy);
                }
                6 => {
                    let other = &corpus[self.below(corpus.len())];
                    let from = (self.next() as usize) % (other.len() + 1);
                    data.truncate(at);
                    data.extend_from_slice(&other[from..]);
                }
                7 => data.truncate(at),
                _ => {
                    // A run of one byte (long numbers, long names, deep nesting).
                    let b = if data.is_empty() {
                        b'9'
                    } else {
                        data[at.min(data.len() - 1)]
                    };
                    let n = 1 + self.below(300);
                    data.splice(at..at, std::iter::repeat_n(b, n));
                }
            }
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked() {
        let problem = br#"{"type":"urn:millrace:problem:x","status":404}"#;
        let ok = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n\r\n{}",
            problem.len(),
            String::from_utf8_lossy(problem)
        );
        assert_eq!(statuses(ok.as_bytes()), Ok(vec![404]));
        assert!(
            statuses(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n").is_err()
        );
        let wrong = ok.replace("404 Not Found", "400 Bad Request");
        assert!(statuses(wrong.as_bytes()).is_err());
        assert!(statuses(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").is_err());
        assert!(statuses(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn config_errors_must_be_located_in_the_text() {
        assert_eq!(config(b"[host]\nhttp = 3\n"), Ok(false));
        assert_eq!(config(b"[plants.a]\n[plants.a]\n"), Ok(false));
    }

    #[test]
    fn the_mutator_is_deterministic_and_changes_inputs() {
        let corpus = vec![b"[host]\nhttp = \"127.0.0.1:8080\"\n".to_vec()];
        let mut a = Mutator::new(7, &[b"[limits]"]);
        let mut b = Mutator::new(7, &[b"[limits]"]);
        let first: Vec<_> = (0..50).map(|_| a.mutant(&corpus)).collect();
        let second: Vec<_> = (0..50).map(|_| b.mutant(&corpus)).collect();
        assert_eq!(first, second);
        assert!(first.iter().filter(|m| **m != corpus[0]).count() > 40);
    }
}
