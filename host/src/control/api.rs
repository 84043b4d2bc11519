//! The admin API (JSON over HTTP/1.1 on its own listener, `host.admin` or `run --admin`): what
//! runs where, and plugin versions per plant — upload, activate, roll back. Messages never go
//! through it; it never goes through the message listener.
//!
//! Every request needs a bearer token ([`auth`]): the role and plants it may act on decide what
//! it may do, and its name is who acted (in the registry, the history and the audit log).
//! Every request that changes something, or is refused, is in the audit log ([`audit`]).
//!
//! | method | path | role | what |
//! |---|---|---|---|
//! | GET | `/v1/plants` | viewer | plants it may see, their routes, each step's plugin, version and digest |
//! | GET | `/v1/plants/{plant}/plugins/{plugin}` | viewer | versions deployed, the active one, swap history |
//! | POST | `/v1/plants/{plant}/plugins` | operator | body (`application/wasm`): a component; gated and kept (201), or refused (422) |
//! | POST | `/v1/plants/{plant}/plugins/{plugin}/activate` | operator | `{"version": V}` (`application/json`): swap to it |
//! | POST | `/v1/plants/{plant}/plugins/{plugin}/rollback` | operator | back to the version active before |
//! | GET | `/v1/refusals` | viewer | the latest candidates the gate refused (of its plants), with the reasons |
//! | GET | `/v1/quarantine` | viewer | plugin versions quarantined by their circuit breaker (of its plants) |
//! | POST | `/v1/plants/{plant}/plugins/{plugin}/quarantine/reset` | operator | lift the plugin's quarantine on the plant |
//! | POST | `/v1/config/reload` | operator of every plant | read the configuration file again; applied (200) or refused (422) |
//! | GET | `/v1/audit?plant=&who=&after=&limit=` | viewer | the audit log (of its plants; entries of no plant for every-plant viewers) |
//! | GET | `/metrics` | viewer | counters, Prometheus text format |
//! | GET | `/v1/overview`, `/v1/messages…`, `/v1/dead-letters` | viewer | what [`super::observe`] shows |
//! | POST | `/v1/dead-letters/{id}/replay` | operator | a dry run or a replay of a local dead letter |
//! | GET | `/`, `/console/…` | none | the operator console's files ([`super::console`]; they hold no data) |

use super::Control;
use super::auth::{Access, Denied, Identity, Role};
use super::{audit, auth, reload};
use crate::control::deploy::DeployError;
use crate::http::body::Unread;
use crate::http::problem::Problem;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Largest body the admin API reads (components are capped again by the gate).
const MAX_UPLOAD: usize = 1024 << 20;

/// What the admin listener serves with.
pub struct AdminApi {
    pub control: Arc<Control>,
    pub access: Access,
    pub audit: audit::AuditLog,
    /// The listener's own address (requests must name it in `Host`).
    pub bound: SocketAddr,
    /// The transports whose sessions `/metrics` reports (up, and their numeric facts).
    pub links: Vec<Arc<dyn crate::pipeline::Ready>>,
}

/// `GET /metrics`: the process's series, then what is read when scraped — the links' state and
/// holds, the local dead letters waiting and their age, the compile cache's hits and misses.
fn metrics_text(api: &AdminApi) -> String {
    use crate::telemetry::metrics::write_sampled;
    let mut out = crate::telemetry::metrics().text();
    let mut up = Vec::new();
    let mut facts: BTreeMap<&str, Vec<(Vec<String>, f64)>> = BTreeMap::new();
    for link in &api.links {
        let readiness = link.readiness();
        let name = readiness.name.to_string();
        up.push((
            vec![name.clone()],
            f64::from(u8::from(readiness.state.is_ok())),
        ));
        for (fact, value) in readiness.facts {
            if let Some(value) = value.as_f64() {
                facts
                    .entry(fact)
                    .or_default()
                    .push((vec![name.clone()], value));
            }
        }
    }
    write_sampled(
        &mut out,
        (
            "millrace_link_up",
            "gauge",
            "Whether the transport's session is up (as /readyz says)",
        ),
        &["link"],
        &up,
    );
    for link in &api.links {
        for gauge in link.gauges() {
            write_sampled(
                &mut out,
                (gauge.name, "gauge", gauge.help),
                gauge.labels,
                &gauge.samples,
            );
        }
    }
    for (fact, samples) in facts {
        let name = format!("millrace_{fact}");
        write_sampled(
            &mut out,
            (
                &name,
                "gauge",
                "Messages the transport holds (as /readyz says)",
            ),
            &["link"],
            &samples,
        );
    }
    match api.control.pipeline.deadletters.waiting() {
        Ok(waiting) => {
            let (mut count, mut age) = (Vec::new(), Vec::new());
            for (plant, route, n, oldest) in waiting {
                count.push((vec![plant.clone(), route.clone()], n as f64));
                age.push((vec![plant, route], oldest));
            }
            write_sampled(
                &mut out,
                (
                    "millrace_dead_letters_waiting",
                    "gauge",
                    "Local dead letters not replayed yet",
                ),
                &["plant", "route"],
                &count,
            );
            write_sampled(
                &mut out,
                (
                    "millrace_dead_letters_oldest_age_seconds",
                    "gauge",
                    "Age of the oldest local dead letter not replayed yet",
                ),
                &["plant", "route"],
                &age,
            );
        }
        Err(e) => tracing::warn!(error = %e, "metrics: dead letters unreadable"),
    }
    if let Some((hits, misses)) = api.control.deployer.engine().cache_stats() {
        write_sampled(
            &mut out,
            (
                "millrace_compile_cache",
                "counter",
                "Components read back compiled from the cache (hit) or compiled (miss)",
            ),
            &["outcome"],
            &[
                (vec!["hit".into()], hits as f64),
                (vec!["miss".into()], misses as f64),
            ],
        );
    }
    out
}

/// Serve the admin API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    api: Arc<AdminApi>,
    tls: Option<Arc<crate::http::tls::Tls>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let limits = api.control.connections;
    let handler: crate::http::connections::Handler = Arc::new(move |req, peer, _client| {
        let api = Arc::clone(&api);
        Box::pin(async move { handle(&api, req, peer).await })
    });
    crate::http::connections::accept(listener, limits, tls, handler, None, async move {
        let _ = shutdown.changed().await;
    })
    .await;
}

/// A refusal before anything was done, as a problem document.
pub(super) fn denied(denied: Denied) -> Problem {
    let (status, kind, title) = match &denied {
        Denied::Unauthenticated(_) => (
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Credentials needed",
        ),
        Denied::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Not allowed"),
        Denied::Foreign(_) => (StatusCode::FORBIDDEN, "foreign-request", "Foreign request"),
        Denied::Untyped(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-content-type",
            "Body type not accepted",
        ),
    };
    Problem::new(status, kind, title, denied.to_string())
}

/// Answer one request: authenticate, route, and record it in the audit log when it changes
/// something or is refused.
async fn handle(api: &AdminApi, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let (req, mut unread) = crate::http::body::split(req);
    let response = answer(api, req, &mut unread, peer).await;
    unread.drain(api.control.connections.body_timeout).await;
    response
}

/// The answer to one request, its body read from `unread` where the request has one.
async fn answer(
    api: &AdminApi,
    req: Request<()>,
    unread: &mut Unread,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let plant = match segments.as_slice() {
        ["v1", "plants", plant, ..] => Some(plant.to_string()),
        _ => None,
    };
    // The console's own files hold no data: served to anyone, never audited.
    if method == Method::GET
        && let Some(asset) = super::console::asset(&path)
    {
        return asset;
    }
    let who = api.access.authenticate(req.headers(), api.bound);
    let outcome = match &who {
        Ok(who) => route(api, who, req, unread, &query).await,
        Err(e) => Err(denied(e.clone())),
    };
    let (response, detail) = match outcome {
        Ok(response) => (response, "done".to_string()),
        Err(problem) => {
            let detail = problem.detail.clone();
            (problem.into_response(), detail)
        }
    };
    let status = response.status();
    if method != Method::GET || status.is_client_error() || status.is_server_error() {
        let entry = audit::Entry {
            id: 0,
            at: String::new(),
            who: who.map_or_else(|_| "anonymous".into(), |w| w.name),
            peer: peer.to_string(),
            method: method.to_string(),
            path: crate::plugin::bounds::truncate(&path, 512),
            plant,
            status: status.as_u16(),
            detail,
        };
        if let Err(e) = tokio::task::block_in_place(|| api.audit.record(&entry)) {
            tracing::error!(error = %e, "the admin audit log cannot be written");
        }
    }
    response
}

fn json(
    status: StatusCode,
    value: &impl serde::Serialize,
) -> Result<Response<Full<Bytes>>, Problem> {
    let body = serde_json::to_vec(value).map_err(|e| Problem::internal(e.to_string()))?;
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Problem::internal(e.to_string()))
}

/// A refused deployment or activation: 422 with the reason, or 404 for unknown versions.
fn refused(e: DeployError) -> Problem {
    use crate::control::registry::RegistryError;
    let status = match &e {
        DeployError::Registry(RegistryError::UnknownVersion { .. }) => StatusCode::NOT_FOUND,
        DeployError::Registry(RegistryError::Blob { .. } | RegistryError::Store(_)) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Problem::new(
        status,
        "plugin-refused",
        "Plugin version refused",
        e.to_string(),
    )
}

async fn route(
    api: &AdminApi,
    who: &Identity,
    req: Request<()>,
    unread: &mut Unread,
    query: &str,
) -> Result<Response<Full<Bytes>>, Problem> {
    let control = &api.control;
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let by = who.name.clone();
    let method = req.method().clone();
    let allow = |role: Role, plant: Option<&str>| auth::allow(who, role, plant).map_err(denied);
    match (method, segments.as_slice()) {
        (Method::GET, ["v1", "plants"]) => json(StatusCode::OK, &plants(control, who)),
        (Method::GET, ["v1", "refusals"]) => {
            let seen: Vec<_> = control
                .deployer
                .refusals()
                .into_iter()
                .filter(|r| who.covers(&r.plant))
                .collect();
            json(StatusCode::OK, &seen)
        }
        (Method::GET, ["v1", "quarantine"]) => {
            let seen: Vec<_> = control
                .quarantines
                .list()
                .into_iter()
                .filter(|q| who.covers(&q.subject.plant))
                .collect();
            json(StatusCode::OK, &seen)
        }
        (Method::GET, ["v1", "audit"]) => {
            let mut q = audit::Query {
                limit: 100,
                ..audit::Query::default()
            };
            for (key, value) in form_urlencoded(query) {
                match key.as_str() {
                    "plant" => q.plant = Some(value),
                    "who" => q.who = Some(value),
                    "after" => q.after = value.parse().ok(),
                    "limit" => q.limit = value.parse().unwrap_or(100),
                    _ => {}
                }
            }
            if let Some(plant) = &q.plant {
                allow(Role::Viewer, Some(plant))?;
            }
            let entries: Vec<_> = api
                .audit
                .list(&q)
                .map_err(|e| Problem::internal(e.to_string()))?
                .into_iter()
                .filter(|e| match &e.plant {
                    Some(plant) => who.covers(plant),
                    None => who.everywhere(),
                })
                .collect();
            json(StatusCode::OK, &entries)
        }
        (Method::GET, ["v1", "overview"]) => {
            json(StatusCode::OK, &super::observe::overview(control, who))
        }
        (Method::GET, ["v1", "messages"]) => json(
            StatusCode::OK,
            &tokio::task::block_in_place(|| {
                super::observe::messages(control, who, &form_urlencoded(query))
            })?,
        ),
        (Method::GET, ["v1", "messages", id]) => {
            let id = crate::percent::decode(id);
            let path = tokio::task::block_in_place(|| super::observe::message(control, who, &id))?;
            json(StatusCode::OK, &path)
        }
        (Method::GET, ["v1", "dead-letters"]) => json(
            StatusCode::OK,
            &tokio::task::block_in_place(|| {
                super::observe::dead_letters(control, who, &form_urlencoded(query))
            })?,
        ),
        (Method::POST, ["v1", "dead-letters", id, "replay"]) => {
            // The role now; the plant once the dead letter is read (`observe::replay`).
            if who.role < Role::Operator {
                return Err(denied(Denied::Forbidden(format!(
                    "{} is a {} and replaying needs an operator",
                    who.name,
                    who.role.as_str()
                ))));
            }
            let id: i64 = id
                .parse()
                .map_err(|_| Problem::bad_request(format!("{id:?} is not a dead-letter id")))?;
            auth::typed(req.headers(), &["application/json"]).map_err(denied)?;
            let bytes = small_body(control, unread).await?;
            let doc: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| Problem::bad_request(format!("body is not JSON: {e}")))?;
            let dry_run = doc["dry_run"].as_bool().ok_or_else(|| {
                Problem::bad_request("give {\"dry_run\": true} or {\"dry_run\": false}")
            })?;
            let done = super::observe::replay(control, who, id, dry_run).await?;
            json(StatusCode::OK, &done)
        }
        (Method::GET, ["metrics"]) => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )
            .body(Full::new(Bytes::from(metrics_text(api))))
            .map_err(|e| Problem::internal(e.to_string())),
        (Method::POST, ["v1", "config", "reload"]) => {
            allow(Role::Operator, None)?;
            let control_ = Arc::clone(control);
            let done = tokio::task::spawn_blocking(move || reload::reload(&control_))
                .await
                .map_err(|e| Problem::internal(e.to_string()))?;
            match done {
                Ok(reloaded) => json(StatusCode::OK, &reloaded),
                Err(e) => Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "config-refused",
                    "Configuration reload refused",
                    e.to_string(),
                )),
            }
        }
        (
            Method::POST,
            [
                "v1",
                "plants",
                plant,
                "plugins",
                plugin,
                "quarantine",
                "reset",
            ],
        ) => {
            allow(Role::Operator, Some(plant))?;
            let lifted = control.quarantines.reset(plant, plugin);
            tracing::warn!(plant, plugin, by = %by, lifted = lifted.len(), "quarantine lifted");
            json(StatusCode::OK, &serde_json::json!({ "lifted": lifted }))
        }
        (Method::GET, ["v1", "plants", plant, "plugins", plugin]) => {
            allow(Role::Viewer, Some(plant))?;
            // The routes first: an activation is recorded before they change, so the history
            // read after them has every activation they show.
            let active = running(control, plant, plugin);
            let registry = &control.deployer.registry;
            let versions = registry
                .versions(plant, plugin)
                .map_err(|e| Problem::internal(e.to_string()))?;
            let history = registry
                .history(plant, Some(plugin))
                .map_err(|e| Problem::internal(e.to_string()))?;
            if versions.is_empty() && active.is_none() {
                return Err(Problem::not_found(format!(
                    "plant {plant} has no plugin {plugin}"
                )));
            }
            json(
                StatusCode::OK,
                &serde_json::json!({ "plant": plant, "plugin": plugin, "active": active, "versions": versions, "history": history }),
            )
        }
        (Method::POST, ["v1", "plants", plant, "plugins"]) => {
            allow(Role::Operator, Some(plant))?;
            auth::typed(
                req.headers(),
                &["application/wasm", "application/octet-stream"],
            )
            .map_err(denied)?;
            let bytes = body(control, unread).await?;
            let (plant, control_) = (plant.to_string(), Arc::clone(control));
            let deployed = tokio::task::spawn_blocking(move || {
                control_.deployer.deploy(&plant, &bytes, &by, "upload")
            })
            .await
            .map_err(|e| Problem::internal(e.to_string()))?;
            match deployed {
                Ok(version) => json(StatusCode::CREATED, &version),
                Err(e) => {
                    tracing::warn!(error = %e, "plugin upload refused");
                    Err(refused(e))
                }
            }
        }
        (
            Method::POST,
            [
                "v1",
                "plants",
                plant,
                "plugins",
                plugin,
                action @ ("activate" | "rollback"),
            ],
        ) => {
            allow(Role::Operator, Some(plant))?;
            let wanted = if *action == "activate" {
                auth::typed(req.headers(), &["application/json"]).map_err(denied)?;
                let bytes = body(control, unread).await?;
                let doc: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Problem::bad_request(format!("body is not JSON: {e}")))?;
                Some(
                    doc["version"]
                        .as_str()
                        .ok_or_else(|| Problem::bad_request("give {\"version\": \"X.Y.Z\"}"))?
                        .to_string(),
                )
            } else {
                None
            };
            let (plant, plugin, control_) =
                (plant.to_string(), plugin.to_string(), Arc::clone(control));
            let done = tokio::task::spawn_blocking(move || {
                let d = &control_.deployer;
                match wanted {
                    Some(version) => d.activate(
                        crate::control::deploy::Slot {
                            plant: &plant,
                            plugin: &plugin,
                        },
                        &version,
                        &by,
                        "activate",
                    ),
                    None => d.rollback(&plant, &plugin, &by),
                }
            })
            .await
            .map_err(|e| Problem::internal(e.to_string()))?;
            match done {
                Ok(activated) => json(StatusCode::OK, &activated),
                Err(e) => {
                    tracing::warn!(error = %e, "activation refused");
                    Err(refused(e))
                }
            }
        }
        (method, _) => Err(Problem::not_found(format!(
            "no admin resource {method} {path}; see GET /v1/plants"
        ))),
    }
}

/// `key=value&…` pairs of a query string (`%XX` and `+` decoded).
fn form_urlencoded(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| crate::percent::decode(&s.replace('+', " "));
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// A request's JSON body, at most 64 KiB.
async fn small_body(control: &Control, unread: &mut Unread) -> Result<Bytes, Problem> {
    let too_large = || Problem::bad_request("the body is over 64 KiB");
    unread
        .read(64 << 10, control.connections.body_timeout, too_large)
        .await
}

/// A component's body, at most `host.max_component_mib` (413 past it, [`crate::http::body`]).
async fn body(control: &Control, unread: &mut Unread) -> Result<Bytes, Problem> {
    let limit = control.deployer.max_component_bytes().min(MAX_UPLOAD);
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "component-too-large",
            "Component too large",
            format!(
                "the body is over the limit: at most {} MiB are accepted (host.max_component_mib)",
                limit >> 20
            ),
        )
    };
    unread
        .read(limit as u64, control.connections.body_timeout, too_large)
        .await
}

/// The version of `plugin` the plant's routes run now.
fn running(control: &Control, plant: &str, plugin: &str) -> Option<serde_json::Value> {
    control
        .deployer
        .routes()
        .running(plant, plugin)
        .map(|s| serde_json::json!({ "version": s.id.version, "digest": s.id.digest }))
}

fn plants(control: &Control, who: &Identity) -> serde_json::Value {
    let mut by_plant: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
        Default::default();
    let mut routes = control.deployer.routes().all();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    for route in routes.into_iter().filter(|r| who.covers(&r.plant)) {
        let steps: Vec<_> = route
            .steps
            .iter()
            .map(|s| serde_json::json!({ "plugin": s.id.name, "version": s.id.version, "digest": s.id.digest }))
            .collect();
        by_plant
            .entry(route.plant.clone())
            .or_default()
            .push(serde_json::json!({ "route": route.name, "steps": steps }));
    }
    serde_json::Value::Array(
        by_plant
            .into_iter()
            .map(|(plant, routes)| serde_json::json!({ "plant": plant, "routes": routes }))
            .collect(),
    )
}
