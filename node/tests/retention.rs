//! Stream retention with real processes: a signed policy gives `metrics.>` a
//! `retention_s`, `logs.>` a `retention_bytes` and leaves `orders.>` without retention.
//! Two nodes hold everything; old metrics go by age and the oldest logs by size on both,
//! orders stay; the expirations are counted in `/metrics` and `/v1/status`. A third node
//! that joins afterwards catches up the orders (published after the metrics, so its
//! per-origin order must pass the expired numbers as Skips) and never receives the
//! expired events. A restarted node keeps them expired, and its own numbering goes on
//! past them. Bounded waits; processes killed at the end.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sha2::Digest as _;

fn bundle(keys: &[String], token_sha256: &str) -> String {
    format!(
        r#"format = 1
epoch = 3

[jurisdictions.EU]
regions = ["aws:eu-west-1", "aws:eu-central-1"]
nodes = ["{a}", "{b}"]

[jurisdictions.US]
regions = ["aws:us-east-1"]
nodes = ["{c}"]

{access}
[classes.public]
anywhere = true

[[streams]]
pattern = "metrics.>"
classification = "public"
replication = "all"
retention_s = 2

[[streams]]
pattern = "logs.>"
classification = "public"
replication = "all"
retention_bytes = 6000

[[streams]]
pattern = ">"
classification = "public"
replication = "all"
"#,
        a = keys[0],
        b = keys[1],
        c = keys[2],
        access = tester_may_do_anything(token_sha256),
    )
}

/// Waits up to `secs` for node `i` to serve `n` events of `stream`; panics with the
/// node's log otherwise.
async fn wait_count(c: &Cluster, i: usize, stream: &str, n: usize, secs: u64) {
    wait_for(Duration::from_secs(secs), || async {
        (count(c, i, stream).await == n).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "node {i} never served {n} events of {stream}:\n{}",
            c.log(i)
        )
    });
}

/// How many events of `stream` node `i` serves (`usize::MAX` when it does not answer).
async fn count(c: &Cluster, i: usize, stream: &str) -> usize {
    c.ids(i, stream).await.map_or(usize::MAX, |v| v.len())
}

#[test]
fn old_and_oversized_streams_expire_everywhere_and_stay_expired() {
    rt().block_on(async {
        let ops = Operators::new("retention", &["op"]);
        let extra = ops.node_policy();
        let mut c = Cluster::new("retention", 56, &two_eu_one_us(), &extra);
        let token_sha256 = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
        let signed = ops.sign(&bundle(&c.keys, &token_sha256), &["op"], "e3.cbor");
        std::fs::write(c.dir.join("policy.cbor"), signed).unwrap();

        c.start(0);
        c.start(1);
        c.wait_healthy(0).await;
        c.wait_healthy(1).await;
        c.wait_peers_up(0, 1).await;

        // Metrics first, then logs (some 40 events of ~500 bytes), then orders: the orders'
        // numbers are above every expired one.
        let (s, body) = c
            .publish(0, "metrics.cpu", "local", &vec![json!({"load": 1}); 10])
            .await;
        assert_eq!(s, 200, "{body}");
        let big = "x".repeat(400);
        for _ in 0..4 {
            let (s, body) = c
                .publish(0, "logs.app", "local", &vec![json!({"line": big}); 10])
                .await;
            assert_eq!(s, 200, "{body}");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (s, body) = c
            .publish(0, "orders.eu", "local", &vec![json!({"n": 1}); 5])
            .await;
        assert_eq!(s, 200, "{body}");
        for i in 0..2 {
            wait_count(&c, i, "orders.eu", 5, 20).await;
        }

        // Both nodes expire the metrics (older than 2 s) and all but ~6000 bytes of logs
        // within a pass or two (every 5 s); orders stay.
        for i in 0..2 {
            wait_count(&c, i, "metrics.cpu", 0, 20).await;
            let logs = count(&c, i, "logs.app").await;
            assert!(
                (5..=14).contains(&logs),
                "node {i} kept {logs} of 40 logs of ~530 bytes under a 6000-byte budget"
            );
            assert_eq!(count(&c, i, "orders.eu").await, 5);
            assert_eq!(
                metric(&c, i, "weft_events_expired_total{cause=\"age\"} ").await,
                10,
                "node {i}"
            );
            assert_eq!(
                metric(&c, i, "weft_events_expired_total{cause=\"size\"} ").await,
                40 - logs as u64,
                "node {i}"
            );
            let stats = c.get_auth(i, "/v1/status").await;
            assert_eq!(
                stats["stats"]["store_expired"].as_u64(),
                Some(50 - logs as u64),
                "node {i}: {stats}"
            );
            // Numbers 1-10 and 11-(50-logs) of origin 0, one range on every node.
            assert_eq!(stats["stats"]["store_expired_ranges"].as_u64(), Some(1));
        }
        let logs_kept = c.ids(0, "logs.app").await.unwrap();
        // `weft status` says it too.
        let (ok, out) = weft_in(&c.dir, &["status", "--node", &c.nodes[0].http]);
        assert!(ok, "{out}");
        let line = format!("expired        {} (in 1 ranges", 50 - logs_kept.len());
        assert!(out.contains(&line), "{out}");

        // A node joining now catches up the orders: its ordered delivery of origin 0 passes
        // the expired numbers (Skips from the nodes that expired them), and it never gets
        // the expired events.
        c.start(2);
        c.wait_healthy(2).await;
        wait_count(&c, 2, "orders.eu", 5, 40).await;
        assert_eq!(count(&c, 2, "metrics.cpu").await, 0);
        assert_eq!(c.ids(2, "logs.app").await.unwrap(), logs_kept);

        // A restart: nothing comes back, and the node's next own numbers follow the
        // expired ones (a reused number would be refused as an equivocation by its peers).
        c.kill9(0);
        c.start(0);
        c.wait_healthy(0).await;
        let (s, body) = c.publish(0, "orders.eu", "local", &[json!({"n": 2})]).await;
        assert_eq!(s, 200, "{body}");
        for i in 0..3 {
            wait_count(&c, i, "orders.eu", 6, 30).await;
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        for i in 0..3 {
            assert_eq!(count(&c, i, "metrics.cpu").await, 0, "node {i}");
            assert_eq!(c.ids(i, "logs.app").await.unwrap(), logs_kept, "node {i}");
        }
        // The late node passed the expired numbers as Skips.
        let v = c.get_auth(2, "/v1/status").await;
        let skips = v["stats"]["skips_in"].as_u64().unwrap_or(0);
        assert!(
            skips >= 50 - logs_kept.len() as u64,
            "skips_in {skips}: {v}"
        );
        for i in 0..3 {
            c.kill9(i);
        }
    });
}

fn partial_bundle(keys: &[String], token_sha256: &str) -> String {
    format!(
        r#"format = 1
epoch = 3

[jurisdictions.EU]
regions = ["aws:eu-west-1"]
nodes = ["{a}"]

[jurisdictions.US]
regions = ["aws:us-east-1", "aws:us-west-2"]
nodes = ["{b}", "{c}"]

{access}
[classes.eu-personal]
jurisdictions = ["EU"]
transit = "forbidden"

[classes.public]
anywhere = true

[[streams]]
pattern = "pii.>"
classification = "eu-personal"
replication = "all"

[[streams]]
pattern = "metrics.>"
classification = "public"
replication = "all"
retention_s = 2

[[streams]]
pattern = ">"
classification = "public"
replication = "all"
"#,
        a = keys[0],
        b = keys[1],
        c = keys[2],
        access = tester_may_do_anything(token_sha256),
    )
}

/// A US node holds only the public half of an EU origin's numbers (the EU-only ones reach
/// it as Skips), so each expired metric is a range of its own. Its bound on ranges
/// (`limits.expired_ranges_max = 3`) does not stop retention: the oldest ranges are
/// dropped. The origin, which holds all its numbers, expires them into one range. A US
/// node joining afterwards still passes every old number (the origin answers for the
/// dropped ones) and delivers the orders published after them.
#[test]
fn a_partial_holder_drops_its_oldest_ranges_and_keeps_expiring() {
    rt().block_on(async {
        let ops = Operators::new("retention-partial", &["op"]);
        let extra = ops.node_policy();
        let specs = [
            Spec {
                name: "eu",
                region: "aws:eu-west-1",
                jurisdiction: "EU",
            },
            Spec {
                name: "us-a",
                region: "aws:us-east-1",
                jurisdiction: "US",
            },
            Spec {
                name: "us-b",
                region: "aws:us-west-2",
                jurisdiction: "US",
            },
        ];
        let mut c = Cluster::new("retention-partial", 57, &specs, &extra);
        let token_sha256 = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
        let signed = ops.sign(&partial_bundle(&c.keys, &token_sha256), &["op"], "e3.cbor");
        std::fs::write(c.dir.join("policy.cbor"), signed).unwrap();
        let mut config = std::fs::read_to_string(&c.nodes[1].config).unwrap();
        config.push_str("[limits]\nexpired_ranges_max = 3\n");
        std::fs::write(&c.nodes[1].config, config).unwrap();

        c.start(0);
        c.start(1);
        c.wait_healthy(0).await;
        c.wait_healthy(1).await;
        c.wait_peers_up(0, 1).await;

        // Numbers 1-16 alternate EU-only and public; 17-19 are orders.
        for _ in 0..8 {
            for stream in ["pii.users", "metrics.cpu"] {
                let (s, body) = c.publish(0, stream, "local", &[json!({"v": 1})]).await;
                assert_eq!(s, 200, "{body}");
            }
        }
        let (s, body) = c
            .publish(0, "orders.us", "local", &vec![json!({"n": 1}); 3])
            .await;
        assert_eq!(s, 200, "{body}");
        wait_count(&c, 1, "orders.us", 3, 20).await;
        assert_eq!(count(&c, 1, "pii.users").await, 0);

        // Both expire all eight metrics; the US node keeps at most 3 ranges.
        for i in 0..2 {
            wait_count(&c, i, "metrics.cpu", 0, 25).await;
            assert_eq!(
                metric(&c, i, "weft_events_expired_total{cause=\"age\"} ").await,
                8,
                "node {i}"
            );
        }
        let origin = c.get_auth(0, "/v1/status").await;
        assert_eq!(origin["stats"]["store_expired_ranges"].as_u64(), Some(1));
        assert_eq!(metric(&c, 0, "weft_expired_ranges_dropped_total ").await, 0);
        let partial = c.get_auth(1, "/v1/status").await;
        let ranges = partial["stats"]["store_expired_ranges"].as_u64().unwrap();
        assert!((1..=3).contains(&ranges), "{partial}");
        let dropped = metric(&c, 1, "weft_expired_ranges_dropped_total ").await;
        assert_eq!(dropped, 8 - ranges, "{partial}");
        assert_eq!(
            partial["stats"]["store_expired_ranges_dropped"].as_u64(),
            Some(dropped)
        );
        assert!(
            c.log(1)
                .contains("dropping the oldest ranges of expired numbers"),
            "{}",
            c.log(1)
        );
        let (ok, out) = weft_in(&c.dir, &["status", "--node", &c.nodes[1].http]);
        assert!(ok, "{out}");
        let line = format!(
            "expired        8 (in {ranges} ranges of numbers, {dropped} older ranges dropped)"
        );
        assert!(out.contains(&line), "{out}");

        // A US node joining now delivers the orders: its order of the origin passes the
        // EU-only numbers and every expired one, the dropped ones included.
        c.start(2);
        c.wait_healthy(2).await;
        wait_count(&c, 2, "orders.us", 3, 40).await;
        assert_eq!(count(&c, 2, "metrics.cpu").await, 0);
        assert_eq!(count(&c, 2, "pii.users").await, 0);
        for i in 0..3 {
            c.kill9(i);
        }
    });
}
