//! Hostile HTTP clients against the ingress: slow bodies, slow headers, many connections, more
//! connections than one client may hold, Idempotency-Key floods and answers too big to keep.
//! The attackers connect from 127.0.0.2 (still loopback), a well-behaved client of plant B from
//! 127.0.0.1 keeps being served meanwhile (no failure, a share of its own rate measured before
//! the attack in the same test).

use crate::harness::*;
use crate::hostile::{Bystander, assert_served};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A connection to `url`'s host and port from 127.0.0.2.
fn attacker(url: &str) -> TcpStream {
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .expect("host:port");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let stream = socket.connect(addr).await.expect("connect");
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        stream
    })
}

/// Everything the server sends on `stream` until it closes it (or [`GUARD`] passes).
fn read_to_close(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(GUARD)).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

fn workspace(host: &str) -> Workspace {
    let steady = act_route("steady", "").replace("plant = \"plant-a\"", "plant = \"plant-b\"");
    Workspace::new(&format!(
        "[host]\n{host}\n\n[plants.plant-a]\n[plants.plant-b]\n\n{}\n{steady}",
        act_route("act", "")
    ))
}

/// A body within the limit that arrives in many pieces (900,000 bytes: many reads of the socket)
/// is handed to the chain whole and in order: the `act` guest answers with its input.
#[test]
fn a_body_within_the_limit_arriving_in_many_pieces_is_mediated_whole() {
    let ws = workspace("");
    let host = ws.start();
    let body: String = (0..900_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let reply = host.post("act", Some("text/plain"), &body);
    assert_eq!(
        reply.status,
        200,
        "{}",
        &reply.body[..reply.body.len().min(300)]
    );
    assert_eq!(reply.body.len(), body.len());
    assert!(reply.body == body, "the body came back changed");
}

/// A client that asks before it sends (`Expect: 100-continue`) and is refused gets the refusal at
/// once: no `100 Continue` invites its body first. A body declared over the route's limit (the
/// `Expect` hyper goes by is the last one), and a chunked body to a path that does not exist.
/// (One that sends its body over the limit without asking gets the 413 too, once the host has
/// read the rest and dropped it: `http.rs::every_error_status_is_a_problem_document`.)
#[test]
fn a_body_declared_over_the_limit_by_a_client_that_asks_first_is_refused_before_it_is_sent() {
    let ws = workspace("");
    let host = ws.start();
    let first_answer = |request: &[u8]| {
        let mut asking = attacker(&host.url);
        asking.write_all(request).unwrap();
        asking.set_read_timeout(Some(GUARD)).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match asking.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let answer = first_answer(
        b"POST /v1/routes/act/messages HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 16777216\r\nexpect: 100-continue\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = first_answer(
        b"POST /v1/routes/act/messages HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 16777216\r\nexpect: something\r\nexpect: 100-continue\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = first_answer(
        b"POST /nowhere HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

#[test]
fn slow_bodies_and_slow_headers_are_cut_off_at_their_timeouts() {
    let ws =
        workspace("header_timeout_s = 1\nbody_timeout_s = 2\nmax_connections_per_client = 200");
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    // 100 requests announcing 1 MiB bodies that send one byte and stall.
    let mut slow_bodies: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = attacker(&host.url);
            s.write_all(
                b"POST /v1/routes/act/messages HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 1048576\r\n\r\nx",
            )
            .unwrap();
            s
        })
        .collect();
    // 50 connections that send half a request line and stall.
    let mut slow_headers: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = attacker(&host.url);
            s.write_all(b"POST /v1/routes/act/mess").unwrap();
            s
        })
        .collect();
    for s in &mut slow_bodies {
        let answer = read_to_close(s);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.contains("urn:millrace:problem:request-timeout"),
            "{answer}"
        );
    }
    for s in &mut slow_headers {
        // Closed (hyper answers 408 or just closes): never left open.
        let answer = read_to_close(s);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
    }
    assert_served("slow bodies and headers", &baseline, &during.finish());
}

#[test]
fn connections_past_the_host_and_client_limits_are_refused_with_a_problem() {
    let ws = workspace("max_connections = 40\nmax_connections_per_client = 10");
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    // Ten idle connections from one client are its share; the eleventh is refused at once.
    let mut held: Vec<TcpStream> = (0..10).map(|_| attacker(&host.url)).collect();
    // Each held connection is in: a request on it is answered.
    held[0]
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    held[0].read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let mut eleventh = attacker(&host.url);
    let answer = read_to_close(&mut eleventh);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too-many-connections"), "{answer}");
    assert!(
        answer.contains("host.max_connections_per_client"),
        "{answer}"
    );
    assert_served("one client's connections", &baseline, &during.finish());
    // Closing them gives the places back.
    held.clear();
    std::thread::sleep(Duration::from_millis(200));
    let mut again = attacker(&host.url);
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    assert!(read_to_close(&mut again).starts_with("HTTP/1.1 200"));
    drop(host);

    // The host's own limit: 40 connections in all, from any client.
    let ws = workspace("max_connections = 40\nmax_connections_per_client = 1000");
    let host = ws.start();
    let _held: Vec<TcpStream> = (0..40).map(|_| attacker(&host.url)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut over = attacker(&host.url);
    let answer = read_to_close(&mut over);
    assert!(answer.contains("host.max_connections)"), "{answer}");
}

#[test]
fn idempotency_keys_are_kept_within_their_bounds_and_big_answers_are_not_kept() {
    let ws = workspace("idempotency_max_keys = 100\nidempotency_max_answer_kib = 1");
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    for i in 0..1000 {
        let reply = host.post_with_key("act", "text/plain", &format!("flood-{i}"), "ok");
        assert_eq!(reply.status, 200);
    }
    assert_served("a key flood", &baseline, &during.finish());
    let db =
        rusqlite::Connection::open(ws.dir.path().join(".millrace/idempotency.sqlite")).unwrap();
    let kept: i64 = db
        .query_row("SELECT COUNT(*) FROM answers", [], |r| r.get(0))
        .unwrap();
    assert!(kept <= 100, "{kept} answers kept");
    // The newest are kept, the oldest evicted.
    let newest = host.post_with_key("act", "text/plain", "flood-999", "ok");
    assert_eq!(newest.header("millrace-replayed"), Some("true"));
    let oldest = host.post_with_key("act", "text/plain", "flood-0", "ok");
    assert_eq!(oldest.header("millrace-replayed"), None);
    // An answer over 1 KiB is given, not kept: its repeat is mediated again.
    let big = "z".repeat(4000);
    let first = host.post_with_key("act", "text/plain", "big-1", &big);
    assert_eq!(first.status, 200);
    assert_eq!(first.body.len(), 4000);
    let again = host.post_with_key("act", "text/plain", "big-1", &big);
    assert_eq!(again.status, 200);
    assert_eq!(again.header("millrace-replayed"), None);
}
