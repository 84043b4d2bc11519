//! `policy-guard`: the last step before canonical events leave a plant. It
//!
//! 1. checks the CloudEvents envelope and validates `data` against the schema of the event's
//!    type and major version (schemas embedded from `schemas/` at build time); a type or major
//!    version it does not know is refused, never passed on unchecked;
//! 2. masks configured fields (e.g. operator ids) with a keyed hash (HMAC-SHA-256), so the same
//!    operator keeps the same token without the id leaving the plant;
//! 3. enforces the quality-hold rule with the plant's durable state (capability `state`): a
//!    `quality.hold` puts its lot on hold (and emits a `finance.review-requested` event), a
//!    `quality.released` lifts it, and a `shipment.asn` or `shipment.departed` that carries a
//!    lot on hold is rejected with "lot … on hold since …".
//!
//! Every other event passes unchanged (same bytes) when nothing is masked.

mod hold;
mod mask;
mod schema;
#[cfg(target_arch = "wasm32")]
mod seed;

use millrace_sdk::{CLOUDEVENTS_CONTENT_TYPE, Host, MediationError, Message, Plugin, PluginInfo};
use serde::Deserialize;
use serde_json::Value;

pub use hold::FINANCE_REVIEW;

/// Step settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Enforce the quality-hold rule (needs the `state` grant).
    #[serde(default = "yes")]
    enforce_holds: bool,
    /// Emit a `finance.review-requested` event for every quality hold.
    #[serde(default = "yes")]
    finance_review: bool,
    /// Dotted paths of fields to mask, starting at `data` (e.g. `data.operator`). A path that
    /// crosses an array applies to every element.
    #[serde(default)]
    mask: Vec<String>,
    /// Key of the masking hash; at least 16 characters. Required when `mask` is set.
    #[serde(default)]
    mask_key: Option<String>,
}

fn yes() -> bool {
    true
}

/// The plugin: its settings and the schemas it enforces.
pub struct PolicyGuard {
    settings: Settings,
    masker: Option<mask::Masker>,
    catalog: schema::Catalog,
}

impl Plugin for PolicyGuard {
    fn describe() -> PluginInfo {
        PluginInfo::new("policy-guard", env!("CARGO_PKG_VERSION"))
            .accepts([CLOUDEVENTS_CONTENT_TYPE])
            .emits([FINANCE_REVIEW])
    }

    fn new(host: &impl Host) -> Result<Self, String> {
        let settings: Settings = host.settings()?;
        let masker = mask::Masker::new(&settings.mask, settings.mask_key.as_deref())?;
        Ok(PolicyGuard {
            settings,
            masker,
            catalog: schema::Catalog::embedded(),
        })
    }

    fn mediate(&self, host: &impl Host, input: Message) -> Result<Vec<Message>, MediationError> {
        let media = input.media_type();
        if media != CLOUDEVENTS_CONTENT_TYPE {
            return Err(MediationError::rejected(format!(
                "content type {media} is not {CLOUDEVENTS_CONTENT_TYPE}: policy-guard checks canonical events in structured mode"
            )));
        }
        let mut event: Value = input.body_json()?;
        let kind = self.catalog.check(&event)?;
        let masked = match &self.masker {
            Some(masker) => masker.apply(&mut event)?,
            None => false,
        };
        let review = if self.settings.enforce_holds {
            hold::apply(host, &kind, &event)?.filter(|_| self.settings.finance_review)
        } else {
            None
        };
        let review = review.map(|r| r.into_message(&input));
        let passed = if masked {
            let body = serde_json::to_vec(&event).expect("a JSON value serializes");
            Message { body, ..input }
        } else {
            input
        };
        Ok(std::iter::once(passed).chain(review).collect())
    }
}

millrace_sdk::export!(PolicyGuard);

#[cfg(test)]
mod tests;
