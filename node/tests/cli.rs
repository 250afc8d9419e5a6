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
