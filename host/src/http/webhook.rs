//! Sink `http`: each output is POSTed to the route's webhook, in order, one request per output,
//! with the output's content type and body, `Idempotency-Key: <output id>` (so the receiver can
//! drop a repeat) and `millrace-plant` / `millrace-route`. Delivery is done when every request
//! answered 2xx within the webhook's timeout; the first failure stops it (later outputs are not
//! sent) and is reported with its cause.

use crate::config::Webhook;
use crate::plugin::bindings::types::Message;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a delivery did not complete. Every cause is worth a retry: the outputs are deterministic,
/// so a retry sends the same requests, and the receiver deduplicates by `Idempotency-Key`.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No answer: connection refused or reset, or the timeout passed.
    #[error("webhook {url} unreachable for output {output}: {cause}")]
    Unreachable {
        url: String,
        output: String,
        cause: String,
    },
    /// The webhook answered, but not 2xx.
    #[error("webhook {url} answered {status} for output {output}: {body}")]
    Refused {
        url: String,
        output: String,
        status: u16,
        body: String,
    },
}

/// A reusable HTTP/1.1 client for webhooks.
#[derive(Clone)]
pub struct WebhookClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for WebhookClient {
    fn default() -> Self {
        WebhookClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl WebhookClient {
    /// Deliver `outputs` in order; the number delivered.
    pub async fn deliver(
        &self,
        webhook: &Webhook,
        lineage: &str,
        outputs: &[Message],
    ) -> Result<usize, DeliveryError> {
        for output in outputs {
            let mut request = Request::builder()
                .method(Method::POST)
                .uri(webhook.url.clone())
                .header(header::CONTENT_TYPE, output.content_type.as_str())
                .header("idempotency-key", output.id.as_str())
                .header("millrace-plant", output.plant.as_str())
                .header("millrace-route", output.route.as_str())
                .header("millrace-lineage", lineage);
            for (name, value) in crate::telemetry::trace::carried(&output.headers) {
                request = request.header(name, value);
            }
            let request = request
                .body(Full::new(Bytes::from(output.body.clone())))
                .map_err(|e| self.unreachable(webhook, output, e.to_string()))?;
            let sent = tokio::time::timeout(webhook.timeout, async {
                let response = self.client.request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
            })
            .await;
            let (status, body) = match sent {
                Err(_) => {
                    return Err(self.unreachable(
                        webhook,
                        output,
                        format!("no answer within {} ms", webhook.timeout.as_millis()),
                    ));
                }
                Ok(Err(e)) => return Err(self.unreachable(webhook, output, e.to_string())),
                Ok(Ok(answer)) => answer,
            };
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body);
                return Err(DeliveryError::Refused {
                    url: webhook.url.to_string(),
                    output: output.id.clone(),
                    status: status.as_u16(),
                    body: text.chars().take(200).collect(),
                });
            }
        }
        Ok(outputs.len())
    }

    fn unreachable(&self, webhook: &Webhook, output: &Message, cause: String) -> DeliveryError {
        DeliveryError::Unreachable {
            url: webhook.url.to_string(),
            output: output.id.clone(),
            cause,
        }
    }
}

/// Sink `http`: each output POSTed to the route's webhook, in order.
impl crate::pipeline::sinks::Sink for WebhookClient {
    fn deliver<'a>(
        &'a self,
        route: &'a crate::route::Route,
        outputs: Vec<Message>,
        _via: crate::pipeline::sinks::Via,
    ) -> crate::pipeline::sinks::Delivering<'a> {
        use crate::pipeline::sinks::{Delivered, DeliveryError as Failed};
        Box::pin(async move {
            let webhook = route.webhook.as_ref().ok_or_else(|| Failed::NoSink {
                route: route.name.clone(),
                kind: route.sink,
            })?;
            WebhookClient::deliver(self, webhook, route.lineage(), &outputs)
                .await
                .map(Delivered::Webhook)
                .map_err(|e| Failed::Unavailable(e.to_string()))
        })
    }
}
