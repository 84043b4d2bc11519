//! Errors at the HTTP edge as RFC 9457 `application/problem+json`, one constructor per cause.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};
use serde_json::{Map, Value, json};

/// Media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One problem: a status, a stable type, a title, a detail for this occurrence, extensions.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// Short kebab-case name; the `type` member is `urn:millrace:problem:<kind>`.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extensions: Map<String, Value>,
    /// `Retry-After` seconds, for transient failures.
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            extensions: Map::new(),
            retry_after: None,
        }
    }

    /// Add an extension member.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Problem {
        self.extensions.insert(key.to_string(), value.into());
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such resource",
            detail,
        )
    }

    pub fn unknown_route(route: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-route",
            "Unknown route",
            format!("no route named {route:?} is configured"),
        )
        .with("route", route)
    }

    pub fn method_not_allowed(allowed: &'static str) -> Problem {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("use {allowed}"),
        )
        .with("allow", allowed)
    }

    pub fn too_large(route: &str, limit: usize) -> Problem {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message-too-large",
            "Message too large",
            format!("route {route} accepts messages of at most {limit} bytes"),
        )
        .with("route", route)
        .with("limit_bytes", limit)
    }

    pub fn unsupported_media(route: &str, got: Option<&str>, accepted: &[String]) -> Problem {
        let detail = match got {
            Some(ct) => format!(
                "route {route} does not accept content type {ct:?}; send one of: {}",
                accepted.join(", ")
            ),
            None => format!(
                "the request has no Content-Type; route {route} accepts: {}",
                accepted.join(", ")
            ),
        };
        Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-content-type",
            "Unsupported content type",
            detail,
        )
        .with("route", route)
        .with("accepted", accepted.to_vec())
    }

    /// The request conflicts with the state of what it names (409).
    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// The `Idempotency-Key` was used on this route for another content type or body.
    pub fn key_reused(route: &str, key: &str) -> Problem {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            format!(
                "Idempotency-Key {key:?} was already used on route {route} for a different content type or body; use a new key for a new message"
            ),
        )
        .with("route", route)
    }

    /// A request with the same `Idempotency-Key` is still being mediated.
    pub fn key_in_progress(route: &str, key: &str) -> Problem {
        let mut problem = Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-progress",
            "Request with this key in progress",
            format!(
                "a request with Idempotency-Key {key:?} is being mediated on route {route}; retry to get its answer"
            ),
        )
        .with("route", route);
        problem.retry_after = Some(1);
        problem
    }

    /// The route's webhook did not take the outputs; the sender retries (same outputs, same ids).
    pub fn sink_unavailable(route: &str, message_id: &str, detail: String) -> Problem {
        let mut problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sink-unavailable",
            "Outputs not delivered",
            detail,
        )
        .with("route", route)
        .with("message_id", message_id);
        problem.retry_after = Some(5);
        problem
    }

    /// The outbox has no room for the outputs; the sender retries once the broker drained it.
    pub fn outbox_full(route: &str, message_id: &str, detail: String) -> Problem {
        let mut problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "outbox-full",
            "Outputs not accepted",
            detail,
        )
        .with("route", route)
        .with("message_id", message_id);
        problem.retry_after = Some(30);
        problem
    }

    /// The route takes messages only from senders it knows.
    pub fn unauthenticated(route: &str, why: String) -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Credentials needed",
            why,
        )
        .with("route", route)
    }

    /// The body did not arrive within the body timeout.
    pub fn request_timeout(timeout: std::time::Duration) -> Problem {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request body too slow",
            format!(
                "the request body did not arrive within {} s (host.body_timeout_s)",
                timeout.as_secs()
            ),
        )
    }

    /// The route's plant has as many messages in flight and waiting as it may; other plants
    /// are not affected.
    pub fn plant_busy(route: &str, busy: &crate::admission::Busy) -> Problem {
        let mut problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "plant-busy",
            "Plant busy",
            busy.to_string(),
        )
        .with("route", route)
        .with("plant", busy.plant.as_str());
        problem.retry_after = Some(1);
        problem
    }

    /// `/readyz`: the broker a route needs is not connected.
    pub fn not_ready(detail: String) -> Problem {
        let mut problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Broker not connected",
            detail,
        );
        problem.retry_after = Some(1);
        problem
    }

    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            detail,
        )
    }

    /// The response for this problem.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut doc = json!({
            "type": format!("urn:millrace:problem:{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let object = doc.as_object_mut().expect("json! object literal");
        object.extend(self.extensions);
        let mut builder = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, PROBLEM_JSON);
        if let Some(secs) = self.retry_after {
            builder = builder.header(header::RETRY_AFTER, secs);
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED
            && let Some(Value::String(allow)) = object.get("allow")
        {
            builder = builder.header(header::ALLOW, allow.as_str());
        }
        builder
            .body(Full::new(Bytes::from(doc.to_string())))
            .expect("static status and header names are valid")
    }
}
