//! Errors of the envelope codec, signature verification and sealing.
//!
//! Every variant names the field (as a dotted path, `security.residency`) and, where one
//! applies, the limit by its constant name, so an operator reading a rejection in a log
//! knows what to change without opening the code. Offsets are byte offsets into the
//! encoded envelope.

/// Why an event could not be encoded or decoded. Neither operation changes any state; a
/// rejected input leaves nothing behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The whole envelope is over [`crate::limits::EVENT_LEN_MAX`].
    #[error("event is {len} bytes, over the limit EVENT_LEN_MAX = {max}")]
    EventTooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text or byte field is longer than its limit.
    #[error("{field} is {len} bytes, over the limit {limit} = {max}")]
    FieldTooLong {
        /// Dotted path of the field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// Name of the limit constant.
        limit: &'static str,
        /// The limit.
        max: usize,
    },
    /// An array (set) has more entries than its limit.
    #[error("{field} has {count} entries, over the limit {limit} = {max}")]
    TooManyEntries {
        /// Dotted path of the field.
        field: &'static str,
        /// Number of entries.
        count: usize,
        /// Name of the limit constant.
        limit: &'static str,
        /// The limit.
        max: usize,
    },
    /// A field's value breaks its grammar (see `docs/wire.md`).
    #[error("{field} is invalid: {reason}")]
    InvalidField {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A required field is absent.
    #[error("{field} is missing")]
    MissingField {
        /// Dotted path of the field.
        field: &'static str,
    },
    /// A CBOR item of the wrong major type (or a tag, float or simple value).
    #[error("{field} at byte {offset}: expected {expected}, found CBOR initial byte 0x{found:02x}")]
    UnexpectedType {
        /// Dotted path of the field.
        field: &'static str,
        /// Offset of the item.
        offset: usize,
        /// What the format requires there.
        expected: &'static str,
        /// The initial byte found.
        found: u8,
    },
    /// An indefinite-length array, map, byte or text string.
    #[error(
        "{field} at byte {offset} uses an indefinite length; only definite lengths are canonical"
    )]
    IndefiniteLength {
        /// Dotted path of the field.
        field: &'static str,
        /// Offset of the item.
        offset: usize,
    },
    /// A map key the format does not define for this version.
    #[error(
        "unknown field {key} in {map} at byte {offset}; new fields need a new envelope version"
    )]
    UnknownField {
        /// Which map.
        map: &'static str,
        /// The key.
        key: u64,
        /// Offset of the key.
        offset: usize,
    },
    /// A map key equal to or smaller than the previous one: a duplicate or out of the
    /// canonical (ascending) order.
    #[error(
        "{map} key {key} at byte {offset} is a duplicate or out of order (follows key {previous})"
    )]
    KeyOrder {
        /// Which map.
        map: &'static str,
        /// The key.
        key: u64,
        /// The previous key.
        previous: u64,
        /// Offset of the key.
        offset: usize,
    },
    /// A set member equal to or smaller than the previous one.
    #[error("{field} entry at byte {offset} is a duplicate or out of ascending order")]
    SetOrder {
        /// Dotted path of the set.
        field: &'static str,
        /// Offset of the entry.
        offset: usize,
    },
    /// The input is well-formed but not the one canonical encoding of its value (a
    /// non-shortest integer or length head, for instance).
    #[error("non-canonical encoding: first difference from the canonical form at byte {offset}")]
    NonCanonical {
        /// First differing byte.
        offset: usize,
    },
    /// Bytes after the end of the envelope.
    #[error("{count} trailing bytes after the envelope, starting at byte {offset}")]
    TrailingBytes {
        /// Offset of the first trailing byte.
        offset: usize,
        /// How many.
        count: usize,
    },
    /// The input ends in the middle of an item.
    #[error("truncated: {field} at byte {offset} runs past the end of the input")]
    Truncated {
        /// Dotted path of the field being read.
        field: &'static str,
        /// Offset of the item.
        offset: usize,
    },
    /// Malformed CBOR that is none of the above.
    #[error("malformed CBOR in {field} at byte {offset}: {detail}")]
    Malformed {
        /// Dotted path of the field being read.
        field: &'static str,
        /// Offset of the item.
        offset: usize,
        /// The CBOR decoder's description.
        detail: String,
    },
    /// An envelope version this build does not read.
    #[error("envelope version {found} is not supported; this build reads version {supported}")]
    UnsupportedVersion {
        /// The version found.
        found: u64,
        /// The version this build reads and writes.
        supported: u64,
    },
}

/// Why a signature did not verify. Verification changes no state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The origin field is not the encoding of a curve point.
    #[error("origin is not a valid Ed25519 public key")]
    InvalidOrigin,
    /// The origin key has small order: any signature would verify against it.
    #[error("origin is a weak (small-order) Ed25519 public key")]
    WeakOrigin,
    /// The signature's R is not a canonically encoded point of large order.
    #[error("signature R is not a canonical point of large order (strict verification)")]
    InvalidSignatureR,
    /// The signature does not verify over the signed bytes.
    #[error("signature does not verify against the origin key and the signed bytes")]
    BadSignature,
}

/// Why a payload could not be sealed or opened. Neither changes any state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The key ring holds no key with this id (retired, or never distributed here).
    #[error("no sealing key with id {key_id:?} in the key ring")]
    UnknownKeyId {
        /// The key id named by the event.
        key_id: String,
    },
    /// Authentication failed: wrong key, or the ciphertext or header was altered.
    #[error(
        "sealed payload failed authentication under key {key_id:?} (wrong key, or ciphertext or header altered)"
    )]
    OpenFailed {
        /// The key id named by the event.
        key_id: String,
    },
    /// Sealing was asked for a payload that is already sealed.
    #[error("payload is already sealed")]
    AlreadySealed,
    /// Adding a key would exceed [`crate::limits::KEYRING_LEN_MAX`].
    #[error(
        "key ring holds {len} keys, at the limit KEYRING_LEN_MAX = {max}; retire old keys first"
    )]
    KeyRingFull {
        /// Keys held.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A key id that is already in the ring with different key material.
    #[error("key id {key_id:?} is already in the key ring with a different key")]
    DuplicateKeyId {
        /// The key id.
        key_id: String,
    },
    /// Retiring the active key was asked for.
    #[error("key {key_id:?} is the active key and cannot be retired; rotate first")]
    RetireActive {
        /// The key id.
        key_id: String,
    },
    /// The event could not be encoded (a field breaks a limit).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}
