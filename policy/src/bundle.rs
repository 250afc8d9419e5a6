//! The policy bundle as people write it (TOML) and as the fabric carries it (canonical
//! CBOR): one set of serde types for both, unknown fields refused everywhere.
//!
//! These types hold names and text; [`crate::Policy::compile`] checks every limit, grammar
//! and cross-reference and builds the evaluator. A [`Bundle`] that came out of
//! [`Bundle::from_toml`] or [`crate::verify_bundle`] has passed that check.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::BundleError;
use crate::limits::BUNDLE_TOML_LEN_MAX;

/// A whole policy: everything one epoch of the fabric enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Bundle format version: [`crate::limits::BUNDLE_FORMAT`].
    pub format: u64,
    /// Policy epoch, at least 1; a node applies a bundle only if its epoch is greater than
    /// the one in force.
    pub epoch: u64,
    /// Free text for people (what changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Jurisdiction code (`EU`, `US`) -> the regions and node keys it grants.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jurisdictions: BTreeMap<String, JurisdictionSpec>,
    /// Tenant name -> tenant.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, TenantSpec>,
    /// Role name -> role.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub roles: BTreeMap<String, RoleSpec>,
    /// Principal name (the envelope's `security.principal`) -> credential, tenant, roles.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub principals: BTreeMap<String, PrincipalSpec>,
    /// Access rules, in order (deny rules win over allow rules; no match denies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessRule>,
    /// Classification (the envelope's `security.classification`) -> residency class.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, ClassSpec>,
    /// Stream rules, in order (the first whose pattern matches applies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streams: Vec<StreamRule>,
    /// Transform name -> egress transform.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub transforms: BTreeMap<String, TransformSpec>,
    /// Rate limits and quotas per principal or tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<RateLimitSpec>,
    /// Principal name of an enrolled device -> its enrollment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub devices: BTreeMap<String, DeviceSpec>,
}

/// What a jurisdiction grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JurisdictionSpec {
    /// Region ids (`aws:eu-west-1`) inside the jurisdiction; a region belongs to at most one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Node keys (64 lowercase hex digits) that may claim the jurisdiction; a key belongs
    /// to at most one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A principal: exactly one credential, an optional tenant, roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSpec {
    /// The tenant the principal acts for; absent for fabric-wide principals (operators,
    /// nodes), which may act for any tenant the rules allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Roles held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// A node's Ed25519 key, 64 lowercase hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_key: Option<String>,
    /// A device's Ed25519 key, 64 lowercase hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_key: Option<String>,
    /// SHA-256 of an HTTP bearer token, 64 lowercase hex digits (the token itself never
    /// appears in a bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// Whether a rule grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Effect {
    /// Grants the actions.
    Allow,
    /// Refuses the actions, whatever else allows them.
    Deny,
}

/// What a principal does to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Publish events to the stream.
    Publish,
    /// Subscribe to live events (SSE, durable subscriptions).
    Subscribe,
    /// Read stored events.
    Read,
}

/// An access rule. Every non-empty attribute list must match; empty lists match anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// A name for audit entries (otherwise the rule is named by its position, `#3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Allow or deny.
    pub effect: Effect,
    /// The actions it covers (at least one).
    pub actions: Vec<Action>,
    /// Stream patterns it covers (at least one).
    pub streams: Vec<String>,
    /// Roles it applies to; a rule names roles, principals or both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Principals it applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Tenants of the request it covers (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    /// Classifications of the request it covers (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classifications: Vec<String>,
    /// Regions where the request happens (the serving node's region; empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
}

/// How an event of a class may cross jurisdictions outside its residency set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransitMode {
    /// Never: no node outside the set receives anything about the event.
    Forbidden,
    /// Only when the payload is sealed, to relay it: never stored or opened there.
    Sealed,
}

/// A residency class: where events of one classification may be in clear text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Jurisdictions allowed to hold the payload in clear; set this or `anywhere`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jurisdictions: Vec<String>,
    /// No residency constraint (public data); excludes `jurisdictions` and `transit`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub anywhere: bool,
    /// Transit mode; required with `jurisdictions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit: Option<TransitMode>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where a stream's events are replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationScope {
    /// Every node (that residency allows).
    All,
    /// Nodes with a matching interest only. Today the same as [`ReplicationScope::All`]:
    /// every node holds the streams its config names (`streams`), whatever the rule says.
    Interest,
    /// Nodes in the regions listed in `regions` only.
    Regions,
}

/// How concurrent writes to one key resolve (keyed tables, issue 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictStrategy {
    /// Last writer wins by `(hlc, origin)`.
    Lww,
    /// Keep every concurrent value.
    MultiValue,
    /// A counter: concurrent increments add up.
    Counter,
    /// A set: concurrent adds and removes merge.
    Set,
}

/// Send priority of a stream's events (the mesh's per-peer lanes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Sent before anything else.
    Latency,
    /// The default.
    #[default]
    Normal,
    /// Sent when nothing else waits.
    Bulk,
}

/// Rules for the streams a pattern matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRule {
    /// Stream pattern (`orders.eu.>`).
    pub pattern: String,
    /// Classification stamped when the publisher names none; must be a class.
    pub classification: String,
    /// Replication scope.
    pub replication: ReplicationScope,
    /// Regions, with `replication = "regions"` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Keep events at most this long, in seconds (absent: no time limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_s: Option<u64>,
    /// Keep at most this many bytes of the stream per node (absent: no size limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
    /// Conflict strategy for keyed events (absent: the stream is not a table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ConflictStrategy>,
    /// Send priority.
    #[serde(default)]
    pub priority: Priority,
}

/// Masks a text field, keeping its last `keep_last` characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    /// Field path (`card.number`).
    pub field: String,
    /// Characters left in clear at the end (0: mask everything).
    #[serde(default)]
    pub keep_last: u8,
}

/// Aggregation over a time window: one derived event per group and window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    /// Window length in seconds (at least 1).
    pub window_s: u64,
    /// Fields whose values form the group key (empty: one group).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    /// Numeric fields summed per group (the count is always included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sum: Vec<String>,
    /// The fewest events a published group holds (k-anonymity; absent: 1). Smaller groups
    /// are folded into one rest group, published only if it holds this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<u64>,
}

/// An egress transform: derives an event onto another stream from events that may not
/// leave their residency set, with fields dropped, hashed, masked, or aggregated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// Source stream pattern.
    pub source: String,
    /// Target stream name.
    pub target: String,
    /// Classification of the derived events; must be a class.
    pub classification: String,
    /// Fields removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
    /// The only fields the derived payload carries (an allow list), besides those hashed
    /// and masked: every other field, one the producer adds later included, is left out.
    /// Excludes `drop` and `aggregate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<String>,
    /// Fields replaced by a salted SHA-256 (pseudonymisation, not anonymisation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash: Vec<String>,
    /// Salt mixed into hashes (keeps them from matching other datasets' hashes). It
    /// travels in the bundle to every node: prefer `hash_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// The name of a secret key each ingress node holds in its own configuration
    /// (`[egress.hash_keys]`), never in the bundle: hashes are HMAC-SHA256 under it, so a
    /// node or reader holding the bundle and the derived data cannot test guesses against
    /// them. Excludes `salt`; needs `hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    /// Text fields masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<MaskSpec>,
    /// Aggregation (excludes drop, hash and mask).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateSpec>,
}

/// A rate limit and quotas for one principal or one tenant (set exactly one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// The principal limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The tenant limited (all its principals together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Sustained publish rate, events per second (at least 1).
    pub events_per_s: u64,
    /// Burst above the rate, events (at least 1).
    pub burst: u64,
    /// Quota: events per UTC day (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_day: Option<u64>,
    /// Quota: payload bytes per UTC day (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_day: Option<u64>,
}

/// A device's enrollment: which streams it may publish to and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    /// Stream patterns the device publishes to.
    pub streams: Vec<String>,
    /// The jurisdiction the device is in.
    pub jurisdiction: String,
    /// Local rules the device's agent applies before sending (filter, sample, aggregate;
    /// `docs/agent.md`), in order. At most [`weft_fabric::edge::RULES_MAX`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<weft_fabric::edge::LocalRule>,
}

impl Bundle {
    /// Parses bundle source text and checks it completely (limits, grammars, references),
    /// exactly as a node checks a received bundle. Errors name the field path and the limit.
    pub fn from_toml(text: &str) -> Result<Bundle, BundleError> {
        if text.len() > BUNDLE_TOML_LEN_MAX {
            return Err(BundleError::TooLarge {
                len: text.len(),
                limit: "BUNDLE_TOML_LEN_MAX",
                max: BUNDLE_TOML_LEN_MAX,
            });
        }
        // A syntax error has no field path: it is reported with its line and column.
        let located = |e: &toml::de::Error| match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: {}", e.message().trim())
            }
            None => e.message().trim().to_string(),
        };
        let de = toml::Deserializer::parse(text).map_err(|e| BundleError::Toml {
            path: String::new(),
            message: located(&e),
        })?;
        let bundle: Bundle = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            BundleError::Toml {
                message: if path.is_empty() || path == "." {
                    located(&inner)
                } else {
                    inner.message().to_string()
                },
                path: if path == "." { String::new() } else { path },
            }
        })?;
        crate::Policy::compile(&bundle)?;
        Ok(bundle)
    }

    /// The canonical CBOR encoding (what operators sign). Checks the bundle first.
    /// Refuses a bundle whose encoding, with [`crate::limits::SIGNATURES_MAX`] signatures,
    /// would exceed [`crate::limits::BUNDLE_LEN_MAX`].
    pub fn to_cbor(&self) -> Result<Vec<u8>, BundleError> {
        crate::Policy::compile(self)?;
        let cbor = crate::codec::encode_bundle(self);
        let max = crate::limits::BUNDLE_LEN_MAX - crate::sign::SIGNED_OVERHEAD_MAX;
        if cbor.len() > max {
            return Err(BundleError::TooLarge {
                len: cbor.len(),
                limit: "BUNDLE_LEN_MAX - SIGNED_OVERHEAD_MAX",
                max,
            });
        }
        Ok(cbor)
    }

    /// Decodes canonical CBOR, refusing any other encoding of the same value, then checks
    /// the bundle as [`Bundle::from_toml`] does.
    pub fn from_cbor(bytes: &[u8]) -> Result<Bundle, BundleError> {
        let bundle = crate::codec::decode_bundle(bytes)?;
        crate::Policy::compile(&bundle)?;
        Ok(bundle)
    }
}
