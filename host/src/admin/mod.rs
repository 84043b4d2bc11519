//! The admin API (JSON over HTTP/1.1 on its own listener, `host.admin` or `run --admin`): what
//! runs where, and plugin versions per plant — upload, activate, roll back. Messages never go
//! through it; it never goes through the message listener.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/v1/plants` | plants, their routes, each step's plugin, version and digest |
//! | GET | `/v1/plants/{plant}/plugins/{plugin}` | versions deployed, the active one, swap history |
//! | POST | `/v1/plants/{plant}/plugins` | body: a component; gated and kept (201), or refused (422) |
//! | POST | `/v1/plants/{plant}/plugins/{plugin}/activate` | `{"version": V}`: swap to it |
//! | POST | `/v1/plants/{plant}/plugins/{plugin}/rollback` | back to the version active before |
//! | GET | `/v1/refusals` | the latest candidates the gate refused, with the reasons |
//! | GET | `/v1/quarantine` | plugin versions quarantined by their circuit breaker, with why |
//! | POST | `/v1/plants/{plant}/plugins/{plugin}/quarantine/reset` | lift the plugin's quarantine on the plant |
//! | POST | `/v1/config/reload` | read the configuration file again; applied (200) or refused (422) |
//! | GET | `/metrics` | counters, Prometheus text format |
//!
//! `millrace-deployed-by` names who acts (default `admin-api`); it goes to the registry.

use crate::deploy::DeployError;
use crate::ingress::problem::Problem;
use crate::mediator::Mediator;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub mod broadcast;
pub mod drop;
pub mod reload;
mod watch;

/// Largest component accepted by upload.
const MAX_UPLOAD: usize = 64 << 20;

/// Serve the admin API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    mediator: Arc<Mediator>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let connections = crate::ingress::connections::Connections::new(mediator.connections);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Some((stream, held)) = connections.admit(stream, peer) else {
                    continue;
                };
                let mediator = Arc::clone(&mediator);
                let service = service_fn(move |req| {
                    let mediator = Arc::clone(&mediator);
                    async move {
                        Ok::<_, Infallible>(match route(&mediator, req).await {
                            Ok(response) => response,
                            Err(problem) => problem.into_response(),
                        })
                    }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(connections.limits().header_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    let _held = held;
                    let _ = conn.await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
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
    use crate::registry::RegistryError;
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
    mediator: &Arc<Mediator>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Problem> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let by = req
        .headers()
        .get("millrace-deployed-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("admin-api")
        .to_string();
    let method = req.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET, ["v1", "plants"]) => json(StatusCode::OK, &plants(mediator)),
        (Method::GET, ["v1", "refusals"]) => json(StatusCode::OK, &mediator.deployer.refusals()),
        (Method::GET, ["v1", "quarantine"]) => json(StatusCode::OK, &mediator.quarantines.list()),
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
            let lifted = mediator.quarantines.reset(plant, plugin);
            tracing::warn!(plant, plugin, by = %by, lifted = lifted.len(), "quarantine lifted");
            json(StatusCode::OK, &serde_json::json!({ "lifted": lifted }))
        }
        (Method::GET, ["metrics"]) => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(crate::telemetry::metrics().text())))
            .map_err(|e| Problem::internal(e.to_string())),
        (Method::POST, ["v1", "config", "reload"]) => {
            let mediator_ = Arc::clone(mediator);
            let done = tokio::task::spawn_blocking(move || reload::reload(&mediator_))
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
        (Method::GET, ["v1", "plants", plant, "plugins", plugin]) => {
            let registry = &mediator.deployer.registry;
            let versions = registry
                .versions(plant, plugin)
                .map_err(|e| Problem::internal(e.to_string()))?;
            let history = registry
                .history(plant, Some(plugin))
                .map_err(|e| Problem::internal(e.to_string()))?;
            let active = running(mediator, plant, plugin);
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
            let bytes = body(req).await?;
            let (plant, mediator_) = (plant.to_string(), Arc::clone(mediator));
            let deployed = tokio::task::spawn_blocking(move || {
                mediator_.deployer.deploy(
                    &mediator_.engine,
                    &mediator_.routes,
                    &plant,
                    &bytes,
                    &by,
                    "upload",
                )
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
            let wanted = if *action == "activate" {
                let bytes = body(req).await?;
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
            let (plant, plugin, mediator_) =
                (plant.to_string(), plugin.to_string(), Arc::clone(mediator));
            let done = tokio::task::spawn_blocking(move || {
                let d = &mediator_.deployer;
                match wanted {
                    Some(version) => d.activate(
                        &mediator_.engine,
                        &mediator_.routes,
                        crate::deploy::Slot {
                            plant: &plant,
                            plugin: &plugin,
                        },
                        &version,
                        &by,
                        "activate",
                    ),
                    None => d.rollback(&mediator_.engine, &mediator_.routes, &plant, &plugin, &by),
                }
            })
            .await
            .map_err(|e| Problem::internal(e.to_string()))?;
            match done {
                Ok(activated) => {
                    broadcast::announce(mediator, &activated.activation).await;
                    json(StatusCode::OK, &activated)
                }
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

async fn body(req: Request<Incoming>) -> Result<Vec<u8>, Problem> {
    Limited::new(req.into_body(), MAX_UPLOAD)
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .map_err(|e| Problem::bad_request(format!("the body could not be read: {e}")))
}

/// The version of `plugin` the plant's routes run now.
fn running(mediator: &Mediator, plant: &str, plugin: &str) -> Option<serde_json::Value> {
    mediator
        .routes
        .running(plant, plugin)
        .map(|s| serde_json::json!({ "version": s.id.version, "digest": s.id.digest }))
}

fn plants(mediator: &Mediator) -> serde_json::Value {
    let mut by_plant: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
        Default::default();
    let mut routes = mediator.routes.all();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    for route in routes {
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
