//! Loopback ports for the brokers the tests and the benchmarks start (shared by `tests/all` and
//! `host/benches/common`).

/// Offset of a RabbitMQ node's Erlang distribution port from its AMQP port (`scripts/rabbitmq`).
const DIST_PORT_OFFSET: u16 = 20000;
/// The lowest port [`server_port`] hands out.
const FIRST_SERVER_PORT: u16 = 10000;

/// A loopback port for a server a test or a benchmark starts (a broker), free when probed
/// together with `port + DIST_PORT_OFFSET` (a RabbitMQ node's second listener). Where the machine
/// leaves room, ports come from below the kernel's ephemeral range, so an outgoing connection
/// cannot take one between this probe and the server's bind, and none is handed out twice in one
/// process (of fewer starts than the range has ports: 2,768 with Linux's default range).
pub fn server_port() -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static START: OnceLock<u32> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let end = ephemeral_low.saturating_sub(DIST_PORT_OFFSET);
    if end <= FIRST_SERVER_PORT + 100 {
        // No room below the ephemeral range on this machine: let the kernel choose.
        loop {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            let port = probe.local_addr().unwrap().port();
            if port.checked_add(DIST_PORT_OFFSET).is_some_and(free) {
                return port;
            }
        }
    }
    let span = u32::from(end - FIRST_SERVER_PORT);
    // Two runs at once on one machine start at different places.
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::process::id().wrapping_mul(7919) ^ nanos
    });
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST_SERVER_PORT + (start.wrapping_add(n) % span) as u16;
        if free(port) && free(port + DIST_PORT_OFFSET) {
            return port;
        }
    }
    panic!("no free loopback port pair below {ephemeral_low}");
}
