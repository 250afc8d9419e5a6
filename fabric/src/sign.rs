//! Producing signed events and verifying them.
//!
//! Signing is RFC 8032 Ed25519 through ed25519-dalek. Verification is strict about encodings
//! and uses the **cofactored** equation, in single and batch verification alike:
//!
//! 1. the origin key A and the signature's R must be canonical encodings (y < p, no
//!    "negative zero") of curve points that are not of small order, and s must be below the
//!    group order, so nobody but the key holder can turn a valid signature into another;
//! 2. `[8][s]B = [8]R + [8][k]A` with `k = SHA-512(R || A || M) mod l`.
//!
//! Why not ed25519-dalek's `verify_strict` plus `verify_batch`: `verify_strict` is
//! cofactorless, and dalek's batch equation is cofactorless with weights derived from the
//! batch itself, so the two disagree on signatures whose R or A carries a small torsion
//! component, and a key holder can grind a signature that one node's batch accepts and
//! another node's single check rejects: replicas would diverge on the same bytes. With the
//! cofactored equation everywhere, batch and single verification agree on every input (the
//! recommendation of Chalkias, Garillot and Nikolaenko, "Taming the many EdDSAs", 2020, and
//! of Zcash's ZIP 215). The equation is a few lines over curve25519-dalek, ed25519-dalek's
//! own curve crate; no maintained crate combines cofactored batch verification with strict
//! encodings (ed25519-consensus implements ZIP 215, which deliberately accepts non-canonical
//! points). For every signature an honest signer produces, the verdict equals
//! `verify_strict`'s (a property test checks it); libsodium and `verify_strict` reject, and
//! Weft accepts, only signatures whose R has a torsion component, which only the private
//! key's holder can make and which change nothing (the event id does not cover the
//! signature).

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signer as _, SigningKey};
use rand_core::CryptoRng;
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use crate::codec;
use crate::envelope::{
    Event, EventData, EventDraft, FilterMemo, OriginKey, Payload, UnverifiedEvent,
};
use crate::error::{SealError, VerifyError};
use crate::limits::{SIGNATURE_LEN, VERIFY_BATCH_LEN_MAX};
use crate::seal::KeyRing;

/// Signs events with one Ed25519 key (a node's, a device's, or a principal's the node signs
/// for).
pub struct Signer {
    key: SigningKey,
    origin: OriginKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from a 32-byte Ed25519 secret key (RFC 8032 seed).
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(secret);
        let origin = OriginKey(key.verifying_key().to_bytes());
        Self { key, origin }
    }

    /// A fresh key from the given cryptographically secure RNG.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let key = SigningKey::generate(rng);
        let origin = OriginKey(key.verifying_key().to_bytes());
        Self { key, origin }
    }

    /// The 32-byte secret, for writing to a key file.
    pub fn secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    /// The public key events signed here carry as their origin.
    pub fn origin(&self) -> OriginKey {
        self.origin
    }

    /// Encodes and signs `draft`. Fails if a field breaks its grammar or a limit.
    pub fn sign(&self, draft: EventDraft) -> Result<Event, crate::EnvelopeError> {
        self.assemble(draft, |signed| self.key.sign(signed).to_bytes())
    }

    /// Seals the clear payload of `draft` with the key ring's active key (a random nonce
    /// from `rng`, the header as associated data), then signs the event.
    pub fn seal_and_sign<R: CryptoRng + ?Sized>(
        &self,
        draft: EventDraft,
        ring: &KeyRing,
        rng: &mut R,
    ) -> Result<Event, SealError> {
        Ok(self.sign(self.seal(draft, ring, rng)?)?)
    }

    /// [`Signer::sign`] without computing the signature: the event is encoded and gets
    /// its id exactly as when signed (the id covers the signed bytes, not the signature),
    /// but its signature is 64 zero bytes, which no verifier accepts. For the simulator
    /// only (feature `model-signatures`, which the node and the agent never enable), where
    /// signing is modelled like verification and an Ed25519 signature per event was the
    /// largest single cost of a run.
    #[cfg(feature = "model-signatures")]
    pub fn model_sign(&self, draft: EventDraft) -> Result<Event, crate::EnvelopeError> {
        self.assemble(draft, |_| [0; SIGNATURE_LEN])
    }

    /// Encodes `draft` and attaches the signature `sign` makes of the signed bytes.
    fn assemble(
        &self,
        draft: EventDraft,
        sign: impl FnOnce(&[u8]) -> [u8; SIGNATURE_LEN],
    ) -> Result<Event, crate::EnvelopeError> {
        let signed = codec::encode_signed(&self.origin, &draft)?;
        let signature = sign(&signed);
        let id = codec::event_id(&signed);
        Ok(Event(EventData {
            origin: self.origin,
            draft,
            signed,
            signature,
            id,
            memo: FilterMemo::default(),
        }))
    }

    /// Replaces the clear payload of `draft` by its sealed form (the first half of
    /// [`Signer::seal_and_sign`]; the simulator follows it with [`Signer::model_sign`]).
    pub fn seal<R: CryptoRng + ?Sized>(
        &self,
        mut draft: EventDraft,
        ring: &KeyRing,
        rng: &mut R,
    ) -> Result<EventDraft, SealError> {
        let Payload::Clear(plaintext) = &draft.payload else {
            return Err(SealError::AlreadySealed);
        };
        // Check the draft (with the clear payload) first so the caller gets the field error,
        // not a sealing error.
        draft.check()?;
        let aad = codec::seal_header(&self.origin, &draft);
        let sealed = ring.seal(&aad, plaintext, rng);
        draft.payload = Payload::Sealed(sealed);
        Ok(draft)
    }
}

impl UnverifiedEvent {
    /// Verifies the producer's signature (strict encodings, cofactored equation).
    pub fn verify(self) -> Result<Event, VerifyError> {
        let prepared = prepare(&self.0)?;
        if !prepared.holds() {
            return Err(VerifyError::BadSignature);
        }
        Ok(Event(self.0))
    }
}

/// A signature's parts, decoded and checked, ready for the verification equation.
struct Prepared {
    a: EdwardsPoint,
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

impl Prepared {
    /// `[8]([s]B - [k]A - R) == identity`.
    fn holds(&self) -> bool {
        let sb_minus_ka =
            EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &-self.a, &self.s);
        (sb_minus_ka - self.r).mul_by_cofactor().is_identity()
    }
}

/// Decodes A, R and s with the strict encoding rules and computes k.
fn prepare(event: &EventData) -> Result<Prepared, VerifyError> {
    let a = decode_point(&event.origin.0).ok_or(VerifyError::InvalidOrigin)?;
    if a.is_small_order() {
        return Err(VerifyError::WeakOrigin);
    }
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&event.signature[..32]);
    let r = decode_point(&r_bytes).ok_or(VerifyError::InvalidSignatureR)?;
    if r.is_small_order() {
        return Err(VerifyError::InvalidSignatureR);
    }
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&event.signature[32..]);
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))
        .ok_or(VerifyError::BadSignature)?;
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(event.origin.0);
    h.update(&event.signed);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    Ok(Prepared { a, r, s, k })
}

/// A point from its canonical encoding only. An encoding is canonical when y < p and the
/// sign bit is clear for x = 0; the only points with x = 0 are (0, 1) and (0, -1), both of
/// small order and refused by the caller anyway, so checking y < p on the bytes suffices
/// (and saves the field inversion a re-compression would cost).
fn decode_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    // y >= p = 2^255 - 19 iff the low 255 bits are 0x7fff..ffed or above.
    let y_non_canonical =
        (bytes[31] & 0x7f) == 0x7f && bytes[1..31].iter().all(|b| *b == 0xff) && bytes[0] >= 0xed;
    if y_non_canonical {
        return None;
    }
    CompressedEdwardsY(*bytes).decompress()
}

/// Which exact envelopes (claimed id, origin and signature) passed verification lately, so
/// that a copy arriving again is not verified again: on a mesh the same event reaches a
/// node by an eager push, a relay, a confirmable copy or an anti-entropy answer, and with
/// three nodes on two cores re-verifying those copies was a quarter of all CPU (perf,
/// docs/performance.md). Equal id, origin and signature mean equal signed bytes (the id
/// is their SHA-256) and an equal signature, so the answer cannot differ. A forged copy
/// differs in one of them and is verified (and refused) as before. Bounded: the oldest
/// entries go first.
#[derive(Debug)]
pub struct VerifiedCache {
    inner: std::sync::Mutex<VerifiedInner>,
    cap: usize,
}

#[derive(Debug, Default)]
struct VerifiedInner {
    set: std::collections::HashSet<[u8; 128]>,
    order: std::collections::VecDeque<[u8; 128]>,
}

impl VerifiedCache {
    /// A cache of at most `cap` envelopes.
    pub fn new(cap: usize) -> Self {
        Self {
            inner: std::sync::Mutex::new(VerifiedInner::default()),
            cap: cap.max(1),
        }
    }

    fn key(id: &[u8; 32], origin: &[u8; 32], signature: &[u8; 64]) -> [u8; 128] {
        let mut k = [0u8; 128];
        k[..32].copy_from_slice(id);
        k[32..64].copy_from_slice(origin);
        k[64..].copy_from_slice(signature);
        k
    }

    /// Envelopes remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.set.len())
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verifies `events` like [`verify_batch`] (same results, same order), skipping the
    /// signature check of envelopes this cache saw pass, and remembering those that pass
    /// now. Returns the results and how many checks were skipped.
    pub fn verify_batch(&self, events: Vec<UnverifiedEvent>) -> (Vec<BatchResult>, usize) {
        let keys: Vec<[u8; 128]> = events
            .iter()
            .map(|e| Self::key(&e.id().0, &e.origin().0, e.signature()))
            .collect();
        let known: Vec<bool> = match self.inner.lock() {
            Ok(inner) => keys.iter().map(|k| inner.set.contains(k)).collect(),
            Err(_) => vec![false; keys.len()],
        };
        let skipped = known.iter().filter(|k| **k).count();
        let mut fresh = Vec::with_capacity(events.len() - skipped);
        let mut slots: Vec<Option<BatchResult>> = Vec::with_capacity(events.len());
        for (e, k) in events.into_iter().zip(&known) {
            if *k {
                slots.push(Some(Ok(Event(e.0))));
            } else {
                fresh.push(e);
                slots.push(None);
            }
        }
        let mut checked = verify_batch(fresh).into_iter();
        let mut out = Vec::with_capacity(slots.len());
        for slot in slots {
            match slot {
                Some(r) => out.push(r),
                None => out.extend(checked.next()),
            }
        }
        if let Ok(mut inner) = self.inner.lock() {
            for ((r, k), was_known) in out.iter().zip(keys).zip(known) {
                if r.is_ok() && !was_known && inner.set.insert(k) {
                    inner.order.push_back(k);
                    if inner.order.len() > self.cap
                        && let Some(old) = inner.order.pop_front()
                    {
                        inner.set.remove(&old);
                    }
                }
            }
        }
        (out, skipped)
    }
}

/// One result of [`verify_batch`]: the verified event, or the event and why it failed.
pub type BatchResult = Result<Event, (UnverifiedEvent, VerifyError)>;

/// Verifies many events at once, in batches of at most [`VERIFY_BATCH_LEN_MAX`]. Returns one
/// result per input, in input order, always the result [`UnverifiedEvent::verify`] would
/// give: a batch that fails is re-verified event by event, so one bad signature costs its
/// batch the speed-up, never a good event its acceptance.
pub fn verify_batch(events: Vec<UnverifiedEvent>) -> Vec<BatchResult> {
    let mut out = Vec::with_capacity(events.len());
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let chunk: Vec<UnverifiedEvent> = events.by_ref().take(VERIFY_BATCH_LEN_MAX).collect();
        verify_chunk(chunk, &mut out);
    }
    out
}

fn verify_chunk(chunk: Vec<UnverifiedEvent>, out: &mut Vec<BatchResult>) {
    let items: Vec<(UnverifiedEvent, Result<Prepared, VerifyError>)> = chunk
        .into_iter()
        .map(|e| {
            let p = prepare(&e.0);
            (e, p)
        })
        .collect();
    let good: Vec<&Prepared> = items.iter().filter_map(|(_, p)| p.as_ref().ok()).collect();
    let batch_ok = match good.len() {
        0 => true,
        1 => good[0].holds(),
        _ => batch_holds(&good),
    };
    for (event, prepared) in items {
        out.push(match prepared {
            Ok(_) if batch_ok => Ok(Event(event.0)),
            Ok(p) if p.holds() => Ok(Event(event.0)),
            Ok(_) => Err((event, VerifyError::BadSignature)),
            Err(e) => Err((event, e)),
        });
    }
}

/// The cofactored batch equation `[8](-(sum z_i s_i) B + sum z_i R_i + sum z_i k_i A_i) = 0`
/// with 128-bit weights z_i derived by hashing every k_i and s_i of the batch (Fiat-Shamir:
/// no signature can be chosen after its weight is known). The torsion components vanish
/// under the cofactor, so the batch holds exactly when every single equation holds, except
/// with probability about 2^-128.
fn batch_holds(items: &[&Prepared]) -> bool {
    let mut transcript = Sha512::new();
    transcript.update(b"weft/verify-batch\0");
    for p in items {
        transcript.update(p.k.as_bytes());
        transcript.update(p.s.as_bytes());
    }
    let seed: [u8; 64] = transcript.finalize().into();
    let weights: Vec<Scalar> = (0..items.len() as u64)
        .map(|i| {
            let mut h = Sha512::new();
            h.update(seed);
            h.update(i.to_le_bytes());
            let digest: [u8; 64] = h.finalize().into();
            let mut z = [0u8; 32];
            z[..16].copy_from_slice(&digest[..16]);
            Scalar::from_bytes_mod_order(z)
        })
        .collect();
    let b_coefficient: Scalar = items.iter().zip(&weights).map(|(p, z)| z * p.s).sum();
    let scalars = std::iter::once(-b_coefficient)
        .chain(weights.iter().copied())
        .chain(items.iter().zip(&weights).map(|(p, z)| z * p.k));
    let points = std::iter::once(curve25519_dalek::constants::ED25519_BASEPOINT_POINT)
        .chain(items.iter().map(|p| p.r))
        .chain(items.iter().map(|p| p.a));
    EdwardsPoint::vartime_multiscalar_mul(scalars, points)
        .mul_by_cofactor()
        .is_identity()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    use crate::envelope::{Residency, SecurityContext};
    use crate::hlc::Hlc;
    use crate::stream::StreamName;

    fn draft() -> EventDraft {
        EventDraft {
            stream: StreamName::new("a.b").unwrap(),
            key: None,
            seq: 1,
            hlc: Hlc::new(1_000, 0).unwrap(),
            security: SecurityContext {
                tenant: "t".into(),
                principal: "p".into(),
                classification: "c".into(),
                residency: Residency::Unrestricted,
                scopes: BTreeSet::new(),
                policy_epoch: 0,
            },
            content_type: "x/y".into(),
            payload: Payload::Clear(b"hello".to_vec()),
            trace: None,
        }
    }

    /// A modelled signature leaves the event, its id and its encoding as signing does, and
    /// no verifier accepts it.
    #[cfg(feature = "model-signatures")]
    #[test]
    fn a_modelled_signature_changes_only_the_signature_and_never_verifies() {
        let signer = Signer::from_secret(&[3; 32]);
        let real = signer.sign(draft()).unwrap();
        let modelled = signer.model_sign(draft()).unwrap();
        assert_eq!(real.id(), modelled.id());
        assert_eq!(real.signed_bytes(), modelled.signed_bytes());
        assert_eq!(modelled.signature(), &[0; 64]);
        let unverified = UnverifiedEvent(modelled.0.clone());
        assert!(unverified.verify().is_err(), "a zero signature verified");
        assert!(UnverifiedEvent(real.0.clone()).verify().is_ok());
    }

    /// An unverified event over `draft()` with origin `a` and a hand-made signature (R, s).
    fn forged(a: [u8; 32], r: [u8; 32], s: [u8; 32]) -> UnverifiedEvent {
        let origin = OriginKey(a);
        let signed = codec::encode_signed(&origin, &draft()).unwrap();
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&r);
        signature[32..].copy_from_slice(&s);
        let id = codec::event_id(&signed);
        UnverifiedEvent(EventData {
            origin,
            draft: draft(),
            signed,
            signature,
            id,
            memo: FilterMemo::default(),
        })
    }

    /// Signs like Ed25519 but with a chosen nonce and a torsion point added to R and/or A:
    /// the cases where cofactorless and cofactored verification can disagree.
    fn torsion_signature(
        secret: u64,
        nonce: u64,
        r_torsion: usize,
        a_torsion: usize,
    ) -> UnverifiedEvent {
        let a_scalar = Scalar::from(secret);
        let a_point = ED25519_BASEPOINT_POINT * a_scalar + EIGHT_TORSION[a_torsion];
        let r_point = ED25519_BASEPOINT_POINT * Scalar::from(nonce) + EIGHT_TORSION[r_torsion];
        let a = a_point.compress().to_bytes();
        let r = r_point.compress().to_bytes();
        let probe = forged(a, r, [0; 32]);
        let mut h = Sha512::new();
        h.update(r);
        h.update(a);
        h.update(&probe.0.signed);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        let s = Scalar::from(nonce) + k * a_scalar;
        forged(a, r, s.to_bytes())
    }

    fn verdict(r: &BatchResult) -> Result<(), VerifyError> {
        r.as_ref().map(|_| ()).map_err(|(_, e)| *e)
    }

    #[test]
    fn single_and_batch_agree_on_torsion_cases() {
        let honest: Vec<UnverifiedEvent> = (1..4u8)
            .map(|i| {
                let ev = Signer::from_secret(&[i; 32]).sign(draft()).unwrap();
                crate::decode(&ev.encode()).unwrap()
            })
            .collect();
        let mut checked = 0;
        for rt in 0..8 {
            for at in 0..8 {
                for nonce in 1..6u64 {
                    let ev = torsion_signature(7, 1000 + nonce, rt, at);
                    let single = ev.clone().verify().map(|_| ());
                    let mut batch = honest.clone();
                    batch.push(ev.clone());
                    let in_batch = verify_batch(batch);
                    assert!(in_batch[..3].iter().all(Result::is_ok));
                    assert_eq!(
                        verdict(&in_batch[3]),
                        single,
                        "R torsion {rt}, A torsion {at}"
                    );
                    let pair = verify_batch(vec![ev.clone(), ev.clone()]);
                    assert_eq!(verdict(&pair[0]), single);
                    assert_eq!(verdict(&pair[1]), single);
                    // Large-order R and A (torsion index 0 is the identity): valid.
                    if rt == 0 && at == 0 {
                        assert_eq!(single, Ok(()));
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 8 * 8 * 5);
    }

    /// The cache answers exactly what `verify_batch` answers, skips only exact copies of
    /// envelopes that passed, and a forged copy (same body, another signature) of a cached
    /// event is still checked and refused.
    #[test]
    fn the_verified_cache_skips_exact_copies_only() {
        let good: Vec<UnverifiedEvent> = (1..4u8)
            .map(|i| {
                let ev = Signer::from_secret(&[i; 32]).sign(draft()).unwrap();
                crate::decode(&ev.encode()).unwrap()
            })
            .collect();
        let mut forged_copy = good[0].clone();
        forged_copy.0.signature[40] ^= 1;
        let cache = VerifiedCache::new(2);
        let (first, skipped) = cache.verify_batch(good.clone());
        assert_eq!(skipped, 0);
        assert!(first.iter().all(Result::is_ok));
        assert_eq!(cache.len(), 2, "bounded: the oldest went");
        let mixed = vec![
            forged_copy.clone(),
            good[2].clone(),
            good[0].clone(),
            good[1].clone(),
        ];
        let (again, skipped) = cache.verify_batch(mixed.clone());
        assert_eq!(
            skipped, 2,
            "good[1] and good[2] are remembered, good[0] was evicted"
        );
        let plain = verify_batch(mixed);
        assert_eq!(again.len(), plain.len());
        for (a, p) in again.iter().zip(&plain) {
            assert_eq!(verdict(a), verdict(p));
        }
        assert_eq!(verdict(&again[0]), Err(VerifyError::BadSignature));
        // A refused envelope is never remembered.
        let (once_more, skipped) = cache.verify_batch(vec![forged_copy]);
        assert_eq!(skipped, 0);
        assert!(once_more[0].is_err());
    }

    #[test]
    fn weak_keys_and_small_order_r_are_refused() {
        let identity = EIGHT_TORSION[0].compress().to_bytes();
        let ev = forged(identity, identity, [0; 32]);
        assert_eq!(ev.clone().verify().unwrap_err(), VerifyError::WeakOrigin);
        assert_eq!(
            verdict(&verify_batch(vec![ev])[0]),
            Err(VerifyError::WeakOrigin)
        );
        let honest = Signer::from_secret(&[5; 32]);
        for t in EIGHT_TORSION {
            let ev = forged(honest.origin().0, t.compress().to_bytes(), [0; 32]);
            assert_eq!(ev.verify().unwrap_err(), VerifyError::InvalidSignatureR);
        }
    }

    proptest! {
        /// The byte-level canonical check equals "re-compresses to the same bytes" on every
        /// encoding of a point that is not of small order.
        #[test]
        fn cheap_canonical_check_is_exact(bytes in any::<[u8; 32]>()) {
            if let Some(p) = CompressedEdwardsY(bytes).decompress()
                && !p.is_small_order()
            {
                let canonical = p.compress().to_bytes() == bytes;
                prop_assert_eq!(decode_point(&bytes).is_some(), canonical);
            }
        }
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        let signer = Signer::from_secret(&[9; 32]);
        let good = crate::decode(&signer.sign(draft()).unwrap().encode()).unwrap();
        let mut r = [0u8; 32];
        r.copy_from_slice(&good.signature()[..32]);
        let mut s = [0u8; 32];
        s.copy_from_slice(&good.signature()[32..]);
        assert!(good.clone().verify().is_ok());
        // s + l is the same scalar mod l, but not canonical.
        // l = 2^252 + 27742317777372353535851937790883648493, little-endian.
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        assert_eq!(Scalar::from_bytes_mod_order(l), Scalar::ZERO);
        let mut s_plus_l = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(s[i]) + u16::from(l[i]) + carry;
            s_plus_l[i] = v as u8;
            carry = v >> 8;
        }
        assert_eq!(
            forged(signer.origin().0, r, s_plus_l).verify().unwrap_err(),
            VerifyError::BadSignature
        );
        // y = p + 1 encodes the identity's y non-canonically.
        let mut y = [0xffu8; 32];
        y[0] = 0xee;
        y[31] = 0x7f;
        assert_eq!(
            forged(signer.origin().0, y, s).verify().unwrap_err(),
            VerifyError::InvalidSignatureR
        );
        assert_eq!(
            forged(y, r, s).verify().unwrap_err(),
            VerifyError::InvalidOrigin
        );
        // Every non-canonical y (y + p for y < 19, either sign) is refused, including those
        // that decompress to a point.
        let mut decompressible = 0;
        for small in 0u8..19 {
            for sign in [0u8, 0x80] {
                let mut enc = [0xffu8; 32];
                enc[0] = 0xed + small;
                enc[31] = 0x7f | sign;
                if CompressedEdwardsY(enc).decompress().is_some() {
                    decompressible += 1;
                }
                assert!(decode_point(&enc).is_none(), "y = p + {small}");
            }
        }
        assert!(
            decompressible > 0,
            "the loop must cover encodings that decompress"
        );
    }

    proptest! {
        /// For honest signatures, Weft's verification and ed25519-dalek's `verify_strict`
        /// agree (both accept), and both reject a corrupted message.
        #[test]
        fn agrees_with_dalek_verify_strict(seed in any::<[u8; 32]>(), flip in any::<prop::sample::Index>()) {
            let signer = Signer::from_secret(&seed);
            let ev = crate::decode(&signer.sign(draft()).unwrap().encode()).unwrap();
            let key = ed25519_dalek::VerifyingKey::from_bytes(&ev.origin().0).unwrap();
            let sig = ed25519_dalek::Signature::from_bytes(ev.signature());
            prop_assert!(key.verify_strict(ev.signed_bytes(), &sig).is_ok());
            prop_assert!(ev.clone().verify().is_ok());
            let mut bad = ev.clone();
            let i = flip.index(bad.0.signed.len());
            bad.0.signed[i] ^= 1;
            prop_assert!(key.verify_strict(&bad.0.signed, &sig).is_err());
            prop_assert!(bad.verify().is_err());
        }
    }
}
