//! Real `weft` processes on 127.x.0.y: replication with realistic injected latencies, SSE,
//! `kill -9` under load, partition and heal, bad input. Each test is bounded (waits of at
//! most tens of seconds) and kills its processes when it ends.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// The event ids a publish answered with.
fn ids_in(body: &Value) -> impl Iterator<Item = String> + '_ {
    body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
}

/// GETs `url` and parses the JSON body (panics on any failure: tests only).
async fn get_json<T: serde::de::DeserializeOwned>(url: String) -> T {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// GETs `url` and parses the JSON body; `None` on any failure (for polling loops).
async fn try_json(url: String) -> Option<Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

/// The entry of a `/v1/mesh/peers` answer for the peer with hex key `key`.
fn peer_in<'a>(peers: &'a Value, key: &str) -> Option<&'a Value> {
    peers["peers"].as_array()?.iter().find(|p| p["key"] == key)
}

#[test]
fn an_event_published_in_one_region_is_read_and_streamed_in_the_other_two() {
    rt().block_on(async {
        let mut c = Cluster::new("replicate", 11, &three_regions(), "");
        c.start_all();
        c.wait_meshed().await;
        for i in 0..3 {
            c.chaos(i, latency_rules(i)).await;
        }
        // Subscribers on the two other regions, from the start of the stream.
        let mut subs = Vec::new();
        for i in [1, 2] {
            let url = c.url(i, "/v1/streams/orders.eu/subscribe");
            subs.push(tokio::spawn(async move {
                use futures_util::StreamExt as _;
                let resp = reqwest::get(url).await.unwrap();
                assert_eq!(resp.status(), 200);
                let mut body = resp.bytes_stream();
                let mut text = String::new();
                while let Some(chunk) = body.next().await {
                    text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
                    if let Some(line) = text.lines().find(|l| l.starts_with("data:")) {
                        return serde_json::from_str::<Value>(&line[5..]).unwrap();
                    }
                }
                panic!("stream ended")
            }));
        }
        let (status, body) = c
            .publish(0, "orders.eu", "regions:3", &[json!({"order": 42})])
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["complete"], true);
        let regions: BTreeSet<&str> = body["regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(
            regions,
            BTreeSet::from(["aws:eu-west-1", "aws:us-east-1", "aws:ap-northeast-1"])
        );
        let id = body["ids"][0].as_str().unwrap().to_string();
        for sub in subs {
            let ev = tokio::time::timeout(Duration::from_secs(20), sub)
                .await
                .expect("SSE delivery in time")
                .unwrap();
            assert_eq!(ev["weftid"], id.as_str());
            assert_eq!(ev["data"]["order"], 42);
            assert_eq!(ev["weftprincipal"], "tester");
            assert_eq!(ev["weftstream"], "orders.eu");
        }
        for i in [1, 2] {
            assert_eq!(c.ids(i, "orders.eu").await.unwrap(), vec![id.clone()]);
        }
        // The injected latency shows in the RTT estimate (eu <-> ap 198.6 ms) once the
        // window of samples from before the rules has passed.
        let rtt = wait_for(Duration::from_secs(20), || async {
            let v = try_json(c.url(0, "/v1/mesh/peers")).await?;
            let rtt = v["peers"]
                .as_array()?
                .iter()
                .find(|p| p["region"] == "aws:ap-northeast-1")?["rtt_ms"]
                .as_f64()?;
            (rtt > 150.0).then_some(rtt)
        })
        .await;
        // Loose above: on a loaded machine (CI beside other builds) scheduling delay adds
        // to every sample; 296 ms was seen once against the injected 198.6.
        assert!(rtt.is_some_and(|r| r < 400.0), "rtt to ap: {rtt:?}");
        // Every peer view counts the Skips taken from that peer on its word.
        let peers: Value = get_json(c.url(0, "/v1/mesh/peers")).await;
        let peers = peers["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 2, "{peers:?}");
        assert!(peers.iter().all(|p| p["skips_taken"].is_u64()), "{peers:?}");
        assert!(
            peers.iter().all(|p| p["skips_contradicted"] == 0),
            "{peers:?}"
        );
    });
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_event_and_all_converge() {
    rt().block_on(async {
        let mut c = Cluster::new("kill9", 12, &three_regions(), "");
        c.start_all();
        c.wait_meshed().await;
        let mut acked: BTreeSet<String> = BTreeSet::new();
        let mut refused = 0;
        // Publish to node 0 in batches while it is killed and restarted.
        for round in 0..60 {
            if round == 20 {
                c.kill9(0);
            }
            if round == 30 {
                c.start(0);
            }
            let data: Vec<Value> = (0..20).map(|k| json!({"round": round, "k": k})).collect();
            let (status, body) = c.publish(0, "load", "local", &data).await;
            if status == 200 {
                for id in body["ids"].as_array().unwrap() {
                    acked.insert(id.as_str().unwrap().to_string());
                }
            } else {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(refused > 0, "the kill should have refused some publishes");
        assert!(acked.len() >= 40 * 20 / 2, "acknowledged {}", acked.len());
        // Every acknowledged event ends up on all three nodes.
        for i in 0..3 {
            let held = wait_for(Duration::from_secs(40), || async {
                let ids: BTreeSet<String> = c.ids(i, "load").await?.into_iter().collect();
                acked.is_subset(&ids).then_some(ids)
            })
            .await
            .unwrap_or_else(|| panic!("node {i} lacks acknowledged events:\n{}", c.log(i)));
            // Nothing duplicated in the log.
            let list = c.ids(i, "load").await.unwrap();
            assert_eq!(list.len(), held.len(), "node {i} logged an event twice");
        }
        let a: BTreeSet<String> = c.ids(0, "load").await.unwrap().into_iter().collect();
        for i in 1..3 {
            let b = wait_for(Duration::from_secs(20), || async {
                let b: BTreeSet<String> = c.ids(i, "load").await?.into_iter().collect();
                (b == a).then_some(b)
            })
            .await;
            assert!(b.is_some(), "node {i} differs from node 0");
        }
    });
}

#[test]
fn a_partition_through_the_chaos_api_heals_and_the_sides_converge() {
    rt().block_on(async {
        let mut c = Cluster::new("partition", 13, &three_regions(), "");
        c.start_all();
        c.wait_meshed().await;
        // Cut node 2 (ap) off from the others, both directions.
        c.chaos(2, json!([{"peer": "*", "blackhole": true}])).await;
        // What is in force is an admin's to read, as to change.
        let anon = reqwest::get(c.url(2, "/v1/chaos")).await.unwrap();
        assert_eq!(anon.status(), 401);
        let rules: Value = reqwest::Client::new()
            .get(c.url(2, "/v1/chaos"))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(rules["rules"][0]["blackhole"], true, "{rules}");
        for i in 0..2 {
            c.chaos(
                i,
                json!([{"peer": "aws:ap-northeast-1", "blackhole": true}]),
            )
            .await;
        }
        let mut ids = BTreeSet::new();
        for i in [0, 2] {
            let data: Vec<Value> = (0..50).map(|k| json!({"side": i, "k": k})).collect();
            let (status, body) = c.publish(i, "p", "local", &data).await;
            assert_eq!(status, 200, "{body}");
            ids.extend(ids_in(&body));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // During the partition, ap has only its own 50.
        assert_eq!(c.ids(2, "p").await.unwrap().len(), 50);
        for i in 0..3 {
            c.chaos(i, json!([])).await;
        }
        for i in 0..3 {
            let got = wait_for(Duration::from_secs(40), || async {
                let got: BTreeSet<String> = c.ids(i, "p").await?.into_iter().collect();
                (got == ids).then_some(())
            })
            .await;
            assert!(got.is_some(), "node {i} did not converge:\n{}", c.log(i));
        }
    });
}

/// A node that joins late gets what was published well before it (older than the recent
/// events a node announces to a joining member) through anti-entropy alone, and the answers of 64 events or more are read ahead on the answering nodes' reader
/// threads (`read_ahead.rs`), not on their drivers: the counters say so, no row is
/// counted corrupt, and the late node holds every event once.
#[test]
fn a_late_joiner_catches_up_through_answers_read_ahead() {
    rt().block_on(async {
        let mut c = Cluster::new("readahead", 31, &three_regions(), "");
        c.start(0);
        c.start(1);
        c.wait_healthy(0).await;
        c.wait_healthy(1).await;
        c.wait_peers_up(0, 1).await;
        let mut ids = BTreeSet::new();
        for batch in 0..3 {
            let data: Vec<Value> = (0..100).map(|k| json!({"batch": batch, "k": k})).collect();
            let (status, body) = c.publish(0, "old", "local", &data).await;
            assert_eq!(status, 200, "{body}");
            ids.extend(ids_in(&body));
        }
        assert_eq!(ids.len(), 300);
        let on_1 = wait_for(Duration::from_secs(30), || async {
            let got: BTreeSet<String> = c.ids(1, "old").await?.into_iter().collect();
            (got == ids).then_some(())
        })
        .await;
        assert!(on_1.is_some(), "node 1 lacks events:\n{}", c.log(1));
        // Past RECENT_OWN_US (5 s): node 0 no longer announces these to a member that joins
        // (it would, up to 256, and the late node would GRAFT them), so anti-entropy alone
        // brings them.
        tokio::time::sleep(Duration::from_secs(6)).await;
        c.start(2);
        let on_2 = wait_for(Duration::from_secs(40), || async {
            let got: BTreeSet<String> = c.ids(2, "old").await?.into_iter().collect();
            (got == ids).then_some(())
        })
        .await;
        assert!(
            on_2.is_some(),
            "the late node did not catch up:\n{}",
            c.log(2)
        );
        assert_eq!(
            c.ids(2, "old").await.unwrap().len(),
            300,
            "logged once each"
        );
        // The counters are in the status snapshot, refreshed every half second.
        let stat = |v: &Value, k: &str| v["stats"][k].as_u64().unwrap_or(0);
        let mut last = Vec::new();
        let mut counted = false;
        for _ in 0..10 {
            let (mut read_ahead, mut hits) = (0, 0);
            last.clear();
            for i in 0..2 {
                let v: Value = get_json(c.url(i, "/v1/status")).await;
                assert_eq!(stat(&v, "store_corrupt_rows"), 0, "node {i}: {v}");
                read_ahead += stat(&v, "store_read_ahead");
                hits += stat(&v, "store_read_ahead_hits");
                last.push(v["stats"].clone());
            }
            if read_ahead >= 1 && hits >= 64 {
                counted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let late: Value = get_json(c.url(2, "/v1/status")).await;
        assert!(
            counted,
            "no answer of 64 events or more was read ahead: {last:?}\nlate: {}",
            late["stats"]
        );
    });
}

#[test]
fn bad_input_gets_a_named_error_a_metric_and_stores_nothing() {
    rt().block_on(async {
        let mut c = Cluster::new("badinput", 14, &three_regions()[..1], "");
        c.start(0);
        let http = reqwest::Client::new();
        c.wait_healthy(0).await;
        let post = |path: &str, ctype: &str, body: Vec<u8>, token: Option<&str>| {
            let mut r = http
                .post(c.url(0, path))
                .header("content-type", ctype.to_string())
                .body(body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send()
        };
        let tok = c.token.clone();
        let cases: Vec<(u16, &str, reqwest::Response)> = vec![
            (
                401,
                "missing_token",
                post(
                    "/v1/streams/s/events",
                    "application/cloudevents+json",
                    b"{}".to_vec(),
                    None,
                )
                .await
                .unwrap(),
            ),
            (
                401,
                "bad_token",
                post(
                    "/v1/streams/s/events",
                    "application/cloudevents+json",
                    b"{}".to_vec(),
                    Some("nope"),
                )
                .await
                .unwrap(),
            ),
            (
                400,
                "bad_json",
                post(
                    "/v1/streams/s/events",
                    "application/cloudevents+json",
                    b"{not json".to_vec(),
                    Some(&tok),
                )
                .await
                .unwrap(),
            ),
            (
                400,
                "missing_attribute",
                post(
                    "/v1/streams/s/events",
                    "application/cloudevents+json",
                    br#"{"specversion":"1.0","id":"1","type":"t"}"#.to_vec(),
                    Some(&tok),
                )
                .await
                .unwrap(),
            ),
            (
                400,
                "bad_stream",
                post(
                    "/v1/streams/a..b/events",
                    "application/cloudevents+json",
                    b"{}".to_vec(),
                    Some(&tok),
                )
                .await
                .unwrap(),
            ),
            (
                400,
                "duplicate_in_batch",
                post(
                    "/v1/streams/s/events",
                    "application/cloudevents-batch+json",
                    br#"[{"specversion":"1.0","id":"d","type":"t","source":"s"},{"specversion":"1.0","id":"d","type":"t","source":"s"}]"#.to_vec(),
                    Some(&tok),
                )
                .await
                .unwrap(),
            ),
            (
                400,
                "bad_attribute_value",
                post(
                    "/v1/streams/s/events",
                    "application/cloudevents+json",
                    format!(
                        r#"{{"specversion":"1.0","id":"{}","type":"t","source":"s"}}"#,
                        "i".repeat(513)
                    )
                    .into_bytes(),
                    Some(&tok),
                )
                .await
                .unwrap(),
            ),
            (
                400,
                "missing_stream",
                post(
                    "/v1/events",
                    "application/cloudevents+json",
                    br#"{"specversion":"1.0","id":"1","type":"t","source":"s"}"#.to_vec(),
                    Some(&tok),
                )
                .await
                .unwrap(),
            ),
            (
                400,
                "bad_envelope",
                post(
                    "/v1/streams/s/events",
                    "application/vnd.weft.event+cbor",
                    vec![0x82, 0x01],
                    Some(&tok),
                )
                .await
                .unwrap(),
            ),
            (
                400,
                "bad_ack",
                post(
                    "/v1/streams/s/events?ack=everywhere",
                    "application/cloudevents+json",
                    b"{}".to_vec(),
                    Some(&tok),
                )
                .await
                .unwrap(),
            ),
            (
                413,
                "",
                post(
                    "/v1/streams/s/events",
                    "application/cloudevents+json",
                    vec![b' '; 17 << 20],
                    Some(&tok),
                )
                .await
                .unwrap(),
            ),
        ];
        for (want, reason, resp) in cases {
            assert_eq!(resp.status().as_u16(), want, "{reason}");
            if !reason.is_empty() {
                let v: Value = resp.json().await.unwrap();
                assert_eq!(v["error"]["reason"], reason, "{v}");
                assert!(!v["error"]["message"].as_str().unwrap().is_empty());
            }
        }
        let metrics = reqwest::Client::new()
            .get(c.url(0, "/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for reason in [
            "body_too_large",
            "missing_token",
            "bad_token",
            "bad_json",
            "missing_attribute",
            "bad_stream",
            "missing_stream",
            "bad_envelope",
            "bad_ack",
        ] {
            assert!(
                metrics.contains(&format!("weft_rejected_total{{reason=\"{reason}\"}} 1")),
                "{reason} not counted:\n{metrics}"
            );
        }
        let status: Value = get_json(c.url(0, "/v1/status")).await;
        assert_eq!(status["stored_events"], 0);
        // A pre-signed envelope with a forged signature is refused.
        let (_, ok) = c.publish(0, "s", "local", &[json!(1)]).await;
        assert_eq!(ok["complete"], true);
        let read = http
            .get(c.url(0, "/v1/streams/s/events?limit=0"))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 400);
        // A malformed query string gets this API's JSON error, counted (not axum's text);
        // a cursor that is not one of this node's tokens is refused as such.
        // A malformed number says what was expected and quotes what was given; a parameter
        // the route does not take is refused there (`limit` on a stream, any on one event).
        let id = "00".repeat(32);
        for (path, reason, says) in [
            ("/v1/streams/s/events?after=abc", "bad_cursor", "after"),
            (
                "/v1/streams/s/events?limit=-1",
                "bad_query",
                "limit: expected a whole number (no sign, at most 18446744073709551615), got \"-1\"",
            ),
            (
                "/v1/streams/s/events?last=99999999999999999999999",
                "bad_query",
                "got \"99999999999999999999999\"",
            ),
            ("/v1/streams/s/subscribe?limit=5", "bad_query", "unknown field `limit`"),
            ("/v1/streams/s/events?durable=x", "bad_query", "unknown field `durable`"),
            (&format!("/v1/events/{id}?bogus=1"), "bad_query", "bogus"),
        ] {
            let r = http.get(c.url(0, path)).send().await.unwrap();
            assert_eq!(r.status(), 400, "{path}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["reason"], reason, "{v}");
            assert!(v["error"]["message"].as_str().unwrap().contains(says), "{v}");
        }
        let r = http
            .post(c.url(0, "/v1/streams/s/subscriptions/x/ack"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["reason"], "bad_query", "{v}");
        let r = http
            .delete(c.url(0, "/v1/streams/s/subscriptions/x?x=1"))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(rejected(&c, 0, "bad_query").await, 7);
        assert_eq!(rejected(&c, 0, "bad_cursor").await, 1);
    });
}

#[test]
fn the_cli_publishes_tails_and_shows_peers_and_status() {
    rt().block_on(async {
        let mut c = Cluster::new("cli", 15, &three_regions()[..2], "");
        c.start_all();
        c.wait_meshed().await;
        let token_file = c.dir.join("client.key.token");
        let run = |args: Vec<String>| {
            let out = std::process::Command::new(WEFT)
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "weft {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let node0 = c.nodes[0].http.clone();
        let node1 = c.nodes[1].http.clone();
        let id = run(vec![
            "publish".into(),
            "--node".into(),
            node0.clone(),
            "--token-file".into(),
            token_file.to_str().unwrap().into(),
            "--ack".into(),
            "regions:2".into(),
            "cli.test".into(),
            r#"{"hello":"world"}"#.into(),
        ]);
        let id = id.trim().to_string();
        assert_eq!(id.len(), 64, "{id}");
        let tailed = run(vec![
            "tail".into(),
            "--node".into(),
            node1.clone(),
            "--count".into(),
            "1".into(),
            "--timeout".into(),
            "20".into(),
            "cli.test".into(),
        ]);
        let ev: Value = serde_json::from_str(tailed.lines().next().unwrap()).unwrap();
        assert_eq!(ev["weftid"], id.as_str());
        assert_eq!(ev["data"]["hello"], "world");
        // A reader that goes away (`weft tail | head`) ends the tail quietly, status 0, at
        // its next line.
        let publish_pipe = |n: u32| {
            run(vec![
                "publish".into(),
                "--node".into(),
                node0.clone(),
                "--token-file".into(),
                token_file.to_str().unwrap().into(),
                "--ack".into(),
                "regions:2".into(),
                "cli.pipe".into(),
                format!(r#"{{"n":{n}}}"#),
            ])
        };
        publish_pipe(1);
        let mut tail = std::process::Command::new(WEFT)
            .args(["tail", "--node", &node1, "--timeout", "20", "cli.pipe"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Read as _;
            let mut out = tail.stdout.take().unwrap();
            let mut first = [0u8; 1];
            out.read_exact(&mut first).unwrap();
            // The pipe's reader closes.
        }
        publish_pipe(2);
        let status = tail.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut tail.stderr.take().unwrap(), &mut err).unwrap();
        assert!(
            status.success() && !err.contains("panicked"),
            "{status}: {err}"
        );
        // A second event; a durable tail acknowledges what it printed, so two tails of one
        // event each see the two events in turn.
        run(vec![
            "publish".into(),
            "--node".into(),
            node0.clone(),
            "--token-file".into(),
            token_file.to_str().unwrap().into(),
            "cli.test".into(),
            "second".into(),
        ]);
        for want in [r#""hello":"world""#, r#""data":"second""#] {
            let out = run(vec![
                "tail".into(),
                "--node".into(),
                node1.clone(),
                "--durable".into(),
                "cli".into(),
                "--token-file".into(),
                token_file.to_str().unwrap().into(),
                "--count".into(),
                "1".into(),
                "--timeout".into(),
                "20".into(),
                "cli.test".into(),
            ]);
            assert!(out.contains(want), "{want}: {out}");
        }
        let peers = run(vec!["peers".into(), "--node".into(), node0.clone()]);
        assert!(
            peers.contains("aws:us-east-1") && peers.contains(" up "),
            "{peers}"
        );
        let mut status = String::new();
        for _ in 0..150 {
            status = run(vec!["status".into(), "--node".into(), node1.clone()]);
            // Two events of cli.test and two of cli.pipe; ready once it knows its own
            // numbering (it asks members at its start).
            if status.contains("stored_events  4") && status.contains("ready          yes") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            status.contains("aws:us-east-1")
                && status.contains("stored_events  4")
                && status.contains("ready          yes"),
            "{status}"
        );
        let routes = run(vec!["routes".into(), "--node".into(), node0]);
        assert!(routes.contains("aws:us-east-1"), "{routes}");
        // A wrong token is a readable error and a failure exit.
        let out = std::process::Command::new(WEFT)
            .args([
                "publish", "--node", &node1, "--token", "wrong", "cli.test", "x",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("bad_token"));
        // An empty DATA is nothing to publish, said once (it was noted as text, then
        // refused as empty input).
        let out = std::process::Command::new(WEFT)
            .args([
                "publish", "--node", &node1, "--token", "wrong", "cli.test", "",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("DATA is empty") && !err.contains("note:"),
            "{err}"
        );
        // Empty flags are named as the flags typed, not as event 0's attributes.
        for (flag, says) in [("--type", "--type is empty"), ("--key", "--key is empty")] {
            let out = std::process::Command::new(WEFT)
                .args([
                    "publish", "--node", &node1, "--token", "wrong", flag, "", "cli.test", "x",
                ])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains(says), "{err}");
        }
    });
}

/// Reads `n` SSE events from `url` (with an optional Last-Event-ID); returns their JSON.
async fn sse_take(url: String, last_event_id: Option<&str>, n: usize) -> Vec<Value> {
    sse_take_as(url, None, last_event_id, n).await
}

/// [`sse_take`] as the principal of `token` (a durable subscription is its holder's).
async fn sse_take_as(
    url: String,
    token: Option<&str>,
    last_event_id: Option<&str>,
    n: usize,
) -> Vec<Value> {
    use futures_util::StreamExt as _;
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("SSE event in time")
            .expect("stream open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    out.push(serde_json::from_str(d.trim()).unwrap());
                }
            }
        }
    }
    out.truncate(n);
    out
}

#[test]
fn sse_resumes_by_last_event_id_and_durable_subscriptions_survive_a_restart() {
    rt().block_on(async {
        let mut c = Cluster::new("sse", 16, &three_regions()[..1], "");
        c.start(0);
        c.wait_healthy(0).await;
        let data: Vec<Value> = (0..5).map(|k| json!({"k": k})).collect();
        let (status, _) = c.publish(0, "s", "local", &data).await;
        assert_eq!(status, 200);
        // Cursors are opaque tokens (each event's `weftcursor`, the SSE id).
        let all: Vec<Value> = reqwest::get(c.url(0, "/v1/streams/s/events?after=0"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token_of = |k: usize| all[k]["weftcursor"].as_str().unwrap().to_string();
        assert_eq!(token_of(1).len(), 64);
        // Resume after the second event: the first event is the third.
        let got = sse_take(c.url(0, "/v1/streams/s/subscribe"), Some(&token_of(1)), 3).await;
        let ks: Vec<i64> = got
            .iter()
            .map(|e| e["data"]["k"].as_i64().unwrap())
            .collect();
        assert_eq!(ks, vec![2, 3, 4]);
        assert_ne!(got[0]["weftcursor"], all[2]["weftcursor"], "a fresh token");
        // The newest two, however far the log goes.
        let got = sse_take(c.url(0, "/v1/streams/s/subscribe?last=2"), None, 2).await;
        let ks: Vec<i64> = got
            .iter()
            .map(|e| e["data"]["k"].as_i64().unwrap())
            .collect();
        assert_eq!(ks, vec![3, 4]);
        // `last=N` on a stream with nothing yet says where it starts (an id, no data), so a
        // client that loses the connection before an event came resumes from there and
        // gets everything published meanwhile, not the newest N alone.
        let start = {
            use futures_util::StreamExt as _;
            let resp = reqwest::get(c.url(0, "/v1/streams/quiet/subscribe?last=1"))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let mut body = resp.bytes_stream();
            let mut text = String::new();
            while !text.contains("\n\n") {
                let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
                    .await
                    .expect("the start frame in time")
                    .expect("stream open")
                    .unwrap();
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            let frame = &text[..text.find("\n\n").unwrap()];
            assert!(!frame.contains("data:"), "{frame:?}");
            frame
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .expect("an id")
                .trim()
                .to_string()
        };
        let (status, _) = c.publish(0, "quiet", "local", &data[..3]).await;
        assert_eq!(status, 200);
        let got = sse_take(
            c.url(0, "/v1/streams/quiet/subscribe?last=1"),
            Some(&start),
            3,
        )
        .await;
        let ks: Vec<i64> = got
            .iter()
            .map(|e| e["data"]["k"].as_i64().unwrap())
            .collect();
        assert_eq!(
            ks,
            vec![0, 1, 2],
            "resumed from the start, not the newest 1"
        );
        // A Last-Event-ID that is not this node's token: 400, not a silent start over.
        let resp = reqwest::Client::new()
            .get(c.url(0, "/v1/streams/s/subscribe"))
            .header("last-event-id", "2")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["reason"], "bad_cursor", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Last-Event-ID"),
            "{v}"
        );
        // A durable subscription is at-least-once: what was not acknowledged comes again.
        let got = sse_take_as(
            c.url(0, "/v1/streams/s/subscribe?durable=billing"),
            Some(&c.token),
            None,
            3,
        )
        .await;
        assert_eq!(got[0]["data"]["k"], 0);
        let got = sse_take_as(
            c.url(0, "/v1/streams/s/subscribe?durable=billing"),
            Some(&c.token),
            None,
            5,
        )
        .await;
        assert_eq!(
            got[0]["data"]["k"], 0,
            "unacknowledged events are redelivered"
        );
        // Acknowledge all five; the position is kept, across a restart too.
        let cursor = got[4]["weftcursor"].as_str().unwrap().to_string();
        let r = reqwest::Client::new()
            .post(c.url(
                0,
                &format!("/v1/streams/s/subscriptions/billing/ack?cursor={cursor}"),
            ))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A graceful stop (SIGTERM) ends even with an SSE stream open.
        let open = tokio::spawn(sse_take(c.url(0, "/v1/streams/s/subscribe"), None, 6));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let exited = c.stop_gracefully(0, Duration::from_secs(10)).await;
        assert!(
            exited.is_some_and(|s| s.success()),
            "node did not stop on SIGTERM"
        );
        open.abort();
        c.start(0);
        c.wait_healthy(0).await;
        let more: Vec<Value> = (5..7).map(|k| json!({"k": k})).collect();
        let (status, _) = c.publish(0, "s", "local", &more).await;
        assert_eq!(status, 200);
        // The durable subscription resumes after what it was sent before the restart.
        let got = sse_take_as(
            c.url(0, "/v1/streams/s/subscribe?durable=billing"),
            Some(&c.token),
            None,
            2,
        )
        .await;
        let ks: Vec<i64> = got
            .iter()
            .map(|e| e["data"]["k"].as_i64().unwrap())
            .collect();
        assert_eq!(ks, vec![5, 6]);
        // A Last-Event-ID this node cannot take (a number, as cursors were before they
        // were tokens) does not lock a durable subscriber out: it resumes from its saved
        // position, and the bad cursor is counted.
        let bad_before = rejected(&c, 0, "bad_cursor").await;
        let got = sse_take_as(
            c.url(0, "/v1/streams/s/subscribe?durable=billing"),
            Some(&c.token),
            Some("4"),
            1,
        )
        .await;
        assert_eq!(got[0]["data"]["k"], 5);
        assert_eq!(rejected(&c, 0, "bad_cursor").await, bad_before + 1);
        // A durable subscription is a principal's: without a token it is refused (401),
        // although reads are open without a policy; a position kept for no principal
        // could never be moved, and would start over at every reconnect.
        let resp = reqwest::Client::new()
            .get(c.url(0, "/v1/streams/s/subscribe?durable=billing"))
            .header("last-event-id", token_of(4))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let v: Value = resp.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("a durable subscription belongs to a principal"),
            "{v}"
        );
        let resp = reqwest::Client::new()
            .get(c.url(0, "/v1/streams/s/subscribe?durable=billing"))
            .header("last-event-id", token_of(4))
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        // A name whose cursor key ({stream}/{name}) would not fit the store's limit is
        // refused up front, naming the limit (it used to be answered 200 and not kept).
        let long = "n".repeat(127);
        for path in [
            format!("/v1/streams/s/subscribe?durable={long}"),
            format!("/v1/streams/s/subscriptions/{long}/ack?cursor=1"),
        ] {
            let req = if path.contains("/ack") {
                reqwest::Client::new().post(c.url(0, &path))
            } else {
                reqwest::Client::new().get(c.url(0, &path))
            };
            let resp = req.bearer_auth(&c.token).send().await.unwrap();
            assert_eq!(resp.status(), 400, "{path}");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["reason"], "bad_durable_name", "{v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains("109"),
                "{v}"
            );
        }
        // A character outside the set is named.
        let resp = reqwest::Client::new()
            .get(c.url(0, "/v1/streams/s/subscribe?durable=a%20b"))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("\"a b\" has ' '"),
            "{v}"
        );
        // Reads page with the cursor, across the restart (the key is kept in the data
        // directory): after the fifth event comes the sixth, then the seventh.
        let resp = reqwest::get(c.url(
            0,
            &format!("/v1/streams/s/events?after={}&limit=1", token_of(4)),
        ))
        .await
        .unwrap();
        let next = resp.headers()["weft-next-cursor"]
            .to_str()
            .unwrap()
            .to_string();
        let page: Vec<Value> = resp.json().await.unwrap();
        assert_eq!(page[0]["data"]["k"], 5);
        let next_page: Vec<Value> =
            reqwest::get(c.url(0, &format!("/v1/streams/s/events?after={next}&limit=1")))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        assert_eq!(next_page[0]["data"]["k"], 6);
        // And one event by id.
        let id = page[0]["weftid"].as_str().unwrap();
        let one: Value = get_json(c.url(0, &format!("/v1/events/{id}"))).await;
        assert_eq!(one["data"]["k"], 5);
    });
}

#[test]
fn overload_is_refused_with_retry_after_and_nothing_accepted_is_lost() {
    rt().block_on(async {
        let mut c = Cluster::new(
            "overload",
            17,
            &three_regions()[..1],
            "[limits]\npublish_queue_max = 1\n",
        );
        c.start(0);
        c.wait_healthy(0).await;
        let c = std::sync::Arc::new(c);
        let http = reqwest::Client::new();
        let mut tasks = Vec::new();
        for w in 0..64 {
            let (c, http) = (c.clone(), http.clone());
            tasks.push(tokio::spawn(async move {
                let batch: Vec<Value> = (0..50)
                    .map(|k| json!({"specversion": "1.0", "id": format!("o-{w}-{k}"), "source": "it", "type": "t", "data": k}))
                    .collect();
                let r = http
                    .post(c.url(0, "/v1/streams/o/events"))
                    .bearer_auth(&c.token)
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(serde_json::to_vec(&batch).unwrap())
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                let body: Value = r.json().await.unwrap();
                (status, retry, body)
            }));
        }
        let mut accepted = BTreeSet::new();
        let mut refused = 0;
        for t in tasks {
            let (status, retry, body) = t.await.unwrap();
            match status {
                200 => accepted.extend(body["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string())),
                503 => {
                    refused += 1;
                    assert_eq!(retry.as_deref(), Some("1"));
                    assert_eq!(body["error"]["reason"], "overloaded");
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert!(refused > 0, "64 concurrent batches against a queue of 1 should refuse some");
        assert!(!accepted.is_empty());
        let stored: BTreeSet<String> = c.ids(0, "o").await.unwrap().into_iter().collect();
        assert_eq!(stored, accepted, "exactly the accepted events are stored");
        let metrics = reqwest::get(c.url(0, "/metrics")).await.unwrap().text().await.unwrap();
        let overloaded = metrics
            .lines()
            .find_map(|l| l.strip_prefix("weft_rejected_total{reason=\"overloaded\"} "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(overloaded.is_some_and(|n| n > 0), "{metrics}");
    });
}

/// A publish body in progress holds its declared bytes of `limits.publish_bytes_inflight_max`
/// until its answer: with the budget taken by a slow client, the next publish gets a clean
/// 503 (its body read and dropped, not a reset connection), and once the slow body arrives
/// the budget is free again. Nothing refused is stored.
#[test]
fn publish_bodies_in_progress_are_bounded_in_bytes() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    rt().block_on(async {
        let mut c = Cluster::new(
            "bodybudget",
            23,
            &three_regions()[..1],
            "[limits]\nhttp_body_max = 65536\npublish_bytes_inflight_max = 65536\n",
        );
        c.start(0);
        c.wait_healthy(0).await;
        let event = |id: &str| {
            serde_json::to_vec(&json!({"specversion": "1.0", "id": id, "source": "it", "type": "t",
                "data": "x".repeat(60_000)}))
            .unwrap()
        };
        let addr = c.nodes[0].http.trim_start_matches("http://").to_string();
        // Sends a request head (and the body's first byte) and returns the status line
        // answered within 10 s: before the body, which never comes.
        let answered_before_body = |head: String| {
            let addr = addr.clone();
            async move {
                let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
                conn.write_all(head.as_bytes()).await.unwrap();
                let mut answer = vec![0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut answer))
                    .await
                    .expect("answered before its body")
                    .unwrap();
                String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or("").to_string()
            }
        };
        // A client without a valid token takes nothing from the budget: it is answered
        // 401 at once, before its body, while the body it declared would fill the budget.
        let status = answered_before_body(format!(
            "POST /v1/streams/b/events HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer not-a-token\r\ncontent-type: application/cloudevents+json\r\ncontent-length: 65536\r\n\r\n{{"
        ))
        .await;
        assert!(status.starts_with("HTTP/1.1 401"), "{status}");
        // So is an admin request without an admin token: its body is not read first.
        let status = answered_before_body(format!(
            "POST /v1/erase HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{{"
        ))
        .await;
        assert!(status.starts_with("HTTP/1.1 401"), "{status}");
        // A slow client: the whole budget declared, half of the body sent.
        let slow_body = event("slow");
        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/streams/b/events HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/cloudevents+json\r\ncontent-length: {}\r\n\r\n",
            c.token,
            slow_body.len()
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        let half = slow_body.len() / 2;
        slow.write_all(&slow_body[..half]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;

        let r = reqwest::Client::new()
            .post(c.url(0, "/v1/streams/b/events"))
            .bearer_auth(&c.token)
            .header("content-type", "application/cloudevents+json")
            .body(event("refused"))
            .send()
            .await
            .expect("a clean answer, not a reset connection");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers().get("retry-after").unwrap(), "1");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["reason"], "overloaded");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("limits.publish_bytes_inflight_max"),
            "{body}"
        );

        // The slow body completes: accepted, and the budget is back.
        slow.write_all(&slow_body[half..]).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        drop(slow);
        let (status, body) = c.publish(0, "b", "local", &[json!({"after": true})]).await;
        assert_eq!(status, 200, "{body}");

        let stored = c.ids(0, "b").await.unwrap();
        assert_eq!(stored.len(), 2, "the slow event and the one after it; not the refused one");
        let metrics = reqwest::get(c.url(0, "/metrics")).await.unwrap().text().await.unwrap();
        assert!(metrics.contains("weft_rejected_total{reason=\"overloaded\"} 1"), "{metrics}");
    });
}

#[test]
fn a_forged_envelope_and_an_untrusted_node_are_refused_and_counted() {
    use weft_fabric::Signer;
    rt().block_on(async {
        let specs = three_regions();
        let mut c = Cluster::new("forged", 18, &specs[..2], "");
        // Node 1 is not trusted by node 0: drop its key from node 0's list.
        let cfg = std::fs::read_to_string(&c.nodes[0].config).unwrap();
        std::fs::write(
            &c.nodes[0].config,
            cfg.replace(&format!("\"{}\"", c.keys[1]), ""),
        )
        .unwrap();
        c.start_all();
        let http = reqwest::Client::new();
        c.wait_healthy(0).await;
        let event = Signer::from_secret(&[4; 32])
            .sign(draft("s", 1, "text/plain", b"hi".to_vec()))
            .unwrap();
        let mut forged = event.encode();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let post = |body: Vec<u8>| {
            http.post(c.url(0, "/v1/streams/s/events"))
                .bearer_auth(&c.token)
                .header("content-type", "application/vnd.weft.event+cbor")
                .body(body)
                .send()
        };
        let r = post(forged).await.unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["reason"], "bad_signature");
        // The genuine envelope is accepted and keeps its producer's identity.
        let r = post(event.encode()).await.unwrap();
        assert_eq!(r.status(), 200);
        let page: Vec<Value> = get_json(c.url(0, "/v1/streams/s/events")).await;
        assert_eq!(page.len(), 1);
        assert_eq!(page[0]["weftorigin"], event.origin().to_string());
        // The untrusted node's handshakes fail and are counted; it never becomes a member.
        let failed = wait_for(Duration::from_secs(20), || async {
            let m = http
                .get(c.url(0, "/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            // A count above 0 (the series is there at 0 from the start).
            let counted = m
                .lines()
                .find_map(|l| {
                    l.strip_prefix("weft_rejected_total{reason=\"peer_handshake_failed\"} ")
                })
                .and_then(|v| v.parse::<u64>().ok());
            counted.is_some_and(|n| n > 0).then_some(m)
        })
        .await;
        assert!(
            failed.is_some(),
            "no refused handshake counted:\n{}",
            c.log(0)
        );
        let peers: Value = get_json(c.url(0, "/v1/mesh/peers")).await;
        assert!(peers["peers"].as_array().unwrap().is_empty(), "{peers}");
        let metrics = failed.unwrap();
        assert!(
            metrics.contains("weft_rejected_total{reason=\"bad_signature\"} 1"),
            "{metrics}"
        );
        // The refused node knows it too: its dial of the seed completes its side of the
        // handshake before the seed refuses its certificate, and it used to log "joining"
        // and never dial again. Now it counts and audits the refusal, warns, and dials
        // again: once node 0 trusts it (config fixed, restarted) it joins.
        let counted = wait_for(Duration::from_secs(20), || async {
            let n = rejected(&c, 1, "peer_handshake_failed").await;
            (n > 0).then_some(n)
        })
        .await;
        assert!(
            counted.is_some(),
            "node 1 counted no refusal:\n{}",
            c.log(1)
        );
        assert!(
            c.log(1).contains("do not trust each other's keys"),
            "{}",
            c.log(1)
        );
        assert!(
            c.stop_gracefully(0, Duration::from_secs(15))
                .await
                .is_some(),
            "node 0 stops"
        );
        std::fs::write(&c.nodes[0].config, &cfg).unwrap();
        c.start(0);
        c.wait_meshed().await;
    });
}

#[test]
fn a_seed_node_killed_and_declared_down_rejoins_after_its_restart() {
    rt().block_on(async {
        let mut c = Cluster::new("seedback", 19, &three_regions()[..2], "");
        c.start_all();
        c.wait_meshed().await;
        c.kill9(0);
        // Node 1 declares the seed down (SWIM suspicion over the WAN timings).
        let down = wait_for(Duration::from_secs(40), || async {
            let v = try_json(c.url(1, "/v1/mesh/peers")).await?;
            v["peers"]
                .as_array()?
                .iter()
                .any(|p| p["state"] == "down")
                .then_some(())
        })
        .await;
        assert!(
            down.is_some(),
            "node 1 never declared the seed down:\n{}",
            c.log(1)
        );
        // The seed comes back with only itself as seed: it must find node 1 from the
        // peers it remembers.
        c.start(0);
        c.wait_meshed().await;
        let (status, body) = c.publish(0, "back", "regions:2", &[json!({"k": 1})]).await;
        assert_eq!(status, 200, "{body}");
        // regions:1 is the same as local.
        let (status, body) = c.publish(1, "back", "regions:1", &[json!({"k": 2})]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["complete"], true);
    });
}

#[test]
fn regions_2_is_confirmed_for_concurrent_batches() {
    rt().block_on(async {
        let mut c = Cluster::new("regions2", 20, &three_regions()[..2], "");
        c.start_all();
        c.wait_meshed().await;
        let c = std::sync::Arc::new(c);
        // Each event travels in its own confirmable push: 4 x 300 of them at once is more
        // than the transport's outgoing-exchange slots, which must queue, not drop.
        let mut tasks = Vec::new();
        for w in 0..4 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let data: Vec<Value> = (0..300).map(|k| json!({"w": w, "k": k})).collect();
                c.publish(0, "r2", "regions:2", &data).await
            }));
        }
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!(status, 200, "{}", body["regions_min"]);
            assert_eq!(body["regions_min"], 2);
        }
    });
}

/// The same event published twice at once with `regions:2` (a CloudEvent retried while
/// the first request still waits: answered by idempotency, confirmed like a resend) waits
/// for the same confirmation: both answers are complete. Before, the first answer took
/// the event's confirmed regions and the second was answered incomplete (504).
#[test]
fn two_publishes_of_one_event_at_once_are_both_confirmed() {
    rt().block_on(async {
        let mut c = Cluster::new("regions-twice", 68, &three_regions()[..2], "");
        c.start_all();
        c.wait_meshed().await;
        // Confirmations from the US node take a while: both requests wait for the same one.
        c.chaos(1, json!([{"peer": "aws:eu-west-1", "delay_ms": 300.0}]))
            .await;
        let ce = json!({"specversion": "1.0", "id": "same", "source": "it", "type": "t",
            "data": {"k": 1}});
        let one = [ce.clone()];
        let (a, b) = tokio::join!(
            c.post_events(0, "r2", "regions:2", &c.token, &one),
            c.post_events(0, "r2", "regions:2", &c.token, &one)
        );
        for (status, body) in [a, b] {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["regions_min"], 2, "{body}");
            assert_eq!(body["complete"], true, "{body}");
        }
    });
}

/// One EU node and two US nodes (`us-1`, `us-2`), for the confirmation tests.
const EU_AND_TWO_US: [Spec; 3] = [
    Spec {
        name: "eu",
        region: "aws:eu-west-1",
        jurisdiction: "EU",
    },
    Spec {
        name: "us-1",
        region: "aws:us-east-1",
        jurisdiction: "US",
    },
    Spec {
        name: "us-2",
        region: "aws:us-east-1",
        jurisdiction: "US",
    },
];

/// Delays node 0's sends to node 2 by 40 ms (chaos) and waits until node 0 measures node
/// 2 as the farther of nodes 1 and 2, so it asks node 1 first. Returns the chaos rule, for
/// rules added later to keep it.
async fn make_node_2_the_farther(c: &Cluster) -> Value {
    let far = json!({"peer": c.keys[2], "delay_ms": 40.0});
    c.chaos(0, json!([far])).await;
    let measured = wait_for(Duration::from_secs(15), || async {
        let v = try_json(c.url(0, "/v1/mesh/peers")).await?;
        let rtt =
            |key: &str| v["peers"].as_array()?.iter().find(|p| p["key"] == key)?["rtt_ms"].as_f64();
        (rtt(&c.keys[1])? < 20.0 && rtt(&c.keys[2])? > 60.0).then_some(())
    })
    .await;
    assert!(
        measured.is_some(),
        "node 0 never measured node 2 as the farther member"
    );
    far
}

/// A region's confirmation does not hang on one member: when the region's nearest member
/// does not answer the confirmable push (here the publishing node's sends to it vanish, as
/// behind a network blackhole, while it stays a member through SWIM's indirect probes),
/// the next member of the region is asked half the ack timeout after the publish. Before,
/// the publish waited out its ack timeout (504) though the region held the event.
#[test]
fn a_region_is_confirmed_by_another_member_when_the_nearest_is_unreachable() {
    rt().block_on(async {
        let mut c = Cluster::new("confirm-other", 73, &EU_AND_TWO_US, "");
        c.start_all();
        c.wait_meshed().await;
        // us-2 is farther from eu than us-1: eu asks us-1 first.
        let far = make_node_2_the_farther(&c).await;
        let ce = json!({"specversion": "1.0", "id": "held", "source": "it", "type": "t",
            "data": {"k": 1}});
        let (status, body) = c
            .post_events(0, "r2", "local", &c.token, std::slice::from_ref(&ce))
            .await;
        assert_eq!(status, 200, "{body}");
        let id = body["ids"][0].as_str().unwrap().to_string();
        for i in 1..3 {
            let held = wait_for(Duration::from_secs(10), || async {
                c.ids(i, "r2").await.filter(|ids| ids.contains(&id))
            })
            .await;
            assert!(held.is_some(), "node {i} never held the event");
        }
        // eu's sends to us-1 are dropped from now on. The event published again with
        // regions:2: eu holds it, so its confirmation comes from confirmable copies.
        c.chaos(0, json!([far, {"peer": c.keys[1], "blackhole": true}]))
            .await;
        let (status, body) = c.post_events(0, "r2", "regions:2", &c.token, &[ce]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["regions_min"], 2, "{body}");
        assert_eq!(body["complete"], true, "{body}");
        assert_eq!(
            metric(
                &c,
                0,
                "weft_confirm_retries_total{reason=\"no_answer_by_half_timeout\"}"
            )
            .await,
            1,
            "us-2 was asked first, so the test proved nothing"
        );
    });
}

/// A region's nearest member that does not store the stream (it relays it) answers a
/// confirmable copy without the event: the region's next member is asked at once, and the
/// stream's next events go to that member first (the relay is remembered for the stream),
/// new events too, which the core's tree pushes to the relay. Before, only the half-way
/// round (half the ack timeout: 15 s here) asked another member, for every event of the
/// stream.
#[test]
fn a_region_whose_nearest_member_relays_the_stream_is_confirmed_by_the_next() {
    rt().block_on(async {
        let mut c = Cluster::new(
            "confirm-relay",
            75,
            &EU_AND_TWO_US,
            "[limits]\nack_timeout_ms = 30000\n",
        );
        // The relay is the us node that roots the region's tree for eu's events (its keys
        // are drawn at random), so that the core's pushes of new events go to it: it
        // relays the stream and stores none of it.
        let key =
            |i: usize| weft_fabric::OriginKey(hex::decode(&c.keys[i]).unwrap().try_into().unwrap());
        let root = weft_fabric::mesh::route::entry_of(&[key(1), key(2)], &key(0)).unwrap();
        let (relay, stores) = if root == key(1) { (1, 2) } else { (2, 1) };
        let config = std::fs::read_to_string(&c.nodes[relay].config).unwrap();
        std::fs::write(
            &c.nodes[relay].config,
            config.replace("[listen]", "streams = [\"other.>\"]\n[listen]"),
        )
        .unwrap();
        c.start_all();
        c.wait_meshed().await;
        // Both us nodes past the mesh's near-region bound (20 ms), so that eu pushes new
        // events to the region's root alone (a near region gets them at every member);
        // the node that stores the stream the farther, so that eu asks the relay first.
        c.chaos(
            0,
            json!([{"peer": c.keys[relay], "delay_ms": 25.0},
                {"peer": c.keys[stores], "delay_ms": 60.0}]),
        )
        .await;
        let measured = wait_for(Duration::from_secs(15), || async {
            let v = try_json(c.url(0, "/v1/mesh/peers")).await?;
            let rtt = |i: usize| {
                v["peers"]
                    .as_array()?
                    .iter()
                    .find(|p| p["key"] == c.keys[i])?["rtt_ms"]
                    .as_f64()
            };
            let (near, far) = (rtt(relay)?, rtt(stores)?);
            (near > 22.0 && far > near + 20.0).then_some(())
        })
        .await;
        assert!(measured.is_some(), "node 0 never measured the delays");
        let retries = |reason: &'static str| {
            let c = &c;
            async move {
                metric(
                    c,
                    0,
                    &format!("weft_confirm_retries_total{{reason=\"{reason}\"}}"),
                )
                .await
            }
        };
        for round in 0..2 {
            let ce = json!({"specversion": "1.0", "id": format!("e{round}"), "source": "it",
                "type": "t", "data": {"k": round}});
            // Published first with ack=local and held by the storing node, so the
            // regions:2 publish of the same event below is confirmed by the driver's
            // copies alone.
            let (status, body) = c
                .post_events(0, "rr", "local", &c.token, std::slice::from_ref(&ce))
                .await;
            assert_eq!(status, 200, "{body}");
            let id = body["ids"][0].as_str().unwrap().to_string();
            let held = wait_for(Duration::from_secs(10), || async {
                c.ids(stores, "rr").await.filter(|ids| ids.contains(&id))
            })
            .await;
            assert!(held.is_some(), "node {stores} never held event {round}");
            let (status, body) = c.post_events(0, "rr", "regions:2", &c.token, &[ce]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["regions_min"], 2, "{body}");
            assert_eq!(body["complete"], true, "{body}");
            assert_eq!(
                retries("no_answer_by_half_timeout").await,
                0,
                "round {round} waited for the half-way round"
            );
        }
        // The first event's copy went to the relay, which answered without it; the
        // second's went straight to the storing node.
        assert_eq!(retries("answered_without").await, 1);
        // New events: the core pushes them along its tree, to the relay (the region's
        // root), which answers without them. Known not to store the stream, it does not
        // hold the region: the storing node gets a copy at once, and the relay's answer
        // asks nobody more. Before, each new event waited for that answer, then was
        // copied (one `answered_without` retry per event).
        let pushes_to_relay = || metric(&c, relay, "weft_mesh_received_total{kind=\"push\"} ");
        let pushes_before = pushes_to_relay().await;
        for round in 2..4 {
            let ce = json!({"specversion": "1.0", "id": format!("e{round}"), "source": "it",
                "type": "t", "data": {"k": round}});
            let (status, body) = c.post_events(0, "rr", "regions:2", &c.token, &[ce]).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["regions_min"], 2, "{body}");
            assert_eq!(body["complete"], true, "{body}");
        }
        // The relay's answers (one round trip of the near link) have come back.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(retries("answered_without").await, 1);
        assert_eq!(
            retries("known_not_storing").await,
            2,
            "one copy per new event"
        );
        assert_eq!(retries("no_answer_by_half_timeout").await, 0);
        assert!(
            pushes_to_relay().await >= pushes_before + 2,
            "the relay was not sent the new events, so the test proved nothing"
        );
        assert!(
            c.ids(relay, "rr").await.unwrap_or_default().is_empty(),
            "the relay stores none of the stream"
        );
    });
}

/// SIGHUP stops the node gracefully, as SIGTERM does, saying that it reloads nothing
/// (before, it was not caught and killed the node at once). A node started with SIGHUP
/// ignored (`nohup`, as this test process may be: the node inherits it) keeps ignoring it
/// and stops on SIGTERM.
#[test]
fn sighup_stops_the_node_gracefully() {
    rt().block_on(async {
        let mut c = Cluster::new("sighup", 76, &three_regions()[..1], "");
        c.start(0);
        c.wait_healthy(0).await;
        let said = "the node reloads no configuration on SIGHUP";
        if sighup_ignored_here() {
            let pid = c.nodes[0].child.as_ref().unwrap().id().to_string();
            let sent = std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap();
            assert!(sent.success());
            tokio::time::sleep(Duration::from_secs(2)).await;
            let running = c.nodes[0].child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                running.is_none(),
                "a node started under nohup stopped on SIGHUP ({running:?}):\n{}",
                c.log(0)
            );
            c.wait_healthy(0).await;
            let status = c.stop_gracefully(0, Duration::from_secs(15)).await;
            assert!(status.is_some_and(|s| s.success()), "{status:?}");
            assert!(!c.log(0).contains(said), "{}", c.log(0));
            return;
        }
        let status = c.stop_by_signal(0, "HUP", Duration::from_secs(15)).await;
        let log = c.log(0);
        assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
        assert!(log.contains(said), "{log}");
    });
}

/// Whether this test process runs with SIGHUP ignored (started under `nohup`): the nodes
/// it starts inherit that.
fn sighup_ignored_here() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & 1 != 0)
    })
}

/// One principal holds at most `limits.subscribers_per_principal_max` open subscriptions
/// (429 `too_many_subscriptions` beyond, counted), so one client cannot take every slot;
/// readers without a token share one such share, and a closed subscription gives its
/// place back.
#[test]
fn one_principal_cannot_hold_every_subscription() {
    rt().block_on(async {
        let mut c = Cluster::new(
            "subs-share",
            69,
            &three_regions()[..1],
            "[limits]\nsubscribers_per_principal_max = 2\n",
        );
        c.start(0);
        c.wait_healthy(0).await;
        let http = reqwest::Client::new();
        let open = |token: Option<&str>| {
            let mut r = http.get(c.url(0, "/v1/streams/s/subscribe"));
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send()
        };
        let a = open(Some(&c.token)).await.unwrap();
        let b = open(Some(&c.token)).await.unwrap();
        assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
        let third = open(Some(&c.token)).await.unwrap();
        assert_eq!(third.status(), 429);
        let body: Value = third.json().await.unwrap();
        assert_eq!(body["error"]["reason"], "too_many_subscriptions", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("subscribers_per_principal_max"),
            "{body}"
        );
        // Another principal (here: readers without a token) has a share of its own.
        let anon = open(None).await.unwrap();
        assert_eq!(anon.status(), 200);
        // A closed subscription gives its place back (once its task sees the client gone).
        drop(a);
        let again = wait_for(Duration::from_secs(20), || async {
            let r = open(Some(&c.token)).await.ok()?;
            (r.status() == 200).then_some(r)
        })
        .await;
        assert!(again.is_some(), "the place never came back");
        assert!(rejected(&c, 0, "too_many_subscriptions").await >= 1);
        drop((b, anon, again));
    });
}

/// Anti-entropy over QUIC between real nodes: once the mesh is idle and every node has seen
/// the same of every origin for longer than the core's SYNC_SETTLED_US (30 s), rounds carry
/// a summary instead of every origin's ranges, and peers match it (no `unsettled` answer),
/// so nothing is sent twice; an event published afterwards still reaches every node.
#[test]
fn idle_anti_entropy_rounds_carry_a_summary_that_peers_match() {
    rt().block_on(async {
        let mut c = Cluster::new("settled", 22, &three_regions(), "");
        c.start_all();
        c.wait_meshed().await;
        for i in 0..3 {
            let (status, body) = c
                .publish(i, "orders.eu", "regions:3", &[json!({"from": i})])
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let stat = |v: &Value, k: &str| v["stats"][k].as_u64().unwrap_or(0);
        // Bounded: SYNC_SETTLED_US (30 s) plus a few 2 s rounds.
        let summarised = wait_for(Duration::from_secs(60), || async {
            let mut all = Vec::new();
            for i in 0..3 {
                let v: Value = get_json(c.url(i, "/v1/status")).await;
                all.push(v);
            }
            all.iter()
                .all(|v| stat(v, "sync_summaries_sent") >= 2)
                .then_some(all)
        })
        .await
        .expect("every node sent summaries once the mesh was idle for 30 s");
        for (i, v) in summarised.iter().enumerate() {
            assert_eq!(stat(v, "sync_unsettled_in"), 0, "node {i}: {v}");
            assert_eq!(stat(v, "sync_unsettled_out"), 0, "node {i}: {v}");
            assert_eq!(stat(v, "sync_events_new"), 0, "node {i}: {v}");
            assert!(
                stat(v, "sync_requests_sent") > stat(v, "sync_summaries_sent"),
                "the rounds before the mesh settled listed their origins: node {i}: {v}"
            );
        }
        let (status, body) = c
            .publish(2, "orders.eu", "regions:3", &[json!({"after": true})])
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["complete"], true, "{body}");
        for i in 0..3 {
            let held = wait_for(Duration::from_secs(10), || async {
                c.ids(i, "orders.eu")
                    .await
                    .filter(|ids| ids.len() == 4)
                    .map(|_| ())
            })
            .await;
            assert!(held.is_some(), "node {i} holds all four events");
        }
    });
}

/// A node acting as a compromised one (the chaos rule `forge_skips`: every push it relays
/// to ap goes as a Skip, "not for you") cannot hide events from ap: ap moves past the
/// numbers but keeps asking anti-entropy partners for them, the events come, and ap logs
/// them late, counts the contradictions against the liar in `/v1/mesh/peers` and
/// `weft_rejected_total{reason="skip_contradicted"}`, and audits them.
#[test]
fn a_node_forging_skips_cannot_hide_events_from_another() {
    rt().block_on(async {
        let tables = "[[tables]]\npattern = \"cnt.>\"\nstrategy = \"counter\"\n";
        let mut c = Cluster::new("forged-skips", 24, &three_regions(), tables);
        c.start_all();
        c.wait_meshed().await;
        // eu's direct link to ap is slow, so eu's pushes to ap's region go through us.
        c.chaos(
            0,
            json!([{"peer": "aws:ap-northeast-1", "delay_ms": 400.0}]),
        )
        .await;
        c.chaos(2, json!([{"peer": "aws:eu-west-1", "delay_ms": 400.0}]))
            .await;
        c.chaos(
            1,
            json!([{"peer": "aws:ap-northeast-1", "forge_skips": true}]),
        )
        .await;
        // The RTT window sees the slow link before the events go.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let mut ids = BTreeSet::new();
        for round in 0..10 {
            let data: Vec<Value> = (0..5).map(|k| json!({"round": round, "k": k})).collect();
            let (status, body) = c.publish(0, "hidden", "local", &data).await;
            assert_eq!(status, 200, "{body}");
            ids.extend(ids_in(&body));
            // A counter write too: a late one must still count in ap's table.
            let r = reqwest::Client::new()
                .put(c.url(0, "/v1/tables/cnt.stock/sku-1"))
                .bearer_auth(&c.token)
                .json(&json!({"add": round + 1}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Every event reaches ap, once.
        let got = wait_for(Duration::from_secs(40), || async {
            let list = c.ids(2, "hidden").await?;
            let set: BTreeSet<String> = list.iter().cloned().collect();
            (set == ids).then_some(list)
        })
        .await
        .unwrap_or_else(|| panic!("ap lacks events:\n{}", c.log(2)));
        assert_eq!(got.len(), ids.len(), "ap logged an event twice");
        // ap's table counts every write, late ones included: 1 + 2 + ... + 10.
        let total = wait_for(Duration::from_secs(40), || async {
            let v = try_json(c.url(2, "/v1/tables/cnt.stock/sku-1")).await?;
            (v["value"] == 55).then_some(())
        })
        .await;
        assert!(total.is_some(), "ap's counter is not 55:\n{}", c.log(2));
        // The table was built once, and late writes rebuilt the keys they wrote (not the
        // table).
        let log = c.log(2);
        let builds = log.matches("table built from the log").count();
        let repairs = log.matches("table keys rebuilt from the log").count();
        assert!(
            builds >= 1 && repairs >= 1,
            "{builds} builds, {repairs} key repairs:\n{log}"
        );
        // Status snapshots, metrics and the audit writer catch up.
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The liar's Skips were taken and then contradicted.
        let us_key = &c.keys[1];
        let peers: Value = get_json(c.url(2, "/v1/mesh/peers")).await;
        let us = peer_in(&peers, us_key)
            .unwrap_or_else(|| panic!("no peer us in {peers}"))
            .clone();
        let contradicted = us["skips_contradicted"].as_u64().unwrap();
        assert!(contradicted > 0, "{us}\n{}", c.log(2));
        assert!(us["skips_taken"].as_u64().unwrap() >= contradicted, "{us}");
        let eu = peer_in(&peers, &c.keys[0]).unwrap().clone();
        assert_eq!(eu["skips_contradicted"], 0, "{eu}");
        assert_eq!(rejected(&c, 2, "skip_contradicted").await, contradicted);
        let status: Value = get_json(c.url(2, "/v1/status")).await;
        assert_eq!(
            status["stats"]["skips_contradicted"].as_u64(),
            Some(contradicted),
            "{status}"
        );
        // Audited, naming the liar.
        let audit = c.get_auth(2, "/v1/audit?reason=skip_contradicted").await;
        let entries = audit["entries"]
            .as_array()
            .unwrap_or_else(|| panic!("{audit}"));
        assert_eq!(entries.len() as u64, contradicted, "{audit}");
        assert!(
            entries[0]["message"]
                .as_str()
                .unwrap()
                .contains(us_key.as_str()),
            "{audit}"
        );
        // Each names the event and its stream: one of eu's, published above.
        for entry in entries {
            let stream = entry["stream"].as_str().unwrap_or_default();
            assert!(stream == "hidden" || stream == "cnt.stock", "{entry}");
            if stream == "hidden" {
                let id = entry["event_id"].as_str().unwrap_or_default();
                assert!(ids.contains(id), "{entry}");
            }
        }
    });
}

/// A node cut off long enough for the mesh to declare it down rejoins under its next
/// generation when the partition heals (foca's rejoin; the core takes the generation), and
/// keeps that generation in its store: after a restart it comes back under a later one, so
/// its record supersedes the one the mesh holds (docs/node.md, `generation` in
/// `/v1/mesh/peers`).
#[test]
fn a_node_declared_down_in_a_partition_rejoins_and_a_restart_supersedes_it() {
    rt().block_on(async {
        let mut c = Cluster::new("rejoin", 25, &three_regions()[..2], "");
        c.start_all();
        c.wait_meshed().await;
        // Cut node 1 off, both directions, until node 0 declares it down.
        c.chaos(0, json!([{"peer": "*", "blackhole": true}])).await;
        c.chaos(1, json!([{"peer": "*", "blackhole": true}])).await;
        let key1 = c.keys[1].clone();
        let down = wait_for(Duration::from_secs(60), || async {
            let v = try_json(c.url(0, "/v1/mesh/peers")).await?;
            (peer_in(&v, &key1)?["state"] == "down").then_some(())
        })
        .await;
        assert!(down.is_some(), "node 1 never declared down:\n{}", c.log(0));
        // Heal: both rejoin under generation 1 and see each other up again.
        c.chaos(0, json!([])).await;
        c.chaos(1, json!([])).await;
        let back = wait_for(Duration::from_secs(60), || async {
            let v = try_json(c.url(0, "/v1/mesh/peers")).await?;
            let p = peer_in(&v, &key1)?;
            (p["state"] == "up" && p["generation"].as_u64()? >= 1).then(|| p.clone())
        })
        .await
        .unwrap_or_else(|| panic!("node 1 never back:\n{}\n{}", c.log(0), c.log(1)));
        let rejoined = back["generation"].as_u64().unwrap();
        assert!(
            c.log(1).contains("rejoined under a new generation"),
            "{}",
            c.log(1)
        );
        // A restart of node 1 takes the generation after the one it rejoined under.
        c.kill9(1);
        c.start(1);
        c.wait_meshed().await;
        let restarted = wait_for(Duration::from_secs(60), || async {
            let v = try_json(c.url(0, "/v1/mesh/peers")).await?;
            let p = peer_in(&v, &key1)?;
            (p["state"] == "up" && p["generation"].as_u64()? > rejoined).then_some(())
        })
        .await;
        assert!(
            restarted.is_some(),
            "node 1 not back above generation {rejoined}:\n{}",
            c.log(1)
        );
    });
}

/// A retry that idempotency answers (same source and id) is confirmed at the ack level it
/// asks for: while the second region is cut off it is not complete (it used to be answered
/// 200 `complete` at once), and after the heal the regions that hold it confirm it.
#[test]
fn a_retry_answered_by_idempotency_is_confirmed_at_its_ack_level() {
    rt().block_on(async {
        let mut c = Cluster::new("retryack", 26, &three_regions()[..2], "");
        c.start_all();
        c.wait_meshed().await;
        let ce = json!({"specversion": "1.0", "id": "retry-1", "source": "it", "type": "t",
            "datacontenttype": "application/json", "data": {"n": 1}});
        let post_to = |i: usize, ce: &Value| {
            let url = c.url(i, "/v1/streams/r/events?ack=regions:2");
            let (token, body) = (c.token.clone(), serde_json::to_vec(ce).unwrap());
            async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/cloudevents+json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            }
        };
        let post = || post_to(0, &ce);
        c.chaos(0, json!([{"peer": "*", "blackhole": true}])).await;
        let (s, first) = post().await;
        assert_eq!(s, 504, "{first}");
        assert_eq!(first["durable_local"], true, "{first}");
        let (s, again) = post().await;
        assert_eq!(
            s, 504,
            "a retry is not complete while the region is cut off: {again}"
        );
        assert_eq!(again["ids"], first["ids"], "the same event: {again}");
        assert_eq!(again["complete"], false, "{again}");
        c.chaos(0, json!([])).await;
        let confirmed = wait_for(Duration::from_secs(30), || async {
            let (s, v) = post().await;
            (s == 200).then_some(v)
        })
        .await
        .unwrap_or_else(|| panic!("never confirmed after the heal:\n{}", c.log(0)));
        assert_eq!(confirmed["regions_min"], 2, "{confirmed}");
        assert_eq!(confirmed["ids"], first["ids"], "{confirmed}");
        // Stored once.
        let ids = c.ids(0, "r").await.unwrap();
        assert_eq!(ids.len(), 1, "{ids:?}");
        // The same retry through the other node, which holds the event now: answered from
        // its record of the replicated event (it used to be stored again there, a second
        // event), and the same identity with other data is refused there too.
        let (s, there) = post_to(1, &ce).await;
        assert_eq!(s, 200, "{there}");
        assert_eq!(there["ids"], first["ids"], "the same event: {there}");
        let mut other = ce.clone();
        other["data"] = json!({"n": 2});
        let (s, refused) = post_to(1, &other).await;
        assert_eq!(s, 409, "{refused}");
        assert_eq!(refused["error"]["reason"], "event_id_reused", "{refused}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..2 {
            let ids = c.ids(i, "r").await.unwrap();
            assert_eq!(ids.len(), 1, "node {i}: {ids:?}");
        }
    });
}

/// Concurrent requests carrying the same CloudEvent (a client that timed out and retried
/// while its first request was still being served) store it once: every request is
/// answered with the one event's id, at every ack level (before, each request looked up
/// the idempotency record before any had committed it, and several were stored).
#[test]
fn concurrent_requests_with_one_cloudevent_store_it_once() {
    rt().block_on(async {
        let mut c = Cluster::new("ceclaims", 28, &three_regions()[..1], "");
        c.start(0);
        c.wait_healthy(0).await;
        for (n, ack) in ["local", "none"].into_iter().enumerate() {
            let stream = format!("claims{n}");
            let ce = json!({"specversion": "1.0", "id": format!("dup-{n}"), "source": "it", "type": "t",
                "datacontenttype": "application/json", "data": {"n": n}});
            let body = serde_json::to_vec(&ce).unwrap();
            let requests = (0..16).map(|_| {
                let url = c.url(0, &format!("/v1/streams/{stream}/events?ack={ack}"));
                let (token, body) = (c.token.clone(), body.clone());
                async move {
                    let r = reqwest::Client::new()
                        .post(url)
                        .bearer_auth(token)
                        .header("content-type", "application/cloudevents+json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    (status, r.json::<Value>().await.unwrap())
                }
            });
            let answers = futures_util::future::join_all(requests).await;
            let first = &answers[0].1["ids"];
            for (s, v) in &answers {
                assert_eq!(*s, 200, "ack={ack}: {v}");
                assert_eq!(&v["ids"], first, "ack={ack}: one event: {v}");
            }
            let stored = wait_for(Duration::from_secs(5), || async {
                c.ids(0, &stream).await.filter(|ids| !ids.is_empty())
            })
            .await
            .unwrap_or_else(|| panic!("ack={ack}: nothing stored: {answers:?}\n{}", c.log(0)));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let ids = c.ids(0, &stream).await.unwrap();
            assert_eq!(ids.len(), 1, "ack={ack}: stored once: {ids:?} ({stored:?})");
        }
        // A client that gives up on its request (the connection dropped mid-publish) and
        // retries at once: the retry is answered with the one stored event, whatever point
        // the first request had reached.
        for n in 0..20 {
            let ce = json!({"specversion": "1.0", "id": format!("gone-{n}"), "source": "it",
                "type": "t", "datacontenttype": "application/json", "data": {"n": n}});
            let send = |timeout: Duration| {
                reqwest::Client::builder()
                    .timeout(timeout)
                    .build()
                    .unwrap()
                    .post(c.url(0, "/v1/streams/gone/events?ack=local"))
                    .bearer_auth(&c.token)
                    .header("content-type", "application/cloudevents+json")
                    .body(serde_json::to_vec(&ce).unwrap())
                    .send()
            };
            let _ = send(Duration::from_micros(500 + 200 * n)).await;
            let r = send(Duration::from_secs(20)).await.unwrap();
            assert_eq!(r.status(), 200);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ids = c.ids(0, "gone").await.unwrap();
        assert_eq!(ids.len(), 20, "each event stored once: {ids:?}");
    });
}

/// A node whose store is full refuses publishes before signing them (507 `store_refused`,
/// nothing signed): no sequence number is spent, so once it has room again (here, a
/// restart with a larger limit) its next event takes the next number and no node waits
/// for a hole.
#[test]
fn a_full_store_refuses_publishes_before_signing_them() {
    rt().block_on(async {
        let mut c = Cluster::new("fullstore", 29, &three_regions()[..1], "");
        let cfg = std::fs::read_to_string(&c.nodes[0].config).unwrap();
        std::fs::write(
            &c.nodes[0].config,
            format!("{cfg}[limits]\nevents_max = 3\n"),
        )
        .unwrap();
        c.start(0);
        c.wait_healthy(0).await;
        for n in 0..2 {
            let (s, v) = c.publish(0, "full", "local", &[json!({"n": n})]).await;
            assert_eq!(s, 200, "{v}");
        }
        // A batch of three with room for one: the store takes the first and refuses the
        // other two. Counted once per event refused (not once more for the request), and
        // `weft_publishes_total` counts the one taken (it counted all three).
        let before = rejected(&c, 0, "store_refused").await;
        let batch: Vec<Value> = (2..5).map(|n| json!({"n": n})).collect();
        let (s, v) = c.publish(0, "full", "local", &batch).await;
        assert_eq!(s, 507, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("(1 of the request's events were accepted)"),
            "{v}"
        );
        assert_eq!(rejected(&c, 0, "store_refused").await, before + 2);
        assert_eq!(
            metric(&c, 0, "weft_publishes_total{api=\"cloudevents\"} ").await,
            3
        );
        let before = rejected(&c, 0, "store_refused").await;
        let (s, v) = c.publish(0, "full", "local", &[json!({"n": 3})]).await;
        assert_eq!(s, 507, "{v}");
        assert_eq!(v["error"]["reason"], "store_refused", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("nothing was signed") && message.contains("events_max = 3"),
            "{v}"
        );
        assert_eq!(rejected(&c, 0, "store_refused").await, before + 1);
        // A full node still takes system events: an erase request (and so a policy push)
        // is accepted and applied, not refused with 507.
        let r = reqwest::Client::new()
            .post(c.url(0, "/v1/erase"))
            .bearer_auth(&c.token)
            .json(&json!({"stream": "full", "key": "nothing"}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_eq!(status, 200, "{}", r.text().await.unwrap());
        c.kill9(0);
        std::fs::write(
            &c.nodes[0].config,
            format!("{cfg}[limits]\nevents_max = 10\n"),
        )
        .unwrap();
        c.start(0);
        c.wait_healthy(0).await;
        let (s, v) = c.publish(0, "full", "local", &[json!({"n": 4})]).await;
        assert_eq!(s, 200, "{v}");
        let events: Vec<Value> = reqwest::Client::new()
            .get(c.url(0, "/v1/streams/full/events?after=0"))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let seqs: Vec<u64> = events
            .iter()
            .map(|e| e["weftseq"].as_u64().unwrap())
            .collect();
        // Numbers 4 and 5 went to the batch's events the store refused after they were
        // signed (voided: peers take them as skips); 6 is the erase request's event
        // (`_weft.erase`); none went to the refusal before signing.
        assert_eq!(
            seqs,
            vec![1, 2, 3, 7],
            "no number spent on the refusal: {events:?}"
        );
    });
}

/// A graceful stop (SIGTERM) does not wait for a client that stopped reading its
/// subscription: before, the stream's task waited on its send and the HTTP server on the
/// connection, and the node never stopped (nor made its last commit).
#[test]
fn a_graceful_stop_does_not_wait_for_a_client_that_stopped_reading() {
    rt().block_on(async {
        let mut c = Cluster::new("stuckreader", 30, &three_regions()[..1], "");
        c.start(0);
        c.wait_healthy(0).await;
        let pad = "x".repeat(4000);
        for b in 0..40 {
            let data: Vec<Value> = (0..100)
                .map(|i| json!({"i": b * 100 + i, "pad": pad}))
                .collect();
            let (s, v) = c.publish(0, "big", "local", &data).await;
            assert_eq!(s, 200, "{v}");
        }
        // 16 MB of events to a subscriber that never reads its body.
        let stuck = reqwest::Client::new()
            .get(c.url(0, "/v1/streams/big/subscribe"))
            .send()
            .await
            .unwrap();
        assert_eq!(stuck.status(), 200);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let exited = c.stop_gracefully(0, Duration::from_secs(15)).await;
        assert!(
            exited.is_some_and(|s| s.success()),
            "the node did not stop within 15 s of SIGTERM:\n{}",
            c.log(0)
        );
        drop(stuck);
    });
}

/// A durable subscription whose position the node cannot keep (`limits.cursors_max`
/// reached) is told so (507 `cursors_full`, counted), not answered 200 and forgotten.
#[test]
fn a_cursor_the_node_cannot_keep_is_refused_not_forgotten() {
    rt().block_on(async {
        let mut c = Cluster::new(
            "cursors",
            27,
            &three_regions()[..1],
            "[limits]\ncursors_max = 1\nread_limit_max = 50\n",
        );
        // A node that stores stream `s` alone (its config's `streams`).
        let config = std::fs::read_to_string(&c.nodes[0].config).unwrap();
        std::fs::write(
            &c.nodes[0].config,
            config.replace("[listen]", "streams = [\"s\"]\n[listen]"),
        )
        .unwrap();
        c.start(0);
        c.wait_healthy(0).await;
        let (status, _) = c.publish(0, "s", "local", &[json!({"k": 1})]).await;
        assert_eq!(status, 200);
        let first = c.first_cursor(0, "s").await;
        // A read that names no limit gets the default page, capped at the node's limit
        // (it was 400 `bad_limit` "got 100" under any limit below 100).
        let (s, v) = c.get_status_auth(0, "/v1/streams/s/events").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
        // `weft-caught-up` says whether a page ended at the end of the log (cursors are
        // sealed afresh, so a client cannot compare them to tell): a page that stopped at
        // its limit may have more after it.
        let caught_up = |limit: &str| {
            let url = c.url(0, &format!("/v1/streams/s/events?limit={limit}"));
            let token = c.token.clone();
            async move {
                let r = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                r.headers()["weft-caught-up"].to_str().unwrap().to_string()
            }
        };
        assert_eq!(caught_up("1").await, "false");
        assert_eq!(caught_up("2").await, "true");
        // The system streams are stored by every node whatever its `streams`: an admin
        // reads them here (it was 404 `stream_not_stored`).
        let (s, v) = c.get_status_auth(0, "/v1/streams/_weft.erase/events").await;
        assert_eq!(s, 200, "{v}");
        let ack = |name: &'static str| {
            let url = c.url(
                0,
                &format!("/v1/streams/s/subscriptions/{name}/ack?cursor={first}"),
            );
            let token = c.token.clone();
            async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            }
        };
        let (s, v) = ack("first").await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = ack("second").await;
        assert_eq!(s, 507, "{v}");
        assert_eq!(v["error"]["reason"], "cursors_full", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("limits.cursors_max"),
            "{v}"
        );
        assert_eq!(rejected(&c, 0, "cursors_full").await, 1);
        // The kept one still moves.
        let (s, _) = ack("first").await;
        assert_eq!(s, 200);
        // Opening a new durable subscription is refused at once: its position could not
        // be kept, so no event is sent that its first ack would then fail to record (it
        // was a 200 stream whose every ack failed, the same events replayed each run).
        let r = reqwest::Client::new()
            .get(c.url(0, "/v1/streams/s/subscribe?durable=third"))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 507);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["reason"], "cursors_full", "{v}");
        assert_eq!(rejected(&c, 0, "cursors_full").await, 2);
        // The one it holds opens (its position is kept already).
        let r = reqwest::Client::new()
            .get(c.url(0, "/v1/streams/s/subscribe?durable=first"))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        drop(r);
        // Restarted storing another stream: the position held on `s` is still freed by its
        // principal (it was 404 `stream_not_stored`, and counted against the limits).
        assert!(
            c.stop_gracefully(0, Duration::from_secs(15))
                .await
                .is_some(),
            "the node stops"
        );
        let config = std::fs::read_to_string(&c.nodes[0].config).unwrap();
        std::fs::write(
            &c.nodes[0].config,
            config.replace("streams = [\"s\"]", "streams = [\"t\"]"),
        )
        .unwrap();
        c.start(0);
        c.wait_healthy(0).await;
        let r = reqwest::Client::new()
            .delete(c.url(0, "/v1/streams/s/subscriptions/first"))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
    });
}

/// One principal cannot take every durable subscription (`limits.cursors_per_principal_max`:
/// 507 `cursors_full` naming the limit, others unaffected), and a principal deletes its own
/// (`DELETE /v1/streams/{s}/subscriptions/{name}`: 204, then 404; a later subscription of
/// that name starts afresh; another principal's of the same name is untouched).
#[test]
fn one_principal_cannot_take_every_durable_subscription_and_deletes_its_own() {
    rt().block_on(async {
        use sha2::Digest as _;
        let reader_token = "reader-token-for-the-cursor-quota-test";
        let reader_hash = hex::encode(sha2::Sha256::digest(reader_token.as_bytes()));
        let mut c = Cluster::new(
            "cursor-quota",
            31,
            &three_regions()[..1],
            &format!(
                "[[principals]]\nname = \"reader\"\ntenant = \"acme\"\ntoken_sha256 = \"{reader_hash}\"\n\
                 [limits]\ncursors_per_principal_max = 2\n"
            ),
        );
        c.start(0);
        c.wait_healthy(0).await;
        let data: Vec<Value> = (0..3).map(|k| json!({"k": k})).collect();
        let (status, _) = c.publish(0, "s", "local", &data).await;
        assert_eq!(status, 200);
        let http = reqwest::Client::new();
        let first = c.first_cursor(0, "s").await;
        let ack = |token: &str, name: &str| {
            let req = http
                .post(c.url(0, &format!("/v1/streams/s/subscriptions/{name}/ack?cursor={first}")))
                .bearer_auth(token);
            async move {
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let delete = |token: &str, name: &str| {
            let req = http
                .delete(c.url(0, &format!("/v1/streams/s/subscriptions/{name}")))
                .bearer_auth(token);
            async move {
                let r = req.send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let tester = c.token.clone();
        assert_eq!(ack(&tester, "a").await.0, 200);
        assert_eq!(ack(&tester, "b").await.0, 200);
        let (s, v) = ack(&tester, "c").await;
        assert_eq!(s, 507, "{v}");
        assert_eq!(v["error"]["reason"], "cursors_full", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("limits.cursors_per_principal_max"), "{v}");
        // Another principal is not held up, and its "a" is its own.
        assert_eq!(ack(reader_token, "a").await.0, 200);
        // Deleting one of its own makes room.
        assert_eq!(delete(&tester, "b").await.0, 204);
        let (s, v) = delete(&tester, "b").await;
        assert_eq!(s, 404, "{v}");
        assert_eq!(v["error"]["reason"], "subscription_not_found", "{v}");
        assert_eq!(ack(&tester, "c").await.0, 200);
        // What a principal holds is listed (its own only), and the CLI deletes one.
        let list = |token: &str| {
            let req = http.get(c.url(0, "/v1/subscriptions")).bearer_auth(token);
            async move {
                let v: Value = req.send().await.unwrap().json().await.unwrap();
                v["subscriptions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| format!("{}/{}", h["stream"].as_str().unwrap(), h["name"].as_str().unwrap()))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(list(&tester).await, vec!["s/a", "s/c"]);
        assert_eq!(list(reader_token).await, vec!["s/a"]);
        let node = c.nodes[0].http.clone();
        let (ok, out) = weft_in(&c.dir, &["subscriptions", "--node", &node, "--token", &tester]);
        assert!(ok && out.contains("2 durable subscription(s) of principal tester"), "{out}");
        let (ok, out) = weft_in(
            &c.dir,
            &["subscriptions", "--node", &node, "--token", &tester, "--delete", "s", "c"],
        );
        assert!(ok && out.contains("deleted durable subscription c on s"), "{out}");
        assert_eq!(list(&tester).await, vec!["s/a"]);
        assert_eq!(ack(&tester, "c").await.0, 200);
        // The tester's "a" resumes after cursor 1; deleted, it starts from the beginning.
        let got = sse_take_as(
            c.url(0, "/v1/streams/s/subscribe?durable=a"),
            Some(&tester),
            None,
            1,
        )
        .await;
        assert_eq!(got[0]["data"]["k"], 1, "resumes after its acknowledged cursor");
        assert_eq!(delete(&tester, "a").await.0, 204);
        let got = sse_take_as(
            c.url(0, "/v1/streams/s/subscribe?durable=a"),
            Some(&tester),
            None,
            1,
        )
        .await;
        assert_eq!(got[0]["data"]["k"], 0, "a deleted subscription starts afresh");
        // The reader's "a" was not the tester's to delete.
        assert_eq!(delete(reader_token, "a").await.0, 204);
        assert!(rejected(&c, 0, "subscription_not_found").await >= 1);
    });
}

/// What a user review (2026-12-06) found the HTTP API took silently or answered badly, each
/// now refused with the API's JSON error and counted: a CloudEvent identity (principal,
/// source, id) published again to another stream or with other content (it was answered
/// 200 with the first event's id, and the second event was dropped); `weft*` attributes
/// only the node sets; unknown query parameters (`?akc=regions:2` was taken as `ack=local`);
/// unknown routes and methods (plain text, uncounted); a pre-signed envelope stamped for
/// another tenant without a policy; a wrong token on an open read (ignored); the `bearer`
/// scheme in lower case (refused); a table operation the strategy does not take (stored
/// `{"add": 5}` as an lww value); a table read of a system stream.
#[test]
fn what_the_api_took_silently_is_refused_clearly_and_counted() {
    use weft_fabric::Signer;
    const USER_TOKEN: &str = "user-token-0123456789abcdef0123456789abcdef";
    rt().block_on(async {
        let hash = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(USER_TOKEN.as_bytes()))
        };
        let extra = format!(
            "[[principals]]\nname = \"user\"\ntenant = \"globex\"\ntoken_sha256 = \"{hash}\"\n\n[[tables]]\npattern = \"kv.>\"\nstrategy = \"lww\"\n\n[[tables]]\npattern = \">\"\nstrategy = \"counter\"\n"
        );
        let mut c = Cluster::new("api-strict", 45, &three_regions()[..1], &extra);
        c.start(0);
        c.wait_healthy(0).await;
        let http = reqwest::Client::new();
        let ce = |data: i64| {
            json!({"specversion": "1.0", "id": "e-1", "source": "/test", "type": "t",
                "data": {"n": data}})
        };
        // The same event again is a retry: the first event's id.
        let (s, first) = c.post_events(0, "orders.eu", "local", &c.token, &[ce(1)]).await;
        assert_eq!(s, 200, "{first}");
        let (s, again) = c.post_events(0, "orders.eu", "local", &c.token, &[ce(1)]).await;
        assert_eq!((s, &again["ids"]), (200, &first["ids"]), "{again}");
        // The same identity on another stream, or with other content, is not.
        let before = rejected(&c, 0, "event_id_reused").await;
        for (stream, data, says) in [
            ("orders.us", 1, "on stream orders.eu"),
            ("orders.eu", 2, "with other content"),
        ] {
            let (s, b) = c.post_events(0, stream, "local", &c.token, &[ce(data)]).await;
            assert_eq!((s, &b["error"]["reason"]), (409, &json!("event_id_reused")), "{b}");
            let m = b["error"]["message"].as_str().unwrap();
            assert!(m.contains(says) && m.contains(first["ids"][0].as_str().unwrap()), "{m}");
        }
        assert_eq!(rejected(&c, 0, "event_id_reused").await, before + 2);
        assert_eq!(c.ids(0, "orders.us").await, Some(vec![]), "nothing stored there");

        // `weft*` attributes only the node sets.
        let mut spoof = ce(3);
        spoof["id"] = json!("e-spoof");
        spoof["weftresidency"] = json!("US");
        let (s, b) = c.post_events(0, "orders.eu", "local", &c.token, &[spoof]).await;
        assert_eq!((s, &b["error"]["reason"]), (400, &json!("reserved_attribute")), "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("index 0"), "{b}");

        // Unknown query parameters, routes and methods: JSON errors, counted.
        let before = rejected(&c, 0, "bad_query").await;
        let r = http
            .post(c.url(0, "/v1/streams/orders.eu/events?akc=regions:2"))
            .bearer_auth(&c.token)
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&[ce(4)]).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let b: Value = r.json().await.unwrap();
        assert!(b["error"]["message"].as_str().unwrap().contains("akc"), "{b}");
        let r = http.get(c.url(0, "/v1/tables/kv.a/k?bogus=1")).send().await.unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(rejected(&c, 0, "bad_query").await, before + 2);
        for (method, path, status, reason) in [
            (reqwest::Method::GET, "/v1/nope", 404, "no_such_route"),
            (reqwest::Method::POST, "/v1/streams/s/subscribe", 405, "method_not_allowed"),
            (reqwest::Method::PUT, "/readyz", 405, "method_not_allowed"),
        ] {
            let before = rejected(&c, 0, reason).await;
            let r = http.request(method, c.url(0, path)).send().await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{path}");
            let b: Value = r.json().await.unwrap();
            assert_eq!(b["error"]["reason"], reason, "{path}: {b}");
            assert_eq!(rejected(&c, 0, reason).await, before + 1, "{path}");
        }

        // Tokens: a wrong one on an open read is refused; the scheme in any case is taken.
        let r = http
            .get(c.url(0, "/v1/streams/orders.eu/events?after=0"))
            .bearer_auth("not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .get(c.url(0, "/v1/streams/orders.eu/events?after=0"))
            .header("authorization", format!("bearer {}", c.token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        // A pre-signed envelope stamped for tenant acme, from a principal of globex:
        // refused and audited; the admin may pass it on.
        let event = Signer::from_secret(&[4; 32])
            .sign(draft("orders.eu", 1, "text/plain", b"hi".to_vec()))
            .unwrap();
        let post = |token: &'static str| {
            http.post(c.url(0, "/v1/streams/orders.eu/events"))
                .bearer_auth(token)
                .header("content-type", "application/vnd.weft.event+cbor")
                .body(event.encode())
                .send()
        };
        let r = post(USER_TOKEN).await.unwrap();
        assert_eq!(r.status(), 403);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["reason"], "publish_forbidden", "{b}");
        // The audit log is written off the request path: waited for, bounded.
        let audited = wait_for(Duration::from_secs(5), || async {
            let audit = c.get_auth(0, "/v1/audit?reason=publish_forbidden").await;
            (audit["entries"][0]["principal"] == "user").then_some(())
        })
        .await;
        let audit = c.get_auth(0, "/v1/audit?reason=publish_forbidden").await;
        assert!(audited.is_some(), "{audit}");
        let token: &'static str = Box::leak(c.token.clone().into_boxed_str());
        assert_eq!(post(token).await.unwrap().status(), 200, "the admin passes it on");

        // Tables: an operation the strategy does not take, and a system stream.
        let r = http
            .put(c.url(0, "/v1/tables/kv.a/k?op=add"))
            .bearer_auth(&c.token)
            .json(&json!({"add": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["reason"], "wrong_op", "{b}");
        let r = http.get(c.url(0, "/v1/tables/kv.a/k")).send().await.unwrap();
        assert_eq!(r.status(), 404, "nothing was written");
        let r = http.get(c.url(0, "/v1/tables/_weft.erase")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["reason"], "not_a_table", "{b}");
    });
}

/// `/readyz`: 503 until the node has reached the mesh once (seeds configured), then 200
/// even when every peer is gone: a node cut off still serves its region, and a readiness
/// probe that pulled it out of service would take the region down with its peers (a user
/// review, 2026-12-06, found the survivor of a `kill -9` answering 503).
#[test]
fn a_node_that_lost_every_peer_stays_ready_one_that_never_met_one_is_not() {
    rt().block_on(async {
        let mut c = Cluster::new("ready", 43, &three_regions()[..2], "");
        c.start_all();
        c.wait_meshed().await;
        async fn ready(c: &Cluster, i: usize) -> u16 {
            reqwest::get(c.url(i, "/readyz"))
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
        assert_eq!(ready(&c, 0).await, 200);
        c.kill9(1);
        wait_for(Duration::from_secs(90), || async {
            (metric(&c, 0, "weft_members ").await == 0).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node 0 never saw its peer down:\n{}", c.log(0)));
        assert_eq!(ready(&c, 0).await, 200, "cut off, but serving its region");
        let (s, b) = c.publish(0, "alone", "local", &[json!({"n": 1})]).await;
        assert_eq!(s, 200, "{b}");
        // Node 1 restarted while node 0 is down: its seed (node 0) is unreachable and it
        // never met a member since this start.
        c.kill9(0);
        c.start(1);
        c.wait_healthy(1).await;
        assert_eq!(ready(&c, 1).await, 503);
    });
}

/// A read, a subscription and a durable subscription over a pattern (`orders.>`): every
/// stream it matches, in log order, with cursors and `last=N` as for one stream; other
/// streams and the node's own `_weft.*` never; `weft tail 'orders.>'` follows it. (A
/// user review, 2026-12-06: `weft tail 'orders.>'` was 400, told that wildcards were
/// "only for subscriptions".)
#[test]
fn reads_and_subscriptions_over_a_pattern_take_every_stream_it_matches() {
    rt().block_on(async {
        let mut c = Cluster::new("pattern-read", 44, &three_regions()[..1], "");
        c.start(0);
        c.wait_healthy(0).await;
        let mut want = Vec::new();
        for (stream, n) in [
            ("orders.eu", 1),
            ("other.x", 2),
            ("orders.us", 3),
            ("ordersx", 4),
            ("orders.eu", 5),
        ] {
            let (s, b) = c.publish(0, stream, "local", &[json!({"n": n})]).await;
            assert_eq!(s, 200, "{b}");
            if stream.starts_with("orders.") {
                want.push(n);
            }
        }
        let ns = |page: &[Value]| -> Vec<i64> {
            page.iter()
                .map(|e| e["data"]["n"].as_i64().unwrap())
                .collect()
        };
        let http = reqwest::Client::new();
        let read = |path: String| {
            let http = &http;
            let url = c.url(0, &path);
            async move {
                let r = http.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                let next = r
                    .headers()
                    .get("weft-next-cursor")
                    .map(|v| v.to_str().unwrap().to_string());
                (status, next, r.json::<Value>().await.unwrap())
            }
        };
        let (s, _, page) = read("/v1/streams/orders.%3E/events?after=0".into()).await;
        assert_eq!(s, 200, "{page}");
        assert_eq!(ns(page.as_array().unwrap()), want, "{page}");
        let streams: Vec<&str> = page
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["weftstream"].as_str().unwrap())
            .collect();
        assert_eq!(streams, ["orders.eu", "orders.us", "orders.eu"]);
        // Page by page, the cursor past the other streams' entries.
        let (_, next, page) = read("/v1/streams/orders.%3E/events?after=0&limit=1".into()).await;
        assert_eq!(ns(page.as_array().unwrap()), [1]);
        let (_, next, page) = read(format!(
            "/v1/streams/orders.%3E/events?after={}&limit=1",
            next.unwrap()
        ))
        .await;
        assert_eq!(ns(page.as_array().unwrap()), [3], "past other.x");
        let (_, next, page) = read(format!(
            "/v1/streams/orders.%3E/events?after={}",
            next.unwrap()
        ))
        .await;
        assert_eq!(ns(page.as_array().unwrap()), [5], "past ordersx");
        let (_, _, page) = read(format!(
            "/v1/streams/orders.%3E/events?after={}",
            next.unwrap()
        ))
        .await;
        assert_eq!(page, json!([]));
        let (_, _, page) = read("/v1/streams/orders.*/events?last=2".into()).await;
        assert_eq!(ns(page.as_array().unwrap()), [3, 5]);
        // A cursor is the pattern's: another stream's (or pattern's) is refused.
        let (_, eu_next, _) = read("/v1/streams/orders.eu/events?after=0".into()).await;
        let (s, _, b) = read(format!(
            "/v1/streams/orders.%3E/events?after={}",
            eu_next.unwrap()
        ))
        .await;
        assert_eq!(
            (s, &b["error"]["reason"]),
            (400, &json!("bad_cursor")),
            "{b}"
        );
        // System streams are read by name only.
        let (s, _, b) = read("/v1/streams/_weft.%3E/events?after=0".into()).await;
        assert_eq!(
            (s, &b["error"]["reason"]),
            (400, &json!("bad_stream")),
            "{b}"
        );
        let (_, _, page) = read("/v1/streams/%3E/events?after=0".into()).await;
        assert!(
            page.as_array()
                .unwrap()
                .iter()
                .all(|e| !e["weftstream"].as_str().unwrap().starts_with("_weft")),
            "{page}"
        );
        // A subscription: what is there, then what comes.
        let url = c.url(0, "/v1/streams/orders.%3E/subscribe?after=0");
        let sub = tokio::spawn(sse_take(url, None, 4));
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.publish(0, "other.y", "local", &[json!({"n": 6})]).await;
        c.publish(0, "orders.ap", "local", &[json!({"n": 7})]).await;
        let got = sub.await.unwrap();
        assert_eq!(ns(&got), [1, 3, 5, 7]);
        // A durable one, acknowledged, resumes after its ack.
        let token = c.token.clone();
        let durable = c.url(0, "/v1/streams/orders.%3E/subscribe?durable=p1");
        let got = sse_take_as(durable.clone(), Some(&token), None, 2).await;
        assert_eq!(ns(&got), [1, 3]);
        let cursor = got[1]["weftcursor"].as_str().unwrap();
        let r = http
            .post(c.url(
                0,
                &format!("/v1/streams/orders.%3E/subscriptions/p1/ack?cursor={cursor}"),
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let got = sse_take_as(durable, Some(&token), None, 2).await;
        assert_eq!(ns(&got), [5, 7]);
        // The CLI follows a pattern.
        let out = std::process::Command::new(WEFT)
            .args([
                "tail",
                "--node",
                &c.nodes[0].http,
                "--count",
                "4",
                "--timeout",
                "20",
                "orders.>",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let seen: Vec<i64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["data"]["n"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            seen,
            [1, 3, 5, 7],
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Waits until node `i` holds 7 events of stream `wiped`, all from `origin`, and returns
/// them as (sequence number, `data.n`), sorted.
async fn wiped_events_by_seq(
    c: &Cluster,
    i: usize,
    origin: &str,
    limit: Duration,
) -> Vec<(u64, i64)> {
    let events = wait_for(limit, || async {
        let page = c.get_auth(i, "/v1/streams/wiped/events?after=0").await;
        let events = page.as_array()?.clone();
        (events.len() == 7).then_some(events)
    })
    .await
    .unwrap_or_else(|| panic!("node {i} does not hold all 7 events:\n{}", c.log(i)));
    let mut by_seq: Vec<(u64, i64)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["weftorigin"], json!(origin));
            (
                e["weftseq"].as_u64().unwrap(),
                e["data"]["n"].as_i64().unwrap(),
            )
        })
        .collect();
    by_seq.sort_unstable();
    by_seq
}

/// A node restarted over an emptied data directory under its old key (a disk replaced, a
/// volume recreated) numbers its new events past the ones the mesh holds. Before, it
/// numbered from 1 again: its new events, acknowledged, reused numbers every peer held and
/// were dropped there as duplicates (found by hand, session 55: the peers never had them).
/// Now it asks its first members for its own events before it numbers (a publish waits,
/// and `/readyz` says so), and its producer numbers past what the mesh is known to hold.
#[test]
fn a_node_restarted_over_an_emptied_data_directory_numbers_past_what_the_mesh_holds() {
    rt().block_on(async {
        let mut c = Cluster::new("wiped", 97, &three_regions(), "");
        c.start_all();
        c.wait_meshed().await;
        publish_and_wait(&c, &[0, 1, 2, 3, 4]).await;
        c.kill9(2);
        std::fs::remove_dir_all(c.dir.join("data/ap")).unwrap();
        c.start(2);
        c.wait_healthy(2).await;
        // At once: the publish waits until a member answered for the node's own events.
        publish_two_more_numbered_six_and_seven(&c).await;
        // The status's counters are a snapshot the driver refreshes every half second.
        let asks = wait_for(Duration::from_secs(5), || async {
            let status = c.get_auth(2, "/v1/status").await;
            let asks = status["stats"]["own_asks"].as_u64()?;
            (asks >= 1).then_some(asks)
        })
        .await;
        assert!(asks.is_some(), "own_asks stays 0");
    });
}

/// A node restarted over an older backup of its data directory under its old key (a
/// restore the operator's guide advises against, done anyway) numbers its new events past
/// the ones the mesh holds, and gets back its own events the backup lacks. Before, a store
/// holding any of its own events took its numbering as known at once: the new events
/// reused numbers 4 and 5, which every peer held, and were dropped there as duplicates.
#[test]
fn a_node_restarted_over_an_older_backup_numbers_past_what_the_mesh_holds() {
    rt().block_on(async {
        let mut c = Cluster::new("backup", 36, &three_regions(), "");
        c.start_all();
        c.wait_meshed().await;
        publish_and_wait(&c, &[0, 1, 2]).await;
        // The backup: the data directory copied while the node is stopped.
        assert!(
            c.stop_gracefully(2, Duration::from_secs(15))
                .await
                .is_some(),
            "node 2 stops"
        );
        let (data, backup) = (c.dir.join("data/ap"), c.dir.join("backup-ap"));
        copy_store_files(&data, &backup);
        c.start(2);
        c.wait_healthy(2).await;
        publish_and_wait(&c, &[3, 4]).await;
        // The backup holds the node's own events 1 to 3 and not 4 or 5 (so what follows is
        // a restore of an older store, not an emptied directory).
        assert_eq!(
            own_numbers_in(&backup.join("weft.db"), "wiped"),
            vec![1, 2, 3]
        );
        // Restored in place of the newer store.
        c.kill9(2);
        std::fs::remove_dir_all(&data).unwrap();
        copy_store_files(&backup, &data);
        c.start(2);
        c.wait_healthy(2).await;
        // Events 4 and 5 back at node 2 too.
        publish_two_more_numbered_six_and_seven(&c).await;
    });
}

/// A node restarted over an emptied data directory while no member is up (every seed down:
/// a cut, or the whole fabric restarting with this node first) waits 5 s for a member to
/// ask for its own events, then numbers past a wall-clock floor: its new events reach the
/// peers when they come back, which take the numbers skipped as lost once it names them.
/// Before, it numbered from 1 again: its acknowledged new events reused numbers 1 and 2,
/// which the peers held, and were dropped there as duplicates (found by the simulator's
/// record of every origin's numbers, session 63).
#[test]
fn a_node_restarted_over_an_emptied_data_directory_with_no_member_up_numbers_past_a_floor() {
    rt().block_on(async {
        let mut c = Cluster::new("wiped-alone", 101, &three_regions(), "");
        c.start_all();
        c.wait_meshed().await;
        publish_and_wait(&c, &[0, 1, 2, 3, 4]).await;
        c.kill9(0);
        c.kill9(1);
        c.kill9(2);
        std::fs::remove_dir_all(c.dir.join("data/ap")).unwrap();
        let before_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        c.start(2);
        c.wait_healthy(2).await;
        // Answered once the 5 s wait for a member ends.
        let (s, v) = c
            .publish(2, "wiped", "local", &[json!({"n": 5}), json!({"n": 6})])
            .await;
        assert_eq!(s, 200, "{v}");
        let status = c.get_auth(2, "/v1/status").await;
        let floor = status["own_numbers_floor"]
            .as_u64()
            .unwrap_or_else(|| panic!("no floor taken: {status}"));
        assert!(floor >= before_ms * 1000, "{floor} {before_ms}");
        assert!(
            c.log(2).contains("numbering past the wall-clock floor"),
            "{}",
            c.log(2)
        );
        let (ok, out) = weft_in(&c.dir, &["status", "--node", &c.nodes[2].http]);
        assert!(
            ok && out.contains(&format!("wall-clock floor {floor}")),
            "{out}"
        );
        // The peers come back with events 1 to 5; every node ends with all seven, the new
        // ones past the floor (the node's own first five come back to it from them).
        c.start(0);
        c.start(1);
        c.wait_healthy(0).await;
        c.wait_healthy(1).await;
        let origin = c.keys[2].clone();
        let want = vec![
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 3),
            (5, 4),
            (floor + 1, 5),
            (floor + 2, 6),
        ];
        for i in 0..3 {
            let by_seq = wiped_events_by_seq(&c, i, &origin, Duration::from_secs(60)).await;
            assert_eq!(by_seq, want, "node {i}");
        }
    });
}

/// The sequence numbers of stream `stream`'s events in the store file `db`, in order (read
/// straight from SQLite, with no node running on it).
fn own_numbers_in(db: &std::path::Path, stream: &str) -> Vec<i64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
    let mut stmt = conn
        .prepare("SELECT seq FROM events WHERE stream = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([stream], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Copies the files of data directory `from` into `to` (created), leaving out SQLite's
/// `-wal` and `-shm` files as the operator's guide says to for a restore.
fn copy_store_files(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_file() && !name.ends_with("-wal") && !name.ends_with("-shm") {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}

/// Publishes `{"n": 5}` and `{"n": 6}` at node 2 (restarted) and checks that every node
/// holds stream `wiped` numbered 1 to 7 in order of `n`: the new events numbered 6 and 7.
async fn publish_two_more_numbered_six_and_seven(c: &Cluster) {
    let (s, v) = c
        .publish(2, "wiped", "local", &[json!({"n": 5}), json!({"n": 6})])
        .await;
    assert_eq!(s, 200, "{v}");
    let origin = c.keys[2].clone();
    for i in 0..3 {
        let by_seq = wiped_events_by_seq(c, i, &origin, Duration::from_secs(30)).await;
        assert_eq!(
            by_seq,
            (1..=7).zip(0..7).collect::<Vec<_>>(),
            "node {i}: the new events numbered 6 and 7"
        );
    }
}

/// Publishes `{"n": N}` for each of `ns` on stream `wiped` at node 2 and waits until nodes
/// 0 and 1 hold the stream up to the last.
async fn publish_and_wait(c: &Cluster, ns: &[i64]) {
    let batch: Vec<Value> = ns.iter().map(|n| json!({"n": n})).collect();
    let (s, v) = c.publish(2, "wiped", "local", &batch).await;
    assert_eq!(s, 200, "{v}");
    let want = (ns.last().unwrap() + 1) as usize;
    for i in 0..2 {
        wait_for(Duration::from_secs(20), || async {
            (c.ids(i, "wiped").await?.len() == want).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node {i} lacks events:\n{}", c.log(i)));
    }
}

/// As `a_node_restarted_over_an_emptied_data_directory_numbers_past_what_the_mesh_holds`,
/// when the only member the restarted node can ask stores none of its
/// streams (it relays them) and the one that holds its events is down: the relay sends none
/// of them back but says how far it saw their numbers, so the new events are numbered past
/// them, and the holder, back up, takes them (before, they reused numbers 1 and 2, which it
/// dropped as duplicates: two acknowledged events never reached it).
#[test]
fn a_restarted_node_numbers_past_what_a_relay_only_member_saw() {
    rt().block_on(async {
        let mut c = Cluster::new("wiped-relay", 100, &three_regions(), "");
        let relay = std::fs::read_to_string(&c.nodes[0].config).unwrap();
        std::fs::write(
            &c.nodes[0].config,
            relay.replace("[listen]", "streams = [\"other.>\"]\n[listen]"),
        )
        .unwrap();
        c.start_all();
        c.wait_meshed().await;
        let first: Vec<Value> = (0..5).map(|n| json!({"n": n})).collect();
        let (s, v) = c.publish(2, "wiped", "local", &first).await;
        assert_eq!(s, 200, "{v}");
        wait_for(Duration::from_secs(20), || async {
            (c.ids(1, "wiped").await?.len() == 5).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node 1 lacks the first events:\n{}", c.log(1)));
        assert!(
            c.stop_gracefully(1, Duration::from_secs(15))
                .await
                .is_some(),
            "node 1 stops"
        );
        // Node 1 down in the relay's view (SWIM's suspicion: about 15 s here) before node
        // 2 restarts and learns the membership from it: else node 2 asks node 1 too, which
        // never answers, and after 10 s numbers past the wall-clock floor (safe, but not
        // what this test is about).
        let relay_alone = wait_for(Duration::from_secs(90), || async {
            let v = c.get_auth(0, "/v1/mesh/peers").await;
            let up = v["peers"]
                .as_array()?
                .iter()
                .filter(|p| p["state"] == "up")
                .count();
            (up == 1).then_some(())
        })
        .await;
        assert!(
            relay_alone.is_some(),
            "node 0 still counts node 1 up: {}",
            c.get_auth(0, "/v1/mesh/peers").await
        );
        c.kill9(2);
        std::fs::remove_dir_all(c.dir.join("data/ap")).unwrap();
        c.start(2);
        c.wait_healthy(2).await;
        let (s, v) = c
            .publish(2, "wiped", "local", &[json!({"n": 5}), json!({"n": 6})])
            .await;
        assert_eq!(s, 200, "{v}");
        let status = c.get_auth(2, "/v1/status").await;
        assert_eq!(status["own_numbers_floor"], Value::Null, "{status}");
        let claims = wait_for(Duration::from_secs(5), || async {
            let status = c.get_auth(2, "/v1/status").await;
            let claims = status["stats"]["own_high_claims"].as_u64()?;
            (claims >= 1).then_some(claims)
        })
        .await;
        assert!(claims.is_some(), "own_high_claims stays 0:\n{}", c.log(2));
        c.start(1);
        c.wait_healthy(1).await;
        let origin = c.keys[2].clone();
        let by_seq = wiped_events_by_seq(&c, 1, &origin, Duration::from_secs(40)).await;
        assert_eq!(by_seq, (1..=7).zip(0..7).collect::<Vec<_>>());
    });
}
