//! The agent against real `weft` nodes (issue 8's proofs): 10,000 events produced while
//! the node is down are delivered once and in order when it returns; `kill -9` of the agent
//! mid-drain loses and duplicates nothing; failover to a second node and back.
//!
//! Each test takes its own loopback net (127.70.0.x to 127.72.0.x) and bounds every wait.

mod common;

use std::time::Duration;

use common::*;

const STREAM: &str = "telemetry.till-7";

fn depth(w: &World) -> Option<u64> {
    w.status()?["outbox_depth"].as_u64()
}

fn connected_to(w: &World) -> Option<String> {
    w.status()?["connected"]["node"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn ten_thousand_events_made_offline_arrive_once_and_in_order() {
    const N: u64 = 10_000;
    let mut w = World::new("offline", 70, 1, "", &[], "");
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || connected_to(&w))
        .unwrap_or_else(|| panic!("agent never connected\n{}", w.logs()));
    // The node goes away; the device keeps producing.
    w.nodes[0].kill9();
    wait_for(Duration::from_secs(30), || {
        w.status()?["connected"].is_null().then_some(())
    })
    .unwrap_or_else(|| panic!("agent never noticed the node's death\n{}", w.logs()));
    w.feed(0..N);
    wait_for(Duration::from_secs(60), || (depth(&w)? == N).then_some(()))
        .unwrap_or_else(|| panic!("outbox never held {N}: {:?}\n{}", w.status(), w.logs()));
    let s = w.status().unwrap();
    assert!(
        s["connected"].is_null(),
        "still connected to a dead node: {s}"
    );
    assert_eq!(s["counters"]["accepted"].as_u64(), Some(N));
    // Nothing is sequenced while offline: the sequence starts at 1 when the drain begins.
    assert_eq!(s["next_seq"].as_u64(), Some(1), "{s}");
    // The node comes back.
    w.start_node(0);
    wait_for(Duration::from_secs(60), || (depth(&w)? == 0).then_some(()))
        .unwrap_or_else(|| panic!("outbox never drained: {:?}\n{}", w.status(), w.logs()));
    let events = wait_for(Duration::from_secs(20), || {
        let e = w.events(0, STREAM)?;
        (e.len() as u64 >= N).then_some(e)
    })
    .unwrap_or_else(|| panic!("node never showed {N} events\n{}", w.logs()));
    assert_exactly_once_in_order(&events, N, &w.agent_key, "after the node's return");
    let s = w.status().unwrap();
    assert_eq!(s["counters"]["delivered"].as_u64(), Some(N), "{s}");
    assert!(
        w.metrics(0)
            .contains("weft_publishes_total{api=\"edge\"} 10000"),
        "{}",
        w.metrics(0)
    );
}

#[test]
fn kill_9_mid_drain_loses_and_duplicates_nothing() {
    const N: u64 = 10_000;
    // Small batches, one at a time: a drain that takes long enough to be interrupted.
    let mut w = World::new(
        "kill9",
        71,
        1,
        "batch_len_max = 16\nbatches_inflight_max = 1\n",
        &[],
        "",
    );
    w.start_agent(false);
    w.feed(0..N);
    wait_for(Duration::from_secs(60), || (depth(&w)? == N).then_some(()))
        .unwrap_or_else(|| panic!("outbox never held {N}\n{}", w.logs()));
    w.start_node(0);
    // Mid-drain: some events are at the node, not all.
    let seen = wait_for(Duration::from_secs(60), || {
        let n = w.events(0, STREAM)?.len() as u64;
        (n >= 500).then_some(n)
    })
    .unwrap_or_else(|| panic!("drain never started\n{}", w.logs()));
    w.agent.as_mut().unwrap().kill9();
    let at_kill = w.events(0, STREAM).unwrap().len() as u64;
    assert!(
        at_kill < N,
        "the drain finished before the kill ({seen} then {at_kill}); the test proves nothing"
    );
    // Restart with standard input closed: it drains what is left and exits.
    w.agent_stdin = None;
    w.start_agent(true);
    let status = wait_for(Duration::from_secs(90), || {
        w.agent
            .as_mut()
            .unwrap()
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .ok()?
    })
    .unwrap_or_else(|| panic!("restarted agent never drained\n{}", w.logs()));
    assert!(status.success(), "{}", w.logs());
    let events = wait_for(Duration::from_secs(20), || {
        let e = w.events(0, STREAM)?;
        (e.len() as u64 >= N).then_some(e)
    })
    .unwrap_or_else(|| panic!("node never showed {N} events\n{}", w.logs()));
    assert_exactly_once_in_order(&events, N, &w.agent_key, "after kill -9 and restart");
}

#[test]
fn fails_over_to_the_second_node_and_back() {
    // Node 1 costs 50 ms more (rtt_bias_ms): node 0 is preferred whenever it is up.
    let mut w = World::new("failover", 72, 2, "", &[0.0, 50.0], "");
    w.start_node(0);
    w.start_node(1);
    w.start_agent(false);
    let first = wait_for(Duration::from_secs(30), || {
        connected_to(&w).filter(|n| n == "n0")
    })
    .unwrap_or_else(|| panic!("agent never used n0: {:?}\n{}", w.status(), w.logs()));
    assert_eq!(first, "n0");
    w.feed(0..100);
    wait_for(Duration::from_secs(30), || {
        (w.status()?["counters"]["delivered"].as_u64()? == 100).then_some(())
    })
    .unwrap_or_else(|| panic!("first 100 not delivered: {:?}\n{}", w.status(), w.logs()));

    // n0 dies: the agent moves to n1 and keeps delivering.
    w.nodes[0].kill9();
    wait_for(Duration::from_secs(30), || {
        connected_to(&w).filter(|n| n == "n1")
    })
    .unwrap_or_else(|| panic!("no failover to n1: {:?}\n{}", w.status(), w.logs()));
    w.feed(100..200);
    wait_for(Duration::from_secs(30), || {
        (w.status()?["counters"]["delivered"].as_u64()? == 200).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "second 100 not delivered via n1: {:?}\n{}",
            w.status(),
            w.logs()
        )
    });

    // n0 returns: the agent moves back.
    w.start_node(0);
    wait_for(Duration::from_secs(30), || {
        connected_to(&w).filter(|n| n == "n0")
    })
    .unwrap_or_else(|| panic!("never moved back to n0: {:?}\n{}", w.status(), w.logs()));
    w.feed(200..300);
    wait_for(Duration::from_secs(30), || {
        (w.status()?["counters"]["delivered"].as_u64()? == 300).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "third 100 not delivered via n0: {:?}\n{}",
            w.status(),
            w.logs()
        )
    });

    // Both nodes end with all 300, once each, in order (the mesh fills the gaps).
    for i in 0..2 {
        let events = wait_for(Duration::from_secs(30), || {
            let e = w.events(i, STREAM)?;
            (e.len() >= 300).then_some(e)
        })
        .unwrap_or_else(|| {
            panic!(
                "node {i} never showed 300 events: {:?}\n{}",
                w.events(i, STREAM).map(|e| e.len()),
                w.logs()
            )
        });
        assert_exactly_once_in_order(&events, 300, &w.agent_key, &format!("node {i}"));
    }
    let log = w.agent_log();
    assert!(
        log.matches("using node").count() >= 3,
        "expected n0, n1, n0:\n{}",
        tail(&log, 40)
    );
}
