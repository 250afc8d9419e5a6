//! Property and refusal tests: canonical encoding, signatures k of n, rollback, every
//! verification refusal, residency decisions against a model, every limit by name.

mod common;

use common::*;
use proptest::prelude::*;
use weft_fabric::Residency;
use weft_fabric::mesh::ReplicationFilter;
use weft_policy::limits::*;
use weft_policy::*;

fn example() -> Bundle {
    Bundle::from_toml(EXAMPLE).unwrap()
}

fn trust(threshold: usize) -> Trust {
    Trust::new([public(1), public(2), public(3)], threshold).unwrap()
}

// ------------------------------------------------------------ encoding and signatures

#[test]
fn canonical_encoding_is_deterministic_and_unique() {
    let b = example();
    let cbor = b.to_cbor().unwrap();
    assert_eq!(cbor, b.to_cbor().unwrap());
    assert_eq!(Bundle::from_cbor(&cbor).unwrap(), b);
    // Trailing bytes and non-canonical forms are refused.
    let mut trailing = cbor.clone();
    trailing.push(0);
    assert!(matches!(
        Bundle::from_cbor(&trailing),
        Err(BundleError::NonCanonical { .. })
    ));
    // The same map with its first two keys swapped decodes to the same value, but is not
    // canonical. (cbor4ii's serde decoder accepts any key order; the re-encoding refuses.)
    let value: cbor4ii::core::Value = cbor4ii::serde::from_slice(&cbor).unwrap();
    let cbor4ii::core::Value::Map(mut entries) = value else {
        panic!("not a map")
    };
    entries.swap(0, 1);
    let swapped = cbor4ii::serde::to_vec(Vec::new(), &cbor4ii::core::Value::Map(entries)).unwrap();
    assert_ne!(swapped, cbor);
    assert!(matches!(
        Bundle::from_cbor(&swapped),
        Err(BundleError::NonCanonical { .. })
    ));
}

#[test]
fn every_verification_refusal_is_distinct() {
    let b = example();
    let t = trust(2);
    // Unsigned.
    let unsigned = SignedBundle::new(&b).unwrap().encode();
    assert_eq!(
        verify_bundle(&unsigned, &t, 0).unwrap_err(),
        VerifyError::Unsigned
    );
    // Unknown signer.
    let signed = sign_bundle(&b, &[&key(1), &key(8)]).unwrap();
    assert!(matches!(
        verify_bundle(&signed, &t, 0),
        Err(VerifyError::UnknownSigner { .. })
    ));
    // Too few signers.
    let one = sign_bundle(&b, &[&key(1)]).unwrap();
    assert_eq!(
        verify_bundle(&one, &t, 0).unwrap_err(),
        VerifyError::TooFewSigners {
            signers: 1,
            threshold: 2
        }
    );
    // Bad signature: a signature over another bundle.
    let mut other = b.clone();
    other.epoch = 8;
    let mut s = SignedBundle::decode(&sign_bundle(&b, &[&key(1), &key(2)]).unwrap()).unwrap();
    let s_other = SignedBundle::decode(&sign_bundle(&other, &[&key(1)]).unwrap()).unwrap();
    let i = s
        .signatures
        .iter()
        .position(|(k, _)| *k == public(1))
        .unwrap();
    s.signatures[i].1 = s_other.signatures[0].1;
    assert!(matches!(
        verify_bundle(&s.encode(), &t, 0),
        Err(VerifyError::BadSignature { .. })
    ));
    // Rollback: older or equal epoch.
    let good = sign_bundle(&b, &[&key(1), &key(2)]).unwrap();
    assert_eq!(
        verify_bundle(&good, &t, 7).unwrap_err(),
        VerifyError::Rollback {
            epoch: 7,
            current: 7
        }
    );
    assert!(matches!(
        verify_bundle(&good, &t, 9),
        Err(VerifyError::Rollback { .. })
    ));
    assert!(verify_bundle(&good, &t, 6).is_ok());
    // Oversize.
    let big = vec![0u8; BUNDLE_LEN_MAX + 1];
    let e = verify_bundle(&big, &t, 0).unwrap_err();
    assert!(matches!(e, VerifyError::Oversize { .. }));
    assert!(e.to_string().contains("BUNDLE_LEN_MAX"));
    // Malformed CBOR.
    assert!(matches!(
        verify_bundle(&[0xff, 0x00], &t, 0),
        Err(VerifyError::Malformed(_))
    ));
    assert!(matches!(
        verify_bundle(b"\x82\x41\x00\x80", &t, 0),
        Err(VerifyError::Unsigned)
    ));
    let garbage_bundle = {
        let mut s = SignedBundle {
            bundle: b"\xa0".to_vec(),
            signatures: vec![],
        };
        s.add_signature(&key(1));
        s.add_signature(&key(2));
        s.encode()
    };
    let e = verify_bundle(&garbage_bundle, &t, 0).unwrap_err();
    assert!(
        matches!(e, VerifyError::Malformed(BundleError::Cbor { .. })),
        "{e}"
    );
    // Signed, well-formed, but invalid content.
    let mut bad = b.clone();
    bad.principals
        .get_mut("orders-api")
        .unwrap()
        .roles
        .push("ghost".into());
    let bad_cbor = {
        let mut s = SignedBundle::decode(&good).unwrap();
        s.bundle = weft_policy::codec::encode_bundle(&bad);
        s.signatures.clear();
        s.add_signature(&key(1));
        s.add_signature(&key(2));
        s.encode()
    };
    let e = verify_bundle(&bad_cbor, &t, 0).unwrap_err();
    assert!(
        matches!(e, VerifyError::Invalid(BundleError::Unknown { .. })),
        "{e}"
    );
    assert!(
        e.to_string().contains("principals.orders-api.roles[1]"),
        "{e}"
    );
    // Signers out of order.
    let mut s = SignedBundle::decode(&good).unwrap();
    s.signatures.reverse();
    assert!(matches!(
        verify_bundle(&s.encode(), &t, 0),
        Err(VerifyError::SignerOrder { index: 1 })
    ));
}

#[test]
fn trust_configuration_is_checked() {
    assert!(matches!(
        Trust::new([public(1)], 0),
        Err(TrustError::Threshold { .. })
    ));
    assert!(matches!(
        Trust::new([public(1), public(1)], 2),
        Err(TrustError::Threshold { .. })
    ));
    assert!(matches!(
        Trust::new([], 1),
        Err(TrustError::OperatorCount { .. })
    ));
    let many: Vec<[u8; 32]> = (1..=OPERATORS_MAX as u8 + 1).map(public).collect();
    let e = Trust::new(many, 1).unwrap_err();
    assert!(e.to_string().contains("OPERATORS_MAX"));
    // The identity point: a weak key.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    assert!(matches!(
        Trust::new([weak], 1),
        Err(TrustError::BadKey { .. })
    ));
}

#[test]
fn every_bit_flip_in_a_signed_bundle_is_refused() {
    // A small bundle keeps the exhaustive flip count modest.
    let b = Bundle::from_toml(
        "format = 1\nepoch = 3\n[jurisdictions.EU]\nregions = [\"r1\"]\n[classes.c]\njurisdictions = [\"EU\"]\ntransit = \"sealed\"\n",
    )
    .unwrap();
    let signed = sign_bundle(&b, &[&key(1), &key(2)]).unwrap();
    let t = trust(2);
    assert!(verify_bundle(&signed, &t, 0).is_ok());
    for byte in 0..signed.len() {
        for bit in 0..8 {
            let mut flipped = signed.clone();
            flipped[byte] ^= 1 << bit;
            assert!(
                verify_bundle(&flipped, &t, 0).is_err(),
                "flip of bit {bit} in byte {byte} accepted"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// k of n: accepted exactly when at least k trusted operators signed.
    #[test]
    fn threshold_k_of_n(n in 1usize..=5, k_raw in 1usize..=5, signers in proptest::collection::btree_set(1u8..=5, 0..=5)) {
        let k = k_raw.min(n);
        let t = Trust::new((1..=n as u8).map(public), k).unwrap();
        let keys: Vec<_> = signers.iter().map(|s| key(*s)).collect();
        let refs: Vec<_> = keys.iter().collect();
        let signed = sign_bundle(&example(), &refs).unwrap();
        let result = verify_bundle(&signed, &t, 0);
        let unknown = signers.iter().any(|s| usize::from(*s) > n);
        match result {
            Ok(v) => {
                prop_assert!(!unknown && signers.len() >= k);
                prop_assert_eq!(v.signers.len(), signers.len());
            }
            Err(VerifyError::Unsigned) => prop_assert!(signers.is_empty()),
            Err(VerifyError::UnknownSigner { .. }) => prop_assert!(unknown),
            Err(VerifyError::TooFewSigners { signers: got, threshold }) => {
                prop_assert!(!unknown);
                prop_assert_eq!(got, signers.len());
                prop_assert_eq!(threshold, k);
                prop_assert!(got < k);
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    /// Epochs only grow.
    #[test]
    fn rollback_refused(epoch in 1u64..1000, current in 0u64..1000) {
        let mut b = example();
        b.epoch = epoch;
        let signed = sign_bundle(&b, &[&key(1), &key(2)]).unwrap();
        let r = verify_bundle(&signed, &trust(2), current);
        if epoch > current {
            prop_assert_eq!(r.unwrap().policy.epoch(), epoch);
        } else {
            prop_assert_eq!(r.unwrap_err(), VerifyError::Rollback { epoch, current });
        }
    }

    /// Random single-byte corruption anywhere never yields an accepted bundle with
    /// different content.
    #[test]
    fn corruption_refused(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let signed = sign_bundle(&example(), &[&key(1), &key(2)]).unwrap();
        let mut bad = signed.clone();
        let i = pos.index(bad.len());
        bad[i] ^= xor;
        prop_assert!(verify_bundle(&bad, &trust(2), 0).is_err());
    }
}

// ------------------------------------------------------------ bundles generated at random

/// A random bundle over jurisdictions J0..J3 (regions rJ, node key seeds 10+J) and
/// classes c0..c3 with random jurisdiction sets and transit modes, or anywhere.
/// Each class's jurisdiction indices (empty: anywhere) and transit mode.
type ClassModel = Vec<(Vec<usize>, Option<TransitMode>)>;

fn bundle_strategy() -> impl Strategy<Value = (Bundle, ClassModel)> {
    let class = prop_oneof![
        1 => Just((vec![], None)),
        4 => (proptest::collection::btree_set(0usize..4, 1..=4), prop_oneof![Just(TransitMode::Forbidden), Just(TransitMode::Sealed)])
            .prop_map(|(set, t)| (set.into_iter().collect::<Vec<_>>(), Some(t))),
    ];
    (proptest::collection::vec(class, 4), 1u64..u64::MAX).prop_map(|(classes, epoch)| {
        let mut b = Bundle::from_toml("format = 1\nepoch = 1\n").unwrap();
        b.epoch = epoch;
        for j in 0..4u8 {
            b.jurisdictions.insert(
                format!("J{j}"),
                JurisdictionSpec {
                    regions: vec![format!("r{j}")],
                    nodes: vec![hex(&public(10 + j))],
                },
            );
        }
        for (i, (set, transit)) in classes.iter().enumerate() {
            b.classes.insert(
                format!("c{i}"),
                ClassSpec {
                    description: None,
                    jurisdictions: set.iter().map(|j| format!("J{j}")).collect(),
                    anywhere: set.is_empty(),
                    transit: *transit,
                },
            );
        }
        (b, classes)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Canonical CBOR round-trips and is deterministic for random bundles.
    #[test]
    fn cbor_round_trip((b, _) in bundle_strategy()) {
        let cbor = b.to_cbor().unwrap();
        let back = Bundle::from_cbor(&cbor).unwrap();
        prop_assert_eq!(&back, &b);
        prop_assert_eq!(back.to_cbor().unwrap(), cbor);
    }

    /// Hop decisions match a simple model, with the event's stream under a rule that names
    /// another class or none (an epoch that reclassified the stream after the event was
    /// stamped: a narrower class holds it too, a wider one does not widen it), and a rule
    /// that keeps the stream to some regions (`replication = "regions"`) or not. The
    /// filter, `may_hold` and `regions_that_may_hold` agree with the model.
    #[test]
    fn residency_matches_model(
        (mut b, classes) in bundle_strategy(),
        rule in proptest::option::of(0usize..4),
        scope in proptest::option::of(proptest::collection::btree_set(0usize..4, 1..=3)),
        class in 0usize..4,
        event_set in proptest::option::of(proptest::collection::btree_set(0usize..5, 1..=3)),
        sealed in any::<bool>(),
        node_key in 0u8..4,
        claimed in 0usize..5,
        region in 0usize..4,
    ) {
        // A scope comes with a rule.
        let scope = scope.filter(|_| rule.is_some());
        if let Some(rule) = rule {
            b.streams = vec![StreamRule {
                pattern: "s.>".into(),
                classification: format!("c{rule}"),
                replication: if scope.is_some() { ReplicationScope::Regions } else { ReplicationScope::All },
                regions: scope.iter().flatten().map(|r| format!("r{r}")).collect(),
                retention_s: None,
                retention_bytes: None,
                conflict: None,
                priority: Priority::Normal,
            }];
        }
        // A scope with no region of its rule's restricted class is refused: nowhere could
        // hold the stream.
        if let (Some(rule), Some(scope)) = (rule, &scope)
            && !classes[rule].0.is_empty()
            && scope.iter().all(|r| !classes[rule].0.contains(r))
        {
            let e = Policy::compile(&b).unwrap_err().to_string();
            prop_assert!(e.contains("could be held nowhere"), "{}", e);
            return Ok(());
        }
        let p = Policy::compile(&b).unwrap();
        // J4 exists in events only (unknown to the bundle).
        let residency = match &event_set {
            None => Residency::Unrestricted,
            Some(set) => Residency::only(set.iter().map(|j| format!("J{j}"))).unwrap(),
        };
        let e = event("s.x", &format!("c{class}"), residency, sealed);
        let node = member(10 + node_key, &format!("J{claimed}"), &format!("r{region}"));

        // The model.
        let granted = usize::from(node_key) == claimed && region == claimed;
        let (class_set, transit) = &classes[class];
        // The rule's class restricts when it is another class with a jurisdiction set.
        let reclassified = rule
            .filter(|r| *r != class)
            .map(|r| &classes[r])
            .filter(|(set, _)| !set.is_empty());
        let in_event = |j: usize| event_set.as_ref().is_none_or(|s| s.contains(&j));
        let in_class = |j: usize| class_set.is_empty() || class_set.contains(&j);
        let in_rule = |j: usize| reclassified.is_none_or(|(set, _)| set.contains(&j));
        let unrestricted = event_set.is_none() && class_set.is_empty() && reclassified.is_none();
        let sealed_ok = *transit == Some(TransitMode::Sealed)
            && reclassified.is_none_or(|(_, t)| *t == Some(TransitMode::Sealed));
        // A region counts only for a node whose claim holds.
        let in_scope = |r: usize| scope.as_ref().is_none_or(|s| s.contains(&r));
        let in_residency = |j: usize| unrestricted || (in_event(j) && in_class(j) && in_rule(j));
        let expected = if granted && in_residency(claimed) && in_scope(region)
            || unrestricted && scope.is_none()
        {
            Hop::Clear
        } else if !unrestricted && sealed_ok && sealed {
            Hop::SealedTransit
        } else {
            Hop::Refuse
        };
        prop_assert_eq!(p.hop(&e, &node).hop, expected);
        let filter = PolicyFilter::new(std::sync::Arc::new(Policy::compile(&b).unwrap()));
        // Twice: the second reads the scope the first left in the event's memo.
        for _ in 0..2 {
            prop_assert_eq!(filter.hop(&e, &node), expected.filter_hop());
        }
        prop_assert_eq!(filter.unrestricted(&e), unrestricted && scope.is_none());
        prop_assert_eq!(
            p.may_hold(&node, e.stream(), &format!("c{class}"), &e.security().residency),
            expected == Hop::Clear
        );
        // The same answer for the node placed once beforehand (a read's guard).
        prop_assert_eq!(
            p.may_hold_at(
                p.placement(&node),
                e.stream(),
                &format!("c{class}"),
                &e.security().residency
            ),
            expected == Hop::Clear
        );
        let may_hold = p
            .regions_that_may_hold(e.stream(), &format!("c{class}"), &e.security().residency)
            .map(|set| set.into_iter().map(String::from).collect::<Vec<_>>());
        let model = (!(unrestricted && scope.is_none())).then(|| {
            (0..4)
                .filter(|&j| in_residency(j) && in_scope(j))
                .map(|j| format!("r{j}"))
                .collect::<Vec<_>>()
        });
        prop_assert_eq!(may_hold, model);
        prop_assert_eq!(p.placement(&node).is_granted(), granted);
        // Stamping never yields a set wider than the class.
        let stamp = p.stamp(e.stream(), Some(&format!("c{class}")), &Residency::Unrestricted).unwrap();
        let class_residency = p.class(&format!("c{class}")).unwrap().residency.clone();
        prop_assert_eq!(stamp.residency, class_residency);
    }
}

// ------------------------------------------------------------ every limit by name

fn refused_with(b: &Bundle, limit: &str) {
    let e = Policy::compile(b).unwrap_err().to_string();
    assert!(e.contains(limit), "expected {limit}, got: {e}");
}

fn names(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn every_limit_is_refused_by_name() {
    let base = example();

    let mut b = base.clone();
    for j in 0..=JURISDICTIONS_MAX {
        b.jurisdictions.insert(
            format!("X{j}"),
            JurisdictionSpec {
                regions: vec![],
                nodes: vec![],
            },
        );
    }
    refused_with(&b, "JURISDICTIONS_MAX");

    let mut b = base.clone();
    b.jurisdictions.get_mut("EU").unwrap().regions = names(REGIONS_MAX + 1, "r");
    refused_with(&b, "REGIONS_MAX");

    let mut b = base.clone();
    b.jurisdictions.get_mut("EU").unwrap().nodes =
        (0..=NODES_MAX).map(|i| format!("{i:064x}")).collect();
    refused_with(&b, "NODES_MAX");

    let mut b = base.clone();
    for t in names(TENANTS_MAX + 1, "t") {
        b.tenants.insert(t, TenantSpec { description: None });
    }
    refused_with(&b, "TENANTS_MAX");

    let mut b = base.clone();
    for r in names(ROLES_MAX + 1, "role") {
        b.roles.insert(r, RoleSpec { description: None });
    }
    refused_with(&b, "ROLES_MAX");

    let mut b = base.clone();
    for (i, p) in names(PRINCIPALS_MAX + 1, "p").into_iter().enumerate() {
        b.principals.insert(
            p,
            PrincipalSpec {
                tenant: None,
                roles: vec![],
                node_key: None,
                device_key: None,
                token_sha256: Some(format!("{i:064x}")),
            },
        );
    }
    refused_with(&b, "PRINCIPALS_MAX");

    let mut b = base.clone();
    let roles = names(PRINCIPAL_ROLES_MAX + 1, "role");
    for r in &roles {
        b.roles.insert(r.clone(), RoleSpec { description: None });
    }
    b.principals.get_mut("orders-api").unwrap().roles = roles;
    refused_with(&b, "PRINCIPAL_ROLES_MAX");

    let mut b = base.clone();
    b.access = vec![base.access[0].clone(); ACCESS_RULES_MAX + 1];
    refused_with(&b, "ACCESS_RULES_MAX");

    let mut b = base.clone();
    b.access[0].streams = names(RULE_LIST_LEN_MAX + 1, "s");
    refused_with(&b, "RULE_LIST_LEN_MAX");

    let mut b = base.clone();
    for c in names(CLASSES_MAX + 1, "k") {
        b.classes.insert(
            c,
            ClassSpec {
                description: None,
                jurisdictions: vec![],
                anywhere: true,
                transit: None,
            },
        );
    }
    refused_with(&b, "CLASSES_MAX");

    let mut b = base.clone();
    for j in 0..=weft_fabric::limits::RESIDENCY_LEN_MAX {
        b.jurisdictions.insert(
            format!("X{j}"),
            JurisdictionSpec {
                regions: vec![],
                nodes: vec![],
            },
        );
    }
    b.classes.get_mut("eu-personal").unwrap().jurisdictions =
        b.jurisdictions.keys().cloned().collect();
    refused_with(&b, "RESIDENCY_LEN_MAX");

    let mut b = base.clone();
    b.streams = vec![base.streams[0].clone(); STREAM_RULES_MAX + 1];
    refused_with(&b, "STREAM_RULES_MAX");

    let mut b = base.clone();
    b.streams[0].regions = names(STREAM_REGIONS_MAX + 1, "r");
    refused_with(&b, "STREAM_REGIONS_MAX");

    // Distinct region sets of `replication = "regions"` rules: seven regions give enough
    // sets; one rule per set, and the same set again and again shares one scope.
    let mut b = base.clone();
    b.jurisdictions
        .get_mut("EU")
        .unwrap()
        .regions
        .extend(names(7, "r"));
    let rule = |set: usize| {
        let mut r = base.streams[0].clone();
        r.pattern = format!("s{set}.>");
        r.regions = (0..7)
            .filter(|k| set & (1 << k) != 0)
            .map(|k| format!("r{k}"))
            .collect();
        r
    };
    b.streams = (1..=REPLICATION_SCOPES_MAX).map(rule).collect();
    b.streams
        .extend((0..100).map(|_| rule(REPLICATION_SCOPES_MAX)));
    Policy::compile(&b).expect("as many sets as the limit, one shared by many rules");
    b.streams.push(rule(REPLICATION_SCOPES_MAX + 1));
    refused_with(&b, "REPLICATION_SCOPES_MAX");

    let mut b = base.clone();
    let t = base.transforms["orders-masked"].clone();
    for (i, n) in names(TRANSFORMS_MAX + 1, "t").into_iter().enumerate() {
        let mut t = t.clone();
        t.target = format!("derived.t{i}");
        b.transforms.insert(n, t);
    }
    refused_with(&b, "TRANSFORMS_MAX");

    let mut b = base.clone();
    b.transforms.get_mut("orders-masked").unwrap().drop = names(TRANSFORM_FIELDS_MAX + 1, "f");
    refused_with(&b, "TRANSFORM_FIELDS_MAX");

    let mut b = base.clone();
    b.transforms.get_mut("orders-masked").unwrap().drop =
        vec![["a"; FIELD_PATH_DEPTH_MAX + 1].join(".")];
    refused_with(&b, "FIELD_PATH_DEPTH_MAX");

    let mut b = base.clone();
    b.transforms.get_mut("orders-masked").unwrap().drop = vec!["a".repeat(FIELD_PATH_LEN_MAX + 1)];
    refused_with(&b, "FIELD_PATH_LEN_MAX");

    let mut b = base.clone();
    b.limits = (0..=RATE_LIMITS_MAX)
        .map(|_| base.limits[0].clone())
        .collect();
    refused_with(&b, "RATE_LIMITS_MAX");

    let mut b = base.clone();
    for (i, d) in names(DEVICES_MAX + 1, "dev").into_iter().enumerate() {
        b.principals.insert(
            d.clone(),
            PrincipalSpec {
                tenant: Some("acme".into()),
                roles: vec![],
                node_key: None,
                device_key: Some(format!("{:064x}", i + 1)),
                token_sha256: None,
            },
        );
        b.devices.insert(d, base.devices["till-dublin-7"].clone());
    }
    refused_with(&b, "DEVICES_MAX");

    let mut b = base.clone();
    b.devices.get_mut("till-dublin-7").unwrap().streams = names(DEVICE_STREAMS_MAX + 1, "s");
    refused_with(&b, "DEVICE_STREAMS_MAX");

    let mut b = base.clone();
    b.tenants.insert(
        "t".repeat(NAME_LEN_MAX + 1),
        TenantSpec { description: None },
    );
    refused_with(&b, "NAME_LEN_MAX");

    let mut b = base.clone();
    b.description = Some("d".repeat(DESCRIPTION_LEN_MAX + 1));
    refused_with(&b, "DESCRIPTION_LEN_MAX");

    let mut b = base.clone();
    b.classes.insert(
        "c".repeat(weft_fabric::limits::CLASSIFICATION_LEN_MAX + 1),
        ClassSpec {
            description: None,
            jurisdictions: vec![],
            anywhere: true,
            transit: None,
        },
    );
    refused_with(&b, "CLASSIFICATION_LEN_MAX");

    let big = format!("{EXAMPLE}\n#{}", "x".repeat(BUNDLE_TOML_LEN_MAX));
    assert!(
        Bundle::from_toml(&big)
            .unwrap_err()
            .to_string()
            .contains("BUNDLE_TOML_LEN_MAX")
    );

    // SIGNATURES_MAX: more signatures than any node could trust.
    let mut s = SignedBundle::new(&base).unwrap();
    for n in 1..=(SIGNATURES_MAX as u8 + 1) {
        s.add_signature(&key(n));
    }
    let e = verify_bundle(&s.encode(), &trust(1), 0).unwrap_err();
    assert!(e.to_string().contains("SIGNATURES_MAX"), "{e}");

    // BUNDLE_LEN_MAX when signing: a bundle whose encoding is too large to carry.
    let mut b = base.clone();
    for t in names(TENANTS_MAX - 2, "t") {
        b.tenants.insert(
            t,
            TenantSpec {
                description: Some("d".repeat(DESCRIPTION_LEN_MAX)),
            },
        );
    }
    assert!(Policy::compile(&b).is_ok());
    let e = sign_bundle(&b, &[&key(1)]).unwrap_err().to_string();
    assert!(e.contains("BUNDLE_LEN_MAX"), "{e}");
    let e = Bundle::from_cbor(&weft_policy::codec::encode_bundle(&b))
        .unwrap_err()
        .to_string();
    assert!(e.contains("BUNDLE_LEN_MAX"), "{e}");
}
