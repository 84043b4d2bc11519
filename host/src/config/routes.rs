//! `[routes.R]`: each route's source and sink, its webhook, its steps (plugin, grants, settings,
//! limits) and its budget, checked against the host's rules and the plants.

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

/// The longest plant or route name: both are part of names the host gives broker queues
/// (`millrace.ROUTE.dead-letter`, `millrace.control.last.PLANT/PLUGIN`), which RabbitMQ limits
/// to 255 bytes.
pub const MAX_NAME_BYTES: usize = 100;

/// The longest `routes.R.amqp.queue`: room for the delay queues' `.retry.<ms>ms` within
/// RabbitMQ's 255 bytes.
pub const MAX_QUEUE_BYTES: usize = 200;

/// Plant and route names appear in URLs and logs: lower-case letters, digits, `-`, `_`, `.`.
pub(super) fn check_name(diag: &mut Diagnostics, name: &Spanned<String>, what: &str) {
    let n = name.get_ref();
    if n.len() > MAX_NAME_BYTES {
        diag.error_at(
            name.span(),
            format!("{what} name is {} bytes long; at most {MAX_NAME_BYTES} (it is part of the broker queues' names)", n.len()),
        );
        return;
    }
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

/// Read `[routes]` against the host's sections and the plants (paths relative to `dir`).
pub(super) fn read(
    diag: &mut Diagnostics,
    dir: &Path,
    file: &File,
    host: &super::host::Host,
    plants: &super::plants::Plants,
) -> Vec<RouteConfig> {
    let super::host::Host {
        plugin_dir,
        step_defaults,
        default_body_kib,
        default_budget_ms,
        max_in_flight,
        ..
    } = host;
    let (max_in_flight, default_body_kib, default_budget_ms) =
        (*max_in_flight, *default_body_kib, *default_budget_ms);
    let super::plants::Plants {
        plants, plant_uns, ..
    } = plants;
    let mut routes = Vec::new();
    for (name, route) in &file.routes {
        check_name(diag, name, "route");
        let plant = route.plant.get_ref();
        if !plants.contains_key(plant) {
            let known: Vec<&str> = plants.keys().map(String::as_str).collect();
            diag.error_at(
                route.plant.span(),
                format!("route {} names plant {plant:?}, which is not configured; add [plants.{plant}] (configured: {})", name.get_ref(), list(&known)),
            );
        }
        if route.steps.get_ref().is_empty() {
            diag.error_at(
                route.steps.span(),
                format!(
                    "route {} has no steps; add at least one [[routes.{}.steps]]",
                    name.get_ref(),
                    name.get_ref()
                ),
            );
        }
        let route_key = |k: &str| format!("routes.{}.{k}", name.get_ref());
        let max_body_kib = ranged(
            diag,
            &route_key("max_body_kib"),
            route.max_body_kib.as_ref(),
            MAX_BODY_KIB,
            default_body_kib,
        );
        let budget = MessageBudget {
            time: Duration::from_millis(ranged(
                diag,
                &route_key("message_budget_ms"),
                route.message_budget_ms.as_ref(),
                DEADLINE_MS,
                default_budget_ms,
            )),
            max_outputs: ranged(
                diag,
                &route_key("max_outputs"),
                route.max_outputs.as_ref(),
                MAX_OUTPUTS,
                step_defaults.max_outputs as u64,
            ) as usize,
            max_output_bytes: (ranged(
                diag,
                &route_key("max_output_kib"),
                route.max_output_kib.as_ref(),
                MAX_OUTPUT_KIB,
                (step_defaults.max_output_bytes >> 10) as u64,
            ) as usize)
                << 10,
        };
        let route_in_flight = route.max_in_flight.as_ref().map(|n| {
            ranged(
                diag,
                &route_key("max_in_flight"),
                Some(n),
                1..=max_in_flight as u64,
                1,
            ) as usize
        });
        let auth = route.auth.as_ref().map(|section| {
            let mut tokens = Vec::new();
            for token in &section.get_ref().tokens {
                match hex::decode(token.sha256.get_ref())
                    .ok()
                    .and_then(|h| <[u8; 32]>::try_from(h).ok())
                {
                    Some(hash) => tokens.push((token.name.clone(), hash)),
                    None => diag.error_at(
                        token.sha256.span(),
                        "sha256 must be the token's SHA-256 in hex (64 characters)",
                    ),
                }
            }
            if tokens.is_empty() && section.get_ref().clients.is_empty() {
                diag.error_at(
                    section.span(),
                    format!("routes.{}.auth names no token and no client: nobody could post to the route", name.get_ref()),
                );
            }
            RouteAuth {
                tokens,
                clients: section.get_ref().clients.clone(),
            }
        });
        if auth.is_some() && route.source != Source::Http {
            diag.error_at(
                route.auth.as_ref().expect("set").span(),
                format!("routes.{}.auth applies to HTTP routes only", name.get_ref()),
            );
        }
        let mut steps = Vec::new();
        for (index, step) in route.steps.get_ref().iter().enumerate() {
            steps.push(step_config(
                diag,
                dir,
                plugin_dir,
                step_defaults,
                &format!("routes.{}.steps[{}]", name.get_ref(), index + 1),
                step,
            ));
        }
        let webhook = webhook_config(diag, name.get_ref(), route);
        let amqp = RouteAmqp::from_section(name.get_ref(), route.amqp.as_ref());
        let uses_broker = route.source == Source::Amqp || *route.sink.get_ref() == Sink::Amqp;
        if uses_broker && amqp.queue.len() > MAX_QUEUE_BYTES {
            diag.error_at(
                route.sink.span(),
                format!("route {}: amqp.queue is {} bytes long; at most {MAX_QUEUE_BYTES} (the host names its delay queues QUEUE.retry.<ms>ms, and RabbitMQ limits names to 255 bytes)", name.get_ref(), amqp.queue.len()),
            );
        }
        if let Some(order) = &amqp.order_by {
            if route.source != Source::Amqp {
                diag.error_at(
                    route.sink.span(),
                    format!("route {}: amqp.order_by = \"{order}\" orders a queue's deliveries; it applies to routes whose source is amqp", name.get_ref()),
                );
            }
            let quorum = file.host.amqp_queues != Some(crate::amqp::config::QueueKind::Classic);
            if quorum && file.host.amqp_delivery_limit == Some(0) {
                diag.error_at(
                    route.sink.span(),
                    format!("route {}: amqp.order_by needs host.amqp_delivery_limit above 0 with quorum queues (without a limit a quorum queue puts a returned delivery behind the others, out of order)", name.get_ref()),
                );
            }
        }
        if uses_broker && file.host.amqp.is_none() {
            diag.error_at(
                route.sink.span(),
                format!("route {} uses the broker but host.amqp is not set; add amqp = \"amqp://127.0.0.1:5672/%2f\" to [host]", name.get_ref()),
            );
        }
        if route.source == Source::Amqp && *route.sink.get_ref() == Sink::Reply {
            diag.error_at(
                route.sink.span(),
                format!("route {} takes messages from a queue, so there is no caller to reply to; use sink \"amqp\" or \"http\"", name.get_ref()),
            );
        }
        let mut mqtt = crate::mqtt::config::RouteMqtt::from_section(route.mqtt.as_ref());
        mqtt.uns = plant_uns.get(plant).cloned().unwrap_or_default();
        let (mqtt_in, mqtt_out) = (
            route.source == Source::Mqtt,
            *route.sink.get_ref() == Sink::Mqtt,
        );
        if (mqtt_in || mqtt_out) && file.host.mqtt.is_none() {
            diag.error_at(
                route.sink.span(),
                format!("route {} uses MQTT but host.mqtt is not set; add mqtt = \"mqtt://127.0.0.1:1883\" to [host]", name.get_ref()),
            );
        }
        if mqtt_in && *route.sink.get_ref() == Sink::Reply {
            diag.error_at(
                route.sink.span(),
                format!("route {} takes MQTT messages, so there is no caller to reply to; use sink \"mqtt\", \"amqp\" or \"http\"", name.get_ref()),
            );
        }
        for problem in mqtt.problems(mqtt_in, mqtt_out) {
            diag.error_at(
                route.sink.span(),
                format!(
                    "route {}: [routes.{}.mqtt] {problem}",
                    name.get_ref(),
                    name.get_ref()
                ),
            );
        }
        routes.push(RouteConfig {
            name: name.get_ref().clone(),
            plant: plant.clone(),
            source: route.source,
            sink: *route.sink.get_ref(),
            webhook,
            amqp,
            mqtt,
            max_body_bytes: max_body_kib as usize * 1024,
            budget,
            max_in_flight: route_in_flight,
            auth,
            steps,
        });
    }
    routes
}
