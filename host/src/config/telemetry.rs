//! `[telemetry]`: what the host tells about its messages — lineage kept in the embedded store,
//! log lines as text or JSON, traces exported over OTLP.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TelemetrySection {
    lineage: Option<bool>,
    lineage_retention_h: Option<Spanned<u64>>,
    lineage_max_rows: Option<Spanned<u64>>,
    log_format: Option<Spanned<String>>,
    otlp_endpoint: Option<String>,
    otlp_headers: Option<String>,
    sampler: Option<String>,
    sampler_arg: Option<String>,
    service_name: Option<String>,
}

/// `[telemetry]`, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// Lineage: kept or not, and for how long / how many rows.
    pub lineage: crate::lineage::Retention,
    /// Log lines as JSON objects (`log_format = "json"`) rather than text.
    pub log_json: bool,
    /// The trace exporter's settings the file gives, by the standard variable they stand for
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`, …); the environment fills what the file leaves out.
    pub otel: Vec<(&'static str, String)>,
}

impl Telemetry {
    /// What a reload compares (a change needs a restart), with the exporter's settings hashed:
    /// its headers may hold credentials, and refusals are logged.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let mut otel = sha2::Sha256::new();
        for (var, value) in &self.otel {
            otel.update(var.as_bytes());
            otel.update([0]);
            otel.update(value.as_bytes());
            otel.update([0]);
        }
        format!(
            "lineage {:?}, log_json {}, otel {}",
            self.lineage,
            self.log_json,
            &hex::encode(otel.finalize())[..16]
        )
    }
}

const RETENTION_H: std::ops::RangeInclusive<u64> = 1..=24 * 366;
const MAX_ROWS: std::ops::RangeInclusive<u64> = 1_000..=1_000_000_000;

pub(super) fn read(diag: &mut Diagnostics, section: &TelemetrySection) -> Telemetry {
    let defaults = crate::lineage::Retention::default();
    let lineage = crate::lineage::Retention {
        enabled: section.lineage.unwrap_or(defaults.enabled),
        max_age: Duration::from_secs(
            3600 * ranged(
                diag,
                "telemetry.lineage_retention_h",
                section.lineage_retention_h.as_ref(),
                RETENTION_H,
                defaults.max_age.as_secs() / 3600,
            ),
        ),
        max_rows: ranged(
            diag,
            "telemetry.lineage_max_rows",
            section.lineage_max_rows.as_ref(),
            MAX_ROWS,
            defaults.max_rows,
        ),
    };
    let log_json = match section.log_format.as_ref() {
        None => false,
        Some(f) => match f.get_ref().as_str() {
            "text" => false,
            "json" => true,
            other => {
                diag.error_at(
                    f.span(),
                    format!("telemetry.log_format {other:?} is not \"text\" or \"json\""),
                );
                false
            }
        },
    };
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &section.otlp_endpoint),
        ("OTEL_EXPORTER_OTLP_HEADERS", &section.otlp_headers),
        ("OTEL_TRACES_SAMPLER", &section.sampler),
        ("OTEL_TRACES_SAMPLER_ARG", &section.sampler_arg),
        ("OTEL_SERVICE_NAME", &section.service_name),
    ]
    .into_iter()
    .filter_map(|(var, value)| value.clone().map(|v| (var, v)))
    .collect();
    Telemetry {
        lineage,
        log_json,
        otel,
    }
}
