//! Reading a request's body within a limit, for the message listener and the admin API.
//!
//! A body over the limit is answered 413, and most clients send their whole body before they
//! read the answer: closing the connection with the rest of the body unread makes the kernel
//! reset it under the sender, which then sees "connection reset" or "broken pipe" instead of
//! the 413 (and may send the same body again and again). So the rest of such a body is read and
//! dropped, at most [`DRAIN_PAST_LIMIT`] bytes more and within the body timeout, before the 413
//! goes out; a body declared longer than the limit plus that is refused unread, as is one
//! declared over the limit by a client that asked before sending it (`Expect: 100-continue`).
//!
//! The same holds for a request answered before its body is read at all (no such route, not
//! authenticated, a media type not taken): a handler gets the request's head and the body in an
//! [`Unread`], and what is still unread when the answer is ready is read and dropped
//! ([`Unread::drain`]) within the same bounds.

use super::problem::Problem;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::{Body, Incoming};
use std::time::Duration;

/// Bytes past a body's limit read and dropped before its 413 is sent, at most.
pub const DRAIN_PAST_LIMIT: u64 = 64 << 20;

/// What reading a body within a limit came to.
#[derive(Debug)]
enum Read {
    /// The whole body, within the limit.
    Whole(Bytes),
    /// Over the limit (read on and dropped as far as [`DRAIN_PAST_LIMIT`] allows).
    TooLarge,
    /// Not all there within the timeout.
    TimedOut,
    /// The connection failed while the body was read.
    Failed(hyper::Error),
}

/// Whether the client of a request with this `head` asks to hear from the server before it
/// sends its body (`Expect: 100-continue`, RFC 9110 §10.1.1), as hyper decides it: the last
/// `Expect` header, from HTTP/1.1 on.
fn expects_continue(head: &hyper::http::request::Parts) -> bool {
    head.version > hyper::Version::HTTP_10
        && head
            .headers
            .get_all(hyper::header::EXPECT)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Read `body`, at most `limit` bytes, within `timeout` (see the module's comment for a body
/// over the limit). A client that `asks_first` ([`expects_continue`]) and declares a body over
/// the limit is refused unread: it has sent none of it, and reading would invite it (`100
/// Continue`). Memory held: the first frame as received (a slice of the connection's read
/// buffer), then at most `limit` bytes copied.
async fn read_within(mut body: Incoming, limit: u64, timeout: Duration, asks_first: bool) -> Read {
    let drain = if asks_first { 0 } else { DRAIN_PAST_LIMIT };
    if body.size_hint().lower() > limit.saturating_add(drain) {
        return Read::TooLarge;
    }
    // The first frame as received (the usual one-frame body is not copied); from the second on,
    // the frames copied into one buffer, so that no frame keeps a read buffer of its own alive.
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let expected = body.size_hint().lower().min(limit) as usize;
    let mut seen = 0u64;
    let read = tokio::time::timeout(timeout, async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            seen += data.len() as u64;
            if seen <= limit {
                match first.take() {
                    None if joined.is_empty() => first = Some(data),
                    None => joined.extend_from_slice(&data),
                    Some(before) => {
                        joined.reserve(expected.max(before.len() + data.len()));
                        joined.extend_from_slice(&before);
                        joined.extend_from_slice(&data);
                    }
                }
            } else if seen > limit.saturating_add(DRAIN_PAST_LIMIT) {
                break;
            } else {
                first = None;
                joined = Vec::new();
            }
        }
        Ok::<(), hyper::Error>(())
    })
    .await;
    if seen > limit {
        return Read::TooLarge;
    }
    match read {
        Err(_) => Read::TimedOut,
        Ok(Err(e)) => Read::Failed(e),
        Ok(Ok(())) => Read::Whole(first.unwrap_or_else(|| Bytes::from(joined))),
    }
}

/// A request's body until its handler reads it.
pub struct Unread {
    body: Option<Incoming>,
    asks_first: bool,
}

/// `req` as its head, for the handler, and its body, unread.
pub fn split(req: Request<Incoming>) -> (Request<()>, Unread) {
    let (head, body) = req.into_parts();
    let asks_first = expects_continue(&head);
    (
        Request::from_parts(head, ()),
        Unread {
            body: Some(body),
            asks_first,
        },
    )
}

impl Unread {
    /// The body, at most `limit` bytes, within `timeout` ([`read_within`]), or the problem to
    /// answer: `too_large()` past the limit, 408 past the timeout, 400 when the connection
    /// failed. Read once: a second read is the host's own error.
    pub async fn read(
        &mut self,
        limit: u64,
        timeout: Duration,
        too_large: impl FnOnce() -> Problem,
    ) -> Result<Bytes, Problem> {
        let Some(body) = self.body.take() else {
            return Err(Problem::internal("the request body was read twice"));
        };
        match read_within(body, limit, timeout, self.asks_first).await {
            Read::Whole(bytes) => Ok(bytes),
            Read::TooLarge => Err(too_large()),
            Read::TimedOut => Err(Problem::request_timeout(timeout)),
            Read::Failed(e) => Err(Problem::bad_request(format!(
                "the body could not be read: {e}"
            ))),
        }
    }

    /// Read and drop a body still unread (the request was answered without it), within the
    /// bounds of [`read_within`] for a limit of nothing. A client that asked before sending
    /// (`Expect: 100-continue`) has sent nothing and is not invited to: nothing is read (hyper
    /// then answers without a `100 Continue` and closes the connection).
    pub async fn drain(self, timeout: Duration) {
        if self.asks_first {
            return;
        }
        if let Some(body) = self.body {
            let _ = read_within(body, 0, timeout, false).await;
        }
    }
}
