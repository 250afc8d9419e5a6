//! `cargo bench -p weft-agent`: the agent against a real `weft` node on loopback
//! (127.74.0.x), printing
//!
//! - live rate: events/s from the agent's standard input to durable at the node (the
//!   outbox's fsync, sequencing and signing, QUIC batches, the node's checks and group
//!   commit), beside a baseline of the same node taking HTTP CloudEvents batches of 256
//!   from this process (no agent, no device signatures);
//! - drain rate: events/s out of an outbox filled while the node was down;
//! - the agent binary's size (this build, and the `agent` size profile if built:
//!   `cargo build --profile agent -p weft-agent`);
//! - the agent's resident memory (VmRSS now, VmHWM the peak) read from /proc.
//!
//! The node binary is `weft` next to the agent's (`cargo build --release -p weft-node`
//! first), or `$WEFT_BIN`. Runs `WEFT_AGENT_BENCH_N` events (default 20,000) each phase.

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn delivered(w: &World) -> Option<u64> {
    w.status()?["counters"]["delivered"].as_u64()
}

fn rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u64 = std::env::var("WEFT_AGENT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    println!("node binary: {}", weft_bin().display());
    println!("agent binary: {}", agent_bin().display());

    // 1. Live: the node is up, lines stream in.
    let mut w = World::new("bench", 74, 1, "", &[], "[log]\nlevel = \"warn\"\n");
    w.start_node(0);
    w.start_agent(false);
    wait_for(Duration::from_secs(30), || {
        w.status()?["connected"]["node"].as_str().map(|_| ())
    })
    .expect("agent connected");
    let pid = w.agent.as_ref().unwrap().child.as_ref().unwrap().id();
    let start = Instant::now();
    let feeder = {
        let mut stdin = w.agent_stdin.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut text = String::new();
            for i in 0..n {
                text.push_str(&format!(
                    "{{\"n\":{i},\"celsius\":21.5,\"site\":\"dublin-7\"}}\n"
                ));
                if text.len() > 64 << 10 {
                    stdin.write_all(text.as_bytes()).unwrap();
                    text.clear();
                }
            }
            stdin.write_all(text.as_bytes()).unwrap();
            stdin
        })
    };
    let mut peak_depth = 0;
    wait_for(Duration::from_secs(600), || {
        peak_depth = peak_depth.max(w.status()?["outbox_depth"].as_u64()?);
        (delivered(&w)? >= n).then_some(())
    })
    .expect("live run delivered");
    let live = start.elapsed();
    w.agent_stdin = Some(feeder.join().unwrap());
    let (rss_live, hwm_live) = rss(pid);
    println!(
        "live:     {n} events stdin -> durable at the node in {:.2} s = {:.0} events/s (outbox peak depth {peak_depth})",
        live.as_secs_f64(),
        n as f64 / live.as_secs_f64()
    );

    // 2. Drain: the node is down while the outbox fills, then returns.
    w.nodes[0].kill9();
    wait_for(Duration::from_secs(30), || {
        w.status()?["connected"].is_null().then_some(())
    })
    .expect("agent noticed the node's death");
    w.feed(n..2 * n);
    wait_for(Duration::from_secs(600), || {
        (w.status()?["outbox_depth"].as_u64()? >= n).then_some(())
    })
    .expect("outbox filled");
    w.start_node(0);
    wait_for(Duration::from_secs(30), || {
        w.status()?["connected"]["node"].as_str().map(|_| ())
    })
    .expect("agent reconnected");
    let start = Instant::now();
    wait_for(Duration::from_secs(600), || {
        (delivered(&w)? >= 2 * n).then_some(())
    })
    .expect("outbox drained");
    let drain = start.elapsed();
    let (rss_now, hwm) = rss(pid);
    println!(
        "drain:    {n} events out of the outbox in {:.2} s = {:.0} events/s",
        drain.as_secs_f64(),
        n as f64 / drain.as_secs_f64()
    );

    // 3. Baseline: the same node, HTTP CloudEvents batches of 256 from this process.
    let addr = node_http(74, 0);
    let auth = format!("Bearer {}", w.token);
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = (n - sent).min(256);
        let batch: Vec<serde_json::Value> = (0..k)
            .map(|i| {
                serde_json::json!({"specversion": "1.0", "id": format!("b-{}", sent + i),
                "source": "bench", "type": "t", "data": {"n": sent + i, "celsius": 21.5}})
            })
            .collect();
        let body = serde_json::to_vec(&batch).unwrap();
        let (code, resp) = http_post(
            &addr,
            "/v1/streams/bench.http/events",
            &[
                ("content-type", "application/cloudevents-batch+json"),
                ("authorization", &auth),
            ],
            &body,
        )
        .expect("baseline publish");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&resp));
        sent += k;
    }
    let base = start.elapsed();
    let base_rate = n as f64 / base.as_secs_f64();
    println!(
        "baseline: {n} events as HTTP CloudEvents batches of 256 (node-signed, ack=local) in {:.2} s = {base_rate:.0} events/s",
        base.as_secs_f64()
    );
    println!(
        "ratios:   live/baseline {:.2}, drain/baseline {:.2}",
        (n as f64 / live.as_secs_f64()) / base_rate,
        (n as f64 / drain.as_secs_f64()) / base_rate
    );

    // 4. Size and memory.
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    if let Some(s) = size(&agent_bin()) {
        println!(
            "size:     {:.2} MB the binary measured ({})",
            s as f64 / 1e6,
            agent_bin().display()
        );
    }
    if let Some(t) = Path::new(AGENT).parent().and_then(Path::parent) {
        let p = t.join("agent").join("weft-agent");
        match size(&p) {
            Some(s) => println!(
                "size:     {:.2} MB stripped, profile `agent` ({})",
                s as f64 / 1e6,
                p.display()
            ),
            None => println!(
                "size:     profile `agent` not built (cargo build --profile agent -p weft-agent)"
            ),
        }
    }
    println!(
        "memory:   VmRSS {:.1} MB after the live run (peak {:.1} MB), {:.1} MB after the drain; VmHWM {:.1} MB",
        rss_live as f64 / 1024.0,
        hwm_live as f64 / 1024.0,
        rss_now as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}
