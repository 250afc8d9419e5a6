//! Canonical CBOR for bundles and signed bundles (`docs/policy.md` §4).
//!
//! Encoding serializes the bundle through serde into cbor4ii, then rewrites the result in
//! RFC 8949 §4.2.1 core deterministic form (shortest heads, definite lengths, map keys
//! sorted by their encoded bytes), so the bytes depend only on the bundle's value and any
//! CBOR library can reproduce them. Absent optional fields and empty lists are left out.
//! Decoding reads the schema through serde (unknown fields refused, with the field path),
//! then re-encodes the value and compares byte for byte: exactly one encoding of each
//! bundle is accepted, so a signature covers one byte string.

use cbor4ii::core::Value;
use cbor4ii::core::dec::Decode;
use cbor4ii::core::enc::Encode;
use cbor4ii::core::utils::{BufWriter, SliceReader};

use crate::bundle::Bundle;
use crate::error::BundleError;
use crate::limits::BUNDLE_LEN_MAX;

/// The canonical encoding of a bundle, without checking it ([`Bundle::to_cbor`] checks
/// first). Tools and tests use it to build bundles a node must refuse.
pub fn encode_bundle(bundle: &Bundle) -> Vec<u8> {
    let raw = match cbor4ii::serde::to_vec(Vec::new(), bundle) {
        Ok(raw) => raw,
        Err(e) => unreachable!("serializing a bundle to a Vec failed: {e:?}"),
    };
    let value = match Value::decode(&mut SliceReader::new(&raw)) {
        Ok(value) => value,
        Err(e) => unreachable!("re-reading our own CBOR failed: {e:?}"),
    };
    encode_value(&canonical(value))
}

/// Encodes a value as it is (the caller sorted its maps).
pub(crate) fn encode_value(value: &Value) -> Vec<u8> {
    let mut writer = BufWriter::new(Vec::new());
    if let Err(e) = value.encode(&mut writer) {
        unreachable!("writing CBOR to a Vec failed: {e:?}")
    }
    writer.into_inner()
}

/// Sorts every map's entries by the bytes of their encoded keys (RFC 8949 §4.2.1).
fn canonical(value: Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        Value::Map(entries) => {
            let mut keyed: Vec<(Vec<u8>, Value, Value)> = entries
                .into_iter()
                .map(|(k, v)| {
                    let k = canonical(k);
                    (encode_value(&k), k, canonical(v))
                })
                .collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        Value::Tag(tag, inner) => Value::Tag(tag, Box::new(canonical(*inner))),
        other => other,
    }
}

/// Decodes a bundle from its canonical encoding; refuses any other encoding. Does not
/// check limits or references (see [`Bundle::from_cbor`]).
pub(crate) fn decode_bundle(bytes: &[u8]) -> Result<Bundle, BundleError> {
    if bytes.len() > BUNDLE_LEN_MAX {
        return Err(BundleError::TooLarge {
            len: bytes.len(),
            limit: "BUNDLE_LEN_MAX",
            max: BUNDLE_LEN_MAX,
        });
    }
    let mut de = cbor4ii::serde::Deserializer::new(Counting::new(bytes));
    let result: Result<Bundle, _> = serde_path_to_error::deserialize(&mut de);
    let at = de.into_inner().pos;
    let bundle = result.map_err(|e| {
        let path = e.path().to_string();
        let detail = match e.into_inner() {
            cbor4ii::serde::DecodeError::Core(e) => describe(&e, at, bytes.len()),
            cbor4ii::serde::DecodeError::Custom(m) => format!("{m} (at byte {at})"),
        };
        BundleError::Cbor { path, detail }
    })?;
    let again = encode_bundle(&bundle);
    if let Some(offset) = first_difference(bytes, &again) {
        return Err(BundleError::NonCanonical { offset });
    }
    Ok(bundle)
}

/// Where two byte strings first differ (a length difference counts at the shorter end).
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
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

/// A [`SliceReader`] that counts the bytes read, so a decoding error can say where.
struct Counting<'a> {
    inner: SliceReader<'a>,
    pos: usize,
}

impl<'a> Counting<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Counting {
            inner: SliceReader::new(bytes),
            pos: 0,
        }
    }
}

impl<'de> cbor4ii::core::dec::Read<'de> for Counting<'de> {
    type Error = <SliceReader<'de> as cbor4ii::core::dec::Read<'de>>::Error;

    fn fill<'b>(
        &'b mut self,
        want: usize,
    ) -> Result<cbor4ii::core::dec::Reference<'de, 'b>, Self::Error> {
        self.inner.fill(want)
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
        self.inner.advance(n);
    }

    fn step_in(&mut self) -> bool {
        self.inner.step_in()
    }

    fn step_out(&mut self) {
        self.inner.step_out();
    }
}

/// A decoder error in words, with the byte offset where decoding stopped (the decoder's
/// own text is its Rust debug form).
fn describe<E: std::fmt::Debug>(
    e: &cbor4ii::core::error::DecodeError<E>,
    at: usize,
    len: usize,
) -> String {
    use cbor4ii::core::error::DecodeError as D;
    match e {
        D::Eof { name, .. } => {
            format!("not valid CBOR: truncated, the input ends at byte {len} inside a {name}")
        }
        D::Mismatch { name, found } | D::Unsupported { name, found } => format!(
            "not valid CBOR at byte {at}: expected a {name}, found initial byte 0x{found:02x}"
        ),
        D::RequireUtf8 { name } => format!("not valid CBOR at byte {at}: {name} is not UTF-8"),
        D::DepthOverflow { .. } => format!("not valid CBOR at byte {at}: nested too deeply"),
        D::LengthOverflow { name, .. } | D::CastOverflow { name } => {
            format!("not valid CBOR at byte {at}: the length of a {name} is too large")
        }
        other => format!("not valid CBOR at byte {at}: {other:?}"),
    }
}

/// Decodes a generic value (for the signed-bundle wrapper).
pub(crate) fn decode_value(bytes: &[u8]) -> Result<Value, BundleError> {
    let mut reader = Counting::new(bytes);
    let value = Value::decode(&mut reader).map_err(|e| BundleError::Cbor {
        path: String::new(),
        detail: describe(&e, reader.pos, bytes.len()),
    })?;
    // Trailing bytes, and any non-canonical form, are caught by the caller's re-encoding.
    Ok(value)
}
