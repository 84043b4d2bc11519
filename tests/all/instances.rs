//! What may persist between messages (docs/sandbox.md): an instance serves messages of one step
//! only, at most `instance_reuse` of them, and is discarded after a trap; a trap never affects
//! another message, of another route or of the same one. The `act` guest's `count` answers how
//! many messages its instance has served, so each answer says which instance made it.

use crate::harness::*;

/// How many messages the instance that answered `count` on `route` had served.
fn served(host: &Host, route: &str) -> u64 {
    let reply = host.post(route, Some("text/plain"), "count");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["served"].as_u64().expect("a count")
}

#[test]
fn an_instance_serves_at_most_instance_reuse_messages_of_its_own_step_only() {
    let reuse3 = "instance_reuse = 3";
    let ws = Workspace::new(&format!(
        "[plants.plant-a]\n[plants.plant-b]\n\n{}\n{}\n{}\n{}\n{}",
        act_route("r1", reuse3),
        act_route("r2", reuse3),
        act_route("r3", reuse3).replace("plant = \"plant-a\"", "plant = \"plant-b\""),
        act_route("fresh", "instance_reuse = 1"),
        // Two steps of the same plugin on one route: each step has its own instances.
        act_route("two", reuse3)
            + &format!(
                "\n[[routes.two.steps]]\nplugin = \"{}\"\ngrants = [\"log\", \"state\"]\ninstance_reuse = 3\n",
                guest("guest-act").display()
            ),
    ));
    let host = ws.start();
    // Messages to three routes (two plants) interleaved: each route's instances count only its
    // own messages, and each is replaced after three.
    let mut seen = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..7 {
        for (i, route) in ["r1", "r2", "r3"].iter().enumerate() {
            seen[i].push(served(&host, route));
        }
    }
    for counts in &seen {
        assert_eq!(counts, &[1, 2, 3, 1, 2, 3, 1]);
    }
    // instance_reuse = 1: a fresh instance for every message.
    let fresh: Vec<u64> = (0..4).map(|_| served(&host, "fresh")).collect();
    assert_eq!(fresh, [1, 1, 1, 1]);
    // Step 2 passes step 1's answer (`{"served": N}`, not a command) on unchanged. Had the two
    // steps shared an instance, step 2's calls would count too (1, 3, 5, ...).
    let chain: Vec<u64> = (0..4).map(|_| served(&host, "two")).collect();
    assert_eq!(chain, [1, 2, 3, 1]);
}

#[test]
fn instances_from_the_pool_start_clean_in_a_slot_another_instance_used() {
    // Four slots: every fresh instance takes a slot an earlier one used and released, with
    // part of its memory kept resident. Its counter (a static in linear memory) starts again.
    let ws = Workspace::new(&format!(
        "[host]\ninstance_pool = 4\n\n[plants.plant-a]\n\n{}\n{}",
        act_route("fresh", "instance_reuse = 1"),
        act_route("r3", "instance_reuse = 3"),
    ));
    let host = ws.start();
    let fresh: Vec<u64> = (0..20).map(|_| served(&host, "fresh")).collect();
    assert_eq!(fresh, [1; 20]);
    let reused: Vec<u64> = (0..7).map(|_| served(&host, "r3")).collect();
    assert_eq!(reused, [1, 2, 3, 1, 2, 3, 1]);
    let trapped = host.post("fresh", Some("text/plain"), "trap");
    assert_eq!(trapped.status, 502, "{}", trapped.body);
    assert_eq!(served(&host, "fresh"), 1);
}

#[test]
fn a_message_that_finds_every_pool_slot_taken_is_asked_to_retry_not_counted_as_a_plugin_failure() {
    // Three slots: each route keeps one warm instance, one slot is free. Three slow messages
    // on route `a` at once: one on its warm instance, one in the free slot, and one finds no
    // slot — the host's capacity, answered retry-later, not a trap of the plugin.
    let ws = Workspace::new(&format!(
        "[host]\ninstance_pool = 3\n\n[plants.plant-a]\n\n{}\n{}",
        slow_act_route("a"),
        slow_act_route("b"),
    ));
    let host = ws.start();
    assert_eq!(served(&host, "b"), 1);
    let base = host.url.clone();
    let answers: Vec<Reply> = std::thread::scope(|scope| {
        let sent: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    request(
                        &base,
                        "POST",
                        "/v1/routes/a/messages",
                        Some("text/plain"),
                        &[],
                        SLOW_WORK.as_bytes(),
                    )
                })
            })
            .collect();
        sent.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        [200, 200, 503],
        "{:?}",
        answers.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    let refused = answers.iter().find(|r| r.status == 503).unwrap();
    assert_eq!(refused.kind(), "retry-later", "{}", refused.body);
    assert!(
        refused.body.contains("instance pool is full"),
        "{}",
        refused.body
    );
    // The plugin's breaker did not count it: route `a` serves on.
    assert_eq!(host.post("a", Some("text/plain"), "ok").status, 200);
    assert_eq!(served(&host, "b"), 2);
}

#[test]
fn a_trapped_instance_is_discarded_and_the_next_message_gets_a_fresh_one() {
    let ws = Workspace::new(&format!(
        "[plants.plant-a]\n\n{}",
        act_route("act", "instance_reuse = 1000")
    ));
    let host = ws.start();
    assert_eq!(served(&host, "act"), 1);
    assert_eq!(served(&host, "act"), 2);
    let trapped = host.post("act", Some("text/plain"), "trap");
    assert_eq!(trapped.status, 502, "{}", trapped.body);
    // The instance that had served two (and trapped on its third) is gone.
    assert_eq!(served(&host, "act"), 1);
    assert_eq!(served(&host, "act"), 2);
}

#[test]
fn a_trap_never_affects_another_message_of_the_same_route() {
    let ws = Workspace::new(&format!(
        // The traps are the test's own: the circuit breaker (its own test) would stop them.
        "[host]\nmax_in_flight = 4\n\n[limits]\nquarantine_after = 0\n\n[plants.plant-a]\n\n{}",
        act_route("act", "")
    ));
    let host = ws.start();
    let url = host.url.clone();
    let post = move |body: &'static str| {
        request(
            &url,
            "POST",
            "/v1/routes/act/messages",
            Some("text/plain"),
            &[],
            body.as_bytes(),
        )
    };
    // Traps and good messages on the same route at the same time, from four clients.
    let answers: Vec<(&str, Reply)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let post = post.clone();
                s.spawn(move || {
                    (0..50)
                        .map(|i| {
                            let body = if (c + i) % 3 == 0 {
                                "trap"
                            } else {
                                "work 1000"
                            };
                            (body, post(body))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let (traps, good): (Vec<_>, Vec<_>) = answers.iter().partition(|(body, _)| *body == "trap");
    assert!(traps.len() >= 60 && good.len() >= 130);
    for (_, reply) in &traps {
        assert_eq!(reply.status, 502, "{}", reply.body);
    }
    for (_, reply) in &good {
        assert_eq!(
            reply.status, 200,
            "a good message failed beside a trap: {}",
            reply.body
        );
        assert_eq!(reply.body, "worked 1000");
    }
}
