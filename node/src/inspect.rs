//! `weft inspect`: decode and verify an envelope and print it as JSON.

use std::process::ExitCode;

use serde_json::{Value, json};
use weft_fabric::{EventDraft, EventId, OriginKey, Payload, Residency};

/// An event's fields as JSON (payloads as hex, or as text when they are UTF-8).
pub(crate) fn event_json(
    id: EventId,
    origin: OriginKey,
    event: &EventDraft,
    envelope_len: usize,
) -> Value {
    let sec = &event.security;
    let payload = match &event.payload {
        Payload::Clear(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => json!({ "clear_text": text }),
            Err(_) => json!({ "clear_hex": hex::encode(bytes) }),
        },
        Payload::Sealed(s) => json!({
            "sealed": {
                "key_id": s.key_id.as_str(),
                "nonce_hex": hex::encode(s.nonce),
                "ciphertext_len": s.ciphertext.len(),
            }
        }),
    };
    let residency = match &sec.residency {
        Residency::Unrestricted => json!("unrestricted"),
        Residency::Only(set) => json!(set.iter().map(|j| j.as_str()).collect::<Vec<_>>()),
    };
    json!({
        "id": id.to_string(),
        "stream": event.stream.as_str(),
        "key": event.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
        "origin": origin.to_string(),
        "seq": event.seq,
        "hlc": event.hlc.to_string(),
        "security": {
            "tenant": sec.tenant,
            "principal": sec.principal,
            "classification": sec.classification,
            "residency": residency,
            "scopes": sec.scopes,
            "policy_epoch": sec.policy_epoch,
        },
        "content_type": event.content_type,
        "payload": payload,
        "trace": event.trace.as_ref().map(|t| json!({ "traceparent": t.traceparent, "tracestate": t.tracestate })),
        "envelope_len": envelope_len,
    })
}

/// Decodes and verifies `bytes`; prints the event, or the reason it was rejected. Exit
/// status 0 when it is valid, 1 when it is not (as for a file that cannot be read; 2 is
/// clap's, for a usage error).
pub(crate) fn run(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let unverified = match weft_fabric::decode(bytes) {
        Ok(u) => u,
        Err(e) => {
            say!(
                "{}",
                json!({ "valid": false, "stage": "decode", "reason": e.to_string() })
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let fields = event_json(
        unverified.id(),
        unverified.origin(),
        unverified.claimed(),
        bytes.len(),
    );
    match unverified.verify() {
        Ok(_) => {
            let text = serde_json::to_string_pretty(&json!({ "valid": true, "event": fields }))?;
            say!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let text = serde_json::to_string_pretty(&json!({
                "valid": false, "stage": "verify", "reason": e.to_string(), "claimed": fields
            }))?;
            say!("{text}");
            Ok(ExitCode::FAILURE)
        }
    }
}
