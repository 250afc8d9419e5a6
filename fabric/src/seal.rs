//! Sealed payloads: XChaCha20-Poly1305 under a key ring with one active key and older keys
//! kept for reading, so keys rotate without making old events unreadable.
//!
//! XChaCha20 rather than ChaCha20: nonces are random (24 bytes from the injected RNG), and
//! 192 bits make a collision negligible for any number of events one key will ever seal;
//! the 96-bit ChaCha20 nonce would need a coordinated counter across every producer sharing
//! a key. The associated data is the canonical body without the payload field (origin,
//! sequence, stream, security context, ...), so a sealed payload moved into another
//! envelope fails to open.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::codec;
use crate::envelope::{Event, KeyId, NONCE_LEN, Payload, SealedPayload};
use crate::error::SealError;
use crate::limits::KEYRING_LEN_MAX;

/// Sealing keys by id: one active key that seals, and older keys that only open.
pub struct KeyRing {
    active: KeyId,
    keys: BTreeMap<KeyId, Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyRing {
    /// A ring holding one key, which is active.
    pub fn new(id: KeyId, key: [u8; 32]) -> Self {
        let mut keys = BTreeMap::new();
        keys.insert(id.clone(), Zeroizing::new(key));
        Self { active: id, keys }
    }

    /// Adds `key` under `id` and makes it the active key; the previous active key stays for
    /// opening. Re-adding an id with the same key just activates it.
    pub fn rotate(&mut self, id: KeyId, key: [u8; 32]) -> Result<(), SealError> {
        match self.keys.get(&id) {
            Some(existing) if **existing != key => {
                return Err(SealError::DuplicateKeyId {
                    key_id: id.to_string(),
                });
            }
            Some(_) => {}
            None => {
                if self.keys.len() >= KEYRING_LEN_MAX {
                    return Err(SealError::KeyRingFull {
                        len: self.keys.len(),
                        max: KEYRING_LEN_MAX,
                    });
                }
                self.keys.insert(id.clone(), Zeroizing::new(key));
            }
        }
        self.active = id;
        Ok(())
    }

    /// Removes an old key; events sealed under it can no longer be opened here. Returns
    /// whether the key was present.
    pub fn retire(&mut self, id: &KeyId) -> Result<bool, SealError> {
        if *id == self.active {
            return Err(SealError::RetireActive {
                key_id: id.to_string(),
            });
        }
        Ok(self.keys.remove(id).is_some())
    }

    /// Destroys a key (crypto-shredding): its bytes are overwritten with zeros before the
    /// memory is released, and events sealed under it can no longer be opened by this ring
    /// ([`SealError::UnknownKeyId`]). Used to erase a subject whose events were sealed
    /// under a key id naming the subject (`docs/tables.md`, Erasure): destroying that key
    /// everywhere it is held makes every copy of the ciphertext unreadable, backups
    /// included. The active key cannot be shredded (rotate first). Returns whether the key
    /// was present.
    pub fn shred(&mut self, id: &KeyId) -> Result<bool, SealError> {
        use zeroize::Zeroize;
        if *id == self.active {
            return Err(SealError::RetireActive {
                key_id: id.to_string(),
            });
        }
        Ok(match self.keys.remove(id) {
            Some(mut key) => {
                key.zeroize();
                true
            }
            None => false,
        })
    }

    /// The key that seals new payloads.
    pub fn active(&self) -> &KeyId {
        &self.active
    }

    /// Whether a key with this id is held.
    pub fn contains(&self, id: &KeyId) -> bool {
        self.keys.contains_key(id)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the ring is empty (it never is: it always holds the active key).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Seals `plaintext` under the active key with a fresh random nonce.
    pub(crate) fn seal<R: CryptoRng + ?Sized>(
        &self,
        aad: &[u8],
        plaintext: &[u8],
        rng: &mut R,
    ) -> SealedPayload {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let key = &self.keys[&self.active];
        let cipher = XChaCha20Poly1305::new(&(**key).into());
        let ciphertext = match cipher.encrypt(
            &XNonce::from(nonce),
            AeadPayload {
                msg: plaintext,
                aad,
            },
        ) {
            Ok(ct) => ct,
            // Encryption fails only for plaintexts over 256 GiB; the envelope limit is 1 MiB.
            Err(e) => unreachable!(
                "XChaCha20-Poly1305 refused a {} byte payload: {e}",
                plaintext.len()
            ),
        };
        SealedPayload {
            key_id: self.active.clone(),
            nonce,
            ciphertext,
        }
    }

    /// Opens a sealed payload given its associated data.
    pub fn open_sealed(&self, aad: &[u8], sealed: &SealedPayload) -> Result<Vec<u8>, SealError> {
        let key = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| SealError::UnknownKeyId {
                key_id: sealed.key_id.to_string(),
            })?;
        let cipher = XChaCha20Poly1305::new(&(**key).into());
        cipher
            .decrypt(
                &XNonce::from(sealed.nonce),
                AeadPayload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map_err(|_| SealError::OpenFailed {
                key_id: sealed.key_id.to_string(),
            })
    }
}

impl Event {
    /// The associated data a sealed payload of this event is bound to.
    pub fn seal_aad(&self) -> Vec<u8> {
        codec::seal_header(&self.origin(), self.draft())
    }

    /// The payload in clear text: the bytes themselves if clear, opened with `ring` if
    /// sealed. Only on verified events: a tenant key is shared by many producers, so a
    /// payload that opens proves nothing about who sent it; the signature does.
    pub fn open(&self, ring: &KeyRing) -> Result<Vec<u8>, SealError> {
        match self.payload() {
            Payload::Clear(bytes) => Ok(bytes.clone()),
            Payload::Sealed(sealed) => ring.open_sealed(&self.seal_aad(), sealed),
        }
    }
}
