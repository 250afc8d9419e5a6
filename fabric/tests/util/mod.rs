//! Shared fixtures for the envelope tests: deterministic keys, RNGs and drafts.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use weft_fabric::*;

/// A seeded RNG: every test run sees the same keys and nonces.
pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// A signer from a fixed secret.
pub fn signer(seed: u8) -> Signer {
    Signer::from_secret(&[seed; 32])
}

/// A key ring holding one key.
pub fn ring(id: &str, byte: u8) -> KeyRing {
    KeyRing::new(KeyId::new(id).unwrap(), [byte; 32])
}

/// A plain clear-payload draft.
pub fn draft(stream: &str, seq: u64, payload: &[u8]) -> EventDraft {
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

/// A draft with every optional field present.
pub fn full_draft() -> EventDraft {
    let mut d = draft(
        "orders.eu.created",
        42,
        br#"{"order":"A-1001","total":129.5}"#,
    );
    d.key = Some(b"order/A-1001".to_vec());
    d.security.classification = "personal".into();
    d.security.residency = Residency::only(["CH", "EU"]).unwrap();
    d.security.scopes = ["orders:read", "orders:write"]
        .into_iter()
        .map(String::from)
        .collect();
    d.trace = Some(TraceContext {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: Some("weft=eu1".into()),
    });
    d
}
