//! The audit log, read authorization and rate limits on a real node enforcing a signed
//! policy: a denied publish, read and subscribe and a rate-limited burst each answer the
//! HTTP error, move `weft_rejected_total`, and appear in `GET /v1/audit` and in
//! `weft audit`; bad audit queries get 400; a policy pushed at runtime ends a subscription
//! it no longer allows and rebuilds the rate-limit buckets; a bundle refused at start is in
//! the audit log the node wrote before exiting. Bounded waits; processes killed at the end.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sha2::Digest as _;

fn weft(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(WEFT)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn weft_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let (ok, text) = weft(dir, args);
    assert!(ok, "weft {args:?}: {text}");
    text
}

/// `tester` (the harness's admin principal) publishes to `orders.>` and `pii.>` and reads
/// `orders.>` only, at most 1 event/s with a burst of 5; `reader` is in the node's config
/// but not in the bundle.
fn bundle(key: &str, tester_sha256: &str) -> String {
    format!(
        r#"format = 1
epoch = 4
[jurisdictions.EU]
regions = ["aws:eu-west-1"]
nodes = ["{key}"]

[tenants.acme]

[roles.writer]

[principals.tester]
tenant = "acme"
roles = ["writer"]
token_sha256 = "{tester_sha256}"

[[access]]
name = "write"
effect = "allow"
actions = ["publish"]
streams = ["pii.>", "orders.>"]
roles = ["writer"]

[[access]]
name = "read-orders"
effect = "allow"
actions = ["read", "subscribe"]
streams = ["orders.>"]
roles = ["writer"]

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
pattern = "orders.>"
classification = "public"
replication = "all"

[[limits]]
principal = "tester"
events_per_s = 1
burst = 5
"#
    )
}

async fn metric(c: &Cluster, line: &str) -> bool {
    let text = reqwest::get(c.url(0, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().any(|l| l == line)
}

/// Waits until `GET /v1/audit?query` (as `token`) has an entry with `reason`.
async fn audited(c: &Cluster, token: &str, query: &str, reason: &str) -> Value {
    let http = reqwest::Client::new();
    wait_for(Duration::from_secs(10), || async {
        let v: Value = http
            .get(c.url(0, &format!("/v1/audit?{query}")))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["entries"]
            .as_array()?
            .iter()
            .find(|e| e["reason"] == reason)
            .cloned()
    })
    .await
    .unwrap_or_else(|| panic!("no audit entry {reason} for ?{query}:\n{}", c.log(0)))
}

/// One EU node under [`bundle`] (operator key in a directory of its own, `ops`), with a
/// `reader` principal besides the cluster's `tester`, and `limits` appended to its config.
fn audited_node(test: &str, net: u8, limits: &str) -> (Cluster, Operators) {
    let ops = Operators::new(test, &["op"]);
    let reader_sha = hex::encode(sha2::Sha256::digest(READER_TOKEN.as_bytes()));
    let extra = format!(
        "[[principals]]\nname = \"reader\"\ntenant = \"acme\"\ntoken_sha256 = \"{reader_sha}\"\n{}\
         [audit]\nretention_days = 30\nmax_entries = 10000\n{limits}",
        ops.node_policy()
    );
    let spec = Spec {
        name: "eu",
        region: "aws:eu-west-1",
        jurisdiction: "EU",
    };
    let c = Cluster::new(test, net, &[spec], &extra);
    let tester_sha = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
    // As `b.toml` (signed into `b`), which the tests sign again with other keys.
    let signed = ops.sign(&bundle(&c.keys[0], &tester_sha), &["op"], "b");
    std::fs::write(c.dir.join("policy.cbor"), signed).unwrap();
    (c, ops)
}

const READER_TOKEN: &str = "reader-token-0123456789abcdef0123456789abcdef";

/// A publish refused after its rate-limit tokens were taken (here: the store is full)
/// gives them back: a client retrying through the refusal keeps getting the refusal's
/// own answer (507), not 429 for tokens nothing was stored for.
#[test]
fn publishes_refused_after_their_charge_take_no_rate_tokens() {
    rt().block_on(async {
        // tester: burst 5 at 1 a second; the store holds one event.
        let (mut c, _ops) = audited_node("ratefund", 61, "[limits]\nevents_max = 1\n");
        c.start_all();
        c.wait_healthy(0).await;
        let (status, body) = c.publish(0, "orders.eu", "local", &[json!({"n": 0})]).await;
        assert_eq!(status, 200, "{body}");
        for n in 1..=8 {
            let (status, body) = c.publish(0, "orders.eu", "local", &[json!({"n": n})]).await;
            assert_eq!(status, 507, "publish {n}: {body}");
            assert_eq!(body["error"]["reason"], "store_refused", "{body}");
        }
        assert!(metric(&c, "weft_rejected_total{reason=\"store_refused\"} 8").await);
    });
}

/// A publish by `tester` at node 0 that its daily quota admits.
async fn quota_publish(c: &Cluster, n: i64) {
    let (status, body) = c.publish(0, "orders.eu", "local", &[json!({"n": n})]).await;
    assert_eq!(status, 200, "publish {n}: {body}");
}

/// A publish by `tester` at node 0 is refused by its spent daily quota of 5 events.
async fn quota_refused(c: &Cluster) {
    let (status, body) = c.publish(0, "orders.eu", "local", &[json!({"n": 9})]).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["reason"], "quota_exceeded", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("daily quota of 5 events (5 used today"),
        "{msg}"
    );
}

/// A principal's daily quota holds across restarts of the node: the day's counts are
/// saved (`quotas.json`, every 2 s while they change and at a graceful stop) and taken
/// back at start, so neither a stop nor a `kill -9` after a periodic save gives a new
/// day.
#[test]
fn a_daily_quota_outlives_restarts_of_the_node() {
    rt().block_on(async {
        let (mut c, ops) = audited_node("quota", 96, "");
        let tester_sha = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
        let b = bundle(&c.keys[0], &tester_sha).replace(
            "events_per_s = 1\nburst = 5",
            "events_per_s = 100\nburst = 100\nevents_per_day = 5",
        );
        assert!(b.contains("events_per_day = 5"), "{b}");
        let signed = ops.sign(&b, &["op"], "q");
        std::fs::write(c.dir.join("policy.cbor"), signed).unwrap();
        c.start_all();
        c.wait_healthy(0).await;
        // Three of five, then a graceful stop (its last save) and a start.
        for n in 0..3 {
            quota_publish(&c, n).await;
        }
        let exited = c.stop_gracefully(0, Duration::from_secs(10)).await;
        assert!(exited.is_some_and(|s| s.success()), "{}", c.log(0));
        c.start(0);
        c.wait_healthy(0).await;
        for n in 3..5 {
            quota_publish(&c, n).await;
        }
        quota_refused(&c).await;
        // The periodic save (every 2 s) has the two made since the start; then kill -9.
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.kill9(0);
        c.start(0);
        c.wait_healthy(0).await;
        quota_refused(&c).await;
        assert!(
            c.log(0).contains("today's quota counts taken back"),
            "{}",
            c.log(0)
        );
    });
}

#[test]
fn denials_and_rate_limits_are_refused_counted_and_audited() {
    rt().block_on(async {
        let (mut c, operators) = audited_node("audit", 50, "");
        let ops = operators.dir.clone();
        let reader_token = READER_TOKEN;
        let tester_sha = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
        let signed = c.dir.join("policy.cbor");
        let sign = |toml: &str, key: &str| {
            let _ = std::fs::remove_file(&signed);
            weft_ok(
                &ops,
                &[
                    "policy",
                    "sign",
                    "--key",
                    key,
                    "--out",
                    signed.to_str().unwrap(),
                    toml,
                ],
            );
        };
        c.start_all();
        c.wait_healthy(0).await;
        let http = reqwest::Client::new();
        let token = c.token.clone();

        // Applying the bundle at start is audited.
        let applied = audited(&c, &token, "decision=apply", "policy_applied").await;
        assert_eq!(applied["epoch"], 4, "{applied}");

        // 1. A denied publish (no rule allows audit.>): 403, counted, audited.
        let (status, body) = c.publish(0, "audit.trail", "local", &[json!({})]).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["reason"], "publish_forbidden", "{body}");
        assert!(metric(&c, "weft_rejected_total{reason=\"publish_forbidden\"} 1").await);
        let e = audited(&c, &token, "reason=publish_forbidden", "publish_forbidden").await;
        assert_eq!(e["principal"], "tester", "{e}");
        assert_eq!(e["stream"], "audit.trail", "{e}");
        assert_eq!(e["decision"], "deny", "{e}");
        assert_eq!(e["node"], "eu", "{e}");
        assert_eq!(e["node_key"], c.keys[0].as_str(), "{e}");

        // Allowed: publish to pii (1 token) and orders (1 token); read orders.
        let (status, body) = c
            .publish(0, "pii.customers", "local", &[json!({"n": 1})])
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = c.publish(0, "orders.eu", "local", &[json!({"n": 2})]).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(c.ids(0, "orders.eu").await.map(|v| v.len()), Some(1));

        // 2. A denied read: pii is not readable by tester; reads need a token under a policy.
        let r = http
            .get(c.url(0, "/v1/streams/pii.customers/events"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["reason"], "read_forbidden", "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("tester") && msg.contains("pii.customers") && msg.contains("epoch 4"),
            "{msg}"
        );
        let r = http
            .get(c.url(0, "/v1/streams/orders.eu/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "an anonymous read under a policy");
        // `reader` holds a token but is not in the bundle.
        let r = http
            .get(c.url(0, "/v1/streams/orders.eu/events"))
            .bearer_auth(reader_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(metric(&c, "weft_rejected_total{reason=\"read_forbidden\"} 2").await);
        let e = audited(
            &c,
            &token,
            "reason=read_forbidden&principal=tester",
            "read_forbidden",
        )
        .await;
        assert_eq!(e["stream"], "pii.customers", "{e}");
        audited(
            &c,
            &token,
            "reason=read_forbidden&principal=reader",
            "read_forbidden",
        )
        .await;
        let e = audited(&c, &token, "reason=missing_token", "missing_token").await;
        // The entry names the request refused (it had no principal or stream to say).
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .ends_with("(request GET /v1/streams/{stream}/events)"),
            "{e}"
        );
        // Another scheme is refused as such, not as a token matching no principal.
        let r = http
            .get(c.url(0, "/v1/streams/orders.eu/events"))
            .header("authorization", "Basic YWxpY2U6cHc=")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("the Authorization scheme is Basic:"),
            "{body}"
        );
        // A bare token (no scheme) is not quoted back, nor into the audit log.
        let r = http
            .get(c.url(0, "/v1/streams/orders.eu/events"))
            .header("authorization", token.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let text = r.text().await.unwrap();
        assert!(
            !text.contains(&token[..8]) && text.contains("does not start with"),
            "{text}"
        );

        // 3. A denied subscribe (and a denied durable one).
        let r = http
            .get(c.url(0, "/v1/streams/pii.customers/subscribe"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["reason"], "subscribe_forbidden", "{body}");
        let r = http
            .get(c.url(0, "/v1/streams/pii.customers/subscribe?durable=d1"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(metric(&c, "weft_rejected_total{reason=\"subscribe_forbidden\"} 2").await);
        let e = audited(
            &c,
            &token,
            "reason=subscribe_forbidden",
            "subscribe_forbidden",
        )
        .await;
        assert_eq!(e["stream"], "pii.customers", "{e}");
        // The allowed subscription works, with the token (`weft tail` sends it).
        let (ok, out) = weft(
            &c.dir,
            &[
                "tail",
                "--node",
                &c.nodes[0].http,
                "--token",
                &token,
                "--after",
                "0",
                "--count",
                "1",
                "--timeout",
                "20",
                "orders.eu",
            ],
        );
        assert!(ok, "{out}");
        assert!(out.contains("\"weftstream\":\"orders.eu\""), "{out}");

        // 4. Rate limits: 2 of the 5 burst tokens are spent. A batch over the burst can
        // never be admitted (400); single events run out within a few requests (429).
        let batch: Vec<Value> = (0..6).map(|i| json!({ "i": i })).collect();
        let (status, body) = c.publish(0, "orders.eu", "local", &batch).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["reason"], "batch_over_burst", "{body}");
        let mut refused = None;
        for _ in 0..20 {
            let resp = http
                .post(c.url(0, "/v1/streams/orders.eu/events"))
                .bearer_auth(&token)
                .header("content-type", "application/cloudevents+json")
                .body(
                    json!({"specversion": "1.0", "id": format!("x-{}", rand_id()), "source": "it",
                        "type": "t", "data": {}})
                    .to_string(),
                )
                .send()
                .await
                .unwrap();
            if resp.status() == 429 {
                refused = Some(resp);
                break;
            }
            assert_eq!(resp.status(), 200);
        }
        let resp = refused.expect("20 publishes at 1 event/s, burst 5, were all admitted");
        let retry: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1, "{retry}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["reason"], "rate_limited", "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("principal tester") && msg.contains("1 events/s, burst 5"),
            "{msg}"
        );
        assert!(metric(&c, "weft_rejected_total{reason=\"rate_limited\"} 1").await);
        let e = audited(&c, &token, "reason=rate_limited", "rate_limited").await;
        assert_eq!(e["principal"], "tester", "{e}");
        assert_eq!(e["stream"], "orders.eu", "{e}");

        // Fault injection changes are audited with their principal.
        c.chaos(0, json!([])).await;
        let e = audited(&c, &token, "decision=change", "chaos_changed").await;
        assert_eq!(e["principal"], "tester", "{e}");

        // `weft audit` prints the same, as a table.
        let out = weft_ok(
            &c.dir,
            &[
                "audit",
                "--node",
                &c.nodes[0].http,
                "--token",
                &token,
                "--decision",
                "deny",
                "--since",
                "1h",
            ],
        );
        for reason in [
            "publish_forbidden",
            "read_forbidden",
            "subscribe_forbidden",
            "rate_limited",
            "batch_over_burst",
            "missing_token",
        ] {
            assert!(out.contains(reason), "{reason} missing:\n{out}");
        }
        assert!(
            out.contains("TIME (UTC)") && out.contains("tester"),
            "{out}"
        );
        assert!(!out.contains("policy_applied"), "--decision deny:\n{out}");
        let out = weft_ok(
            &c.dir,
            &[
                "audit",
                "--node",
                &c.nodes[0].http,
                "--token",
                &token,
                "--reason",
                "rate_limited",
                "--limit",
                "1",
            ],
        );
        // One entry (the hint after it names the filter again, not the token).
        let entries = out
            .lines()
            .filter(|l| l.contains(" deny ") && l.contains("rate_limited"))
            .count();
        assert_eq!(entries, 1, "{out}");
        assert!(
            !out.contains(&token),
            "the hint does not echo the token:\n{out}"
        );
        // A reason no entry has (a typo): an empty page, and the reasons the log holds.
        let out = weft_ok(
            &c.dir,
            &[
                "audit",
                "--node",
                &c.nodes[0].http,
                "--token",
                &token,
                "--reason",
                "rate_limted",
            ],
        );
        assert!(
            out.contains("no entry of this log has reason \"rate_limted\"")
                && out.contains("rate_limited, ")
                && out.contains("policy_applied"),
            "{out}"
        );
        // A held reason that other filters leave empty is not explained away.
        let out = weft_ok(
            &c.dir,
            &[
                "audit",
                "--node",
                &c.nodes[0].http,
                "--token",
                &token,
                "--reason",
                "rate_limited",
                "--decision",
                "apply",
            ],
        );
        assert!(!out.contains("no entry of this log has reason"), "{out}");
        // A non-admin principal may not read it (refused and audited).
        let (ok, out) = weft(
            &c.dir,
            &["audit", "--node", &c.nodes[0].http, "--token", reader_token],
        );
        assert!(!ok && out.contains("not_admin"), "{out}");

        // Bad queries: 400 with the API's error shape, counted.
        for q in [
            "limit=0",
            "limit=1001",
            "decision=maybe",
            "reason=Not-A-Code",
            "since=-5",
            "since=yesterday",
            "before=0",
            "colour=blue",
        ] {
            let r = http
                .get(c.url(0, &format!("/v1/audit?{q}")))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{q}");
            let body: Value = r.json().await.unwrap();
            let reason = body["error"]["reason"].as_str().unwrap_or("");
            assert!(
                reason == "bad_limit" || reason == "bad_audit_query",
                "{q}: {body}"
            );
        }
        assert!(metric(&c, "weft_rejected_total{reason=\"bad_limit\"} 2").await);
        assert!(metric(&c, "weft_rejected_total{reason=\"bad_audit_query\"} 6").await);

        // Paging: newest first, next_before continues.
        let page: Value = http
            .get(c.url(0, "/v1/audit?limit=2"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<i64> = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect();
        assert!(ids.len() == 2 && ids[0] > ids[1], "{page}");
        assert_eq!(page["next_before"], ids[1], "{page}");

        // The dashboard's summary: denials with reason and time only.
        let summary: Value = http
            .get(c.url(0, "/dashboard/audit.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let denials = summary["denials"].as_array().unwrap();
        assert!(!denials.is_empty(), "{summary}");
        assert!(denials[0].get("principal").is_none(), "{summary}");
        assert!(!summary.to_string().contains("tester"), "{summary}");

        // A newer policy pushed at runtime: an open subscription it no longer allows ends
        // (refused and audited under the new epoch), and the rate-limit buckets start
        // over under its limits.
        let mut sse = http
            .get(c.url(0, "/v1/streams/orders.eu/subscribe?after=0"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status(), 200);
        let first = tokio::time::timeout(Duration::from_secs(10), sse.chunk())
            .await
            .expect("the subscription delivers the stored events");
        assert!(first.unwrap().is_some());
        let b5 = bundle(&c.keys[0], &tester_sha)
            .replace("epoch = 4", "epoch = 5")
            .replace(
                "actions = [\"read\", \"subscribe\"]\nstreams = [\"orders.>\"]",
                "actions = [\"read\", \"subscribe\"]\nstreams = [\"catalogue.>\"]",
            )
            .replace(
                "events_per_s = 1\nburst = 5",
                "events_per_s = 100\nburst = 100",
            );
        assert!(
            b5.contains("catalogue.>") && b5.contains("burst = 100"),
            "{b5}"
        );
        std::fs::write(ops.join("b5.toml"), b5).unwrap();
        let b5_signed = ops.join("b5.cbor");
        weft_ok(
            &ops,
            &[
                "policy",
                "sign",
                "--key",
                "op.key",
                "--out",
                b5_signed.to_str().unwrap(),
                "b5.toml",
            ],
        );
        weft_ok(
            &ops,
            &[
                "policy",
                "push",
                "--node",
                &c.nodes[0].http,
                "--token",
                &token,
                b5_signed.to_str().unwrap(),
            ],
        );
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            while let Ok(Some(_)) = sse.chunk().await {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "the subscription outlived the policy that revoked it"
        );
        let e = audited(
            &c,
            &token,
            "reason=subscribe_forbidden&stream=orders.eu",
            "subscribe_forbidden",
        )
        .await;
        assert_eq!(e["epoch"], 5, "{e}");
        audited(&c, &token, "reason=policy_pushed", "policy_pushed").await;
        for i in 0..10 {
            let (status, body) = c
                .publish(0, "orders.eu", "local", &[json!({ "i": i })])
                .await;
            assert_eq!(status, 200, "epoch 5 allows a burst of 100: {body}");
        }

        // The mesh side: a node whose key node 0 does not trust is refused in the TLS
        // handshake, and that is audited too.
        weft_ok(&c.dir, &["keygen", "--out", "intruder.key"]);
        let intruder = c.dir.join("intruder.toml");
        std::fs::write(
            &intruder,
            format!(
                "name = \"intruder\"\nregion = \"aws:eu-west-1\"\ncloud = \"aws\"\n\
                 jurisdiction = \"EU\"\nkey = \"intruder.key\"\ndata_dir = \"data/intruder\"\n\
                 seeds = [\"127.50.0.1:7400\"]\ntrusted_nodes = [\"{}\"]\n\
                 [listen]\nmesh = \"127.50.0.2:7400\"\nhttp = \"127.0.0.1:20501\"\n",
                c.keys[0]
            ),
        )
        .unwrap();
        // Killed when dropped, also if an assertion fails first.
        let intruder = KillOnDrop(
            std::process::Command::new(WEFT)
                .args(["node", "--config", intruder.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let e = audited(
            &c,
            &token,
            "reason=peer_handshake_failed",
            "peer_handshake_failed",
        )
        .await;
        drop(intruder);
        assert!(e["message"].as_str().unwrap().contains("127.50.0.2"), "{e}");
        // Under the policy in force (mesh rows carried epoch 0 before), saying which side
        // refused.
        assert_eq!(e["epoch"], 5, "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("this node refused the peer (TLS alert"),
            "{e}"
        );

        // A bundle refused at start: the node exits, and the entry it wrote first is in the
        // log when it runs again.
        c.kill9(0);
        weft_ok(&ops, &["keygen", "--out", "rogue.key"]);
        sign("b.toml", "rogue.key");
        let (ok, out) = weft(
            &c.dir,
            &["node", "--config", c.nodes[0].config.to_str().unwrap()],
        );
        assert!(
            !ok,
            "started with a bundle no trusted operator signed: {out}"
        );
        sign("b.toml", "op.key");
        c.start(0);
        c.wait_healthy(0).await;
        let e = audited(
            &c,
            &token,
            "reason=bundle_unknown_signer",
            "bundle_unknown_signer",
        )
        .await;
        assert_eq!(e["decision"], "deny", "{e}");
        drop(operators);
    });
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
