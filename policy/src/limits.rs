//! Named limits on every list and string of a policy bundle, each with the reason for its
//! value. `docs/policy.md` lists the same table; every refusal names the constant.

use weft_fabric::limits::PAYLOAD_LEN_MAX;

/// Largest signed bundle (canonical CBOR, signatures included), in bytes. A bundle travels
/// through the fabric as the payload of one event, so it must fit `PAYLOAD_LEN_MAX` with
/// room to spare; 512 KiB holds several thousand principals, far more than a fabric that
/// lists its principals one by one should have.
pub const BUNDLE_LEN_MAX: usize = 512 * 1024;

/// Largest bundle source text (TOML), in bytes: the CBOR limit plus room for comments.
pub const BUNDLE_TOML_LEN_MAX: usize = 2 * BUNDLE_LEN_MAX;

/// Bundle format version this crate reads and writes (the `format` field).
pub const BUNDLE_FORMAT: u64 = 1;

/// Most jurisdictions. Compiled residency sets are 64-bit masks, one bit per jurisdiction,
/// so the per-hop check is two AND operations.
pub const JURISDICTIONS_MAX: usize = 64;

/// Most regions granted to jurisdictions, all together (every cloud's regions today are
/// about 150).
pub const REGIONS_MAX: usize = 512;

/// Most node keys granted to jurisdictions, all together: the mesh's own bound on nodes
/// (`weft_routing` keeps at most 4096).
pub const NODES_MAX: usize = 4096;

/// Most tenants.
pub const TENANTS_MAX: usize = 1024;

/// Most roles.
pub const ROLES_MAX: usize = 256;

/// Most principals (node, device and token principals together). Larger device fleets
/// belong in an enrollment service, not in a bundle every node holds.
pub const PRINCIPALS_MAX: usize = 2048;

/// Most roles held by one principal.
pub const PRINCIPAL_ROLES_MAX: usize = 16;

/// Most access rules. Evaluation scans them in order; 512 keeps a publish check in the
/// microseconds.
pub const ACCESS_RULES_MAX: usize = 512;

/// Most entries in one list of an access rule (actions, streams, roles, principals,
/// tenants, classifications, regions).
pub const RULE_LIST_LEN_MAX: usize = 32;

/// Most residency classes.
pub const CLASSES_MAX: usize = 64;

/// Most stream rules (first match wins, scanned in order on publish).
pub const STREAM_RULES_MAX: usize = 256;

/// Most regions named by one stream rule's replication scope.
pub const STREAM_REGIONS_MAX: usize = 64;

/// Most distinct `regions` sets among the stream rules with `replication = "regions"`
/// (rules naming the same set share one). A member's placement holds one bit per set, so
/// that a hop stays a few bit operations.
pub const REPLICATION_SCOPES_MAX: usize = 64;

/// Most egress transforms.
pub const TRANSFORMS_MAX: usize = 64;

/// Most field operations (drop, hash, mask, group-by, sum each) in one transform.
pub const TRANSFORM_FIELDS_MAX: usize = 64;

/// Most segments in a field path (`customer.address.city` has 3).
pub const FIELD_PATH_DEPTH_MAX: usize = 8;

/// Most groups one aggregation window keeps; events of further groups are refused with
/// an error (the caller closes the window early or counts the drop).
pub const AGGREGATE_GROUPS_MAX: usize = 4096;
/// Largest `aggregate.min_count`.
pub const AGGREGATE_MIN_COUNT_MAX: u64 = 1_000_000;

/// Most source event ids one aggregated event names in its lineage; beyond that the
/// lineage carries the count and a digest of all ids.
pub const AGGREGATE_LINEAGE_IDS_MAX: usize = 64;

/// Most rate-limit entries.
pub const RATE_LIMITS_MAX: usize = 1024;

/// Most enrolled devices (each is also a principal, so under [`PRINCIPALS_MAX`]).
pub const DEVICES_MAX: usize = 1024;

/// Most stream patterns one device is enrolled for.
pub const DEVICE_STREAMS_MAX: usize = 16;

/// Longest name of a jurisdiction's region, tenant, role, principal, class, transform or
/// rule, in bytes (the envelope's limit for tenant and principal names).
pub const NAME_LEN_MAX: usize = weft_fabric::limits::NAME_LEN_MAX;

/// Longest description, in bytes.
pub const DESCRIPTION_LEN_MAX: usize = 1024;

/// Longest field path or salt in a transform, in bytes.
pub const FIELD_PATH_LEN_MAX: usize = 256;

/// Shortest node-local hash key (`hash_key`), in bytes: 128 bits.
pub const HASH_KEY_LEN_MIN: usize = 16;

/// Longest node-local hash key, in bytes.
pub const HASH_KEY_LEN_MAX: usize = 1024;

/// Longest hash key name, in bytes (letters, digits, `-`, `_`, `.`).
pub const HASH_KEY_NAME_LEN_MAX: usize = 64;

/// Most operator keys a node trusts to sign bundles.
pub const OPERATORS_MAX: usize = 16;

/// Most signatures on one bundle (at most one per trusted operator).
pub const SIGNATURES_MAX: usize = OPERATORS_MAX;

const _: () = assert!(BUNDLE_LEN_MAX < PAYLOAD_LEN_MAX);
const _: () = assert!(JURISDICTIONS_MAX <= 64);
const _: () = assert!(DEVICES_MAX < PRINCIPALS_MAX);
const _: () = assert!(AGGREGATE_LINEAGE_IDS_MAX <= AGGREGATE_GROUPS_MAX);
