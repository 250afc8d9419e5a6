//! Issue 6's residency proof with real processes: four `weft` nodes (two EU, one US, one
//! APAC) under a signed policy whose EU customer profiles may not leave the EU and whose
//! egress transforms derive a masked copy and per-country aggregates onto public streams.
//!
//! Asserted: the EU events reach the second EU node and never the US or APAC node, by their
//! API (stream reads, reads by id, SSE) or in their SQLite stores (every table and column,
//! and the raw database and WAL files, searched for the ids and the clear-text values, with
//! the same search finding them on the EU node as a control); the masked derivatives reach
//! US and APAC with dropped fields gone, the hash equal to the documented one, the mask
//! applied, and lineage naming the source id, exactly once per source (derived at the
//! ingress node only, including a pre-signed envelope submitted twice); aggregates arrive
//! with the right counts and sums; a payload that is not JSON is accepted and its failed
//! derivation counted and audited; an open window is published at a graceful shutdown.
//! Measured inter-region RTTs from the region catalog are injected (half each way). Every
//! wait is bounded; processes are killed at the end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use sha2::Digest as _;

const SALT: &str = "residency4-salt";
const EPOCH: u64 = 5;
const SOURCE: &str = "customers.eu.profiles";
const MASKED: &str = "customers.global.profiles";
const PER_COUNTRY: &str = "customers.global.per-country";
const HOURLY: &str = "customers.global.hourly";
/// A transform's target whose class only the US may hold: the EU ingress node may not
/// derive it (it would store it in clear).
const US_COPY: &str = "customers.us.copy";
/// A stream whose class the EU and the US may hold, and its public derivatives.
const INTL: &str = "customers.intl.orders";
const INTL_PUBLIC: &str = "customers.global.intl";
/// The node-local key `intl-public` hashes under: given to eu-a alone, never in the bundle.
const INTL_HASH_KEY: &str = "residency4 intl hash key, not in any bundle";

fn specs() -> Vec<Spec> {
    let mut specs = two_eu_one_us();
    specs.push(Spec {
        name: "ap",
        region: "aws:ap-northeast-1",
        jurisdiction: "APAC",
    });
    specs
}

fn bundle(keys: &[String], token_sha256: &str) -> String {
    format!(
        r#"format = 1
epoch = {EPOCH}
description = "test: EU profiles stay in the EU; masked and aggregated derivatives go anywhere"

[jurisdictions.EU]
regions = ["aws:eu-west-1", "aws:eu-central-1"]
nodes = ["{a}", "{b}"]

[jurisdictions.US]
regions = ["aws:us-east-1"]
nodes = ["{us}"]

[jurisdictions.APAC]
regions = ["aws:ap-northeast-1"]
nodes = ["{ap}"]

[tenants.acme]

[roles.writer]

[principals.tester]
tenant = "acme"
roles = ["writer"]
token_sha256 = "{token_sha256}"

[[access]]
name = "write-profiles"
effect = "allow"
actions = ["publish"]
streams = ["customers.eu.>", "customers.intl.>"]
roles = ["writer"]

[[access]]
name = "read-customers"
effect = "allow"
actions = ["read", "subscribe"]
streams = ["customers.>"]
roles = ["writer"]

[classes.eu-personal]
jurisdictions = ["EU"]
transit = "forbidden"

[classes.public]
anywhere = true

[classes.us-only]
jurisdictions = ["US"]
transit = "forbidden"

[classes.eu-us]
jurisdictions = ["EU", "US"]
transit = "forbidden"

[[streams]]
pattern = "customers.eu.>"
classification = "eu-personal"
replication = "all"

[[streams]]
pattern = "customers.intl.>"
classification = "eu-us"
replication = "all"

[[streams]]
pattern = "customers.global.>"
classification = "public"
replication = "all"

[transforms.profiles-masked]
source = "customers.eu.>"
target = "{MASKED}"
classification = "public"
drop = ["address", "name"]
hash = ["email"]
salt = "{SALT}"
mask = [{{ field = "phone", keep_last = 4 }}]

[transforms.profiles-per-country]
source = "customers.eu.>"
target = "{PER_COUNTRY}"
classification = "public"
aggregate = {{ window_s = 2, group_by = ["country"], sum = ["ltv"] }}

[transforms.profiles-hourly]
source = "customers.eu.>"
target = "{HOURLY}"
classification = "public"
aggregate = {{ window_s = 3600, sum = ["ltv"] }}

[transforms.intl-public]
source = "customers.intl.>"
target = "{INTL_PUBLIC}"
classification = "public"
drop = ["name"]
hash = ["email"]
hash_key = "intl"

[transforms.profiles-us-copy]
source = "customers.eu.>"
target = "{US_COPY}"
classification = "us-only"
drop = ["address"]
"#,
        a = keys[0],
        b = keys[1],
        us = keys[2],
        ap = keys[3],
    )
}

fn weft(dir: &Path, args: &[&str]) -> String {
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

/// The documented keyed hash (docs/policy.md §7): `hmac-sha256:` + hex of HMAC-SHA256
/// under the node-local key of the domain separator and the value's JSON.
fn expected_keyed_hash(value: &Value) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(INTL_HASH_KEY.as_bytes()).unwrap();
    mac.update(b"weft/transform-hash\0");
    mac.update(value.to_string().as_bytes());
    format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
}

/// The documented hash (docs/policy.md §7): `sha256:` + hex of SHA-256 over the domain
/// separator, the salt, a zero byte and the value's JSON.
fn expected_hash(value: &Value) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"weft/transform-hash\0");
    h.update(SALT.as_bytes());
    h.update([0]);
    h.update(value.to_string().as_bytes());
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn expected_mask(text: &str, keep_last: usize) -> String {
    let n = text.chars().count();
    let keep = keep_last.min(n);
    let mut out = "*".repeat(n - keep);
    out.extend(text.chars().skip(n - keep));
    out
}

/// One EU customer profile.
fn profile(i: usize) -> Value {
    json!({
        "name": format!("Ada Lovelace {i}"),
        "email": format!("ada.{i}@example.eu"),
        "phone": format!("+353 1 555 01{i:02}"),
        "address": format!("{i} Liffey Quay, Dublin"),
        "country": if i.is_multiple_of(2) { "IE" } else { "DE" },
        "ltv": 100 + i,
    })
}

/// Chaos rules giving node `i` half the measured RTT to each other node's region, from
/// the region catalog's table; pairs without a measurement get no added delay.
fn latency_rules(specs: &[Spec], i: usize) -> Value {
    let table = include_str!("../../sim/data/region-rtt.csv");
    let rtt = |a: &str, b: &str| {
        table.lines().find_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            ((f.first() == Some(&a) && f.get(1) == Some(&b))
                || (f.first() == Some(&b) && f.get(1) == Some(&a)))
            .then(|| f.get(2)?.parse::<f64>().ok())
            .flatten()
        })
    };
    let rules: Vec<Value> = specs
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .filter_map(|(_, s)| {
            let ms = rtt(specs[i].region, s.region)?;
            Some(json!({"peer": s.region, "delay_ms": ms / 2.0, "jitter_ms": 1.0}))
        })
        .collect();
    Value::Array(rules)
}

async fn get_json(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Every event of `stream` at node `i` (CloudEvents as the API renders them).
async fn events(c: &Cluster, i: usize, stream: &str) -> Vec<Value> {
    // Reads under a policy are authorized: with the tester's token.
    let v = c
        .get_auth(i, &format!("/v1/streams/{stream}/events?limit=1000"))
        .await;
    v.as_array().cloned().unwrap_or_default()
}

/// What an SSE subscription to `stream` at node `i` delivers within `window`.
async fn sse_text(c: &Cluster, i: usize, stream: &str, window: Duration) -> String {
    let mut resp = reqwest::Client::new()
        .get(c.url(i, &format!("/v1/streams/{stream}/subscribe?after=0")))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "subscribe at node {i}");
    let mut text = String::new();
    let deadline = Instant::now() + window;
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline.into(), resp.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

fn db_path(c: &Cluster, i: usize) -> PathBuf {
    c.dir
        .join("data")
        .join(c.nodes[i].spec.name)
        .join("weft.db")
}

/// Which `needles` occur anywhere in node `i`'s SQLite store: every column of every row
/// of every table, read through SQLite (read-only, beside the running node), and the raw
/// bytes of the database and WAL files.
fn store_hits(c: &Cluster, i: usize, needles: &[Vec<u8>]) -> BTreeSet<usize> {
    let path = db_path(c, i);
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(tables.iter().any(|t| t == "events"), "{tables:?}");
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let mut hits = BTreeSet::new();
    let mut rows = 0usize;
    for t in &tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let columns = stmt.column_count();
        let mut q = stmt.query([]).unwrap();
        while let Some(row) = q.next().unwrap() {
            rows += 1;
            for col in 0..columns {
                let bytes: Vec<u8> = match row.get_ref(col).unwrap() {
                    rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => {
                        b.to_vec()
                    }
                    _ => continue,
                };
                for (k, n) in needles.iter().enumerate() {
                    if contains(&bytes, n) {
                        hits.insert(k);
                    }
                }
            }
        }
    }
    assert!(rows > 0, "node {i}'s store read as empty");
    for file in [path.clone(), path.with_extension("db-wal")] {
        let raw = std::fs::read(&file).unwrap_or_default();
        for (k, n) in needles.iter().enumerate() {
            if contains(&raw, n) {
                hits.insert(k);
            }
        }
    }
    hits
}

/// How many of `ids` node `i`'s store holds as events (by primary key).
fn stored_ids(c: &Cluster, i: usize, ids: &[String]) -> usize {
    let conn = rusqlite::Connection::open_with_flags(
        db_path(c, i),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    ids.iter()
        .filter(|id| {
            conn.query_row(
                "SELECT count(*) FROM events WHERE id = ?1",
                [hex::decode(id).unwrap()],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
                > 0
        })
        .count()
}

async fn metrics(c: &Cluster, i: usize) -> String {
    reqwest::get(c.url(i, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
}

fn sign_presigned(stream: &str, content_type: &str, data: &Value) -> weft_fabric::Event {
    sign_stamped(9, stream, "eu-personal", &["EU"], content_type, data)
}

/// A pre-signed event of the producer with secret `[secret; 32]`, stamped `classification`
/// and `residency`.
fn sign_stamped(
    secret: u8,
    stream: &str,
    classification: &str,
    residency: &[&str],
    content_type: &str,
    data: &Value,
) -> weft_fabric::Event {
    use weft_fabric::{EventDraft, Hlc, Payload, Residency, SecurityContext, Signer, StreamName};
    Signer::from_secret(&[secret; 32])
        .sign(EventDraft {
            stream: StreamName::new(stream).unwrap(),
            key: None,
            seq: 1,
            hlc: Hlc::new(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64,
                0,
            )
            .unwrap(),
            security: SecurityContext {
                tenant: "acme".into(),
                principal: "device-7".into(),
                classification: classification.into(),
                residency: Residency::only(residency.iter().copied()).unwrap(),
                scopes: Default::default(),
                policy_epoch: EPOCH,
            },
            content_type: content_type.into(),
            payload: Payload::Clear(data.to_string().into_bytes()),
            trace: None,
        })
        .unwrap()
}

#[test]
fn eu_profiles_stay_in_the_eu_and_only_their_masked_derivatives_leave() {
    rt().block_on(async {
        let ops = std::env::temp_dir().join(format!("weft-it-res4-ops-{}", std::process::id()));
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
        let specs = specs();
        let mut c = Cluster::new("residency4", 55, &specs, &extra);
        let token_sha256 = hex::encode(sha2::Sha256::digest(c.token.as_bytes()));
        std::fs::write(ops.join("b.toml"), bundle(&c.keys, &token_sha256)).unwrap();
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
        let _ = std::fs::remove_dir_all(&ops);
        // The hash key of `intl-public`, for eu-a only (a trailing newline is not part of
        // it).
        std::fs::write(c.dir.join("intl.hashkey"), format!("{INTL_HASH_KEY}\n")).unwrap();
        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(&c.nodes[0].config)
            .unwrap();
        std::io::Write::write_all(
            &mut config,
            b"\n[egress.hash_keys]\nintl = \"intl.hashkey\"\n",
        )
        .unwrap();
        drop(config);
        c.start_all();
        c.wait_meshed().await;
        for i in 0..specs.len() {
            c.chaos(i, latency_rules(&specs, i)).await;
        }
        let (eu_a, eu_b, us, ap) = (0, 1, 2, 3);
        let outside = [us, ap];
        let http = reqwest::Client::new();

        // The transforms in force, salt left out.
        let p = get_json(c.url(us, "/v1/policy")).await;
        assert_eq!(p["epoch"], EPOCH, "{p}");
        let names: Vec<&str> = p["transforms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "intl-public",
                "profiles-hourly",
                "profiles-masked",
                "profiles-per-country",
                "profiles-us-copy"
            ],
            "{p}"
        );
        assert_eq!(p["transforms"][2]["hash"], json!(["email"]), "{p}");
        assert!(!p.to_string().contains(SALT), "the salt is shown: {p}");

        // Four EU profiles through CloudEvents, durable in both EU regions.
        let profiles: Vec<Value> = (0..4).map(profile).collect();
        let published = Instant::now();
        let (status, body) = c.publish(eu_a, SOURCE, "regions:2", &profiles).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["complete"], true, "{body}");
        let regions: BTreeSet<&str> = body["regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert_eq!(
            regions,
            BTreeSet::from(["aws:eu-central-1", "aws:eu-west-1"]),
            "{body}"
        );
        let mut sources: Vec<String> = body["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(sources.len(), 4);
        assert_eq!(
            body["derived"].as_array().map(Vec::len),
            Some(4),
            "one masked derivative per profile, in the same publish: {body}"
        );
        // Source id -> its profile, for checking each derivative.
        let mut by_source: BTreeMap<String, Value> = sources
            .iter()
            .cloned()
            .zip(profiles.iter().cloned())
            .collect();

        // A pre-signed envelope (a device's event): derived once, however often submitted.
        let grace = json!({"name": "Grace Hopper", "email": "grace@example.eu",
            "phone": "+49 30 5550199", "address": "Unter den Linden 1, Berlin",
            "country": "DE", "ltv": 7});
        let device_event = sign_presigned(SOURCE, "application/json", &grace);
        let device_id = device_event.id().to_string();
        for round in 0..2 {
            // (A resubmitted duplicate is not pushed again, so it waits for no region.)
            let ack = if round == 0 { "regions:2" } else { "local" };
            let r = http
                .post(c.url(eu_a, &format!("/v1/streams/{SOURCE}/events?ack={ack}")))
                .bearer_auth(&c.token)
                .header("content-type", "application/vnd.weft.event+cbor")
                .body(device_event.encode())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "round {round}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["ids"][0], device_id.as_str(), "{v}");
            let derived = v["derived"].as_array().map_or(0, Vec::len);
            assert_eq!(derived, usize::from(round == 0), "round {round}: {v}");
        }
        sources.push(device_id.clone());
        by_source.insert(device_id.clone(), grace.clone());

        // Only nodes make derived events: a pre-signed envelope claiming to be one is refused.
        let forged = sign_presigned(
            MASKED,
            "application/vnd.weft.derived+json",
            &json!({"data": {}, "lineage": {"transform": "x", "sources": []}}),
        );
        let r = http
            .post(c.url(eu_a, &format!("/v1/streams/{MASKED}/events")))
            .bearer_auth(&c.token)
            .header("content-type", "application/vnd.weft.event+cbor")
            .body(forged.encode())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["reason"], "reserved_content_type", "{v}");

        // Data that is not JSON: the source is accepted, both derivations fail, counted
        // and audited.
        let note = "note about customer 0: prefers e-mail";
        let r = http
            .post(c.url(eu_a, &format!("/v1/streams/{SOURCE}/events?ack=regions:2")))
            .bearer_auth(&c.token)
            .header("content-type", "text/plain")
            .header("ce-specversion", "1.0")
            .header("ce-id", "note-1")
            .header("ce-source", "it")
            .header("ce-type", "t")
            .body(note)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(v.get("derived").is_none(), "{v}");
        let note_id = v["ids"][0].as_str().unwrap().to_string();
        sources.push(note_id.clone());

        // The masked derivatives reach the US and APAC nodes: one per JSON source.
        let json_sources = by_source.len();
        for &i in &outside {
            wait_for(Duration::from_secs(30), || async {
                (events(&c, i, MASKED).await.len() >= json_sources).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i} lacks the masked derivatives:\n{}", c.log(i)));
        }
        // Aggregates: every JSON source counted once, by country.
        let want_per_country: BTreeMap<String, (u64, f64)> =
            by_source.values().fold(BTreeMap::new(), |mut m, p| {
                let e = m
                    .entry(p["country"].as_str().unwrap().to_string())
                    .or_insert((0, 0.0));
                e.0 += 1;
                e.1 += p["ltv"].as_f64().unwrap();
                m
            });
        for &i in &outside {
            let got = wait_for(Duration::from_secs(30), || async {
                let mut m: BTreeMap<String, (u64, f64)> = BTreeMap::new();
                for e in events(&c, i, PER_COUNTRY).await {
                    let country = e["data"]["country"].as_str()?.to_string();
                    let entry = m.entry(country).or_insert((0, 0.0));
                    entry.0 += e["data"]["count"].as_u64()?;
                    entry.1 += e["data"]["sum.ltv"].as_f64()?;
                }
                (m == want_per_country).then_some(m)
            })
            .await;
            assert!(
                got.is_some(),
                "node {i}: per-country aggregates {:?}, want {want_per_country:?}",
                events(&c, i, PER_COUNTRY).await
            );
            for e in events(&c, i, PER_COUNTRY).await {
                let lineage: Value =
                    serde_json::from_str(e["weftlineage"].as_str().unwrap()).unwrap();
                assert_eq!(lineage["transform"], "profiles-per-country", "{e}");
                assert_eq!(lineage["window_s"], 2, "{e}");
                assert_eq!(lineage["source_count"], e["data"]["count"], "{e}");
                for s in lineage["sources"].as_array().unwrap() {
                    assert!(by_source.contains_key(s.as_str().unwrap()), "{e}");
                }
                assert!(e["data"].get("email").is_none(), "{e}");
            }
        }

        // Each masked derivative: from the ingress node, public, fields transformed,
        // lineage to its source; exactly one per JSON source.
        for &i in &outside {
            let got = events(&c, i, MASKED).await;
            assert_eq!(got.len(), json_sources, "node {i}: {got:?}");
            let mut seen = BTreeSet::new();
            for e in &got {
                assert_eq!(e["weftorigin"], c.keys[eu_a].as_str(), "{e}");
                assert_eq!(e["weftclassification"], "public", "{e}");
                assert_eq!(e["weftprincipal"], "weft-egress", "{e}");
                assert_eq!(e["wefttenant"], "acme", "{e}");
                assert_eq!(e["type"], "weft.derived", "{e}");
                let lineage: Value =
                    serde_json::from_str(e["weftlineage"].as_str().unwrap()).unwrap();
                assert_eq!(lineage["transform"], "profiles-masked", "{e}");
                assert_eq!(lineage["policy_epoch"], EPOCH, "{e}");
                let source = lineage["sources"][0].as_str().unwrap().to_string();
                assert_eq!(lineage["sources"].as_array().unwrap().len(), 1, "{e}");
                assert!(seen.insert(source.clone()), "two derivatives of {source}");
                let original = by_source
                    .get(&source)
                    .unwrap_or_else(|| panic!("lineage names no source: {e}"));
                let data = &e["data"];
                assert_eq!(data["email"], expected_hash(&original["email"]), "{e}");
                assert_eq!(
                    data["phone"],
                    expected_mask(original["phone"].as_str().unwrap(), 4),
                    "{e}"
                );
                assert!(data.get("address").is_none(), "{e}");
                assert!(data.get("name").is_none(), "{e}");
                assert_eq!(data["country"], original["country"], "{e}");
                assert_eq!(data["ltv"], original["ltv"], "{e}");
                let text = e.to_string();
                assert!(
                    !text.contains(original["email"].as_str().unwrap()),
                    "clear email in {e}"
                );
            }
        }

        // The second EU node holds every EU event (replicated, not derived again).
        let held: BTreeSet<String> = c.ids(eu_b, SOURCE).await.unwrap().into_iter().collect();
        assert_eq!(held, sources.iter().cloned().collect(), "eu-b's EU events");
        assert_eq!(events(&c, eu_b, MASKED).await.len(), json_sources);

        // Exactly once fabric-wide: only the ingress node derived; the failures counted.
        let m = metrics(&c, eu_a).await;
        let derived_masked = metric(
            &m,
            "weft_egress_derived_total{transform=\"profiles-masked\"}",
        );
        assert_eq!(derived_masked, Some(json_sources as f64), "{m}");
        assert_eq!(
            metric(&m, "weft_egress_failures_total{reason=\"not_json\"}"),
            Some(4.0),
            "one per transform reading the stream: {m}"
        );
        // The US-only copy is never made at the EU ingress node: it would be stored there
        // in clear. Refused per JSON source, counted.
        assert_eq!(
            metric(
                &m,
                "weft_egress_failures_total{reason=\"residency_ingress\"}"
            ),
            Some(json_sources as f64),
            "{m}"
        );
        for i in 0..4 {
            assert!(
                events(&c, i, US_COPY).await.is_empty(),
                "node {i} holds a US copy"
            );
        }
        assert!(
            c.log(eu_a).contains("egress transform failed"),
            "not audited"
        );
        // Every transform's series is there from the start, at 0 where none derived.
        for i in [eu_b, us, ap] {
            let m = metrics(&c, i).await;
            let derived: Vec<&str> = m
                .lines()
                .filter(|l| l.starts_with("weft_egress_derived_total{"))
                .collect();
            assert!(
                derived.iter().any(|l| l.contains("\"profiles-masked\"")),
                "node {i} has no series for the policy's transform: {m}"
            );
            assert!(
                derived.iter().all(|l| l.ends_with(" 0")),
                "node {i} derived: {m}"
            );
        }

        // Give anti-entropy (every 2 s) several rounds to (wrongly) repair, then look for
        // the EU events outside the EU every way there is.
        let settle = Duration::from_secs(6).saturating_sub(published.elapsed());
        tokio::time::sleep(settle).await;
        for &i in &outside {
            assert_eq!(
                c.ids(i, SOURCE).await,
                Some(vec![]),
                "node {i} lists EU events"
            );
            for id in &sources {
                let r = http
                    .get(c.url(i, &format!("/v1/events/{id}")))
                    .bearer_auth(&c.token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 404, "node {i} serves EU event {id}");
            }
        }
        let control = sse_text(&c, eu_b, SOURCE, Duration::from_millis(1500)).await;
        for id in &sources {
            assert!(
                control.contains(id.as_str()),
                "SSE at eu-b lacks {id}: {control}"
            );
        }
        for &i in &outside {
            let text = sse_text(&c, i, SOURCE, Duration::from_millis(1500)).await;
            assert!(
                !text.contains("data:"),
                "node {i} streams EU events: {text}"
            );
        }

        // The stores. Needles: each EU event id as the store keys events (its 32 bytes;
        // the hex text of a source id is expected outside the EU, as the derivatives'
        // lineage) and each clear-text value.
        for (i, want) in [(eu_b, sources.len()), (us, 0), (ap, 0)] {
            assert_eq!(
                stored_ids(&c, i, &sources),
                want,
                "node {i}: EU events stored"
            );
        }
        let mut needles: Vec<Vec<u8>> = Vec::new();
        let mut labels: Vec<String> = Vec::new();
        for id in &sources {
            needles.push(hex::decode(id).unwrap());
            labels.push(format!("id {id}"));
        }
        for p in by_source.values() {
            for f in ["email", "name", "address", "phone"] {
                needles.push(p[f].as_str().unwrap().as_bytes().to_vec());
                labels.push(format!("{f} {}", p[f]));
            }
        }
        needles.push(note.as_bytes().to_vec());
        labels.push("the note".into());
        let everything: BTreeSet<usize> = (0..needles.len()).collect();
        assert_eq!(
            store_hits(&c, eu_b, &needles),
            everything,
            "control: the search must find every EU id and value in eu-b's store"
        );
        for &i in &outside {
            let hits = store_hits(&c, i, &needles);
            let found: Vec<&String> = hits.iter().map(|&k| &labels[k]).collect();
            assert!(
                found.is_empty(),
                "node {i}'s store holds EU data: {found:?}"
            );
            // ... while it does hold the derivatives (the search sees what is there).
            let derived: Vec<Vec<u8>> = events(&c, i, MASKED)
                .await
                .iter()
                .map(|e| hex::decode(e["weftid"].as_str().unwrap()).unwrap())
                .chain(
                    by_source
                        .values()
                        .map(|p| expected_hash(&p["email"]).into_bytes()),
                )
                .collect();
            assert_eq!(
                store_hits(&c, i, &derived).len(),
                derived.len(),
                "node {i}'s store lacks derivatives"
            );
        }

        // An open window is published at a graceful shutdown: one more profile goes into
        // the hourly window, and the node is stopped at once. (The window is looked at
        // after that publish: one opened earlier closes at the hour's end, which a run
        // near it crossed.)
        let (status, body) = c
            .publish(
                eu_a,
                SOURCE,
                "local",
                &[json!({"country": "FR", "ltv": 1000})],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let m = metrics(&c, eu_a).await;
        assert!(
            metric(&m, "weft_egress_windows").unwrap_or(0.0) >= 1.0,
            "{m}"
        );
        let status = c
            .stop_gracefully(eu_a, Duration::from_secs(15))
            .await
            .expect("eu-a did not stop on SIGTERM");
        assert!(status.success(), "eu-a exit status {status}");
        assert!(
            c.log(eu_a)
                .contains("aggregation windows flushed at shutdown"),
            "{}",
            c.log(eu_a)
        );
        c.start(eu_a);
        c.wait_healthy(eu_a).await;
        // Every JSON source in some hourly summary (an hour boundary may have split them).
        let (count, ltv) = events(&c, eu_a, HOURLY)
            .await
            .iter()
            .fold((0, 0.0), |(n, s), e| {
                (
                    n + e["data"]["count"].as_u64().unwrap(),
                    s + e["data"]["sum.ltv"].as_f64().unwrap(),
                )
            });
        let want_ltv: f64 = by_source.values().map(|p| p["ltv"].as_f64().unwrap()).sum();
        assert_eq!(count, json_sources as u64 + 1, "{}", c.log(eu_a));
        assert_eq!(ltv, want_ltv + 1000.0);

        // A source the store refuses (a recent erase covers its key) leaves no
        // derivative: before, the masked copy of data the fabric refused was stored and
        // replicated.
        let masked_before = events(&c, eu_a, MASKED).await.len();
        let r = http
            .post(c.url(eu_a, "/v1/erase"))
            .bearer_auth(&c.token)
            .json(&json!({"stream": SOURCE, "key": "erased-profile"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let mut ce = json!({"specversion": "1.0", "id": "erased-profile-1", "source": "it",
            "type": "profile", "subject": "erased-profile", "datacontenttype": "application/json"});
        ce["data"] = profile(99);
        let r = http
            .post(c.url(eu_a, &format!("/v1/streams/{SOURCE}/events")))
            .bearer_auth(&c.token)
            .header("content-type", "application/cloudevents+json")
            .body(serde_json::to_vec(&ce).unwrap())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (status, &v["error"]["reason"]),
            (409, &json!("erased")),
            "{v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            events(&c, eu_a, MASKED).await.len(),
            masked_before,
            "a derivative of the refused source was stored"
        );

        // The erase request names the key, which is EU personal data like the stream's
        // events: it travels where they may (the other EU node applies it), never to the
        // US or APAC nodes, which never held the key's events.
        wait_for(Duration::from_secs(20), || async {
            (!store_hits(&c, eu_b, &[b"erased-profile".to_vec()]).is_empty()).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("the erase never reached eu-b:\n{}", c.log(eu_b)));
        // A later event of the same origin (a masked derivative, public) reaches them: their
        // ordered delivery went past the erase request (a Skip).
        let (status, body) = c.publish(eu_a, SOURCE, "local", &[profile(100)]).await;
        assert_eq!(status, 200, "{body}");
        for i in outside {
            wait_for(Duration::from_secs(20), || async {
                (events(&c, i, MASKED).await.len() > masked_before).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i} never got the later derivative:\n{}", c.log(i)));
            assert!(
                store_hits(&c, i, &[b"erased-profile".to_vec()]).is_empty(),
                "node {i} holds the erased key (the erase request reached it in clear)"
            );
        }
        // Nor may a node outside take such a request in: it would hold the key.
        let r = http
            .post(c.url(us, "/v1/erase"))
            .bearer_auth(&c.token)
            .json(&json!({"stream": SOURCE, "key": "another-profile"}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (status, &v["error"]["reason"]),
            (403, &json!("residency_ingress")),
            "{v}"
        );

        // A transform derives what the policy classified, not what a producer held back.
        // An order on a stream of the EU-and-US class whose device kept it to the EU: its
        // public derivative keeps the EU set (US and APAC nodes never get it); an order
        // stamped with the stream's class is derived as the policy says (public).
        let kept = sign_stamped(
            11,
            INTL,
            "eu-us",
            &["EU"],
            "application/json",
            &json!({"name": "Ada Lovelace", "email": "ada@example.eu", "ltv": 3}),
        );
        let r = http
            .post(c.url(eu_a, &format!("/v1/streams/{INTL}/events?ack=local")))
            .bearer_auth(&c.token)
            .header("content-type", "application/vnd.weft.event+cbor")
            .body(kept.encode())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let kept_derived = v["derived"][0].as_str().unwrap().to_string();
        let (status, body) = c
            .publish(
                eu_a,
                INTL,
                "local",
                &[json!({"name": "Alan Turing", "email": "alan@example.eu", "ltv": 4})],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let free_derived = body["derived"][0].as_str().unwrap().to_string();
        for i in [eu_b, us, ap] {
            wait_for(Duration::from_secs(20), || async {
                (stored_ids(&c, i, std::slice::from_ref(&free_derived)) == 1).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("node {i} lacks the public derivative:\n{}", c.log(i)));
        }
        wait_for(Duration::from_secs(20), || async {
            (stored_ids(&c, eu_b, std::slice::from_ref(&kept_derived)) == 1).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("eu-b lacks the EU-kept derivative:\n{}", c.log(eu_b)));
        // Anti-entropy rounds (every 2 s) to (wrongly) repair it to the others.
        tokio::time::sleep(Duration::from_secs(5)).await;
        for i in [us, ap] {
            assert_eq!(
                stored_ids(&c, i, std::slice::from_ref(&kept_derived)),
                0,
                "node {i} holds the derivative of an EU-kept source"
            );
            let r = http
                .get(c.url(i, &format!("/v1/events/{kept_derived}")))
                .bearer_auth(&c.token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "node {i} serves it");
        }
        let derived_here: Vec<String> = events(&c, eu_a, INTL_PUBLIC)
            .await
            .iter()
            .map(|e| e["weftid"].as_str().unwrap().to_string())
            .collect();
        assert!(
            derived_here.contains(&kept_derived) && derived_here.contains(&free_derived),
            "{derived_here:?}"
        );

        // `intl-public` hashes under a node-local key (`hash_key`), which the bundle every
        // node holds only names: the US node reads the hash, and holds neither the key nor
        // anything to test guesses against it with.
        let at_us = events(&c, us, INTL_PUBLIC).await;
        let free = at_us
            .iter()
            .find(|e| e["weftid"] == free_derived.as_str())
            .unwrap_or_else(|| panic!("{at_us:?}"));
        assert_eq!(
            free["data"]["email"],
            expected_keyed_hash(&json!("alan@example.eu")),
            "{free}"
        );
        assert!(free["data"].get("name").is_none(), "{free}");
        let key = INTL_HASH_KEY.as_bytes().to_vec();
        assert!(
            !std::fs::read(&signed)
                .unwrap()
                .windows(key.len())
                .any(|w| w == key.as_slice()),
            "the signed bundle carries the hash key"
        );
        assert!(store_hits(&c, us, std::slice::from_ref(&key)).is_empty());
        let view = |p: &Value| {
            p["transforms"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == "intl-public")
                .cloned()
                .unwrap()
        };
        let at_a = view(&get_json(c.url(eu_a, "/v1/policy")).await);
        assert_eq!(
            (&at_a["hash_key"], &at_a["hash_key_held"]),
            (&json!("intl"), &json!(true))
        );
        let at_b = view(&get_json(c.url(eu_b, "/v1/policy")).await);
        assert_eq!(at_b["hash_key_held"], false, "{at_b}");
        assert!(!at_a.to_string().contains(INTL_HASH_KEY), "{at_a}");
        // A node not given the key derives nothing (the source is accepted), counted and
        // audited: it does not fall back to a weaker hash.
        let (status, body) = c
            .publish(
                eu_b,
                INTL,
                "local",
                &[json!({"name": "Grace", "email": "grace@example.eu", "ltv": 5})],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.get("derived").is_none(), "{body}");
        let m = metrics(&c, eu_b).await;
        assert_eq!(
            metric(
                &m,
                "weft_egress_failures_total{reason=\"hash_key_missing\"}"
            ),
            Some(1.0),
            "{m}"
        );
        assert!(
            c.log(eu_b)
                .contains("hash key `intl` is not configured on this node"),
            "not audited: {}",
            c.log(eu_b)
        );
    });
}
