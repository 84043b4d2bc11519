//! Who may call the admin API. Every request carries a bearer token (`Authorization: Bearer
//! TOKEN`); the host knows only the tokens' SHA-256 (in the configuration's `[[admin.tokens]]`
//! or a tokens file, re-read when it changes, so tokens rotate without a restart). A token has a
//! name (the identity recorded in the registry, the history and the audit log — never a header
//! the caller chose), a role and the plants it may act on.
//!
//! Roles: `viewer` reads (plants, versions, history, refusals, quarantine, metrics, audit);
//! `operator` also deploys, activates, rolls back and lifts quarantines on its plants, and with
//! `plants = ["*"]` reloads the configuration.
//!
//! Browsers cannot be used against it: credentials are never ambient (no cookies), a request
//! whose `Host` is not the admin listener's own (or one of `admin.allowed_hosts`) is refused
//! (DNS rebinding), one with a foreign `Origin` is refused, and bodies must be typed
//! (`application/wasm` or `application/octet-stream` for components, `application/json` for
//! JSON) — a form or `text/plain` never mutates anything.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Instant, SystemTime};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// A token the host accepts (its hash), with what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub name: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
    pub role: Role,
    /// The plants it may act on; `*` is every plant.
    pub plants: Vec<String>,
}

/// Who is calling, from a verified credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    pub plants: Vec<String>,
}

impl Identity {
    /// Whether it may see or act on `plant`.
    pub fn covers(&self, plant: &str) -> bool {
        self.plants.iter().any(|p| p == "*" || p == plant)
    }

    /// Whether it covers every plant.
    pub fn everywhere(&self) -> bool {
        self.plants.iter().any(|p| p == "*")
    }
}

/// Why a request was refused before it did anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No credentials, or ones the host does not know: 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// Known, but not allowed this: 403.
    #[error("{0}")]
    Forbidden(String),
    /// The request came through a name the listener does not answer to, or from a foreign
    /// page: 403.
    #[error("{0}")]
    Foreign(String),
    /// A mutation with a body of a type a browser form could send: 415.
    #[error("{0}")]
    Untyped(String),
}

/// The admin API's access rules.
pub struct Access {
    configured: Vec<Credential>,
    file: Option<PathBuf>,
    /// The file's credentials and when it was last read and changed.
    from_file: RwLock<(Vec<Credential>, Option<SystemTime>)>,
    checked: Mutex<Instant>,
    /// Host header values accepted besides the listener's own address.
    allowed_hosts: Vec<String>,
    /// `--insecure-admin`: every request acts as `insecure-local`, an operator everywhere.
    insecure: bool,
}

/// SHA-256 of `token`, hex: what the configuration stores.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Parse `[[tokens]]` entries (of the configuration's `[admin]` or of a tokens file).
pub fn parse_credentials(entries: &[toml::Value]) -> Result<Vec<Credential>, String> {
    let mut found = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = |what: &str| format!("token {}: {what}", i + 1);
        let table = entry.as_table().ok_or_else(|| at("not a table"))?;
        for key in table.keys() {
            if !["name", "sha256", "role", "plants"].contains(&key.as_str()) {
                return Err(at(&format!(
                    "unknown key {key:?}; a token has name, sha256, role and plants"
                )));
            }
        }
        let name = table
            .get("name")
            .and_then(|v| v.as_str())
            .filter(|n| !n.is_empty() && n.len() <= 64 && !n.chars().any(char::is_control))
            .ok_or_else(|| at("needs a name (1 to 64 characters)"))?;
        let hash = table
            .get("sha256")
            .and_then(|v| v.as_str())
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .ok_or_else(|| {
                at("needs sha256 = the token's SHA-256 in hex (`millrace admin token` prints it)")
            })?;
        let role = table
            .get("role")
            .and_then(|v| v.as_str())
            .and_then(Role::parse)
            .ok_or_else(|| at("needs role = \"viewer\" or \"operator\""))?;
        let plants = match table.get("plants") {
            None => vec!["*".to_string()],
            Some(v) => v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                })
                .filter(|p| !p.is_empty())
                .ok_or_else(|| at("plants must be a list of plant names (or [\"*\"])"))?,
        };
        if found.iter().any(|c: &Credential| c.name == name) {
            return Err(at(&format!("the name {name:?} is used twice")));
        }
        found.push(Credential {
            name: name.to_string(),
            sha256: hash,
            role,
            plants,
        });
    }
    Ok(found)
}

/// Read a tokens file (`[[tokens]]` entries).
pub fn read_tokens_file(path: &Path) -> Result<Vec<Credential>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the admin tokens file {}: {e}", path.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).map_err(|e| format!("admin tokens file {}: {e}", path.display()))?;
    for key in doc.keys() {
        if key != "tokens" {
            return Err(format!(
                "admin tokens file {}: unknown key {key:?}; it holds [[tokens]] entries",
                path.display()
            ));
        }
    }
    let entries = doc
        .get("tokens")
        .and_then(|t| t.as_array())
        .cloned()
        .unwrap_or_default();
    parse_credentials(&entries).map_err(|e| format!("admin tokens file {}: {e}", path.display()))
}

/// Compare two hashes in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    pub fn new(
        configured: Vec<Credential>,
        file: Option<PathBuf>,
        allowed_hosts: Vec<String>,
        insecure: bool,
    ) -> Access {
        let access = Access {
            configured,
            file,
            from_file: RwLock::new((Vec::new(), None)),
            checked: Mutex::new(Instant::now() - std::time::Duration::from_secs(60)),
            allowed_hosts,
            insecure,
        };
        access.refresh();
        access
    }

    /// Whether any credential exists (or access is insecure): else the admin API must not
    /// start.
    pub fn usable(&self) -> bool {
        self.insecure
            || !self.configured.is_empty()
            || !self.from_file.read().expect("tokens lock").0.is_empty()
    }

    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// Read the tokens file again if it changed (at most once a second).
    fn refresh(&self) {
        let Some(file) = &self.file else {
            return;
        };
        {
            let mut checked = self.checked.lock().expect("tokens lock");
            if checked.elapsed() < std::time::Duration::from_secs(1) {
                return;
            }
            *checked = Instant::now();
        }
        let modified = std::fs::metadata(file).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified == self.from_file.read().expect("tokens lock").1 {
            return;
        }
        match read_tokens_file(file) {
            Ok(tokens) => {
                tracing::info!(file = %file.display(), tokens = tokens.len(), "admin tokens read");
                *self.from_file.write().expect("tokens lock") = (tokens, modified);
            }
            Err(e) => {
                // The tokens read before stay in force.
                tracing::error!(error = %e, "admin tokens file not applied");
            }
        }
    }

    /// The caller of a request with these headers, through a listener bound at `bound`.
    pub fn authenticate(
        &self,
        headers: &hyper::HeaderMap,
        bound: std::net::SocketAddr,
    ) -> Result<Identity, Denied> {
        self.check_origin(headers, bound)?;
        if self.insecure {
            return Ok(Identity {
                name: "insecure-local".into(),
                role: Role::Operator,
                plants: vec!["*".into()],
            });
        }
        let presented = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Denied::Unauthenticated(
                    "the admin API needs credentials: send Authorization: Bearer TOKEN".into(),
                )
            })?;
        self.refresh();
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let from_file = self.from_file.read().expect("tokens lock");
        self.configured
            .iter()
            .chain(from_file.0.iter())
            .find(|c| same(&c.sha256, &hash))
            .map(|c| Identity {
                name: c.name.clone(),
                role: c.role,
                plants: c.plants.clone(),
            })
            .ok_or_else(|| Denied::Unauthenticated("the token is not known to this host".into()))
    }

    /// The `Host` must be the listener's own address (or `localhost` on its port, or one of
    /// `admin.allowed_hosts`); an `Origin`, when a browser sends one, must be `http://` that
    /// host.
    fn check_origin(
        &self,
        headers: &hyper::HeaderMap,
        bound: std::net::SocketAddr,
    ) -> Result<(), Denied> {
        let host = headers
            .get(hyper::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let port = bound.port();
        let ours = [
            bound.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        let known = ours.contains(&host)
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&host));
        if !known {
            return Err(Denied::Foreign(format!(
                "the admin API does not answer to Host {host:?}; add it to admin.allowed_hosts if that name is meant to reach it"
            )));
        }
        if let Some(origin) = headers.get(hyper::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default().to_ascii_lowercase();
            if origin != format!("http://{host}") && origin != format!("https://{host}") {
                return Err(Denied::Foreign(format!(
                    "requests from pages of {origin:?} are refused"
                )));
            }
        }
        Ok(())
    }
}

/// What a request needs: `role`, on `plant` (or on every plant when `None`).
pub fn allow(who: &Identity, role: Role, plant: Option<&str>) -> Result<(), Denied> {
    if who.role < role {
        return Err(Denied::Forbidden(format!(
            "{} is a {} and this needs an {}",
            who.name,
            who.role.as_str(),
            role.as_str()
        )));
    }
    let covered = match plant {
        Some(plant) => who.covers(plant),
        None => who.everywhere(),
    };
    if !covered {
        return Err(Denied::Forbidden(match plant {
            Some(plant) => format!("{} may not act on plant {plant}", who.name),
            None => format!(
                "{} may act on some plants only; this needs every plant",
                who.name
            ),
        }));
    }
    Ok(())
}

/// A mutation's body must be typed as one of `accepted`.
pub fn typed(headers: &hyper::HeaderMap, accepted: &[&str]) -> Result<(), Denied> {
    let media = headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if accepted.contains(&media.as_str()) {
        Ok(())
    } else {
        Err(Denied::Untyped(format!(
            "a body of type {media:?} is not accepted here; send {}",
            accepted.join(" or ")
        )))
    }
}

/// A new random token (32 bytes from the system's random source, hex).
pub fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        let entries: Vec<toml::Value> = toml::from_str::<toml::Table>(&format!(
            "tokens = [{{ name = \"ops\", sha256 = \"{}\", role = \"operator\", plants = [\"a\"] }}, {{ name = \"watch\", sha256 = \"{}\", role = \"viewer\" }}]",
            token_hash("t-ops"),
            token_hash("t-watch")
        ))
        .unwrap()["tokens"]
            .as_array()
            .unwrap()
            .clone();
        Access::new(parse_credentials(&entries).unwrap(), None, vec![], false)
    }

    fn headers(pairs: &[(&str, &str)]) -> hyper::HeaderMap {
        let mut map = hyper::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    const BOUND: &str = "127.0.0.1:9090";

    #[test]
    fn a_token_is_known_by_its_hash_and_names_the_caller() {
        let a = access();
        let who = a
            .authenticate(
                &headers(&[("host", BOUND), ("authorization", "Bearer t-ops")]),
                BOUND.parse().unwrap(),
            )
            .unwrap();
        assert_eq!(who.name, "ops");
        assert!(allow(&who, Role::Operator, Some("a")).is_ok());
        assert!(matches!(
            allow(&who, Role::Operator, Some("b")),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            allow(&who, Role::Operator, None),
            Err(Denied::Forbidden(_))
        ));
        let watcher = a
            .authenticate(
                &headers(&[("host", BOUND), ("authorization", "Bearer t-watch")]),
                BOUND.parse().unwrap(),
            )
            .unwrap();
        assert!(allow(&watcher, Role::Viewer, Some("b")).is_ok());
        assert!(matches!(
            allow(&watcher, Role::Operator, Some("b")),
            Err(Denied::Forbidden(_))
        ));
        for bad in [
            vec![("host", BOUND)],
            vec![("host", BOUND), ("authorization", "Bearer nope")],
        ] {
            assert!(matches!(
                a.authenticate(&headers(&bad), BOUND.parse().unwrap()),
                Err(Denied::Unauthenticated(_))
            ));
        }
    }

    #[test]
    fn foreign_hosts_and_origins_are_refused_even_with_a_good_token() {
        let a = access();
        for bad in [
            vec![
                ("host", "evil.example:9090"),
                ("authorization", "Bearer t-ops"),
            ],
            vec![
                ("host", BOUND),
                ("origin", "http://evil.example"),
                ("authorization", "Bearer t-ops"),
            ],
        ] {
            assert!(matches!(
                a.authenticate(&headers(&bad), BOUND.parse().unwrap()),
                Err(Denied::Foreign(_))
            ));
        }
        assert!(
            typed(
                &headers(&[("content-type", "text/plain")]),
                &["application/json"]
            )
            .is_err()
        );
        assert!(typed(&headers(&[]), &["application/json"]).is_err());
        assert!(
            typed(
                &headers(&[("content-type", "application/json; charset=utf-8")]),
                &["application/json"]
            )
            .is_ok()
        );
    }
}
