//! A signed policy bundle enforced by real nodes: an EU-resident stream never reaches the
//! US node (not stored, not announced, not synced), an unrestricted one does, publishing
//! outside the access rules is refused with 403 and audited, and a node whose jurisdiction
//! claim the bundle does not grant refuses to start. Bounded waits; processes killed at
//! the end.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sha2::Digest as _;

fn weft(dir: &std::path::Path, args: &[&str]) -> String {
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
    assert!(out.status.success(), "weft {args:?}: {text}");
    text
}

/// The bundle: EU = the two EU nodes in their regions, US = the US node; `pii.>` is
/// EU-resident personal data, `orders.>` public, `kept.>` public but replicated to
/// eu-west-1 and us-east-1 only (not eu-central-1); the test principal may publish to
/// those (and read them) and nothing else. `us_jurisdiction` is where the US node's key is granted.
fn bundle(keys: &[String], token_sha256: &str, us_jurisdiction: &str) -> String {
    format!(
        r#"format = 1
epoch = 3
description = "test: EU-resident personal data"

[jurisdictions.EU]
regions = ["aws:eu-west-1", "aws:eu-central-1"]
nodes = ["{a}", "{b}"{us_in_eu}]

[jurisdictions.US]
regions = ["aws:us-east-1"]
nodes = [{us_in_us}]

[tenants.acme]

[roles.writer]

[principals.tester]
tenant = "acme"
roles = ["writer"]
token_sha256 = "{token_sha256}"

[[access]]
name = "write"
effect = "allow"
actions = ["publish"]
streams = ["pii.>", "orders.>", "kept.>"]
roles = ["writer"]

[[access]]
name = "read"
effect = "allow"
actions = ["subscribe", "read"]
streams = ["pii.>", "orders.>", "kept.>"]
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

[[streams]]
pattern = "kept.>"
classification = "public"
replication = "regions"
regions = ["aws:eu-west-1", "aws:us-east-1"]
"#,
        a = keys[0],
        b = keys[1],
        us_in_eu = if us_jurisdiction == "EU" {
            format!(", \"{}\"", keys[2])
        } else {
            String::new()
        },
        us_in_us = if us_jurisdiction == "US" {
            format!("\"{}\"", keys[2])
        } else {
            String::new()
        },
    )
}

#[test]
fn an_eu_resident_stream_never_reaches_the_us_node_and_access_rules_hold() {
    rt().block_on(async {
        // The operator key lives outside the cluster's directory (operators sign offline).
        let ops = std::env::temp_dir().join(format!("weft-it-policy-ops-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&ops);
        std::fs::create_dir_all(&ops).unwrap();
        let out = weft(&ops, &["keygen", "--out", "op.key"]);
        let operator = out
            .lines()
            .find_map(|l| l.strip_prefix("public key: "))
            .unwrap()
            .trim()
            .to_string();
        let extra = format!(
            "[policy]\noperators = [\"{operator}\"]\nthreshold = 1\nbundle = \"policy.cbor\"\n"
        );
        let mut c = Cluster::new("policy", 51, &two_eu_one_us(), &extra);
        let token_sha256 = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
        std::fs::write(ops.join("b.toml"), bundle(&c.keys, &token_sha256, "US")).unwrap();
        let signed = c.dir.join("policy.cbor");
        weft(
            &ops,
            &[
                "policy",
                "sign",
                "--key",
                "op.key",
                "--out",
                signed.to_str().unwrap(),
                "b.toml",
            ],
        );
        c.start_all();
        c.wait_meshed().await;
        let p: serde_json::Value = reqwest::get(c.url(2, "/v1/policy"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(p["epoch"], 3, "{p}");
        assert_eq!(p["signers"][0], operator.as_str(), "{p}");

        // EU-resident: stored on both EU nodes, never on the US one.
        let (status, body) = c
            .publish(0, "pii.customers", "regions:2", &[json!({"name": "Ada"})])
            .await;
        assert_eq!(status, 200, "{body}");
        let pii_id = body["ids"][0].as_str().unwrap().to_string();
        let regions: Vec<&str> = body["regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert!(!regions.contains(&"aws:us-east-1"), "{body}");
        // Three regions for an EU-only class the policy places in two: refused at once,
        // naming them, and nothing stored (before: stored, then 504 after the ack timeout
        // at every retry).
        let (status, body) = c
            .publish(0, "pii.customers", "regions:3", &[json!({"name": "Bea"})])
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["reason"], "ack_unreachable", "{body}");
        let said = body["error"]["message"].as_str().unwrap();
        assert!(
            said.contains("aws:eu-central-1, aws:eu-west-1") && said.contains("regions:2"),
            "{said}"
        );
        assert_eq!(
            c.ids(0, "pii.customers").await.unwrap_or_default(),
            vec![pii_id.clone()],
            "the refused event was stored"
        );
        // Kept to two regions: refused at the node outside them, naming the rule; an ack
        // of three regions can never be met; held where the rule says.
        let (status, body) = c
            .publish(1, "kept.audit", "local", &[json!({"n": 0})])
            .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["reason"], "residency_ingress", "{body}");
        let said = body["error"]["message"].as_str().unwrap();
        assert!(
            said.contains("streams[2]") && said.contains("aws:eu-west-1, aws:us-east-1"),
            "{said}"
        );
        let (status, body) = c
            .publish(0, "kept.audit", "regions:3", &[json!({"n": 1})])
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["reason"], "ack_unreachable", "{body}");
        let (status, body) = c
            .publish(0, "kept.audit", "regions:2", &[json!({"n": 2})])
            .await;
        assert_eq!(status, 200, "{body}");
        let kept_id = body["ids"][0].as_str().unwrap().to_string();
        assert_eq!(
            body["regions"],
            json!(["aws:eu-west-1", "aws:us-east-1"]),
            "{body}"
        );
        // Public: everywhere (and a marker that the US node has caught up with eu-a).
        let (status, body) = c
            .publish(0, "orders.eu", "regions:3", &[json!({"order": 1})])
            .await;
        assert_eq!(status, 200, "{body}");
        // Anti-entropy runs every 2 s: give it several rounds to (wrongly) repair.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let on = |i: usize| {
            let c = &c;
            async move { c.ids(i, "pii.customers").await.unwrap_or_default() }
        };
        assert_eq!(on(1).await, vec![pii_id.clone()], "eu-b holds the EU event");
        assert!(
            on(2).await.is_empty(),
            "the US node holds the EU-resident event"
        );
        let http = reqwest::Client::new();
        let r = http
            .get(c.url(2, &format!("/v1/events/{pii_id}")))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "the US node serves the EU-resident event");
        assert_eq!(
            c.ids(2, "kept.audit").await.unwrap_or_default(),
            vec![kept_id.clone()]
        );
        assert!(
            c.ids(1, "kept.audit").await.unwrap_or_default().is_empty(),
            "eu-central-1 holds an event its stream rule keeps out"
        );
        let r = http
            .get(c.url(1, &format!("/v1/events/{kept_id}")))
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            404,
            "eu-central-1 serves an event kept out of it"
        );
        let orders = c.ids(2, "orders.eu").await.unwrap_or_default();
        assert_eq!(orders.len(), 1, "the public event reached the US node");

        // The stamp is in the signed security context.
        let ev = c.get_auth(1, &format!("/v1/events/{pii_id}")).await;
        let text = ev.to_string();
        assert!(text.contains("eu-personal"), "{ev}");

        // Outside the access rules: refused, with the reason, counted.
        let (status, body) = c.publish(0, "audit.trail", "local", &[json!({})]).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["reason"], "publish_forbidden", "{body}");
        let metrics = reqwest::get(c.url(0, "/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("weft_rejected_total{reason=\"publish_forbidden\"} 1"),
            "{metrics}"
        );
        let entry = wait_for(Duration::from_secs(10), || async {
            let v: serde_json::Value = http
                .get(c.url(0, "/v1/audit?reason=publish_forbidden"))
                .bearer_auth(&c.token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            v["entries"].get(0).cloned()
        })
        .await
        .expect("the refused publish is not in the audit log");
        assert_eq!(entry["stream"], "audit.trail", "{entry}");

        // A node whose claim the bundle does not grant (the US key listed under EU while
        // it claims US) refuses to start, saying why.
        c.kill9(2);
        std::fs::write(ops.join("b2.toml"), bundle(&c.keys, &token_sha256, "EU")).unwrap();
        let _ = std::fs::remove_file(&signed);
        weft(
            &ops,
            &[
                "policy",
                "sign",
                "--key",
                "op.key",
                "--out",
                signed.to_str().unwrap(),
                "b2.toml",
            ],
        );
        let out = std::process::Command::new(WEFT)
            .args(["node", "--config", c.nodes[2].config.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with a refused claim");
        assert!(text.contains("does not grant"), "{text}");
        let _ = std::fs::remove_dir_all(&ops);
    });
}
