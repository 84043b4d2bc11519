//! What one listener accepts: at most `max_connections` connections at once and at most
//! `max_connections_per_client` from one address; a connection beyond either is answered
//! `503` with a problem document and closed at once (it never reaches a handler). Shared by the
//! HTTP ingress and the admin API.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bounds of one listener's connections and requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most (`host.max_connections`, default 1024).
    pub max_connections: usize,
    /// Open connections from one address at most (`host.max_connections_per_client`, 64).
    pub max_per_client: usize,
    /// Time a client has to send a request's headers (`host.header_timeout_s`, 30); an idle
    /// keep-alive connection is closed after it too.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body (`host.body_timeout_s`, 30); then 408.
    pub body_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            max_per_client: 64,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// The connections a listener holds now.
pub struct Connections {
    limits: ConnectionLimits,
    open: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One accepted connection's places; they return when it is dropped.
pub struct Held {
    _open: OwnedSemaphorePermit,
    client: IpAddr,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut per_client = self.per_client.lock().expect("per-client lock");
        if let Some(n) = per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                per_client.remove(&self.client);
            }
        }
    }
}

impl Connections {
    pub fn new(limits: ConnectionLimits) -> Connections {
        Connections {
            limits,
            open: Arc::new(Semaphore::new(limits.max_connections)),
            per_client: Arc::default(),
        }
    }

    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// A place for a connection from `peer`, or `None` after answering it 503 and closing it.
    pub fn admit(&self, stream: TcpStream, peer: SocketAddr) -> Option<(TcpStream, Held)> {
        let Ok(open) = Arc::clone(&self.open).try_acquire_owned() else {
            refuse(
                stream,
                format!(
                    "the host has {} connections open, its limit (host.max_connections)",
                    self.limits.max_connections
                ),
            );
            return None;
        };
        {
            let mut per_client = self.per_client.lock().expect("per-client lock");
            let n = per_client.entry(peer.ip()).or_insert(0);
            if *n >= self.limits.max_per_client {
                drop(per_client);
                refuse(
                    stream,
                    format!(
                        "{} has {} connections open, the limit per client (host.max_connections_per_client)",
                        peer.ip(),
                        self.limits.max_per_client
                    ),
                );
                return None;
            }
            *n += 1;
        }
        Some((
            stream,
            Held {
                _open: open,
                client: peer.ip(),
                per_client: Arc::clone(&self.per_client),
            },
        ))
    }
}

/// Answer `stream` 503 (a problem document, `Retry-After: 1`) and close it, without reading.
fn refuse(mut stream: TcpStream, detail: String) {
    tracing::warn!("connection refused: {detail}");
    tokio::spawn(async move {
        let body = serde_json::json!({
            "type": "urn:millrace:problem:too-many-connections",
            "title": "Too many connections",
            "status": 503,
            "detail": detail,
        })
        .to_string();
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
    });
}

/// What a connection's requests are answered with: given the peer's address and the
/// connection's client certificate name (when TLS asked for one and it was presented), a
/// handler for each request.
pub type Handler = Arc<
    dyn Fn(
            hyper::Request<hyper::body::Incoming>,
            SocketAddr,
            Option<String>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = hyper::Response<http_body_util::Full<bytes::Bytes>>,
                    > + Send,
            >,
        > + Send
        + Sync,
>;

/// Accept connections on `listener` within `limits` until `shutdown` resolves, each served by
/// [`serve_connection`]; the one accept loop of the message listener and the admin API. With
/// `graceful`, connections in hand can be finished after the loop ends.
pub async fn accept(
    listener: tokio::net::TcpListener,
    limits: ConnectionLimits,
    tls: Option<Arc<super::tls::Tls>>,
    handler: Handler,
    graceful: Option<&hyper_util::server::graceful::GracefulShutdown>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let connections = Connections::new(limits);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some((stream, held)) = connections.admit(stream, peer) else {
                    continue;
                };
                serve_connection(
                    stream,
                    peer,
                    held,
                    limits,
                    tls.clone(),
                    Arc::clone(&handler),
                    graceful.map(|g| g.watcher()),
                );
            }
            () = &mut shutdown => break,
        }
    }
}

/// Serve one admitted connection: the TLS handshake first when `tls` is set (within the header
/// timeout), then HTTP/1.1, each request answered by `handler`; `watcher` lets a graceful
/// shutdown finish it.
pub fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    held: Held,
    limits: ConnectionLimits,
    tls: Option<Arc<super::tls::Tls>>,
    handler: Handler,
    watcher: Option<hyper_util::server::graceful::Watcher>,
) {
    tokio::spawn(async move {
        let _held = held;
        match tls {
            None => serve_http(stream, peer, limits, None, handler, watcher).await,
            Some(tls) => {
                let handshake =
                    tokio::time::timeout(limits.header_timeout, tls.acceptor().accept(stream))
                        .await;
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake not finished within the header timeout");
                        return;
                    }
                };
                let client = super::tls::client_name(stream.get_ref().1);
                serve_http(stream, peer, limits, client, handler, watcher).await
            }
        }
    });
}

/// HTTP/1.1 on `io` until the client or a graceful shutdown (`watcher`) ends it: headers within
/// the header timeout, each request answered by `handler` with `client` (the connection's
/// client certificate name).
pub async fn serve_http<S>(
    io: S,
    peer: SocketAddr,
    limits: ConnectionLimits,
    client: Option<String>,
    handler: Handler,
    watcher: Option<hyper_util::server::graceful::Watcher>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A client that shuts its sending side after its request still gets the answer.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .half_close(true);
    let service = hyper::service::service_fn(move |req| {
        let (handler, client) = (Arc::clone(&handler), client.clone());
        async move { Ok::<_, std::convert::Infallible>(handler(req, peer, client).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let ended = match watcher {
        Some(watcher) => watcher.watch(conn).await,
        None => conn.await,
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
