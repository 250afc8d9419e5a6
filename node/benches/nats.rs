//! Weft against NATS JetStream on this machine, side by side in one run:
//! `bash scripts/bench-nats.sh` (installs Debian's `nats-server` if it is missing, builds in
//! release mode and runs `cargo bench -p weft-node --bench nats`).
//!
//! Both systems get the same load from this process: payloads of 256 B and 4 KB, one event
//! per request (each publisher waits for its acknowledgement) or batches of [`BATCH`]
//! (NATS: that many asynchronous publishes in flight, then every acknowledgement; Weft: one
//! HTTP CloudEvents batch), from 1 and [`PUBLISHERS`] concurrent publishers. Each cell runs
//! for a fixed time ([`cell_time`]) and counts acknowledged events.
//!
//! - One node: nats-server with JetStream file storage (its defaults: the acknowledgement
//!   comes before any fsync) against a Weft node with `ack=local` (every acknowledged
//!   event signed by the node and fsync'd by the group commit). The agent's QUIC path is
//!   measured too: a `weft agent-run` device draining a file through the edge port.
//! - Three nodes: a NATS cluster with a JetStream stream of 3 replicas against three Weft
//!   nodes in three regions with `ack=regions:2`.
//! - Publish-to-subscriber latency at half of each system's own peak (the 256 B batched
//!   cell): an open-loop publisher paced every millisecond, a JetStream ordered consumer
//!   and a Weft SSE subscriber; the send time travels in the payload.
//! - Sustained overload: more concurrent 1 MB requests than the node can take, for
//!   [`OVERLOAD_SECS`]; the node's resident memory sampled from /proc, refusals counted.
//! - What bounds Weft on this machine: Ed25519 signatures per core and fsyncs per second,
//!   measured here.
//!
//! Ends with the issue's targets, each marked met or missed. Everything is bounded: fixed
//! durations, every child process killed at the end, loopback only (127.75.0.x for Weft,
//! 127.0.0.1 ports 24750-24752 and 26750-26752 for NATS).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use futures_util::StreamExt as _;
use serde_json::Value;

/// Events per batch (NATS: publishes in flight; Weft: events per HTTP request).
const BATCH: usize = 256;
/// The "N concurrent publishers" of the issue.
const PUBLISHERS: usize = 8;
/// Loopback subnet of the Weft nodes (127.75.0.x) and their HTTP ports (20750 + i).
const NET: u8 = 75;
/// NATS client ports (24750 + i) and cluster ports (26750 + i), on 127.0.0.1.
const NATS_PORT: u16 = 24750;
const NATS_CLUSTER_PORT: u16 = 26750;
/// How long the overload phase lasts.
const OVERLOAD_SECS: u64 = 30;
/// Concurrent publishers in the overload phase (each sends 256 x 4 KB = 1 MB requests).
const OVERLOAD_PUBLISHERS: usize = 64;
/// The latency runs' pacing: events due are sent every tick (NATS: one publish each; Weft:
/// one HTTP batch). The send time is stamped per event when it is sent.
const PACE_TICK: Duration = Duration::from_millis(1);
/// Events the agent drains through the edge port.
const AGENT_EVENTS: usize = 20_000;

/// Time per throughput cell: `WEFT_BENCH_SECS` (default 3 s).
fn cell_time() -> Duration {
    Duration::from_secs_f64(
        std::env::var("WEFT_BENCH_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3.0),
    )
}

/// A shape of load.
#[derive(Clone, Copy, Debug)]
struct Load {
    size: usize,
    batch: usize,
    publishers: usize,
}

impl Load {
    fn label(&self) -> String {
        format!(
            "{:>4} B {:<7} {} pub",
            self.size,
            if self.batch == 1 { "single" } else { "batched" },
            self.publishers
        )
    }
}

/// What one throughput cell measured: acknowledged events, elapsed time, and the latency of
/// each acknowledgement (per request) in milliseconds.
#[derive(Default)]
struct Cell {
    events: u64,
    secs: f64,
    acks_ms: Vec<f64>,
    busy: u64,
    /// CPU time the server processes (nats-server, or the Weft nodes) spent in the cell.
    server_cpu_s: f64,
}

impl Cell {
    fn rate(&self) -> f64 {
        self.events as f64 / self.secs.max(1e-9)
    }
    fn pct(&self, p: f64) -> f64 {
        pct(&self.acks_ms, p)
    }
    /// Server CPU per acknowledged event, in microseconds.
    fn cpu_us(&self) -> f64 {
        self.server_cpu_s * 1e6 / self.events.max(1) as f64
    }
}

/// CPU seconds (user + system) processes `pids` have used so far, from /proc/PID/stat
/// (fields 14 and 15, in USER_HZ = 100 ticks per second on Linux).
fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // `rest` starts at field 3 (state): utime is field 14, stime field 15.
            (ticks(11) + ticks(12)) as f64 / 100.0
        })
        .sum()
}

/// Runs `cell` and records the CPU time `pids` spent meanwhile.
async fn with_cpu(pids: &[u32], cell: impl std::future::Future<Output = Cell>) -> Cell {
    let before = cpu_seconds(pids);
    let mut c = cell.await;
    c.server_cpu_s = cpu_seconds(pids) - before;
    c
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn merge(parts: Vec<Cell>, started: Instant) -> Cell {
    let mut out = Cell {
        secs: started.elapsed().as_secs_f64(),
        ..Cell::default()
    };
    for p in parts {
        out.events += p.events;
        out.busy += p.busy;
        out.acks_ms.extend(p.acks_ms);
    }
    out.acks_ms.sort_by(f64::total_cmp);
    out
}

/// Nanoseconds since the benchmark started, carried in the first 8 bytes of latency
/// payloads (publisher and subscriber are this process).
fn stamp(epoch: Instant) -> [u8; 8] {
    (epoch.elapsed().as_nanos() as u64).to_be_bytes()
}

fn since_stamp(epoch: Instant, payload: &[u8]) -> Option<f64> {
    let sent = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let now = epoch.elapsed().as_nanos() as u64;
    Some(now.saturating_sub(sent) as f64 / 1e6)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------- NATS

/// nats-server processes (JetStream, file storage), killed on drop.
struct Nats {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Nats {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nats_bin() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into())
}

impl Nats {
    fn start(n: usize) -> Self {
        let dir = std::env::temp_dir().join(format!("weft-bench-nats{n}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut children = Vec::new();
        for i in 0..n {
            let routes = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    format!(
                        "\"nats-route://127.0.0.1:{}\"",
                        NATS_CLUSTER_PORT + j as u16
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let cluster = if n > 1 {
                format!(
                    "cluster {{\n  name: bench\n  listen: \"127.0.0.1:{}\"\n  routes: [{routes}]\n}}\n",
                    NATS_CLUSTER_PORT + i as u16
                )
            } else {
                String::new()
            };
            let conf = format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n{cluster}",
                NATS_PORT + i as u16,
                dir.join(format!("n{i}")).display()
            );
            let path = dir.join(format!("n{i}.conf"));
            std::fs::write(&path, conf).unwrap();
            let log = std::fs::File::create(dir.join(format!("n{i}.log"))).unwrap();
            let child = Command::new(nats_bin())
                .arg("-c")
                .arg(&path)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {} ({e}): run `bash scripts/bench-nats.sh`, which installs Debian's nats-server",
                        nats_bin()
                    )
                });
            children.push(child);
        }
        Self { children, dir }
    }

    fn url(i: usize) -> String {
        format!("127.0.0.1:{}", NATS_PORT + i as u16)
    }

    fn pid(&self, i: usize) -> u32 {
        self.children[i].id()
    }

    /// A client of server `i`, once it answers.
    async fn connect(i: usize) -> async_nats::Client {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match async_nats::connect(Nats::url(i)).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > until => panic!("nats-server {i}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Creates stream `name` (subjects `name.>`) with `replicas`, retrying while a
    /// cluster elects its JetStream leader.
    async fn stream(client: &async_nats::Client, name: &str, replicas: usize) {
        let js = async_nats::jetstream::new(client.clone());
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let made = js
                .create_stream(async_nats::jetstream::stream::Config {
                    name: name.into(),
                    subjects: vec![format!("{name}.>")],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await;
            match made {
                Ok(_) => return,
                Err(e) if Instant::now() > until => panic!("JetStream stream {name}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn drop_stream(client: &async_nats::Client, name: &str) {
        let js = async_nats::jetstream::new(client.clone());
        let _ = js.delete_stream(name).await;
    }
}

/// One NATS throughput cell on stream `name` (made and deleted here).
async fn nats_cell(server: usize, name: &str, replicas: usize, load: Load, dur: Duration) -> Cell {
    let admin = Nats::connect(server).await;
    Nats::stream(&admin, name, replicas).await;
    let payload = Bytes::from(vec![7u8; load.size]);
    let started = Instant::now();
    let deadline = started + dur;
    let mut tasks = Vec::new();
    for p in 0..load.publishers {
        let payload = payload.clone();
        let subject = format!("{name}.p{p}");
        tasks.push(tokio::spawn(async move {
            let js = async_nats::jetstream::new(Nats::connect(server).await);
            let mut cell = Cell::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let mut acks = Vec::with_capacity(load.batch);
                for _ in 0..load.batch {
                    acks.push(js.publish(subject.clone(), payload.clone()).await.unwrap());
                }
                for a in acks {
                    a.await.unwrap();
                }
                cell.acks_ms.push(t.elapsed().as_secs_f64() * 1e3);
                cell.events += load.batch as u64;
            }
            cell
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.unwrap());
    }
    let cell = merge(parts, started);
    Nats::drop_stream(&admin, name).await;
    cell
}

// ------------------------------------------------------------------------------- Weft

/// The HTTP side of one Weft node.
#[derive(Clone)]
struct WeftHttp {
    http: reqwest::Client,
    base: String,
    token: String,
}

static IDS: AtomicU64 = AtomicU64::new(0);

impl WeftHttp {
    fn new(c: &Cluster, i: usize) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: c.url(i, ""),
            token: c.token.clone(),
        }
    }

    /// Publishes `events` payloads to `stream`: one binary-mode CloudEvent, or a batch.
    /// Returns the status and body text.
    async fn publish(&self, stream: &str, ack: &str, payloads: &[Vec<u8>]) -> (u16, String) {
        let url = format!("{}/v1/streams/{stream}/events?ack={ack}", self.base);
        let req = if let [one] = payloads {
            let id = IDS.fetch_add(1, Ordering::Relaxed);
            self.http
                .post(url)
                .header("ce-specversion", "1.0")
                .header("ce-id", format!("b{id}"))
                .header("ce-source", "bench")
                .header("ce-type", "bench")
                .header("content-type", "application/octet-stream")
                .body(one.clone())
        } else {
            // The client's work kept small (it shares the machine with the node): identical
            // payloads, as in the throughput cells, are encoded once per request.
            let b64 = &base64::engine::general_purpose::STANDARD;
            let once = payloads
                .iter()
                .all(|p| p == &payloads[0])
                .then(|| b64.encode(&payloads[0]));
            let mut body =
                String::with_capacity(payloads.len() * (payloads[0].len() * 4 / 3 + 128));
            body.push('[');
            for (k, p) in payloads.iter().enumerate() {
                use std::fmt::Write as _;
                if k > 0 {
                    body.push(',');
                }
                let id = IDS.fetch_add(1, Ordering::Relaxed);
                let data = match &once {
                    Some(d) => std::borrow::Cow::Borrowed(d.as_str()),
                    None => std::borrow::Cow::Owned(b64.encode(p)),
                };
                let _ = write!(
                    body,
                    r#"{{"specversion":"1.0","id":"b{id}","source":"bench","type":"bench","datacontenttype":"application/octet-stream","data_base64":"{data}"}}"#
                );
            }
            body.push(']');
            self.http
                .post(url)
                .header("content-type", "application/cloudevents-batch+json")
                .body(body)
        };
        match req.bearer_auth(&self.token).send().await {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.text().await.unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    }
}

/// One Weft throughput cell on `stream` at node `h`. A 503 (busy) is retried after 5 ms and
/// counted; any other failure stops the benchmark.
async fn weft_cell(h: &WeftHttp, stream: &str, ack: &str, load: Load, dur: Duration) -> Cell {
    let started = Instant::now();
    let deadline = started + dur;
    let mut tasks = Vec::new();
    for _ in 0..load.publishers {
        let (h, stream, ack) = (h.clone(), stream.to_string(), ack.to_string());
        tasks.push(tokio::spawn(async move {
            let payloads = vec![vec![7u8; load.size]; load.batch];
            let mut cell = Cell::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let (status, body) = h.publish(&stream, &ack, &payloads).await;
                match status {
                    200 => {
                        cell.acks_ms.push(t.elapsed().as_secs_f64() * 1e3);
                        cell.events += load.batch as u64;
                    }
                    503 => {
                        cell.busy += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ => panic!("weft publish: {status} {body}"),
                }
            }
            cell
        }));
    }
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.unwrap());
    }
    merge(parts, started)
}

// ---------------------------------------------------------------------------- latency

/// Latency of `rate` events/s of 256 B paced every [`PACE_TICK`] for `dur`: publish to
/// subscriber, per event, sorted (ms), and how many of the published arrived.
struct Latency {
    ms: Vec<f64>,
    sent: u64,
    /// Events not sent because 256 requests were already waiting (the node behind).
    unsent: u64,
}

/// Calls `send(k)` with the number of events due, every [`PACE_TICK`], for `dur`.
async fn pace<F, Fut>(rate: f64, dur: Duration, mut send: F) -> u64
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let mut tick = tokio::time::interval(PACE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    while started.elapsed() < dur {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        if due > sent {
            send((due - sent) as usize).await;
            sent = due;
        }
    }
    sent
}

async fn nats_latency(
    pub_server: usize,
    sub_server: usize,
    replicas: usize,
    rate: f64,
    epoch: Instant,
) -> Latency {
    use async_nats::jetstream::consumer::push::OrderedConfig;
    let name = format!("lat{pub_server}{sub_server}");
    let admin = Nats::connect(pub_server).await;
    Nats::stream(&admin, &name, replicas).await;
    let sub_client = Nats::connect(sub_server).await;
    let js_sub = async_nats::jetstream::new(sub_client.clone());
    let stream = js_sub.get_stream(&name).await.unwrap();
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_subject: sub_client.new_inbox(),
            filter_subject: format!("{name}.x"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let receiver = tokio::spawn(async move {
        let mut ms = Vec::new();
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_secs(3), messages.next()).await
        {
            if let Some(l) = since_stamp(epoch, &m.payload) {
                ms.push(l);
            }
        }
        ms
    });
    let js = async_nats::jetstream::new(admin.clone());
    let subject = format!("{name}.x");
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel();
    let acker = tokio::spawn(async move {
        while let Some(a) = ack_rx.recv().await {
            let a: async_nats::jetstream::context::PublishAckFuture = a;
            a.await.unwrap();
        }
    });
    let sent = pace(rate, Duration::from_secs(5), |k| {
        let (js, subject, ack_tx) = (js.clone(), subject.clone(), ack_tx.clone());
        async move {
            for _ in 0..k {
                let mut p = vec![7u8; 256];
                p[..8].copy_from_slice(&stamp(epoch));
                let ack = js.publish(subject.clone(), Bytes::from(p)).await.unwrap();
                ack_tx.send(ack).unwrap();
            }
        }
    })
    .await;
    drop(ack_tx);
    acker.await.unwrap();
    let mut ms = receiver.await.unwrap();
    ms.sort_by(f64::total_cmp);
    Nats::drop_stream(&admin, &name).await;
    Latency {
        ms,
        sent,
        unsent: 0,
    }
}

async fn weft_latency(
    pub_node: &WeftHttp,
    sub_node: &WeftHttp,
    ack: &str,
    rate: f64,
    epoch: Instant,
) -> Latency {
    let stream = format!("lat.r{}", IDS.fetch_add(1, Ordering::Relaxed));
    let resp = sub_node
        .http
        .get(format!("{}/v1/streams/{stream}/subscribe", sub_node.base))
        .bearer_auth(&sub_node.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let receiver = tokio::spawn(async move {
        let mut ms = Vec::new();
        let mut text = String::new();
        while let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_secs(3), body.next()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let frame: String = text.drain(..end + 2).collect();
                for line in frame.lines() {
                    let Some(d) = line.strip_prefix("data:") else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(d.trim()) else {
                        continue;
                    };
                    let Some(b) = v["data_base64"].as_str() else {
                        continue;
                    };
                    if let Ok(p) = base64::engine::general_purpose::STANDARD.decode(b)
                        && let Some(l) = since_stamp(epoch, &p)
                    {
                        ms.push(l);
                    }
                }
            }
        }
        ms
    });
    // Requests are spawned so a slow answer never holds the pacer; at most 256 at once.
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut inflight = Vec::new();
    let sent = pace(rate, Duration::from_secs(5), |k| {
        let mut payloads = vec![vec![7u8; 256]; k];
        for p in &mut payloads {
            p[..8].copy_from_slice(&stamp(epoch));
        }
        let (h, stream, ack, gate) = (
            pub_node.clone(),
            stream.clone(),
            ack.to_string(),
            gate.clone(),
        );
        match gate.try_acquire_owned() {
            Ok(permit) => inflight.push(tokio::spawn(async move {
                let _permit = permit;
                let (status, body) = h.publish(&stream, &ack, &payloads).await;
                assert_eq!(status, 200, "{body}");
                0u64
            })),
            // The node is behind by 256 requests: these events are not sent (reported).
            Err(_) => inflight.push(tokio::spawn(async move { payloads.len() as u64 })),
        }
        async {}
    })
    .await;
    let mut unsent = 0;
    for t in inflight {
        unsent += t.await.unwrap();
    }
    let mut ms = receiver.await.unwrap();
    ms.sort_by(f64::total_cmp);
    Latency {
        ms,
        sent: sent - unsent,
        unsent,
    }
}

// ------------------------------------------------------------------------ the agent

/// A device draining [`AGENT_EVENTS`] lines of 256 B through node 0's edge port (QUIC,
/// signed on the device, kept in its fsync'd outbox until acknowledged): events/s from the
/// agent's start to the last one durable at the node.
async fn agent_drain(c: &Cluster, h: &WeftHttp, device_key: &Path) -> f64 {
    let dir = c.dir.join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let line = "x".repeat(255);
    let mut text = String::with_capacity(AGENT_EVENTS * 256);
    for _ in 0..AGENT_EVENTS {
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(dir.join("input.log"), text).unwrap();
    let config = format!(
        r#"name = "bench-device"
key = "{}"
data_dir = "{}"
[[nodes]]
addr = "127.{NET}.0.1:7500"
key = "{}"
[outbox]
events_max = {AGENT_EVENTS}
[[inputs.files]]
path = "{}"
stream = "devices.bench.readings"
from = "start"
[log]
level = "warn"
"#,
        device_key.display(),
        dir.join("data").display(),
        c.keys[0],
        dir.join("input.log").display()
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let before = stored(h).await.expect("node status");
    let started = Instant::now();
    let mut agent = Command::new(WEFT)
        .args(["agent-run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let done = wait_for(Duration::from_secs(120), || async {
        let n = stored(h).await?;
        (n >= before + AGENT_EVENTS as u64).then_some(())
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        done.is_some(),
        "the agent did not deliver {AGENT_EVENTS} events in 120 s; see {}",
        dir.display()
    );
    AGENT_EVENTS as f64 / secs
}

/// Events the node holds, all streams (`stored_events` of its status).
async fn stored(h: &WeftHttp) -> Option<u64> {
    let v: Value = h
        .http
        .get(format!("{}/v1/status", h.base))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["stored_events"].as_u64()
}

// ---------------------------------------------------------------------- overload

struct Overload {
    accepted: u64,
    busy: u64,
    secs: f64,
    rss_start_kib: u64,
    rss_max_kib: u64,
    rss_last_kib: u64,
    /// (seconds, KiB) every 2 s.
    rss_series: Vec<(u64, u64)>,
}

/// [`OVERLOAD_PUBLISHERS`] publishers of 1 MB batches, none pausing on a busy answer,
/// against node `h` (process `pid`) for [`OVERLOAD_SECS`].
async fn weft_overload(h: &WeftHttp, pid: u32) -> Overload {
    let rss_start_kib = rss_kib(pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(OVERLOAD_SECS);
    let mut tasks = Vec::new();
    for _ in 0..OVERLOAD_PUBLISHERS {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let payloads = vec![vec![7u8; 4096]; BATCH];
            let (mut accepted, mut busy) = (0u64, 0u64);
            while Instant::now() < deadline {
                match h.publish("overload.x", "local", &payloads).await {
                    (200, _) => accepted += BATCH as u64,
                    (503, _) => busy += 1,
                    (s, b) => panic!("overload publish: {s} {b}"),
                }
            }
            (accepted, busy)
        }));
    }
    let mut rss_max_kib = rss_start_kib;
    let mut rss_last_kib = rss_start_kib;
    let mut rss_series = Vec::new();
    let mut ticks = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_last_kib = rss_kib(pid);
        rss_max_kib = rss_max_kib.max(rss_last_kib);
        ticks += 1;
        if ticks.is_multiple_of(20) {
            rss_series.push((ticks / 10, rss_last_kib));
        }
    }
    let (mut accepted, mut busy) = (0, 0);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        accepted += a;
        busy += b;
    }
    Overload {
        accepted,
        busy,
        secs: started.elapsed().as_secs_f64(),
        rss_start_kib,
        rss_max_kib,
        rss_last_kib,
        rss_series,
    }
}

// ------------------------------------------------------------------------- bounds

/// Ed25519 signatures per second on one core (an event of 256 B: encode, sign, id).
fn sign_rate() -> f64 {
    use weft_fabric::Signer;
    let signer = Signer::from_secret(&[5; 32]);
    let n = 2_000u64;
    let started = Instant::now();
    for seq in 1..=n {
        let e = signer
            .sign(draft(
                "bench.sign",
                seq,
                "application/octet-stream",
                vec![7; 256],
            ))
            .unwrap();
        std::hint::black_box(e);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

// --------------------------------------------------------------------------- report

fn row(label: &str, nats: &Cell, weft: &Cell) {
    println!(
        "{:<34} {:>10.0} {:>10.0} {:>7.2}x  {:>6.1} / {:<6.1}  {:>6.1} / {:<6.1}  {:>6.1} {:>7.1}",
        label,
        nats.rate(),
        weft.rate(),
        weft.rate() / nats.rate(),
        nats.pct(0.5),
        nats.pct(0.99),
        weft.pct(0.5),
        weft.pct(0.99),
        nats.cpu_us(),
        weft.cpu_us(),
    );
}

fn header(title: &str) {
    println!("\n{title}");
    println!(
        "{:<34} {:>10} {:>10} {:>8}  {:>15}  {:>15}  {:>14}",
        "load",
        "NATS ev/s",
        "Weft ev/s",
        "ratio",
        "NATS ack p50/p99",
        "Weft ack p50/p99",
        "CPU µs/ev N W"
    );
}

fn lat_row(label: &str, rate: f64, l: &Latency) {
    println!(
        "{:<34} {:>8.0}/s  p50 {:>6.2}  p99 {:>6.2}  max {:>7.2} ms  ({} of {} received{})",
        label,
        rate,
        pct(&l.ms, 0.5),
        pct(&l.ms, 0.99),
        l.ms.last().copied().unwrap_or(f64::NAN),
        l.ms.len(),
        l.sent,
        if l.unsent > 0 {
            format!("; {} not sent, the node was 256 requests behind", l.unsent)
        } else {
            String::new()
        }
    );
}

fn target(what: &str, value: f64, bound: f64, at_least: bool) -> bool {
    let met = if at_least {
        value >= bound
    } else {
        value <= bound
    };
    println!(
        "  {:<58} {:>6.2}x  (target {} {bound}x)  {}",
        what,
        value,
        if at_least { ">=" } else { "<=" },
        if met { "met" } else { "MISSED" }
    );
    met
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let nats = Command::new(nats_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores; {nats}")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let only = std::env::var("WEFT_BENCH_ONLY").unwrap_or_default();
    let want = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let epoch = Instant::now();
    let dur = cell_time();
    println!("Weft against NATS JetStream on {}", machine());
    println!(
        "cells of {:.1} s; batches of {BATCH}; N = {PUBLISHERS} publishers; Weft single node ack=local, 3 nodes ack=regions:2; NATS JetStream file storage (default sync), 3 nodes R3",
        dur.as_secs_f64()
    );
    let loads: Vec<Load> = [256, 4096]
        .into_iter()
        .flat_map(|size| {
            [1, BATCH].into_iter().flat_map(move |batch| {
                [1, PUBLISHERS].into_iter().map(move |publishers| Load {
                    size,
                    batch,
                    publishers,
                })
            })
        })
        // `WEFT_BENCH_LOAD=256:256:8` (size:batch:publishers) keeps one shape, to profile it.
        .filter(|l: &Load| {
            std::env::var("WEFT_BENCH_LOAD").map_or(true, |f| {
                f == format!("{}:{}:{}", l.size, l.batch, l.publishers)
            })
        })
        .collect();
    let peak_load = Load {
        size: 256,
        batch: BATCH,
        publishers: PUBLISHERS,
    };
    let mut met = Vec::new();

    rt.block_on(async {
        // ------------------------------------------------------------ one node
        let (mut nats_peak1, mut weft_peak1) = (f64::NAN, f64::NAN);
        // Server CPU per event at the one-node peak (NATS, Weft), for the bounds.
        let mut peak_cpu_us = (f64::NAN, f64::NAN);
        let mut nats_lat1 = None;
        let mut weft_lat1 = None;
        let device_key;
        {
            let mut c = Cluster::new(
                "bench-nats1",
                NET,
                &three_regions()[..1],
                "[log]\nlevel = \"warn\"\n",
            );
            // The agent's path: node 0 takes edge agents, and admits the bench device.
            let key = c.dir.join("device.key");
            let out = Command::new(WEFT).args(["keygen", "--out"]).arg(&key).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let device_hex = text
                .lines()
                .find_map(|l| l.strip_prefix("public key:"))
                .expect("keygen prints the public key")
                .trim()
                .to_string();
            device_key = key;
            let cfg = std::fs::read_to_string(&c.nodes[0].config).unwrap();
            let cfg = cfg.replacen("[listen]\n", &format!("[listen]\nedge = \"127.{NET}.0.1:7500\"\n"), 1)
                + &format!(
                    "[[edge.devices]]\nname = \"bench-device\"\ntenant = \"acme\"\nkey = \"{device_hex}\"\nstreams = [\"devices.bench.>\"]\n"
                );
            std::fs::write(&c.nodes[0].config, cfg).unwrap();
            c.start_all();
            c.wait_healthy(0).await;
            let h = WeftHttp::new(&c, 0);
            let weft_pid = c.nodes[0].child.as_ref().unwrap().id();
            let nats = Nats::start(1);
            let _ = Nats::connect(0).await;

            if want("single") {
                header("one node: NATS JetStream (file) vs Weft (signed, fsync'd, ack=local)");
                for (i, load) in loads.iter().enumerate() {
                    let n = with_cpu(&[nats.pid(0)], nats_cell(0, &format!("s{i}"), 1, *load, dur)).await;
                    let w = with_cpu(&[weft_pid], weft_cell(&h, &format!("bench.s{i}"), "local", *load, dur)).await;
                    row(&load.label(), &n, &w);
                    if load.size == peak_load.size && load.batch == peak_load.batch && load.publishers == peak_load.publishers {
                        nats_peak1 = n.rate();
                        weft_peak1 = w.rate();
                        peak_cpu_us = (n.cpu_us(), w.cpu_us());
                        met.push(target("one node, 256 B batched, N publishers: Weft/NATS", w.rate() / n.rate(), 0.5, true));
                    }
                    if w.busy > 0 {
                        println!("  (Weft answered busy {} times in this cell)", w.busy);
                    }
                }
            }
            if want("agent") {
                let rate = agent_drain(&c, &h, &device_key).await;
                println!(
                    "\nagent QUIC path: {AGENT_EVENTS} events of 256 B signed on the device, drained from its fsync'd outbox: {rate:.0} events/s"
                );
            }
            if want("latency") {
                if nats_peak1.is_nan() {
                    nats_peak1 = nats_cell(0, "peak", 1, peak_load, dur).await.rate();
                    weft_peak1 = weft_cell(&h, "bench.peak", "local", peak_load, dur).await.rate();
                }
                println!("\none node: publish -> subscriber (same node), 256 B, at half of each system's peak");
                let n = nats_latency(0, 0, 1, nats_peak1 / 2.0, epoch).await;
                lat_row("NATS (JetStream ordered consumer)", nats_peak1 / 2.0, &n);
                let w = weft_latency(&h, &h, "local", weft_peak1 / 2.0, epoch).await;
                lat_row("Weft (SSE)", weft_peak1 / 2.0, &w);
                let same = nats_latency(0, 0, 1, weft_peak1 / 2.0, epoch).await;
                lat_row("NATS at Weft's rate", weft_peak1 / 2.0, &same);
                met.push(target(
                    "one node, publish->subscriber p99 at half peak: Weft/NATS",
                    pct(&w.ms, 0.99) / pct(&n.ms, 0.99),
                    2.0,
                    false,
                ));
                nats_lat1 = Some(n);
                weft_lat1 = Some(w);
            }
            if want("overload") {
                let pid = c.nodes[0].child.as_ref().unwrap().id();
                let o = weft_overload(&h, pid).await;
                println!(
                    "\nsustained overload, {OVERLOAD_PUBLISHERS} publishers of 1 MB requests (256 x 4 KB, ack=local), none waiting, {:.0} s:",
                    o.secs
                );
                println!(
                    "  Weft node resident memory: {:.0} MiB before, {:.0} MiB at most, {:.0} MiB at the end; {:.0} events/s accepted, {} requests answered busy (503)",
                    o.rss_start_kib as f64 / 1024.0,
                    o.rss_max_kib as f64 / 1024.0,
                    o.rss_last_kib as f64 / 1024.0,
                    o.accepted as f64 / o.secs,
                    o.busy
                );
                println!(
                    "  over time (s: MiB): {}",
                    o.rss_series
                        .iter()
                        .map(|(t, k)| format!("{t}: {:.0}", *k as f64 / 1024.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                println!(
                    "  NATS server resident memory now: {:.0} MiB (for scale)",
                    rss_kib(nats.pid(0)) as f64 / 1024.0
                );
            }
            let _ = (nats_lat1, weft_lat1);
        }

        // ------------------------------------------------------------ three nodes
        if want("three") {
            let mut c = Cluster::new("bench-nats3", NET, &three_regions(), "[log]\nlevel = \"warn\"\n");
            c.start_all();
            c.wait_meshed().await;
            let hs: Vec<WeftHttp> = (0..3).map(|i| WeftHttp::new(&c, i)).collect();
            let nats = Nats::start(3);
            let nats_pids: Vec<u32> = (0..3).map(|i| nats.pid(i)).collect();
            let weft_pids: Vec<u32> = c.nodes.iter().map(|n| n.child.as_ref().unwrap().id()).collect();
            for i in 0..3 {
                let _ = Nats::connect(i).await;
            }
            header("three nodes: NATS JetStream R3 vs Weft ack=regions:2 (publishers at node 0)");
            let loads3 = [
                Load { size: 256, batch: 1, publishers: PUBLISHERS },
                Load { size: 256, batch: BATCH, publishers: 1 },
                peak_load,
                Load { size: 4096, batch: BATCH, publishers: PUBLISHERS },
            ];
            let (mut nats_peak3, mut weft_peak3) = (f64::NAN, f64::NAN);
            for (i, load) in loads3.iter().enumerate() {
                let n = with_cpu(&nats_pids, nats_cell(0, &format!("r{i}"), 3, *load, dur)).await;
                let w = with_cpu(&weft_pids, weft_cell(&hs[0], &format!("bench.r{i}"), "regions:2", *load, dur)).await;
                row(&load.label(), &n, &w);
                if i == 2 {
                    nats_peak3 = n.rate();
                    weft_peak3 = w.rate();
                    met.push(target("three nodes, 256 B batched, N publishers: Weft/NATS", w.rate() / n.rate(), 0.5, true));
                }
            }
            println!("\nthree nodes: publish at node 0 -> subscriber at node 1, 256 B, at half of each system's peak");
            let n = nats_latency(0, 1, 3, nats_peak3 / 2.0, epoch).await;
            lat_row("NATS R3 (ordered consumer)", nats_peak3 / 2.0, &n);
            let w = weft_latency(&hs[0], &hs[1], "regions:2", weft_peak3 / 2.0, epoch).await;
            lat_row("Weft ack=regions:2 (SSE)", weft_peak3 / 2.0, &w);
            met.push(target(
                "three nodes, publish->subscriber p99 at half peak: Weft/NATS",
                pct(&w.ms, 0.99) / pct(&n.ms, 0.99),
                2.0,
                false,
            ));
        }

        // ------------------------------------------------------------ bounds
        if want("bounds") {
            let dir = std::env::temp_dir().join(format!("weft-bench-fsync-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            println!("\nwhat bounds Weft on this machine");
            let signs = sign_rate();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            println!("  Ed25519: {signs:.0} events signed per second on one core (encode + sign + id, 256 B): {:.1} µs an event", 1e6 / signs);
            println!("  disk: {:.0} fsync'd SQLite transactions per second (one per group commit)", fsync_rate(&dir));
            if !peak_cpu_us.1.is_nan() {
                let (nats_us, weft_us) = peak_cpu_us;
                println!(
                    "  at the one-node peak: Weft's node spent {weft_us:.1} µs of CPU per event ({:.0} % of it the signature), nats-server {nats_us:.1} µs",
                    100.0 * (1e6 / signs) / weft_us
                );
                println!(
                    "  0.5x NATS's peak is {:.0} events/s: on {cores:.0} cores, shared with the load generator, that leaves at most {:.1} µs of CPU per event for everything; the signature alone takes {:.1} µs",
                    nats_peak1 / 2.0,
                    cores * 1e6 / (nats_peak1 / 2.0),
                    1e6 / signs
                );
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
    println!(
        "\ntargets: {} of {} met",
        met.iter().filter(|m| **m).count(),
        met.len()
    );
}
