//! Sink `reply`: the chain's outputs become the HTTP response.
//!
//! - no output (filtered): `204 No Content` with `millrace-outcome: filtered`;
//! - one output: `200` with the output's body and content type;
//! - several outputs that are all JSON: `200` with a JSON array of them, typed
//!   `application/cloudevents-batch+json` when every output is a structured-mode CloudEvent
//!   (the CloudEvents batch format), `application/json` otherwise;
//! - several outputs otherwise: `200` `multipart/mixed`, one part per output, in order.

use crate::plugin::bindings::types::Message;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};

const CLOUDEVENT: &str = "application/cloudevents+json";
const BOUNDARY: &str = "millrace-output-boundary-7d0c";

fn media(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_json(m: &Message) -> bool {
    let media = media(&m.content_type);
    (media == "application/json" || media.ends_with("+json"))
        && serde_json::from_slice::<serde::de::IgnoredAny>(&m.body).is_ok()
}

/// The response for `outputs` of message `message_id`.
pub fn respond(message_id: &str, outputs: Vec<Message>) -> Response<Full<Bytes>> {
    let builder = Response::builder().header("millrace-message-id", message_id);
    let response = match outputs.len() {
        0 => builder
            .status(StatusCode::NO_CONTENT)
            .header("millrace-outcome", "filtered")
            .body(Full::new(Bytes::new())),
        1 => {
            let out = outputs.into_iter().next().expect("one output");
            builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, out.content_type)
                .header("millrace-output-id", out.id)
                .body(Full::new(Bytes::from(out.body)))
        }
        _ if outputs.iter().all(is_json) => {
            let content_type = if outputs.iter().all(|m| media(&m.content_type) == CLOUDEVENT) {
                "application/cloudevents-batch+json"
            } else {
                "application/json"
            };
            let mut body =
                Vec::with_capacity(outputs.iter().map(|m| m.body.len() + 1).sum::<usize>() + 2);
            body.push(b'[');
            for (i, m) in outputs.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&m.body);
            }
            body.push(b']');
            builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, content_type)
                .body(Full::new(Bytes::from(body)))
        }
        _ => {
            let mut body = Vec::new();
            for m in &outputs {
                body.extend_from_slice(
                    format!(
                        "--{BOUNDARY}\r\ncontent-type: {}\r\nmillrace-output-id: {}\r\n\r\n",
                        m.content_type, m.id
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(&m.body);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
            builder
                .status(StatusCode::OK)
                .header(
                    header::CONTENT_TYPE,
                    format!("multipart/mixed; boundary={BOUNDARY}"),
                )
                .body(Full::new(Bytes::from(body)))
        }
    };
    response.expect("static status and header names are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn msg(id: &str, content_type: &str, body: &str) -> Message {
        Message {
            id: id.into(),
            plant: "p".into(),
            route: "r".into(),
            content_type: content_type.into(),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        }
    }

    async fn body(r: Response<Full<Bytes>>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn outputs_map_to_filtered_single_batch_and_multipart() {
        let r = respond("m", vec![]);
        assert_eq!(r.status(), StatusCode::NO_CONTENT);

        let r = respond("m", vec![msg("a", "text/plain", "x")]);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(body(r).await, "x");

        let r = respond(
            "m",
            vec![
                msg("a", CLOUDEVENT, "{\"id\":1}"),
                msg("b", CLOUDEVENT, "{\"id\":2}"),
            ],
        );
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/cloudevents-batch+json"
        );
        assert_eq!(body(r).await, "[{\"id\":1},{\"id\":2}]");

        let r = respond(
            "m",
            vec![
                msg("a", "application/json", "{}"),
                msg("b", "text/plain", "y"),
            ],
        );
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("multipart/mixed")
        );
        let text = body(r).await;
        assert!(
            text.contains("millrace-output-id: b\r\n\r\ny\r\n"),
            "{text}"
        );
    }
}
