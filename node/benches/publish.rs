//! Publish throughput and publish-to-subscriber latency on a 3-node loopback mesh of real
//! `weft` processes: `cargo bench -p weft-node --bench publish`.
//!
//! Prints events/s for HTTP CloudEvents batches with `ack=local` and `ack=regions:2`, for
//! pre-signed CBOR envelopes, and the p50/p99 latency from a publish on one node to its SSE
//! delivery on another. Baselines run side by side: one fsync per event on the same disk
//! (what group commit saves) and `ack=local` for the replicated level. Bounded: fixed
//! event counts, every process killed at the end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use weft_fabric::Signer;

const EVENTS: usize = 20_000;
const BATCH: usize = 500;
const CLIENTS: usize = 4;

async fn batch_throughput(c: &Arc<Cluster>, stream: &str, ack: &str) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CLIENTS {
        let c = c.clone();
        let stream = stream.to_string();
        let ack = ack.to_string();
        tasks.push(tokio::spawn(async move {
            for b in 0..EVENTS / BATCH / CLIENTS {
                let data: Vec<Value> = (0..BATCH)
                    .map(|k| json!({"w": w, "b": b, "k": k, "pad": "x".repeat(160)}))
                    .collect();
                let (status, body) = c.publish(0, &stream, &ack, &data).await;
                assert_eq!(status, 200, "{body}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    EVENTS as f64 / started.elapsed().as_secs_f64()
}

async fn cbor_throughput(c: &Arc<Cluster>, ack: &'static str, secret: u8) -> f64 {
    let n = 4_000;
    let signer = Arc::new(Signer::from_secret(&[secret; 32]));
    let envelopes: Vec<Vec<u8>> = (1..=n as u64)
        .map(|seq| {
            signer
                .sign(draft(
                    "bench.cbor",
                    seq,
                    "application/octet-stream",
                    vec![7; 256],
                ))
                .unwrap()
                .encode()
        })
        .collect();
    let envelopes = Arc::new(envelopes);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    let workers = 16;
    for w in 0..workers {
        let (c, envs, http) = (c.clone(), envelopes.clone(), http.clone());
        tasks.push(tokio::spawn(async move {
            for e in envs.iter().skip(w).step_by(workers) {
                let r = http
                    .post(c.url(0, &format!("/v1/streams/bench.cbor/events?ack={ack}")))
                    .bearer_auth(&c.token)
                    .header("content-type", "application/vnd.weft.event+cbor")
                    .body(e.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn sse_latency(c: &Arc<Cluster>) -> (f64, f64, usize) {
    use futures_util::StreamExt as _;
    let n = 1_000;
    let resp = reqwest::get(c.url(1, "/v1/streams/bench.lat/subscribe"))
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let sent: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> =
        Default::default();
    let publisher = {
        let (c, sent) = (c.clone(), sent.clone());
        tokio::spawn(async move {
            for k in 0..n {
                let t = Instant::now();
                let (status, body) = c.publish(0, "bench.lat", "none", &[json!({"k": k})]).await;
                assert_eq!(status, 200);
                let id = body["ids"][0].as_str().unwrap().to_string();
                sent.lock().unwrap().insert(id, t);
                // About 200 events/s: a steady load, far below peak.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut lat = Vec::new();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lat.len() < n && Instant::now() < deadline {
        let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(5), body.next()).await
        else {
            break;
        };
        let now = Instant::now();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    let v: Value = serde_json::from_str(d.trim()).unwrap();
                    let id = v["weftid"].as_str().unwrap_or("").to_string();
                    // The id is known once the publish answers; an event can arrive first.
                    for _ in 0..50 {
                        if let Some(t) = sent.lock().unwrap().get(&id) {
                            lat.push(now.duration_since(*t).as_secs_f64() * 1000.0);
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
    }
    publisher.await.unwrap();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (pct(0.5), pct(0.99), lat.len())
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing else we use.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Cluster::new("bench", 30, &three_regions(), "[limits]\npublish_queue_max = 16384\n");
        c.start_all();
        c.wait_meshed().await;
        let c = Arc::new(c);
        println!("weft publish benchmark: 3 nodes on loopback, {EVENTS} events of ~200 B JSON, batches of {BATCH}, {CLIENTS} clients");
        let baseline = fsync_rate(&c.dir);
        let local = batch_throughput(&c, "bench.local", "local").await;
        let regions = batch_throughput(&c, "bench.regions", "regions:2").await;
        let cbor = cbor_throughput(&c, "local", 9).await;
        let cbor_regions = cbor_throughput(&c, "regions:2", 10).await;
        let (p50, p99, got) = sse_latency(&c).await;
        println!("{:<44} {:>12}", "measure", "value");
        println!("{:<44} {:>10.0}/s", "baseline: SQLite fsync per event (same disk)", baseline);
        println!("{:<44} {:>10.0}/s  ({:.1}x baseline)", "HTTP batch, ack=local", local, local / baseline);
        println!("{:<44} {:>10.0}/s  ({:.2}x ack=local)", "HTTP batch, ack=regions:2", regions, regions / local);
        println!("{:<44} {:>10.0}/s  (one envelope per request, 16 clients)", "pre-signed CBOR, ack=local", cbor);
        println!("{:<44} {:>10.0}/s  ({:.2}x ack=local)", "pre-signed CBOR, ack=regions:2", cbor_regions, cbor_regions / cbor);
        println!("{:<44} {:>9.1} ms / {:.1} ms  ({got} events at ~200/s)", "publish -> SSE on another node p50 / p99", p50, p99);
        // Cross-region pushes failed over for a late acknowledgement, over the whole run:
        // on loopback every link works, so each one is needless (another copy to send).
        let mut failovers = Vec::new();
        for i in 0..3 {
            failovers.push(metric(&c, i, "weft_route_failovers ").await);
        }
        println!("{:<44} {:>12}", "push failovers (nodes 0, 1, 2; links all up)", format!("{failovers:?}"));
    });
}
