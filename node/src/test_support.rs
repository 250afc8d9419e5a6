//! What the unit tests of several modules share.

use std::sync::Arc;

use weft_fabric::envelope::{EventDraft, Payload, Residency, SecurityContext};
use weft_fabric::{Event, Hlc, Signer, StreamName};

/// An event of `stream` numbered `seq` with `payload` in clear, unrestricted, signed by a
/// fixed test key (`[5; 32]`), stamped `seq` ms after 2025-11-24.
pub(crate) fn signed(stream: &str, seq: u64, payload: Vec<u8>) -> Arc<Event> {
    let draft = EventDraft {
        stream: StreamName::new(stream).unwrap(),
        key: None,
        seq,
        hlc: Hlc::new(1_764_000_000_000 + seq, 0).unwrap(),
        security: SecurityContext {
            tenant: "acme".into(),
            principal: "svc".into(),
            classification: "internal".into(),
            residency: Residency::Unrestricted,
            scopes: Default::default(),
            policy_epoch: 0,
        },
        content_type: "application/octet-stream".into(),
        payload: Payload::Clear(payload),
        trace: None,
    };
    Arc::new(Signer::from_secret(&[5; 32]).sign(draft).unwrap())
}
