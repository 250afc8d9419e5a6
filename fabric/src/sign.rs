//! Producing signed events and verifying them: Ed25519 (RFC 8032) with strict verification,
//! and batch verification that agrees with it on everything an honest producer can sign.
//!
//! Strict verification (`verify_strict`) rejects small-order public keys, small-order or
//! non-canonically encoded R, and non-canonical s, so nobody but the key holder can turn a
//! valid signature into a second valid one. The event id does not cover the signature
//! anyway (it is the hash of the signed bytes), so even the key holder cannot mint two ids
//! for one body.
//!
//! Batch verification runs the same per-signature checks first (key, R canonical and of
//! large order, s canonical inside dalek), then the randomised batch equation of
//! `ed25519_dalek::verify_batch`; if the batch fails, every event is verified on its own to
//! name the culprits. The one gap left: the batch equation is cofactorless with random
//! 128-bit weights, so a signature whose R carries a small torsion component, which only
//! the private key's holder can construct, may pass a batch while failing `verify_strict`.
//! Honest signers never produce one; `docs/wire.md` documents it.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::codec;
use crate::envelope::{Event, EventData, EventDraft, OriginKey, Payload, UnverifiedEvent};
use crate::error::{SealError, VerifyError};
use crate::limits::VERIFY_BATCH_LEN_MAX;
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
        let body = codec::encode_body(&self.origin, &draft)?;
        let signed = codec::signed_bytes(&body);
        let signature = self.key.sign(&signed).to_bytes();
        let id = codec::event_id(&signed);
        Ok(Event(EventData {
            origin: self.origin,
            draft,
            signed,
            signature,
            id,
        }))
    }

    /// Seals the clear payload of `draft` with the key ring's active key (a random nonce
    /// from `rng`, the header as associated data), then signs the event.
    pub fn seal_and_sign<R: CryptoRng + ?Sized>(
        &self,
        mut draft: EventDraft,
        ring: &KeyRing,
        rng: &mut R,
    ) -> Result<Event, SealError> {
        let Payload::Clear(plaintext) = &draft.payload else {
            return Err(SealError::AlreadySealed);
        };
        // Check the draft (with the clear payload) first so the caller gets the field error,
        // not a sealing error.
        draft.check()?;
        let aad = codec::seal_header(&self.origin, &draft);
        let sealed = ring.seal(&aad, plaintext, rng);
        draft.payload = Payload::Sealed(sealed);
        Ok(self.sign(draft)?)
    }
}

impl UnverifiedEvent {
    /// Verifies the producer's signature strictly.
    pub fn verify(self) -> Result<Event, VerifyError> {
        verify_strict(&self.0)?;
        Ok(Event(self.0))
    }
}

fn verify_strict(event: &EventData) -> Result<(), VerifyError> {
    let key = origin_key(event)?;
    let signature = Signature::from_bytes(&event.signature);
    key.verify_strict(&event.signed, &signature)
        .map_err(|_| VerifyError::BadSignature)
}

/// Parses the origin as a verifying key and refuses weak keys.
fn origin_key(event: &EventData) -> Result<VerifyingKey, VerifyError> {
    let key = VerifyingKey::from_bytes(&event.origin.0).map_err(|_| VerifyError::InvalidOrigin)?;
    if key.is_weak() {
        return Err(VerifyError::WeakOrigin);
    }
    Ok(key)
}

/// The R checks `verify_strict` makes that the batch equation does not: R is canonically
/// encoded and not of small order. Done on the encoding, as libsodium does, because
/// decompressing R here would cost a field inversion per signature and eat most of the
/// batch speed-up; an R that is not a curve point at all fails the batch equation and then
/// strict verification.
fn check_r(signature: &[u8; 64]) -> Result<(), VerifyError> {
    let mut r = [0u8; 32];
    r.copy_from_slice(&signature[..32]);
    let sign_cleared = |mut b: [u8; 32]| {
        b[31] &= 0x7f;
        b
    };
    let y = sign_cleared(r);
    // y >= p = 2^255 - 19 is a non-canonical encoding of y - p.
    let y_non_canonical = y[31] == 0x7f && y[1..31].iter().all(|b| *b == 0xff) && y[0] >= 0xed;
    // The eight points of small order; comparing without the sign bit also catches the
    // non-canonical "negative zero" x of the two points with x = 0.
    let small_order = small_order_encodings()
        .iter()
        .any(|t| sign_cleared(*t) == y);
    if y_non_canonical || small_order {
        return Err(VerifyError::InvalidSignatureR);
    }
    Ok(())
}

/// Compressed encodings of the eight small-order points, computed once.
fn small_order_encodings() -> &'static [[u8; 32]; 8] {
    static ENCODINGS: std::sync::OnceLock<[[u8; 32]; 8]> = std::sync::OnceLock::new();
    ENCODINGS
        .get_or_init(|| curve25519_dalek::constants::EIGHT_TORSION.map(|p| p.compress().to_bytes()))
}

/// Verifies many events at once, in batches of at most [`VERIFY_BATCH_LEN_MAX`]. Returns one
/// result per input, in input order. A batch that fails is re-verified event by event, so
/// one bad signature costs its batch the speed-up, never a good event its acceptance.
pub fn verify_batch(
    events: Vec<UnverifiedEvent>,
) -> Vec<Result<Event, (UnverifiedEvent, VerifyError)>> {
    let mut out = Vec::with_capacity(events.len());
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let chunk: Vec<UnverifiedEvent> = events.by_ref().take(VERIFY_BATCH_LEN_MAX).collect();
        verify_chunk(chunk, &mut out);
    }
    out
}

fn verify_chunk(
    chunk: Vec<UnverifiedEvent>,
    out: &mut Vec<Result<Event, (UnverifiedEvent, VerifyError)>>,
) {
    // Per-event checks first; events that fail them are settled now.
    let mut prechecked: Vec<
        Result<(UnverifiedEvent, VerifyingKey), (UnverifiedEvent, VerifyError)>,
    > = Vec::with_capacity(chunk.len());
    for event in chunk {
        let check = origin_key(&event.0).and_then(|key| check_r(&event.0.signature).map(|()| key));
        prechecked.push(match check {
            Ok(key) => Ok((event, key)),
            Err(e) => Err((event, e)),
        });
    }
    let candidates: Vec<&(UnverifiedEvent, VerifyingKey)> =
        prechecked.iter().filter_map(|r| r.as_ref().ok()).collect();
    let batch_ok = if candidates.is_empty() {
        true
    } else {
        let messages: Vec<&[u8]> = candidates
            .iter()
            .map(|(e, _)| e.0.signed.as_slice())
            .collect();
        let signatures: Vec<Signature> = candidates
            .iter()
            .map(|(e, _)| Signature::from_bytes(&e.0.signature))
            .collect();
        let keys: Vec<VerifyingKey> = candidates.iter().map(|(_, k)| *k).collect();
        ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
    };
    for item in prechecked {
        out.push(match item {
            Ok((event, _)) if batch_ok => Ok(Event(event.0)),
            Ok((event, _)) => match verify_strict(&event.0) {
                Ok(()) => Ok(Event(event.0)),
                Err(e) => Err((event, e)),
            },
            Err(rejected) => Err(rejected),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use proptest::prelude::*;

    /// What `verify_strict` demands of R, computed the slow way.
    fn strict_r_ok(r: [u8; 32]) -> Option<bool> {
        let point = CompressedEdwardsY(r).decompress()?;
        Some(point.compress().to_bytes() == r && !point.is_small_order())
    }

    fn sig_with_r(r: [u8; 32]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r);
        sig
    }

    #[test]
    fn small_order_and_non_canonical_r_are_refused() {
        for t in small_order_encodings() {
            assert_eq!(
                check_r(&sig_with_r(*t)),
                Err(VerifyError::InvalidSignatureR)
            );
            let mut flipped = *t;
            flipped[31] ^= 0x80;
            assert_eq!(
                check_r(&sig_with_r(flipped)),
                Err(VerifyError::InvalidSignatureR)
            );
        }
        // Every y in [p, 2^255) with either sign bit.
        for low in 0xedu8..=0xff {
            for sign in [0u8, 0x80] {
                let mut r = [0xffu8; 32];
                r[0] = low;
                r[31] = 0x7f | sign;
                assert_eq!(check_r(&sig_with_r(r)), Err(VerifyError::InvalidSignatureR));
            }
        }
    }

    proptest! {
        /// On every encoding that is a curve point, the cheap check agrees with the strict
        /// rule (decompress, re-compress equal, not small order).
        #[test]
        fn cheap_r_check_agrees_with_strict(r in any::<[u8; 32]>()) {
            if let Some(ok) = strict_r_ok(r) {
                prop_assert_eq!(check_r(&sig_with_r(r)).is_ok(), ok);
            }
        }

        /// Real signatures' R always passes.
        #[test]
        fn honest_r_passes(seed in any::<[u8; 32]>(), msg in any::<Vec<u8>>()) {
            let key = SigningKey::from_bytes(&seed);
            prop_assert!(check_r(&key.sign(&msg).to_bytes()).is_ok());
        }
    }
}
