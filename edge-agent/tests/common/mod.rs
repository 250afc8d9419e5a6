//! Real `weft` nodes and `weft-agent` processes on loopback (127.70.0.x to 127.80.0.x) for
//! the agent's end-to-end tests and its benchmark: keys, configs, start, stop, `kill -9`,
//! and a minimal HTTP/1.1 client (the agent has no HTTP client dependency). Every process
//! is killed when its handle drops; every wait is bounded.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const AGENT: &str = env!("CARGO_BIN_EXE_weft-agent");

/// The agent binary to run: `$WEFT_AGENT_BIN` (e.g. the stripped `target/agent/weft-agent`
/// the benchmark measures) or this build's.
pub fn agent_bin() -> PathBuf {
    std::env::var("WEFT_AGENT_BIN").map_or_else(|_| PathBuf::from(AGENT), PathBuf::from)
}

/// The `weft` node binary: next to `weft-agent` in the same target directory (`cargo test
/// --workspace` builds both; `cargo build -p weft-node` first when testing this crate
/// alone), or `$WEFT_BIN`.
pub fn weft_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WEFT_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(AGENT).with_file_name("weft");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p weft-node` (or cargo test --workspace) first",
        p.display()
    );
    p
}

pub fn run_ok(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().expect("run");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        bin.display(),
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

pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Proc {
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A test world: nodes (meshed with each other) and one agent enrolled on all of them
/// through their `edge.devices` allow-list.
pub struct World {
    pub dir: PathBuf,
    pub net: u8,
    pub node_keys: Vec<String>,
    pub nodes: Vec<Proc>,
    pub agent_key: String,
    pub agent: Option<Proc>,
    pub agent_stdin: Option<ChildStdin>,
    pub agent_config: PathBuf,
    /// Bearer token of the nodes' `operator` principal.
    pub token: String,
    /// Its SHA-256 (hex), for a policy bundle naming the same principal.
    pub token_hash: String,
}

impl Drop for World {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill9();
        }
        if let Some(a) = &mut self.agent {
            a.kill9();
        }
        // Kept after a failure, for its logs.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn node_http(net: u8, i: usize) -> String {
    format!("127.{net}.0.{}:8400", i + 1)
}

pub fn agent_http(net: u8) -> String {
    format!("127.{net}.0.50:8700")
}

impl World {
    /// `n` nodes on 127.`net`.0.1..; `edge` is appended to each node's `[edge]` section;
    /// `biases` gives the agent's rtt_bias_ms per node.
    pub fn new(
        test: &str,
        net: u8,
        n: usize,
        edge: &str,
        biases: &[f64],
        agent_extra: &str,
    ) -> Self {
        Self::with_device(test, net, n, edge, "", biases, agent_extra)
    }

    /// As [`World::new`], with `device` appended to the agent's `[[edge.devices]]` entry
    /// (its `[[edge.devices.rules]]`).
    pub fn with_device(
        test: &str,
        net: u8,
        n: usize,
        edge: &str,
        device: &str,
        biases: &[f64],
        agent_extra: &str,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("weft-agent-it-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let weft = weft_bin();
        let mut node_keys = Vec::new();
        for i in 0..n {
            let path = dir.join(format!("n{i}.key"));
            let out = run_ok(&weft, &["keygen", "--out", path.to_str().unwrap()]);
            node_keys.push(field(&out, "public key:"));
        }
        let apath = dir.join("device.key");
        let out = run_ok(&agent_bin(), &["keygen", "--out", apath.to_str().unwrap()]);
        let agent_key = field(&out, "public key:");
        let cpath = dir.join("client.key");
        let out = run_ok(
            &weft,
            &["keygen", "--client", "--out", cpath.to_str().unwrap()],
        );
        let token_hash = field(&out, "token_sha256:");
        let token = std::fs::read_to_string(dir.join("client.key.token"))
            .unwrap()
            .trim()
            .to_string();
        let trusted = node_keys
            .iter()
            .map(|k| format!("\"{k}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for i in 0..n {
            let text = format!(
                r#"name = "n{i}"
region = "aws:eu-west-{r}"
cloud = "aws"
jurisdiction = "EU"
key = "n{i}.key"
data_dir = "data/n{i}"
seeds = ["127.{net}.0.1:7400"]
trusted_nodes = [{trusted}]
[listen]
mesh = "127.{net}.0.{a}:7400"
http = "127.{net}.0.{a}:8400"
edge = "127.{net}.0.{a}:7500"
[[principals]]
name = "operator"
tenant = "acme"
token_sha256 = "{token_hash}"
[edge]
{edge}
[[edge.devices]]
name = "till-7"
tenant = "acme"
key = "{agent_key}"
{device}
"#,
                r = i + 1,
                a = i + 1,
            );
            std::fs::write(dir.join(format!("n{i}.toml")), text).unwrap();
        }
        let mut nodes_toml = String::new();
        for (i, k) in node_keys.iter().enumerate() {
            nodes_toml.push_str(&format!(
                "[[nodes]]\naddr = \"127.{net}.0.{}:7500\"\nkey = \"{k}\"\nrtt_bias_ms = {}\n",
                i + 1,
                biases.get(i).copied().unwrap_or(0.0)
            ));
        }
        let agent_config = dir.join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                r#"name = "till-7"
key = "device.key"
data_dir = "agent-data"
{nodes_toml}
[inputs.stdin]
stream = "telemetry.till-7"
[inputs.http]
listen = "{http}"
{agent_extra}
"#,
                http = agent_http(net)
            ),
        )
        .unwrap();
        Self {
            dir,
            net,
            node_keys,
            nodes: (0..n)
                .map(|_| Proc {
                    child: None,
                    log: PathBuf::new(),
                })
                .collect(),
            agent_key,
            agent: None,
            agent_stdin: None,
            agent_config,
            token,
            token_hash,
        }
    }

    pub fn start_node(&mut self, i: usize) {
        let log = self.dir.join(format!("n{i}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(weft_bin())
            .args([
                "node",
                "--config",
                self.dir.join(format!("n{i}.toml")).to_str().unwrap(),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start weft node");
        self.nodes[i] = Proc {
            child: Some(child),
            log,
        };
    }

    /// Starts the agent with its standard input kept open for [`World::feed`] (or closed
    /// at once with `stdin_closed`, plus `--exit-when-drained`).
    pub fn start_agent(&mut self, stdin_closed: bool) {
        let log = self.dir.join("agent.log");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(agent_bin());
        cmd.args(["run", "--config", self.agent_config.to_str().unwrap()])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(f);
        if stdin_closed {
            cmd.arg("--exit-when-drained").stdin(Stdio::null());
        } else {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("start weft-agent");
        self.agent_stdin = child.stdin.take();
        self.agent = Some(Proc {
            child: Some(child),
            log,
        });
    }

    /// Writes lines `{"n": i}` for i in `range` to the agent's standard input.
    pub fn feed(&mut self, range: std::ops::Range<u64>) {
        let stdin = self.agent_stdin.as_mut().expect("agent stdin");
        let mut text = String::new();
        for i in range {
            text.push_str(&format!("{{\"n\":{i}}}\n"));
        }
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    pub fn agent_log(&self) -> String {
        self.agent.as_ref().map(Proc::log).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let mut s = format!("--- agent\n{}", tail(&self.agent_log(), 60));
        for (i, n) in self.nodes.iter().enumerate() {
            s.push_str(&format!("\n--- node {i}\n{}", tail(&n.log(), 30)));
        }
        s
    }

    /// The agent's status (its local HTTP input).
    pub fn status(&self) -> Option<Value> {
        let (code, body) = http_get(&agent_http(self.net), "/v1/status")?;
        (code == 200).then(|| serde_json::from_slice(&body).ok())?
    }

    /// Every event of `stream` at node `i`, in log order (CloudEvents JSON).
    pub fn events(&self, i: usize, stream: &str) -> Option<Vec<Value>> {
        // Cursors are the node's opaque tokens; 0 is the start.
        let mut after = "0".to_string();
        let mut out = Vec::new();
        loop {
            // With the token: a node under a policy authorizes reads like publishes.
            let (code, body) = http_get_as(
                &node_http(self.net, i),
                &format!("/v1/streams/{stream}/events?after={after}&limit=5000"),
                Some(&self.token),
            )?;
            if code != 200 {
                return None;
            }
            let page: Vec<Value> = serde_json::from_slice(&body).ok()?;
            if page.is_empty() {
                return Some(out);
            }
            after = page.last()?["weftcursor"].as_str()?.to_string();
            out.extend(page);
        }
    }

    pub fn metrics(&self, i: usize) -> String {
        http_get(&node_http(self.net, i), "/metrics")
            .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Node `i`'s `weft_rejected_total{reason}` (0 when the series is absent).
    pub fn rejected(&self, i: usize, reason: &str) -> u64 {
        let series = format!("weft_rejected_total{{reason=\"{reason}\"}} ");
        self.metrics(i)
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits up to `limit` for `f` to return `Some`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET over HTTP/1.1 with `connection: close`; (status, body). Handles chunked bodies.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, Vec<u8>)> {
    http_get_as(addr, path, None)
}

/// A GET with a bearer token.
pub fn http_get_as(addr: &str, path: &str, token: Option<&str>) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}connection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let code: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let mut body = raw[end..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let line_end = body[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let len =
                usize::from_str_radix(std::str::from_utf8(&body[at..line_end]).ok()?.trim(), 16)
                    .ok()?;
            if len == 0 {
                break;
            }
            out.extend_from_slice(&body[line_end + 2..line_end + 2 + len]);
            at = line_end + 2 + len + 2;
        }
        body = out;
    }
    Some((code, body))
}

/// The `data.n` values of events, in order.
pub fn ns(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| e["data"]["n"].as_u64())
        .collect()
}

/// Asserts the events are exactly n = 0..count, once each, in order, with sequence numbers
/// 1..=count from the agent's key.
pub fn assert_exactly_once_in_order(events: &[Value], count: u64, agent_key: &str, what: &str) {
    let got = ns(events);
    let want: Vec<u64> = (0..count).collect();
    if got != want {
        let dups = got.len() - got.iter().collect::<std::collections::BTreeSet<_>>().len();
        let first_bad = got.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} events (want {count}), {dups} duplicates, first difference at index {first_bad:?}",
            got.len()
        );
    }
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["weftorigin"].as_str(),
            Some(agent_key),
            "{what}: event {i} origin"
        );
        assert_eq!(
            e["weftseq"].as_u64(),
            Some(i as u64 + 1),
            "{what}: event {i} seq"
        );
        assert_eq!(
            e["weftprincipal"].as_str(),
            Some("till-7"),
            "{what}: event {i} principal"
        );
    }
}

/// POST over HTTP/1.1 with `connection: close`; (status, body).
pub fn http_post(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let code: u16 = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, raw[end..].to_vec()))
}
