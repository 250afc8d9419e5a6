//! The envelope end to end: round trips, tamper detection, strict decoding, sealing and
//! batch verification.

mod util;

use std::collections::BTreeSet;

use proptest::prelude::*;
use weft_fabric::limits::*;
use weft_fabric::*;

// ------------------------------------------------------------ strategies

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,12}"
}

fn stream_name() -> impl Strategy<Value = StreamName> {
    proptest::collection::vec(token(), 1..5).prop_map(|t| StreamName::new(t.join(".")).unwrap())
}

fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._:/é-]{1,40}"
}

fn residency() -> impl Strategy<Value = Residency> {
    prop_oneof![
        Just(Residency::Unrestricted),
        proptest::collection::btree_set("[A-Z][A-Z0-9-]{1,6}", 1..5)
            .prop_map(|s| Residency::only(s).unwrap()),
    ]
}

fn security() -> impl Strategy<Value = SecurityContext> {
    (
        label(),
        label(),
        "[a-z]{1,20}",
        residency(),
        proptest::collection::btree_set("[!-~]{1,20}", 0..5),
        any::<u64>(),
    )
        .prop_map(
            |(tenant, principal, classification, residency, scopes, policy_epoch)| {
                SecurityContext {
                    tenant,
                    principal,
                    classification,
                    residency,
                    scopes,
                    policy_epoch,
                }
            },
        )
}

fn trace() -> impl Strategy<Value = Option<TraceContext>> {
    proptest::option::of(
        (
            "[0-9a-f]{31}[1-9a-f]",
            "[1-9a-f][0-9a-f]{15}",
            "[0-9a-f]{2}",
            proptest::option::of("[ -~]{1,60}"),
        )
            .prop_map(|(t, p, f, state)| TraceContext {
                traceparent: format!("00-{t}-{p}-{f}"),
                tracestate: state,
            }),
    )
}

prop_compose! {
    fn draft()(
        stream in stream_name(),
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..64)),
        seq in 1u64..,
        hlc in any::<u64>(),
        security in security(),
        content_type in "[ -~]{1,40}",
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        trace in trace(),
    ) -> EventDraft {
        EventDraft {
            stream,
            key,
            seq,
            hlc: Hlc::from_u64(hlc),
            security,
            content_type,
            payload: Payload::Clear(payload),
            trace,
        }
    }
}

// ------------------------------------------------------------ round trips

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// sign -> encode -> decode -> verify gives back the same fields, id and bytes.
    #[test]
    fn clear_round_trip(draft in draft(), seed in any::<u8>()) {
        let signer = util::signer(seed);
        let event = signer.sign(draft.clone()).unwrap();
        let bytes = event.encode();
        prop_assert!(bytes.len() <= EVENT_LEN_MAX);
        let decoded = decode(&bytes).unwrap();
        prop_assert_eq!(decoded.id(), event.id());
        prop_assert_eq!(decoded.claimed(), &draft);
        prop_assert_eq!(decoded.origin(), signer.origin());
        let verified = decoded.verify().unwrap();
        prop_assert_eq!(verified.encode(), bytes);
    }

    /// Sealed events round-trip, open to the original payload, and keep the header clear.
    #[test]
    fn sealed_round_trip(draft in draft(), seed in any::<u64>()) {
        let signer = util::signer(7);
        let ring = util::ring("k1", 9);
        let Payload::Clear(plain) = draft.payload.clone() else { unreachable!() };
        let event = signer.seal_and_sign(draft.clone(), &ring, &mut util::rng(seed)).unwrap();
        let Payload::Sealed(sealed) = event.payload() else { panic!("not sealed") };
        prop_assert_eq!(sealed.ciphertext.len(), plain.len() + 16);
        let decoded = decode(&event.encode()).unwrap().verify().unwrap();
        prop_assert_eq!(decoded.stream(), &draft.stream);
        prop_assert_eq!(decoded.open(&ring).unwrap(), plain);
    }

    /// Flipping any single bit of an encoded event makes it fail to decode or to verify.
    #[test]
    fn any_bit_flip_is_detected(draft in draft(), bit in any::<prop::sample::Index>()) {
        let bytes = util::signer(3).sign(draft).unwrap().encode();
        let i = bit.index(bytes.len() * 8);
        let mut flipped = bytes.clone();
        flipped[i / 8] ^= 1 << (i % 8);
        if let Ok(decoded) = decode(&flipped) {
            prop_assert!(decoded.verify().is_err(), "bit {} flipped and still verified", i);
        }
    }

    /// The decoder never panics on arbitrary bytes.
    #[test]
    fn decoder_total_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
    }
}

/// Exhaustive version of the bit-flip property for one event with every optional field.
#[test]
fn every_bit_flip_of_a_full_event_is_detected() {
    let signer = util::signer(1);
    let bytes = signer.sign(util::full_draft()).unwrap().encode();
    let mut decoded_but_bad_signature = 0;
    for i in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[i / 8] ^= 1 << (i % 8);
        if let Ok(event) = decode(&flipped) {
            assert!(
                event.verify().is_err(),
                "bit {i} flipped and still verified"
            );
            decoded_but_bad_signature += 1;
        }
    }
    // Both failure modes must occur: structure errors and signature errors.
    assert!(decoded_but_bad_signature > 0);
    assert!(decoded_but_bad_signature < bytes.len() * 8);
}

// ------------------------------------------------------------ strict decoding

/// Builds the canonical CBOR of a small map by hand, for crafting bad inputs.
fn envelope_with_body(body: &[u8], sig: &[u8; 64]) -> Vec<u8> {
    let mut out = vec![0x82];
    push_head(&mut out, 2, body.len() as u64);
    out.extend_from_slice(body);
    out.extend_from_slice(&[0x58, 0x40]);
    out.extend_from_slice(sig);
    out
}

fn push_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn sample() -> (Event, Vec<u8>) {
    let event = util::signer(1).sign(util::draft("a.b", 5, b"hi")).unwrap();
    let bytes = event.encode();
    (event, bytes)
}

#[test]
fn rejects_non_shortest_integer() {
    let (event, _) = sample();
    let body = event.body_bytes();
    // Key 4 (seq) is followed by the value 5 (0x05); re-encode it as 0x18 0x05.
    let pos = body.windows(2).position(|w| w == [0x04, 0x05]).unwrap();
    let mut bad = body[..pos + 1].to_vec();
    bad.extend_from_slice(&[0x18, 0x05]);
    bad.extend_from_slice(&body[pos + 2..]);
    let err = decode(&envelope_with_body(&bad, event.signature())).unwrap_err();
    assert!(matches!(err, EnvelopeError::NonCanonical { .. }), "{err}");
}

#[test]
fn rejects_non_shortest_length_head() {
    let (_, bytes) = sample();
    // The signature's head 0x58 0x40 written as 0x59 0x00 0x40.
    let n = bytes.len();
    let mut bad = bytes[..n - 66].to_vec();
    bad.extend_from_slice(&[0x59, 0x00, 0x40]);
    bad.extend_from_slice(&bytes[n - 64..]);
    let err = decode(&bad).unwrap_err();
    assert!(matches!(err, EnvelopeError::NonCanonical { .. }), "{err}");
}

#[test]
fn rejects_indefinite_lengths() {
    let (event, bytes) = sample();
    // Outer array as indefinite: 0x9f ... 0xff.
    let mut bad = vec![0x9f];
    bad.extend_from_slice(&bytes[1..]);
    bad.push(0xff);
    let err = decode(&bad).unwrap_err();
    assert!(
        matches!(
            err,
            EnvelopeError::IndefiniteLength {
                field: "envelope",
                offset: 0
            }
        ),
        "{err}"
    );
    // Body map as indefinite.
    let body = event.body_bytes();
    let mut map = vec![0xbf];
    map.extend_from_slice(&body[1..]);
    map.push(0xff);
    let err = decode(&envelope_with_body(&map, event.signature())).unwrap_err();
    assert!(
        matches!(err, EnvelopeError::IndefiniteLength { field: "event", .. }),
        "{err}"
    );
}

#[test]
fn rejects_duplicate_and_unordered_keys() {
    let (event, _) = sample();
    let body = event.body_bytes();
    // Map of n+1 entries with key 0 (version 1) repeated at the front.
    let n = body[0] & 0x1f;
    let mut dup = vec![0xa0 | (n + 1), 0x00, 0x01];
    dup.extend_from_slice(&body[1..]);
    let err = decode(&envelope_with_body(&dup, event.signature())).unwrap_err();
    assert!(
        matches!(
            err,
            EnvelopeError::KeyOrder {
                map: "event",
                key: 0,
                previous: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_unknown_fields_naming_them() {
    let (event, _) = sample();
    let body = event.body_bytes();
    let n = body[0] & 0x1f;
    let mut extra = vec![0xa0 | (n + 1)];
    extra.extend_from_slice(&body[1..]);
    extra.extend_from_slice(&[0x0b, 0x00]); // key 11 => 0
    let err = decode(&envelope_with_body(&extra, event.signature())).unwrap_err();
    assert!(
        matches!(
            err,
            EnvelopeError::UnknownField {
                map: "event",
                key: 11,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("new envelope version"));
}

#[test]
fn rejects_trailing_bytes() {
    let (_, mut bytes) = sample();
    let len = bytes.len();
    bytes.push(0x00);
    let err = decode(&bytes).unwrap_err();
    assert_eq!(
        err,
        EnvelopeError::TrailingBytes {
            offset: len,
            count: 1
        }
    );
}

#[test]
fn rejects_other_versions() {
    let (event, _) = sample();
    let mut body = event.body_bytes().to_vec();
    assert_eq!(&body[1..3], &[0x00, 0x01]);
    body[2] = 0x02;
    let err = decode(&envelope_with_body(&body, event.signature())).unwrap_err();
    assert_eq!(
        err,
        EnvelopeError::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    );
}

#[test]
fn over_limit_lengths_are_rejected_from_the_head_alone() {
    // An envelope whose body claims 4 GiB: rejected from the head, nothing allocated.
    let mut bad = vec![0x82, 0x5a, 0xff, 0xff, 0xff, 0xff];
    bad.extend_from_slice(&[0u8; 16]);
    let err = decode(&bad).unwrap_err();
    assert!(
        matches!(
            err,
            EnvelopeError::FieldTooLong {
                field: "body",
                limit: "EVENT_LEN_MAX",
                ..
            }
        ),
        "{err}"
    );
    // A stream name head claiming 1000 bytes in a tiny body.
    let mut body = vec![0xa2, 0x00, 0x01, 0x01];
    push_head(&mut body, 3, 1000);
    let err = decode(&envelope_with_body(&body, &[0; 64])).unwrap_err();
    assert_eq!(
        err,
        EnvelopeError::FieldTooLong {
            field: "stream",
            len: 1000,
            limit: "STREAM_LEN_MAX",
            max: STREAM_LEN_MAX
        }
    );
    // A whole input over EVENT_LEN_MAX.
    let err = decode(&vec![0u8; EVENT_LEN_MAX + 1]).unwrap_err();
    assert!(matches!(err, EnvelopeError::EventTooLarge { .. }));
}

#[test]
fn rejects_unsorted_sets_and_bad_jurisdictions() {
    let signer = util::signer(1);
    let mut d = util::draft("a", 1, b"");
    d.security.residency = Residency::only(["CH", "EU"]).unwrap();
    let event = signer.sign(d).unwrap();
    let body = event.body_bytes();
    // Swap the two codes: "CH","EU" -> "EU","CH".
    let pos = body
        .windows(6)
        .position(|w| w == [0x62, b'C', b'H', 0x62, b'E', b'U'])
        .unwrap();
    let mut bad = body.to_vec();
    bad[pos..pos + 6].copy_from_slice(&[0x62, b'E', b'U', 0x62, b'C', b'H']);
    let err = decode(&envelope_with_body(&bad, event.signature())).unwrap_err();
    assert!(
        matches!(
            err,
            EnvelopeError::SetOrder {
                field: "security.residency",
                ..
            }
        ),
        "{err}"
    );
    // Lowercase code.
    bad[pos..pos + 6].copy_from_slice(&[0x62, b'C', b'H', 0x62, b'e', b'u']);
    let err = decode(&envelope_with_body(&bad, event.signature())).unwrap_err();
    assert!(
        matches!(
            err,
            EnvelopeError::InvalidField {
                field: "security.residency",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn rejects_wrong_types_and_truncation_with_offsets() {
    let (_, bytes) = sample();
    let err = decode(&[0xa0]).unwrap_err();
    assert!(
        matches!(
            err,
            EnvelopeError::UnexpectedType {
                field: "envelope",
                offset: 0,
                found: 0xa0,
                ..
            }
        ),
        "{err}"
    );
    for cut in 0..bytes.len() {
        assert!(
            decode(&bytes[..cut]).is_err(),
            "prefix of {cut} bytes decoded"
        );
    }
    let err = decode(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(
        matches!(
            err,
            EnvelopeError::Truncated {
                field: "signature",
                ..
            }
        ),
        "{err}"
    );
    let err = decode(&[0x82, 0x41, 0xf6, 0x40]).unwrap_err();
    assert!(
        matches!(
            err,
            EnvelopeError::InvalidField {
                field: "signature",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn encoder_refuses_what_decoder_would_reject() {
    let signer = util::signer(1);
    let mut d = util::draft("a", 1, b"");
    d.seq = 0;
    assert!(matches!(
        signer.sign(d).unwrap_err(),
        EnvelopeError::InvalidField { field: "seq", .. }
    ));
    let mut d = util::draft("a", 1, b"");
    d.key = Some(vec![0; KEY_LEN_MAX + 1]);
    assert!(matches!(
        signer.sign(d).unwrap_err(),
        EnvelopeError::FieldTooLong { field: "key", .. }
    ));
    let mut d = util::draft("a", 1, b"");
    d.key = Some(vec![]);
    assert!(signer.sign(d).is_err());
    let mut d = util::draft("a", 1, b"");
    d.payload = Payload::Clear(vec![0; PAYLOAD_LEN_MAX + 1]);
    let err = signer.sign(d).unwrap_err();
    assert!(err.to_string().contains("PAYLOAD_LEN_MAX"), "{err}");
    let mut d = util::draft("a", 1, b"");
    d.security.scopes = (0..=SCOPES_LEN_MAX)
        .map(|i| format!("s{i}"))
        .collect::<BTreeSet<_>>();
    assert!(matches!(
        signer.sign(d).unwrap_err(),
        EnvelopeError::TooManyEntries {
            field: "security.scopes",
            ..
        }
    ));
    let mut d = util::draft("a", 1, b"");
    d.security.tenant = String::new();
    assert!(matches!(
        signer.sign(d).unwrap_err(),
        EnvelopeError::InvalidField {
            field: "security.tenant",
            ..
        }
    ));
}

#[test]
fn largest_event_fits_the_limit() {
    let mut d = util::full_draft();
    d.payload = Payload::Clear(vec![0xab; PAYLOAD_LEN_MAX]);
    let event = util::signer(1).sign(d).unwrap();
    let bytes = event.encode();
    assert!(bytes.len() <= EVENT_LEN_MAX);
    assert_eq!(decode(&bytes).unwrap().verify().unwrap().id(), event.id());
}

// ------------------------------------------------------------ sealing

#[test]
fn sealed_payload_cannot_move_to_another_envelope() {
    let signer = util::signer(1);
    let ring = util::ring("k1", 5);
    let mut rng = util::rng(1);
    let a = signer
        .seal_and_sign(util::draft("a", 1, b"secret A"), &ring, &mut rng)
        .unwrap();
    let b = signer
        .seal_and_sign(util::draft("a", 2, b"secret B"), &ring, &mut rng)
        .unwrap();
    // Re-sign B's header with A's ciphertext: a valid signature, but the AAD differs.
    let mut moved = b.draft().clone();
    moved.payload = a.payload().clone();
    let forged = signer.sign(moved).unwrap();
    assert!(matches!(
        forged.open(&ring),
        Err(SealError::OpenFailed { .. })
    ));
    assert_eq!(a.open(&ring).unwrap(), b"secret A");
    // Changing the residency set (part of the header) also breaks opening.
    let mut widened = a.draft().clone();
    widened.security.residency = Residency::only(["US"]).unwrap();
    assert!(signer.sign(widened).unwrap().open(&ring).is_err());
}

#[test]
fn key_rotation_keeps_old_events_readable() {
    let signer = util::signer(1);
    let mut rng = util::rng(2);
    let mut ring = util::ring("2026-10", 1);
    let old = signer
        .seal_and_sign(util::draft("a", 1, b"old"), &ring, &mut rng)
        .unwrap();
    ring.rotate(KeyId::new("2026-11").unwrap(), [2; 32])
        .unwrap();
    let new = signer
        .seal_and_sign(util::draft("a", 2, b"new"), &ring, &mut rng)
        .unwrap();
    let Payload::Sealed(s) = new.payload() else {
        panic!()
    };
    assert_eq!(s.key_id.as_str(), "2026-11");
    assert_eq!(old.open(&ring).unwrap(), b"old");
    assert_eq!(new.open(&ring).unwrap(), b"new");
    // The active key cannot be retired; the old one can, and then old events are closed.
    assert!(matches!(
        ring.retire(&KeyId::new("2026-11").unwrap()),
        Err(SealError::RetireActive { .. })
    ));
    assert!(ring.retire(&KeyId::new("2026-10").unwrap()).unwrap());
    assert_eq!(
        old.open(&ring).unwrap_err(),
        SealError::UnknownKeyId {
            key_id: "2026-10".into()
        }
    );
    // Same id, different key: refused.
    assert!(matches!(
        ring.rotate(KeyId::new("2026-11").unwrap(), [3; 32]),
        Err(SealError::DuplicateKeyId { .. })
    ));
}

#[test]
fn key_ring_is_bounded() {
    let mut ring = util::ring("k0", 0);
    for i in 1..KEYRING_LEN_MAX {
        ring.rotate(KeyId::new(format!("k{i}")).unwrap(), [i as u8; 32])
            .unwrap();
    }
    let err = ring
        .rotate(KeyId::new("one-too-many").unwrap(), [0xff; 32])
        .unwrap_err();
    assert_eq!(
        err,
        SealError::KeyRingFull {
            len: KEYRING_LEN_MAX,
            max: KEYRING_LEN_MAX
        }
    );
}

#[test]
fn sealing_twice_is_refused() {
    let signer = util::signer(1);
    let ring = util::ring("k1", 5);
    let sealed = signer
        .seal_and_sign(util::draft("a", 1, b"x"), &ring, &mut util::rng(0))
        .unwrap();
    let again = signer.seal_and_sign(sealed.draft().clone(), &ring, &mut util::rng(0));
    assert_eq!(again.unwrap_err(), SealError::AlreadySealed);
}

// ------------------------------------------------------------ verification

fn unverified(n: usize) -> Vec<UnverifiedEvent> {
    (0..n)
        .map(|i| {
            let bytes = util::signer(i as u8)
                .sign(util::draft("a", i as u64 + 1, b"x"))
                .unwrap()
                .encode();
            decode(&bytes).unwrap()
        })
        .collect()
}

#[test]
fn batch_verification_accepts_good_and_names_bad() {
    let all_good = verify_batch(unverified(300));
    assert_eq!(all_good.len(), 300);
    assert!(all_good.iter().all(Result::is_ok));

    let mut events = unverified(40);
    // Corrupt one signature's s (last byte) in event 17 and re-decode.
    let mut bytes = events[17].encode();
    let n = bytes.len();
    bytes[n - 10] ^= 0x01;
    events[17] = decode(&bytes).unwrap();
    let results = verify_batch(events);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), i == 17, "event {i}");
    }
    let (_, e) = results[17].as_ref().unwrap_err();
    assert_eq!(*e, VerifyError::BadSignature);
}

#[test]
fn strict_checks_hold_in_batches_too() {
    // A small-order public key (the identity point, y = 1) with R = identity and s = 0
    // satisfies the plain Ed25519 equation for every message: strict verification, single
    // and batched, must refuse it.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let body_event = util::signer(1).sign(util::draft("a", 1, b"x")).unwrap();
    let mut forged = body_event.draft().clone();
    forged.seq = 2;
    // Encode a body with the weak origin by signing with a real key and swapping origin.
    let real = util::signer(2).sign(forged).unwrap();
    let body = real.body_bytes();
    let origin_pos = body
        .windows(34)
        .position(|w| {
            w[0] == 0x03 && w[1] == 0x58 && w[2] == 0x20 && w[3..] == real.origin().0[..31]
        })
        .unwrap();
    let mut weak_body = body.to_vec();
    weak_body[origin_pos + 3..origin_pos + 35].copy_from_slice(&identity);
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&identity);
    let mut bytes = vec![0x82];
    bytes.push(0x58);
    bytes.push(weak_body.len() as u8);
    bytes.extend_from_slice(&weak_body);
    bytes.extend_from_slice(&[0x58, 0x40]);
    bytes.extend_from_slice(&sig);
    let weak = decode(&bytes).unwrap();
    assert_eq!(weak.clone().verify().unwrap_err(), VerifyError::WeakOrigin);
    let mut batch = unverified(5);
    batch.push(weak);
    let results = verify_batch(batch);
    assert!(results[..5].iter().all(Result::is_ok));
    assert_eq!(results[5].as_ref().unwrap_err().1, VerifyError::WeakOrigin);

    // A small-order R with an honest key is refused in a batch by the R check.
    let honest = util::signer(3).sign(util::draft("a", 1, b"x")).unwrap();
    let mut bytes = honest.encode();
    let n = bytes.len();
    bytes[n - 64..n - 32].copy_from_slice(&identity);
    let bad_r = decode(&bytes).unwrap();
    let results = verify_batch(vec![bad_r]);
    assert_eq!(
        results[0].as_ref().unwrap_err().1,
        VerifyError::InvalidSignatureR
    );
}

#[test]
fn order_key_breaks_ties_by_origin() {
    let d = util::draft("a", 1, b"");
    let a = util::signer(1).sign(d.clone()).unwrap();
    let b = util::signer(2).sign(d).unwrap();
    assert_eq!(a.hlc(), b.hlc());
    assert_ne!(a.order_key(), b.order_key());
    assert_eq!(a.order_key() < b.order_key(), a.origin() < b.origin());
}

/// Replaces the first occurrence of `from` in `body` by `to`.
fn patch(body: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = body
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in body");
    let mut out = body[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&body[at + from.len()..]);
    out
}

#[test]
fn rejects_malformed_fields_inside_the_body() {
    let signer = util::signer(1);
    let sig = [0u8; 64];
    let decode_body = |body: &[u8]| decode(&envelope_with_body(body, &sig)).unwrap_err();

    // Both a clear and a sealed payload.
    let ring = util::ring("k1", 5);
    let sealed = signer
        .seal_and_sign(util::draft("a", 1, b"x"), &ring, &mut util::rng(0))
        .unwrap();
    let body = sealed.body_bytes();
    let mut both = patch(body, &[0x09, 0xa3], &[0x08, 0x40, 0x09, 0xa3]);
    both[0] += 1;
    let err = decode_body(&both);
    assert!(
        matches!(
            err,
            EnvelopeError::InvalidField {
                field: "payload",
                ..
            }
        ),
        "{err}"
    );

    // A nonce one byte short.
    let nonce_at = body.windows(2).position(|w| w == [0x58, 0x18]).unwrap();
    let mut short = body[..nonce_at].to_vec();
    short.push(0x57);
    short.extend_from_slice(&body[nonce_at + 2..nonce_at + 2 + 23]);
    short.extend_from_slice(&body[nonce_at + 2 + 24..]);
    let err = decode_body(&short);
    assert!(
        matches!(
            err,
            EnvelopeError::InvalidField {
                field: "payload.sealed.nonce",
                ..
            }
        ),
        "{err}"
    );

    // An empty residency array.
    let mut d = util::draft("a", 1, b"");
    d.security.residency = Residency::only(["EU"]).unwrap();
    let body = signer.sign(d).unwrap().body_bytes().to_vec();
    let empty = patch(&body, &[0x03, 0x81, 0x62, b'E', b'U'], &[0x03, 0x80]);
    let err = decode_body(&empty);
    assert!(
        matches!(
            err,
            EnvelopeError::InvalidField {
                field: "security.residency",
                ..
            }
        ),
        "{err}"
    );

    // Invalid UTF-8 in the tenant.
    let bad_utf8 = patch(&body, b"acme", &[0xff, b'c', b'm', b'e']);
    let err = decode_body(&bad_utf8);
    assert!(
        matches!(
            err,
            EnvelopeError::InvalidField {
                field: "security.tenant",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("UTF-8"), "{err}");

    // A first key that is not the version.
    let no_version = patch(&body, &[0x00, 0x01, 0x01], &[0x01]);
    let mut no_version = no_version;
    no_version[0] -= 1;
    let err = decode_body(&no_version);
    assert_eq!(err, EnvelopeError::MissingField { field: "version" });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Mutations of a valid envelope (byte changes, insertions, deletions) never panic the
    /// decoder, and whatever it accepts is the canonical encoding of what it decoded.
    #[test]
    fn mutated_envelopes_decode_canonically_or_not_at_all(
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        op in 0u8..3,
    ) {
        let bytes = util::signer(2).sign(util::full_draft()).unwrap().encode();
        let i = at.index(bytes.len());
        let mut m = bytes.clone();
        match op {
            0 => m[i] = byte,
            1 => m.insert(i, byte),
            _ => { m.remove(i); }
        }
        if let Ok(u) = decode(&m) {
            prop_assert_eq!(u.encode(), m);
        }
    }
}

/// Crypto-shredding: a subject's events sealed under a key id naming the subject cannot be
/// opened once that key is shredded; other subjects' events still open.
#[test]
fn shredding_a_subject_key_closes_its_events() {
    let signer = util::signer(1);
    let mut rng = util::rng(3);
    let mut ring = util::ring("subject-alice", 1);
    let alice = signer
        .seal_and_sign(util::draft("a", 1, b"alice's record"), &ring, &mut rng)
        .unwrap();
    ring.rotate(KeyId::new("subject-bob").unwrap(), [2; 32])
        .unwrap();
    let bob = signer
        .seal_and_sign(util::draft("a", 2, b"bob's record"), &ring, &mut rng)
        .unwrap();
    assert_eq!(alice.open(&ring).unwrap(), b"alice's record");
    // The active key is refused (rotate first), and the ring is unchanged.
    assert!(matches!(
        ring.shred(&KeyId::new("subject-bob").unwrap()),
        Err(SealError::RetireActive { .. })
    ));
    assert!(ring.shred(&KeyId::new("subject-alice").unwrap()).unwrap());
    assert!(!ring.contains(&KeyId::new("subject-alice").unwrap()));
    assert_eq!(
        alice.open(&ring).unwrap_err(),
        SealError::UnknownKeyId {
            key_id: "subject-alice".into()
        }
    );
    assert_eq!(bob.open(&ring).unwrap(), b"bob's record");
    // Shredding twice is harmless.
    assert!(!ring.shred(&KeyId::new("subject-alice").unwrap()).unwrap());
}
