//! Shared helpers: test keys, events and members.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;

use ed25519_dalek::SigningKey;
use weft_fabric::mesh::MemberInfo;
use weft_fabric::{
    Event, EventDraft, Hlc, KeyId, Payload, Residency, SealedPayload, SecurityContext, Signer,
    StreamName,
};

pub const EXAMPLE: &str = include_str!("../../examples/eu-retail.toml");

/// The node-local hash key the example's `orders-masked` transform names (`hash_key`), as
/// an EU ingress node's `[egress.hash_keys]` would give it.
pub fn example_keys() -> weft_policy::HashKeys {
    let mut keys = weft_policy::HashKeys::new();
    keys.insert("orders-2025", b"example key of the test suite".to_vec())
        .expect("a valid key");
    keys
}

/// Ed25519 key from the seed `[n; 32]`.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

pub fn public(n: u8) -> [u8; 32] {
    key(n).verifying_key().to_bytes()
}

pub fn member(n: u8, jurisdiction: &str, region: &str) -> MemberInfo {
    MemberInfo {
        key: public(n),
        region: region.into(),
        cloud: "aws".into(),
        jurisdiction: jurisdiction.into(),
        addr: format!("node-{n}").into(),
        policy_epoch: 7,
        generation: 0,
    }
}

pub fn event(stream: &str, classification: &str, residency: Residency, sealed: bool) -> Event {
    let payload = if sealed {
        Payload::Sealed(SealedPayload {
            key_id: KeyId::new("k1").unwrap(),
            nonce: [7; 24],
            ciphertext: vec![1; 32],
        })
    } else {
        Payload::Clear(br#"{"n":1}"#.to_vec())
    };
    Signer::from_secret(&[42; 32])
        .sign(EventDraft {
            stream: StreamName::new(stream).unwrap(),
            key: None,
            seq: 1,
            hlc: Hlc::new(1_000, 0).unwrap(),
            security: SecurityContext {
                tenant: "acme".into(),
                principal: "orders-api".into(),
                classification: classification.into(),
                residency,
                scopes: BTreeSet::new(),
                policy_epoch: 7,
            },
            content_type: "application/json".into(),
            payload,
            trace: None,
        })
        .unwrap()
}
