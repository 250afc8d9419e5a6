//! Policy bundles through the fabric: a bundle pushed to one node (`POST /v1/policy`,
//! `weft policy push`) travels as an event on the system stream [`POLICY_STREAM`], and
//! every node applies it when the event reaches its log, whether it arrived by push,
//! by anti-entropy after an outage, or was published here.
//!
//! The event is only a carrier: its node signature says which node relayed the bundle,
//! the operators' k-of-n signatures inside the payload are what a node trusts. Every node
//! verifies the bundle itself against its own operator trust and the epoch in force
//! (`weft_policy::verify_bundle`), so a bundle a node would refuse on its API it refuses
//! off the fabric too, with the same reason, audited.
//!
//! Applying is atomic within the driver's step: the core's replication filter, the
//! policy the HTTP handlers read ([`PolicyState`]), the epoch this node gossips, and the
//! bundle kept in the store (committed with the step) all change together. Epochs only
//! grow, so nodes converge on the newest bundle whatever order the carriers arrive in.

use std::sync::Arc;

use weft_fabric::mesh::{MemberInfo, Node};
use weft_fabric::{Event, Payload, StreamName};
use weft_policy::{Trust, VerifiedBundle, VerifyError, verify_bundle};

use crate::policy_state::{Applied, PolicyState};
use crate::store::SqliteStore;

/// The system stream carrying signed policy bundles (every node stores it).
pub(crate) const POLICY_STREAM: &str = "_weft.policy";
/// The pattern every node's interest includes: all system streams.
pub(crate) const SYSTEM_PATTERN: &str = "_weft.>";
/// Classification of system events: not a residency class of any bundle, so with an
/// unrestricted residency set they reach every node.
pub(crate) const SYSTEM_CLASSIFICATION: &str = "_system";
/// Content type of the carrier event's payload.
pub(crate) const BUNDLE_CONTENT_TYPE: &str = "application/vnd.weft.policy+cbor";
/// Store metadata key of the signed bundle in force.
pub(crate) const META_KEY: &str = "policy_bundle";

/// The stream name of [`POLICY_STREAM`].
pub(crate) fn policy_stream() -> StreamName {
    StreamName::new(POLICY_STREAM).unwrap_or_else(|_| unreachable!("valid constant"))
}

/// What applying a bundle did.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Now in force.
    Applied {
        epoch: u64,
        previous: u64,
        /// This node's own jurisdiction claim is not granted by the new epoch: it now
        /// holds no residency-restricted data (its placement is empty).
        claim_revoked: Option<String>,
    },
    /// The same bundle is already in force (a second carrier of one push).
    AlreadyInForce { epoch: u64 },
    /// Refused, with the policy in force unchanged.
    Refused(VerifyError),
    /// Verified, but the store could not keep it (a disk error): not applied, the policy
    /// in force unchanged. The caller stops before its step commits, so the carrier is
    /// applied again after the restart (a restart would otherwise fall back to an older
    /// bundle, and the carrier, already in the log, would never come again).
    NotKept(String),
}

/// Verifies a signed bundle as this node would apply it now.
pub(crate) fn check(
    trust: &Trust,
    state: &PolicyState,
    bytes: &[u8],
) -> Result<VerifiedBundle, VerifyError> {
    let epoch = state.epoch();
    // Two different bundles signed for one epoch (an operator mistake) must not split the
    // fabric by which one each node got first: of the two, the bundle whose canonical
    // bytes hash higher wins on every node. So a bundle of the epoch in force is taken
    // when it wins that tie; any other of that epoch is a rollback, as before.
    let floor = match state.current() {
        Some(current) if epoch > 0 && wins_tie(bytes, &current.signed) => epoch - 1,
        _ => epoch,
    };
    verify_bundle(bytes, trust, floor)
}

/// Whether the signed bundle `new` carries another bundle than `current` whose canonical
/// bytes hash higher (SHA-256). Undecodable input does not win (verification refuses it).
fn wins_tie(new: &[u8], current: &[u8]) -> bool {
    use sha2::Digest as _;
    match (
        weft_policy::SignedBundle::decode(new),
        weft_policy::SignedBundle::decode(current),
    ) {
        (Ok(n), Ok(c)) => {
            n.bundle != c.bundle
                && sha2::Sha256::digest(&n.bundle) > sha2::Sha256::digest(&c.bundle)
        }
        _ => false,
    }
}

/// Applies the signed bundle `bytes` if it verifies and is newer than the epoch in force:
/// swaps the core's replication filter, the API's policy and the gossiped epoch, and
/// records the bundle in the store (committed with the driver's step).
pub(crate) fn apply(
    trust: &Trust,
    state: &PolicyState,
    node: &mut Node<SqliteStore>,
    bytes: &[u8],
) -> Outcome {
    let current = state.current();
    if let Some(c) = &current
        && c.signed.as_slice() == bytes
    {
        return Outcome::AlreadyInForce {
            epoch: c.policy.epoch(),
        };
    }
    let verified = match check(trust, state, bytes) {
        Ok(v) => v,
        Err(e) => return Outcome::Refused(e),
    };
    // Kept first: nothing is in force that a restart would not find again.
    if let Err(e) = node.store_records_mut().meta_set(META_KEY, bytes) {
        return Outcome::NotKept(e.to_string());
    }
    let me: MemberInfo = node.me().clone();
    let claim = verified.policy.claim(&me.key, &me.jurisdiction, &me.region);
    let claim_revoked = (!claim.allowed).then(|| claim.reason.to_string());
    let epoch = verified.policy.epoch();
    let policy = Arc::new(verified.policy);
    node.set_filter(Box::new(weft_policy::PolicyFilter::new(policy.clone())));
    node.set_policy_epoch(epoch);
    state.set(Applied {
        policy,
        signers: verified.signers.iter().map(hex::encode).collect(),
        signed: Arc::new(bytes.to_vec()),
    });
    Outcome::Applied {
        epoch,
        previous: current.map_or(0, |c| c.policy.epoch()),
        claim_revoked,
    }
}

/// The signed bundle a policy carrier event holds, or why it is not one.
pub(crate) fn carried_bundle(event: &Event) -> Result<&[u8], &'static str> {
    if event.stream().as_str() != POLICY_STREAM {
        return Err("not on the policy stream");
    }
    match event.payload() {
        Payload::Clear(bytes) => Ok(bytes),
        Payload::Sealed(_) => Err("a policy carrier's payload must be clear"),
    }
}

/// Reads the bundle file `[policy] bundle` names, if any: what [`at_start`] takes as
/// `configured` (both `weft node` and `weft check-config` read it here).
pub(crate) fn read_configured(path: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    use anyhow::Context as _;
    path.map(|p| std::fs::read(p).with_context(|| format!("reading policy bundle {}", p.display())))
        .transpose()
}

/// What `weft check-config` found of the policy a node would start with.
#[derive(Debug)]
pub(crate) struct StartPolicy {
    /// The bundle the node would enforce, if any.
    pub(crate) verified: Option<VerifiedBundle>,
    /// It is the bundle the store kept from a push (newer than the configured one).
    pub(crate) from_store: bool,
    /// Why the bundle the store kept was skipped (it no longer verifies under the
    /// configured trust), if it was: the node skips it at start too (audited).
    pub(crate) stale: Option<String>,
}

/// What `weft check-config` says of `[policy]`: the configured bundle and the one the
/// node's store kept from a push (`stored`, when the check could read it), chosen and
/// verified by [`at_start`] exactly as a starting node does, then this node's jurisdiction
/// claim checked against the one chosen when its key can be read. Errors name the bundle
/// and why a node would refuse it.
pub(crate) fn check_configured(
    trust: &Trust,
    path: Option<&std::path::Path>,
    stored: Option<Vec<u8>>,
    node_key: Option<[u8; 32]>,
    jurisdiction: &str,
    region: &str,
) -> anyhow::Result<StartPolicy> {
    let shown = path.map_or(String::new(), |p| p.display().to_string());
    let configured = read_configured(path)?;
    let configured_bytes = configured.clone();
    let mut stale = None;
    let chosen = at_start(trust, configured, stored.clone(), |e| {
        stale = Some(e.to_string());
    })
    .map_err(|e| anyhow::anyhow!("policy bundle {shown}: {e}"))?;
    let Some((verified, bytes)) = chosen else {
        return Ok(StartPolicy {
            verified: None,
            from_store: false,
            stale,
        });
    };
    // The store's copy of the configured bundle (applied at a start) is the configured one.
    let from_store = stored.as_deref() == Some(bytes.as_slice())
        && configured_bytes.as_deref() != Some(bytes.as_slice());
    if let Some(key) = node_key {
        let claim = verified.policy.claim(&key, jurisdiction, region);
        if !claim.allowed {
            let which = if from_store {
                "the bundle the store kept from a push"
            } else {
                "the configured bundle"
            };
            anyhow::bail!(
                "policy epoch {} ({which}) does not grant this node's key jurisdiction {jurisdiction} in region {region}: {}",
                verified.policy.epoch(),
                claim.reason
            );
        }
    }
    Ok(StartPolicy {
        verified: Some(verified),
        from_store,
        stale,
    })
}

/// The newest bundle a node can start with: the one in its config, or the one it last
/// applied (kept in the store), whichever has the higher epoch and verifies. A stored
/// bundle that no longer verifies (the operator trust changed) is skipped with a warning;
/// a configured bundle that does not verify stops the node (an operator error).
pub(crate) fn at_start(
    trust: &Trust,
    configured: Option<Vec<u8>>,
    stored: Option<Vec<u8>>,
    mut stale: impl FnMut(&VerifyError),
) -> Result<Option<(VerifiedBundle, Vec<u8>)>, VerifyError> {
    let configured = match configured {
        None => None,
        Some(bytes) => Some((verify_bundle(&bytes, trust, 0)?, bytes)),
    };
    let stored = stored.and_then(|bytes| match verify_bundle(&bytes, trust, 0) {
        Ok(v) => Some((v, bytes)),
        Err(e) => {
            stale(&e);
            None
        }
    });
    Ok(match (configured, stored) {
        (Some(c), Some(s)) => {
            let (se, ce) = (s.0.policy.epoch(), c.0.policy.epoch());
            // Two bundles of one epoch: the tie rule of `check`, so a restart does not undo
            // it.
            Some(if se > ce || (se == ce && wins_tie(&s.1, &c.1)) {
                s
            } else {
                c
            })
        }
        (c, s) => c.or(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn bundle(epoch: u64) -> weft_policy::Bundle {
        weft_policy::Bundle::from_toml(&format!(
            "format = 1\nepoch = {epoch}\n\
             [jurisdictions.EU]\nregions = [\"aws:eu-west-1\"]\n\
             [classes.public]\nanywhere = true\n"
        ))
        .expect("bundle")
    }

    fn signed(epoch: u64, key: &SigningKey) -> Vec<u8> {
        weft_policy::sign_bundle(&bundle(epoch), &[key]).expect("sign")
    }

    #[test]
    fn start_takes_the_newest_verified_bundle() {
        let op = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let trust = Trust::new(vec![op.verifying_key().to_bytes()], 1).expect("trust");
        let epoch = |r: Option<(VerifiedBundle, Vec<u8>)>| r.map(|(v, _)| v.policy.epoch());
        // The stored bundle is newer: a push applied before the restart wins.
        let r = at_start(&trust, Some(signed(2, &op)), Some(signed(5, &op)), |_| {}).expect("ok");
        assert_eq!(epoch(r), Some(5));
        // The configured bundle is newer (the operator edited the config).
        let r = at_start(&trust, Some(signed(6, &op)), Some(signed(5, &op)), |_| {}).expect("ok");
        assert_eq!(epoch(r), Some(6));
        // A stored bundle from a trust no longer configured is skipped.
        let r = at_start(
            &trust,
            Some(signed(2, &op)),
            Some(signed(9, &other)),
            |_| {},
        )
        .expect("ok");
        assert_eq!(epoch(r), Some(2));
        let r = at_start(&trust, None, Some(signed(9, &other)), |_| {}).expect("ok");
        assert_eq!(epoch(r), None);
        // A configured bundle that does not verify is an error, with the reason.
        let e =
            at_start(&trust, Some(signed(2, &other)), None, |_| {}).expect_err("unknown signer");
        assert_eq!(e.code(), "bundle_unknown_signer");
    }

    /// `weft check-config` verifies the configured bundle as a starting node does: a
    /// missing file, bytes that are not a bundle and too few signatures are errors naming
    /// the problem; a good bundle passes, and its jurisdiction claim is checked.
    #[test]
    fn check_config_refuses_what_the_node_refuses() {
        let (a, b) = (
            SigningKey::from_bytes(&[7; 32]),
            SigningKey::from_bytes(&[8; 32]),
        );
        let trust = Trust::new(
            vec![a.verifying_key().to_bytes(), b.verifying_key().to_bytes()],
            2,
        )
        .expect("trust");
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).expect("write");
            p
        };
        let check = |p: &std::path::Path| {
            check_configured(&trust, Some(p), None, None, "EU", "aws:eu-west-1")
                .map(|v| v.verified.map(|v| v.policy.epoch()))
                .map_err(|e| format!("{e:#}"))
        };
        let missing = dir.path().join("absent.cbor");
        assert!(
            check(&missing)
                .unwrap_err()
                .contains("reading policy bundle")
        );
        let junk = write("junk.cbor", b"not a bundle");
        assert!(check(&junk).unwrap_err().contains("junk.cbor"));
        let one = write("one.cbor", &signed(3, &a));
        let e = check(&one).unwrap_err();
        assert!(e.contains("one.cbor") && e.contains("1"), "{e}");
        let both = write(
            "both.cbor",
            &weft_policy::sign_bundle(&bundle(3), &[&a, &b]).expect("sign"),
        );
        assert_eq!(check(&both), Ok(Some(3)));
        // No node in the bundle's grants: a node key claiming EU is refused, as at start.
        let e = check_configured(
            &trust,
            Some(&both),
            None,
            Some([9; 32]),
            "EU",
            "aws:eu-west-1",
        )
        .unwrap_err();
        assert!(format!("{e}").contains("does not grant"), "{e}");
        assert_eq!(
            check_configured(&trust, None, None, None, "EU", "aws:eu-west-1")
                .map(|v| v.verified.is_none())
                .ok(),
            Some(true)
        );
    }

    /// The check takes the bundle the store kept from a push into account as a starting
    /// node does: a newer one is the one named and whose grants the node's claim is
    /// checked against (a push that no longer grants the node fails the check before a
    /// restart would); one that no longer verifies is reported as skipped.
    #[test]
    fn check_config_weighs_the_bundle_the_store_kept() {
        let op = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let trust = Trust::new(vec![op.verifying_key().to_bytes()], 1).expect("trust");
        let dir = tempfile::tempdir().expect("dir");
        let configured = dir.path().join("policy.cbor");
        std::fs::write(&configured, signed(3, &op)).expect("write");
        let check = |stored: Option<Vec<u8>>, key: Option<[u8; 32]>| {
            check_configured(
                &trust,
                Some(&configured),
                stored,
                key,
                "EU",
                "aws:eu-west-1",
            )
        };
        let r = check(Some(signed(5, &op)), None).expect("newer stored");
        assert_eq!(r.verified.map(|v| v.policy.epoch()), Some(5));
        assert!(r.from_store && r.stale.is_none());
        let r = check(Some(signed(2, &op)), None).expect("older stored");
        assert_eq!(r.verified.map(|v| v.policy.epoch()), Some(3));
        assert!(!r.from_store);
        let r = check(Some(signed(3, &op)), None).expect("the configured one, stored");
        assert!(!r.from_store, "the store's copy of the configured bundle");
        let r = check(Some(signed(9, &other)), None).expect("stale stored");
        assert_eq!(r.verified.map(|v| v.policy.epoch()), Some(3));
        assert!(r.stale.is_some_and(|e| !e.is_empty()));
        // A key the stored (chosen) bundle does not grant: named as the store's bundle.
        let e = check(Some(signed(5, &op)), Some([9; 32])).unwrap_err();
        assert!(
            format!("{e}").contains("epoch 5 (the bundle the store kept from a push)"),
            "{e}"
        );
    }

    /// Two different bundles of one epoch: whichever a node applied first, the one whose
    /// bytes hash higher ends in force, and the other is refused as a rollback.
    #[test]
    fn two_bundles_of_one_epoch_end_the_same_on_every_node() {
        let op = SigningKey::from_bytes(&[7; 32]);
        let trust = Trust::new(vec![op.verifying_key().to_bytes()], 1).expect("trust");
        let other = |epoch: u64| {
            let b = weft_policy::Bundle::from_toml(&format!(
                "format = 1\nepoch = {epoch}\ndescription = \"the other one\"\n\
                 [jurisdictions.EU]\nregions = [\"aws:eu-west-1\"]\n\
                 [classes.public]\nanywhere = true\n"
            ))
            .expect("bundle");
            weft_policy::sign_bundle(&b, &[&op]).expect("sign")
        };
        let (a, b) = (signed(4, &op), other(4));
        let in_force = |first: &[u8], second: &[u8]| {
            let state = PolicyState::new(None);
            for bytes in [first, second] {
                if let Ok(v) = check(&trust, &state, bytes) {
                    state.set(crate::policy_state::Applied {
                        policy: Arc::new(v.policy),
                        signers: Vec::new(),
                        signed: Arc::new(bytes.to_vec()),
                    });
                }
            }
            state.current().expect("applied").signed.as_ref().clone()
        };
        let one = in_force(&a, &b);
        assert_eq!(one, in_force(&b, &a), "the order decided");
        // The loser is refused as a rollback; an older epoch still is.
        let state = PolicyState::new(None);
        let v = check(&trust, &state, &one).expect("first");
        state.set(crate::policy_state::Applied {
            policy: Arc::new(v.policy),
            signers: Vec::new(),
            signed: Arc::new(one.clone()),
        });
        // A restart keeps the winner whichever of the config and the store holds it.
        for (configured, stored) in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
            let r = at_start(&trust, Some(configured), Some(stored), |_| {}).expect("ok");
            assert_eq!(r.map(|(_, bytes)| bytes), Some(one.clone()));
        }
        let loser = if one == a { &b } else { &a };
        assert!(matches!(
            check(&trust, &state, loser),
            Err(VerifyError::Rollback { .. })
        ));
        assert!(matches!(
            check(&trust, &state, &signed(3, &op)),
            Err(VerifyError::Rollback { .. })
        ));
        assert!(check(&trust, &state, &signed(5, &op)).is_ok());
    }
}
