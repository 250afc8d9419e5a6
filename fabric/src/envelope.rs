//! The event envelope's fields, their grammars, and the verified and unverified event types.
//!
//! An event is built as an [`EventDraft`], signed by a [`crate::Signer`] into an [`Event`],
//! and carried as bytes (`Event::encode`). Bytes from the network decode into an
//! [`UnverifiedEvent`]; only signature verification turns it into an [`Event`], so code
//! that holds an `Event` knows its producer signed exactly these fields. The byte layout is
//! in `codec.rs` and `docs/wire.md`.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Deref;

use crate::error::EnvelopeError;
use crate::hlc::Hlc;
use crate::limits::*;
use crate::stream::StreamName;

/// The envelope format version this build reads and writes.
pub const ENVELOPE_VERSION: u64 = 1;

/// Length of a sealing nonce (XChaCha20-Poly1305), in bytes.
pub const NONCE_LEN: usize = 24;

/// Length of the Poly1305 tag at the end of every ciphertext, in bytes.
pub const TAG_LEN: usize = 16;

/// An event producer's identity: an Ed25519 public key (32 bytes, RFC 8032 encoding).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OriginKey(pub [u8; 32]);

/// Hashes the first eight bytes only: keys are uniformly distributed (public keys, SHA-256
/// digests), so eight bytes spread them as well as thirty-two (equality still compares all
/// 32). With the unseeded [`KeyHasher`] bucket collisions can be ground either way, as its
/// docs say; with a seeded hasher they cannot. Hashing every byte was a few percent of a
/// simulation, where these keys index most maps.
fn hash_key32<H: std::hash::Hasher>(key: &[u8; 32], state: &mut H) {
    let mut word = [0u8; 8];
    word.copy_from_slice(&key[..8]);
    state.write_u64(u64::from_le_bytes(word));
}

impl std::hash::Hash for OriginKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hash_key32(&self.0, state);
    }
}

/// Byte-lexicographic order of two 32-byte keys, compared as big-endian words, first word
/// first: the same order as comparing the arrays, without a `memcmp` call per comparison
/// (keys are compared in every ordered map of the mesh core; measured: 9% of the
/// simulator's time on a 24-node scenario went to `memcmp` from these comparisons). Keys
/// are public keys or hashes, so the first word nearly always decides.
#[inline]
fn cmp_key32(a: &[u8; 32], b: &[u8; 32]) -> std::cmp::Ordering {
    #[inline(always)]
    fn word(k: &[u8; 32], i: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&k[i * 8..i * 8 + 8]);
        u64::from_be_bytes(w)
    }
    for i in 0..4 {
        match word(a, i).cmp(&word(b, i)) {
            std::cmp::Ordering::Equal => {}
            decided => return decided,
        }
    }
    std::cmp::Ordering::Equal
}

impl Ord for OriginKey {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        cmp_key32(&self.0, &other.0)
    }
}

impl PartialOrd for OriginKey {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for OriginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OriginKey({self})")
    }
}

impl fmt::Display for OriginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// A fast, fixed (unseeded, so deterministic) hasher for hash maps keyed by
/// [`OriginKey`]s and [`EventId`]s, which are already uniformly distributed (public keys
/// and SHA-256 digests): it only folds the bytes into one word (FxHash-style). Not for keys
/// an adversary can grind freely into collisions; SipHash (`RandomState`) was 10% of the
/// simulator's time on a 24-node scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
        for b in chunks.remainder() {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, word: u64) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }
}

/// Builds [`KeyHasher`]s.
pub type KeyBuildHasher = std::hash::BuildHasherDefault<KeyHasher>;

/// An event id: SHA-256 of the signed bytes (see `docs/wire.md`, "Event id").
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EventId(pub [u8; 32]);

impl std::hash::Hash for EventId {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hash_key32(&self.0, state);
    }
}

impl Ord for EventId {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        cmp_key32(&self.0, &other.0)
    }
}

impl PartialOrd for EventId {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({self})")
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// A jurisdiction code: an uppercase ASCII letter, then uppercase letters, digits or `-`,
/// 2 to [`JURISDICTION_LEN_MAX`] bytes (`EU`, `CH`, `US-CA`, `APAC`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Jurisdiction(String);

impl Jurisdiction {
    /// Validates a jurisdiction code.
    pub fn new(code: impl Into<String>) -> Result<Self, EnvelopeError> {
        let code = code.into();
        check_jurisdiction(&code)?;
        Ok(Self(code))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an event's payload may be seen in clear text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Residency {
    /// Anywhere: no residency constraint. Encoded by leaving the field out.
    Unrestricted,
    /// Only inside these jurisdictions (never empty; at most [`RESIDENCY_LEN_MAX`]).
    Only(BTreeSet<Jurisdiction>),
}

impl Residency {
    /// A residency set from jurisdiction codes; fails on an invalid code, an empty set or
    /// more than [`RESIDENCY_LEN_MAX`] codes.
    pub fn only<I, S>(codes: I) -> Result<Self, EnvelopeError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set = codes
            .into_iter()
            .map(Jurisdiction::new)
            .collect::<Result<BTreeSet<_>, _>>()?;
        let residency = Residency::Only(set);
        residency.check()?;
        Ok(residency)
    }

    /// Whether a node in `jurisdiction` may see the payload in clear text.
    pub fn allows(&self, jurisdiction: &Jurisdiction) -> bool {
        match self {
            Residency::Unrestricted => true,
            Residency::Only(set) => set.contains(jurisdiction),
        }
    }

    fn check(&self) -> Result<(), EnvelopeError> {
        if let Residency::Only(set) = self {
            if set.is_empty() {
                return Err(EnvelopeError::InvalidField {
                    field: "security.residency",
                    reason: "an empty residency set allows nowhere; omit the field for no \
                             constraint"
                        .into(),
                });
            }
            check_count(
                "security.residency",
                set.len(),
                "RESIDENCY_LEN_MAX",
                RESIDENCY_LEN_MAX,
            )?;
        }
        Ok(())
    }
}

/// Who produced an event, how it is classified and where it may go. Signed with the event,
/// so every hop can enforce it without trusting the hop before.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecurityContext {
    /// Tenant the event belongs to (1 to [`NAME_LEN_MAX`] bytes).
    pub tenant: String,
    /// Principal that published it (1 to [`NAME_LEN_MAX`] bytes).
    pub principal: String,
    /// Classification label (1 to [`CLASSIFICATION_LEN_MAX`] bytes), mapped to a residency
    /// class by policy.
    pub classification: String,
    /// Jurisdictions where the payload may be in clear text.
    pub residency: Residency,
    /// Access scopes (at most [`SCOPES_LEN_MAX`], each 1 to [`SCOPE_LEN_MAX`] bytes).
    pub scopes: BTreeSet<String>,
    /// Policy epoch in force when the event was stamped.
    pub policy_epoch: u64,
}

impl SecurityContext {
    /// Checks every field against its grammar and limit.
    pub fn check(&self) -> Result<(), EnvelopeError> {
        check_label(
            "security.tenant",
            &self.tenant,
            "NAME_LEN_MAX",
            NAME_LEN_MAX,
        )?;
        check_label(
            "security.principal",
            &self.principal,
            "NAME_LEN_MAX",
            NAME_LEN_MAX,
        )?;
        check_label(
            "security.classification",
            &self.classification,
            "CLASSIFICATION_LEN_MAX",
            CLASSIFICATION_LEN_MAX,
        )?;
        self.residency.check()?;
        check_count(
            "security.scopes",
            self.scopes.len(),
            "SCOPES_LEN_MAX",
            SCOPES_LEN_MAX,
        )?;
        for scope in &self.scopes {
            check_scope(scope)?;
        }
        Ok(())
    }
}

/// W3C Trace Context carried with the event so a trace follows it across regions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// `traceparent`, version `00`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`,
    /// lowercase, ids not all zero.
    pub traceparent: String,
    /// `tracestate`, at most [`TRACESTATE_LEN_MAX`] bytes of printable ASCII.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Checks both headers against the W3C grammar and the limits.
    pub fn check(&self) -> Result<(), EnvelopeError> {
        check_traceparent(&self.traceparent)?;
        if let Some(state) = &self.tracestate {
            check_len(
                "trace.tracestate",
                state.len(),
                "TRACESTATE_LEN_MAX",
                TRACESTATE_LEN_MAX,
            )?;
            if state.is_empty() || !state.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
                return Err(EnvelopeError::InvalidField {
                    field: "trace.tracestate",
                    reason: "must be 1 or more bytes of printable ASCII".into(),
                });
            }
        }
        Ok(())
    }
}

/// Identifies a sealing key in a [`crate::KeyRing`]: 1 to [`KEY_ID_LEN_MAX`] bytes of
/// `A-Z a-z 0-9 . _ : / -`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// Validates a key id.
    pub fn new(id: impl Into<String>) -> Result<Self, EnvelopeError> {
        let id = id.into();
        check_key_id(&id)?;
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A payload encrypted with XChaCha20-Poly1305 under a key from a key ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SealedPayload {
    /// Which key sealed it.
    pub key_id: KeyId,
    /// The random 24-byte nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// An event's payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Payload {
    /// Bytes in clear text (may be empty).
    Clear(Vec<u8>),
    /// Encrypted bytes; only holders of the key can read them.
    Sealed(SealedPayload),
}

/// Everything an event carries except its origin, signature and id: what a producer fills
/// in before signing.
///
/// `repr(C)`: the fields a relaying node reads first (see [`EventData`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct EventDraft {
    /// Per-origin sequence number, starting at 1 and without gaps per origin.
    pub seq: u64,
    /// Hybrid logical clock timestamp of publication.
    pub hlc: Hlc,
    /// The stream it is published to.
    pub stream: StreamName,
    /// Producer, classification and residency.
    pub security: SecurityContext,
    /// Table key, for keyed streams (1 to [`KEY_LEN_MAX`] bytes).
    pub key: Option<Vec<u8>>,
    /// Media type of the payload (1 to [`CONTENT_TYPE_LEN_MAX`] bytes, printable ASCII).
    pub content_type: String,
    /// The payload, clear or sealed.
    pub payload: Payload,
    /// Trace context, if the producer is traced.
    pub trace: Option<TraceContext>,
}

impl EventDraft {
    /// Checks every field against its grammar and limit. The encoder runs this, so an
    /// event that signs is an event that decodes.
    pub fn check(&self) -> Result<(), EnvelopeError> {
        if let Some(key) = &self.key {
            if key.is_empty() {
                return Err(EnvelopeError::InvalidField {
                    field: "key",
                    reason: "an empty key is not allowed; omit the field for an unkeyed event"
                        .into(),
                });
            }
            check_len("key", key.len(), "KEY_LEN_MAX", KEY_LEN_MAX)?;
        }
        if self.seq == 0 {
            return Err(EnvelopeError::InvalidField {
                field: "seq",
                reason: "per-origin sequence numbers start at 1".into(),
            });
        }
        self.security.check()?;
        check_content_type(&self.content_type)?;
        match &self.payload {
            Payload::Clear(bytes) => check_len(
                "payload.clear",
                bytes.len(),
                "PAYLOAD_LEN_MAX",
                PAYLOAD_LEN_MAX,
            )?,
            Payload::Sealed(sealed) => {
                // The key id's grammar holds by construction (`KeyId::new`).
                check_len(
                    "payload.sealed.ciphertext",
                    sealed.ciphertext.len(),
                    "PAYLOAD_LEN_MAX + TAG_LEN",
                    PAYLOAD_LEN_MAX + TAG_LEN,
                )?;
                if sealed.ciphertext.len() < TAG_LEN {
                    return Err(EnvelopeError::InvalidField {
                        field: "payload.sealed.ciphertext",
                        reason: format!(
                            "{} bytes is shorter than the {TAG_LEN}-byte tag",
                            sealed.ciphertext.len()
                        ),
                    });
                }
            }
        }
        if let Some(trace) = &self.trace {
            trace.check()?;
        }
        Ok(())
    }
}

/// The fields and bytes shared by [`Event`] and [`UnverifiedEvent`].
///
/// `repr(C)`, in this order: what every node reads of every event it handles (id, origin,
/// the signed bytes' length, then the draft's sequence number and stream) sits in the
/// first cache lines of the shared allocation, the signature (read only by a verifier)
/// last. The compiler's own order put the id, origin and signature after the draft's
/// strings and payload, so that each event a node handled cost a cache line more.
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C)]
pub struct EventData {
    pub(crate) id: EventId,
    pub(crate) origin: OriginKey,
    /// `SIGNING_CONTEXT || body`: exactly the bytes the signature covers.
    pub(crate) signed: Vec<u8>,
    pub(crate) draft: EventDraft,
    pub(crate) signature: [u8; 64],
    /// The replication filter's answer for this event (see [`FilterMemo`]).
    pub(crate) memo: FilterMemo,
}

/// A replication filter's memo of what it decided about one event, kept with the shared
/// event: the mesh asks its filter about an event once for every peer it might send it to
/// and on every node that handles the shared copy (a node's subscribers and relays, the
/// simulator's whole mesh), and evaluating the policy each time (a class lookup and the
/// residency set's jurisdictions) was some 4 % of a simulated run's instructions.
///
/// Set once, by the first filter that asks, under that filter's owner id (process-unique;
/// see `weft_policy::PolicyFilter`): a filter with another id (another policy epoch) finds
/// nothing here and evaluates without it, instead of reading another policy's answer. The
/// two words are the owner's own encoding. Not part of the event's identity: equal events
/// compare equal whatever their memos hold, and a clone starts empty.
#[derive(Default)]
pub struct FilterMemo(std::sync::OnceLock<(u64, [u64; 2])>);

impl FilterMemo {
    /// The words `owner` memoized, if `owner` is the filter that set the memo.
    #[inline]
    pub fn get(&self, owner: u64) -> Option<[u64; 2]> {
        self.0
            .get()
            .filter(|(set_by, _)| *set_by == owner)
            .map(|(_, words)| *words)
    }

    /// Memoizes `words` for `owner` unless a filter already set the memo (the first answer
    /// stays).
    #[inline]
    pub fn set(&self, owner: u64, words: [u64; 2]) {
        let _ = self.0.set((owner, words));
    }
}

impl Clone for FilterMemo {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for FilterMemo {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for FilterMemo {}

impl fmt::Debug for FilterMemo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FilterMemo")
    }
}

impl EventData {
    /// The event id (SHA-256 of the signed bytes).
    pub fn id(&self) -> EventId {
        self.id
    }
    /// The producer's public key.
    pub fn origin(&self) -> OriginKey {
        self.origin
    }
    /// The replication filter's memo for this event.
    pub fn filter_memo(&self) -> &FilterMemo {
        &self.memo
    }
    /// All signed fields but the origin.
    pub fn draft(&self) -> &EventDraft {
        &self.draft
    }
    /// The stream.
    pub fn stream(&self) -> &StreamName {
        &self.draft.stream
    }
    /// The table key, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.draft.key.as_deref()
    }
    /// Per-origin sequence number.
    pub fn seq(&self) -> u64 {
        self.draft.seq
    }
    /// HLC timestamp.
    pub fn hlc(&self) -> Hlc {
        self.draft.hlc
    }
    /// The security context.
    pub fn security(&self) -> &SecurityContext {
        &self.draft.security
    }
    /// The payload's media type.
    pub fn content_type(&self) -> &str {
        &self.draft.content_type
    }
    /// The payload.
    pub fn payload(&self) -> &Payload {
        &self.draft.payload
    }
    /// The trace context, if any.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.draft.trace.as_ref()
    }
    /// The 64-byte Ed25519 signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
    /// Exactly the bytes the signature covers: the signing context then the body.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.signed
    }
    /// The canonical CBOR body (the signed bytes without the signing context).
    pub fn body_bytes(&self) -> &[u8] {
        &self.signed[crate::codec::SIGNING_CONTEXT.len()..]
    }
    /// The total order of events: by HLC, then origin, then id.
    pub fn order_key(&self) -> OrderKey {
        OrderKey {
            hlc: self.draft.hlc,
            origin: self.origin,
            id: self.id,
        }
    }
    /// The complete encoded envelope.
    pub fn encode(&self) -> Vec<u8> {
        crate::codec::encode_envelope(self.body_bytes(), &self.signature)
    }
}

/// A decoded event whose signature has not been checked yet. Call
/// [`UnverifiedEvent::verify`] or [`crate::verify_batch`]. Deliberately not a `Deref` to
/// [`EventData`]: its fields are claims until verified, so reading them (and opening the
/// payload) goes through [`Event`]; only what verification, routing of errors and
/// diagnostics need is exposed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedEvent(pub(crate) EventData);

impl UnverifiedEvent {
    /// The event id (derived from the bytes; a claim about nothing).
    pub fn id(&self) -> EventId {
        self.0.id
    }
    /// The origin the event claims.
    pub fn origin(&self) -> OriginKey {
        self.0.origin
    }
    /// The signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.0.signature
    }
    /// Exactly the bytes the signature must cover.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.0.signed
    }
    /// The canonical CBOR body.
    pub fn body_bytes(&self) -> &[u8] {
        self.0.body_bytes()
    }
    /// The complete encoded envelope.
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode()
    }
    /// The fields as claimed by an unauthenticated producer: for diagnostics (what did the
    /// rejected event say?), never for decisions.
    pub fn claimed(&self) -> &EventDraft {
        &self.0.draft
    }
    /// Every field as the bytes claim them, unverified: for showing events that this node
    /// verified when it stored them (reading its own log back), never for decisions about
    /// events from elsewhere.
    pub fn claimed_data(&self) -> &EventData {
        &self.0
    }
}

/// An event whose producer's signature verified over exactly these fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event(pub(crate) EventData);

impl Deref for Event {
    type Target = EventData;
    fn deref(&self) -> &EventData {
        &self.0
    }
}

/// The total order of events: `(hlc, origin, id)`. An honest origin never issues one HLC
/// twice (its clock is strictly monotonic), so `(hlc, origin)` decides; the id breaks the
/// tie an equivocating origin (or one that lost its clock state) could create, so every
/// replica still orders every pair of distinct events the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    /// Primary: the HLC timestamp.
    pub hlc: Hlc,
    /// Then the origin's public key bytes.
    pub origin: OriginKey,
    /// Last: the event id.
    pub id: EventId,
}

// ---- field grammars, shared by the encoder and the decoder ----

pub(crate) fn check_len(
    field: &'static str,
    len: usize,
    limit: &'static str,
    max: usize,
) -> Result<(), EnvelopeError> {
    if len > max {
        return Err(EnvelopeError::FieldTooLong {
            field,
            len,
            limit,
            max,
        });
    }
    Ok(())
}

pub(crate) fn check_count(
    field: &'static str,
    count: usize,
    limit: &'static str,
    max: usize,
) -> Result<(), EnvelopeError> {
    if count > max {
        return Err(EnvelopeError::TooManyEntries {
            field,
            count,
            limit,
            max,
        });
    }
    Ok(())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Tenant, principal, classification: non-empty UTF-8 without control characters.
pub(crate) fn check_label(
    field: &'static str,
    value: &str,
    limit: &'static str,
    max: usize,
) -> Result<(), EnvelopeError> {
    check_len(field, value.len(), limit, max)?;
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(invalid(
            field,
            format!("control character {c:?} is not allowed"),
        ));
    }
    Ok(())
}

pub(crate) fn check_jurisdiction(code: &str) -> Result<(), EnvelopeError> {
    const FIELD: &str = "security.residency";
    check_len(
        FIELD,
        code.len(),
        "JURISDICTION_LEN_MAX",
        JURISDICTION_LEN_MAX,
    )?;
    let bytes = code.as_bytes();
    let ok = bytes.len() >= 2
        && bytes[0].is_ascii_uppercase()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'-');
    if !ok {
        return Err(invalid(
            FIELD,
            format!("jurisdiction code {code:?} must match [A-Z][A-Z0-9-]+"),
        ));
    }
    Ok(())
}

pub(crate) fn check_scope(scope: &str) -> Result<(), EnvelopeError> {
    const FIELD: &str = "security.scopes";
    check_len(FIELD, scope.len(), "SCOPE_LEN_MAX", SCOPE_LEN_MAX)?;
    if scope.is_empty() || !scope.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(invalid(
            FIELD,
            format!("scope {scope:?} must be 1 or more bytes of printable ASCII without spaces"),
        ));
    }
    Ok(())
}

pub(crate) fn check_content_type(value: &str) -> Result<(), EnvelopeError> {
    const FIELD: &str = "content_type";
    check_len(
        FIELD,
        value.len(),
        "CONTENT_TYPE_LEN_MAX",
        CONTENT_TYPE_LEN_MAX,
    )?;
    if value.is_empty() || !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(invalid(FIELD, "must be 1 or more bytes of printable ASCII"));
    }
    Ok(())
}

pub(crate) fn check_key_id(id: &str) -> Result<(), EnvelopeError> {
    const FIELD: &str = "payload.sealed.key_id";
    check_len(FIELD, id.len(), "KEY_ID_LEN_MAX", KEY_ID_LEN_MAX)?;
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:/".contains(&b));
    if !ok {
        return Err(invalid(
            FIELD,
            format!("key id {id:?} must be 1 or more of A-Z a-z 0-9 . _ : / -"),
        ));
    }
    Ok(())
}

fn check_traceparent(value: &str) -> Result<(), EnvelopeError> {
    const FIELD: &str = "trace.traceparent";
    if value.len() != TRACEPARENT_LEN {
        return Err(invalid(
            FIELD,
            format!(
                "must be exactly TRACEPARENT_LEN = {TRACEPARENT_LEN} bytes, found {}",
                value.len()
            ),
        ));
    }
    let parts: Vec<&str> = value.split('-').collect();
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let shape_ok = parts.len() == 4
        && parts[0] == "00"
        && [(parts[1], 32), (parts[2], 16), (parts[3], 2)]
            .iter()
            .all(|(p, n)| p.len() == *n && lower_hex(p));
    if !shape_ok {
        return Err(invalid(
            FIELD,
            "must be 00-<32 lowercase hex>-<16 lowercase hex>-<2 lowercase hex>",
        ));
    }
    if parts[1].bytes().all(|b| b == b'0') || parts[2].bytes().all(|b| b == b'0') {
        return Err(invalid(
            FIELD,
            "trace id and parent id must not be all zeros",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_memo_answers_only_its_owner_and_keeps_the_first_answer() {
        let memo = FilterMemo::default();
        assert_eq!(memo.get(1), None);
        memo.set(1, [7, 8]);
        assert_eq!(memo.get(1), Some([7, 8]));
        assert_eq!(memo.get(2), None, "another owner never reads it");
        memo.set(2, [9, 9]);
        memo.set(1, [0, 0]);
        assert_eq!(memo.get(1), Some([7, 8]), "the first answer stays");
        assert_eq!(memo.get(2), None);
        assert_eq!(memo.clone().get(1), None, "a clone starts empty");
        assert_eq!(
            memo,
            FilterMemo::default(),
            "not part of an event's identity"
        );
    }

    proptest::proptest! {
        /// Keys and ids order exactly as their bytes do (maps iterate in this order, so
        /// digests and reports depend on it), including keys sharing a long prefix.
        #[test]
        fn key_order_is_byte_order(
            a in proptest::array::uniform32(proptest::prelude::any::<u8>()),
            at in 0usize..32,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let mut b = a;
            b[at] = byte;
            proptest::prop_assert_eq!(OriginKey(a).cmp(&OriginKey(b)), a.cmp(&b));
            proptest::prop_assert_eq!(OriginKey(b).cmp(&OriginKey(a)), b.cmp(&a));
            proptest::prop_assert_eq!(EventId(a).cmp(&EventId(b)), a.cmp(&b));
            proptest::prop_assert_eq!(EventId(a).partial_cmp(&EventId(b)), Some(a.cmp(&b)));
        }
    }

    #[test]
    fn jurisdiction_grammar() {
        for ok in ["EU", "US-CA", "APAC", "CH"] {
            assert!(Jurisdiction::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "E", "eu", "1EU", "E U", "EU_1", "ABCDEFGHIJKLMNOPQ"] {
            assert!(Jurisdiction::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn residency_rejects_empty_and_oversized_sets() {
        assert!(Residency::only(Vec::<String>::new()).is_err());
        let many: Vec<String> = (0..=RESIDENCY_LEN_MAX).map(|i| format!("J{i}")).collect();
        let err = Residency::only(many).unwrap_err();
        assert!(err.to_string().contains("RESIDENCY_LEN_MAX"), "{err}");
        let eu = Residency::only(["EU", "CH"]).unwrap();
        assert!(eu.allows(&Jurisdiction::new("EU").unwrap()));
        assert!(!eu.allows(&Jurisdiction::new("US").unwrap()));
        assert!(Residency::Unrestricted.allows(&Jurisdiction::new("US").unwrap()));
    }

    #[test]
    fn traceparent_grammar() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tc = |tp: &str| TraceContext {
            traceparent: tp.into(),
            tracestate: None,
        };
        assert!(tc(good).check().is_ok());
        assert!(tc(&good.to_uppercase()).check().is_err());
        assert!(
            tc("00-00000000000000000000000000000000-00f067aa0ba902b7-01")
                .check()
                .is_err()
        );
        assert!(
            tc("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .check()
                .is_err()
        );
        assert!(tc(&good[..54]).check().is_err());
    }

    #[test]
    fn key_id_and_labels() {
        assert!(KeyId::new("tenant-a/2026-11:1").is_ok());
        assert!(KeyId::new("").is_err());
        assert!(KeyId::new("a b").is_err());
        assert!(check_label("security.tenant", "acme", "NAME_LEN_MAX", NAME_LEN_MAX).is_ok());
        let err = check_label("security.tenant", "a\nb", "NAME_LEN_MAX", NAME_LEN_MAX).unwrap_err();
        assert!(err.to_string().contains("security.tenant"), "{err}");
    }
}
