//! The operator console: a page and its script and styles, embedded in the binary and served
//! by the admin listener under `/console/` (no CDN, works offline). The files hold no data and
//! are served to anyone who reaches the listener; everything the page shows it reads from the
//! admin API with the token the operator types in (kept in the tab's `sessionStorage` only), so
//! the API's authentication and plant scoping apply to the console as to any client.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// What the page may load and talk to: itself and the API on the same origin, nothing else.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's answer to `GET path`, if `path` is one of its files (`/` sends to the page).
pub fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, kind) = match path {
        "/" => {
            return Response::builder()
                .status(StatusCode::SEE_OTHER)
                .header(header::LOCATION, "/console/")
                .body(Full::new(Bytes::new()))
                .ok();
        }
        "/console" | "/console/" | "/console/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/console/console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/console/console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    Response::builder()
        .header(header::CONTENT_TYPE, kind)
        .header(header::CONTENT_SECURITY_POLICY, POLICY)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .ok()
}
