//! The admin API's client: `millrace admin ...`, `millrace deploy`, and `admin token`.

use std::path::Path;

/// One admin API call; prints the JSON answer (or the problem) and returns 0 on 2xx.
pub fn admin_call(method: &str, url: &str, body: Option<Vec<u8>>) -> i32 {
    match admin_request(method, url, body.map(|b| (b, "application/json"))) {
        Ok((status, text)) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(text);
            if (200..300).contains(&status) {
                println!("{pretty}");
                0
            } else {
                eprintln!("error: the admin API answered {status}:\n{pretty}");
                1
            }
        }
        Err(e) => {
            eprintln!("error: {url}: {e}; is the host running with host.admin set?");
            1
        }
    }
}

/// `millrace plugin activate`: make `version` of `plugin` the one `plant` runs.
pub fn activate(admin: &str, plant: &str, plugin: &str, version: &str) -> i32 {
    let body = serde_json::json!({ "version": version }).to_string();
    admin_call(
        "POST",
        &format!("{admin}/v1/plants/{plant}/plugins/{plugin}/activate"),
        Some(body.into_bytes()),
    )
}

/// `millrace plugin rollback`: back to the version `plant` ran before.
pub fn rollback(admin: &str, plant: &str, plugin: &str) -> i32 {
    admin_call(
        "POST",
        &format!("{admin}/v1/plants/{plant}/plugins/{plugin}/rollback"),
        Some(Vec::new()),
    )
}

/// `millrace plugin versions`: the versions `plant` keeps of `plugin`, and its history.
pub fn versions(admin: &str, plant: &str, plugin: &str) -> i32 {
    admin_call(
        "GET",
        &format!("{admin}/v1/plants/{plant}/plugins/{plugin}"),
        None,
    )
}

/// The admin API's answer (status, body) to one request, with the token of
/// `MILLRACE_ADMIN_TOKEN` and the body typed as `content_type`.
fn admin_request(
    method: &str,
    url: &str,
    body: Option<(Vec<u8>, &str)>,
) -> Result<(u16, String), String> {
    let mut config = ureq::Agent::config_builder().http_status_as_error(false);
    // An admin API with its own CA (`[tls]` on the admin listener): trust that CA.
    if let Some(ca) = std::env::var_os(ADMIN_CA_ENV) {
        let shown = Path::new(&ca).display().to_string();
        let pem = std::fs::read(&ca).map_err(|e| format!("{ADMIN_CA_ENV}={shown}: {e}"))?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(format!(
                "{ADMIN_CA_ENV}={shown}: no certificate in it (PEM, BEGIN CERTIFICATE)"
            ));
        }
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    let agent: ureq::Agent = config.build().into();
    let token = std::env::var(ADMIN_TOKEN_ENV).unwrap_or_default();
    let authorization = format!("Bearer {token}");
    let response = match body {
        Some((bytes, content_type)) => agent
            .post(url)
            .header("authorization", &authorization)
            .header("content-type", content_type)
            .send(&bytes[..]),
        None if method == "GET" => agent
            .get(url)
            .header("authorization", &authorization)
            .call(),
        None => agent
            .post(url)
            .header("authorization", &authorization)
            .send_empty(),
    }
    .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response
        .into_body()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    if status == 401 && token.is_empty() {
        return Err(format!(
            "the admin API needs a token: set {ADMIN_TOKEN_ENV} (`millrace admin token` makes one)"
        ));
    }
    Ok((status, text))
}

/// The environment variable the admin commands take their bearer token from.
pub const ADMIN_TOKEN_ENV: &str = "MILLRACE_ADMIN_TOKEN";

/// The environment variable naming a PEM file of CA certificates the admin commands trust for
/// an `https://` admin API (default: the public web roots).
pub const ADMIN_CA_ENV: &str = "MILLRACE_ADMIN_CA";

/// `millrace admin token --name N --role R [--plant P ...]`: a new token, and the lines that
/// make the host accept it.
pub fn admin_token(name: &str, role: &str, plants: &[String]) -> i32 {
    if crate::control::auth::Role::parse(role).is_none() {
        eprintln!("error: --role must be viewer or operator, not {role:?}");
        return 1;
    }
    let token = match crate::control::auth::new_token() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: no random source for the token: {e}");
            return 1;
        }
    };
    let plants = if plants.is_empty() {
        vec!["*".to_string()]
    } else {
        plants.to_vec()
    };
    let list = plants
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    eprintln!(
        "the token is shown once; give it to the caller ({ADMIN_TOKEN_ENV} for the millrace command) and keep only its hash:"
    );
    println!("{token}");
    eprintln!();
    eprintln!("add to the configuration (or the admin tokens file, as [[tokens]]):");
    println!(
        "\n[[admin.tokens]]\nname = {name:?}\nsha256 = \"{}\"\nrole = {role:?}\nplants = [{list}]",
        crate::control::auth::token_hash(&token)
    );
    0
}

/// `millrace plugin deploy FILE --plant P [--activate]`.
pub fn deploy(admin: &str, plant: &str, file: &Path, and_activate: bool) -> i32 {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return 1;
        }
    };
    let kept = match upload(admin, plant, bytes) {
        Ok(kept) => kept,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    println!("{}", kept.answer);
    if !and_activate {
        return 0;
    }
    activate(admin, plant, &kept.plugin, &kept.version)
}

/// A version the host kept after its gate.
pub struct Kept {
    pub plugin: String,
    pub version: String,
    pub digest: String,
    /// The admin API's answer as it came.
    pub answer: String,
}

/// Upload a component to `plant`: the version the host kept, or why not (the gate's reason).
pub fn upload(admin: &str, plant: &str, bytes: Vec<u8>) -> Result<Kept, String> {
    let url = format!("{admin}/v1/plants/{plant}/plugins");
    let answer = match admin_request("POST", &url, Some((bytes, "application/wasm"))) {
        Ok((status, text)) if (200..300).contains(&status) => text,
        Ok((status, text)) => {
            let reason = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["detail"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(format!("the host refused the version ({status}): {reason}"));
        }
        Err(e) => {
            return Err(format!(
                "{url}: {e}; is the host running with host.admin set?"
            ));
        }
    };
    let kept: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
    let field = |name: &str| kept[name].as_str().map(str::to_string);
    match (field("plugin"), field("version")) {
        (Some(plugin), Some(version)) => Ok(Kept {
            plugin,
            version,
            digest: field("digest").unwrap_or_default(),
            answer,
        }),
        _ => Err(format!(
            "the admin API's answer names no plugin and version: {answer}"
        )),
    }
}

/// Make `version` of `plugin` the one `plant` runs; the admin API's answer or why not.
pub fn activate_version(
    admin: &str,
    plant: &str,
    plugin: &str,
    version: &str,
) -> Result<String, String> {
    let url = format!("{admin}/v1/plants/{plant}/plugins/{plugin}/activate");
    let body = serde_json::json!({ "version": version }).to_string();
    match admin_request("POST", &url, Some((body.into_bytes(), "application/json"))) {
        Ok((status, text)) if (200..300).contains(&status) => Ok(text),
        Ok((status, text)) => Err(format!("activation refused ({status}): {text}")),
        Err(e) => Err(format!(
            "{url}: {e}; is the host running with host.admin set?"
        )),
    }
}
