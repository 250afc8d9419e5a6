//! `weft inspect`: decode and verify an envelope and print it as JSON.

use std::process::ExitCode;

use serde_json::{Value, json};
use weft_fabric::{EventData, Payload, Residency};

/// The event's fields as JSON (payloads as hex, or as text when they are UTF-8).
pub(crate) fn event_json(event: &EventData) -> Value {
    let sec = event.security();
    let payload = match event.payload() {
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
        "id": event.id().to_string(),
        "stream": event.stream().as_str(),
        "key": event.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        "origin": event.origin().to_string(),
        "seq": event.seq(),
        "hlc": event.hlc().to_string(),
        "security": {
            "tenant": sec.tenant,
            "principal": sec.principal,
            "classification": sec.classification,
            "residency": residency,
            "scopes": sec.scopes,
            "policy_epoch": sec.policy_epoch,
        },
        "content_type": event.content_type(),
        "payload": payload,
        "trace": event.trace().map(|t| json!({ "traceparent": t.traceparent, "tracestate": t.tracestate })),
        "envelope_len": event.encode().len(),
    })
}

/// Decodes and verifies `bytes`; prints the event, or the reason it was rejected.
pub(crate) fn run(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let unverified = match weft_fabric::decode(bytes) {
        Ok(u) => u,
        Err(e) => {
            println!(
                "{}",
                json!({ "valid": false, "stage": "decode", "reason": e.to_string() })
            );
            return Ok(ExitCode::from(2));
        }
    };
    let fields = event_json(&unverified);
    match unverified.verify() {
        Ok(_) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({ "valid": true, "event": fields }))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "valid": false, "stage": "verify", "reason": e.to_string(), "event": fields
                }))?
            );
            Ok(ExitCode::from(2))
        }
    }
}
