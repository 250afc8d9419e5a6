//! Canonical CBOR encoding and strict decoding of the event envelope (`docs/wire.md`).
//!
//! Encoding writes RFC 8949 §4.2.1 core deterministic CBOR through cbor4ii: shortest heads,
//! definite lengths, map keys in ascending order, sets sorted. Decoding walks the fixed
//! schema with cbor4ii's borrowing decoder and rejects, with the offset: other major types,
//! indefinite lengths, unknown, duplicate or unordered keys, over-limit lengths (checked
//! against the declared length before anything is copied), and trailing bytes. Whatever
//! survives is re-encoded and compared with the input byte for byte, which rejects every
//! remaining non-canonical form (non-shortest heads in particular), so one event has
//! exactly one accepted encoding.

use std::collections::BTreeSet;
use std::convert::Infallible;

use cbor4ii::core::dec::{self, Decode, Reference};
use cbor4ii::core::enc::{self, Encode};
use cbor4ii::core::types;

use crate::envelope::*;
use crate::error::EnvelopeError;
use crate::hlc::Hlc;
use crate::limits::*;
use crate::stream::StreamName;

/// Prefix of the signed bytes: domain separation, so a Weft event signature can never be
/// replayed as a signature over any other kind of message signed by the same key.
pub const SIGNING_CONTEXT: &[u8] = b"weft/event\0";

/// Keys of the body map (`docs/wire.md` has the table).
mod key {
    pub(super) const VERSION: u64 = 0;
    pub(super) const STREAM: u64 = 1;
    pub(super) const KEY: u64 = 2;
    pub(super) const ORIGIN: u64 = 3;
    pub(super) const SEQ: u64 = 4;
    pub(super) const HLC: u64 = 5;
    pub(super) const SECURITY: u64 = 6;
    pub(super) const CONTENT_TYPE: u64 = 7;
    pub(super) const PAYLOAD_CLEAR: u64 = 8;
    pub(super) const PAYLOAD_SEALED: u64 = 9;
    pub(super) const TRACE: u64 = 10;

    pub(super) const SEC_TENANT: u64 = 0;
    pub(super) const SEC_PRINCIPAL: u64 = 1;
    pub(super) const SEC_CLASSIFICATION: u64 = 2;
    pub(super) const SEC_RESIDENCY: u64 = 3;
    pub(super) const SEC_SCOPES: u64 = 4;
    pub(super) const SEC_POLICY_EPOCH: u64 = 5;

    pub(super) const SEALED_KEY_ID: u64 = 0;
    pub(super) const SEALED_NONCE: u64 = 1;
    pub(super) const SEALED_CIPHERTEXT: u64 = 2;

    pub(super) const TRACE_PARENT: u64 = 0;
    pub(super) const TRACE_STATE: u64 = 1;
}

// ---------------------------------------------------------------- encoding

/// A `Vec` writer whose error type is uninhabited.
struct Out(Vec<u8>);

impl enc::Write for Out {
    type Error = Infallible;
    fn push(&mut self, input: &[u8]) -> Result<(), Infallible> {
        self.0.extend_from_slice(input);
        Ok(())
    }
}

impl Out {
    fn put<T: Encode>(&mut self, value: T) {
        // `Out` cannot fail; cbor4ii's error enum is non-exhaustive, hence no irrefutable
        // pattern.
        if let Err(e) = value.encode(self) {
            unreachable!("writing CBOR to a Vec failed: {e}")
        }
    }
    fn map(&mut self, len: usize) {
        if let Err(e) = types::Map::bounded(len, self) {
            unreachable!("writing CBOR to a Vec failed: {e}")
        }
    }
    fn array(&mut self, len: usize) {
        if let Err(e) = types::Array::bounded(len, self) {
            unreachable!("writing CBOR to a Vec failed: {e}")
        }
    }
    fn bytes(&mut self, value: &[u8]) {
        self.put(types::Bytes(value));
    }
}

/// Which body fields to write: the full body, or the sealing header (everything but the
/// payload), used as associated data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Body,
    SealHeader,
}

/// The signed bytes of `draft` by `origin`: `SIGNING_CONTEXT` and the canonical CBOR body.
/// Checks every field first. The body is encoded straight after the context, in one
/// buffer, rather than encoded and then copied behind it ([`signed_bytes`] does that for a
/// body decoded from a peer).
pub(crate) fn encode_signed(
    origin: &OriginKey,
    draft: &EventDraft,
) -> Result<Vec<u8>, EnvelopeError> {
    draft.check()?;
    let out = encode_map(SIGNING_CONTEXT, origin, draft, Part::Body);
    // The body, plus the outer array and bstr heads and the signature, must fit the limit.
    let total = envelope_len(out.len() - SIGNING_CONTEXT.len());
    if total > EVENT_LEN_MAX {
        return Err(EnvelopeError::EventTooLarge {
            len: total,
            max: EVENT_LEN_MAX,
        });
    }
    Ok(out)
}

/// The associated data for sealing: the canonical body map without the payload field.
pub(crate) fn seal_header(origin: &OriginKey, draft: &EventDraft) -> Vec<u8> {
    encode_map(&[], origin, draft, Part::SealHeader)
}

/// `prefix` followed by the canonical map of `part` of the event.
fn encode_map(prefix: &[u8], origin: &OriginKey, draft: &EventDraft, part: Part) -> Vec<u8> {
    let payload_len = match draft.payload {
        Payload::Clear(ref p) => p.len(),
        Payload::Sealed(ref s) => s.ciphertext.len(),
    };
    let mut out = Out(Vec::with_capacity(prefix.len() + 256 + payload_len));
    out.0.extend_from_slice(prefix);
    let fields = 7
        + usize::from(draft.key.is_some())
        + usize::from(draft.trace.is_some())
        + usize::from(part == Part::Body);
    out.map(fields);
    out.put(key::VERSION);
    out.put(ENVELOPE_VERSION);
    out.put(key::STREAM);
    out.put(draft.stream.as_str());
    if let Some(k) = &draft.key {
        out.put(key::KEY);
        out.bytes(k);
    }
    out.put(key::ORIGIN);
    out.bytes(&origin.0);
    out.put(key::SEQ);
    out.put(draft.seq);
    out.put(key::HLC);
    out.put(draft.hlc.as_u64());
    out.put(key::SECURITY);
    encode_security(&mut out, &draft.security);
    out.put(key::CONTENT_TYPE);
    out.put(draft.content_type.as_str());
    if part == Part::Body {
        match &draft.payload {
            Payload::Clear(bytes) => {
                out.put(key::PAYLOAD_CLEAR);
                out.bytes(bytes);
            }
            Payload::Sealed(sealed) => {
                out.put(key::PAYLOAD_SEALED);
                out.map(3);
                out.put(key::SEALED_KEY_ID);
                out.put(sealed.key_id.as_str());
                out.put(key::SEALED_NONCE);
                out.bytes(&sealed.nonce);
                out.put(key::SEALED_CIPHERTEXT);
                out.bytes(&sealed.ciphertext);
            }
        }
    }
    if let Some(trace) = &draft.trace {
        out.put(key::TRACE);
        out.map(1 + usize::from(trace.tracestate.is_some()));
        out.put(key::TRACE_PARENT);
        out.put(trace.traceparent.as_str());
        if let Some(state) = &trace.tracestate {
            out.put(key::TRACE_STATE);
            out.put(state.as_str());
        }
    }
    out.0
}

fn encode_security(out: &mut Out, sec: &SecurityContext) {
    let residency = match &sec.residency {
        Residency::Unrestricted => None,
        Residency::Only(set) => Some(set),
    };
    let fields = 4 + usize::from(residency.is_some()) + usize::from(!sec.scopes.is_empty());
    out.map(fields);
    out.put(key::SEC_TENANT);
    out.put(sec.tenant.as_str());
    out.put(key::SEC_PRINCIPAL);
    out.put(sec.principal.as_str());
    out.put(key::SEC_CLASSIFICATION);
    out.put(sec.classification.as_str());
    if let Some(set) = residency {
        out.put(key::SEC_RESIDENCY);
        out.array(set.len());
        for j in set {
            out.put(j.as_str());
        }
    }
    if !sec.scopes.is_empty() {
        out.put(key::SEC_SCOPES);
        out.array(sec.scopes.len());
        for s in &sec.scopes {
            out.put(s.as_str());
        }
    }
    out.put(key::SEC_POLICY_EPOCH);
    out.put(sec.policy_epoch);
}

/// `SIGNING_CONTEXT || body`.
pub(crate) fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut signed = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    signed.extend_from_slice(SIGNING_CONTEXT);
    signed.extend_from_slice(body);
    signed
}

/// The event id: SHA-256 of the signed bytes.
///
/// ring's SHA-256, not sha2's: every node hashes every event it receives, and on a CPU
/// without SHA extensions ring's assembly takes about half the time of sha2's portable code
/// (the simulator's publishers spent a tenth of its instructions here). A test checks
/// it against sha2 (`event_id_is_sha256_of_the_signed_bytes`).
pub(crate) fn event_id(signed: &[u8]) -> EventId {
    let digest = ring::digest::digest(&ring::digest::SHA256, signed);
    let mut id = [0; 32];
    id.copy_from_slice(digest.as_ref());
    EventId(id)
}

/// Length of the envelope around a body of `body_len` bytes.
pub(crate) fn envelope_len(body_len: usize) -> usize {
    let head = match body_len {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    };
    1 + head + body_len + 2 + SIGNATURE_LEN
}

/// The outer envelope: `[body: bstr, signature: bstr .size 64]`.
pub(crate) fn encode_envelope(body: &[u8], signature: &[u8; 64]) -> Vec<u8> {
    let mut out = Out(Vec::with_capacity(envelope_len(body.len())));
    out.array(2);
    out.bytes(body);
    out.bytes(signature);
    out.0
}

// ---------------------------------------------------------------- decoding

/// Decodes and checks an envelope. The result still needs its signature verified.
pub fn decode(input: &[u8]) -> Result<UnverifiedEvent, EnvelopeError> {
    if input.len() > EVENT_LEN_MAX {
        return Err(EnvelopeError::EventTooLarge {
            len: input.len(),
            max: EVENT_LEN_MAX,
        });
    }
    let mut r = Reader::new(input, 0);
    let len = r.array_len("envelope", ENVELOPE_ITEMS, "ENVELOPE_ITEMS")?;
    if len != 2 {
        return Err(EnvelopeError::InvalidField {
            field: "envelope",
            reason: format!("must be an array of 2 items (body, signature), found {len}"),
        });
    }
    let body = r.bytes("body", EVENT_LEN_MAX, "EVENT_LEN_MAX")?;
    let body_offset = r.pos - body.len();
    let sig_offset = r.pos;
    let sig = r.bytes("signature", SIGNATURE_LEN, "SIGNATURE_LEN")?;
    let signature: [u8; 64] = sig.try_into().map_err(|_| EnvelopeError::InvalidField {
        field: "signature",
        reason: format!(
            "must be 64 bytes, found {} (at byte {sig_offset})",
            sig.len()
        ),
    })?;
    if r.pos != input.len() {
        return Err(EnvelopeError::TrailingBytes {
            offset: r.pos,
            count: input.len() - r.pos,
        });
    }
    let (origin, draft) = decode_body(body, body_offset)?;

    // Canonical check of the outer heads and of the body.
    let canonical_body = encode_map(&[], &origin, &draft, Part::Body);
    if let Some(i) = first_difference(&canonical_body, body) {
        return Err(EnvelopeError::NonCanonical {
            offset: body_offset + i,
        });
    }
    // The outer structure is canonical when its two heads are the shortest: compare the
    // head bytes rather than rebuilding a copy of the whole envelope.
    // (The signature head is checked the same way: a 64-byte bstr has exactly one head.)
    let mut expected_heads = vec![0x82];
    expected_heads.extend_from_slice(&encode_bstr_head(body.len()));
    if let Some(i) = first_difference(&expected_heads, &input[..body_offset]) {
        return Err(EnvelopeError::NonCanonical { offset: i });
    }
    if input[sig_offset..sig_offset + 2] != [0x58, 0x40] {
        return Err(EnvelopeError::NonCanonical { offset: sig_offset });
    }

    let signed = signed_bytes(body);
    let id = event_id(&signed);
    Ok(UnverifiedEvent(EventData {
        origin,
        draft,
        signed,
        signature,
        id,
        memo: FilterMemo::default(),
    }))
}

/// The canonical head of a byte string of `len` bytes.
fn encode_bstr_head(len: usize) -> Vec<u8> {
    let mut out = Out(Vec::with_capacity(9));
    if let Err(e) = types::Bytes::bounded(len, &mut out) {
        unreachable!("writing CBOR to a Vec failed: {e}")
    }
    out.0
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// A cursor over the input that knows its absolute offset, for error messages.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` in the whole envelope.
    base: usize,
}

impl<'a> dec::Read<'a> for Reader<'a> {
    type Error = Infallible;

    fn fill<'s>(&'s mut self, want: usize) -> Result<Reference<'a, 's>, Infallible> {
        let end = self.pos.saturating_add(want).min(self.buf.len());
        Ok(Reference::Long(&self.buf[self.pos..end]))
    }

    fn advance(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.buf.len());
    }
}

const MAJOR_UNSIGNED: u8 = 0;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
/// Additional-information value marking an indefinite length.
const INDEFINITE: u8 = 31;

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Checks the next item's major type, and that its length is definite.
    fn expect(
        &self,
        field: &'static str,
        major: u8,
        expected: &'static str,
    ) -> Result<(), EnvelopeError> {
        let Some(&byte) = self.buf.get(self.pos) else {
            return Err(EnvelopeError::Truncated {
                field,
                offset: self.offset(),
            });
        };
        if byte >> 5 != major {
            return Err(EnvelopeError::UnexpectedType {
                field,
                offset: self.offset(),
                expected,
                found: byte,
            });
        }
        if byte & 0x1f == INDEFINITE && major != MAJOR_UNSIGNED {
            return Err(EnvelopeError::IndefiniteLength {
                field,
                offset: self.offset(),
            });
        }
        Ok(())
    }

    fn cbor_error(
        &self,
        field: &'static str,
        offset: usize,
        e: dec::Error<Infallible>,
    ) -> EnvelopeError {
        match e {
            dec::Error::Eof { .. } | dec::Error::RequireLength { .. } => {
                EnvelopeError::Truncated { field, offset }
            }
            other => EnvelopeError::Malformed {
                field,
                offset,
                detail: format!("{other:?}"),
            },
        }
    }

    fn uint(&mut self, field: &'static str) -> Result<u64, EnvelopeError> {
        self.expect(field, MAJOR_UNSIGNED, "an unsigned integer")?;
        let at = self.offset();
        u64::decode(self).map_err(|e| self.cbor_error(field, at, e))
    }

    /// A definite-length container head; `count` is checked against `max` before any item
    /// is read.
    fn container_len(
        &mut self,
        field: &'static str,
        major: u8,
        expected: &'static str,
        max: usize,
        limit: &'static str,
    ) -> Result<usize, EnvelopeError> {
        self.expect(field, major, expected)?;
        let at = self.offset();
        let len = if major == MAJOR_MAP {
            types::Map::len(self)
        } else {
            types::Array::len(self)
        }
        .map_err(|e| self.cbor_error(field, at, e))?
        .ok_or(EnvelopeError::IndefiniteLength { field, offset: at })?;
        check_count(field, len, limit, max)?;
        Ok(len)
    }

    fn array_len(
        &mut self,
        field: &'static str,
        max: usize,
        limit: &'static str,
    ) -> Result<usize, EnvelopeError> {
        self.container_len(field, MAJOR_ARRAY, "an array", max, limit)
    }

    fn map_len(
        &mut self,
        field: &'static str,
        max: usize,
        limit: &'static str,
    ) -> Result<usize, EnvelopeError> {
        self.container_len(field, MAJOR_MAP, "a map", max, limit)
    }

    /// Reads the length head of a byte or text string and checks it against `max` before
    /// borrowing the content.
    fn string_len(
        &mut self,
        field: &'static str,
        major: u8,
        max: usize,
        limit: &'static str,
    ) -> Result<(usize, usize), EnvelopeError> {
        let expected = if major == MAJOR_BYTES {
            "a byte string"
        } else {
            "a text string"
        };
        self.expect(field, major, expected)?;
        let at = self.offset();
        // The head of a string is an unsigned integer head with another major type; read
        // it by hand (cbor4ii only exposes it fused with the content).
        let first = self.buf[self.pos];
        let info = first & 0x1f;
        let (len, head_len) = match info {
            0..=23 => (u64::from(info), 1),
            24..=27 => {
                let n = 1usize << (info - 24);
                let Some(raw) = self.buf.get(self.pos + 1..self.pos + 1 + n) else {
                    return Err(EnvelopeError::Truncated { field, offset: at });
                };
                (
                    raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
                    1 + n,
                )
            }
            _ => {
                return Err(EnvelopeError::Malformed {
                    field,
                    offset: at,
                    detail: format!("reserved additional information {info}"),
                });
            }
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        check_len(field, len, limit, max)?;
        if self.buf.len() - self.pos - head_len < len {
            return Err(EnvelopeError::Truncated { field, offset: at });
        }
        Ok((at, len))
    }

    fn bytes(
        &mut self,
        field: &'static str,
        max: usize,
        limit: &'static str,
    ) -> Result<&'a [u8], EnvelopeError> {
        let (at, _) = self.string_len(field, MAJOR_BYTES, max, limit)?;
        let types::Bytes(b) =
            <types::Bytes<&'a [u8]>>::decode(self).map_err(|e| self.cbor_error(field, at, e))?;
        Ok(b)
    }

    fn text(
        &mut self,
        field: &'static str,
        max: usize,
        limit: &'static str,
    ) -> Result<&'a str, EnvelopeError> {
        let (at, _) = self.string_len(field, MAJOR_TEXT, max, limit)?;
        <&'a str>::decode(self).map_err(|e| match e {
            dec::Error::RequireUtf8 { .. } => EnvelopeError::InvalidField {
                field,
                reason: format!("text at byte {at} is not valid UTF-8"),
            },
            other => self.cbor_error(field, at, other),
        })
    }

    /// Reads the next map key and checks it is greater than the previous one.
    fn map_key(
        &mut self,
        map: &'static str,
        previous: &mut Option<u64>,
    ) -> Result<(u64, usize), EnvelopeError> {
        let at = self.offset();
        let k = self.uint(map)?;
        if let Some(p) = *previous
            && k <= p
        {
            return Err(EnvelopeError::KeyOrder {
                map,
                key: k,
                previous: p,
                offset: at,
            });
        }
        *previous = Some(k);
        Ok((k, at))
    }

    /// A set of text strings in strictly ascending byte order.
    fn text_set(
        &mut self,
        field: &'static str,
        count_max: usize,
        count_limit: &'static str,
        item_max: usize,
        item_limit: &'static str,
    ) -> Result<Vec<&'a str>, EnvelopeError> {
        let n = self.array_len(field, count_max, count_limit)?;
        let mut items: Vec<&'a str> = Vec::with_capacity(n);
        for _ in 0..n {
            let at = self.offset();
            let item = self.text(field, item_max, item_limit)?;
            if items
                .last()
                .is_some_and(|prev| prev.as_bytes() >= item.as_bytes())
            {
                return Err(EnvelopeError::SetOrder { field, offset: at });
            }
            items.push(item);
        }
        Ok(items)
    }
}

fn decode_body(body: &[u8], base: usize) -> Result<(OriginKey, EventDraft), EnvelopeError> {
    const MAP: &str = "event";
    let mut r = Reader::new(body, base);
    let n = r.map_len(MAP, EVENT_FIELDS, "EVENT_FIELDS")?;
    let mut prev = None;

    let mut version = None;
    let mut stream = None;
    let mut event_key = None;
    let mut origin = None;
    let mut seq = None;
    let mut hlc = None;
    let mut security = None;
    let mut content_type = None;
    let mut payload = None;
    let mut trace = None;

    for _ in 0..n {
        let (k, at) = r.map_key(MAP, &mut prev)?;
        match k {
            key::VERSION => {
                let v = r.uint("version")?;
                if v != ENVELOPE_VERSION {
                    return Err(EnvelopeError::UnsupportedVersion {
                        found: v,
                        supported: ENVELOPE_VERSION,
                    });
                }
                version = Some(v);
            }
            // Every field after the version: a map of another version must not be read
            // with this version's schema.
            _ if version.is_none() => return Err(EnvelopeError::MissingField { field: "version" }),
            key::STREAM => {
                let s = r.text("stream", STREAM_LEN_MAX, "STREAM_LEN_MAX")?;
                stream = Some(StreamName::new(s).map_err(|e| EnvelopeError::InvalidField {
                    field: "stream",
                    reason: e.to_string(),
                })?);
            }
            key::KEY => event_key = Some(r.bytes("key", KEY_LEN_MAX, "KEY_LEN_MAX")?.to_vec()),
            key::ORIGIN => {
                let b = r.bytes("origin", ORIGIN_LEN, "ORIGIN_LEN")?;
                let arr: [u8; 32] = b.try_into().map_err(|_| EnvelopeError::InvalidField {
                    field: "origin",
                    reason: format!("must be 32 bytes, found {}", b.len()),
                })?;
                origin = Some(OriginKey(arr));
            }
            key::SEQ => seq = Some(r.uint("seq")?),
            key::HLC => hlc = Some(Hlc::from_u64(r.uint("hlc")?)),
            key::SECURITY => security = Some(decode_security(&mut r)?),
            key::CONTENT_TYPE => {
                content_type = Some(
                    r.text("content_type", CONTENT_TYPE_LEN_MAX, "CONTENT_TYPE_LEN_MAX")?
                        .to_owned(),
                );
            }
            key::PAYLOAD_CLEAR => {
                payload = Some(Payload::Clear(
                    r.bytes("payload.clear", PAYLOAD_LEN_MAX, "PAYLOAD_LEN_MAX")?
                        .to_vec(),
                ));
            }
            key::PAYLOAD_SEALED => {
                if payload.is_some() {
                    return Err(EnvelopeError::InvalidField {
                        field: "payload",
                        reason: "both a clear (8) and a sealed (9) payload are present".into(),
                    });
                }
                payload = Some(Payload::Sealed(decode_sealed(&mut r)?));
            }
            key::TRACE => trace = Some(decode_trace(&mut r)?),
            unknown => {
                return Err(EnvelopeError::UnknownField {
                    map: MAP,
                    key: unknown,
                    offset: at,
                });
            }
        }
    }
    // The map holds exactly `n` items; anything after it inside the body bstr is trailing.
    if r.pos != body.len() {
        return Err(EnvelopeError::TrailingBytes {
            offset: r.offset(),
            count: body.len() - r.pos,
        });
    }
    let missing = |field| EnvelopeError::MissingField { field };
    version.ok_or(missing("version"))?;
    let origin = origin.ok_or(missing("origin"))?;
    let draft = EventDraft {
        stream: stream.ok_or(missing("stream"))?,
        key: event_key,
        seq: seq.ok_or(missing("seq"))?,
        hlc: hlc.ok_or(missing("hlc"))?,
        security: security.ok_or(missing("security"))?,
        content_type: content_type.ok_or(missing("content_type"))?,
        payload: payload.ok_or(missing("payload"))?,
        trace,
    };
    draft.check()?;
    Ok((origin, draft))
}

fn decode_security(r: &mut Reader<'_>) -> Result<SecurityContext, EnvelopeError> {
    const MAP: &str = "security";
    let n = r.map_len(MAP, SECURITY_FIELDS, "SECURITY_FIELDS")?;
    let mut prev = None;
    let (mut tenant, mut principal, mut classification) = (None, None, None);
    let mut residency = Residency::Unrestricted;
    let mut scopes = BTreeSet::new();
    let mut epoch = None;
    for _ in 0..n {
        let (k, at) = r.map_key(MAP, &mut prev)?;
        match k {
            key::SEC_TENANT => {
                tenant = Some(
                    r.text("security.tenant", NAME_LEN_MAX, "NAME_LEN_MAX")?
                        .to_owned(),
                )
            }
            key::SEC_PRINCIPAL => {
                principal = Some(
                    r.text("security.principal", NAME_LEN_MAX, "NAME_LEN_MAX")?
                        .to_owned(),
                );
            }
            key::SEC_CLASSIFICATION => {
                classification = Some(
                    r.text(
                        "security.classification",
                        CLASSIFICATION_LEN_MAX,
                        "CLASSIFICATION_LEN_MAX",
                    )?
                    .to_owned(),
                );
            }
            key::SEC_RESIDENCY => {
                let codes = r.text_set(
                    "security.residency",
                    RESIDENCY_LEN_MAX,
                    "RESIDENCY_LEN_MAX",
                    JURISDICTION_LEN_MAX,
                    "JURISDICTION_LEN_MAX",
                )?;
                let set = codes
                    .into_iter()
                    .map(Jurisdiction::new)
                    .collect::<Result<BTreeSet<_>, _>>()?;
                residency = Residency::Only(set);
            }
            key::SEC_SCOPES => {
                let items = r.text_set(
                    "security.scopes",
                    SCOPES_LEN_MAX,
                    "SCOPES_LEN_MAX",
                    SCOPE_LEN_MAX,
                    "SCOPE_LEN_MAX",
                )?;
                if items.is_empty() {
                    return Err(EnvelopeError::InvalidField {
                        field: "security.scopes",
                        reason: "an empty scope set must be encoded by omitting the field".into(),
                    });
                }
                scopes = items.into_iter().map(str::to_owned).collect();
            }
            key::SEC_POLICY_EPOCH => epoch = Some(r.uint("security.policy_epoch")?),
            unknown => {
                return Err(EnvelopeError::UnknownField {
                    map: MAP,
                    key: unknown,
                    offset: at,
                });
            }
        }
    }
    let missing = |field| EnvelopeError::MissingField { field };
    Ok(SecurityContext {
        tenant: tenant.ok_or(missing("security.tenant"))?,
        principal: principal.ok_or(missing("security.principal"))?,
        classification: classification.ok_or(missing("security.classification"))?,
        residency,
        scopes,
        policy_epoch: epoch.ok_or(missing("security.policy_epoch"))?,
    })
}

fn decode_sealed(r: &mut Reader<'_>) -> Result<SealedPayload, EnvelopeError> {
    const MAP: &str = "payload.sealed";
    let n = r.map_len(MAP, SEALED_FIELDS, "SEALED_FIELDS")?;
    let mut prev = None;
    let (mut key_id, mut nonce, mut ciphertext) = (None, None, None);
    for _ in 0..n {
        let (k, at) = r.map_key(MAP, &mut prev)?;
        match k {
            key::SEALED_KEY_ID => {
                key_id = Some(KeyId::new(r.text(
                    "payload.sealed.key_id",
                    KEY_ID_LEN_MAX,
                    "KEY_ID_LEN_MAX",
                )?)?);
            }
            key::SEALED_NONCE => {
                let b = r.bytes("payload.sealed.nonce", NONCE_LEN, "NONCE_LEN")?;
                nonce = Some(<[u8; NONCE_LEN]>::try_from(b).map_err(|_| {
                    EnvelopeError::InvalidField {
                        field: "payload.sealed.nonce",
                        reason: format!("must be {NONCE_LEN} bytes, found {}", b.len()),
                    }
                })?);
            }
            key::SEALED_CIPHERTEXT => {
                ciphertext = Some(
                    r.bytes(
                        "payload.sealed.ciphertext",
                        PAYLOAD_LEN_MAX + TAG_LEN,
                        "PAYLOAD_LEN_MAX + TAG_LEN",
                    )?
                    .to_vec(),
                );
            }
            unknown => {
                return Err(EnvelopeError::UnknownField {
                    map: MAP,
                    key: unknown,
                    offset: at,
                });
            }
        }
    }
    let missing = |field| EnvelopeError::MissingField { field };
    Ok(SealedPayload {
        key_id: key_id.ok_or(missing("payload.sealed.key_id"))?,
        nonce: nonce.ok_or(missing("payload.sealed.nonce"))?,
        ciphertext: ciphertext.ok_or(missing("payload.sealed.ciphertext"))?,
    })
}

fn decode_trace(r: &mut Reader<'_>) -> Result<TraceContext, EnvelopeError> {
    const MAP: &str = "trace";
    let n = r.map_len(MAP, TRACE_FIELDS, "TRACE_FIELDS")?;
    let mut prev = None;
    let (mut parent, mut state) = (None, None);
    for _ in 0..n {
        let (k, at) = r.map_key(MAP, &mut prev)?;
        match k {
            key::TRACE_PARENT => {
                parent = Some(
                    r.text("trace.traceparent", TRACEPARENT_LEN, "TRACEPARENT_LEN")?
                        .to_owned(),
                )
            }
            key::TRACE_STATE => {
                state = Some(
                    r.text("trace.tracestate", TRACESTATE_LEN_MAX, "TRACESTATE_LEN_MAX")?
                        .to_owned(),
                );
            }
            unknown => {
                return Err(EnvelopeError::UnknownField {
                    map: MAP,
                    key: unknown,
                    offset: at,
                });
            }
        }
    }
    Ok(TraceContext {
        traceparent: parent.ok_or(EnvelopeError::MissingField {
            field: "trace.traceparent",
        })?,
        tracestate: state,
    })
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    /// The id is plain SHA-256 of the signed bytes, whichever implementation computes it:
    /// checked against sha2 over lengths around the 64-byte block and its padding edges.
    #[test]
    fn event_id_is_sha256_of_the_signed_bytes() {
        for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 4099] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let expected: [u8; 32] = Sha256::digest(&bytes).into();
            assert_eq!(event_id(&bytes).0, expected, "length {len}");
        }
    }
}
