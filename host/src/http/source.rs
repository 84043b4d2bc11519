//! HTTP ingress (hyper 1, HTTP/1.1): `POST /v1/routes/{route}/messages` hands the body to the
//! route's chain and answers with its outputs (sink `reply`) or an RFC 9457 problem.
//!
//! | status | when |
//! |---|---|
//! | 200 / 204 | outputs / filtered (sink `reply`); delivered to the webhook (sink `http`) |
//! | 202 | outputs kept in the outbox for the broker (sink `amqp`) |
//! | 400 | the body could not be read |
//! | 404 | unknown route, or a route that does not take HTTP |
//! | 405 | not `POST` |
//! | 409 | a request with the same `Idempotency-Key` is still being mediated (`Retry-After`) |
//! | 413 | body over the route's `max_body_kib` |
//! | 415 | content type the first step does not accept |
//! | 422 | a plugin rejected the message (dead-lettered), or an `Idempotency-Key` was reused for another body |
//! | 502 | a plugin trapped, or broke a bound on what it hands over (dead-lettered) |
//! | 503 | a plugin ran past its deadline or memory cap, or the message past its budget (dead-lettered); a plugin asked for a retry, is quarantined, the plant is busy, or the webhook did not take the outputs (not dead-lettered; `Retry-After`) |
//! | 503 | the outbox is full (`outbox-full`, `Retry-After`) |
//! | 500 | the host itself failed (e.g. the dead-letter store is unwritable) |
//!
//! Idempotency: the final answer (2xx, 422) to a request with an `Idempotency-Key` is kept for
//! `host.idempotency_window_s`; the same request again gets it back (header
//! `millrace-replayed: true`) without running the chain again (see `idempotency`).
//!
//! `GET /healthz` answers while the process serves; `GET /readyz` is 200 when every broker the
//! routes need is connected, else a 503 problem saying why (and how many outputs wait).
//!
//! Shutdown: stop accepting, let in-flight requests finish, return.

use super::body::{Unread, split};
use super::problem::Problem;
use crate::config::Source;
use crate::idempotency::{self, Begin, StoredAnswer};
use crate::pipeline::chain::Failure;
use crate::pipeline::sinks::{Delivered, DeliveryError, Via};
use crate::pipeline::{Ask, Mediated, OnFailure, Pipeline, Ready, WhenBusy};
use crate::plugin::StepFailure;
use crate::plugin::bindings::types::Message;
use crate::plugin::bounds::Breach;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Longest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 255;

/// What the message listener serves with.
pub struct HttpSource {
    pub pipeline: Arc<Pipeline>,
    /// What the listener accepts (connections, header and body timeouts).
    pub connections: super::connections::ConnectionLimits,
    /// The transports `/readyz` asks.
    pub ready: Vec<Arc<dyn Ready>>,
}

/// Serve `listener` until `shutdown` resolves, then wait for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    source: Arc<HttpSource>,
    tls: Option<Arc<super::tls::Tls>>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let limits = source.connections;
    super::connections::accept(
        listener,
        limits,
        tls,
        handler(source),
        Some(&graceful),
        shutdown,
    )
    .await;
    tracing::info!("HTTP ingress: stopped accepting; finishing in-flight requests");
    graceful.shutdown().await;
}

/// Answer one request; never fails (errors are problem documents).
pub async fn handle(source: &HttpSource, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (req, mut body) = split(req);
    let answered = route_request(source, req, &mut body).await;
    body.drain(source.connections.body_timeout).await;
    match answered {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn route_request(
    source: &HttpSource,
    req: Request<()>,
    unread: &mut Unread,
) -> Result<Response<Full<Bytes>>, Problem> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    if path == "/readyz" {
        return readiness(source);
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["v1", "routes", route_name, "messages"] = segments.as_slice() else {
        return Err(Problem::not_found(format!(
            "no resource at {path}; messages go to POST /v1/routes/{{route}}/messages"
        )));
    };
    if req.method() != Method::POST {
        return Err(Problem::method_not_allowed("POST"));
    }
    let pipeline = &source.pipeline;
    let route = pipeline
        .routes
        .get(route_name)
        .ok_or_else(|| Problem::unknown_route(route_name))?;
    if route.source != Source::Http {
        return Err(Problem::unknown_route(route_name).with(
            "detail",
            format!("route {route_name} does not take HTTP messages"),
        ));
    }
    let client = match &route.auth {
        Some(auth) => Some(authenticate(auth, &req).map_err(|why| {
            tracing::warn!(route = %route.name, "{why}");
            Problem::unauthenticated(&route.name, why)
        })?),
        None => None,
    };
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match &content_type {
        Some(ct) if route.accepts(ct) => {}
        other => {
            return Err(Problem::unsupported_media(
                &route.name,
                other.as_deref(),
                route.accepted(),
            ));
        }
    }
    let key = match req.headers().get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(key)) if !key.is_empty() && key.len() <= MAX_KEY_LEN => Some(key.to_string()),
        Some(_) => {
            return Err(Problem::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            )));
        }
        None => None,
    };
    let id = key.clone().unwrap_or_else(crate::ids::message_id);
    // Plugins never see the sender's credentials; they see who it was (`millrace-client`).
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name) && !is_credential(name))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Some(client) = client {
        headers.push(("millrace-client".into(), client));
    }
    let too_large = || Problem::too_large(&route.name, route.max_body_bytes);
    let body = unread
        .read(
            route.max_body_bytes as u64,
            source.connections.body_timeout,
            too_large,
        )
        .await?;
    let message = Message {
        id: id.clone(),
        plant: route.plant.clone(),
        route: route.name.clone(),
        content_type: content_type.unwrap_or_default(),
        headers,
        body: body.into(),
    };

    tracing::debug!(route = %route.name, message_id = %id, bytes = message.body.len(), "message received");
    let flight = match (&pipeline.idempotency, &key) {
        (Some(store), Some(key)) => {
            let fingerprint = idempotency::fingerprint(&message.content_type, &message.body);
            let begun = tokio::task::block_in_place(|| store.begin(&route.name, key, fingerprint))
                .map_err(|e| Problem::internal(e.to_string()))?;
            match begun {
                Begin::Fresh(flight) => Some(flight),
                Begin::Answered(answer) => {
                    tracing::info!(route = %route.name, message_id = %id, status = answer.status, "repeated request: kept answer sent again");
                    return Ok(replay(answer));
                }
                Begin::Mismatch => return Err(Problem::key_reused(&route.name, key)),
                Begin::InProgress => return Err(Problem::key_in_progress(&route.name, key)),
            }
        }
        _ => None,
    };
    let response = match mediate(pipeline, &route, message).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    };
    let Some(flight) = flight else {
        return Ok(response);
    };
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let answer = StoredAnswer {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .filter(|(n, _)| *n != header::CONTENT_LENGTH)
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    if let Err(e) = tokio::task::block_in_place(|| flight.finish(&answer)) {
        // The answer stands; a repeat of this request would be mediated again.
        tracing::error!(route = %route.name, message_id = %id, error = %e, "could not keep the answer for its Idempotency-Key");
    }
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// Sink `http`: what was delivered.
fn delivered_response(id: &str, ids: &[String], delivered: usize) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "message_id": id, "delivered": delivered, "outputs": ids });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header("millrace-message-id", id)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|e| Problem::internal(e.to_string()).into_response())
}

/// Sink `amqp` behind an HTTP source: the outputs are in the outbox, on disk before the 202.
fn held_response(id: &str, ids: &[String], waiting: usize) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "message_id": id,
        "accepted": ids.len(),
        "outputs": ids,
        "waiting": waiting,
    });
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_TYPE, "application/json")
        .header("millrace-message-id", id)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap_or_else(|e| Problem::internal(e.to_string()).into_response())
}

/// `/readyz`: ready when every transport the routes need can serve (or none is needed).
fn readiness(source: &HttpSource) -> Result<Response<Full<Bytes>>, Problem> {
    let mut body = serde_json::json!({ "ready": true });
    let mut down: Option<Problem> = None;
    for transport in &source.ready {
        let r = transport.readiness();
        match r.state {
            Ok(state) => body[r.name] = state.into(),
            Err(why) => {
                let mut problem = down.take().unwrap_or_else(|| Problem::not_ready(why));
                for (name, value) in &r.facts {
                    problem = problem.with(name, value.clone());
                }
                down = Some(problem);
                continue;
            }
        }
        for (name, value) in r.facts {
            body[name] = value;
        }
    }
    if let Some(problem) = down {
        return Err(problem);
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| Problem::internal(e.to_string()))
}

/// A kept answer, sent again.
fn replay(answer: StoredAnswer) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        builder = builder.header(name, value);
    }
    builder
        .header("millrace-replayed", "true")
        .body(Full::new(Bytes::from(answer.body)))
        .unwrap_or_else(|e| Problem::internal(format!("kept answer: {e}")).into_response())
}

/// Run `message` through `route`'s chain and answer with its outputs or a problem.
async fn mediate(
    pipeline: &Pipeline,
    route: &Arc<crate::route::Route>,
    message: Message,
) -> Result<Response<Full<Bytes>>, Problem> {
    let arrived_at = std::time::Instant::now();
    route.meters.received.inc();
    let mut span = crate::pipeline::source_span(
        route,
        &message,
        format!("POST /v1/routes/{}/messages", route.name),
        crate::telemetry::trace::Kind::Server,
    );
    if let Some(span) = &mut span {
        span.set("http.request.method", "POST");
        span.set("http.route", "/v1/routes/{route}/messages");
    }
    let context = span.as_ref().map(|s| s.context.clone());
    let answer = answer(pipeline, route, message, context).await;
    route.meters.latency.since(arrived_at);
    if let Some(mut span) = span {
        let status = match &answer {
            Ok(response) => response.status(),
            Err(problem) => problem.status,
        };
        span.set("http.response.status_code", i64::from(status.as_u16()));
        if let Err(problem) = &answer {
            span.fail(problem.kind);
        }
        span.end();
    }
    answer
}

/// [`mediate`] after the arrival is counted.
async fn answer(
    pipeline: &Pipeline,
    route: &Arc<crate::route::Route>,
    message: Message,
    trace: Option<crate::telemetry::trace::SpanContext>,
) -> Result<Response<Full<Bytes>>, Problem> {
    let id = message.id.clone();
    let ask = Ask {
        when_busy: WhenBusy::Refuse,
        on_failure: OnFailure::DeadLetterHere,
        settled: None,
        trace,
    };
    let outputs = match pipeline.mediate(route, message, ask).await {
        Ok(outputs) => outputs,
        Err(Mediated::Busy(busy)) => {
            tracing::warn!(route = %route.name, message_id = %id, "{busy}");
            return Err(Problem::plant_busy(&route.name, &busy));
        }
        Err(Mediated::Failed {
            failure,
            dead_letter: Ok(dead_letter),
        }) => return Err(failure_problem(&route.name, &id, &failure, dead_letter)),
        Err(Mediated::Failed {
            failure,
            dead_letter: Err(e),
        }) => {
            tracing::error!(route = %route.name, message_id = %id, error = %e, "could not record a dead letter");
            return Err(Problem::internal(format!(
                "{}; and the dead letter could not be recorded: {e}",
                failure.reason()
            )));
        }
        Err(other @ (Mediated::Lost(_) | Mediated::Settled)) => {
            return Err(Problem::internal(format!(
                "the mediation task failed: {other:?}"
            )));
        }
    };
    tracing::debug!(route = %route.name, message_id = %id, "mediated");
    let ids: Vec<String> = outputs.iter().map(|o| o.id.clone()).collect();
    let answer = match pipeline.sinks.deliver(route, &id, outputs, Via::Held).await {
        Ok(Delivered::Reply(outputs)) => Ok(super::reply::respond(&id, outputs)),
        Ok(Delivered::Webhook(n) | Delivered::Published(n)) => Ok(delivered_response(&id, &ids, n)),
        Ok(Delivered::Held { waiting, .. }) => Ok(held_response(&id, &ids, waiting)),
        Err(DeliveryError::Full(full)) => {
            tracing::warn!(route = %route.name, message_id = %id, "{full}");
            Err(Problem::outbox_full(&route.name, &id, full))
        }
        Err(e @ (DeliveryError::Store(_) | DeliveryError::NoSink { .. })) => {
            tracing::error!(route = %route.name, message_id = %id, error = %e, "outputs not kept");
            Err(Problem::internal(e.to_string()))
        }
        Err(e) => {
            tracing::warn!(route = %route.name, message_id = %id, error = %e, "delivery failed");
            Err(Problem::sink_unavailable(&route.name, &id, e.to_string()))
        }
    };
    // Which version of each step made the answer.
    answer.map(|mut response| {
        if let Ok(value) = header::HeaderValue::from_str(route.lineage()) {
            response.headers_mut().insert("millrace-lineage", value);
        }
        response
    })
}

/// Headers that carry the sender's credentials (and the host's own client header, which only
/// the host sets).
fn is_credential(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "millrace-client"
    )
}

/// The message listener's answer to each request of a connection: [`handle`], with the
/// connection's client certificate name (when it presented one) for routes' `auth`.
pub fn handler(source: Arc<HttpSource>) -> super::connections::Handler {
    Arc::new(
        move |mut req: Request<Incoming>, _peer, client: Option<String>| {
            let source = Arc::clone(&source);
            Box::pin(async move {
                if let Some(name) = client {
                    req.extensions_mut().insert(ClientCertificate(name));
                }
                handle(&source, req).await
            })
        },
    )
}

/// The TLS client certificate's common name of a connection, when it presented one.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub String);

/// Who may post to `auth`'s route: a listed token, or a listed client certificate.
fn authenticate(auth: &crate::config::RouteAuth, req: &Request<()>) -> Result<String, String> {
    if let Some(ClientCertificate(name)) = req.extensions().get::<ClientCertificate>()
        && auth.clients.iter().any(|c| c == name)
    {
        return Ok(name.clone());
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = presented else {
        return Err("the route needs credentials: Authorization: Bearer TOKEN or a client certificate it lists".into());
    };
    use sha2::Digest;
    let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    auth.tokens
        .iter()
        .find(|(_, known)| {
            known
                .iter()
                .zip(&hash)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        })
        .map(|(name, _)| name.clone())
        .ok_or_else(|| "the token is not one the route accepts".into())
}

fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "content-length"
            | "host"
    )
}

fn failure_problem(route: &str, id: &str, failure: &Failure, dead_letter: Option<i64>) -> Problem {
    let (status, kind, title) = match &failure.failure {
        StepFailure::Rejected(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
            "Message rejected by a plugin",
        ),
        StepFailure::RetryLater(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "retry-later",
            "Message cannot be handled now",
        ),
        StepFailure::Deadline(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin-deadline",
            "Plugin exceeded its deadline",
        ),
        StepFailure::MemoryCap(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin-memory-cap",
            "Plugin exceeded its memory cap",
        ),
        StepFailure::Trap(_) => (StatusCode::BAD_GATEWAY, "plugin-trap", "Plugin failed"),
        StepFailure::Limit(Breach::Budget(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "message-budget",
            "Message ran out of its budget across the chain",
        ),
        StepFailure::Limit(_) => (
            StatusCode::BAD_GATEWAY,
            "plugin-limit",
            "Plugin broke a limit on what it hands over",
        ),
        StepFailure::Quarantined(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "plugin-quarantined",
            "Plugin version quarantined",
        ),
    };
    let mut problem = Problem::new(status, kind, title, failure.reason())
        .with("route", route)
        .with("message_id", id)
        .with("step", failure.step)
        .with("plugin", failure.plugin.name.as_str())
        .with("version", failure.plugin.version.as_str())
        .with("digest", failure.plugin.digest.as_str());
    if let StepFailure::Rejected(r) = &failure.failure {
        if let Some(field) = &r.field {
            problem = problem.with("field", field.as_str());
        }
        if let Some(position) = r.position {
            problem = problem.with("position", position);
        }
    }
    if let StepFailure::RetryLater(r) = &failure.failure {
        problem.retry_after = Some(
            r.after_ms
                .map_or(1, |ms| u64::from(ms).div_ceil(1000).max(1)),
        );
    }
    if let StepFailure::Quarantined(_) = &failure.failure {
        problem.retry_after = Some(30);
    }
    if let Some(id) = dead_letter {
        problem = problem.with("dead_letter", id);
    }
    problem
}
