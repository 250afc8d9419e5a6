//! An erase reaches egress derivatives too, with real processes: under a signed policy,
//! EU customer profiles stay in the EU and a field transform derives a masked copy that
//! goes everywhere (the US node holds only the copies). An admin erases one customer's
//! key at the other EU node. The node that made the copies (the profiles' ingress node)
//! retracts that customer's copy fabric-wide: it is gone from every node, the US node
//! included, while the other customer's copy stays; the retraction is audited there;
//! events published afterwards still arrive everywhere. Bounded waits; processes killed at
//! the end.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sha2::Digest as _;

const SOURCE: &str = "customers.eu.profiles";
const MASKED: &str = "customers.global.profiles";

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
[classes.eu-personal]
jurisdictions = ["EU"]
transit = "forbidden"

[classes.public]
anywhere = true

[[streams]]
pattern = "customers.eu.>"
classification = "eu-personal"
replication = "all"

[[streams]]
pattern = ">"
classification = "public"
replication = "all"

[transforms.profiles-masked]
source = "customers.eu.>"
target = "{MASKED}"
classification = "public"
drop = ["name"]
hash = ["email"]
salt = "erase-derived-salt"
"#,
        a = keys[0],
        b = keys[1],
        c = keys[2],
        access = tester_may_do_anything(token_sha256),
    )
}

/// Publishes one profile keyed `key` at node `i`; returns the source's id.
async fn profile(c: &Cluster, i: usize, key: &str) -> String {
    let ce = json!({"specversion": "1.0", "id": format!("profile-{key}"), "source": "it",
        "type": "t", "subject": key, "datacontenttype": "application/json",
        "data": {"name": format!("{key} Lovelace"), "email": format!("{key}@example.eu"),
                 "country": "IE"}});
    let (status, v) = c.post_events(i, SOURCE, "local", &c.token, &[ce]).await;
    assert!(
        (200..300).contains(&status),
        "publish on node {i}: {status} {v}"
    );
    assert_eq!(v["derived"].as_array().map(Vec::len), Some(1), "{v}");
    v["ids"][0].as_str().unwrap().to_string()
}

/// The masked copies node `i` serves: each one's lineage source id.
async fn copies(c: &Cluster, i: usize) -> Vec<String> {
    let v = c
        .get_auth(i, &format!("/v1/streams/{MASKED}/events?limit=100"))
        .await;
    let mut out: Vec<String> = v
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let lineage: Value =
                serde_json::from_str(e["weftlineage"].as_str().unwrap_or("null")).unwrap();
            lineage["sources"][0]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    out.sort();
    out
}

#[test]
fn an_erase_retracts_the_masked_copies_of_what_it_covers_everywhere() {
    rt().block_on(async {
        let ops = Operators::new("erase-derived", &["op"]);
        let extra = ops.node_policy();
        let mut c = Cluster::new("erase-derived", 58, &two_eu_one_us(), &extra);
        let token_sha256 = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
        let signed = ops.sign(&bundle(&c.keys, &token_sha256), &["op"], "e3.cbor");
        std::fs::write(c.dir.join("policy.cbor"), signed).unwrap();
        c.start_all();
        for i in 0..3 {
            c.wait_healthy(i).await;
        }
        for i in 0..3 {
            c.wait_peers_up(i, 2).await;
        }

        let alice = profile(&c, 0, "alice").await;
        let bob = profile(&c, 0, "bob").await;
        let mut both = vec![alice.clone(), bob.clone()];
        both.sort();
        for i in 0..3 {
            wait_for(Duration::from_secs(30), || async {
                (copies(&c, i).await == both).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i} lacks the masked copies:\n{}", c.log(i)));
        }
        // The US node holds the copies only.
        assert_eq!(c.ids(2, SOURCE).await.map(|v| v.len()), Some(0));

        // Erase alice's key at the other EU node (not the copies' origin).
        let r = reqwest::Client::new()
            .post(c.url(1, "/v1/erase"))
            .bearer_auth(&c.token)
            .json(&json!({"stream": SOURCE, "key": "alice"}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(status.is_success(), "{status} {body}");

        // Alice's copy goes from every node, bob's stays; alice's profile goes from the EU.
        for i in 0..3 {
            wait_for(Duration::from_secs(40), || async {
                (copies(&c, i).await == vec![bob.clone()]).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i} still serves alice's copy:\n{}", c.log(i)));
        }
        for i in 0..2 {
            let ids = c.ids(i, SOURCE).await.unwrap();
            assert_eq!(ids, vec![bob.clone()], "node {i}");
        }
        // Audited where it was applied, the US node included; the ingress node's erase
        // entry counts the copy it retracted.
        let audit = c.get_auth(2, "/v1/audit?limit=100").await.to_string();
        assert!(audit.contains("derivatives_retracted"), "{audit}");
        assert!(audit.contains("1 stored removed"), "{audit}");
        let audit = c.get_auth(0, "/v1/audit?limit=100").await.to_string();
        assert!(
            audit.contains("1 derivatives made here to retract"),
            "{audit}"
        );
        assert!(metric(&c, 2, "weft_erased_events_total ").await >= 1);

        // Ordered delivery goes on past the erased numbers: a new profile's copy arrives.
        let carol = profile(&c, 0, "carol").await;
        let mut now = vec![bob.clone(), carol];
        now.sort();
        wait_for(Duration::from_secs(30), || async {
            (copies(&c, 2).await == now).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("the US node never got carol's copy:\n{}", c.log(2)));
        for i in 0..3 {
            c.kill9(i);
        }
    });
}
