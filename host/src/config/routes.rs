//! A route's parts as written: its webhook, its steps (plugin, grants, settings, limits) and
//! the plant's lookup tables they read, checked against the host's rules.

use super::*;

/// Sink `http` needs a `[routes.R.webhook]` with an `http://` URL; other sinks take none.
pub(super) fn webhook_config(
    diag: &mut Diagnostics,
    route: &str,
    section: &RouteSection,
) -> Option<Webhook> {
    match (section.sink.get_ref(), &section.webhook) {
        (Sink::Http, None) => {
            diag.error_at(
                section.sink.span(),
                format!("route {route} has sink \"http\" but no webhook; add [routes.{route}.webhook] with url = \"http://…\""),
            );
            None
        }
        (Sink::Http, Some(webhook)) => {
            let text = webhook.get_ref().url.get_ref();
            match text.parse::<hyper::Uri>() {
                Ok(url) if url.scheme_str() == Some("http") && url.host().is_some() => {
                    Some(Webhook {
                        url,
                        timeout: std::time::Duration::from_millis(
                            webhook.get_ref().timeout_ms.unwrap_or(5000),
                        ),
                    })
                }
                _ => {
                    diag.error_at(
                        webhook.get_ref().url.span(),
                        format!("route {route}: webhook url {text:?} is not an http:// URL with a host (https is not supported yet)"),
                    );
                    None
                }
            }
        }
        (_, Some(webhook)) => {
            diag.error_at(
                webhook.span(),
                format!("route {route} has a webhook but its sink is not \"http\"; set sink = \"http\" or remove the webhook"),
            );
            None
        }
        (_, None) => None,
    }
}

/// Plant and route names appear in URLs and logs: lower-case letters, digits, `-`, `_`, `.`.
pub(super) fn check_name(diag: &mut Diagnostics, name: &Spanned<String>, what: &str) {
    let n = name.get_ref();
    let ok = n
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if !ok {
        diag.error_at(name.span(), format!("{what} name {n:?} must start with a lower-case letter or digit and use only a-z, 0-9, '-', '_' and '.'"));
    }
}

pub(super) fn read_table(
    diag: &mut Diagnostics,
    dir: &Path,
    table: &Spanned<LookupSection>,
) -> Option<Table> {
    let t = table.get_ref();
    match (&t.csv, &t.entries) {
        (Some(csv), None) => match lookup::read_csv(
            &dir.join(csv),
            t.key_column.as_deref(),
            t.value_column.as_deref(),
        ) {
            Ok(rows) => Some(rows),
            Err(e) => {
                diag.error_at(table.span(), e);
                None
            }
        },
        (None, Some(entries)) if t.key_column.is_none() && t.value_column.is_none() => Some(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        (None, Some(_)) => {
            diag.error_at(
                table.span(),
                "key_column and value_column apply to csv tables only",
            );
            None
        }
        _ => {
            diag.error_at(table.span(), "a lookup table needs exactly one of csv = \"FILE.csv\" or entries = { KEY = \"VALUE\" }");
            None
        }
    }
}

/// One step of a route; `at` names it in errors (`routes.R.steps[N]`), `defaults` are the
/// validated `[limits]`.
pub(super) fn step_config(
    diag: &mut Diagnostics,
    dir: &Path,
    plugin_dir: &Path,
    defaults: &StepLimits,
    at: &str,
    step: &StepSection,
) -> StepConfig {
    let plugin = step.plugin.get_ref().clone();
    let plugin_path = if plugin.ends_with(".wasm") || plugin.contains('/') {
        dir.join(&plugin)
    } else {
        plugin_dir.join(format!("{plugin}.wasm"))
    };
    let mut grants = Vec::new();
    for grant in step.grants.iter().flat_map(|g| g.get_ref()) {
        match Capability::from_name(grant.get_ref()) {
            Some(cap) if !grants.contains(&cap) => grants.push(cap),
            Some(_) => diag.error_at(
                grant.span(),
                format!("capability {:?} is granted twice", grant.get_ref()),
            ),
            None => {
                let known: Vec<&str> = Capability::ALL.iter().map(|c| c.name()).collect();
                diag.error_at(
                    grant.span(),
                    format!(
                        "unknown capability {:?}; grants are any of {}",
                        grant.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
    }
    let mut limit =
        |key: &str, own: &Number, range: std::ops::RangeInclusive<u64>, default: u64| {
            ranged(diag, &format!("{at}.{key}"), own.as_ref(), range, default)
        };
    let limits = StepLimits {
        deadline: Duration::from_millis(limit(
            "deadline_ms",
            &step.deadline_ms,
            DEADLINE_MS,
            defaults.deadline.as_millis() as u64,
        )),
        memory_bytes: (limit(
            "memory_mib",
            &step.memory_mib,
            MEMORY_MIB,
            (defaults.memory_bytes >> 20) as u64,
        ) as usize)
            << 20,
        instance_reuse: limit(
            "instance_reuse",
            &step.instance_reuse,
            INSTANCE_REUSE,
            u64::from(defaults.instance_reuse),
        ) as u32,
        max_outputs: limit(
            "max_outputs",
            &step.max_outputs,
            MAX_OUTPUTS,
            defaults.max_outputs as u64,
        ) as usize,
        max_output_bytes: (limit(
            "max_output_kib",
            &step.max_output_kib,
            MAX_OUTPUT_KIB,
            (defaults.max_output_bytes >> 10) as u64,
        ) as usize)
            << 10,
    };
    let settings = Settings::new(
        step.settings
            .iter()
            .flat_map(|s| s.get_ref())
            .map(|(k, v)| (k.clone(), toml_to_json(v)))
            .collect(),
    );
    StepConfig {
        plugin,
        plugin_path,
        grants,
        settings,
        limits,
        at: diag.locate(step.plugin.span()),
        grants_at: diag.locate(
            step.grants
                .as_ref()
                .map_or(step.plugin.span(), |g| g.span()),
        ),
        settings_at: diag.locate(
            step.settings
                .as_ref()
                .map_or(step.plugin.span(), |s| s.span()),
        ),
    }
}
