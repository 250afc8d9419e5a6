//! Named limits on every field of the event envelope, each with the reason for its value.
//!
//! The decoder checks each limit against the length a CBOR head declares, before it copies
//! (allocates for) the item; the encoder refuses to produce an envelope that breaks one, so
//! whatever one node signs every other node accepts. `docs/wire.md` lists the same table.

/// Largest encoded envelope, in bytes. 1 MiB keeps one event well inside a QUIC stream
/// window and an SQLite row that is read in one go; larger objects belong in blob storage
/// with a reference in the event.
pub const EVENT_LEN_MAX: usize = 1 << 20;

/// Largest clear payload, in bytes. The envelope budget minus [`HEADER_LEN_BUDGET`].
pub const PAYLOAD_LEN_MAX: usize = EVENT_LEN_MAX - HEADER_LEN_BUDGET;

/// Bytes reserved in [`EVENT_LEN_MAX`] for everything but the payload: the largest header
/// allowed by the limits below fits (checked at compile time).
pub const HEADER_LEN_BUDGET: usize = 8 * 1024;

/// Longest stream name or pattern, in bytes. Matches NATS subjects in practice and keeps
/// the per-event index key short.
pub const STREAM_LEN_MAX: usize = 255;

/// Most tokens in a stream name. Deeper hierarchies are a design smell and make wildcard
/// matching cost grow.
pub const STREAM_TOKENS_MAX: usize = 16;

/// Longest single stream-name token, in bytes.
pub const STREAM_TOKEN_LEN_MAX: usize = 64;

/// Longest table key, in bytes. Keys are indexed; 1 KiB fits composite keys (tenant, entity,
/// sub-entity) while keeping index pages dense.
pub const KEY_LEN_MAX: usize = 1024;

/// Longest tenant and principal names, in bytes.
pub const NAME_LEN_MAX: usize = 128;

/// Longest classification label, in bytes.
pub const CLASSIFICATION_LEN_MAX: usize = 64;

/// Most jurisdictions in a residency set. Real residency rules name a handful (EU, CH, UK);
/// 16 leaves room without making every per-hop check a long scan.
pub const RESIDENCY_LEN_MAX: usize = 16;

/// Longest jurisdiction code, in bytes (`EU`, `US-CA`, `APAC`).
pub const JURISDICTION_LEN_MAX: usize = 16;

/// Most access scopes on one event.
pub const SCOPES_LEN_MAX: usize = 32;

/// Longest single scope, in bytes.
pub const SCOPE_LEN_MAX: usize = 64;

/// Longest content type, in bytes (RFC 6838 allows 127 per part; one part is plenty here).
pub const CONTENT_TYPE_LEN_MAX: usize = 127;

/// Length of a W3C `traceparent` (version 00), in bytes.
pub const TRACEPARENT_LEN: usize = 55;

/// Longest W3C `tracestate`, in bytes (the W3C recommendation's propagation minimum).
pub const TRACESTATE_LEN_MAX: usize = 512;

/// Longest sealing key id, in bytes.
pub const KEY_ID_LEN_MAX: usize = 64;

/// Length of an origin (Ed25519 public key), in bytes.
pub const ORIGIN_LEN: usize = 32;

/// Length of an Ed25519 signature, in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// Items in the outer envelope array: body and signature.
pub const ENVELOPE_ITEMS: usize = 2;

/// Fields defined in the body map (keys 0 to 10).
pub const EVENT_FIELDS: usize = 11;

/// Fields defined in the security context map.
pub const SECURITY_FIELDS: usize = 6;

/// Fields defined in the sealed payload map.
pub const SEALED_FIELDS: usize = 3;

/// Fields defined in the trace context map.
pub const TRACE_FIELDS: usize = 2;

/// Most keys in a [`crate::KeyRing`]: the active key plus older ones kept for reading.
/// Monthly rotation for five years.
pub const KEYRING_LEN_MAX: usize = 64;

/// Most events in one batch verification. Larger batches gain little (the multiscalar
/// multiplication is already amortised at 64) and delay every event in the batch.
pub const VERIFY_BATCH_LEN_MAX: usize = 256;

/// Upper bound of everything in an envelope except the payload bytes, CBOR heads included.
/// Each field counts its content plus a 9-byte worst-case head; nested arrays and maps add
/// their own heads. Kept here so the compile-time check below stays next to the limits.
const HEADER_LEN_WORST: usize = {
    const HEAD: usize = 9;
    let outer = HEAD + HEAD + HEAD + 64; // array, body bstr head, signature bstr
    let body_map = HEAD + 11 * HEAD; // the map head and its eleven keys
    let scalars = (HEAD + STREAM_LEN_MAX)
        + (HEAD + KEY_LEN_MAX)
        + (HEAD + 32) // origin
        + 3 * HEAD // version, seq, hlc
        + (HEAD + CONTENT_TYPE_LEN_MAX);
    let security = HEAD
        + 6 * HEAD
        + 2 * (HEAD + NAME_LEN_MAX)
        + (HEAD + CLASSIFICATION_LEN_MAX)
        + HEAD
        + RESIDENCY_LEN_MAX * (HEAD + JURISDICTION_LEN_MAX)
        + HEAD
        + SCOPES_LEN_MAX * (HEAD + SCOPE_LEN_MAX)
        + HEAD;
    let sealed = HEAD + 3 * HEAD + (HEAD + KEY_ID_LEN_MAX) + (HEAD + 24) + HEAD + 16;
    let trace = HEAD + 2 * HEAD + (HEAD + TRACEPARENT_LEN) + (HEAD + TRACESTATE_LEN_MAX);
    outer + body_map + scalars + security + sealed + trace
};

const _: () = assert!(HEADER_LEN_WORST <= HEADER_LEN_BUDGET);
const _: () = assert!(STREAM_TOKENS_MAX * 2 - 1 <= STREAM_LEN_MAX);
const _: () = assert!(STREAM_TOKEN_LEN_MAX <= STREAM_LEN_MAX);
