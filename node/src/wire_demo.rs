//! `weft wire-demo`: the envelope end to end, printed step by step. The best runnable thing
//! until the multi-region demo (issue 9) exists.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use getrandom::SysRng;
use rand_core::UnwrapErr;
use weft_fabric::*;

use crate::inspect::event_json;

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let mut rng = UnwrapErr(SysRng);
    let now_ms = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let producer = Signer::generate(&mut rng);
    let mut seal_key = [0u8; 32];
    rand_core::Rng::fill_bytes(&mut rng, &mut seal_key);
    let ring = KeyRing::new(KeyId::new("acme/demo-1")?, seal_key);
    let mut clock = HybridClock::new(500);

    say!("producer key (origin): {}", producer.origin());
    say!("sealing key ring: active key {}\n", ring.active());

    let security = |classification: &str, residency: Residency| SecurityContext {
        tenant: "acme".into(),
        principal: "checkout-service".into(),
        classification: classification.into(),
        residency,
        scopes: BTreeSet::from(["orders:write".to_string()]),
        policy_epoch: 1,
    };
    let mut seq = 0;
    let mut next = |stream: &str,
                    key: Option<&str>,
                    sec: SecurityContext,
                    payload: &str|
     -> anyhow::Result<EventDraft> {
        seq += 1;
        Ok(EventDraft {
            stream: StreamName::new(stream)?,
            key: key.map(|k| k.as_bytes().to_vec()),
            seq,
            hlc: clock.tick(now_ms)?,
            security: sec,
            content_type: "application/json".into(),
            payload: Payload::Clear(payload.as_bytes().to_vec()),
            trace: None,
        })
    };

    let clear = producer.sign(next(
        "orders.created",
        None,
        security("internal", Residency::Unrestricted),
        r#"{"order":"A-1001","total":129.5}"#,
    )?)?;
    let keyed = producer.sign(next(
        "inventory.stock",
        Some("sku/X-1"),
        security("internal", Residency::Unrestricted),
        r#"{"qty":7}"#,
    )?)?;
    let sealed = producer.seal_and_sign(
        next(
            "customers.eu.updated",
            Some("customer/42"),
            security("personal", Residency::only(["EU"])?),
            r#"{"name":"Ada","city":"Dublin"}"#,
        )?,
        &ring,
        &mut rng,
    )?;
    let mut traced_draft = next(
        "orders.shipped",
        None,
        security("internal", Residency::Unrestricted),
        r#"{"order":"A-1001"}"#,
    )?;
    traced_draft.trace = Some(TraceContext {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: None,
    });
    let traced = producer.sign(traced_draft)?;

    for (title, event) in [
        ("clear", &clear),
        ("keyed", &keyed),
        ("sealed, EU only", &sealed),
        ("with trace context", &traced),
    ] {
        let bytes = event.encode();
        let back = decode(&bytes)
            .context("decoding our own event")?
            .verify()
            .context("verifying our own event")?;
        anyhow::ensure!(back.id() == event.id(), "id changed in a round trip");
        say!("== {title}: {} bytes, id {}", bytes.len(), event.id());
        say!("{}", hex::encode(&bytes));
        let fields = serde_json::to_string_pretty(&event_json(
            back.id(),
            back.origin(),
            back.draft(),
            bytes.len(),
        ))?;
        say!("{fields}");
        if matches!(back.payload(), Payload::Sealed(_)) {
            let opened = back.open(&ring)?;
            say!(
                "opened with the key ring: {}",
                String::from_utf8_lossy(&opened)
            );
        }
        say!();
    }

    say!("== what gets rejected");
    let mut tampered = clear.encode();
    let at = tampered
        .windows(6)
        .position(|w| w == b"A-1001")
        .context("payload not found")?;
    tampered[at + 5] = b'2';
    let verdict = decode(&tampered)
        .map_err(|e| e.to_string())
        .and_then(|u| u.verify().map(|_| ()).map_err(|e| e.to_string()));
    say!(
        "payload byte changed after signing: {}",
        verdict.err().unwrap_or_else(|| "ACCEPTED (bug)".into())
    );
    let mut trailing = clear.encode();
    trailing.push(0);
    say!(
        "one trailing byte: {}",
        decode(&trailing)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "ACCEPTED (bug)".into())
    );
    let mut moved = keyed.draft().clone();
    moved.payload = sealed.payload().clone();
    let moved = producer.sign(moved)?;
    say!(
        "sealed payload moved into another envelope: {}",
        moved
            .open(&ring)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "OPENED (bug)".into())
    );
    let ahead = Hlc::new(now_ms + 60_000, 0)?;
    say!(
        "timestamp 60 s in the future: {}",
        clock
            .receive(ahead, now_ms)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "ACCEPTED (bug)".into())
    );
    say!(
        "stream name 'orders..created': {}",
        StreamName::new("orders..created")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
