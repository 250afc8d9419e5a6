//! The `weft` command line against a real node: `weft tail` stopped by a signal
//! acknowledges what it printed, and it reconnects across a `kill -9` of its node,
//! printing every event once.

mod common;

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// `weft tail` running in the background: its stdout lines arrive on a channel, its
/// stderr goes to a file.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::path::PathBuf,
}

impl Tail {
    fn start(c: &Cluster, name: &str, args: &[&str]) -> Tail {
        let stderr = c.dir.join(format!("{name}.stderr"));
        let mut child = Command::new(WEFT)
            .args(["tail", "--node", &c.nodes[0].http, "--token", &c.token])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start weft tail");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        Tail {
            child,
            lines,
            stderr,
        }
    }

    /// The next `n` lines' `data` (each within 20 s).
    fn data(&self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|i| {
                let line = self
                    .lines
                    .recv_timeout(Duration::from_secs(20))
                    .unwrap_or_else(|_| panic!("line {i} of {n} never came"));
                serde_json::from_str::<Value>(&line).unwrap()["data"].clone()
            })
            .collect()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Its exit code, waiting at most 20 s.
    fn exit_code(mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("weft tail did not exit");
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_durable_tail_stopped_by_a_signal_acknowledges_what_it_printed() {
    rt().block_on(async {
        let mut c = Cluster::new("cli-sig", 40, &three_regions()[..1], "");
        c.start(0);
        c.wait_healthy(0).await;
        let data: Vec<Value> = (1..=5).map(|n| json!({"n": n})).collect();
        let (status, _) = c.publish(0, "sig.x", "local", &data).await;
        assert_eq!(status, 200);
        for (sig, code) in [("-INT", 130), ("-TERM", 143)] {
            let tail = Tail::start(&c, "durable", &["--durable", "s1", "sig.x"]);
            let printed = tail.data(5);
            if sig == "-INT" {
                assert_eq!(printed, data);
            } else {
                // The second run starts after what the first acknowledged.
                let more: Vec<Value> = (6..=10).map(|n| json!({"n": n})).collect();
                assert_eq!(printed, more);
            }
            tail.signal(sig);
            assert_eq!(tail.exit_code(), Some(code), "{sig}");
            let more: Vec<Value> = (6..=10).map(|n| json!({"n": n})).collect();
            if sig == "-INT" {
                let (status, _) = c.publish(0, "sig.x", "local", &more).await;
                assert_eq!(status, 200);
            }
        }
        // Everything printed was acknowledged: a third run has nothing to print.
        let (ok, out) = weft_in(
            &c.dir,
            &[
                "tail",
                "--node",
                &c.nodes[0].http,
                "--token",
                &c.token,
                "--durable",
                "s1",
                "--timeout",
                "2",
                "sig.x",
            ],
        );
        assert!(!ok && out.contains("timed out after 0 events"), "{out}");
    });
}

#[test]
fn tail_reconnects_across_a_kill_9_and_prints_every_event_once() {
    rt().block_on(async {
        let mut c = Cluster::new("cli-reconnect", 41, &three_regions()[..1], "");
        c.start(0);
        c.wait_healthy(0).await;
        let first: Vec<Value> = (1..=3).map(|n| json!({"n": n})).collect();
        let (status, _) = c.publish(0, "re.x", "local", &first).await;
        assert_eq!(status, 200);
        let tail = Tail::start(&c, "reconnect", &["--after", "0", "re.x"]);
        assert_eq!(tail.data(3), first);
        c.kill9(0);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.start(0);
        c.wait_healthy(0).await;
        let second: Vec<Value> = (4..=6).map(|n| json!({"n": n})).collect();
        let (status, _) = c.publish(0, "re.x", "local", &second).await;
        assert_eq!(status, 200);
        assert_eq!(tail.data(3), second, "after the reconnection");
        // Nothing printed twice: no further line.
        assert!(
            tail.lines.recv_timeout(Duration::from_millis(500)).is_err(),
            "a line printed twice"
        );
        let stderr = std::fs::read_to_string(&tail.stderr).unwrap();
        assert!(stderr.contains("reconnecting in"), "{stderr}");
        tail.signal("-INT");
        assert_eq!(tail.exit_code(), Some(130));
    });
}

/// A bundle granting the first key the EU in eu-west-1 and the second the US in
/// us-east-1.
fn two_node_bundle(epoch: u64, keys: &[String]) -> String {
    format!(
        "format = 1\nepoch = {epoch}\n\
         [jurisdictions.EU]\nregions = [\"aws:eu-west-1\"]\nnodes = [\"{}\"]\n\
         [jurisdictions.US]\nregions = [\"aws:us-east-1\"]\nnodes = [\"{}\"]\n\
         [classes.public]\nanywhere = true\n\
         [[streams]]\npattern = \">\"\nclassification = \"public\"\nreplication = \"all\"\n",
        keys[0], keys[1]
    )
}

#[test]
fn policy_status_right_after_a_push_shows_the_asked_node_current() {
    rt().block_on(async {
        let ops = Operators::new("cli-status", &["op"]);
        let mut c = Cluster::new("cli-status", 42, &three_regions()[..2], &ops.node_policy());
        let first = ops.sign(&two_node_bundle(1, &c.keys), &["op"], "e1.cbor");
        std::fs::write(c.dir.join("policy.cbor"), first).unwrap();
        let (ok, out) = weft_in(
            &c.dir,
            &[
                "check-config",
                "--config",
                c.nodes[0].config.to_str().unwrap(),
            ],
        );
        assert!(
            ok && out.contains("policy bundle epoch 1 verified"),
            "{out}"
        );
        c.start_all();
        c.wait_healthy(0).await;
        c.wait_meshed().await;
        let node = c.nodes[0].http.clone();
        // The nodes gossip their epochs; wait until the view says 1 for both.
        let status = |args: &[&str]| {
            let mut all = vec!["policy", "status", "--node", node.as_str()];
            all.extend(args);
            weft_in(&c.dir, &all)
        };
        wait_for(Duration::from_secs(20), || async {
            let (ok, out) = status(&["--expect", "1"]);
            (ok && out.contains("2 live node(s)")).then_some(())
        })
        .await
        .expect("epoch 1 never current");
        ops.sign(&two_node_bundle(2, &c.keys), &["op"], "e2.cbor");
        let e2 = ops.dir.join("e2.cbor");
        let (ok, out) = weft_in(
            &c.dir,
            &[
                "policy",
                "push",
                "--node",
                &node,
                "--token",
                &c.token,
                e2.to_str().unwrap(),
            ],
        );
        assert!(ok && out.contains("epoch 2 in force"), "{out}");
        let digest = out
            .lines()
            .find_map(|l| l.strip_prefix("bundle sha256 "))
            .expect("digest printed")
            .trim()
            .to_string();
        // At once: the node's own row is its own state, not its gossip about itself (the
        // other node may still be behind for a moment: its row is not checked).
        let (_, out) = status(&["--expect-digest", &digest]);
        assert!(out.contains(": matches"), "{out}");
        let own = out
            .lines()
            .find(|l| l.contains("this node"))
            .unwrap_or_else(|| panic!("no row of this node: {out}"));
        assert!(own.contains(" 2  current"), "{out}");
        let (ok, out) = status(&["--expect-digest", &"0".repeat(64)]);
        assert!(!ok && out.contains("DIFFERS"), "{out}");
    });
}

/// `weft check-config` loads the key as `weft node` does: a key file the node would refuse
/// (readable by others) fails the check, naming the file and the fix; a missing one is
/// reported and the check passes (configs are checked away from their secrets).
#[test]
fn check_config_refuses_a_key_file_the_node_would_refuse() {
    use std::os::unix::fs::PermissionsExt as _;
    let c = Cluster::new("cc-key", 98, &three_regions()[..1], "");
    let config = c.nodes[0].config.to_str().unwrap().to_string();
    let key = c.dir.join("eu.key");
    let (ok, out) = weft_in(&c.dir, &["check-config", "--config", &config]);
    assert!(ok && out.contains(": ok"), "{out}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, out) = weft_in(&c.dir, &["check-config", "--config", &config]);
    assert!(
        !ok && out.contains("refuses to start with this key") && out.contains("chmod 600"),
        "{out}"
    );
    std::fs::remove_file(&key).unwrap();
    let (ok, out) = weft_in(&c.dir, &["check-config", "--config", &config]);
    assert!(ok && out.contains("does not exist"), "{out}");
}

/// A node config's text with its `trusted_nodes` emptied.
fn empty_trust(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("trusted_nodes") {
                "trusted_nodes = []"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `weft check-config` warns of seeds to dial with no other node trusted (every mesh
/// handshake would be refused, both ways); a node whose only seed is itself is not warned.
#[test]
fn check_config_warns_of_seeds_without_a_trusted_node() {
    let c = Cluster::new("cc-trust", 97, &three_regions()[..2], "");
    // Node 0's only seed is itself: no warning even with no other node trusted.
    let first = c.nodes[0].config.to_str().unwrap().to_string();
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&first, empty_trust(&text)).unwrap();
    let (ok, out) = weft_in(&c.dir, &["check-config", "--strict", "--config", &first]);
    assert!(ok && !out.contains("warning:"), "{out}");
    // Node 1 dials node 0.
    let config = c.nodes[1].config.to_str().unwrap().to_string();
    let (ok, out) = weft_in(&c.dir, &["check-config", "--strict", "--config", &config]);
    assert!(ok && !out.contains("warning:"), "{out}");
    let text = std::fs::read_to_string(&c.nodes[1].config).unwrap();
    std::fs::write(&c.nodes[1].config, empty_trust(&text)).unwrap();
    let (ok, out) = weft_in(&c.dir, &["check-config", "--strict", "--config", &config]);
    assert!(
        !ok && out.contains("but trusted_nodes names no other node"),
        "{out}"
    );
}

/// `weft check-config` binds each listener for a moment: a port in use (here the HTTP one,
/// held by the test) is a warning that names the field, the address and the protocol, and
/// `--strict` fails on it.
#[test]
fn check_config_warns_of_a_listener_in_use_and_strict_fails_on_it() {
    let c = Cluster::new("cc-ports", 99, &three_regions()[..1], "");
    let config = c.nodes[0].config.to_str().unwrap().to_string();
    let (ok, out) = weft_in(&c.dir, &["check-config", "--strict", "--config", &config]);
    assert!(ok && !out.contains("warning:"), "{out}");
    let http = c.nodes[0].http.trim_start_matches("http://");
    let held = std::net::TcpListener::bind(http).unwrap();
    let (ok, out) = weft_in(&c.dir, &["check-config", "--config", &config]);
    assert!(
        ok && out.contains(&format!(
            "warning: `listen.http` {http} (TCP) is in use on this host"
        )),
        "{out}"
    );
    let (ok, out) = weft_in(&c.dir, &["check-config", "--strict", "--config", &config]);
    assert!(!ok && out.contains("--strict: failing the check"), "{out}");
    drop(held);
}

/// `weft inspect` on every envelope of the wire vectors (docs/wire-vectors.json): it says
/// `"valid"` as the vector does, with exit status 0 for a valid envelope and 1 for an
/// invalid one (2 is a usage error's: a script can tell the two apart).
#[test]
fn inspect_exit_status_says_whether_the_envelope_is_valid() {
    let vectors: Vec<Value> = serde_json::from_str(include_str!("../../docs/wire-vectors.json"))
        .expect("the wire vectors parse");
    let dir = std::env::temp_dir().join(format!("weft-it-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for (i, v) in vectors.iter().enumerate() {
        let path = dir.join(format!("v{i}.hex"));
        std::fs::write(&path, v["envelope_hex"].as_str().unwrap()).unwrap();
        let out = Command::new(WEFT)
            .args(["inspect", "--hex", path.to_str().unwrap()])
            .output()
            .unwrap();
        let said: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("vector {i}: not JSON ({e}): {out:?}"));
        assert_eq!(said["valid"], v["valid"], "vector {i}: {said}");
        let expected = if v["valid"] == json!(true) {
            valid += 1;
            0
        } else {
            invalid += 1;
            1
        };
        assert_eq!(out.status.code(), Some(expected), "vector {i}: {said}");
    }
    assert!(valid > 0 && invalid > 0, "the vectors hold both kinds");
    let usage = Command::new(WEFT).args(["inspect"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `weft agent-run` takes `--exit-when-drained` as `weft-agent run` does: an agent fed an
/// empty standard input, with nothing in its outbox, exits 0 at once, whether or not a node
/// answers (none does here).
#[test]
fn agent_run_exits_when_drained() {
    let dir = std::env::temp_dir().join(format!("weft-it-agent-drained-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, out) = weft_in(&dir, &["keygen", "--out", "device.key"]);
    assert!(ok, "{out}");
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "name = \"drained\"\nkey = \"device.key\"\ndata_dir = \"data\"\n\
             [[nodes]]\naddr = \"127.0.0.1:9\"\nkey = \"{}\"\n\
             [inputs.stdin]\nstream = \"t.drained\"\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let mut child = Command::new(WEFT)
        .args(["agent-run", "--exit-when-drained", "--config"])
        .arg(dir.join("agent.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after 30 s:\n{}",
                std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "{status:?}\n{}",
        std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
