//! The agent against real `weft` nodes (issue 8's proofs): 10,000 events produced while
//! the node is down are delivered once and in order when it returns; `kill -9` of the agent
//! mid-drain loses and duplicates nothing; failover to a second node and back; and what
//! the node refuses for good (dead letters, voids, renumbering, erased events) never stalls
//! the drain.
//!
//! Each test takes its own loopback net (127.70.0.x to 127.83.0.x) and bounds every wait.

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

/// Waits up to `secs` for node 0's aggregate summaries on `stream` to count `n` events in
/// all, checks they count exactly `n`, and returns them.
fn summaries_counting(w: &World, stream: &str, n: u64, secs: u64) -> Vec<serde_json::Value> {
    let total = |e: &[serde_json::Value]| -> u64 {
        e.iter()
            .map(|s| s["data"]["count"].as_u64().unwrap_or(0))
            .sum()
    };
    let summaries = wait_for(Duration::from_secs(secs), || {
        let e = w.events(0, stream)?;
        (total(&e) >= n).then_some(e)
    })
    .unwrap_or_else(|| {
        panic!(
            "the summaries on {stream} never counted {n} events: {:?}\n{}",
            w.events(0, stream),
            w.logs()
        )
    });
    assert_eq!(total(&summaries), n, "{summaries:?}");
    summaries
}

#[test]
fn ten_thousand_events_made_offline_arrive_once_and_in_order() {
    const N: u64 = 10_000;
    // One publish in flight at the node: the agent's 4 batches in flight meet `busy`
    // answers, which it must honour (pause, resend) without losing or reordering anything.
    let mut w = World::new(
        "offline",
        70,
        1,
        "[limits]\npublishes_inflight_max = 1\n",
        &[],
        "",
    );
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
    let m = w.metrics(0);
    assert!(
        m.contains("weft_publishes_total{api=\"edge\"} 10000"),
        "{m}"
    );
    let busy = w.rejected(0, "edge_busy");
    assert!(
        busy > 0,
        "the node never answered busy; backpressure untested:\n{m}"
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

/// A node that cannot take the device's events (here: it does not store their stream; an
/// EU-resident event at a US node is the same) answers `refused` with a reason of its own
/// (`REFUSED_HERE_ONLY`): the agent keeps the events and moves to a node that can, instead
/// of dead-lettering them. Before, every one was voided and lost.
#[test]
fn events_a_node_cannot_hold_go_to_another_node_not_to_the_dead_letters() {
    const N: u64 = 30;
    // n0 is preferred (n1 costs 50 ms more) but stores only `other.>`.
    let w_cfg = World::new("herenot", 85, 2, "", &[0.0, 50.0], "");
    let mut w = w_cfg;
    let n0 = w.dir.join("n0.toml");
    let text = std::fs::read_to_string(&n0).unwrap();
    std::fs::write(
        &n0,
        text.replace("[listen]", "streams = [\"other.>\"]\n[listen]"),
    )
    .unwrap();
    w.start_node(0);
    w.start_node(1);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || {
        connected_to(&w).filter(|n| n == "n0")
    })
    .unwrap_or_else(|| panic!("agent never used n0: {:?}\n{}", w.status(), w.logs()));
    w.feed(0..N);
    let s = wait_for(Duration::from_secs(60), || {
        let s = w.status()?;
        (s["counters"]["delivered"].as_u64()? == N).then_some(s)
    })
    .unwrap_or_else(|| panic!("not delivered via n1: {:?}\n{}", w.status(), w.logs()));
    assert_eq!(s["counters"]["dead"].as_u64(), Some(0), "{s}");
    let events = wait_for(Duration::from_secs(20), || {
        let e = w.events(1, STREAM)?;
        (e.len() as u64 >= N).then_some(e)
    })
    .unwrap_or_else(|| panic!("n1 never showed {N} events\n{}", w.logs()));
    assert_exactly_once_in_order(&events, N, &w.agent_key, "via the node that stores them");
    assert!(
        w.agent_log().contains("stream_not_stored"),
        "{}",
        tail(&w.agent_log(), 20)
    );
}

/// Publishes the command `{"do": id}` to till-7's command stream at the node at `http`,
/// as the operator (its bearer `token`).
fn send_command(token: &str, http: &str, id: &str) {
    let body = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"ops","type":"cmd","data":{{"do":"{id}"}}}}"#
    );
    let auth = format!("Bearer {token}");
    let (code, resp) = http_post(
        http,
        "/v1/streams/devices.till-7.commands/events",
        &[
            ("content-type", "application/cloudevents+json"),
            ("authorization", &auth),
        ],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&resp));
}

/// The ids of the commands the downlink ran, in order (its program appends each to `path`).
fn commands_ran(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["payload"]["data"]["do"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The downlink keeps a position per node (positions are each node's own log) and
/// remembers what it ran by origin and sequence number: after a failover the new node's
/// log (holding the same commands at other positions) neither replays a command already
/// run nor skips a new one.
#[test]
fn downlink_commands_run_once_across_a_failover() {
    let commands = std::env::temp_dir().join(format!(
        "weft-agent-it-failover-commands-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&commands);
    let downlink = format!(
        "[downlink]\nenabled = true\ncommand = [\"sh\", \"-c\", \"cat >> {}\"]\n",
        commands.display()
    );
    let mut w = World::new("dlfail", 86, 2, "", &[0.0, 50.0], &downlink);
    w.start_node(0);
    w.start_node(1);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || {
        connected_to(&w).filter(|n| n == "n0")
    })
    .unwrap_or_else(|| panic!("agent never used n0: {:?}\n{}", w.status(), w.logs()));
    let token = w.token.clone();
    let command = |i: usize, id: &str| send_command(&token, &node_http(86, i), id);
    let ran = || commands_ran(&commands);
    command(0, "c1");
    wait_for(Duration::from_secs(30), || (ran() == ["c1"]).then_some(()))
        .unwrap_or_else(|| panic!("c1 never ran: {:?}\n{}", ran(), w.logs()));
    // n1 holds c1 too before n0 goes.
    wait_for(Duration::from_secs(30), || {
        (w.events(1, "devices.till-7.commands")?.len() == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("c1 never reached n1\n{}", w.logs()));
    w.nodes[0].kill9();
    wait_for(Duration::from_secs(30), || {
        connected_to(&w).filter(|n| n == "n1")
    })
    .unwrap_or_else(|| panic!("no failover to n1: {:?}\n{}", w.status(), w.logs()));
    command(1, "c2");
    // c2 comes after c1 in n1's log: once c2 ran, a replay of c1 would have run before it.
    wait_for(Duration::from_secs(30), || {
        ran().contains(&"c2".to_string()).then_some(())
    })
    .unwrap_or_else(|| panic!("c2 never ran: {:?}\n{}", ran(), w.logs()));
    assert_eq!(ran(), ["c1", "c2"], "each command once, in order");
    let _ = std::fs::remove_file(&commands);
}

#[test]
fn local_rules_downlink_and_refused_devices() {
    let rules = r#"
[[edge.devices.rules]]
stream = "telemetry.till-7"
filter = { field = "level", op = "eq", value = "debug" }
[[edge.devices.rules]]
stream = "telemetry.till-7.hb"
sample = 5
[[edge.devices.rules]]
stream = "telemetry.till-7.temp"
aggregate = { window_s = 2, fields = ["c"] }
"#;
    let commands = std::env::temp_dir().join(format!(
        "weft-agent-it-commands-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&commands);
    let downlink = format!(
        "[downlink]\nenabled = true\ncommand = [\"sh\", \"-c\", \"cat >> {}\"]\n",
        commands.display()
    );
    let mut w = World::with_device("rules", 73, 1, "", rules, &[], &downlink);
    // The node stores only these: an event on another stream is refused after the agent
    // sequenced it (the profile does not say what a node stores).
    let cfg = w.dir.join("n0.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[listen]",
        "streams = [\"telemetry.>\", \"devices.>\"]\n[listen]",
    );
    std::fs::write(&cfg, text).unwrap();
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || connected_to(&w))
        .unwrap_or_else(|| panic!("agent never connected\n{}", w.logs()));
    // Filter: debug lines never leave the device.
    let mut lines = String::new();
    for i in 0..10 {
        let level = if i % 2 == 0 { "debug" } else { "info" };
        lines.push_str(&format!("{{\"n\":{i},\"level\":\"{level}\"}}\n"));
    }
    std::io::Write::write_all(w.agent_stdin.as_mut().unwrap(), lines.as_bytes()).unwrap();
    // Sample (1 in 5) and aggregate through the local HTTP input (CloudEvents batch).
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.push(
            serde_json::json!({"specversion": "1.0", "id": format!("hb-{i}"), "source": "test",
            "type": "hb", "weftstream": "telemetry.till-7.hb", "data": {"i": i}}),
        );
    }
    for (i, c) in [20, 21, 22, 23].iter().enumerate() {
        batch.push(
            serde_json::json!({"specversion": "1.0", "id": format!("t-{i}"), "source": "test",
            "type": "temp", "weftstream": "telemetry.till-7.temp", "data": {"c": c}}),
        );
    }
    let body = serde_json::to_vec(&batch).unwrap();
    let (code, resp) = http_post(
        &agent_http(73),
        "/v1/events",
        &[("content-type", "application/cloudevents-batch+json")],
        &body,
    )
    .unwrap();
    assert_eq!(code, 202, "{}", String::from_utf8_lossy(&resp));
    // Bad input is refused with a reason and counted.
    let (code, resp) = http_post(
        &agent_http(73),
        "/v1/events",
        &[("content-type", "application/cloudevents+json")],
        br#"{"specversion":"1.0","id":"x"}"#,
    )
    .unwrap();
    assert_eq!(code, 400);
    let refusal: serde_json::Value = serde_json::from_slice(&resp).unwrap();
    assert_eq!(refusal["error"]["reason"], "missing_attribute", "{refusal}");
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`source` is missing"),
        "{refusal}"
    );
    // Binary mode: attributes in `ce-` headers (percent-encoded), the body is the data.
    // A fifth temperature, folded into the same aggregate.
    let (code, resp) = http_post(
        &agent_http(73),
        "/v1/streams/telemetry.till-7.temp/events",
        &[
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "t-binary"),
            ("ce-source", "/sensors/till-7"),
            ("ce-type", "temp"),
            ("ce-subject", "t%C3%BCr"),
        ],
        br#"{"c": 24}"#,
    )
    .unwrap();
    assert_eq!(code, 202, "{}", String::from_utf8_lossy(&resp));
    // Binary mode without the required headers is refused with the parser's reason.
    let (code, resp) = http_post(
        &agent_http(73),
        "/v1/events",
        &[
            ("content-type", "application/json"),
            ("ce-specversion", "1.0"),
        ],
        br#"{"c": 1}"#,
    )
    .unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&resp));
    assert!(
        String::from_utf8_lossy(&resp).contains("missing_attribute"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    // A query parameter (a node API's `ack=` asked of the agent) is refused, not ignored.
    let (code, resp) = http_post(
        &agent_http(73),
        "/v1/events?ack=regions:2",
        &[("content-type", "application/cloudevents+json")],
        br#"{"specversion": "1.0", "id": "q-1", "source": "s", "type": "t", "data": {"level": "info"}}"#,
    )
    .unwrap();
    assert_eq!(code, 400, "{}", String::from_utf8_lossy(&resp));
    assert!(
        String::from_utf8_lossy(&resp).contains("unknown_parameter")
            && String::from_utf8_lossy(&resp).contains("ack=regions:2"),
        "{}",
        String::from_utf8_lossy(&resp)
    );

    let kept = wait_for(Duration::from_secs(30), || {
        let e = w.events(0, STREAM)?;
        (e.len() >= 5).then_some(e)
    })
    .unwrap_or_else(|| panic!("filtered stream incomplete\n{}", w.logs()));
    assert_eq!(kept.len(), 5);
    assert!(
        kept.iter().all(|e| e["data"]["level"] == "info"),
        "{kept:?}"
    );
    let hb = wait_for(Duration::from_secs(30), || {
        let e = w.events(0, "telemetry.till-7.hb")?;
        (e.len() >= 2).then_some(e)
    })
    .unwrap();
    assert_eq!(
        hb.iter()
            .map(|e| e["data"]["i"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 5]
    );
    let summaries = summaries_counting(&w, "telemetry.till-7.temp", 5, 30);
    assert!(
        summaries
            .iter()
            .all(|s| s["type"] == "weft.agent.aggregate")
    );
    if summaries.len() == 1 {
        assert_eq!(summaries[0]["data"]["fields"]["c"]["avg"], 22.0);
        assert_eq!(summaries[0]["data"]["fields"]["c"]["max"], 24.0);
    }
    let s = w.status().unwrap();
    let c = &s["counters"];
    assert_eq!(c["filtered"].as_u64(), Some(5), "{s}");
    assert_eq!(c["sampled_out"].as_u64(), Some(8), "{s}");
    assert_eq!(c["aggregated"].as_u64(), Some(5), "{s}");
    assert_eq!(
        c["bad_input"].as_u64(),
        Some(3),
        "two bad events and a query parameter: {s}"
    );

    // Downlink: an operator publishes a command; the agent hands it to its command.
    let auth = format!("Bearer {}", w.token);
    let cmd = br#"{"specversion":"1.0","id":"c1","source":"ops","type":"reboot","data":{"action":"reboot"}}"#;
    let (code, resp) = http_post(
        &node_http(73, 0),
        "/v1/streams/devices.till-7.commands/events",
        &[
            ("content-type", "application/cloudevents+json"),
            ("authorization", &auth),
        ],
        cmd,
    )
    .unwrap();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&resp));
    let got = wait_for(Duration::from_secs(30), || {
        let t = std::fs::read_to_string(&commands).ok()?;
        t.contains("reboot").then_some(t)
    })
    .unwrap_or_else(|| panic!("command never reached the device\n{}", w.logs()));
    let line: serde_json::Value = serde_json::from_str(got.lines().next().unwrap()).unwrap();
    assert_eq!(line["stream"], "devices.till-7.commands");
    assert_eq!(line["payload"]["data"]["action"], "reboot");

    // A refusal after sequencing: the event goes to dead letters and a void event takes its
    // number, so the device's next event is still delivered (nodes deliver in order).
    let batch = serde_json::json!([
        {"specversion": "1.0", "id": "o-1", "source": "test", "type": "t", "weftstream": "other.x", "data": {}},
        {"specversion": "1.0", "id": "a-1", "source": "test", "type": "t", "weftstream": "telemetry.till-7.after", "data": {"k": 1}},
    ]);
    let (code, resp) = http_post(
        &agent_http(73),
        "/v1/events",
        &[("content-type", "application/cloudevents-batch+json")],
        &serde_json::to_vec(&batch).unwrap(),
    )
    .unwrap();
    assert_eq!(code, 202, "{}", String::from_utf8_lossy(&resp));
    let after = wait_for(Duration::from_secs(30), || {
        let e = w.events(0, "telemetry.till-7.after")?;
        (!e.is_empty()).then_some(e)
    })
    .unwrap_or_else(|| {
        panic!(
            "the event after a refused one was never delivered\n{}",
            w.logs()
        )
    });
    assert_eq!(after[0]["data"]["k"], 1);
    let s = w.status().unwrap();
    assert_eq!(s["counters"]["dead"].as_u64(), Some(1), "{s}");
    assert!(w.rejected(0, "stream_not_stored") > 0, "{}", w.metrics(0));

    // A device the node does not know is refused, counted and audited.
    let dir = &w.dir;
    let out = run_ok(
        std::path::Path::new(AGENT),
        &[
            "keygen",
            "--out",
            dir.join("stranger.key").to_str().unwrap(),
        ],
    );
    assert!(out.contains("public key:"));
    let text = std::fs::read_to_string(&w.agent_config)
        .unwrap()
        .replace("device.key", "stranger.key")
        .replace("agent-data", "stranger-data")
        .replace(&agent_http(73), "127.73.0.51:8700")
        .replace("[inputs.stdin]\nstream = \"telemetry.till-7\"\n", "");
    std::fs::write(dir.join("stranger.toml"), text).unwrap();
    let mut stranger = Proc {
        child: Some(
            std::process::Command::new(AGENT)
                .args([
                    "run",
                    "--config",
                    dir.join("stranger.toml").to_str().unwrap(),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.join("stranger.log")).unwrap())
                .spawn()
                .unwrap(),
        ),
        log: dir.join("stranger.log"),
    };
    let err = wait_for(Duration::from_secs(30), || {
        let (_, b) = http_get("127.73.0.51:8700", "/v1/status")?;
        let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
        v["candidates"][0]["error"]
            .as_str()
            .filter(|e| e.contains("device_not_allowed"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("stranger not refused\n{}", stranger.log()));
    assert!(err.contains("not in this node's edge.devices"), "{err}");
    stranger.kill9();
    let m = w.metrics(0);
    assert!(w.rejected(0, "device_not_allowed") > 0, "{m}");
    assert!(
        w.nodes[0].log().contains("edge agent refused"),
        "not audited"
    );
    let _ = std::fs::remove_file(&commands);
}

#[test]
fn a_device_enrolled_by_policy_is_stamped_and_gets_its_rules() {
    let files = "[[inputs.files]]\npath = \"app.log\"\nstream = \"telemetry.till-7.log\"\nfrom = \"start\"\n";
    let mut w = World::new("policy", 74, 1, "", &[], files);
    let bundle = format!(
        r#"format = 1
epoch = 1
[jurisdictions.EU]
regions = ["aws:eu-west-1"]
nodes = ["{node}"]
[tenants.acme]
[principals.till-7]
tenant = "acme"
device_key = "{device}"
[roles.reader]
[principals.operator]
tenant = "acme"
roles = ["reader"]
token_sha256 = "{token_hash}"
[[access]]
name = "operator-reads"
effect = "allow"
actions = ["read", "subscribe"]
streams = ["telemetry.>"]
roles = ["reader"]
[classes.eu-personal]
jurisdictions = ["EU"]
transit = "forbidden"
[[streams]]
pattern = "telemetry.>"
classification = "eu-personal"
replication = "all"
[devices.till-7]
streams = ["telemetry.till-7", "telemetry.till-7.>"]
jurisdiction = "EU"
[[devices.till-7.rules]]
stream = "telemetry.till-7"
sample = 2
"#,
        node = w.node_keys[0],
        device = w.agent_key,
        token_hash = w.token_hash
    );
    let ops_key = sign_bundle(&w, 1, &bundle);
    use_policy(&w, &ops_key, false);
    w.start_node(0);
    w.start_agent(false);
    let s = wait_for(Duration::from_secs(30), || {
        w.status()
            .filter(|s| s["policy_epoch"] == 1 && !s["connected"].is_null())
    })
    .unwrap_or_else(|| panic!("agent never got epoch 1\n{}", w.logs()));
    assert_eq!(s["connected"]["node"], "n0");
    w.feed(0..10);
    let events = wait_for(Duration::from_secs(30), || {
        let e = w.events(0, STREAM)?;
        (e.len() >= 5).then_some(e)
    })
    .unwrap_or_else(|| panic!("events never arrived\n{}", w.logs()));
    // Sampled 1 in 2 by the policy's rule, stamped with the stream's class by the device.
    assert_eq!(ns(&events), vec![0, 2, 4, 6, 8]);
    assert!(
        events
            .iter()
            .all(|e| e["weftclassification"] == "eu-personal"),
        "{events:?}"
    );
    assert!(events.iter().all(|e| e["weftprincipal"] == "till-7"));
    let log = w.nodes[0].log();
    assert!(
        log.contains("edge agent connected") && log.contains("\"allow\""),
        "admission not audited"
    );
    // `weft-agent status`: the connected node, its RTT, the outbox and the drops.
    let out = run_ok(
        &agent_bin(),
        &["status", "--config", w.agent_config.to_str().unwrap()],
    );
    assert!(
        out.contains("connected:     n0 at 127.74.0.1:7500"),
        "{out}"
    );
    assert!(
        out.contains("rtt:") && out.contains("outbox:") && out.contains("sampled out 5"),
        "{out}"
    );

    // The file follower: lines appended become events; after kill -9 and a restart it
    // resumes at its stored offset (nothing skipped, nothing repeated).
    let append = |lines: &[&str]| {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(w.dir.join("app.log"))
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    };
    append(&["l0", "l1", "l2"]);
    let texts = |w: &World| -> Option<Vec<String>> {
        Some(
            w.events(0, "telemetry.till-7.log")?
                .iter()
                .map(|e| e["data"].as_str().unwrap_or("?").to_string())
                .collect(),
        )
    };
    wait_for(Duration::from_secs(30), || {
        texts(&w).filter(|t| t.len() >= 3)
    })
    .unwrap_or_else(|| panic!("followed lines never arrived\n{}", w.logs()));
    w.agent.as_mut().unwrap().kill9();
    append(&["l3", "l4"]);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || {
        texts(&w).filter(|t| t.len() >= 5)
    })
    .unwrap_or_else(|| panic!("lines after the restart never arrived\n{}", w.logs()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(texts(&w).unwrap(), vec!["l0", "l1", "l2", "l3", "l4"]);
}

/// In `refuse` mode (the default) a full outbox makes standard input and a followed file
/// wait, not lose lines: neither has anyone to be refused to, so each offers its lines
/// again until they fit, and reads no further meanwhile. Before, the lines past the
/// outbox's bound were refused (counted) and the follower's offset moved past them. The
/// HTTP input is all or nothing there: a 507 says nothing was taken.
#[test]
fn a_full_outbox_makes_standard_input_and_a_followed_file_wait_not_lose_lines() {
    use std::io::Write as _;
    const N: u64 = 60;
    let extra = "[outbox]\nevents_max = 20\n[[inputs.files]]\npath = \"app.log\"\nstream = \"telemetry.till-7.log\"\nfrom = \"start\"\n";
    let mut w = World::new("fullwait", 89, 1, "", &[], extra);
    // No node yet: everything waits in the outbox, which holds 20 events.
    w.start_agent(false);
    w.feed(0..N);
    {
        let mut f = std::fs::File::create(w.dir.join("app.log")).unwrap();
        for i in 0..N {
            writeln!(f, "line {i}").unwrap();
        }
    }
    wait_for(Duration::from_secs(30), || (depth(&w)? == 20).then_some(()))
        .unwrap_or_else(|| panic!("the outbox never filled: {:?}\n{}", w.status(), w.logs()));
    // A client of the HTTP input gets a 507 that says nothing of its request was taken.
    let batch = serde_json::json!([
        {"specversion": "1.0", "id": "h-0", "source": "test", "type": "t", "weftstream": "telemetry.till-7.http", "data": {"h": 0}},
        {"specversion": "1.0", "id": "h-1", "source": "test", "type": "t", "weftstream": "telemetry.till-7.http", "data": {"h": 1}},
    ]);
    let (code, resp) = http_post(
        &agent_http(89),
        "/v1/events",
        &[("content-type", "application/cloudevents-batch+json")],
        &serde_json::to_vec(&batch).unwrap(),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp).unwrap();
    assert_eq!((code, v["accepted"].as_u64()), (507, Some(0)), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nothing of it was taken")
                && m.contains("it holds 20 of outbox.events_max 20 events")
                && m.contains("events_max is reached")),
        "{v}"
    );
    // The client was refused (counted); the lines wait (counted as waits, not refusals).
    let s = w.status().unwrap();
    assert_eq!(s["counters"]["refused_full"].as_u64(), Some(2), "{s}");
    assert!(s["counters"]["input_waits"].as_u64() >= Some(1), "{s}");
    assert!(
        w.agent_log().contains("waits for room"),
        "{}",
        w.agent_log()
    );
    // The node comes: every line arrives, once and in order.
    w.start_node(0);
    let events = wait_for(Duration::from_secs(60), || {
        let e = w.events(0, STREAM)?;
        (e.len() as u64 >= N).then_some(e)
    })
    .unwrap_or_else(|| panic!("standard input's lines never all arrived\n{}", w.logs()));
    assert_eq!(ns(&events), (0..N).collect::<Vec<_>>(), "standard input");
    let texts = wait_for(Duration::from_secs(60), || {
        let t: Vec<String> = w
            .events(0, "telemetry.till-7.log")?
            .iter()
            .map(|e| e["data"].as_str().unwrap_or("?").to_string())
            .collect();
        (t.len() as u64 >= N).then_some(t)
    })
    .unwrap_or_else(|| panic!("the file's lines never all arrived\n{}", w.logs()));
    let want: Vec<String> = (0..N).map(|i| format!("line {i}")).collect();
    assert_eq!(texts, want, "the followed file");
    let s = w.status().unwrap();
    assert_eq!(s["counters"]["refused_full"].as_u64(), Some(2), "{s}");

    // The offset stored with each part taken is the one past its last line: the node
    // gone again, 60 more lines wait behind a full outbox, the agent is killed -9 and
    // started again, and every line still arrives once.
    w.nodes[0].kill9();
    {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(w.dir.join("app.log"))
            .unwrap();
        for i in N..2 * N {
            writeln!(f, "line {i}").unwrap();
        }
    }
    wait_for(Duration::from_secs(30), || (depth(&w)? == 20).then_some(())).unwrap_or_else(|| {
        panic!(
            "the outbox never filled again: {:?}\n{}",
            w.status(),
            w.logs()
        )
    });
    w.agent.as_mut().unwrap().kill9();
    w.start_agent(false);
    w.start_node(0);
    let texts = wait_for(Duration::from_secs(60), || {
        let t: Vec<String> = w
            .events(0, "telemetry.till-7.log")?
            .iter()
            .map(|e| e["data"].as_str().unwrap_or("?").to_string())
            .collect();
        (t.len() as u64 >= 2 * N).then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "the file's lines after the restart never all arrived\n{}",
            w.logs()
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let want: Vec<String> = (0..2 * N).map(|i| format!("line {i}")).collect();
    assert_eq!(
        w.events(0, "telemetry.till-7.log")
            .unwrap()
            .iter()
            .map(|e| e["data"].as_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>(),
        want,
        "the followed file across a kill -9 while it waited ({} seen first)",
        texts.len()
    );
}

/// SIGTERM stops an agent whose standard input is open and idle (a terminal, a pipe whose
/// writer is quiet): the read blocked on it does not hold up the stop. Before, the runtime
/// waited for that read at shutdown, until a line came.
#[test]
fn an_idle_standard_input_does_not_hold_up_a_stop() {
    let mut w = World::new("stopidle", 90, 1, "", &[], "");
    w.start_agent(false);
    wait_for(Duration::from_secs(20), || w.status())
        .unwrap_or_else(|| panic!("the agent never answered\n{}", w.logs()));
    w.feed(0..3);
    wait_for(Duration::from_secs(20), || (depth(&w)? == 3).then_some(()))
        .unwrap_or_else(|| panic!("the lines never reached the outbox\n{}", w.logs()));
    // Standard input stays open (the test holds its write end) and nothing more comes.
    let child = w.agent.as_mut().unwrap().child.as_mut().unwrap();
    let pid = child.id().to_string();
    let out = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .output()
        .unwrap();
    assert!(out.status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not stop within 15 s of SIGTERM\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}\n{}", w.logs());
    assert!(w.agent_log().contains("stopping"), "{}", w.agent_log());
}

/// A followed file truncated and written again past the old offset between two polls
/// (logrotate's `copytruncate`, then a burst of lines) is read from its start: the bytes
/// just before the offset no longer match. Before, only a shorter file showed a
/// truncation, and the follower read on from the old offset, mid-line.
#[test]
fn a_file_truncated_and_rewritten_within_one_poll_is_read_from_its_start() {
    use std::io::Write as _;
    let files = "[[inputs.files]]\npath = \"app.log\"\nstream = \"telemetry.till-7.log\"\nfrom = \"start\"\n";
    let mut w = World::new("copytrunc", 91, 1, "", &[], files);
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || connected_to(&w))
        .unwrap_or_else(|| panic!("agent never connected\n{}", w.logs()));
    let log = w.dir.join("app.log");
    std::fs::write(&log, "a0\na1\na2\n").unwrap();
    let texts = |w: &World| -> Vec<String> {
        w.events(0, "telemetry.till-7.log")
            .unwrap_or_default()
            .iter()
            .map(|e| e["data"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    wait_for(Duration::from_secs(30), || {
        (texts(&w).len() >= 3).then_some(())
    })
    .unwrap_or_else(|| panic!("the first lines never arrived\n{}", w.logs()));
    // Truncated in place and written again, longer than before, at once.
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        for i in 0..10 {
            writeln!(f, "b-line-{i}").unwrap();
        }
    }
    let mut want: Vec<String> = ["a0", "a1", "a2"].map(String::from).to_vec();
    want.extend((0..10).map(|i| format!("b-line-{i}")));
    wait_for(Duration::from_secs(30), || {
        (texts(&w).len() >= 13).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the rewritten lines never all arrived: {:?}\n{}",
            texts(&w),
            w.logs()
        )
    });
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(texts(&w), want);
}

/// A followed file rotated away (renamed, a new one made at its path, as logrotate does)
/// is read to its end, including what its writer appends to it after the rename and a
/// last line without its newline, and the new file is read from its start: every line
/// once, in order. Before, the file was reopened by path at every poll, and what the old
/// one got after the last poll was lost.
#[test]
fn a_rotated_file_is_read_to_its_end_and_the_new_one_from_its_start() {
    use std::io::Write as _;
    let files = "[[inputs.files]]\npath = \"app.log\"\nstream = \"telemetry.till-7.log\"\nfrom = \"start\"\n";
    let mut w = World::new("rotate", 87, 1, "", &[], files);
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || connected_to(&w))
        .unwrap_or_else(|| panic!("agent never connected\n{}", w.logs()));
    let log = w.dir.join("app.log");
    let append = |path: &std::path::Path, text: &str| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    let texts = |w: &World| -> Vec<String> {
        w.events(0, "telemetry.till-7.log")
            .unwrap_or_default()
            .iter()
            .map(|e| e["data"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    append(&log, "a0\na1\n");
    wait_for(Duration::from_secs(30), || {
        (texts(&w).len() >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("first lines never arrived\n{}", w.logs()));
    // The writer still holds the old file: rotated away, then written to, a last line
    // without its newline; the new file gets lines of its own.
    let mut writer = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::rename(&log, w.dir.join("app.log.1")).unwrap();
    writer.write_all(b"a2\na3").unwrap();
    append(&log, "b0\nb1\n");
    let want = ["a0", "a1", "a2", "a3", "b0", "b1"];
    wait_for(Duration::from_secs(30), || {
        (texts(&w).len() >= want.len()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "lines after the rotation never arrived: {:?}\n{}",
            texts(&w),
            w.logs()
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(texts(&w), want);
}

/// An agent whose outbox is lost (its data directory wiped, the device key kept) starts
/// numbering again at 1; the node it connects to already holds its numbers, tells it so in
/// the profile, and the agent numbers on after them. Before, the new events took numbers the
/// fabric already had, were answered "durable" as duplicates and never stored.
#[test]
fn a_wiped_outbox_numbers_on_after_what_the_node_holds() {
    let mut w = World::new("wiped", 75, 1, "", &[], "");
    w.start_node(0);
    w.start_agent(false);
    w.feed(0..100);
    wait_for(Duration::from_secs(60), || {
        (w.events(0, STREAM)?.len() >= 100 && depth(&w)? == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("first 100 never delivered\n{}", w.logs()));
    w.agent.as_mut().unwrap().kill9();
    std::fs::remove_dir_all(w.dir.join("agent-data")).unwrap();
    w.start_agent(false);
    w.feed(100..200);
    let events = wait_for(Duration::from_secs(60), || {
        let e = w.events(0, STREAM)?;
        (e.len() >= 200).then_some(e)
    })
    .unwrap_or_else(|| {
        panic!(
            "the node never showed 200 events: {:?}\n{}",
            w.events(0, STREAM).map(|e| e.len()),
            w.logs()
        )
    });
    assert_exactly_once_in_order(&events, 200, &w.agent_key, "after the outbox was wiped");
    assert!(
        w.agent_log().contains("numbering on after them"),
        "{}",
        w.logs()
    );
}

/// A whole batch's worth of events the device may not publish (a stream it is not
/// enrolled for) at the head of the outbox goes to the dead letters, and the drain goes on
/// with the events behind them at once (it used to stop until some other input came).
#[test]
fn a_batch_of_dead_letters_at_the_head_does_not_stall_the_drain() {
    let mut w = World::with_device(
        "deadhead",
        76,
        1,
        "batch_len_max = 8\n",
        "streams = [\"telemetry.till-7\"]\n",
        &[],
        "",
    );
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || w.status())
        .unwrap_or_else(|| panic!("agent never answered\n{}", w.logs()));
    for i in 0..20 {
        let ce = format!(
            r#"{{"specversion":"1.0","id":"o-{i}","source":"it","type":"t","datacontenttype":"application/json","data":{{"o":{i}}}}}"#
        );
        let (code, resp) = http_post(
            &agent_http(76),
            "/v1/streams/other.x/events",
            &[("content-type", "application/cloudevents+json")],
            ce.as_bytes(),
        )
        .unwrap();
        assert_eq!(code, 202, "{}", String::from_utf8_lossy(&resp));
    }
    w.feed(0..10);
    wait_for(Duration::from_secs(30), || (depth(&w)? == 30).then_some(()))
        .unwrap_or_else(|| panic!("outbox never held 30: {:?}\n{}", w.status(), w.logs()));
    w.start_node(0);
    let events = wait_for(Duration::from_secs(30), || {
        let e = w.events(0, STREAM)?;
        (e.len() >= 10 && depth(&w)? == 0).then_some(e)
    })
    .unwrap_or_else(|| panic!("drain stalled: {:?}\n{}", w.status(), w.logs()));
    assert_exactly_once_in_order(&events, 10, &w.agent_key, "behind 20 dead letters");
    let s = w.status().unwrap();
    assert_eq!(s["counters"]["dead"].as_u64(), Some(20), "{s}");
}

/// A node that stays connected but cannot store (its store is full) is left out after a
/// few failed batches, and the agent delivers through the next node; its status says why.
/// Before, the agent retried the nearest node for ever.
#[test]
fn a_node_that_cannot_store_is_left_out_for_the_next_one() {
    let mut w = World::new("fullstore", 77, 2, "", &[0.0, 50.0], "");
    // Node 0, the nearer, holds at most 20 events.
    let n0 = w.dir.join("n0.toml");
    let text = std::fs::read_to_string(&n0).unwrap();
    std::fs::write(&n0, format!("{text}\n[limits]\nevents_max = 20\n")).unwrap();
    w.start_node(0);
    w.start_node(1);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || {
        (connected_to(&w)? == "n0").then_some(())
    })
    .unwrap_or_else(|| panic!("agent never used n0\n{}", w.logs()));
    w.feed(0..300);
    let events = wait_for(Duration::from_secs(90), || {
        let e = w.events(1, STREAM)?;
        (e.len() >= 300 && depth(&w)? == 0).then_some(e)
    })
    .unwrap_or_else(|| {
        panic!(
            "never all on n1: {:?} {:?}\n{}",
            w.events(1, STREAM).map(|e| e.len()),
            w.status(),
            w.logs()
        )
    });
    assert_exactly_once_in_order(&events, 300, &w.agent_key, "through n1");
    let s = w.status().unwrap();
    let n0 = s["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["addr"] == "127.77.0.1:7500")
        .unwrap()
        .clone();
    assert!(
        n0["error"]
            .as_str()
            .is_some_and(|e| e.contains("batches in a row failed")),
        "{s}"
    );
    assert!(w.agent_log().contains("leaving a node out"), "{}", w.logs());
}

/// Events a device signed and could not deliver (the node's store was full), which an
/// erase of the device's principal then covers, are settled: the node answers their batch
/// durable, and the outbox empties. Before, the node answered `failed` and the agent
/// resent them for ever.
#[test]
fn signed_events_an_erase_covers_leave_the_outbox() {
    let mut w = World::new("erasedbatch", 78, 1, "", &[], "");
    let n0 = w.dir.join("n0.toml");
    let text = std::fs::read_to_string(&n0).unwrap();
    let text = text.replacen("\n[edge]\n", "\nadmin = true\n[edge]\n", 1);
    std::fs::write(&n0, format!("{text}\n[limits]\nevents_max = 20\n")).unwrap();
    w.start_node(0);
    let node = node_http(78, 0);
    let auth = format!("Bearer {}", w.token);
    let post = |path: &str, content_type: &str, body: &[u8]| {
        http_post(
            &node,
            path,
            &[("content-type", content_type), ("authorization", &auth)],
            body,
        )
        .unwrap()
    };
    // The operator's twenty events fill the store (erased numbers are bounded by
    // `events_max` too, so the device's ten fit under it).
    wait_for(Duration::from_secs(20), || {
        http_get(&node, "/healthz").filter(|(c, _)| *c == 200)
    })
    .unwrap_or_else(|| panic!("node never up\n{}", w.logs()));
    let batch: Vec<String> = (0..20)
        .map(|k| {
            format!(
                r#"{{"specversion":"1.0","id":"fill-{k}","source":"it","type":"t","datacontenttype":"application/json","data":{{"k":{k}}}}}"#
            )
        })
        .collect();
    let (code, body) = post(
        "/v1/streams/fill.x/events",
        "application/cloudevents-batch+json",
        format!("[{}]", batch.join(",")).as_bytes(),
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || connected_to(&w))
        .unwrap_or_else(|| panic!("agent never connected\n{}", w.logs()));
    w.feed(0..10);
    // Signed, refused (store full), retried: all ten wait in the outbox.
    wait_for(Duration::from_secs(30), || {
        (depth(&w)? == 10 && w.agent_log().contains("failed to store a batch")).then_some(())
    })
    .unwrap_or_else(|| panic!("the batch never failed: {:?}\n{}", w.status(), w.logs()));
    let erase = |principal: &str| {
        let body = format!(r#"{{"principal": "{principal}", "tenant": "acme"}}"#);
        let (code, resp) = post("/v1/erase", "application/json", body.as_bytes());
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&resp));
    };
    erase("till-7");
    wait_for(Duration::from_secs(60), || (depth(&w)? == 0).then_some(())).unwrap_or_else(|| {
        panic!(
            "the erased events never left the outbox: {:?}\n{}",
            w.status(),
            w.logs()
        )
    });
    assert_eq!(w.events(0, STREAM).map(|e| e.len()), Some(0));
    assert!(w.rejected(0, "erased") > 0, "{}", w.metrics(0));
    // The store still holds the operator's twenty events only.
    assert_eq!(w.events(0, "fill.x").map(|e| e.len()), Some(20));
}

#[test]
fn an_aggregate_window_open_at_a_kill_9_keeps_its_events() {
    // Every line on standard input is folded into one summary per 30 s window.
    const WINDOW_MS: u64 = 30_000;
    let rules = r#"
[[edge.devices.rules]]
stream = "telemetry.till-7"
aggregate = { window_s = 30, fields = ["n"] }
"#;
    let mut w = World::with_device("windowkill", 79, 1, "", rules, &[], "");
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || connected_to(&w))
        .unwrap_or_else(|| panic!("agent never connected\n{}", w.logs()));
    // Start early in a window, so that the kill and the restart fall inside it.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let into = now() % WINDOW_MS;
    if into > 5_000 {
        std::thread::sleep(Duration::from_millis(WINDOW_MS - into + 200));
    }
    let window_start = now() - now() % WINDOW_MS;
    w.feed(0..40);
    // Folded and committed (the counter is written in the transaction that keeps the
    // window).
    wait_for(Duration::from_secs(10), || {
        (w.status()?["counters"]["aggregated"].as_u64()? == 40).then_some(())
    })
    .unwrap_or_else(|| panic!("the agent never folded 40 lines\n{}", w.logs()));
    w.agent.as_mut().unwrap().kill9();
    assert!(
        now() < window_start + WINDOW_MS,
        "the window ended before the kill; the test proves nothing"
    );
    assert_eq!(
        w.events(0, STREAM).map(|e| e.len()),
        Some(0),
        "a summary left before the kill; the test proves nothing"
    );
    w.start_agent(false);
    w.feed(40..50);
    let summaries = summaries_counting(&w, STREAM, 50, 60);
    assert!(
        w.agent_log().contains("aggregate windows resumed"),
        "{}",
        w.logs()
    );
    let first = &summaries[0]["data"];
    assert_eq!(first["window_start_ms"].as_u64(), Some(window_start));
    // The lines before the kill are in the first window's figures: 0..=39 at least.
    assert_eq!(first["fields"]["n"]["min"], 0.0, "{summaries:?}");
    assert!(first["fields"]["n"]["count"].as_u64().unwrap() >= 40);
}

#[test]
fn a_full_outbox_still_takes_aggregate_summaries() {
    let rules = r#"
[[edge.devices.rules]]
stream = "telemetry.till-7"
aggregate = { window_s = 2, fields = ["n"] }
"#;
    // Five events fill the outbox; the overflow rule refuses the sixth.
    let outbox = "[outbox]\nevents_max = 5\noverflow = \"refuse\"\n";
    let mut w = World::with_device("reserve", 80, 1, "", rules, &[], outbox);
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || connected_to(&w))
        .unwrap_or_else(|| panic!("agent never connected\n{}", w.logs()));
    // Cut off: what follows stays in the outbox.
    w.nodes[0].kill9();
    let fill = |from: usize, n: usize| {
        let batch: Vec<serde_json::Value> = (from..from + n)
            .map(|i| {
                serde_json::json!({"specversion": "1.0", "id": format!("fill-{i}"),
                    "source": "test", "type": "fill", "data": {"i": i}})
            })
            .collect();
        http_post(
            &agent_http(80),
            "/v1/streams/telemetry.till-7.fill/events",
            &[("content-type", "application/cloudevents-batch+json")],
            &serde_json::to_vec(&batch).unwrap(),
        )
        .unwrap()
    };
    let (code, resp) = fill(0, 5);
    assert_eq!(code, 202, "{}", String::from_utf8_lossy(&resp));
    let (code, resp) = fill(5, 1);
    assert_eq!(code, 507, "full: {}", String::from_utf8_lossy(&resp));
    // Ten lines folded into the aggregate; its summary finds the outbox full and is taken
    // (summaries have a budget of their own).
    w.feed(0..10);
    let status = wait_for(Duration::from_secs(20), || {
        let s = w.status()?;
        (s["counters"]["summaries"].as_u64()? >= 1).then_some(s)
    })
    .unwrap_or_else(|| panic!("no summary was taken into the full outbox\n{}", w.logs()));
    assert_eq!(
        status["counters"]["aggregated"].as_u64(),
        Some(10),
        "{status}"
    );
    assert_eq!(
        status["counters"]["refused_full"].as_u64(),
        Some(1),
        "{status}"
    );
    assert!(status["outbox_depth"].as_u64().unwrap() > 5, "{status}");
    // Back online: the summaries arrive and count every line.
    w.start_node(0);
    summaries_counting(&w, STREAM, 10, 60);
}

/// A summary that finds the summaries' budget full is not lost: its window stays open past
/// its end and goes on folding lines, and once the drain has made room one summary covers
/// the whole span. New rules arriving then wait for room for every open window's summary,
/// and take them all, past a budget smaller than the windows open, when the outbox holds
/// none.
#[test]
fn a_window_whose_summary_finds_the_budget_full_stays_open() {
    let rules = r#"
[[edge.devices.rules]]
stream = "telemetry.>"
aggregate = { window_s = 1, fields = ["n"] }
"#;
    let outbox = "[outbox]\nsummaries_max = 2\n";
    let mut w = World::with_device("deferred", 81, 1, "", rules, &[], outbox);
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || connected_to(&w))
        .unwrap_or_else(|| panic!("agent never connected\n{}", w.logs()));
    // Cut off: the summaries stay in the outbox.
    w.nodes[0].kill9();
    fn wait_counter(w: &World, name: &str, n: u64) {
        wait_for(Duration::from_secs(20), || {
            (w.status()?["counters"][name].as_u64()? >= n).then_some(())
        })
        .unwrap_or_else(|| panic!("{name} never reached {n}\n{}", w.logs()))
    }
    // Two windows close: the budget is full.
    w.feed(0..10);
    wait_counter(&w, "summaries", 1);
    w.feed(10..20);
    wait_counter(&w, "summaries", 2);
    // The third window's summary finds no room: the window stays open, twice over, and
    // folds the lines that come meanwhile.
    w.feed(20..30);
    wait_counter(&w, "summaries_deferred", 1);
    w.feed(30..40);
    wait_counter(&w, "summaries_deferred", 2);
    // Two more streams open two more windows, which stay open too.
    for sub in ["a", "b"] {
        let batch: Vec<serde_json::Value> = (0..10)
            .map(|i| {
                serde_json::json!({"specversion": "1.0", "id": format!("{sub}-{i}"),
                    "source": "test", "type": "reading", "data": {"n": i}})
            })
            .collect();
        let (code, resp) = http_post(
            &agent_http(81),
            &format!("/v1/streams/{STREAM}.{sub}/events"),
            &[("content-type", "application/cloudevents-batch+json")],
            &serde_json::to_vec(&batch).unwrap(),
        )
        .unwrap();
        assert_eq!(code, 202, "{}", String::from_utf8_lossy(&resp));
    }
    wait_counter(&w, "summaries_deferred", 4);
    let status = w.status().unwrap();
    assert_eq!(
        status["counters"]["summaries"].as_u64(),
        Some(2),
        "{status}"
    );
    assert_eq!(
        status["counters"]["aggregated"].as_u64(),
        Some(60),
        "{status}"
    );
    assert_eq!(
        status["counters"]["refused_full"].as_u64(),
        Some(0),
        "{status}"
    );
    assert!(
        w.agent_log()
            .contains("budget for aggregate summaries is full"),
        "{}",
        w.logs()
    );
    // Back online with new rules (2 s windows): the three open windows close into a
    // budget of two once the held summaries have drained, and the summaries count every
    // line; the first stream's spans more than a second.
    let config = w.dir.join("n0.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("window_s = 1", "window_s = 2")).unwrap();
    w.start_node(0);
    let summaries = summaries_counting(&w, STREAM, 40, 60);
    let long = summaries
        .iter()
        .map(|s| &s["data"])
        .find(|d| {
            d["window_end_ms"].as_u64().unwrap() - d["window_start_ms"].as_u64().unwrap() > 1000
        })
        .unwrap_or_else(|| panic!("no summary spans more than its window: {summaries:?}"));
    assert!(long["count"].as_u64().unwrap() >= 20, "{long}");
    assert_eq!(long["window_s"], 1, "{long}");
    for sub in ["a", "b"] {
        summaries_counting(&w, &format!("{STREAM}.{sub}"), 10, 30);
    }
    // The new rules are in force: a line now makes a 2 s window.
    wait_for(Duration::from_secs(20), || {
        w.agent_log()
            .matches("local rules in force")
            .nth(1)
            .map(|_| ())
    })
    .unwrap_or_else(|| panic!("the new rules never came into force\n{}", w.logs()));
    w.feed(40..45);
    let after = summaries_counting(&w, STREAM, 45, 30);
    assert_eq!(after.last().unwrap()["data"]["window_s"], 2, "{after:?}");
}

/// Writes `bundle{epoch}.toml` (enrolling `device` as `till-7`, with `extra` appended) and
/// signs it with the test's operator key (`ops.key`, made on first use) into
/// `bundle{epoch}.cbor`. Returns the operator's public key.
fn signed_bundle(w: &World, epoch: u64, device: &str, extra: &str) -> String {
    let bundle = format!(
        r#"format = 1
epoch = {epoch}
[jurisdictions.EU]
regions = ["aws:eu-west-1"]
nodes = ["{node}"]
[tenants.acme]
[principals.till-7]
tenant = "acme"
device_key = "{device}"
[roles.reader]
[principals.operator]
tenant = "acme"
roles = ["reader"]
token_sha256 = "{token_hash}"
[[access]]
name = "operator-reads"
effect = "allow"
actions = ["read", "subscribe"]
streams = ["telemetry.>"]
roles = ["reader"]
[classes.public]
anywhere = true
[[streams]]
pattern = "telemetry.till-7.counts"
classification = "public"
replication = "all"
conflict = "counter"
[[streams]]
pattern = "telemetry.>"
classification = "public"
replication = "all"
[devices.till-7]
streams = ["telemetry.till-7", "telemetry.till-7.>"]
jurisdiction = "EU"
{extra}
"#,
        node = w.node_keys[0],
        token_hash = w.token_hash
    );
    sign_bundle(w, epoch, &bundle)
}

/// Writes `text` as `bundle{epoch}.toml` and signs it with the test's operator key
/// (`ops.key`, made on first use) into `bundle{epoch}.cbor`. Returns the operator's
/// public key.
fn sign_bundle(w: &World, epoch: u64, text: &str) -> String {
    let weft = weft_bin();
    let ops = w.dir.join("ops.key");
    let public = w.dir.join("ops.pub");
    if !ops.exists() {
        let out = run_ok(&weft, &["keygen", "--out", ops.to_str().unwrap()]);
        let key = out
            .lines()
            .find_map(|l| l.strip_prefix("public key:"))
            .unwrap_or_else(|| panic!("no public key in {out}"))
            .trim()
            .to_string();
        std::fs::write(&public, key).unwrap();
    }
    let toml = w.dir.join(format!("bundle{epoch}.toml"));
    std::fs::write(&toml, text).unwrap();
    let cbor = w.dir.join(format!("bundle{epoch}.cbor"));
    run_ok(
        &weft,
        &[
            "policy",
            "sign",
            "--key",
            ops.to_str().unwrap(),
            "--out",
            cbor.to_str().unwrap(),
            toml.to_str().unwrap(),
        ],
    );
    std::fs::read_to_string(&public).unwrap()
}

/// Node 0 trusts `ops_key` and starts under `bundle1.cbor`; with `admin`, its `operator`
/// principal is an admin (for `weft policy push` and `GET /v1/audit`).
fn use_policy(w: &World, ops_key: &str, admin: bool) {
    let cfg = w.dir.join("n0.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    if admin {
        text = text.replace(
            &format!("token_sha256 = \"{}\"", w.token_hash),
            &format!("token_sha256 = \"{}\"\nadmin = true", w.token_hash),
        );
    }
    std::fs::write(
        &cfg,
        format!("{text}[policy]\noperators = [\"{ops_key}\"]\nbundle = \"bundle1.cbor\"\n"),
    )
    .unwrap();
}

/// The edge port applies the policy's rate limits to device batches (the agent is told
/// busy and waits; nothing is lost), writes its refusals to the audit log, and cuts off a
/// device the moment a pushed epoch enrolls another key under its name.
#[test]
fn edge_batches_are_rate_limited_and_a_rekeyed_device_is_cut_off() {
    let mut w = World::new("edgepolicy", 82, 1, "", &[], "");
    let limits = "[[limits]]\nprincipal = \"till-7\"\nevents_per_s = 5\nburst = 4\n";
    let ops_key = signed_bundle(&w, 1, &w.agent_key.clone(), limits);
    use_policy(&w, &ops_key, true);
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || {
        w.status()
            .filter(|s| s["policy_epoch"] == 1 && !s["connected"].is_null())
    })
    .unwrap_or_else(|| panic!("agent never got epoch 1\n{}", w.logs()));
    // 20 events against a burst of 4 at 5 a second: batches are cut to the burst, the
    // bucket answers busy, and every event arrives once, in order.
    w.feed(0..20);
    let events = wait_for(Duration::from_secs(60), || {
        let e = w.events(0, STREAM)?;
        (e.len() >= 20).then_some(e)
    })
    .unwrap_or_else(|| panic!("the 20 events never arrived\n{}", w.logs()));
    assert_exactly_once_in_order(&events, 20, &w.agent_key, "under a rate limit");
    let limited = w.rejected(0, "rate_limited");
    assert!(limited >= 1, "no edge batch was rate limited\n{}", w.logs());
    let audited = |reason: &str| {
        wait_for(Duration::from_secs(10), || {
            let (code, body) = http_get_as(
                &node_http(82, 0),
                &format!("/v1/audit?reason={reason}"),
                Some(&w.token),
            )?;
            let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
            (code == 200).then_some(())?;
            v["entries"]
                .as_array()?
                .iter()
                .find(|e| e["reason"] == reason)
                .cloned()
        })
        .unwrap_or_else(|| panic!("no audit entry {reason}\n{}", w.logs()))
    };
    let entry = audited("rate_limited");
    assert_eq!(entry["principal"], "till-7", "{entry}");

    // Epoch 2 enrolls another key as till-7 (the device's was stolen, say): the agent's
    // connection is closed within the poll, refused and audited, and stays refused.
    let other = w.dir.join("other-device.key");
    let out = run_ok(&agent_bin(), &["keygen", "--out", other.to_str().unwrap()]);
    let other_key = out
        .lines()
        .find_map(|l| l.strip_prefix("public key:"))
        .unwrap()
        .trim()
        .to_string();
    signed_bundle(&w, 2, &other_key, limits);
    run_ok(
        &weft_bin(),
        &[
            "policy",
            "push",
            "--node",
            &format!("http://{}", node_http(82, 0)),
            "--token-file",
            w.dir.join("client.key.token").to_str().unwrap(),
            w.dir.join("bundle2.cbor").to_str().unwrap(),
        ],
    );
    wait_for(Duration::from_secs(20), || {
        w.status().filter(|s| s["connected"].is_null())
    })
    .unwrap_or_else(|| panic!("the re-keyed device stayed connected\n{}", w.logs()));
    let entry = audited("device_not_enrolled");
    assert!(
        entry["message"]
            .as_str()
            .is_some_and(|m| m.contains(&w.agent_key) && m.contains("epoch 2")),
        "{entry}"
    );
    // The agent read the node's close code: its status says what happened (and it waits
    // seconds, not 250 ms, before it asks again: each refusal is audited).
    let error = wait_for(Duration::from_secs(20), || {
        w.status()?["candidates"][0]["error"]
            .as_str()
            .filter(|e| e.contains("device_not_enrolled"))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no refusal in the agent's status\n{}", w.logs()));
    assert!(error.starts_with("the node refused this device"), "{error}");
}

/// The device is the last hop of its commands: the downlink withholds a command whose
/// residency does not reach the device's enrolled jurisdiction (a US device, EU personal
/// data), counts and audits it, and moves the agent's cursor past it, so a restarted agent
/// does not read it (or cause its audit) again. A command the next epoch classifies public
/// runs; the withheld one never does.
#[test]
fn the_downlink_withholds_commands_the_devices_jurisdiction_may_not_hold() {
    let commands = std::env::temp_dir().join(format!(
        "weft-agent-it-residency-commands-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&commands);
    let downlink = format!(
        "[downlink]\nenabled = true\ncommand = [\"sh\", \"-c\", \"cat >> {}\"]\n",
        commands.display()
    );
    let mut w = World::new("dlresidency", 88, 1, "", &[], &downlink);
    let (node, device, token_hash) = (
        w.node_keys[0].clone(),
        w.agent_key.clone(),
        w.token_hash.clone(),
    );
    let bundle = |epoch: u64, class: &str| {
        format!(
            r#"format = 1
epoch = {epoch}
[jurisdictions.EU]
regions = ["aws:eu-west-1"]
nodes = ["{node}"]
[jurisdictions.US]
regions = ["aws:us-east-1"]
[tenants.acme]
[principals.till-7]
tenant = "acme"
device_key = "{device}"
[roles.ops]
[principals.operator]
tenant = "acme"
roles = ["ops"]
token_sha256 = "{token_hash}"
[[access]]
name = "ops-commands"
effect = "allow"
actions = ["publish", "read", "subscribe"]
streams = ["devices.>"]
roles = ["ops"]
[classes.eu-personal]
jurisdictions = ["EU"]
transit = "forbidden"
[classes.public]
anywhere = true
[[streams]]
pattern = "devices.>"
classification = "{class}"
replication = "all"
[devices.till-7]
streams = ["telemetry.till-7", "telemetry.till-7.>"]
jurisdiction = "US"
"#
        )
    };
    let ops_key = sign_bundle(&w, 1, &bundle(1, "eu-personal"));
    use_policy(&w, &ops_key, true);
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || {
        w.status()
            .filter(|s| s["policy_epoch"] == 1 && !s["connected"].is_null())
    })
    .unwrap_or_else(|| panic!("agent never got epoch 1\n{}", w.logs()));
    let token = w.token.clone();
    let command = |id: &str| send_command(&token, &node_http(88, 0), id);
    let ran = || commands_ran(&commands);
    // c1 is EU personal data (the stream's class in epoch 1): the node (EU) holds it, the
    // US device never gets it.
    command("c1");
    wait_for(Duration::from_secs(30), || {
        (w.rejected(0, "downlink_residency") == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("c1 was not withheld\n{}", w.logs()));
    wait_for(Duration::from_secs(20), || {
        w.agent_log()
            .contains("withheld by the node's policy")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the agent's cursor never moved past c1\n{}", w.logs()));
    let (code, body) = http_get_as(
        &node_http(88, 0),
        "/v1/audit?reason=downlink_residency",
        Some(&w.token),
    )
    .unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let entry = &v["entries"][0];
    assert_eq!(entry["reason"], "downlink_residency", "{v}");
    assert!(
        entry["message"].as_str().is_some_and(|m| m
            .contains("withheld from device till-7 (jurisdiction US)")
            && m.contains("eu-personal")),
        "{entry}"
    );
    // The agent restarts: its cursor is past c1 (no second withholding, no second audit).
    w.agent.as_mut().unwrap().kill9();
    w.start_agent(false);
    // Epoch 2 classifies the commands public: c2 reaches the device; c1 keeps its stamp.
    sign_bundle(&w, 2, &bundle(2, "public"));
    run_ok(
        &weft_bin(),
        &[
            "policy",
            "push",
            "--node",
            &format!("http://{}", node_http(88, 0)),
            "--token-file",
            w.dir.join("client.key.token").to_str().unwrap(),
            w.dir.join("bundle2.cbor").to_str().unwrap(),
        ],
    );
    wait_for(Duration::from_secs(30), || {
        w.status()
            .filter(|s| s["policy_epoch"] == 2 && !s["connected"].is_null())
    })
    .unwrap_or_else(|| panic!("agent never got epoch 2\n{}", w.logs()));
    command("c2");
    // c2 comes after c1 in the log: once c2 ran, c1's fate was decided.
    wait_for(Duration::from_secs(30), || {
        ran().contains(&"c2".to_string()).then_some(())
    })
    .unwrap_or_else(|| panic!("c2 never ran: {:?}\n{}", ran(), w.logs()));
    assert_eq!(ran(), ["c2"], "the EU command never reached the US device");
    assert_eq!(
        w.rejected(0, "downlink_residency"),
        1,
        "c1 was read and withheld again after the restart\n{}",
        w.logs()
    );
    let _ = std::fs::remove_file(&commands);
}

/// An edge batch takes its bytes from the budget HTTP publish bodies share
/// (`limits.publish_bytes_inflight_max`) before it is read: while a slow HTTP client holds
/// the whole budget, the agent's batches are answered `busy` (counted) and wait in its
/// outbox; once the client goes, they arrive once and in order.
#[test]
fn edge_batches_wait_while_http_bodies_hold_the_byte_budget() {
    use std::io::Write as _;
    const N: u64 = 20;
    let mut w = World::new(
        "bodybudget",
        84,
        1,
        "[limits]\nhttp_body_max = 4194304\npublish_bytes_inflight_max = 4194304\n",
        &[],
        "",
    );
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || connected_to(&w))
        .unwrap_or_else(|| panic!("agent never connected\n{}", w.logs()));
    // A slow client declares a body of the whole budget and sends one byte of it.
    let addr = node_http(84, 0);
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        slow,
        "POST /v1/streams/b/events HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\
         content-type: application/cloudevents+json\r\ncontent-length: 4194304\r\n\r\n{{",
        w.token
    )
    .unwrap();
    slow.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    w.feed(0..N);
    wait_for(Duration::from_secs(20), || {
        (w.rejected(0, "edge_busy") >= 3).then_some(())
    })
    .unwrap_or_else(|| panic!("no batch was answered busy\n{}", w.logs()));
    let s = w.status().unwrap();
    assert_eq!(s["counters"]["delivered"].as_u64(), Some(0), "{s}");
    assert_eq!(depth(&w), Some(N), "{s}");
    assert!(
        w.events(0, STREAM).is_some_and(|e| e.is_empty()),
        "stored while the budget was taken"
    );
    // The client goes: its budget is back, and the batches are taken.
    drop(slow);
    wait_for(Duration::from_secs(30), || (depth(&w)? == 0).then_some(()))
        .unwrap_or_else(|| panic!("outbox never drained: {:?}\n{}", w.status(), w.logs()));
    let events = wait_for(Duration::from_secs(20), || {
        let e = w.events(0, STREAM)?;
        (e.len() as u64 >= N).then_some(e)
    })
    .unwrap_or_else(|| panic!("node never showed {N} events\n{}", w.logs()));
    assert_exactly_once_in_order(&events, N, &w.agent_key, "after the budget came back");
}

/// A bare client of the edge protocol (`weft-edge/1`) holding the device key, for what the
/// agent never does: publish without a control stream, send a broken frame, connect twice.
mod raw {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{
        WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
    };
    use rustls::pki_types::{
        CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
    };
    use rustls::{DigitallySignedStruct, SignatureScheme};

    /// Accepts the node's certificate: the test dials the address it started the node on.
    #[derive(Debug)]
    struct AnyNode(WebPkiSupportedAlgorithms);

    impl ServerCertVerifier for AnyNode {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(m, c, d, &self.0)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(m, c, d, &self.0)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    }

    /// Connects to the edge port at `addr` with the device key `seed`.
    pub(super) async fn connect(addr: &str, seed: &[u8; 32]) -> quinn::Connection {
        // RFC 8410 PKCS#8 prefix of an Ed25519 private key.
        let mut pkcs8 = hex::decode("302e020100300506032b657004220420").unwrap();
        pkcs8.extend_from_slice(seed);
        let key = PrivatePkcs8KeyDer::from(pkcs8);
        let pair = rcgen::KeyPair::try_from(&key).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["raw".to_string()])
            .unwrap()
            .self_signed(&pair)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = AnyNode(provider.signature_verification_algorithms);
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(key))
            .unwrap();
        tls.alpn_protocols = vec![weft_fabric::edge::EDGE_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        endpoint
            .connect(addr.parse().unwrap(), "weft-node")
            .unwrap()
            .await
            .unwrap()
    }

    /// Sends one batch stream whose frame body is `body`; the node's answer as JSON.
    pub(super) async fn batch(conn: &quinn::Connection, body: &[u8]) -> serde_json::Value {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut frame = vec![weft_fabric::edge::STREAM_BATCH];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        send.write_all(&frame).await.unwrap();
        send.finish().unwrap();
        let answer = recv.read_to_end(1 << 20).await.unwrap();
        serde_json::from_slice(&answer[4..]).unwrap()
    }

    /// The application close code the node closed `conn` with, waiting up to 20 s.
    pub(super) async fn closed_with(conn: &quinn::Connection) -> Option<u64> {
        match tokio::time::timeout(std::time::Duration::from_secs(20), conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }
}

/// What the edge port enforces on a client that is not the agent: it publishes without a
/// control stream and is still cut off the moment a pushed epoch re-keys its device; a
/// broken frame is answered `failed` (retry), not `refused` (an event dead-lettered); a
/// second connection with the same key replaces the first.
#[test]
fn a_device_without_a_control_stream_is_still_cut_off_when_rekeyed() {
    use weft_fabric::edge::close;
    let mut w = World::new("rawedge", 83, 1, "", &[], "");
    let ops_key = signed_bundle(&w, 1, &w.agent_key.clone(), "");
    use_policy(&w, &ops_key, true);
    w.start_node(0);
    wait_for(Duration::from_secs(30), || {
        let (_, b) = http_get(&node_http(83, 0), "/v1/status")?;
        let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
        (v["policy_epoch"] == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("node never had epoch 1\n{}", w.logs()));
    let seed = weft_agent::keys::load(&w.dir.join("device.key")).unwrap();
    let signer = weft_fabric::Signer::from_secret(&seed);
    let keyed = |stream: &str, seq: u64, key: Option<&str>| {
        let draft = weft_fabric::EventDraft {
            stream: weft_fabric::StreamName::new(stream).unwrap(),
            key: key.map(|k| k.as_bytes().to_vec()),
            seq,
            hlc: weft_fabric::Hlc::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64,
                0,
            )
            .unwrap(),
            security: weft_fabric::SecurityContext {
                tenant: "acme".into(),
                principal: "till-7".into(),
                classification: "public".into(),
                residency: weft_fabric::Residency::Unrestricted,
                scopes: Default::default(),
                policy_epoch: 1,
            },
            content_type: "application/json".into(),
            payload: weft_fabric::Payload::Clear(format!("{{\"n\":{seq}}}").into_bytes()),
            trace: None,
        };
        signer.sign(draft).unwrap().encode()
    };
    let event = |seq: u64| keyed(STREAM, seq, None);
    let edge = "127.83.0.1:7500";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let first = raw::connect(edge, &seed).await;
        // A batch without any control stream: taken.
        let e1 = event(1);
        let answer = raw::batch(&first, &weft_fabric::edge::encode_batch([e1.as_slice()])).await;
        assert_eq!(
            answer["durable"]["ids"].as_array().map(Vec::len),
            Some(1),
            "{answer}"
        );
        // A keyed event on a counter table is a write the table would ignore (a put):
        // refused where it enters, as over HTTP, never stored and silently dropped.
        let put = keyed("telemetry.till-7.counts", 2, Some("door"));
        let answer = raw::batch(&first, &weft_fabric::edge::encode_batch([put.as_slice()])).await;
        assert_eq!(answer["refused"]["reason"], "bad_table_write", "{answer}");
        assert!(
            answer["refused"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("counter table") && m.contains("add and delete")),
            "{answer}"
        );
        // A frame that is not a batch: failed, so the agent retries instead of dropping.
        let answer = raw::batch(&first, b"\xff\xff\xff\xff not a batch").await;
        assert_eq!(answer["failed"]["reason"], "edge_bad_frame", "{answer}");
        // A second connection with the same key replaces the first.
        let second = raw::connect(edge, &seed).await;
        assert_eq!(
            raw::closed_with(&first).await,
            Some(u64::from(close::REPLACED))
        );
        let e2 = event(2);
        let answer = raw::batch(&second, &weft_fabric::edge::encode_batch([e2.as_slice()])).await;
        assert!(answer.get("durable").is_some(), "{answer}");
        // Epoch 2 enrolls another key as till-7: the connection, which never opened a
        // control stream, is closed as not enrolled.
        let out = run_ok(
            &agent_bin(),
            &["keygen", "--out", w.dir.join("k2.key").to_str().unwrap()],
        );
        let other = out
            .lines()
            .find_map(|l| l.strip_prefix("public key:"))
            .unwrap()
            .trim()
            .to_string();
        signed_bundle(&w, 2, &other, "");
        run_ok(
            &weft_bin(),
            &[
                "policy",
                "push",
                "--node",
                &format!("http://{}", node_http(83, 0)),
                "--token-file",
                w.dir.join("client.key.token").to_str().unwrap(),
                w.dir.join("bundle2.cbor").to_str().unwrap(),
            ],
        );
        assert_eq!(
            raw::closed_with(&second).await,
            Some(u64::from(close::NOT_ENROLLED)),
            "the re-keyed device stayed connected\n{}",
            w.logs()
        );
    });
    // Both events are stored, once.
    let events = wait_for(Duration::from_secs(10), || {
        let e = w.events(0, STREAM)?;
        (e.len() >= 2).then_some(e)
    })
    .unwrap_or_else(|| panic!("the raw events were not stored\n{}", w.logs()));
    assert_eq!(ns(&events), vec![1, 2]);
}

/// A device limited to 100 events/s with a burst of 20 drains at about its rate: the node
/// tells the agent the limiter's wait to the millisecond. It took 24.7 s for 500 events
/// (~20/s): every `busy` answer paused the agent a whole second.
#[test]
fn a_rate_limited_device_drains_at_its_rate_not_its_burst() {
    let mut w = World::new("edgerate", 94, 1, "", &[], "");
    let limits = "[[limits]]\nprincipal = \"till-7\"\nevents_per_s = 100\nburst = 20\n";
    let ops_key = signed_bundle(&w, 1, &w.agent_key.clone(), limits);
    use_policy(&w, &ops_key, false);
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || {
        w.status()
            .filter(|s| s["policy_epoch"] == 1 && !s["connected"].is_null())
    })
    .unwrap_or_else(|| panic!("agent never got epoch 1\n{}", w.logs()));
    let start = std::time::Instant::now();
    w.feed(0..500);
    wait_for(Duration::from_secs(60), || {
        w.status()
            .filter(|s| s["counters"]["delivered"].as_u64() >= Some(500))
    })
    .unwrap_or_else(|| panic!("the 500 events were never delivered\n{}", w.logs()));
    let took = start.elapsed();
    eprintln!("500 events at 100/s, burst 20: {took:?}");
    let events = w.events(0, STREAM).unwrap_or_default();
    assert_exactly_once_in_order(&events, 500, &w.agent_key, "under a rate limit");
    assert!(
        w.rejected(0, "rate_limited") >= 1,
        "never rate limited\n{}",
        w.logs()
    );
    // 480 events past the burst at 100 a second: 4.8 s; room for a busy machine, and
    // well under the ~24 s of a one-second pause per batch.
    assert!(
        took < Duration::from_secs(15),
        "500 events took {took:?}\n{}",
        w.logs()
    );

    // A stream the device is not enrolled for: refused at the HTTP input (it was taken,
    // 202, and dead-lettered later), counted, and no dead letter.
    let ce = r#"{"specversion":"1.0","id":"x1","source":"s","type":"t","data":{"n":1}}"#;
    let (code, body) = http_post(
        &agent_http(94),
        "/v1/streams/telemetry.other/events",
        &[("content-type", "application/cloudevents+json")],
        ce.as_bytes(),
    )
    .expect("agent HTTP input");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["reason"], "stream_not_enrolled", "{body}");
    assert_eq!(body["stream"], "telemetry.other", "{body}");
    assert_eq!(
        body["allowed"],
        serde_json::json!(["telemetry.till-7", "telemetry.till-7.>"]),
        "{body}"
    );
    wait_for(Duration::from_secs(10), || {
        w.status()
            .filter(|s| s["counters"]["not_enrolled"].as_u64() == Some(1))
    })
    .unwrap_or_else(|| panic!("the refusal was not counted\n{}", w.logs()));
    let out = run_ok(
        &agent_bin(),
        &["status", "--config", w.agent_config.to_str().unwrap()],
    );
    assert!(
        out.contains("not enrolled 1") && out.contains("dead letters:  0 held"),
        "{out}"
    );
}

/// Misconfigured nodes are logged with their cause (they logged nothing: only `status`
/// showed it): another node's key (as a security matter), the node's mesh port instead of
/// its edge port, and an address where nothing listens; each once, not at every attempt.
/// A second agent on the same data directory is refused; `status` names an agent of
/// another config answering on its address, and stops quietly on a closed pipe.
#[test]
fn misconfigured_nodes_are_logged_and_a_second_agent_is_refused() {
    let mut w = World::new("misconf", 93, 1, "", &[], "");
    let node = w.node_keys[0].clone();
    let wrong = "ab".repeat(32);
    let text = std::fs::read_to_string(&w.agent_config).unwrap();
    let right =
        format!("[[nodes]]\naddr = \"127.93.0.1:7500\"\nkey = \"{node}\"\nrtt_bias_ms = 0\n");
    assert!(text.contains(&right), "{text}");
    let nodes = format!(
        "[[nodes]]\naddr = \"127.93.0.1:7500\"\nkey = \"{wrong}\"\n\
         [[nodes]]\naddr = \"127.93.0.1:7400\"\nkey = \"{node}\"\n\
         [[nodes]]\naddr = \"127.93.0.9:7500\"\nkey = \"{node}\"\n"
    );
    std::fs::write(&w.agent_config, text.replace(&right, &nodes)).unwrap();
    w.start_node(0);
    w.start_agent(false);
    let log = wait_for(Duration::from_secs(30), || {
        let log = w.agent_log();
        let said = |s: &str| log.lines().any(|l| l.contains(s));
        (said("SECURITY: the node at this address is not the one configured")
            && said("127.93.0.1:7400")
            && said("no answer from 127.93.0.9:7500"))
        .then_some(log)
    })
    .unwrap_or_else(|| panic!("the causes were never logged\n{}", w.logs()));
    let line = |s: &str| {
        log.lines()
            .find(|l| l.contains(s))
            .unwrap_or_else(|| panic!("no {s} in\n{log}"))
            .to_string()
    };
    let key = line("SECURITY");
    assert!(
        key.contains("ERROR") && key.contains(&wrong) && key.contains("127.93.0.1:7500"),
        "{key}"
    );
    let mesh = line("addr=127.93.0.1:7400");
    assert!(
        mesh.contains("WARN") && mesh.contains("cannot connect"),
        "{mesh}"
    );
    // Once per cause: attempts every few seconds, lines (past the debug ones) not.
    std::thread::sleep(Duration::from_secs(10));
    let log = w.agent_log();
    let count = |level: &str, s: &str| {
        log.lines()
            .filter(|l| l.contains(level) && l.contains(s))
            .count()
    };
    assert_eq!(
        count(" WARN ", "no answer from 127.93.0.9:7500"),
        1,
        "{log}"
    );
    assert_eq!(
        count(" WARN ", "refused the agent's TLS handshake"),
        1,
        "{log}"
    );
    assert_eq!(count(" ERROR ", "SECURITY"), 1, "{log}");

    // A second agent on the same data directory: refused, naming it, non-zero.
    let out = std::process::Command::new(agent_bin())
        .args(["run", "--config", w.agent_config.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("agent-data") && err.contains("in use by another weft-agent"),
        "{err}"
    );
    // The first is unharmed.
    w.feed(0..3);
    wait_for(Duration::from_secs(10), || {
        w.status()
            .filter(|s| s["counters"]["accepted"].as_u64() == Some(3))
    })
    .unwrap_or_else(|| panic!("the first agent stopped taking events\n{}", w.logs()));

    // `status` of another config naming the same HTTP address: it says whose agent answers.
    let other_key = w.dir.join("other.key");
    run_ok(
        &agent_bin(),
        &["keygen", "--out", other_key.to_str().unwrap()],
    );
    let other = w.dir.join("other.toml");
    std::fs::write(
        &other,
        std::fs::read_to_string(&w.agent_config)
            .unwrap()
            .replace("key = \"device.key\"", "key = \"other.key\"")
            .replace("data_dir = \"agent-data\"", "data_dir = \"other-data\""),
    )
    .unwrap();
    let out = std::process::Command::new(agent_bin())
        .args(["status", "--config", other.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is not this config's") && err.contains(&w.agent_key),
        "{err}"
    );
    assert!(!w.dir.join("other-data").exists());

    // A reader that went away: no panic, status 0.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(agent_bin())
        .args(["status", "--config", w.agent_config.to_str().unwrap()])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{err}");
}
