//! A fleet on a RabbitMQ cluster: three nodes of Debian's RabbitMQ joined on loopback, three
//! hosts competing on one route whose queues are quorum queues (the default), each host listing
//! the three nodes from a different first one. During a 100,000-message stream (always: a
//! shorter one can end while the node restarts, before the host's crash) the node that leads
//! the route's queues is killed with SIGKILL and restarted (a leader election, the hosts on it
//! failing over to the other nodes), then one host is killed with SIGKILL and restarted.
//! Afterwards every input has its output under the id derived from its own, copies are counted
//! and bounded by what the hosts held unacknowledged at the two crashes, and with the hosts
//! stopped the source, delay and dead-letter queues are empty.

use crate::amqp_faults::{
    assert_each_input_once, mes_stream_workspace, publish_inputs, ready, wait_for_outputs,
};
use crate::harness::*;
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;

const PREFETCH: usize = 64;

fn workspace(cluster: &Cluster, host: usize) -> Workspace {
    mes_stream_workspace(
        &format!("id = \"h{host}\"\namqp = {}", cluster.urls_from(host)),
        PREFETCH,
    )
}

#[test]
fn three_hosts_on_a_three_node_cluster_lose_the_leader_node_and_a_host_mid_stream_and_lose_nothing()
{
    // The chaos run (docs/amqp.md): `MILLRACE_CLUSTER_KILLS=N` kills, N more times while the
    // stream runs, whichever node leads `out` at that moment, each once 1,000 more outputs came;
    // the stream is longer by 100,000 inputs per kill (a node restarts in tens of seconds).
    let more: usize = std::env::var("MILLRACE_CLUSTER_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let inputs = 100_000 + 100_000 * more;
    let mut cluster = Cluster::start(3);
    // The route's queue and `out` are declared through node 2, so their leaders are there.
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    publish_inputs(&cluster.nodes[2].url(), inputs, &quorum);
    let observer = cluster.nodes[0].url();
    let spaces: Vec<Workspace> = (0..3).map(|i| workspace(&cluster, i)).collect();
    // Each delivery's lines (received, mediated) are logged: a lost output's failure names
    // what the hosts did with its input.
    let start = |ws: &Workspace| {
        Host::start(
            &ws.config(),
            &[("RUST_LOG", "info,millrace_host::amqp::source=debug")],
        )
    };
    let mut hosts: Vec<Host> = spaces.iter().map(start).collect();
    for host in &hosts {
        host.wait_ready();
    }
    // CPU per message while all runs: from the hosts being ready to a third of the outputs.
    let cpu = |hosts: &[Host], cluster: &Cluster| {
        (
            hosts.iter().map(|h| cpu_time(h.pid())).sum::<Duration>(),
            cluster
                .nodes
                .iter()
                .map(|n| cpu_time(n.pid()))
                .sum::<Duration>(),
        )
    };
    let before = (cpu(&hosts, &cluster), ready(&observer, "out"));
    wait_for_outputs(&observer, (inputs / 3) as u32);
    let after = (cpu(&hosts, &cluster), ready(&observer, "out"));
    let made = f64::from(after.1 - before.1);
    println!(
        "cluster: {made} outputs with 3 hosts and 3 nodes: hosts {:.1} µs CPU per message (all three), nodes {:.1} µs (all three)",
        (after.0.0 - before.0.0).as_micros() as f64 / made,
        (after.0.1 - before.0.1).as_micros() as f64 / made,
    );
    cluster.nodes[2].kill9();
    // The other nodes elect new leaders; host h2 reconnects to node 0 meanwhile.
    std::thread::sleep(std::time::Duration::from_secs(2));
    cluster.nodes[2].restart();
    for kill in 0..more {
        let made = ready(&observer, "out");
        if made as usize >= inputs * 9 / 10 {
            println!("cluster: the stream ended after {kill} more node kill(s)");
            break;
        }
        wait_for_outputs(&observer, made + 1000);
        let leader = cluster.leader_of("out");
        cluster.nodes[leader].kill9();
        std::thread::sleep(std::time::Duration::from_secs(2));
        cluster.nodes[leader].restart();
    }
    wait_for_outputs(&observer, (2 * inputs / 3) as u32);
    // The host's crash must come mid-stream: a stream of 30,000 ended while the node restarted.
    let at_kill = ready(&observer, "out");
    println!("cluster: host h1 killed at {at_kill} outputs of {inputs}");
    assert!(
        (at_kill as usize) < inputs,
        "the stream ended before the host was killed"
    );
    let killed = hosts.remove(1).kill9();
    hosts.insert(1, start(&spaces[1]));
    for host in &hosts {
        host.wait_ready();
    }
    // Each crash can repeat at most what the hosts held unacknowledged: the node's loss returns
    // every host's deliveries (the queue's leader moved), the host's its own.
    let copies = assert_each_input_once(
        &observer,
        inputs,
        hosts,
        vec![killed],
        "cluster: leader node and host kill -9",
        (4 + 3 * more) * PREFETCH,
    );
    println!("cluster: {copies} copies for {inputs} inputs");
    for delay in ["1000ms", "2000ms", "4000ms", "8000ms"] {
        let queue = format!("plant-a.mes.retry.{delay}");
        assert_eq!(ready(&observer, &queue), 0, "{queue} is empty");
    }
}
