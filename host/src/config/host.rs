//! The host's own sections: `[host]` (listeners, data, links, bounds), `[admin]`, `[tls]`, the
//! links' `[amqp_tls]` and `[mqtt_tls]`, and `[limits]` (the defaults of every step and route).

use super::*;

/// `[host]`, `[admin]`, `[tls]`, `[amqp_tls]`, `[mqtt_tls]` and `[limits]`, read and checked: what the
/// host runs with, and the defaults routes and steps start from.
pub(super) struct Host {
    pub http: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub compile_cache: PathBuf,
    /// Where plugins named without a path are found.
    pub plugin_dir: PathBuf,
    pub mqtt_url: Option<crate::mqtt::config::BrokerUrl>,
    pub host_id: String,
    pub control_key: Option<crate::amqp::broadcast::ControlKey>,
    pub control_keys_also: Vec<crate::amqp::broadcast::ControlKey>,
    pub mqtt_tls: crate::mqtt::config::MqttTls,
    pub amqp_tls: crate::amqp::config::AmqpTls,
    pub max_in_flight: usize,
    pub intake: crate::plugin::intake::IntakeLimits,
    pub quarantine: crate::quarantine::Policy,
    pub connections: crate::http::connections::ConnectionLimits,
    pub idempotency_bounds: crate::idempotency::Bounds,
    pub idempotency_window: Duration,
    pub admin_access: AdminAccess,
    pub tls: Option<crate::http::tls::TlsSettings>,
    pub gate_budget: Duration,
    pub stop_timeout: Option<Duration>,
    /// `[limits]`: a step's defaults.
    pub step_defaults: StepLimits,
    /// `limits.max_body_kib`: a route's default.
    pub default_body_kib: u64,
    /// `limits.message_budget_ms`: a route's default.
    pub default_budget_ms: u64,
}

/// Read the host's sections of `file` (paths relative to `dir`); problems go to `diag`.
pub(super) fn read(diag: &mut Diagnostics, dir: &Path, file: &File) -> Host {
    let http = match &file.host.http {
        None => DEFAULT_HTTP.parse().expect("the default address parses"),
        Some(addr) => addr.get_ref().parse().unwrap_or_else(|e| {
            diag.error_at(
                addr.span(),
                format!(
                    "host.http {:?} is not an address like 127.0.0.1:8080: {e}",
                    addr.get_ref()
                ),
            );
            DEFAULT_HTTP.parse().expect("the default address parses")
        }),
    };
    let admin = file.host.admin.as_ref().and_then(|addr| {
        addr.get_ref()
            .parse()
            .map_err(|e| {
                diag.error_at(
                    addr.span(),
                    format!(
                        "host.admin {:?} is not an address like 127.0.0.1:9090: {e}",
                        addr.get_ref()
                    ),
                )
            })
            .ok()
    });
    let data_dir = dir.join(file.host.data_dir.as_deref().unwrap_or(".millrace"));
    let compile_cache = match file.host.compile_cache.as_deref() {
        Some(given) => dir.join(given),
        None => compile_cache_from_env().unwrap_or_else(|| data_dir.join("compile-cache")),
    };
    let plugin_dir = dir.join(file.host.plugin_dir.as_deref().unwrap_or("target/plugins"));
    let mqtt_url = match &file.host.mqtt {
        Some(url) => {
            match crate::mqtt::config::BrokerUrl::parse(url.get_ref()) {
                Ok(mut parsed) => {
                    if let Some(var) = &file.host.mqtt_password_env {
                        match (std::env::var(var.get_ref()), &parsed.user) {
                        (Ok(password), Some(_)) => parsed.password = Some(password),
                        (Ok(_), None) => diag.error_at(
                            url.span(),
                            "host.mqtt_password_env is set but host.mqtt names no user; write it as mqtt://USER@HOST:PORT",
                        ),
                        (Err(_), _) => diag.error_at(
                            var.span(),
                            format!("host.mqtt_password_env names {}, which is not set in the environment", var.get_ref()),
                        ),
                    }
                    }
                    Some(parsed)
                }
                Err(e) => {
                    diag.error_at(
                    url.span(),
                    format!("host.mqtt is not an MQTT broker URL ({e}); write it as mqtt://HOST:1883"),
                );
                    None
                }
            }
        }
        None => None,
    };
    let host_id = match &file.host.id {
        Some(id) => {
            if let Err(why) = check_host_id(id.get_ref()) {
                diag.error_at(id.span(), format!("host.id {why}"));
            }
            id.get_ref().clone()
        }
        // A hostname uses the same characters; anything else becomes `-`.
        None => hostname()
            .chars()
            .map(|c| if host_id_char(c) { c } else { '-' })
            .take(MAX_HOST_ID_BYTES)
            .collect(),
    };
    let mqtt_tls = tls_files(
        diag,
        dir,
        file.mqtt_tls.as_ref(),
        "[mqtt_tls] is set but host.mqtt is not an mqtts:// URL; the link would not use it",
        mqtt_url.as_ref().is_some_and(|u| u.tls),
        |ca, cert, key| crate::mqtt::config::MqttTls { ca, cert, key },
        |tls| tls.load().map(|_| ()),
    );
    let amqp_urls = file
        .host
        .amqp
        .as_ref()
        .map(|urls| urls.get_ref().list())
        .unwrap_or_default();
    if let Some(urls) = &file.host.amqp {
        if amqp_urls.is_empty() {
            diag.error_at(
                urls.span(),
                "host.amqp lists no broker URL; write one, or one per node of the cluster",
            );
        }
        for url in &amqp_urls {
            if let Err(e) = crate::amqp::config::check_url(url) {
                diag.error_at(
                    urls.span(),
                    if amqp_urls.len() == 1 {
                        format!("host.amqp is not a broker URL ({e}); write it as amqp://USER:PASSWORD@HOST:PORT/VHOST")
                    } else {
                        format!("host.amqp: {} is not a broker URL ({e}); write each as amqp://USER:PASSWORD@HOST:PORT/VHOST", crate::amqp::session::redact(url))
                    },
                );
            }
        }
        let tls = amqp_urls
            .iter()
            .filter(|u| u.starts_with("amqps://"))
            .count();
        if tls != 0 && tls != amqp_urls.len() {
            diag.error_at(
                urls.span(),
                "host.amqp mixes amqps:// and amqp:// URLs; every node of one broker is reached the same way",
            );
        }
    }
    let amqp_tls = tls_files(
        diag,
        dir,
        file.amqp_tls.as_ref(),
        "[amqp_tls] is set but host.amqp is not an amqps:// URL; the link would not use it",
        amqp_urls.iter().any(|u| u.starts_with("amqps://")),
        |ca, cert, key| crate::amqp::config::AmqpTls { ca, cert, key },
        |tls| tls.load().map(|_| ()),
    );
    let max_in_flight = ranged(
        diag,
        "host.max_in_flight",
        file.host.max_in_flight.as_ref(),
        1..=4096,
        default_max_in_flight() as u64,
    ) as usize;

    let intake = crate::plugin::intake::IntakeLimits {
        max_bytes: (ranged(
            diag,
            "host.max_component_mib",
            file.host.max_component_mib.as_ref(),
            1..=1024,
            64,
        ) as usize)
            << 20,
        compile_memory_bytes: ranged(
            diag,
            "host.compile_memory_mib",
            file.host.compile_memory_mib.as_ref(),
            64..=65_536,
            2048,
        ) << 20,
        compile_timeout: Duration::from_secs(ranged(
            diag,
            "host.compile_timeout_s",
            file.host.compile_timeout_s.as_ref(),
            1..=3600,
            120,
        )),
    };
    let quarantine = crate::quarantine::Policy {
        after: ranged(
            diag,
            "limits.quarantine_after",
            file.limits.quarantine_after.as_ref(),
            0..=1_000_000,
            5,
        ) as usize,
        window: Duration::from_secs(ranged(
            diag,
            "limits.quarantine_window_s",
            file.limits.quarantine_window_s.as_ref(),
            1..=86_400,
            60,
        )),
        action: match file.limits.quarantine_action.as_ref() {
            None => crate::quarantine::Action::Pause,
            Some(a) if a.get_ref() == "pause" => crate::quarantine::Action::Pause,
            Some(a) if a.get_ref() == "rollback" => crate::quarantine::Action::Rollback,
            Some(a) => {
                diag.error_at(
                    a.span(),
                    format!(
                        "limits.quarantine_action {:?} is not one of \"pause\", \"rollback\"",
                        a.get_ref()
                    ),
                );
                crate::quarantine::Action::Pause
            }
        },
    };
    let connections = crate::http::connections::ConnectionLimits {
        max_connections: ranged(
            diag,
            "host.max_connections",
            file.host.max_connections.as_ref(),
            1..=1_000_000,
            1024,
        ) as usize,
        max_per_client: ranged(
            diag,
            "host.max_connections_per_client",
            file.host.max_connections_per_client.as_ref(),
            1..=1_000_000,
            64,
        ) as usize,
        header_timeout: Duration::from_secs(ranged(
            diag,
            "host.header_timeout_s",
            file.host.header_timeout_s.as_ref(),
            1..=3600,
            30,
        )),
        body_timeout: Duration::from_secs(ranged(
            diag,
            "host.body_timeout_s",
            file.host.body_timeout_s.as_ref(),
            1..=3600,
            30,
        )),
    };
    let idempotency_bounds = crate::idempotency::Bounds {
        max_keys: ranged(
            diag,
            "host.idempotency_max_keys",
            file.host.idempotency_max_keys.as_ref(),
            1..=100_000_000,
            1_000_000,
        ),
        max_bytes: ranged(
            diag,
            "host.idempotency_max_mib",
            file.host.idempotency_max_mib.as_ref(),
            1..=1_048_576,
            1024,
        ) << 20,
        max_answer_bytes: (ranged(
            diag,
            "host.idempotency_max_answer_kib",
            file.host.idempotency_max_answer_kib.as_ref(),
            1..=262_144,
            1024,
        ) as usize)
            << 10,
    };
    let mut admin_access = AdminAccess {
        allowed_hosts: file.admin.allowed_hosts.clone().unwrap_or_default(),
        ..AdminAccess::default()
    };
    if let Some(tokens) = &file.admin.tokens {
        match crate::control::auth::parse_credentials(tokens.get_ref()) {
            Ok(found) => admin_access.tokens = found,
            Err(e) => diag.error_at(tokens.span(), format!("admin.tokens: {e}")),
        }
    }
    if let Some(tokens_file) = &file.admin.tokens_file {
        let path = dir.join(tokens_file.get_ref());
        if let Err(e) = crate::control::auth::read_tokens_file(&path) {
            diag.error_at(tokens_file.span(), e);
        }
        admin_access.tokens_file = Some(path);
    }
    let tls = file.tls.as_ref().map(|t| {
        let listeners = t
            .listeners
            .as_ref()
            .map(|l| l.get_ref().clone())
            .unwrap_or_else(|| vec!["http".into(), "admin".into()]);
        if let Some(l) = &t.listeners
            && l.get_ref().iter().any(|x| x != "http" && x != "admin")
        {
            diag.error_at(l.span(), "tls.listeners lists \"http\" and/or \"admin\"");
        }
        let require = t.require_client_cert.unwrap_or(false);
        if require && t.client_ca.is_none() {
            diag.error_at(
                t.cert.span(),
                "tls.require_client_cert needs tls.client_ca (the CA client certificates chain to)",
            );
        }
        crate::http::tls::TlsSettings {
            cert: dir.join(t.cert.get_ref()),
            key: dir.join(t.key.get_ref()),
            client_ca: t.client_ca.as_ref().map(|c| dir.join(c.get_ref())),
            require_client_cert: require,
            http: listeners.iter().any(|l| l == "http"),
            admin: listeners.iter().any(|l| l == "admin"),
        }
    });
    if let (Some(settings), Some(section)) = (&tls, &file.tls)
        && let Err(e) = crate::http::tls::Tls::load(settings)
    {
        diag.error_at(section.cert.span(), e);
    }
    let gate_budget = Duration::from_secs(ranged(
        diag,
        "host.gate_budget_s",
        file.host.gate_budget_s.as_ref(),
        1..=3600,
        60,
    ));
    let idempotency_window = Duration::from_secs(ranged(
        diag,
        "host.idempotency_window_s",
        file.host.idempotency_window_s.as_ref(),
        IDEMPOTENCY_WINDOW_S,
        DEFAULT_IDEMPOTENCY_WINDOW_S,
    ));
    let stop_timeout = file.host.stop_timeout_s.as_ref().map(|s| {
        Duration::from_secs(ranged(
            diag,
            "host.stop_timeout_s",
            Some(s),
            STOP_TIMEOUT_S,
            *STOP_TIMEOUT_S.start(),
        ))
    });

    let fallback = StepLimits::default();
    let step_defaults = StepLimits {
        deadline: Duration::from_millis(ranged(
            diag,
            "limits.deadline_ms",
            file.limits.deadline_ms.as_ref(),
            DEADLINE_MS,
            fallback.deadline.as_millis() as u64,
        )),
        memory_bytes: (ranged(
            diag,
            "limits.memory_mib",
            file.limits.memory_mib.as_ref(),
            MEMORY_MIB,
            (fallback.memory_bytes >> 20) as u64,
        ) as usize)
            << 20,
        instance_reuse: ranged(
            diag,
            "limits.instance_reuse",
            file.limits.instance_reuse.as_ref(),
            INSTANCE_REUSE,
            u64::from(fallback.instance_reuse),
        ) as u32,
        max_outputs: ranged(
            diag,
            "limits.max_outputs",
            file.limits.max_outputs.as_ref(),
            MAX_OUTPUTS,
            fallback.max_outputs as u64,
        ) as usize,
        max_output_bytes: (ranged(
            diag,
            "limits.max_output_kib",
            file.limits.max_output_kib.as_ref(),
            MAX_OUTPUT_KIB,
            (fallback.max_output_bytes >> 10) as u64,
        ) as usize)
            << 10,
    };

    let default_body_kib = ranged(
        diag,
        "limits.max_body_kib",
        file.limits.max_body_kib.as_ref(),
        MAX_BODY_KIB,
        1024,
    );
    let default_budget_ms = ranged(
        diag,
        "limits.message_budget_ms",
        file.limits.message_budget_ms.as_ref(),
        DEADLINE_MS,
        10_000,
    );

    let control_key = file.host.control_key_env.as_ref().and_then(|var| {
        let text = env_text(diag, var, "host.control_key_env")?;
        crate::amqp::broadcast::ControlKey::from_hex(&text)
            .map_err(|why| {
                diag.error_at(
                    var.span(),
                    format!("the control key in {} {why}", var.get_ref()),
                )
            })
            .ok()
    });
    // Keys whose seals are taken too while the fleet changes keys: hex, separated by commas or
    // white space.
    let control_keys_also = match &file.host.control_key_also_env {
        None => Vec::new(),
        Some(var) if file.host.control_key_env.is_none() => {
            diag.error_at(
                var.span(),
                "host.control_key_also_env is set but host.control_key_env is not; name the key this host seals with first",
            );
            Vec::new()
        }
        Some(var) => env_text(diag, var, "host.control_key_also_env")
            .map(|text| {
                text.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|k| !k.is_empty())
                    .filter_map(|k| {
                        crate::amqp::broadcast::ControlKey::from_hex(k)
                            .map_err(|why| {
                                diag.error_at(
                                    var.span(),
                                    format!("a control key in {} {why}", var.get_ref()),
                                )
                            })
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };

    Host {
        http,
        admin,
        data_dir,
        compile_cache,
        plugin_dir,
        mqtt_url,
        host_id,
        control_key,
        control_keys_also,
        mqtt_tls,
        amqp_tls,
        max_in_flight,
        intake,
        quarantine,
        connections,
        idempotency_bounds,
        idempotency_window,
        admin_access,
        tls,
        gate_budget,
        stop_timeout,
        step_defaults,
        default_body_kib,
        default_budget_ms,
    }
}

/// The value of the environment variable `var` names (setting `key`); an error at `var` when
/// it is not set or not text.
fn env_text(diag: &mut Diagnostics<'_>, var: &Spanned<String>, key: &str) -> Option<String> {
    match std::env::var(var.get_ref()) {
        Ok(text) => Some(text),
        Err(std::env::VarError::NotUnicode(_)) => {
            diag.error_at(
                var.span(),
                format!("{key}: {} does not hold text", var.get_ref()),
            );
            None
        }
        Err(std::env::VarError::NotPresent) => {
            diag.error_at(
                var.span(),
                format!(
                    "{key} names {}, which is not set in the environment",
                    var.get_ref()
                ),
            );
            None
        }
    }
}

/// A link's `[amqp_tls]` / `[mqtt_tls]` section: its files (relative to the configuration's
/// folder) made into `make`'s type, checked with `load`; set while the link does not use TLS
/// (`unused` says so) is an error too.
fn tls_files<T: Default>(
    diag: &mut Diagnostics<'_>,
    dir: &Path,
    section: Option<&LinkTlsSection>,
    unused: &str,
    uses_tls: bool,
    make: impl Fn(Option<PathBuf>, Option<PathBuf>, Option<PathBuf>) -> T,
    load: impl Fn(&T) -> Result<(), String>,
) -> T {
    let Some(t) = section else {
        return T::default();
    };
    let path = |p: &Option<Spanned<String>>| p.as_ref().map(|p| dir.join(p.get_ref()));
    let files = make(path(&t.ca), path(&t.cert), path(&t.key));
    let at =
        t.ca.as_ref()
            .or(t.cert.as_ref())
            .or(t.key.as_ref())
            .map(|s| s.span());
    if let Some(at) = at {
        if let Err(e) = load(&files) {
            diag.error_at(at.clone(), e);
        }
        if !uses_tls {
            diag.error_at(at, unused);
        }
    }
    files
}

/// The longest `host.id`: it is part of the host's control queue's name
/// (`millrace.control.ID`), which RabbitMQ limits to 255 bytes, and of its MQTT client id.
pub const MAX_HOST_ID_BYTES: usize = 100;

/// A host id names broker queues and appears in every activation's stamp: 1 to
/// [`MAX_HOST_ID_BYTES`] of letters, digits, `-`, `_`, `.` (what hostnames use), never `/`, so
/// it cannot name another of the host's queues.
pub(super) fn check_host_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_HOST_ID_BYTES {
        return Err(format!(
            "{:?} is {} bytes long; it must be 1 to {MAX_HOST_ID_BYTES}",
            id.escape_debug().take(40).collect::<String>(),
            id.len()
        ));
    }
    if !id.chars().all(host_id_char) {
        return Err(format!(
            "{:?} must use only letters, digits, '-', '_' and '.' (it names the host's broker queue)",
            id.escape_debug().take(120).collect::<String>()
        ));
    }
    Ok(())
}

/// A character a host id may have: what hostnames use, and `_`.
fn host_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.".contains(c)
}

/// The compile cache `$MILLRACE_COMPILE_CACHE` names (made absolute against the working
/// directory), if set and not empty: one cache for a machine's hosts and commands.
pub fn compile_cache_from_env() -> Option<PathBuf> {
    let given = std::env::var_os("MILLRACE_COMPILE_CACHE").filter(|v| !v.is_empty())?;
    Some(std::path::absolute(&given).unwrap_or_else(|_| PathBuf::from(given)))
}
