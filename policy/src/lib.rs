//! Weft's policy logic, pure (no I/O, no clock, no global RNG): signed bundles,
//! jurisdictions, residency classes, access rules, stream rules, egress transforms, rate
//! limits, device enrollment, and decisions with reasons. `docs/policy.md` is the
//! reference.
//!
//! - [`bundle`]: the bundle's fields, parsed from TOML ([`Bundle::from_toml`]);
//! - [`codec`]: canonical CBOR ([`Bundle::to_cbor`], [`Bundle::from_cbor`]);
//! - [`sign`]: operator signatures, k of n ([`sign_bundle`], [`verify_bundle`], [`Trust`]);
//! - [`policy`]: [`Policy::compile`] and every decision ([`Policy::authorize`],
//!   [`Policy::stamp`], [`Policy::hop`], [`Policy::claim`], ...), and [`PolicyFilter`],
//!   the mesh's replication filter;
//! - [`transform`]: egress transforms with lineage;
//! - [`limits`]: every limit, named.
//!
//! How a node uses it: verify a received bundle against its operator [`Trust`] and the
//! epoch in force; on success swap in the new [`Policy`] atomically (it is immutable) and
//! give the mesh a [`PolicyFilter`]; ask [`Policy::authorize`] and [`Policy::stamp`] on
//! publish, [`Policy::authorize`] on subscribe and read, and store or deliver an event
//! only where [`Policy::hop`] says [`Hop::Clear`] for the node itself.

pub mod bundle;
pub mod codec;
pub mod error;
pub mod limits;
pub mod policy;
pub mod sign;
pub mod transform;

pub use bundle::{
    AccessRule, Action, AggregateSpec, Bundle, ClassSpec, ConflictStrategy, DeviceSpec, Effect,
    JurisdictionSpec, MaskSpec, PrincipalSpec, Priority, RateLimitSpec, ReplicationScope, RoleSpec,
    StreamRule, TenantSpec, TransformSpec, TransitMode,
};
pub use error::{BundleError, TransformError, TrustError, VerifyError};
pub use policy::{
    AccessRequest, Class, Decision, Enrollment, EventScope, Hop, HopDecision, HopReason, Placement,
    Policy, PolicyFilter, RateLimit, RateLimits, Reason, Stamp, StreamRuleInfo, residency_text,
};
pub use sign::{
    BUNDLE_SIGNING_CONTEXT, SignedBundle, Trust, VerifiedBundle, sign_bundle, signed_bytes,
    verify_bundle,
};
pub use transform::{AggregateWindow, Derived, HashKeys, Transform};
