//! Signing bundles with operator keys and verifying them k of n (`docs/policy.md` §5).
//!
//! A signed bundle is the CBOR array `[bundle: bstr, signatures: [[signer, signature], ..]]`
//! with signers strictly ascending. Each signature is pure Ed25519 over
//! `"weft/policy" 0x00 || bundle` (a domain separator distinct from events', so neither can
//! pass as the other), checked with ed25519-dalek's `verify_strict` (canonical encodings,
//! no weak keys). Which operator keys count and how many must sign is the node's
//! configuration ([`Trust`]), never the bundle's: a bundle cannot vouch for itself.

use std::collections::BTreeSet;

use cbor4ii::core::Value;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::bundle::Bundle;
use crate::codec;
use crate::error::{BundleError, TrustError, VerifyError};
use crate::limits::{BUNDLE_LEN_MAX, OPERATORS_MAX, SIGNATURES_MAX};
use crate::policy::Policy;

/// Prefix of the bytes operators sign: domain separation from every other Weft signature.
pub const BUNDLE_SIGNING_CONTEXT: &[u8] = b"weft/policy\0";

/// Most bytes a signed bundle adds around the bundle: the outer array and byte-string
/// heads (1 + 5 + 1) and [`SIGNATURES_MAX`] signature pairs of 1 + (2 + 32) + (2 + 64).
pub const SIGNED_OVERHEAD_MAX: usize = 7 + SIGNATURES_MAX * 101;

const _: () = assert!(SIGNED_OVERHEAD_MAX < BUNDLE_LEN_MAX);

/// The operator keys a node trusts to sign bundles and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    operators: BTreeSet<[u8; 32]>,
    threshold: usize,
}

impl Trust {
    /// `threshold` of the `operators` must sign. Refuses no keys, more than
    /// [`OPERATORS_MAX`], a threshold of 0 or above the number of distinct keys, and keys
    /// that are not valid, non-weak Ed25519 public keys.
    pub fn new(
        operators: impl IntoIterator<Item = [u8; 32]>,
        threshold: usize,
    ) -> Result<Trust, TrustError> {
        let operators: BTreeSet<[u8; 32]> = operators.into_iter().collect();
        if operators.is_empty() || operators.len() > OPERATORS_MAX {
            return Err(TrustError::OperatorCount {
                len: operators.len(),
                max: OPERATORS_MAX,
            });
        }
        for key in &operators {
            match VerifyingKey::from_bytes(key) {
                Ok(vk) if !vk.is_weak() => {}
                _ => return Err(TrustError::BadKey { key: hex(key) }),
            }
        }
        if threshold == 0 || threshold > operators.len() {
            return Err(TrustError::Threshold {
                threshold,
                operators: operators.len(),
            });
        }
        Ok(Trust {
            operators,
            threshold,
        })
    }

    /// The trusted operator keys.
    pub fn operators(&self) -> &BTreeSet<[u8; 32]> {
        &self.operators
    }

    /// How many of them must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }
}

/// A signed bundle's parts, decoded but not verified: the canonical bundle bytes and the
/// signatures, signers ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBundle {
    /// The canonical CBOR of the bundle: what every signature covers.
    pub bundle: Vec<u8>,
    /// `(signer key, signature)`, strictly ascending by key.
    pub signatures: Vec<([u8; 32], [u8; 64])>,
}

impl SignedBundle {
    /// An unsigned bundle, ready for [`SignedBundle::add_signature`]. Checks the bundle.
    pub fn new(bundle: &Bundle) -> Result<SignedBundle, BundleError> {
        Ok(SignedBundle {
            bundle: bundle.to_cbor()?,
            signatures: Vec::new(),
        })
    }

    /// Adds (or replaces) `key`'s signature, keeping signers in order. Operators can sign
    /// one after another, each adding a signature to the same bytes.
    pub fn add_signature(&mut self, key: &SigningKey) {
        let signer = key.verifying_key().to_bytes();
        let signature = key.sign(&signed_bytes(&self.bundle)).to_bytes();
        match self.signatures.binary_search_by(|(s, _)| s.cmp(&signer)) {
            Ok(i) => self.signatures[i].1 = signature,
            Err(i) => self.signatures.insert(i, (signer, signature)),
        }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let sigs = self
            .signatures
            .iter()
            .map(|(k, s)| Value::Array(vec![Value::Bytes(k.to_vec()), Value::Bytes(s.to_vec())]))
            .collect();
        codec::encode_value(&Value::Array(vec![
            Value::Bytes(self.bundle.clone()),
            Value::Array(sigs),
        ]))
    }

    /// Decodes the outer structure (not the bundle inside), refusing oversize input,
    /// anything but the canonical encoding, and signature lists over [`SIGNATURES_MAX`] or
    /// out of order. Verifies nothing.
    pub fn decode(bytes: &[u8]) -> Result<SignedBundle, VerifyError> {
        if bytes.len() > BUNDLE_LEN_MAX {
            return Err(VerifyError::Oversize {
                len: bytes.len(),
                max: BUNDLE_LEN_MAX,
            });
        }
        let malformed = |path: &str, detail: &str| {
            VerifyError::Malformed(BundleError::Cbor {
                path: path.into(),
                detail: detail.into(),
            })
        };
        let value = codec::decode_value(bytes).map_err(VerifyError::Malformed)?;
        let Value::Array(mut parts) = value else {
            return Err(malformed("", "expected the array [bundle, signatures]"));
        };
        let (Some(Value::Array(sigs)), Some(Value::Bytes(bundle)), None) =
            (parts.pop(), parts.pop(), parts.pop())
        else {
            return Err(malformed(
                "",
                "expected the array [bundle: bytes, signatures: array]",
            ));
        };
        if sigs.len() > SIGNATURES_MAX {
            return Err(VerifyError::TooManySignatures {
                len: sigs.len(),
                max: SIGNATURES_MAX,
            });
        }
        let mut signatures = Vec::with_capacity(sigs.len());
        for (i, sig) in sigs.into_iter().enumerate() {
            let path = format!("signatures[{i}]");
            let Value::Array(pair) = sig else {
                return Err(malformed(&path, "expected [signer, signature]"));
            };
            let [Value::Bytes(k), Value::Bytes(s)] = pair.as_slice() else {
                return Err(malformed(
                    &path,
                    "expected [signer: bytes, signature: bytes]",
                ));
            };
            let (Ok(k), Ok(s)) = (
                <[u8; 32]>::try_from(k.as_slice()),
                <[u8; 64]>::try_from(s.as_slice()),
            ) else {
                return Err(malformed(
                    &path,
                    "signer must be 32 bytes and signature 64 bytes",
                ));
            };
            if signatures.last().is_some_and(|(prev, _)| *prev >= k) {
                return Err(VerifyError::SignerOrder { index: i });
            }
            signatures.push((k, s));
        }
        let signed = SignedBundle { bundle, signatures };
        if let Some(offset) = codec::first_difference(bytes, &signed.encode()) {
            return Err(VerifyError::Malformed(BundleError::NonCanonical { offset }));
        }
        Ok(signed)
    }
}

/// The bytes an operator signs for `bundle` (its canonical CBOR).
pub fn signed_bytes(bundle: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BUNDLE_SIGNING_CONTEXT.len() + bundle.len());
    out.extend_from_slice(BUNDLE_SIGNING_CONTEXT);
    out.extend_from_slice(bundle);
    out
}

/// Checks `bundle`, encodes it canonically and signs it with every key in `keys`.
pub fn sign_bundle(bundle: &Bundle, keys: &[&SigningKey]) -> Result<Vec<u8>, BundleError> {
    let mut signed = SignedBundle::new(bundle)?;
    for key in keys {
        signed.add_signature(key);
    }
    Ok(signed.encode())
}

/// A bundle that passed [`verify_bundle`]: compiled, with who signed it.
#[derive(Debug)]
pub struct VerifiedBundle {
    /// The evaluator for the bundle.
    pub policy: Policy,
    /// The operator keys whose signatures verified, ascending.
    pub signers: Vec<[u8; 32]>,
}

/// Verifies a signed bundle for a node whose policy in force has epoch `current_epoch`
/// (0 when none is). Refuses, in this order and each with its own error: oversize input,
/// malformed or non-canonical CBOR, no signature, too many or unordered signatures, a
/// signer outside `trust`, a signature that does not verify, fewer valid signers than the
/// threshold, an invalid bundle, and an epoch not above `current_epoch`.
pub fn verify_bundle(
    bytes: &[u8],
    trust: &Trust,
    current_epoch: u64,
) -> Result<VerifiedBundle, VerifyError> {
    let signed = SignedBundle::decode(bytes)?;
    if signed.signatures.is_empty() {
        return Err(VerifyError::Unsigned);
    }
    let message = signed_bytes(&signed.bundle);
    let mut signers = Vec::with_capacity(signed.signatures.len());
    for (signer, signature) in &signed.signatures {
        if !trust.operators.contains(signer) {
            return Err(VerifyError::UnknownSigner {
                signer: hex(signer),
            });
        }
        let ok = VerifyingKey::from_bytes(signer).is_ok_and(|vk| {
            vk.verify_strict(&message, &Signature::from_bytes(signature))
                .is_ok()
        });
        if !ok {
            return Err(VerifyError::BadSignature {
                signer: hex(signer),
            });
        }
        signers.push(*signer);
    }
    if signers.len() < trust.threshold {
        return Err(VerifyError::TooFewSigners {
            signers: signers.len(),
            threshold: trust.threshold,
        });
    }
    let bundle = codec::decode_bundle(&signed.bundle).map_err(VerifyError::Malformed)?;
    let policy = Policy::compile(&bundle).map_err(VerifyError::Invalid)?;
    if bundle.epoch <= current_epoch {
        return Err(VerifyError::Rollback {
            epoch: bundle.epoch,
            current: current_epoch,
        });
    }
    Ok(VerifiedBundle { policy, signers })
}

/// Lowercase hex of a key.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
