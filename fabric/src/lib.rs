//! Weft's sans-IO core: the signed event envelope and everything it needs.
//!
//! This crate performs no I/O, reads no clock and uses no global randomness: time arrives
//! as an argument (`now_ms`), randomness as a caller-supplied `CryptoRng`. The node, the
//! edge agent and the simulator all drive this same code.
//!
//! - [`envelope`]: the event's fields and the verified/unverified event types;
//! - [`codec`]: canonical CBOR encoding and strict decoding (`docs/wire.md`);
//! - [`sign`]: Ed25519 signing, strict and batch verification;
//! - [`seal`]: XChaCha20-Poly1305 sealed payloads and key rings;
//! - [`hlc`]: hybrid logical clocks;
//! - [`stream`]: stream names and subscription patterns;
//! - [`limits`]: every limit of the format, named;
//! - [`edge`]: the edge protocol between `weft-agent` and a node (types and framing).

pub mod cloudevents;
pub mod codec;
pub mod edge;
pub mod envelope;
pub mod error;
pub mod hlc;
pub mod limits;
pub mod mesh;
pub mod seal;
pub mod sign;
pub mod stream;
pub mod table;

pub use codec::decode;
pub use envelope::{
    ENVELOPE_VERSION, Event, EventData, EventDraft, EventId, FilterMemo, Jurisdiction,
    KeyBuildHasher, KeyHasher, KeyId, OrderKey, OriginKey, Payload, Residency, SealedPayload,
    SecurityContext, TraceContext, UnverifiedEvent,
};
pub use error::{EnvelopeError, SealError, VerifyError};
pub use hlc::{ClockError, Hlc, HybridClock};
pub use seal::KeyRing;
pub use sign::{Signer, VerifiedCache, verify_batch};
pub use stream::{StreamName, StreamNameError, StreamPattern};
