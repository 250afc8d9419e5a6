//! Real `weft` processes on loopback for the integration tests: keys, configs, start, stop,
//! `kill -9`, and HTTP helpers. Every process is killed when its handle drops; every wait
//! is bounded.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// One node's placement.
#[derive(Clone)]
pub struct Spec {
    pub name: &'static str,
    pub region: &'static str,
    pub jurisdiction: &'static str,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<NodeProc>,
    pub token: String,
    pub keys: Vec<String>,
}

pub struct NodeProc {
    pub spec: Spec,
    pub config: PathBuf,
    pub http: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_ok(args: &[&str]) -> String {
    let out = Command::new(WEFT).args(args).output().expect("run weft");
    assert!(
        out.status.success(),
        "weft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no {label} in {out}"))
}

impl Cluster {
    /// Writes keys and configs for `specs` under a fresh directory; `net` (1..=250) picks
    /// the loopback subnet 127.`net`.0.x and HTTP ports 20000 + net*10 + i, so tests
    /// running side by side do not collide.
    pub fn new(test: &str, net: u8, specs: &[Spec], extra: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("weft-it-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut keys = Vec::new();
        for s in specs {
            let path = dir.join(format!("{}.key", s.name));
            let out = run_ok(&["keygen", "--out", path.to_str().unwrap()]);
            keys.push(field(&out, "public key:"));
        }
        let cpath = dir.join("client.key");
        let out = run_ok(&["keygen", "--client", "--out", cpath.to_str().unwrap()]);
        let hash = field(&out, "token_sha256:");
        let token = std::fs::read_to_string(dir.join("client.key.token"))
            .unwrap()
            .trim()
            .to_string();
        let trusted = keys
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            let mesh = format!("127.{net}.0.{}:7400", i + 1);
            let http_port = 20000 + net as u16 * 10 + i as u16;
            let http = format!("127.0.0.1:{http_port}");
            let seed = format!("127.{net}.0.1:7400");
            let text = format!(
                r#"name = "{name}"
region = "{region}"
cloud = "{cloud}"
jurisdiction = "{jur}"
key = "{name}.key"
data_dir = "data/{name}"
seeds = ["{seed}"]
trusted_nodes = [{trusted}]
[listen]
mesh = "{mesh}"
http = "{http}"
[[principals]]
name = "tester"
tenant = "acme"
token_sha256 = "{hash}"
admin = true
[chaos]
enabled = true
{extra}
"#,
                name = s.name,
                region = s.region,
                cloud = s.region.split(':').next().unwrap(),
                jur = s.jurisdiction,
            );
            let config = dir.join(format!("{}.toml", s.name));
            std::fs::write(&config, text).unwrap();
            nodes.push(NodeProc {
                spec: s.clone(),
                config,
                http: format!("http://{http}"),
                child: None,
                log: dir.join(format!("{}.log", s.name)),
            });
        }
        Self {
            dir,
            nodes,
            token,
            keys,
        }
    }

    pub fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap();
        // `WEFT_TEST_LOG` (e.g. `info,weft=debug`) sets the nodes' log filter when a
        // failing test needs more than `info` in its logs.
        let child = Command::new(WEFT)
            .args(["node", "--config", n.config.to_str().unwrap()])
            .env(
                "RUST_LOG",
                std::env::var("WEFT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weft node");
        n.child = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Stops node `i` with SIGTERM and waits up to `limit` for it to exit: its exit
    /// status, or `None` when it is still running then (it is killed).
    pub async fn stop_gracefully(
        &mut self,
        i: usize,
        limit: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        self.stop_by_signal(i, "TERM", limit).await
    }

    /// Sends node `i` the signal `name` (`TERM`, `HUP`) and waits up to `limit` for it to
    /// exit; killed and `None` past it.
    pub async fn stop_by_signal(
        &mut self,
        i: usize,
        name: &str,
        limit: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.nodes[i].child.take()?;
        let killed = std::process::Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    pub fn url(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.nodes[i].http)
    }

    /// Waits until node `i` answers `/healthz`.
    pub async fn wait_healthy(&self, i: usize) {
        let c = reqwest::Client::new();
        wait_for(Duration::from_secs(20), || async {
            c.get(self.url(i, "/healthz"))
                .send()
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node {i} did not come up:\n{}", self.log(i)));
    }

    /// Waits until every node sees all others up.
    pub async fn wait_meshed(&self) {
        let want = self.nodes.len() - 1;
        let c = reqwest::Client::new();
        for i in 0..self.nodes.len() {
            wait_for(Duration::from_secs(30), || async {
                let v: Value = c
                    .get(self.url(i, "/v1/mesh/peers"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let up = v["peers"]
                    .as_array()?
                    .iter()
                    .filter(|p| p["state"] == "up")
                    .count();
                (up == want).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i} did not see {want} peers up:\n{}", self.log(i)));
        }
    }

    /// Waits until node `i` sees `n` peers up, asking with the cluster's token (a node
    /// under a policy authorizes every read).
    pub async fn wait_peers_up(&self, i: usize, n: usize) {
        wait_for(Duration::from_secs(30), || async {
            let v = self.get_auth(i, "/v1/mesh/peers").await;
            let up = v["peers"]
                .as_array()?
                .iter()
                .filter(|p| p["state"] == "up")
                .count();
            (up >= n).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node {i} did not see {n} peers up:\n{}", self.log(i)));
    }

    /// The cursor (an opaque token) of the first event of `stream` at node `i`.
    pub async fn first_cursor(&self, i: usize, stream: &str) -> String {
        let page = self
            .get_auth(i, &format!("/v1/streams/{stream}/events?after=0&limit=1"))
            .await;
        page[0]["weftcursor"].as_str().unwrap().to_string()
    }

    /// Every event id of `stream` stored at node `i`, in log order.
    pub async fn ids(&self, i: usize, stream: &str) -> Option<Vec<String>> {
        let c = reqwest::Client::new();
        // Cursors are opaque tokens (`cursor.rs`); 0 is the start.
        let mut after = "0".to_string();
        let mut out = Vec::new();
        loop {
            let url = self.url(
                i,
                &format!("/v1/streams/{stream}/events?after={after}&limit=1000"),
            );
            // Nodes enforcing a policy authorize reads; without one the token is ignored.
            let resp = c.get(url).bearer_auth(&self.token).send().await.ok()?;
            let next = resp
                .headers()
                .get("weft-next-cursor")?
                .to_str()
                .ok()?
                .to_string();
            let page: Vec<Value> = resp.json().await.ok()?;
            if page.is_empty() {
                return Some(out);
            }
            out.extend(
                page.iter()
                    .map(|e| e["weftid"].as_str().unwrap_or("").to_string()),
            );
            after = next;
        }
    }

    /// Publishes one JSON CloudEvent per item to node `i`; returns the response status and
    /// body.
    pub async fn publish(&self, i: usize, stream: &str, ack: &str, data: &[Value]) -> (u16, Value) {
        let batch: Vec<Value> = data
            .iter()
            .enumerate()
            .map(|(k, d)| {
                serde_json::json!({"specversion": "1.0", "id": format!("{}-{k}-{}", stream, nonce()),
                    "source": "it", "type": "t", "datacontenttype": "application/json", "data": d})
            })
            .collect();
        self.post_events(i, stream, ack, &self.token, &batch).await
    }

    /// POSTs `events` (CloudEvents, as a batch) to `stream` on node `i` as `token`; returns
    /// the response status and body (0 and null when the request failed).
    pub async fn post_events(
        &self,
        i: usize,
        stream: &str,
        ack: &str,
        token: &str,
        events: &[Value],
    ) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(self.url(i, &format!("/v1/streams/{stream}/events?ack={ack}")))
            .bearer_auth(token)
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(events).unwrap())
            .send()
            .await;
        match resp {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// GETs `path` on node `i` with the cluster's token and parses the JSON body.
    pub async fn get_auth(&self, i: usize, path: &str) -> Value {
        reqwest::Client::new()
            .get(self.url(i, path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// GET `path` at node `i` with the cluster's token: the status and the JSON body
    /// (null when the body is not JSON).
    pub async fn get_status_auth(&self, i: usize, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(self.url(i, path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn chaos(&self, i: usize, rules: Value) {
        let r = reqwest::Client::new()
            .post(self.url(i, "/v1/chaos"))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "rules": rules }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    pub fn key_path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The tests' runtime: two workers, like the machine.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `f` every 100 ms until it returns `Some` or `limit` passes.
pub async fn wait_for<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Three regions with measured round-trip times from sim/data/region-rtt.csv:
/// eu-west-1 <-> us-east-1 80.6 ms, eu-west-1 <-> ap-northeast-1 198.6 ms, us-east-1 <->
/// ap-northeast-1 145.3 ms. Each side delays its sends by half.
/// Two EU nodes (Ireland, Frankfurt) and one in the US: the jurisdiction tests' mesh.
pub fn two_eu_one_us() -> Vec<Spec> {
    vec![
        Spec {
            name: "eu-a",
            region: "aws:eu-west-1",
            jurisdiction: "EU",
        },
        Spec {
            name: "eu-b",
            region: "aws:eu-central-1",
            jurisdiction: "EU",
        },
        Spec {
            name: "us",
            region: "aws:us-east-1",
            jurisdiction: "US",
        },
    ]
}

pub fn three_regions() -> Vec<Spec> {
    vec![
        Spec {
            name: "eu",
            region: "aws:eu-west-1",
            jurisdiction: "EU",
        },
        Spec {
            name: "us",
            region: "aws:us-east-1",
            jurisdiction: "US",
        },
        Spec {
            name: "ap",
            region: "aws:ap-northeast-1",
            jurisdiction: "JP",
        },
    ]
}

/// Chaos rules giving node `i` of [`three_regions`] its one-way delays to the others.
pub fn latency_rules(i: usize) -> Value {
    let d = [[0.0, 40.3, 99.3], [40.3, 0.0, 72.65], [99.3, 72.65, 0.0]];
    let regions = ["aws:eu-west-1", "aws:us-east-1", "aws:ap-northeast-1"];
    let rules: Vec<Value> = (0..3)
        .filter(|&j| j != i)
        .map(|j| serde_json::json!({"peer": regions[j], "delay_ms": d[i][j], "jitter_ms": 1.0}))
        .collect();
    Value::Array(rules)
}

/// Runs `weft` in `dir`; returns (success, stdout + stderr).
pub fn weft_in(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(WEFT)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Operator keys made with `weft keygen` in a directory of their own (operators sign
/// offline, away from the nodes).
pub struct Operators {
    pub dir: PathBuf,
    /// Public keys (hex), in the order of the names given.
    pub keys: Vec<String>,
}

impl Operators {
    pub fn new(test: &str, names: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("weft-it-{test}-ops-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let keys = names
            .iter()
            .map(|n| {
                let (ok, out) = weft_in(&dir, &["keygen", "--out", &format!("{n}.key")]);
                assert!(ok, "{out}");
                field(&out, "public key:")
            })
            .collect();
        Self { dir, keys }
    }

    /// The node config's `[policy]` section trusting the first operator alone, the bundle
    /// read from `policy.cbor` beside the configs.
    pub fn node_policy(&self) -> String {
        format!(
            "[policy]\noperators = [\"{}\"]\nthreshold = 1\nbundle = \"policy.cbor\"\n",
            self.keys[0]
        )
    }

    /// Signs the TOML bundle `toml` with the named operators' keys (`weft policy sign`);
    /// returns the signed bytes, also written to `out` in the operators' directory.
    pub fn sign(&self, toml: &str, signers: &[&str], out: &str) -> Vec<u8> {
        let src = format!("{out}.toml");
        std::fs::write(self.dir.join(&src), toml).unwrap();
        let _ = std::fs::remove_file(self.dir.join(out));
        let keys: Vec<String> = signers.iter().map(|s| format!("{s}.key")).collect();
        let mut args = vec!["policy", "sign"];
        for k in &keys {
            args.extend(["--key", k.as_str()]);
        }
        args.extend(["--out", out, &src]);
        let (ok, text) = weft_in(&self.dir, &args);
        assert!(ok, "weft {args:?}: {text}");
        std::fs::read(self.dir.join(out)).unwrap()
    }
}

impl Drop for Operators {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `weft_rejected_total{reason}` on node `i` (0 when never counted).
pub async fn rejected(c: &Cluster, i: usize, reason: &str) -> u64 {
    metric(
        c,
        i,
        &format!("weft_rejected_total{{reason=\"{reason}\"}} "),
    )
    .await
}

/// The value of the `/metrics` line of node `i` that starts with `series` (the name with
/// its labels and a space); 0 when there is none.
pub async fn metric(c: &Cluster, i: usize, series: &str) -> u64 {
    let text = reqwest::get(c.url(i, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Posts a pre-signed envelope (`application/vnd.weft.event+cbor`) to `stream` on node `i`
/// with `?ack=`; the status and the JSON answer.
pub async fn post_cbor_ack(
    c: &Cluster,
    i: usize,
    stream: &str,
    body: Vec<u8>,
    ack: &str,
) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(c.url(i, &format!("/v1/streams/{stream}/events?ack={ack}")))
        .bearer_auth(&c.token)
        .header("content-type", "application/vnd.weft.event+cbor")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A draft on `stream` at `seq` for tenant `acme`, class `internal`, unrestricted, with a
/// clear payload: what a producer signs before it hands a node a pre-signed event.
pub fn draft(
    stream: &str,
    seq: u64,
    content_type: &str,
    payload: Vec<u8>,
) -> weft_fabric::EventDraft {
    weft_fabric::EventDraft {
        stream: weft_fabric::StreamName::new(stream).unwrap(),
        key: None,
        seq,
        hlc: weft_fabric::Hlc::new(1_795_000_000_000 + seq, 0).unwrap(),
        security: weft_fabric::SecurityContext {
            tenant: "acme".into(),
            principal: "producer".into(),
            classification: "internal".into(),
            residency: weft_fabric::Residency::Unrestricted,
            scopes: Default::default(),
            policy_epoch: 0,
        },
        content_type: content_type.into(),
        payload: weft_fabric::Payload::Clear(payload),
        trace: None,
    }
}

/// fsync'd SQLite transactions per second on the disk of `dir` (WAL, synchronous=FULL, one
/// small row each): what one fsync per event would allow, the rate group commit beats.
pub fn fsync_rate(dir: &Path) -> f64 {
    let conn = rusqlite::Connection::open(dir.join("fsync-rate.db")).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE t(v BLOB);")
        .unwrap();
    let n = 500;
    let started = Instant::now();
    for _ in 0..n {
        conn.execute("INSERT INTO t(v) VALUES (?1)", [vec![0u8; 300]])
            .unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// A bundle's tenant `acme`, role `writer` and principal `tester` (the cluster's token,
/// `token_sha256`) allowed to publish, subscribe and read every stream.
pub fn tester_may_do_anything(token_sha256: &str) -> String {
    format!(
        r#"[tenants.acme]

[roles.writer]

[principals.tester]
tenant = "acme"
roles = ["writer"]
token_sha256 = "{token_sha256}"

[[access]]
name = "write"
effect = "allow"
actions = ["publish", "subscribe", "read"]
streams = [">"]
roles = ["writer"]
"#
    )
}
