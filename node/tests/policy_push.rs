//! Policy bundles pushed through the fabric (`weft policy push`, `POST /v1/policy`): every
//! node applies a pushed bundle, a node that was down catches up through anti-entropy when
//! it returns, a restart keeps the newest applied epoch, every node verifies a bundle
//! itself (one with a stricter threshold refuses what the others accept), and the push
//! refuses rollback, unknown signers, oversize and non-admin pushes with distinct reasons,
//! counted. Bounded waits; processes killed at the end.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use sha2::Digest as _;

fn weft_ok(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = weft_in(dir, args);
    assert!(ok, "weft {args:?}: {text}");
    text
}

/// A bundle of `epoch`: the tester may publish to `orders.>`, and from epoch 4 on also
/// to `audit.>` (the change a push makes visible).
fn bundle(epoch: u64, keys: &[String], token_sha256: &str) -> String {
    let audit = if epoch >= 4 { ", \"audit.>\"" } else { "" };
    format!(
        r#"format = 1
epoch = {epoch}
description = "push test, epoch {epoch}"

[jurisdictions.EU]
regions = ["aws:eu-west-1", "aws:eu-central-1"]
nodes = ["{a}", "{b}"]

[jurisdictions.US]
regions = ["aws:us-east-1"]
nodes = ["{c}"]

[tenants.acme]

[roles.writer]

[principals.tester]
tenant = "acme"
roles = ["writer"]
token_sha256 = "{token_sha256}"

[[access]]
name = "write"
effect = "allow"
actions = ["publish", "subscribe", "read"]
streams = ["orders.>"{audit}]
roles = ["writer"]

[classes.public]
anywhere = true

[[streams]]
pattern = ">"
classification = "public"
replication = "all"
"#,
        a = keys[0],
        b = keys[1],
        c = keys[2],
    )
}

/// [`bundle`] of `epoch` with `kv.>` a table resolved by `conflict` (or not a table, for
/// `None`), writable by the tester.
fn table_bundle(epoch: u64, keys: &[String], token_sha256: &str, conflict: Option<&str>) -> String {
    let rule = conflict.map_or(String::new(), |c| {
        format!(
            "[[streams]]\npattern = \"kv.>\"\nclassification = \"public\"\nreplication = \"all\"\nconflict = \"{c}\"\n\n"
        )
    });
    bundle(epoch, keys, token_sha256)
        .replace(
            r#"streams = ["orders.>""#,
            r#"streams = ["orders.>", "kv.>""#,
        )
        .replace(
            "[[streams]]\npattern = \">\"",
            &format!("{rule}[[streams]]\npattern = \">\""),
        )
}

async fn epoch(c: &Cluster, i: usize) -> Option<u64> {
    let v: Value = reqwest::get(c.url(i, "/v1/policy"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["epoch"].as_u64()
}

async fn wait_epoch(c: &Cluster, i: usize, want: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let e = epoch(c, i).await;
        if e == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {i} at epoch {e:?}, not {want}, after {within:?}; log:\n{}",
            c.log(i)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn push(c: &Cluster, i: usize, token: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(c.url(i, "/v1/policy"))
        .bearer_auth(token)
        .header("content-type", "application/cbor")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[test]
fn a_pushed_bundle_reaches_every_node_and_survives_outages_and_restarts() {
    rt().block_on(async {
        let ops = Operators::new("policy-push", &["op1", "op2", "rogue"]);
        let operators = &ops.keys;
        // A second principal, not an admin.
        let reader_token = "reader-token-for-the-push-test";
        let reader_hash = hex::encode(sha2::Sha256::digest(reader_token.as_bytes()));
        let extra = format!(
            "[[principals]]\nname = \"reader\"\ntenant = \"acme\"\ntoken_sha256 = \"{reader_hash}\"\n\
             [policy]\noperators = [\"{}\", \"{}\"]\nthreshold = 1\nbundle = \"policy.cbor\"\n",
            operators[0], operators[1]
        );
        let mut c = Cluster::new("policy-push", 54, &two_eu_one_us(), &extra);
        // The US node needs both operators' signatures: it verifies every bundle itself.
        let us_config = std::fs::read_to_string(&c.nodes[2].config).unwrap();
        std::fs::write(
            &c.nodes[2].config,
            us_config.replace("threshold = 1", "threshold = 2"),
        )
        .unwrap();
        let token_sha256 = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
        let sign = |epoch: u64, keys: &[&str], out: &str| -> Vec<u8> {
            ops.sign(&bundle(epoch, &c.keys, &token_sha256), keys, out)
        };
        std::fs::write(
            c.dir.join("policy.cbor"),
            sign(3, &["op1", "op2"], "e3.cbor"),
        )
        .unwrap();
        sign(4, &["op1", "op2"], "e4.cbor");
        sign(2, &["op1", "op2"], "e2.cbor");
        let rogue = sign(7, &["rogue"], "rogue.cbor");
        let one_signer = sign(5, &["op1"], "e5.cbor");

        c.start_all();
        c.wait_meshed().await;
        for i in 0..3 {
            assert_eq!(epoch(&c, i).await, Some(3));
        }
        let (s, body) = c.publish(1, "audit.trail", "local", &[json!({})]).await;
        assert_eq!(s, 403, "epoch 3 does not allow audit.>: {body}");

        // The US node is down while the bundle is pushed.
        c.kill9(2);
        let node0 = c.nodes[0].http.clone();
        let out = weft_ok(
            &ops.dir,
            &[
                "policy",
                "push",
                "--node",
                &node0,
                "--token",
                &c.token,
                "e4.cbor",
            ],
        );
        assert!(out.contains("epoch 4 in force"), "{out}");
        assert_eq!(epoch(&c, 0).await, Some(4), "applied before the answer");
        wait_epoch(&c, 1, 4, Duration::from_secs(10)).await;
        let (s, body) = c.publish(1, "audit.trail", "local", &[json!({"n": 1})]).await;
        assert_eq!(s, 200, "epoch 4 allows audit.> on every node: {body}");
        // Back up: the US node catches up through anti-entropy.
        c.start(2);
        c.wait_healthy(2).await;
        wait_epoch(&c, 2, 4, Duration::from_secs(30)).await;
        let (s, body) = c.publish(2, "audit.trail", "local", &[json!({"n": 2})]).await;
        assert_eq!(s, 200, "{body}");
        // `weft policy status` sees every node at 4 once the gossiped status catches up.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (ok, out) = weft_in(
                &ops.dir,
                &["policy", "status", "--node", &node0, "--expect", "4"],
            );
            // `ok` with fewer than 3 live nodes: node 0's gossiped view has not (re)learned
            // every node yet (the US node restarted above); wait for it.
            if ok && out.contains("3 live node(s); 3 at epoch 4") {
                break;
            }
            assert!(ok || out.contains("behind"), "{out}");
            assert!(Instant::now() < deadline, "status never converged: {out}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }

        // Refusals at the push, each with its own reason, counted.
        let e4 = std::fs::read(ops.dir.join("e4.cbor")).unwrap();
        let e2 = std::fs::read(ops.dir.join("e2.cbor")).unwrap();
        for (name, token, body, status, reason) in [
            ("same epoch", c.token.as_str(), e4, 409, "bundle_rollback"),
            ("older epoch", c.token.as_str(), e2, 409, "bundle_rollback"),
            (
                "unknown signer",
                c.token.as_str(),
                rogue,
                403,
                "bundle_unknown_signer",
            ),
            (
                "oversize",
                c.token.as_str(),
                vec![0xa0; 600 * 1024],
                413,
                "bundle_oversize",
            ),
            ("garbage", c.token.as_str(), vec![1, 2, 3], 400, "bundle_malformed"),
            (
                "not an admin",
                reader_token,
                std::fs::read(ops.dir.join("e4.cbor")).unwrap(),
                403,
                "not_admin",
            ),
        ] {
            let before = rejected(&c, 0, reason).await;
            let (s, body) = push(&c, 0, token, body).await;
            assert_eq!(s, status, "{name}: {body}");
            assert_eq!(body["error"]["reason"], reason, "{name}: {body}");
            assert_eq!(rejected(&c, 0, reason).await, before + 1, "{name} counted");
        }
        assert_eq!(epoch(&c, 0).await, Some(4), "nothing refused was applied");
        // Only nodes publish on system streams.
        let (s, body) = c
            .publish(0, "_weft.policy", "local", &[json!({"forged": true})])
            .await;
        assert_eq!(s, 403, "{body}");
        assert_eq!(body["error"]["reason"], "system_stream", "{body}");

        // One operator's signature: enough for the EU nodes (threshold 1), not for the US
        // node (threshold 2), which refuses the carrier from the fabric and keeps epoch 4.
        let before = rejected(&c, 2, "bundle_too_few_signers").await;
        let (s, body) = push(&c, 0, &c.token, one_signer).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["epoch"], 5, "{body}");
        wait_epoch(&c, 1, 5, Duration::from_secs(10)).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while rejected(&c, 2, "bundle_too_few_signers").await == before {
            assert!(
                Instant::now() < deadline,
                "the US node never saw the carrier: {}",
                c.log(2)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(epoch(&c, 2).await, Some(4), "the US node refused epoch 5");
        assert!(
            c.log(2).contains("bundle_too_few_signers"),
            "the refusal is audited with its reason"
        );

        // A restart keeps the newest applied epoch, not the configured one (3).
        c.kill9(0);
        c.start(0);
        c.wait_healthy(0).await;
        assert_eq!(epoch(&c, 0).await, Some(5));

        // An epoch that no longer grants node 1's claim (its key left out of EU's nodes):
        // node 1 applies it, demoted, and says so (counted, warned, in its status), not
        // only in its audit log.
        let demoting = bundle(6, &c.keys, &token_sha256).replace(&format!(", \"{}\"", c.keys[1]), "");
        let e6 = ops.sign(&demoting, &["op1"], "e6.cbor");
        let (s, body) = push(&c, 0, &c.token, e6).await;
        assert_eq!(s, 200, "{body}");
        wait_epoch(&c, 1, 6, Duration::from_secs(10)).await;
        assert_eq!(rejected(&c, 1, "jurisdiction_claim").await, 1);
        let status: Value = c.get_auth(1, "/v1/status").await;
        assert_eq!(status["jurisdiction_granted"], false, "{status}");
        let status: Value = c.get_auth(0, "/v1/status").await;
        assert_eq!(status["jurisdiction_granted"], true, "{status}");
        assert!(
            c.log(1).contains("a restart with this bundle is refused"),
            "{}",
            c.log(1)
        );
    });
}

/// A pushed policy that changes a table's strategy, drops a table or declares it again
/// takes effect on every node when it is applied, not at the next write to the table: the
/// key written under lww reads as a multi-value key at once, and every node holds the same
/// table (equal digests).
#[test]
fn a_pushed_policy_rebuilds_the_tables_it_changes_when_applied() {
    rt().block_on(async {
        let ops = Operators::new("policy-tables", &["op1"]);
        let extra = ops.node_policy();
        let mut c = Cluster::new("policy-tables", 65, &two_eu_one_us(), &extra);
        let token_sha256 = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
        let sign = |epoch: u64, conflict: Option<&str>| -> Vec<u8> {
            ops.sign(
                &table_bundle(epoch, &c.keys, &token_sha256, conflict),
                &["op1"],
                &format!("e{epoch}.cbor"),
            )
        };
        std::fs::write(c.dir.join("policy.cbor"), sign(3, Some("lww"))).unwrap();
        let (mv, dropped, again) = (
            sign(4, Some("multi-value")),
            sign(5, None),
            sign(6, Some("multi-value")),
        );
        c.start_all();
        c.wait_meshed().await;

        let r = reqwest::Client::new()
            .put(c.url(0, "/v1/tables/kv.users/ann"))
            .bearer_auth(&c.token)
            .json(&json!({"v": 1}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let get = |i: usize, path: &'static str| {
            let (url, token) = (c.url(i, path), c.token.clone());
            async move {
                let r = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .ok()?;
                let status = r.status().as_u16();
                Some((status, r.json::<Value>().await.unwrap_or(Value::Null)))
            }
        };
        for i in 0..3 {
            wait_for(Duration::from_secs(20), || async {
                let (s, v) = get(i, "/v1/tables/kv.users/ann").await?;
                (s == 200 && v["strategy"] == "lww" && v["value"] == json!({"v": 1})).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i} never showed ann under lww:\n{}", c.log(i)));
        }

        // Each epoch in turn, with no write in between: every node shows the table the
        // epoch declares, built from its log.
        for (body, want) in [
            (mv, Some("multi-value")),
            (dropped, None),
            (again, Some("multi-value")),
        ] {
            let (s, v) = push(&c, 0, &c.token, body).await;
            assert_eq!(s, 200, "{v}");
            for i in 0..3 {
                let shown = wait_for(Duration::from_secs(20), || async {
                    let (s, v) = get(i, "/v1/tables/kv.users/ann").await?;
                    let ok = match want {
                        Some(strategy) => {
                            s == 200
                                && v["strategy"] == strategy
                                && v["siblings"][0]["value"] == json!({"v": 1})
                        }
                        None => s == 404,
                    };
                    ok.then_some(v)
                })
                .await;
                assert!(
                    shown.is_some(),
                    "node {i} under {want:?}: {:?}\n{}",
                    get(i, "/v1/tables/kv.users/ann").await,
                    c.log(i)
                );
            }
        }
        let mut digests = Vec::new();
        for i in 0..3 {
            let (s, v) = get(i, "/v1/tables/kv.users?digest=true").await.unwrap();
            assert_eq!(s, 200, "{v}");
            digests.push(v["digest"].as_str().unwrap().to_string());
        }
        assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    });
}

/// A node that trusts operator keys but holds no bundle yet serves no data: publishes,
/// reads and subscriptions are refused with 503 `policy_pending` (counted and audited)
/// rather than served under no policy (reads open to anyone, publishes unstamped). Status
/// and the policy endpoints stay open, so the first bundle can be pushed; from then on the
/// policy decides.
#[test]
fn a_node_that_trusts_operators_serves_no_data_until_its_first_policy() {
    rt().block_on(async {
        let ops = Operators::new("policy-first", &["op1"]);
        let extra = format!(
            "[policy]\noperators = [\"{}\"]\nthreshold = 1\n",
            ops.keys[0]
        );
        let c = Cluster::new("policy-first", 66, &two_eu_one_us(), &extra);
        let token_sha256 = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
        let e3 = ops.sign(&bundle(3, &c.keys, &token_sha256), &["op1"], "e3.cbor");
        let mut c = c;
        c.start_all();
        c.wait_meshed().await;
        assert_eq!(epoch(&c, 0).await, Some(0), "no policy yet");
        let pending = |status: u16, v: &Value| {
            assert_eq!(status, 503, "{v}");
            assert_eq!(v["error"]["reason"], "policy_pending", "{v}");
        };
        // Anonymous and with a token alike: no reads, no subscriptions, no publishes.
        let r = reqwest::get(c.url(0, "/v1/streams/orders.x/subscribe"))
            .await
            .unwrap();
        assert_eq!(r.headers().get("retry-after").unwrap(), "5");
        let status = r.status().as_u16();
        pending(status, &r.json().await.unwrap());
        let r = reqwest::Client::new()
            .get(c.url(0, "/v1/streams/orders.x/events"))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        pending(status, &r.json().await.unwrap());
        let (status, v) = c.publish(0, "orders.x", "local", &[json!({"n": 1})]).await;
        pending(status, &v);
        assert_eq!(rejected(&c, 0, "policy_pending").await, 3);
        // Not ready for clients (a load balancer keeps them away), though meshed.
        let r = reqwest::get(c.url(0, "/readyz")).await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.text().await.unwrap().contains("no policy bundle"));
        // Status stays open, says why the node is not ready (its policy_epoch 0 looks like
        // a node without a policy), and the first bundle can be pushed.
        let r = reqwest::get(c.url(0, "/v1/status")).await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["ready"], false, "{v}");
        assert!(
            v["not_ready"]
                .as_str()
                .is_some_and(|w| w.starts_with("no policy bundle in force yet")),
            "{v}"
        );
        let (s, v) = push(&c, 0, &c.token, e3).await;
        assert_eq!(s, 200, "{v}");
        // Ready once it is in force here (the push answers when this node applied it).
        let ready = wait_for(Duration::from_secs(10), || async {
            let r = reqwest::get(c.url(0, "/readyz")).await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        assert!(ready.is_some(), "not ready under its policy");
        // Under the policy: the tester publishes and reads; anonymous reads are refused.
        let (status, v) = c.publish(0, "orders.x", "local", &[json!({"n": 2})]).await;
        assert_eq!(status, 200, "{v}");
        let r = reqwest::get(c.url(0, "/v1/streams/orders.x/subscribe"))
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // The refusals while pending are in the audit log.
        let audit: Value = reqwest::Client::new()
            .get(c.url(0, "/v1/audit?reason=policy_pending"))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            audit["entries"].as_array().is_some_and(|e| e.len() == 3),
            "{audit}"
        );
    });
}

/// Credentials travel in the signed bundle: a principal the bundle gives a token signs in
/// with it on every node without being in any node's config, and a bundle that gives a
/// configured principal another token rotates it (the old one is refused, `token_revoked`).
#[test]
fn bundle_credentials_sign_in_and_rotate_fabric_wide() {
    rt().block_on(async {
        const CAROL: &str = "carol-token-0123456789abcdef0123456789";
        const ROTATED: &str = "tester-rotated-token-0123456789abcdef";
        let hash = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
        let ops = Operators::new("policy-creds", &["op1"]);
        let extra = ops.node_policy();
        let mut c = Cluster::new("policy-creds", 67, &two_eu_one_us(), &extra);
        let tester = hash(&c.token);
        let with = |epoch: u64, tester_hash: &str| {
            bundle(epoch, &c.keys, tester_hash).replace(
                "[[access]]",
                &format!(
                    "[principals.carol]\ntenant = \"acme\"\nroles = [\"writer\"]\ntoken_sha256 = \"{}\"\n\n[[access]]",
                    hash(CAROL)
                ),
            )
        };
        std::fs::write(
            c.dir.join("policy.cbor"),
            ops.sign(&bundle(3, &c.keys, &tester), &["op1"], "e3.cbor"),
        )
        .unwrap();
        let e4 = ops.sign(&with(4, &tester), &["op1"], "e4.cbor");
        let e5 = ops.sign(&with(5, &hash(ROTATED)), &["op1"], "e5.cbor");
        c.start_all();
        c.wait_meshed().await;
        let publish = |i: usize, token: &'static str| {
            let url = c.url(i, "/v1/streams/orders.x/events");
            async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/cloudevents+json")
                    .body(
                        serde_json::to_vec(&json!({"specversion": "1.0", "id": token,
                            "source": "it", "type": "t", "data": {}}))
                        .unwrap(),
                    )
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let (s, v) = publish(1, CAROL).await;
        assert_eq!((s, &v["error"]["reason"]), (401, &json!("bad_token")), "{v}");
        let (s, v) = push(&c, 0, &c.token, e4).await;
        assert_eq!(s, 200, "{v}");
        for i in 0..3 {
            wait_epoch(&c, i, 4, Duration::from_secs(20)).await;
        }
        // Carol is in no node's config.
        let (s, v) = publish(1, CAROL).await;
        assert_eq!(s, 200, "carol signs in with the bundle's token: {v}");
        // A subscription open with the tester's token before the rotation.
        let sse = reqwest::Client::new()
            .get(c.url(2, "/v1/streams/orders.x/subscribe"))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status().as_u16(), 200);
        let mut open = sse.bytes_stream();
        // Rotate the tester's token through the bundle.
        let (s, v) = push(&c, 0, &c.token, e5).await;
        assert_eq!(s, 200, "{v}");
        for i in 0..3 {
            wait_epoch(&c, i, 5, Duration::from_secs(20)).await;
        }
        // The stream opened with the rotated token ends (it used to run on: only the
        // principal's rights were checked again, not its token).
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            use futures_util::StreamExt as _;
            while let Some(Ok(_)) = open.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "the subscription with the revoked token still runs");
        let before = rejected(&c, 2, "token_revoked").await;
        let r = reqwest::Client::new()
            .get(c.url(2, "/v1/streams/orders.x/events"))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["reason"], "token_revoked", "{v}");
        assert_eq!(rejected(&c, 2, "token_revoked").await, before + 1);
        let (s, v) = publish(2, ROTATED).await;
        assert_eq!(s, 200, "the rotated token signs in: {v}");
        // ... as the configured principal, still an admin (a rotation must not lock the
        // operators out): the audit log is admin-only.
        let r = reqwest::Client::new()
            .get(c.url(2, "/v1/audit?limit=1"))
            .bearer_auth(ROTATED)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    });
}

/// Whether node `i`'s store holds the event `id` (hex), read through SQLite beside the
/// running node.
fn stored(c: &Cluster, i: usize, id: &str) -> bool {
    let path = c
        .dir
        .join("data")
        .join(c.nodes[i].spec.name)
        .join("weft.db");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    conn.query_row(
        "SELECT count(*) FROM events WHERE id = ?1",
        [hex::decode(id).unwrap()],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        > 0
}

/// An epoch that classifies a stream more narrowly holds the events stamped before it to
/// the new class: they were public when published and reached the US node, but once
/// `customers.>` is EU personal data no node sends them to a US node that joins later
/// (the EU nodes' replication filter, on their anti-entropy answers), and the US node
/// that holds them stops serving them. A later epoch that widens the class again does not
/// widen what was stamped narrower (the policy crate's `residency_matches_model`).
#[test]
fn a_stream_classified_more_narrowly_holds_the_events_stamped_before_it() {
    rt().block_on(async {
        let ops = Operators::new("reclassify", &["op1"]);
        let mut specs = two_eu_one_us();
        specs.push(Spec {
            name: "us-late",
            region: "aws:us-east-1",
            jurisdiction: "US",
        });
        let mut c = Cluster::new("reclassify", 70, &specs, &ops.node_policy());
        let token_sha256 = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
        let bundle = |epoch: u64, class: &str| {
            format!(
                r#"format = 1
epoch = {epoch}
[jurisdictions.EU]
regions = ["aws:eu-west-1", "aws:eu-central-1"]
nodes = ["{a}", "{b}"]
[jurisdictions.US]
regions = ["aws:us-east-1"]
nodes = ["{us}", "{late}"]
[tenants.acme]
[roles.writer]
[principals.tester]
tenant = "acme"
roles = ["writer"]
token_sha256 = "{token_sha256}"
[[access]]
name = "write"
effect = "allow"
actions = ["publish", "subscribe", "read"]
streams = ["customers.>", "orders.>"]
roles = ["writer"]
[classes.eu-personal]
jurisdictions = ["EU"]
transit = "forbidden"
[classes.public]
anywhere = true
[[streams]]
pattern = "customers.>"
classification = "{class}"
replication = "all"
[[streams]]
pattern = ">"
classification = "public"
replication = "all"
"#,
                a = c.keys[0],
                b = c.keys[1],
                us = c.keys[2],
                late = c.keys[3],
            )
        };
        std::fs::write(
            c.dir.join("policy.cbor"),
            ops.sign(&bundle(1, "public"), &["op1"], "e1.cbor"),
        )
        .unwrap();
        let e2 = ops.sign(&bundle(2, "eu-personal"), &["op1"], "e2.cbor");
        for i in 0..3 {
            c.start(i);
        }
        for i in 0..3 {
            c.wait_healthy(i).await;
            c.wait_peers_up(i, 2).await;
        }
        // Epoch 1: customers.> is public; the record reaches the US node.
        let (s, body) = c
            .publish(
                0,
                "customers.profiles",
                "local",
                &[json!({"name": "Aoife"})],
            )
            .await;
        assert_eq!(s, 200, "{body}");
        let id = body["ids"][0].as_str().unwrap().to_string();
        wait_for(Duration::from_secs(20), || async {
            c.ids(2, "customers.profiles")
                .await
                .filter(|ids| ids.contains(&id))
        })
        .await
        .unwrap_or_else(|| panic!("the public record never reached the US node:\n{}", c.log(2)));
        // Epoch 2 classifies customers.> as EU personal data.
        let (s, body) = push(&c, 0, &c.token, e2).await;
        assert_eq!(s, 200, "{body}");
        for i in 1..3 {
            wait_epoch(&c, i, 2, Duration::from_secs(20)).await;
        }
        // The US node holds the record from before, and no longer serves it.
        assert!(stored(&c, 2, &id), "held from before the reclassification");
        let ids = c.ids(2, "customers.profiles").await.unwrap();
        assert!(ids.is_empty(), "served after the reclassification: {ids:?}");
        assert_eq!(
            c.ids(0, "customers.profiles").await.unwrap(),
            std::slice::from_ref(&id),
            "the EU node serves it"
        );
        // A US node that joins now catches up on everything the EU nodes hold that it may
        // hold: the policy (epoch 2), a public order published after it; not the record.
        let (s, body) = c
            .publish(0, "orders.late", "local", &[json!({"n": 1})])
            .await;
        assert_eq!(s, 200, "{body}");
        let order = body["ids"][0].as_str().unwrap().to_string();
        c.start(3);
        c.wait_healthy(3).await;
        wait_epoch(&c, 3, 2, Duration::from_secs(30)).await;
        wait_for(Duration::from_secs(30), || async {
            c.ids(3, "orders.late")
                .await
                .filter(|ids| ids.contains(&order))
        })
        .await
        .unwrap_or_else(|| panic!("the late US node never caught up:\n{}", c.log(3)));
        // Its ordered delivery of node 0's events went past the record (a Skip), so
        // whatever anti-entropy sent it, it sent before the order.
        assert!(
            !stored(&c, 3, &id),
            "a record reclassified EU personal reached a US node that joined after it:\n{}",
            c.log(3)
        );
    });
}
