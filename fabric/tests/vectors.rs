//! The wire test vectors in `docs/wire-vectors.json`: regenerated from the code and compared
//! with the committed file, then each one re-checked through the decoder.
//!
//! To rewrite the file after an intended format change:
//! `WEFT_WRITE_VECTORS=1 cargo test -p weft-fabric --test vectors`.

mod util;

use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{Value, json};
use weft_fabric::codec::SIGNING_CONTEXT;
use weft_fabric::*;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/wire-vectors.json");
const SECRET: [u8; 32] = [0x01; 32];
const SEAL_KEY: [u8; 32] = [0x42; 32];
const SEAL_KEY_ID: &str = "acme/2026-11";

fn common(
    description: &str,
    valid: bool,
    envelope: &[u8],
    body: &[u8],
    sig: &[u8; 64],
    origin: OriginKey,
) -> Value {
    let mut signed = SIGNING_CONTEXT.to_vec();
    signed.extend_from_slice(body);
    let id = {
        use sha2::Digest;
        sha2::Sha256::digest(&signed)
    };
    json!({
        "description": description,
        "valid": valid,
        "envelope_hex": hex::encode(envelope),
        "signed_bytes_hex": hex::encode(&signed),
        "public_key_hex": hex::encode(origin.0),
        "signature_hex": hex::encode(sig),
        "id_hex": hex::encode(id),
    })
}

fn valid(description: &str, event: &Event) -> Value {
    common(
        description,
        true,
        &event.encode(),
        event.body_bytes(),
        event.signature(),
        event.origin(),
    )
}

/// Wraps a body and signature in the outer array, canonically.
fn envelope(body: &[u8], sig: &[u8; 64]) -> Vec<u8> {
    let mut out = vec![0x82];
    match body.len() {
        0..=23 => out.push(0x40 | body.len() as u8),
        24..=0xff => out.extend_from_slice(&[0x58, body.len() as u8]),
        n => {
            out.push(0x59);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(body);
    out.extend_from_slice(&[0x58, 0x40]);
    out.extend_from_slice(sig);
    out
}

fn sign_raw(body: &[u8]) -> [u8; 64] {
    let mut signed = SIGNING_CONTEXT.to_vec();
    signed.extend_from_slice(body);
    SigningKey::from_bytes(&SECRET).sign(&signed).to_bytes()
}

fn vectors() -> Value {
    let signer = Signer::from_secret(&SECRET);
    let mut out = Vec::new();

    let clear = signer
        .sign(util::draft("orders.created", 1, br#"{"order":"A-1001"}"#))
        .unwrap();
    out.push(valid(
        "clear payload, no key, no trace, unrestricted residency",
        &clear,
    ));

    let ring = KeyRing::new(KeyId::new(SEAL_KEY_ID).unwrap(), SEAL_KEY);
    let mut d = util::draft("payments.captured", 2, b"");
    let plaintext = br#"{"card":"4111-xxxx","amount":42}"#.to_vec();
    d.payload = Payload::Clear(plaintext.clone());
    d.security.classification = "pci".into();
    d.security.residency = Residency::only(["EU"]).unwrap();
    let sealed = signer
        .seal_and_sign(d, &ring, &mut util::rng(2026))
        .unwrap();
    let Payload::Sealed(s) = sealed.payload() else {
        unreachable!()
    };
    let mut v = valid("sealed payload (XChaCha20-Poly1305), residency EU", &sealed);
    v["key_hex"] = json!(hex::encode(SEAL_KEY));
    v["key_id"] = json!(SEAL_KEY_ID);
    v["nonce_hex"] = json!(hex::encode(s.nonce));
    v["aad_hex"] = json!(hex::encode(sealed.seal_aad()));
    v["plaintext_hex"] = json!(hex::encode(&plaintext));
    out.push(v);

    let mut d = util::draft("inventory.stock", 3, br#"{"sku":"X-1","qty":7}"#);
    d.key = Some(b"sku/X-1".to_vec());
    out.push(valid(
        "keyed event (table key sku/X-1)",
        &signer.sign(d).unwrap(),
    ));

    let mut d = util::draft("orders.shipped", 4, b"shipped");
    d.content_type = "text/plain".into();
    d.trace = Some(TraceContext {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: Some("weft=eu1,rojo=00f067aa0ba902b7".into()),
    });
    out.push(valid("W3C trace context", &signer.sign(d).unwrap()));

    out.push(valid(
        "every optional field: key, residency {CH, EU}, scopes, trace",
        &signer.sign(util::full_draft()).unwrap(),
    ));

    // Invalid: payload altered after signing. Same length, so the structure still decodes.
    let mut tampered = clear.encode();
    let at = tampered.windows(6).position(|w| w == b"A-1001").unwrap();
    tampered[at + 5] = b'2';
    let body = decode(&tampered).unwrap().body_bytes().to_vec();
    let mut v = common(
        "tampered payload: one byte of the clear payload changed after signing",
        false,
        &tampered,
        &body,
        clear.signature(),
        clear.origin(),
    );
    v["reason"] = json!(VerifyError::BadSignature.to_string());
    out.push(v);

    // Invalid: non-canonical integer (seq 1 as 0x18 0x01), correctly signed over those bytes.
    let canonical_body = clear.body_bytes();
    let pos = canonical_body
        .windows(2)
        .position(|w| w == [0x04, 0x01])
        .unwrap();
    let mut body = canonical_body[..pos + 1].to_vec();
    body.extend_from_slice(&[0x18, 0x01]);
    body.extend_from_slice(&canonical_body[pos + 2..]);
    let sig = sign_raw(&body);
    let env = envelope(&body, &sig);
    let mut v = common(
        "non-canonical encoding: seq 1 written as 0x18 0x01; the signature over these bytes is valid, \
         the decoder must still reject",
        false,
        &env,
        &body,
        &sig,
        clear.origin(),
    );
    v["reason"] = json!(decode(&env).unwrap_err().to_string());
    out.push(v);

    // Invalid: unknown field 11, correctly signed.
    let mut body = canonical_body.to_vec();
    body[0] += 1;
    body.extend_from_slice(&[0x0b, 0xf5]);
    let sig = sign_raw(&body);
    let env = envelope(&body, &sig);
    let mut v = common(
        "unknown field 11 (signed correctly): rejected, new fields need a new envelope version",
        false,
        &env,
        &body,
        &sig,
        clear.origin(),
    );
    v["reason"] = json!(decode(&env).unwrap_err().to_string());
    out.push(v);

    // Invalid: version 2, correctly signed.
    let mut body = canonical_body.to_vec();
    assert_eq!(&body[1..3], &[0x00, 0x01]);
    body[2] = 0x02;
    out.push(signed_invalid(
        "envelope version 2 (signed correctly): this format reads version 1 only",
        &body,
        clear.origin(),
    ));

    // Invalid: residency set out of order, correctly signed.
    let mut d = util::draft("orders.created", 9, b"{}");
    d.security.residency = Residency::only(["CH", "EU"]).unwrap();
    let ordered = signer.sign(d).unwrap();
    let mut body = ordered.body_bytes().to_vec();
    let pos = body
        .windows(6)
        .position(|w| w == [0x62, b'C', b'H', 0x62, b'E', b'U'])
        .unwrap();
    body[pos..pos + 6].copy_from_slice(&[0x62, b'E', b'U', 0x62, b'C', b'H']);
    out.push(signed_invalid(
        "residency set not in ascending order (signed correctly): sets are sorted",
        &body,
        clear.origin(),
    ));

    // Invalid: indefinite-length body map, correctly signed.
    let mut body = vec![0xbf];
    body.extend_from_slice(&canonical_body[1..]);
    body.push(0xff);
    out.push(signed_invalid(
        "indefinite-length body map (signed correctly): only definite lengths",
        &body,
        clear.origin(),
    ));

    // Invalid: one byte after the envelope.
    let mut env = clear.encode();
    env.push(0x00);
    let mut v = common(
        "one trailing byte after a valid envelope",
        false,
        &env,
        clear.body_bytes(),
        clear.signature(),
        clear.origin(),
    );
    v["reason"] = json!(decode(&env).unwrap_err().to_string());
    out.push(v);

    // Invalid: a weak (small-order) origin key with R = identity and s = 0. This signature
    // satisfies the plain Ed25519 equation for every message; strict verification refuses it.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let mut body = canonical_body.to_vec();
    let at = body
        .windows(32)
        .position(|w| w == clear.origin().0)
        .unwrap();
    body[at..at + 32].copy_from_slice(&weak);
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&weak);
    let env = envelope(&body, &sig);
    let mut v = common(
        "weak origin key (small order, the identity point) with R = identity, s = 0: verifies under \
         the cofactored equation for any message, refused by strict verification",
        false,
        &env,
        &body,
        &sig,
        OriginKey(weak),
    );
    v["reason"] = json!(decode(&env).unwrap().verify().unwrap_err().to_string());
    out.push(v);

    Value::Array(out)
}

/// An invalid vector whose body is signed correctly by `SECRET`, so only the structure rule
/// under test rejects it.
fn signed_invalid(description: &str, body: &[u8], origin: OriginKey) -> Value {
    let sig = sign_raw(body);
    let env = envelope(body, &sig);
    let mut v = common(description, false, &env, body, &sig, origin);
    v["reason"] = json!(decode(&env).unwrap_err().to_string());
    v
}

#[test]
fn committed_vectors_match_the_code() {
    let generated = vectors();
    let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
    if std::env::var_os("WEFT_WRITE_VECTORS").is_some() {
        std::fs::write(PATH, &text).unwrap();
    }
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(PATH)
            .expect("docs/wire-vectors.json missing; run with WEFT_WRITE_VECTORS=1"),
    )
    .unwrap();
    assert_eq!(
        committed, generated,
        "docs/wire-vectors.json is stale; regenerate it (see module docs)"
    );
}

#[test]
fn every_committed_vector_checks_out() {
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let vectors = committed.as_array().unwrap();
    assert!(vectors.len() >= 6);
    let hexd = |v: &Value, k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
    let (mut valid_n, mut invalid_n, mut sealed_n) = (0, 0, 0);
    for v in vectors {
        let envelope = hexd(v, "envelope_hex");
        let desc = v["description"].as_str().unwrap();
        let result = decode(&envelope).map_err(|e| e.to_string()).and_then(|u| {
            assert_eq!(u.signed_bytes(), hexd(v, "signed_bytes_hex"), "{desc}");
            assert_eq!(&u.signature()[..], hexd(v, "signature_hex"), "{desc}");
            assert_eq!(&u.origin().0[..], hexd(v, "public_key_hex"), "{desc}");
            assert_eq!(&u.id().0[..], hexd(v, "id_hex"), "{desc}");
            u.verify().map_err(|e| e.to_string())
        });
        if v["valid"].as_bool().unwrap() {
            valid_n += 1;
            let event = result.unwrap_or_else(|e| panic!("{desc}: {e}"));
            if v.get("key_hex").is_some() {
                sealed_n += 1;
                let key: [u8; 32] = hexd(v, "key_hex").try_into().unwrap();
                let ring = KeyRing::new(KeyId::new(v["key_id"].as_str().unwrap()).unwrap(), key);
                assert_eq!(event.seal_aad(), hexd(v, "aad_hex"));
                assert_eq!(event.open(&ring).unwrap(), hexd(v, "plaintext_hex"));
            }
        } else {
            invalid_n += 1;
            let err = result.err().unwrap_or_else(|| panic!("{desc}: accepted"));
            assert_eq!(err, v["reason"].as_str().unwrap(), "{desc}");
        }
    }
    assert!(valid_n >= 4 && invalid_n >= 2 && sealed_n >= 1);
}
