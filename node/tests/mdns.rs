//! LAN discovery: two nodes with `mdns = true` and no seeds, each in a network namespace
//! this test creates (a veth pair on 10.77.0.0/24), find each other and replicate. mDNS
//! multicast never leaves the namespaces. Needs root and iproute2, as CI has.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

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
    dir: std::path::PathBuf,
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
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn in_ns(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", ns, WEFT])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn two_nodes_without_seeds_find_each_other_by_mdns_and_replicate() {
    let id = std::process::id() % 100_000;
    let dir = std::env::temp_dir().join(format!("weft-mdns-{id}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lab = Lab {
        namespaces: Vec::new(),
        children: Vec::new(),
        dir: dir.clone(),
    };
    let (na, nb) = (format!("weft-a-{id}"), format!("weft-b-{id}"));
    let (va, vb) = (format!("wa{id}"), format!("wb{id}"));
    for ns in [&na, &nb] {
        sh(&["ip", "netns", "add", ns]);
        lab.namespaces.push(ns.clone());
    }
    sh(&[
        "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
    ]);
    sh(&["ip", "link", "set", &va, "netns", &na]);
    sh(&["ip", "link", "set", &vb, "netns", &nb]);
    for (ns, dev, ip) in [(&na, &va, "10.77.0.1/24"), (&nb, &vb, "10.77.0.2/24")] {
        sh(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    let mut keys = Vec::new();
    for n in ["a", "b"] {
        let path = dir.join(format!("{n}.key"));
        let out = Command::new(WEFT)
            .args(["keygen", "--out", path.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        keys.push(
            text.lines()
                .find_map(|l| l.strip_prefix("public key: "))
                .unwrap()
                .to_string(),
        );
    }
    let out = Command::new(WEFT)
        .args([
            "keygen",
            "--client",
            "--out",
            dir.join("c.key").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("token_sha256: "))
        .unwrap()
        .to_string();
    for (n, ip, region) in [
        ("a", "10.77.0.1", "aws:eu-west-1"),
        ("b", "10.77.0.2", "aws:us-east-1"),
    ] {
        let config = format!(
            r#"name = "{n}"
region = "{region}"
cloud = "aws"
jurisdiction = "EU"
key = "{n}.key"
data_dir = "data/{n}"
mdns = true
trusted_nodes = ["{}", "{}"]
[listen]
mesh = "{ip}:7400"
http = "127.0.0.1:8400"
[[principals]]
name = "t"
tenant = "t"
token_sha256 = "{hash}"
"#,
            keys[0], keys[1]
        );
        std::fs::write(dir.join(format!("{n}.toml")), config).unwrap();
    }
    for (n, ns) in [("a", &na), ("b", &nb)] {
        let log = std::fs::File::create(dir.join(format!("{n}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, WEFT, "node", "--config"])
            .arg(dir.join(format!("{n}.toml")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        lab.children.push(child);
    }
    // Each sees the other up, with no seeds configured.
    let started = Instant::now();
    for ns in [&na, &nb] {
        loop {
            let out = in_ns(ns, &["peers", "--node", "http://127.0.0.1:8400", "--json"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains("\"state\": \"up\"") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "{ns} found no peer by mDNS:\n{}",
                std::fs::read_to_string(dir.join("a.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let token = dir.join("c.key.token");
    let out = in_ns(
        &na,
        &[
            "publish",
            "--node",
            "http://127.0.0.1:8400",
            "--token-file",
            token.to_str().unwrap(),
            "lan.test",
            "found you",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = in_ns(
        &nb,
        &[
            "tail",
            "--node",
            "http://127.0.0.1:8400",
            "--count",
            "1",
            "--timeout",
            "20",
            "lan.test",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(line.contains(&id) && line.contains("found you"), "{line}");
}
