//! Helpers on [`Message`]: typed views of the body, headers, derived outputs.

use crate::{MediationError, Message};
use serde::de::DeserializeOwned;

impl Message {
    /// The body as UTF-8 text, or a rejection naming the first invalid byte.
    pub fn body_str(&self) -> Result<&str, MediationError> {
        std::str::from_utf8(&self.body).map_err(|e| {
            let at = e.valid_up_to() + 1;
            MediationError::rejected(format!("body is not valid UTF-8 at byte {at}"))
                .position(at as u32)
        })
    }

    /// The body parsed as JSON into `T`, or a rejection with line and column.
    pub fn body_json<T: DeserializeOwned>(&self) -> Result<T, MediationError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            MediationError::rejected(format!("body is not the expected JSON: {e}"))
                .position(e.line() as u32)
        })
    }

    /// The media type without parameters, lower-case (`text/plain; charset=x` → `text/plain`).
    pub fn media_type(&self) -> String {
        self.content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }

    /// The first header of that name (names are lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// An output derived from this message: same id, plant and route, no headers, a new body.
    pub fn with_body(&self, content_type: impl Into<String>, body: Vec<u8>) -> Message {
        Message {
            id: self.id.clone(),
            plant: self.plant.clone(),
            route: self.route.clone(),
            content_type: content_type.into(),
            headers: Vec::new(),
            body,
        }
    }
}
