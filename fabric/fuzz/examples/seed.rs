//! Writes the seed corpus for the `decode` fuzz target: a few valid envelopes signed with a
//! fixed key, covering every optional field, to `corpus/decode/` (or the directory given as
//! the first argument). Run from `fabric/fuzz`: `cargo run --example seed`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use weft_fabric::envelope::{NONCE_LEN, TAG_LEN};
use weft_fabric::*;

fn draft(stream: &str, seq: u64, payload: &[u8]) -> EventDraft {
    EventDraft {
        stream: StreamName::new(stream).unwrap(),
        key: None,
        seq,
        hlc: Hlc::new(1_764_331_200_000, 0).unwrap(),
        security: SecurityContext {
            tenant: "acme".into(),
            principal: "orders-service".into(),
            classification: "internal".into(),
            residency: Residency::Unrestricted,
            scopes: BTreeSet::new(),
            policy_epoch: 1,
        },
        content_type: "application/json".into(),
        payload: Payload::Clear(payload.to_vec()),
        trace: None,
    }
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("corpus/decode"));
    std::fs::create_dir_all(&dir).unwrap();

    let signer = Signer::from_secret(&[1; 32]);
    let mut drafts = Vec::new();

    // Minimal: required fields only, empty clear payload.
    drafts.push(draft("a", 1, b""));

    // Typical clear payload.
    drafts.push(draft(
        "orders.eu.created",
        2,
        br#"{"order":"A-1001","total":129.5}"#,
    ));

    // Every optional field present.
    let mut full = draft(
        "orders.eu.created",
        42,
        br#"{"order":"A-1001","total":129.5}"#,
    );
    full.key = Some(b"order/A-1001".to_vec());
    full.security.classification = "personal".into();
    full.security.residency = Residency::only(["CH", "EU", "US-CA"]).unwrap();
    full.security.scopes = ["orders:read", "orders:write"]
        .into_iter()
        .map(String::from)
        .collect();
    full.trace = Some(TraceContext {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: Some("weft=eu1".into()),
    });
    drafts.push(full.clone());

    // Trace without tracestate, large integers (multi-byte CBOR heads), a 300-byte payload
    // (two-byte length head).
    let mut big = draft("metrics.cpu", u64::MAX, &[0xab; 300]);
    big.hlc = Hlc::from_u64(u64::MAX);
    big.security.policy_epoch = 1 << 40;
    big.trace = Some(TraceContext {
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00".into(),
        tracestate: None,
    });
    drafts.push(big);

    // Sealed payload. The decoder does not open it, so a made-up ciphertext of tag length
    // plus a few bytes is enough for a structurally valid, correctly signed envelope.
    let mut sealed = full;
    sealed.payload = Payload::Sealed(SealedPayload {
        key_id: KeyId::new("tenant-a/2026-11:1").unwrap(),
        nonce: [7; NONCE_LEN],
        ciphertext: vec![0x5a; TAG_LEN + 5],
    });
    drafts.push(sealed);

    for (i, d) in drafts.into_iter().enumerate() {
        let event = signer.sign(d).unwrap();
        let bytes = event.encode();
        // Sanity: the seed is accepted and verifies.
        let decoded = decode(&bytes).unwrap();
        decoded.verify().unwrap();
        let path = dir.join(format!("seed-{i}"));
        std::fs::write(&path, &bytes).unwrap();
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
}
