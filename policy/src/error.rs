//! Errors: a bundle that does not parse or check ([`BundleError`]), a signed bundle a node
//! refuses ([`VerifyError`]), an operator trust configuration that cannot be used
//! ([`TrustError`]), and a payload a transform cannot derive from ([`TransformError`]).
//! None of them changes any state: a refused bundle leaves the policy in force as it was.

/// A bundle that does not parse, breaks a limit or a grammar, or refers to something it
/// does not declare. The policy in force is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The input is longer than its limit; nothing of it was parsed.
    #[error("bundle is {len} bytes, over {limit} ({max})")]
    TooLarge {
        /// Input length, bytes.
        len: usize,
        /// The limit's name.
        limit: &'static str,
        /// The limit's value.
        max: usize,
    },
    /// The TOML text does not parse, has an unknown field or a value of the wrong type.
    #[error("{}", if path.is_empty() { format!("bundle is not valid TOML: {message}") } else { format!("bundle field `{path}`: {message}") })]
    Toml {
        /// Dotted path of the field (empty when the text is not TOML at all).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The CBOR is malformed, has an unknown field or a value of the wrong type.
    #[error("{}", cbor_text(path, detail))]
    Cbor {
        /// Dotted path of the field being decoded.
        path: String,
        /// What the decoder found.
        detail: String,
    },
    /// The CBOR decodes but is not the canonical encoding of its value.
    #[error("bundle CBOR is not canonical: first difference at byte {offset}")]
    NonCanonical {
        /// Offset of the first byte that differs from the canonical encoding.
        offset: usize,
    },
    /// A list or map has more entries than its limit.
    #[error("bundle field `{field}` has {len} entries, over {limit} ({max})")]
    TooMany {
        /// Dotted path of the list.
        field: String,
        /// Entries found.
        len: usize,
        /// The limit's name.
        limit: &'static str,
        /// The limit's value.
        max: usize,
    },
    /// A string is longer than its limit.
    #[error("bundle field `{field}` is {len} bytes, over {limit} ({max})")]
    TooLong {
        /// Dotted path of the string.
        field: String,
        /// Length found, bytes.
        len: usize,
        /// The limit's name.
        limit: &'static str,
        /// The limit's value.
        max: usize,
    },
    /// A field breaks its grammar or a rule between fields.
    #[error("bundle field `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A field names something the bundle does not declare.
    #[error("bundle field `{field}` names {kind} `{name}`, which the bundle does not declare")]
    Unknown {
        /// Dotted path of the field.
        field: String,
        /// What kind of thing (`role`, `tenant`, `class`, ...).
        kind: &'static str,
        /// The name.
        name: String,
    },
}

/// Why a node refuses a signed bundle. Each refusal is distinct so the audit log says why;
/// the policy in force is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signed bundle is longer than [`crate::limits::BUNDLE_LEN_MAX`]; not decoded.
    #[error("signed bundle is {len} bytes, over BUNDLE_LEN_MAX ({max})")]
    Oversize {
        /// Input length, bytes.
        len: usize,
        /// [`crate::limits::BUNDLE_LEN_MAX`].
        max: usize,
    },
    /// The outer structure or the bundle is not well-formed canonical CBOR of the schema.
    #[error("malformed signed bundle: {0}")]
    Malformed(BundleError),
    /// No signature at all.
    #[error("bundle is unsigned")]
    Unsigned,
    /// More signatures than [`crate::limits::SIGNATURES_MAX`].
    #[error("bundle has {len} signatures, over SIGNATURES_MAX ({max})")]
    TooManySignatures {
        /// Signatures found.
        len: usize,
        /// [`crate::limits::SIGNATURES_MAX`].
        max: usize,
    },
    /// Signatures are not in strictly ascending signer-key order (a key signed twice, or
    /// the list is not in its one canonical order).
    #[error(
        "signature {index} is out of order or repeats a signer (signers must be strictly ascending)"
    )]
    SignerOrder {
        /// Position of the offending signature.
        index: usize,
    },
    /// A signature by a key that is not one of this node's trusted operator keys.
    #[error("bundle is signed by unknown key {signer}")]
    UnknownSigner {
        /// The key, hex.
        signer: String,
    },
    /// A signature by a trusted operator key that does not verify over the bundle.
    #[error("bad signature by operator key {signer}")]
    BadSignature {
        /// The key, hex.
        signer: String,
    },
    /// Every signature verifies, but fewer operators signed than the node's threshold.
    #[error("bundle signed by {signers} operator(s), threshold is {threshold}")]
    TooFewSigners {
        /// Valid signatures.
        signers: usize,
        /// Required.
        threshold: usize,
    },
    /// The bundle's epoch is not greater than the epoch in force (rollback or replay).
    #[error(
        "bundle epoch {epoch} is not newer than the epoch in force ({current}): rollback refused"
    )]
    Rollback {
        /// The bundle's epoch.
        epoch: u64,
        /// The epoch in force.
        current: u64,
    },
    /// Signed correctly, but the bundle breaks a limit, grammar or reference.
    #[error("signed bundle is invalid: {0}")]
    Invalid(BundleError),
}

impl VerifyError {
    /// A stable snake_case code for the refusal: the node's API error reason, metric label
    /// and audit reason.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Oversize { .. } => "bundle_oversize",
            VerifyError::Malformed(_) => "bundle_malformed",
            VerifyError::Unsigned => "bundle_unsigned",
            VerifyError::TooManySignatures { .. } => "bundle_too_many_signatures",
            VerifyError::SignerOrder { .. } => "bundle_signer_order",
            VerifyError::UnknownSigner { .. } => "bundle_unknown_signer",
            VerifyError::BadSignature { .. } => "bundle_bad_signature",
            VerifyError::TooFewSigners { .. } => "bundle_too_few_signers",
            VerifyError::Rollback { .. } => "bundle_rollback",
            VerifyError::Invalid(_) => "bundle_invalid",
        }
    }
}

/// An operator trust configuration a node cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// No operator keys, or more than [`crate::limits::OPERATORS_MAX`].
    #[error("{len} operator keys configured; need 1 to OPERATORS_MAX ({max})")]
    OperatorCount {
        /// Keys given.
        len: usize,
        /// [`crate::limits::OPERATORS_MAX`].
        max: usize,
    },
    /// The threshold is 0 or above the number of operator keys.
    #[error(
        "threshold {threshold} must be between 1 and the number of operator keys ({operators})"
    )]
    Threshold {
        /// Threshold given.
        threshold: usize,
        /// Distinct operator keys.
        operators: usize,
    },
    /// A key is not a valid Ed25519 public key, or is a weak (small-order) one.
    #[error("operator key {key} is not a usable Ed25519 public key")]
    BadKey {
        /// The key, hex.
        key: String,
    },
}

/// A payload a transform cannot derive from. Nothing was emitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The payload is not a JSON object.
    #[error("payload is not a JSON object: {0}")]
    NotJson(String),
    /// A summed field holds something other than a number.
    #[error("field `{field}` is not a number")]
    NotNumber {
        /// The field path.
        field: String,
    },
    /// The aggregation window holds [`crate::limits::AGGREGATE_GROUPS_MAX`] groups already.
    #[error("aggregation window is full: AGGREGATE_GROUPS_MAX ({max}) groups")]
    GroupsFull {
        /// [`crate::limits::AGGREGATE_GROUPS_MAX`].
        max: usize,
    },
    /// A field transform's path cannot be followed in this payload (a value on the way is
    /// an array or a scalar), so the field it names may be there in another shape: nothing
    /// is derived rather than let it through untouched.
    #[error("path `{path}` cannot be followed: `{at}` is not an object")]
    Unresolved {
        /// The transform's field path.
        path: String,
        /// The part of the path that holds a non-object.
        at: String,
    },
    /// The payload has an object key containing `.`, which no field path can name: it
    /// could hold what a path was meant to reach.
    #[error("key `{key}` contains `.`, which no transform path can name")]
    DottedKey {
        /// The key (at most 64 characters of it).
        key: String,
    },
    /// The transform hashes under a node-local key (`hash_key`) this node does not hold.
    #[error("hash key `{name}` is not configured on this node (config `egress.hash_keys`)")]
    HashKeyMissing {
        /// The key's name.
        name: String,
    },
    /// [`crate::Transform::apply`] on an aggregating transform, or the reverse.
    #[error("transform `{name}` {reason}")]
    WrongKind {
        /// The transform.
        name: String,
        /// What was asked.
        reason: &'static str,
    },
}

/// [`BundleError::Cbor`] in words: no empty path shown, and a decoder's own "not valid
/// CBOR" detail not prefixed again.
fn cbor_text(path: &str, detail: &str) -> String {
    match (path.is_empty(), detail.starts_with("not valid CBOR")) {
        (true, true) => detail.to_string(),
        (true, false) => format!("malformed bundle CBOR: {detail}"),
        (false, _) => format!("malformed bundle CBOR at `{path}`: {detail}"),
    }
}
