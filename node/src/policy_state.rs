//! The policy in force on this node, swapped atomically when a newer bundle is applied.
//!
//! Readers take an `Arc` of the whole applied state (compiled policy, signers, the signed
//! bundle's bytes) once per request and decide everything under that one epoch; a swap
//! never leaves a request half under the old rules and half under the new. A `std`
//! `RwLock` around an `Arc` rather than the `arc-swap` crate: a read is one uncontended
//! lock and an `Arc` clone per request (not per event), and swaps happen once per epoch.

use std::sync::{Arc, RwLock};

use weft_policy::Policy;

/// A verified bundle in force.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The compiled policy.
    pub(crate) policy: Arc<Policy>,
    /// Hex keys of the operators whose signatures were verified.
    pub(crate) signers: Vec<String>,
    /// The signed bundle as received (what `weft policy push` relays to the fabric).
    pub(crate) signed: Arc<Vec<u8>>,
}

impl Applied {
    /// Hex SHA-256 of the canonical bundle bytes in force (what the operators signed, not
    /// the signatures): two nodes with equal digests enforce the same bundle, which equal
    /// epochs alone do not show (two bundles signed for one epoch).
    pub(crate) fn bundle_sha256(&self) -> Option<String> {
        use sha2::Digest as _;
        let signed = weft_policy::SignedBundle::decode(&self.signed).ok()?;
        Some(hex::encode(sha2::Sha256::digest(&signed.bundle)))
    }
}

/// The node's policy: none (every principal with a token may do anything) or one applied
/// bundle.
#[derive(Debug, Default)]
pub(crate) struct PolicyState {
    current: RwLock<Option<Arc<Applied>>>,
    /// The node trusts operator keys (`[policy] operators`): it belongs to a governed
    /// fabric, and without a bundle in force it serves no data ([`PolicyState::pending`]).
    required: bool,
}

impl PolicyState {
    /// A state holding `applied`.
    pub(crate) fn new(applied: Option<Applied>) -> Self {
        if let Some(a) = &applied {
            warn_unenforced(a);
        }
        Self {
            current: RwLock::new(applied.map(Arc::new)),
            required: false,
        }
    }

    /// This state, for a node that trusts operator keys (`required`): see
    /// [`PolicyState::pending`].
    pub(crate) fn requiring(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// Whether the node trusts operator keys but holds no bundle yet (a new node before
    /// the fabric's bundle reaches it, or one whose kept bundle no longer verifies): it
    /// then refuses publishes, reads and edge devices (503 `policy_pending`) rather than
    /// serve them under no policy (reads open to anyone, publishes unstamped, so free to
    /// leave their jurisdiction).
    pub(crate) fn pending(&self) -> bool {
        self.required && self.current().is_none()
    }

    /// The bundle in force, if any.
    pub(crate) fn current(&self) -> Option<Arc<Applied>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The compiled policy in force, if any.
    pub(crate) fn policy(&self) -> Option<Arc<Policy>> {
        self.current().map(|a| a.policy.clone())
    }

    /// The epoch in force (0 without a policy).
    pub(crate) fn epoch(&self) -> u64 {
        self.current().map_or(0, |a| a.policy.epoch())
    }

    /// Which policy is in force, for watching for a change: its
    /// [`Policy::compilation`] (0 without a policy). Unlike the epoch it changes when a
    /// bundle is replaced by another of the same epoch.
    pub(crate) fn generation(&self) -> u64 {
        self.current().map_or(0, |a| a.policy.compilation())
    }

    /// Replaces the bundle in force. The caller has verified it and checked that its epoch
    /// is newer.
    pub(crate) fn set(&self, applied: Applied) {
        warn_unenforced(&applied);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(applied));
    }
}

/// Says, once per bundle applied, which of its settings the node accepts but does not
/// apply: retention on a table stream (a rule with `conflict`), whose state is made of
/// every write (`store/retention.rs`).
fn warn_unenforced(applied: &Applied) {
    for rule in &applied.policy.bundle().streams {
        if (rule.retention_s.is_some() || rule.retention_bytes.is_some()) && rule.conflict.is_some()
        {
            tracing::warn!(
                epoch = applied.policy.epoch(),
                pattern = %rule.pattern,
                "stream rule sets retention_s / retention_bytes on a table stream (conflict = ...): tables keep every write their state is made of, so this retention is not applied"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(epoch: u64) -> Applied {
        let text =
            weft_policy::Bundle::from_toml(&format!("format = 1\nepoch = {epoch}\n")).unwrap();
        Applied {
            policy: Arc::new(Policy::compile(&text).unwrap()),
            signers: Vec::new(),
            signed: Arc::new(Vec::new()),
        }
    }

    /// A bundle replaced by another of the same epoch (the tie rule) is a new policy to
    /// whatever watches for one; without operator trust no policy is ever pending.
    #[test]
    fn a_same_epoch_replacement_is_a_new_generation_and_pending_needs_trust() {
        let open = PolicyState::new(None);
        assert_eq!(open.generation(), 0);
        assert!(
            !open.pending(),
            "no operator trust: a mesh without policies"
        );
        let state = PolicyState::new(None).requiring(true);
        assert!(state.pending());
        state.set(applied(5));
        let first = state.generation();
        assert!(first != 0 && !state.pending());
        state.set(applied(5));
        assert_eq!(state.epoch(), 5);
        assert_ne!(state.generation(), first, "same epoch, another bundle");
    }
}
