//! LAN discovery: an agent with `[mdns] enabled` and no configured node finds a node
//! announcing itself by libp2p mDNS (`mdns = true`) and delivers to its edge port. The node
//! and the agent each run in a network namespace this test creates (a veth pair on
//! 10.78.0.0/24), so multicast never leaves them. Needs root and iproute2, as CI has (the
//! node's own mDNS test needs the same).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{AGENT, weft_bin};

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces and processes, removed when dropped.
struct Lab {
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn field(out: &[u8], label: &str) -> String {
    String::from_utf8_lossy(out)
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label}"))
        .trim()
        .to_string()
}

#[test]
fn an_agent_finds_a_node_by_mdns_and_delivers() {
    let id = std::process::id() % 100_000;
    let dir = std::env::temp_dir().join(format!("weft-agent-mdns-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        namespaces: Vec::new(),
        children: Vec::new(),
    };
    let (nn, na) = (format!("weft-en-{id}"), format!("weft-ea-{id}"));
    let (vn, va) = (format!("en{id}"), format!("ea{id}"));
    for ns in [&nn, &na] {
        sh(&["ip", "netns", "add", ns]);
        lab.namespaces.push(ns.clone());
    }
    sh(&[
        "ip", "link", "add", &vn, "type", "veth", "peer", "name", &va,
    ]);
    sh(&["ip", "link", "set", &vn, "netns", &nn]);
    sh(&["ip", "link", "set", &va, "netns", &na]);
    for (ns, dev, ip) in [(&nn, &vn, "10.78.0.1/24"), (&na, &va, "10.78.0.2/24")] {
        sh(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let weft = weft_bin();
    let out = Command::new(&weft)
        .args(["keygen", "--out", dir.join("n.key").to_str().unwrap()])
        .output()
        .unwrap();
    let node_key = field(&out.stdout, "public key:");
    let out = Command::new(AGENT)
        .args(["keygen", "--out", dir.join("device.key").to_str().unwrap()])
        .output()
        .unwrap();
    let device_key = field(&out.stdout, "public key:");
    std::fs::write(
        dir.join("n.toml"),
        format!(
            r#"name = "lan-node"
region = "aws:eu-west-1"
cloud = "aws"
jurisdiction = "EU"
key = "n.key"
data_dir = "data"
mdns = true
[listen]
mesh = "10.78.0.1:7400"
http = "127.0.0.1:8400"
edge = "10.78.0.1:7500"
[[edge.devices]]
name = "till-9"
tenant = "acme"
key = "{device_key}"
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            r#"name = "till-9"
key = "device.key"
data_dir = "agent-data"
[mdns]
enabled = true
port = 7500
trusted = ["{node_key}"]
[inputs.stdin]
stream = "lan.till-9"
"#
        ),
    )
    .unwrap();
    std::fs::write(dir.join("lines"), "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n").unwrap();
    let node = Command::new("ip")
        .args(["netns", "exec", &nn])
        .arg(&weft)
        .args(["node", "--config", dir.join("n.toml").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("n.log")).unwrap())
        .spawn()
        .unwrap();
    lab.children.push(node);
    let agent = Command::new("ip")
        .args([
            "netns",
            "exec",
            &na,
            AGENT,
            "run",
            "--exit-when-drained",
            "--config",
        ])
        .arg(dir.join("agent.toml"))
        .stdin(std::fs::File::open(dir.join("lines")).unwrap())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    lab.children.push(agent);
    // The agent exits 0 only once every line is durable at a node: it must have found one.
    let started = Instant::now();
    let status = loop {
        if let Some(s) = lab.children[1].try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the agent found no node by mDNS:\n{}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    assert!(status.success(), "{log}");
    assert!(log.contains("node found by mDNS"), "{log}");
    let out = Command::new("ip")
        .args(["netns", "exec", &nn])
        .arg(&weft)
        .args([
            "tail",
            "--node",
            "http://127.0.0.1:8400",
            "--count",
            "3",
            "--timeout",
            "20",
            "lan.till-9",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.contains(&device_key),
        "events not from the device key: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
