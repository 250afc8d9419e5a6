//! Erasure fabric-wide with real processes: three nodes hold table keys and plain events
//! of a principal; one node is cut off and takes a write of that principal during the
//! partition; an admin erases the principal and a key through the CLI at another node.
//! After the heal no node has any of it (API reads, event lookups, table reads, SQLite
//! rows), the partitioned write never appears anywhere, ordered delivery goes on (events
//! published afterwards arrive everywhere), the erase is audited, and bad requests get a
//! 400 naming the field. Bounded waits; processes killed at the end.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sha2::Digest as _;

const ALICE_TOKEN: &str = "alice-token-0123456789abcdef0123456789abcdef";

fn extra() -> String {
    let sha = hex::encode(sha2::Sha256::digest(ALICE_TOKEN.as_bytes()));
    format!(
        "[[tables]]\npattern = \"kv.>\"\nstrategy = \"lww\"\n\
         [[principals]]\nname = \"alice\"\ntenant = \"acme\"\ntoken_sha256 = \"{sha}\"\n"
    )
}

async fn put(c: &Cluster, i: usize, token: &str, path: &str, body: Value) -> String {
    let r = reqwest::Client::new()
        .put(c.url(i, path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "PUT {path} on node {i}: {status} {v}");
    v["ids"][0].as_str().unwrap().to_string()
}

/// `POST /v1/erase` with `body` to node 0 as `token`.
async fn request_erase(c: &Cluster, token: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(c.url(0, "/v1/erase"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Publishes one CloudEvent as `token`; returns its event id.
async fn publish(c: &Cluster, i: usize, token: &str, stream: &str, data: Value) -> String {
    let ce = json!({"specversion": "1.0", "id": format!("{stream}-{data}"), "source": "it",
        "type": "t", "datacontenttype": "application/json", "data": data});
    let (status, v) = c.post_events(i, stream, "local", token, &[ce]).await;
    assert!(
        (200..300).contains(&status),
        "publish on node {i}: {status} {v}"
    );
    v["ids"][0].as_str().unwrap().to_string()
}

async fn get(c: &Cluster, i: usize, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(c.url(i, path))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits until every node's log of `stream` holds `id`.
async fn everywhere(c: &Cluster, stream: &str, id: &str) {
    for i in 0..c.nodes.len() {
        wait_for(Duration::from_secs(40), || async {
            c.ids(i, stream)
                .await?
                .iter()
                .any(|x| x == id)
                .then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node {i} never delivered {id} of {stream}:\n{}", c.log(i)));
    }
}

/// Rows of node `i`'s store holding `needle` (an event id in hex, or clear text), by table.
fn rows_with(c: &Cluster, i: usize, needle: &[u8]) -> Vec<String> {
    let path = c.dir.join(format!("data/{}/weft.db", c.nodes[i].spec.name));
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut found = Vec::new();
    for (table, cols) in [
        ("events", "id, envelope"),
        ("log", "id, stream"),
        ("table_keys", "key, state"),
        ("ce_dedup", "ce_id, event_id"),
    ] {
        let mut stmt = conn
            .prepare(&format!("SELECT {cols} FROM {table}"))
            .unwrap();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = stmt
            .query_map([], |r| {
                let a = r.get_ref(0)?;
                let b = r.get_ref(1)?;
                let bytes = |v: rusqlite::types::ValueRef<'_>| match v {
                    rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                        b.to_vec()
                    }
                    _ => Vec::new(),
                };
                Ok((bytes(a), bytes(b)))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (a, b) in rows {
            let hits = |v: &[u8]| {
                v.windows(needle.len()).any(|w| w == needle)
                    || hex::encode(v)
                        .as_bytes()
                        .windows(needle.len())
                        .any(|w| w == needle)
            };
            if hits(&a) || hits(&b) {
                found.push(table.to_string());
            }
        }
    }
    found
}

#[test]
fn an_erase_reaches_every_node_and_nothing_it_covers_comes_back() {
    rt().block_on(async {
        let mut c = Cluster::new("erase", 63, &three_regions(), &extra());
        c.start_all();
        c.wait_meshed().await;
        let admin = c.token.clone();

        // Alice's data: a table key and plain events; the admin's own data beside it,
        // one key of which is erased by a key rule.
        let alice_key = put(
            &c,
            0,
            ALICE_TOKEN,
            "/v1/tables/kv.users/alice",
            json!({"v": "ALICE-SECRET-KEY"}),
        )
        .await;
        let alice_a = publish(
            &c,
            1,
            ALICE_TOKEN,
            "notes.x",
            json!({"m": "ALICE-SECRET-A"}),
        )
        .await;
        let alice_b = publish(
            &c,
            0,
            ALICE_TOKEN,
            "notes.x",
            json!({"m": "ALICE-SECRET-B"}),
        )
        .await;
        let carol = put(
            &c,
            1,
            &admin,
            "/v1/tables/kv.users/carol",
            json!({"v": "CAROL-SECRET"}),
        )
        .await;
        let bob = put(
            &c,
            0,
            &admin,
            "/v1/tables/kv.users/bob",
            json!({"v": "bob-stays"}),
        )
        .await;
        let keep = publish(&c, 2, &admin, "notes.x", json!({"m": "admin-stays"})).await;
        for (stream, id) in [
            ("kv.users", &alice_key),
            ("kv.users", &carol),
            ("kv.users", &bob),
            ("notes.x", &alice_a),
            ("notes.x", &alice_b),
            ("notes.x", &keep),
        ] {
            everywhere(&c, stream, id).await;
        }

        // Cut node 2 off; alice writes there during the partition.
        c.chaos(2, json!([{"peer": "*", "blackhole": true}])).await;
        for i in 0..2 {
            c.chaos(
                i,
                json!([{"peer": "aws:ap-northeast-1", "blackhole": true}]),
            )
            .await;
        }
        let partitioned = publish(
            &c,
            2,
            ALICE_TOKEN,
            "notes.x",
            json!({"m": "ALICE-PARTITIONED"}),
        )
        .await;

        // Bad requests: 400 naming the field; a non-admin is refused.
        let http = reqwest::Client::new();
        for (body, field) in [
            (json!({"stream": "kv.users"}), "key"),
            (
                json!({"principal": "alice", "stream": "kv.users", "key": "a"}),
                "principal",
            ),
            (json!({"stream": "_weft.policy", "key": "a"}), "stream"),
            (json!({"principal": "alice", "color": "red"}), "color"),
        ] {
            let r = request_erase(&c, &admin, &body).await;
            assert_eq!(r.status(), 400, "{body}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["reason"], "bad_erase_request", "{v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.contains(field), "{body}: {message}");
        }
        let r = request_erase(&c, ALICE_TOKEN, &json!({"principal": "alice"})).await;
        assert_eq!(r.status(), 403);
        assert!(rejected(&c, 0, "bad_erase_request").await >= 4);

        // The erase, through the CLI at node 0.
        let token_file = c.dir.join("client.key.token");
        let node0 = c.nodes[0].http.clone();
        for args in [
            vec!["--principal", "alice"],
            vec!["--stream", "kv.users", "--key", "carol"],
        ] {
            let mut all = vec![
                "erase",
                "--node",
                &node0,
                "--token-file",
                token_file.to_str().unwrap(),
            ];
            all.extend(args);
            let (ok, out) = weft_in(&c.dir, &all);
            assert!(ok, "{out}");
        }
        let (ok, out) = weft_in(
            &c.dir,
            &[
                "erase",
                "--node",
                &node0,
                "--token-file",
                token_file.to_str().unwrap(),
                "--stream",
                "kv.users",
            ],
        );
        assert!(!ok, "the CLI needs --key with --stream: {out}");

        // Alice publishing right after the erase (within its cover window) is refused
        // with a reason; the sequence number it took is skipped, not waited for.
        let ce = json!({"specversion": "1.0", "id": "late", "source": "it", "type": "t",
            "datacontenttype": "application/json", "data": {"m": "ALICE-SECRET-LATE"}});
        let r = http
            .post(c.url(0, "/v1/streams/notes.x/events?ack=local"))
            .bearer_auth(ALICE_TOKEN)
            .header("content-type", "application/cloudevents+json")
            .body(serde_json::to_vec(&ce).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["reason"], "erased", "{v}");
        assert_eq!(rejected(&c, 0, "erased").await, 1);

        // Heal; publish after the erase on both sides: delivered everywhere (no stall on
        // the erased sequence numbers).
        for i in 0..3 {
            c.chaos(i, json!([])).await;
        }
        let after0 = publish(&c, 0, &admin, "notes.x", json!({"m": "after-0"})).await;
        let after2 = publish(&c, 2, &admin, "notes.x", json!({"m": "after-2"})).await;
        everywhere(&c, "notes.x", &after0).await;
        everywhere(&c, "notes.x", &after2).await;
        // Node 2 applied the erase too (it reached its log by anti-entropy).
        wait_for(Duration::from_secs(40), || async {
            let (s, _) = get(&c, 2, "/v1/tables/kv.users/carol").await;
            (s == 404).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node 2 never applied the erase:\n{}", c.log(2)));
        // Give anti-entropy a few rounds to (wrongly) bring anything back.
        tokio::time::sleep(Duration::from_secs(3)).await;

        let gone = [&alice_key, &alice_a, &alice_b, &carol, &partitioned];
        for i in 0..3 {
            let notes = c.ids(i, "notes.x").await.unwrap();
            let users = c.ids(i, "kv.users").await.unwrap();
            for id in gone {
                assert!(
                    !notes.contains(id) && !users.contains(id),
                    "node {i} still logs {id}"
                );
                let (s, v) = get(&c, i, &format!("/v1/events/{id}")).await;
                assert_eq!(s, 404, "node {i} still serves {id}: {v}");
                assert!(
                    rows_with(&c, i, id.as_bytes()).is_empty(),
                    "node {i}: rows name {id}"
                );
            }
            for id in [&keep, &after0, &after2] {
                assert!(notes.contains(id), "node {i} lost {id}");
            }
            assert!(users.contains(&bob), "node {i} lost bob");
            for key in ["alice", "carol"] {
                let (s, v) = get(&c, i, &format!("/v1/tables/kv.users/{key}")).await;
                assert_eq!(s, 404, "node {i}: {key} still readable: {v}");
                assert_ne!(v["deleted"], true, "no tombstone: {v}");
            }
            let (s, v) = get(&c, i, "/v1/tables/kv.users/bob").await;
            assert_eq!((s, &v["value"]), (200, &json!({"v": "bob-stays"})));
            let (_, v) = get(&c, i, "/v1/tables/kv.users").await;
            assert!(
                !v.to_string().contains("alice") && !v.to_string().contains("carol"),
                "{v}"
            );
            for marker in [
                "ALICE-SECRET",
                "ALICE-PARTITIONED",
                "CAROL-SECRET",
                "ALICE-SECRET-LATE",
            ] {
                let rows = rows_with(&c, i, marker.as_bytes());
                assert!(rows.is_empty(), "node {i}: {marker} in {rows:?}");
            }
        }

        // The partitioned write reached the others only as something refused or skipped:
        // a node's store refused a copy the rule covers, or node 2 (having erased it)
        // answered the others' requests for its sequence number with a Skip.
        let mut refused_or_skipped = 0;
        for i in 0..3 {
            let (_, v) = get(&c, i, "/v1/status").await;
            refused_or_skipped += v["stats"]["events_erased"].as_u64().unwrap()
                + v["stats"]["erased_skips_sent"].as_u64().unwrap();
        }
        assert!(refused_or_skipped >= 1, "neither refused nor skipped");

        // A restart of the partitioned node (kill -9): its erased sequence numbers stay
        // seen, nothing comes back, and what it publishes next arrives everywhere.
        c.kill9(2);
        c.start(2);
        c.wait_healthy(2).await;
        c.wait_meshed().await;
        let restarted = publish(&c, 2, &admin, "notes.x", json!({"m": "after-restart"})).await;
        everywhere(&c, "notes.x", &restarted).await;
        for id in gone {
            let (s, _) = get(&c, 2, &format!("/v1/events/{id}")).await;
            assert_eq!(s, 404, "node 2 serves {id} again after its restart");
            assert!(rows_with(&c, 2, id.as_bytes()).is_empty());
        }

        // The erase requests (keys and principals erased) are on a system stream: without
        // a policy reads are open, but not of system streams: no token 401, an admin
        // reads them, the carrier's id too.
        let http = reqwest::Client::new();
        let r = http
            .get(c.url(0, "/v1/streams/_weft.erase/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let (s, v) = get(&c, 0, "/v1/streams/_weft.erase/events").await;
        assert_eq!(s, 200, "{v}");
        let carrier = v[0]["weftid"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"))
            .to_string();
        let r = http
            .get(c.url(0, &format!("/v1/events/{carrier}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let (s, v) = get(&c, 0, &format!("/v1/events/{carrier}")).await;
        assert_eq!(s, 200, "{v}");

        // Audited where it was asked for, and applied (with a count) on every node.
        let (_, v) = get(&c, 0, "/v1/audit?limit=1000").await;
        let entries = v["entries"].as_array().unwrap();
        assert!(
            entries.iter().any(|e| e["reason"] == "erase_requested"),
            "{v}"
        );
        // A key's erase is filed under its stream (`weft audit --stream kv.users` finds
        // it), a principal's under the erase stream.
        for reason in ["erase_requested", "erase_applied"] {
            assert!(
                entries
                    .iter()
                    .any(|e| e["reason"] == reason && e["stream"] == "kv.users"),
                "{reason}: {v}"
            );
            assert!(
                entries
                    .iter()
                    .any(|e| e["reason"] == reason && e["stream"] == "_weft.erase"),
                "{reason}: {v}"
            );
        }
        assert!(
            entries.iter().any(|e| e["reason"] == "erased"),
            "the refused publish: {v}"
        );
        assert!(
            entries.iter().any(|e| e["reason"] == "erase_applied"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("3 stored events removed")),
            "{v}"
        );
        assert!(
            entries.iter().any(|e| e["reason"] == "bad_erase_request"),
            "{v}"
        );
        let (_, v) = get(&c, 2, "/v1/audit?limit=1000").await;
        assert!(
            v["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["reason"] == "erase_applied"),
            "{v}"
        );
    });
}

/// An erase is not a ban: a key written afresh after the rule's cover window (60 s) is new
/// data. On a node cut off while the erase was applied elsewhere, that write comes before
/// the erase; on the others after it. Every node must end with the new value and the same
/// table (a key erase used to delete the key's row whatever it held, losing the new write
/// on the node that took it).
#[test]
fn a_key_written_after_the_erase_window_survives_on_the_node_that_took_it_first() {
    rt().block_on(async {
        let mut c = Cluster::new("erase-late", 64, &three_regions(), &extra());
        c.start_all();
        c.wait_meshed().await;
        let admin = c.token.clone();
        let old = put(
            &c,
            0,
            &admin,
            "/v1/tables/kv.users/dave",
            json!({"v": "DAVE-OLD"}),
        )
        .await;
        everywhere(&c, "kv.users", &old).await;

        // Node 2 cut off; the erase applied at nodes 0 and 1 only.
        c.chaos(2, json!([{"peer": "*", "blackhole": true}])).await;
        for i in 0..2 {
            c.chaos(
                i,
                json!([{"peer": "aws:ap-northeast-1", "blackhole": true}]),
            )
            .await;
        }
        let r = request_erase(&c, &admin, &json!({"stream": "kv.users", "key": "dave"})).await;
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        for i in 0..2 {
            wait_for(Duration::from_secs(20), || async {
                let (s, _) = get(&c, i, "/v1/tables/kv.users/dave").await;
                (s == 404).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i} never applied the erase:\n{}", c.log(i)));
        }
        let (s, v) = get(&c, 2, "/v1/tables/kv.users/dave").await;
        assert_eq!((s, &v["value"]), (200, &json!({"v": "DAVE-OLD"})), "{v}");

        // Past the rule's cover window, node 2 takes a new write of the key.
        tokio::time::sleep(Duration::from_secs(62)).await;
        let new = put(
            &c,
            2,
            &admin,
            "/v1/tables/kv.users/dave",
            json!({"v": "DAVE-NEW"}),
        )
        .await;

        // Heal: node 2 gets the erase after the new write, the others the new write
        // after the erase.
        for i in 0..3 {
            c.chaos(i, json!([])).await;
        }
        everywhere(&c, "kv.users", &new).await;
        wait_for(Duration::from_secs(40), || async {
            let (_, v) = get(&c, 2, "/v1/audit?limit=1000").await;
            v["entries"]
                .as_array()?
                .iter()
                .any(|e| e["reason"] == "erase_applied")
                .then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("node 2 never applied the erase:\n{}", c.log(2)));
        for i in 0..3 {
            let (s, v) = get(&c, i, "/v1/tables/kv.users/dave").await;
            assert_eq!(
                (s, &v["value"]),
                (200, &json!({"v": "DAVE-NEW"})),
                "node {i}: {v}"
            );
            assert!(
                rows_with(&c, i, b"DAVE-OLD").is_empty(),
                "node {i} keeps the erased write"
            );
        }
        let mut digests = Vec::new();
        for i in 0..3 {
            let (s, v) = get(&c, i, "/v1/tables/kv.users?digest=true").await;
            assert_eq!(s, 200, "{v}");
            digests.push(v["digest"].as_str().unwrap().to_string());
        }
        assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    });
}

/// An erase larger than one pass (`limits.erase_pass_max = 4`): alice's 30 events and 6
/// table writes are removed pass by pass on both nodes (the driver goes on between
/// passes), the first pass audited `erase_applied` with "removed so far" and the end
/// `erase_completed` with the whole count; then nothing of hers is read, looked up,
/// stored or left in a table, the admin's data stays, and no erase is left pending.
#[test]
fn an_erase_larger_than_a_pass_finishes_pass_by_pass_on_every_node() {
    rt().block_on(async {
        let extra = format!("{}[limits]\nerase_pass_max = 4\n", extra());
        let mut c = Cluster::new("erase-passes", 33, &three_regions()[..2], &extra);
        c.start_all();
        c.wait_meshed().await;
        let admin = c.token.clone();
        let first = put(
            &c,
            0,
            &admin,
            "/v1/tables/kv.users/k0",
            json!({"v": "admin-k0"}),
        )
        .await;
        let batch = |who: &str, n: usize| -> Vec<Value> {
            (0..n)
                .map(|j| {
                    json!({"specversion": "1.0", "id": format!("{who}-{j}"), "source": "it",
                        "type": "t", "datacontenttype": "application/json",
                        "data": {"m": format!("{who}-SECRET-{j}")}})
                })
                .collect()
        };
        let (s, v) = c
            .post_events(0, "notes.p", "local", ALICE_TOKEN, &batch("ALICE", 30))
            .await;
        assert_eq!(s, 200, "{v}");
        let (s, v) = c
            .post_events(1, "notes.p", "local", &admin, &batch("admin", 3))
            .await;
        assert_eq!(s, 200, "{v}");
        let mut last = String::new();
        for k in 0..6 {
            last = put(
                &c,
                k % 2,
                ALICE_TOKEN,
                &format!("/v1/tables/kv.users/k{}", k % 3),
                json!({"v": format!("ALICE-KEY-{k}")}),
            )
            .await;
        }
        everywhere(&c, "kv.users", &first).await;
        everywhere(&c, "kv.users", &last).await;
        for i in 0..2 {
            wait_for(Duration::from_secs(30), || async {
                (c.ids(i, "notes.p").await?.len() == 33).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i} never held the 33 events:\n{}", c.log(i)));
        }

        let r = request_erase(&c, &admin, &json!({"principal": "alice"})).await;
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        for i in 0..2 {
            let done = wait_for(Duration::from_secs(30), || async {
                let (_, v) = get(&c, i, "/v1/audit?limit=1000").await;
                let entries = v["entries"].as_array()?.clone();
                entries
                    .iter()
                    .any(|e| e["reason"] == "erase_completed")
                    .then_some(entries)
            })
            .await
            .unwrap_or_else(|| panic!("node {i} never finished the erase:\n{}", c.log(i)));
            let message = |reason: &str| {
                done.iter()
                    .find(|e| e["reason"] == reason)
                    .and_then(|e| e["message"].as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            assert!(
                message("erase_applied").contains("removed so far"),
                "node {i}: {}",
                message("erase_applied")
            );
            assert!(
                message("erase_completed").contains("36 stored events it covers removed in all"),
                "node {i}: {}",
                message("erase_completed")
            );
            assert_eq!(metric(&c, i, "weft_erased_events_total ").await, 36);
            assert_eq!(metric(&c, i, "weft_erases_pending ").await, 0);
            // `/v1/status` is a snapshot taken at most every half second.
            wait_for(Duration::from_secs(5), || async {
                let (_, v) = get(&c, i, "/v1/status").await;
                (v["stats"]["store_erases_pending"] == 0 && v["stats"]["store_erased"] == 36)
                    .then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i}'s status still shows the erase pending"));
            // Only the admin's events are read; her table writes are gone, the admin's
            // first write of k0 is the key's value again.
            let ids = c.ids(i, "notes.p").await.unwrap();
            assert_eq!(ids.len(), 3, "node {i}: {ids:?}");
            let (s, v) = get(&c, i, "/v1/tables/kv.users/k0").await;
            assert_eq!(
                (s, &v["value"]),
                (200, &json!({"v": "admin-k0"})),
                "node {i}: {v}"
            );
            for k in ["k1", "k2"] {
                let (s, v) = get(&c, i, &format!("/v1/tables/kv.users/{k}")).await;
                assert_eq!(s, 404, "node {i} {k}: {v}");
            }
            for needle in [&b"ALICE-SECRET"[..], b"ALICE-KEY"] {
                assert!(
                    rows_with(&c, i, needle).is_empty(),
                    "node {i} keeps {}",
                    String::from_utf8_lossy(needle)
                );
            }
            assert!(!rows_with(&c, i, b"admin-SECRET").is_empty(), "node {i}");
        }
    });
}

/// A principal erase reaching a key of more writes than a pass takes (a counter: 2,100
/// increments of one by the admin through both nodes, so from two origins, and 30 of a
/// thousand by alice): on every node the key is rebuilt on its own a pass at a time after
/// the erase (logged), its value ends as the admin's increments alone (in a key read and in
/// the listing), her 30 writes are counted removed, and the status and gauges count no key
/// left to build.
#[test]
fn an_erase_reaching_a_key_of_many_writes_rebuilds_it_pass_by_pass_on_every_node() {
    rt().block_on(async {
        let extra = format!(
            "{}[[tables]]\npattern = \"cnt.>\"\nstrategy = \"counter\"\n",
            extra()
        );
        let mut c = Cluster::new("erase-hot-key", 35, &three_regions()[..2], &extra);
        c.start_all();
        c.wait_meshed().await;
        let admin = c.token.clone();
        let client = reqwest::Client::new();
        let add = |i: usize, token: String, delta: i64| {
            let req = client
                .put(c.url(i, "/v1/tables/cnt.hits/hot"))
                .bearer_auth(token)
                .json(&json!({"add": delta}));
            async move {
                let r = req.send().await.unwrap();
                let status = r.status();
                assert!(status.is_success(), "{status} {}", r.text().await.unwrap());
            }
        };
        // Concurrent requests (the node's group commit takes them together), 50 at a time.
        let mut writes: Vec<(usize, String, i64)> =
            (0..2_100).map(|j| (j % 2, admin.clone(), 1)).collect();
        writes.extend((0..30).map(|j| (j % 2, ALICE_TOKEN.to_string(), 1_000)));
        for chunk in writes.chunks(50) {
            futures_util::future::join_all(
                chunk
                    .iter()
                    .map(|(i, token, delta)| add(*i, token.clone(), *delta)),
            )
            .await;
        }
        let value = |i: usize| {
            let c = &c;
            async move { get(c, i, "/v1/tables/cnt.hits/hot").await.1["value"].clone() }
        };
        for i in 0..2 {
            wait_for(Duration::from_secs(60), || async {
                (value(i).await == json!(32_100)).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i} never counted 32,100:\n{}", c.log(i)));
        }
        let r = request_erase(&c, &admin, &json!({"principal": "alice"})).await;
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        for i in 0..2 {
            wait_for(Duration::from_secs(60), || async {
                let (_, v) = get(&c, i, "/v1/status").await;
                let stats = &v["stats"];
                (stats["store_erased"] == 30
                    && stats["store_erases_pending"] == 0
                    && stats["table_keys_building"] == 0
                    && stats["tables_building"] == 0)
                    .then_some(())
            })
            .await
            .unwrap_or_else(|| {
                panic!(
                    "node {i} never finished the erase and the key:\n{}",
                    c.log(i)
                )
            });
            assert!(
                c.log(i)
                    .contains("table key rebuilt from the log pass by pass"),
                "node {i} rebuilt the key in one step:\n{}",
                c.log(i)
            );
            assert_eq!(metric(&c, i, "weft_table_keys_building ").await, 0);
            assert_eq!(value(i).await, json!(2_100), "node {i}");
            let (s, v) = get(&c, i, "/v1/tables/cnt.hits").await;
            assert_eq!(s, 200, "node {i}: the listing: {v}");
            assert_eq!(
                v["keys"][0]["value"],
                json!(2_100),
                "node {i}: the listing: {v}"
            );
        }
    });
}
