//! The example bundle (`policy/examples/eu-retail.toml`) parses, signs, verifies and
//! evaluates as `docs/policy.md` documents.

mod common;

use common::*;
use weft_fabric::mesh::{FilterHop, ReplicationFilter};
use weft_fabric::{EventId, Residency, StreamName};
use weft_policy::*;

fn policy() -> Policy {
    Policy::compile(&Bundle::from_toml(EXAMPLE).unwrap()).unwrap()
}

fn stream(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

#[test]
fn parses_signs_verifies() {
    let bundle = Bundle::from_toml(EXAMPLE).unwrap();
    assert_eq!(bundle.epoch, 7);
    let signed = sign_bundle(&bundle, &[&key(1), &key(2)]).unwrap();
    let trust = Trust::new([public(1), public(2), public(3)], 2).unwrap();
    let verified = verify_bundle(&signed, &trust, 6).unwrap();
    assert_eq!(verified.policy.epoch(), 7);
    assert_eq!(verified.policy.bundle(), &bundle);
    let mut signers = vec![public(1), public(2)];
    signers.sort();
    assert_eq!(verified.signers, signers);
    // Same bundle, same bytes: signing is deterministic.
    assert_eq!(signed, sign_bundle(&bundle, &[&key(2), &key(1)]).unwrap());
    // The CBOR decodes back to the same bundle.
    assert_eq!(
        Bundle::from_cbor(&bundle.to_cbor().unwrap()).unwrap(),
        bundle
    );
}

fn req<'a>(
    principal: &'a str,
    action: Action,
    stream: &'a StreamName,
    tenant: &'a str,
    classification: Option<&'a str>,
    region: &'a str,
) -> AccessRequest<'a> {
    AccessRequest {
        principal,
        action,
        stream,
        tenant,
        classification,
        region,
    }
}

#[test]
fn access_decisions() {
    let p = policy();
    let orders = stream("orders.eu.ie");
    let d = p.authorize(&req(
        "orders-api",
        Action::Publish,
        &orders,
        "acme",
        None,
        "aws:us-east-1",
    ));
    assert!(d.allowed);
    assert_eq!(
        d.reason.to_string(),
        "allowed by access rule orders-publish"
    );
    // Bound to tenant acme: refused for globex.
    let d = p.authorize(&req(
        "orders-api",
        Action::Publish,
        &orders,
        "globex",
        None,
        "aws:eu-west-1",
    ));
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        Reason::TenantMismatch {
            tenant: "acme".into()
        }
    );
    // No rule lets the orders API read.
    let d = p.authorize(&req(
        "orders-api",
        Action::Read,
        &orders,
        "acme",
        None,
        "aws:eu-west-1",
    ));
    assert_eq!(
        d,
        Decision {
            allowed: false,
            reason: Reason::NoRuleAllows
        }
    );
    // Analysts read global streams, but the deny rule wins for EU personal data.
    let global = stream("orders.global.masked");
    let d = p.authorize(&req(
        "analytics",
        Action::Subscribe,
        &global,
        "acme",
        Some("public"),
        "aws:us-east-1",
    ));
    assert!(d.allowed);
    let d = p.authorize(&req(
        "analytics",
        Action::Subscribe,
        &global,
        "acme",
        Some("eu-personal"),
        "aws:us-east-1",
    ));
    assert!(!d.allowed);
    assert_eq!(
        d.reason.to_string(),
        "denied by access rule no-personal-data-for-analysts"
    );
    // Unknown principal.
    let d = p.authorize(&req(
        "mallory",
        Action::Publish,
        &orders,
        "acme",
        None,
        "aws:eu-west-1",
    ));
    assert_eq!(d.reason, Reason::UnknownPrincipal);
    // The enrolled till publishes to its stream only.
    let till = stream("telemetry.tills.dublin-7.temp");
    let d = p.authorize(&req(
        "till-dublin-7",
        Action::Publish,
        &till,
        "acme",
        None,
        "aws:eu-west-1",
    ));
    assert_eq!(
        d,
        Decision {
            allowed: true,
            reason: Reason::Enrolled
        }
    );
    let d = p.authorize(&req(
        "till-dublin-7",
        Action::Publish,
        &orders,
        "acme",
        None,
        "aws:eu-west-1",
    ));
    assert_eq!(d.reason, Reason::NotEnrolledStream);
    // Principals by credential.
    assert_eq!(p.principal_for_key(&public(4)), Some("node-eu-west-1"));
    let token = <[u8; 32]>::try_from(
        (0..32)
            .map(|i| {
                u8::from_str_radix(
                    &"fc784da6d8cda7be614213dfc3e05a95ae70d1aab7baaa6ac23f9d8393919abd"
                        [2 * i..2 * i + 2],
                    16,
                )
                .unwrap()
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(p.principal_for_token(&token), Some("orders-api"));
}

#[test]
fn stamping() {
    let p = policy();
    let eu = Residency::only(["EU"]).unwrap();
    let s = p
        .stamp(&stream("orders.eu.ie"), None, &Residency::Unrestricted)
        .unwrap();
    assert_eq!(
        s,
        Stamp {
            classification: "eu-personal".into(),
            residency: eu.clone()
        }
    );
    let s = p
        .stamp(&stream("payments.card"), None, &Residency::Unrestricted)
        .unwrap();
    assert_eq!(s.residency, Residency::only(["EU", "US"]).unwrap());
    // A narrower requested set is kept; a wider one is refused.
    let s = p.stamp(&stream("payments.card"), None, &eu).unwrap();
    assert_eq!(s.residency, eu);
    let wide = Residency::only(["EU", "APAC"]).unwrap();
    assert_eq!(
        p.stamp(&stream("payments.card"), None, &wide),
        Err(Reason::ResidencyWiderThanClass {
            classification: "payment".into()
        })
    );
    assert_eq!(
        p.stamp(&stream("misc.x"), None, &Residency::Unrestricted),
        Err(Reason::NoClassification)
    );
    assert_eq!(
        p.stamp(&stream("misc.x"), Some("secret"), &Residency::Unrestricted),
        Err(Reason::UnknownClassification {
            classification: "secret".into()
        })
    );
    let s = p
        .stamp(
            &stream("catalogue.items"),
            Some("public"),
            &Residency::Unrestricted,
        )
        .unwrap();
    assert_eq!(s.residency, Residency::Unrestricted);
    // An event claiming wider residency than its class is refused at ingress.
    let e = event(
        "orders.eu.ie",
        "eu-personal",
        Residency::Unrestricted,
        false,
    );
    assert!(!p.check_stamped(e.security()).allowed);
    let e = event("orders.eu.ie", "eu-personal", eu.clone(), false);
    assert!(p.check_stamped(e.security()).allowed);
    assert!(
        p.check_presigned(&stream("orders.eu.ie"), e.security())
            .allowed
    );
    // Naming a laxer class than the stream's does not escape its residency...
    let e = event("orders.eu.ie", "public", Residency::Unrestricted, false);
    assert!(p.check_stamped(e.security()).allowed, "valid on its own");
    let d = p.check_presigned(&stream("orders.eu.ie"), e.security());
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        Reason::ResidencyWiderThanClass {
            classification: "eu-personal".into()
        }
    );
    // ... while a stricter one is fine (EU-only card data on the EU+US payments stream).
    let e = event("payments.card", "eu-personal", eu.clone(), false);
    assert!(
        p.check_presigned(&stream("payments.card"), e.security())
            .allowed
    );
    // A class with the same jurisdictions that may transit sealed is not narrower than
    // the stream's class whose events never leave the EU: refused.
    let sealed_eu = Policy::compile(
        &Bundle::from_toml(&EXAMPLE.replace(
            "[classes.payment]",
            "[classes.eu-sealed]\njurisdictions = [\"EU\"]\ntransit = \"sealed\"\n\n[classes.payment]",
        ))
        .unwrap(),
    )
    .unwrap();
    let e = event("orders.eu.ie", "eu-sealed", eu, true);
    assert!(
        sealed_eu.check_stamped(e.security()).allowed,
        "valid on its own"
    );
    let d = sealed_eu.check_presigned(&stream("orders.eu.ie"), e.security());
    assert!(!d.allowed, "{d:?}");
}

#[test]
fn hops_and_claims() {
    let p = policy();
    let eu_node = member(4, "EU", "aws:eu-west-1");
    let us_node = member(6, "US", "aws:us-east-1");
    let apac_node = member(7, "APAC", "aws:ap-northeast-1");
    // A US key claiming EU is not granted, and gets nothing EU-only.
    let liar = member(6, "EU", "aws:eu-west-1");
    assert_eq!(
        p.claim(&public(6), "EU", "aws:eu-west-1").reason,
        Reason::KeyNotGranted
    );
    assert_eq!(
        p.claim(&public(4), "EU", "aws:us-east-1").reason,
        Reason::RegionNotInJurisdiction
    );
    assert_eq!(
        p.claim(&public(4), "MARS", "aws:eu-west-1").reason,
        Reason::UnknownJurisdiction
    );
    assert!(p.claim(&public(4), "EU", "aws:eu-west-1").allowed);

    let eu = Residency::only(["EU"]).unwrap();
    let personal = event("orders.eu.ie", "eu-personal", eu.clone(), false);
    assert_eq!(p.hop(&personal, &eu_node).hop, Hop::Clear);
    assert_eq!(
        p.hop(&personal, &us_node),
        HopDecision {
            hop: Hop::Refuse,
            reason: HopReason::OutsideResidency
        }
    );
    assert_eq!(p.hop(&personal, &liar).hop, Hop::Refuse);
    // Even sealed, eu-personal never transits.
    let sealed_personal = event("orders.eu.ie", "eu-personal", eu, true);
    assert_eq!(p.hop(&sealed_personal, &apac_node).hop, Hop::Refuse);

    // Payments: clear in EU and US; sealed transit through APAC; a clear one not at all.
    let pay = Residency::only(["EU", "US"]).unwrap();
    let sealed_pay = event("payments.card", "payment", pay.clone(), true);
    assert_eq!(p.hop(&sealed_pay, &us_node).hop, Hop::Clear);
    assert_eq!(
        p.hop(&sealed_pay, &apac_node),
        HopDecision {
            hop: Hop::SealedTransit,
            reason: HopReason::SealedTransit
        }
    );
    let clear_pay = event("payments.card", "payment", pay, false);
    assert_eq!(
        p.hop(&clear_pay, &apac_node),
        HopDecision {
            hop: Hop::Refuse,
            reason: HopReason::PayloadNotSealed
        }
    );

    // An event claiming more than its class allows is narrowed on every hop.
    let wide = event(
        "orders.eu.ie",
        "eu-personal",
        Residency::only(["EU", "US"]).unwrap(),
        false,
    );
    assert_eq!(p.hop(&wide, &us_node).hop, Hop::Refuse);

    // Public data goes everywhere, even to a node whose claim fails.
    let public_event = event("catalogue.items", "public", Residency::Unrestricted, false);
    assert_eq!(p.hop(&public_event, &liar).hop, Hop::Clear);

    // The mesh filter: three answers; only clear means "may hold it".
    let filter = PolicyFilter::new(std::sync::Arc::new(policy()));
    assert_eq!(filter.hop(&personal, &eu_node), FilterHop::Clear);
    assert_eq!(filter.hop(&personal, &us_node), FilterHop::Refuse);
    assert_eq!(filter.hop(&sealed_pay, &apac_node), FilterHop::Transit);
    assert_eq!(filter.hop(&clear_pay, &apac_node), FilterHop::Refuse);
    assert!(filter.allows(&personal, &eu_node));
    assert!(!filter.allows(&personal, &us_node));
    assert!(
        !filter.allows(&sealed_pay, &apac_node),
        "sealed transit is no licence to hold the event"
    );
    // The filter remembers placements per key, but a changed member record is placed again:
    // the EU node's key claiming EU from a US region is refused EU data.
    let mut moved = eu_node.clone();
    moved.region = "aws:us-east-1".into();
    assert_eq!(filter.hop(&personal, &eu_node), FilterHop::Clear);
    assert_eq!(filter.hop(&personal, &moved), FilterHop::Refuse);
    assert_eq!(filter.hop(&personal, &eu_node), FilterHop::Clear);
    // Every answer agrees with the policy's own, event after event, member after member.
    for e in [&personal, &sealed_pay, &clear_pay, &wide, &public_event] {
        for m in [&eu_node, &us_node, &apac_node, &liar, &moved] {
            assert_eq!(filter.hop(e, m), p.hop(e, m).hop.filter_hop());
        }
    }
    // The first filter memoized each event's scope in the (shared) event. A filter over
    // another policy (a later epoch: card data may now be held in APAC too, EU personal data
    // may transit sealed) must not read that memo: its answers are its own policy's, for
    // events memoized by the old one and for new ones alike.
    let later = Policy::compile(
        &Bundle::from_toml(
            &EXAMPLE
                .replace(
                    "jurisdictions = [\"EU\", \"US\"]\ntransit = \"sealed\"",
                    "jurisdictions = [\"EU\", \"US\", \"APAC\"]\ntransit = \"sealed\"",
                )
                .replace(
                    "jurisdictions = [\"EU\"]\ntransit = \"forbidden\"",
                    "jurisdictions = [\"EU\"]\ntransit = \"sealed\"",
                ),
        )
        .unwrap(),
    )
    .unwrap();
    let later_filter = PolicyFilter::new(std::sync::Arc::new(later));
    let apac_pay = event(
        "payments.card",
        "payment",
        Residency::only(["EU", "US", "APAC"]).unwrap(),
        true,
    );
    assert_eq!(later_filter.hop(&apac_pay, &apac_node), FilterHop::Clear);
    assert_eq!(
        later_filter.hop(&sealed_personal, &apac_node),
        FilterHop::Transit,
        "the later policy lets EU personal data transit sealed"
    );
    assert_eq!(filter.hop(&sealed_personal, &apac_node), FilterHop::Refuse);
    for f in [&filter, &later_filter] {
        for e in [
            &personal,
            &sealed_personal,
            &sealed_pay,
            &clear_pay,
            &wide,
            &public_event,
            &apac_pay,
        ] {
            for m in [&eu_node, &us_node, &apac_node, &liar, &moved] {
                assert_eq!(f.hop(e, m), f.policy().hop(e, m).hop.filter_hop());
                assert!(!f.unrestricted(e) || f.hop(e, m) == FilterHop::Clear);
            }
        }
        assert!(f.unrestricted(&public_event));
        assert!(!f.unrestricted(&personal) && !f.unrestricted(&apac_pay));
    }
}

/// `replication = "regions"` keeps a stream's events on nodes of the listed regions:
/// another region's node gets nothing (or sealed transit, when the class allows it and the
/// payload is sealed), a node whose claim does not hold is not taken at its word, system
/// streams are never scoped, and `ack=regions:N` can count only the listed regions.
#[test]
fn a_stream_kept_to_regions_is_held_only_there() {
    let p = Policy::compile(
        &Bundle::from_toml(&EXAMPLE.replace(
            "[[streams]]\npattern = \"payments.>\"",
            "[[streams]]\npattern = \"audit.us.>\"\nclassification = \"public\"\n\
             replication = \"regions\"\nregions = [\"aws:us-east-1\"]\n\n\
             [[streams]]\npattern = \"payments.eu.>\"\nclassification = \"payment\"\n\
             replication = \"regions\"\nregions = [\"aws:eu-west-1\"]\n\n\
             [[streams]]\npattern = \"_weft.>\"\nclassification = \"public\"\n\
             replication = \"regions\"\nregions = [\"aws:us-east-1\"]\n\n\
             [[streams]]\npattern = \"payments.>\"",
        ))
        .unwrap(),
    )
    .unwrap();
    let eu_node = member(4, "EU", "aws:eu-west-1");
    let us_node = member(6, "US", "aws:us-east-1");
    let apac_node = member(7, "APAC", "aws:ap-northeast-1");
    // The APAC key claiming the US region: not granted, so its region is not believed.
    let liar = member(7, "US", "aws:us-east-1");
    let outside = |hop| HopDecision {
        hop,
        reason: HopReason::OutsideReplicationScope,
    };

    let audit = event("audit.us.login", "public", Residency::Unrestricted, false);
    assert_eq!(p.hop(&audit, &us_node).hop, Hop::Clear);
    assert_eq!(p.hop(&audit, &eu_node), outside(Hop::Refuse));
    assert_eq!(p.hop(&audit, &apac_node), outside(Hop::Refuse));
    assert_eq!(p.hop(&audit, &liar), outside(Hop::Refuse));
    let f = PolicyFilter::new(std::sync::Arc::new(Policy::compile(p.bundle()).unwrap()));
    assert!(!f.unrestricted(&audit), "scoped: asked member by member");
    assert_eq!(f.hop(&audit, &eu_node), FilterHop::Refuse);
    assert_eq!(
        p.hold_decision(&eu_node, audit.stream(), "public", &Residency::Unrestricted),
        outside(Hop::Refuse)
    );
    assert_eq!(
        p.regions_that_may_hold(audit.stream(), "public", &Residency::Unrestricted),
        Some(["aws:us-east-1"].into())
    );

    // A class that may transit sealed: a US node (inside the residency set, outside the
    // scope) carries a sealed event and never holds it; a clear one not at all.
    let pay = Residency::only(["EU", "US"]).unwrap();
    let sealed = event("payments.eu.card", "payment", pay.clone(), true);
    let clear = event("payments.eu.card", "payment", pay.clone(), false);
    assert_eq!(p.hop(&sealed, &eu_node).hop, Hop::Clear);
    assert_eq!(p.hop(&sealed, &us_node), outside(Hop::SealedTransit));
    assert_eq!(p.hop(&clear, &us_node), outside(Hop::Refuse));
    // Outside the residency set too: the residency reason.
    assert_eq!(p.hop(&sealed, &apac_node).reason, HopReason::SealedTransit);
    assert_eq!(
        p.regions_that_may_hold(sealed.stream(), "payment", &pay),
        Some(["aws:eu-west-1"].into())
    );
    // The unscoped rule after it: both jurisdictions' regions.
    assert_eq!(
        p.regions_that_may_hold(&stream("payments.card"), "payment", &pay)
            .map(|r| r.len()),
        Some(3)
    );

    // System streams follow their own stamp, whatever rule matches them.
    let bundle = event("_weft.policy", "public", Residency::Unrestricted, false);
    assert_eq!(p.hop(&bundle, &eu_node).hop, Hop::Clear);
    assert!(p.replicates_to(bundle.stream(), "aws:eu-west-1"));
    assert_eq!(
        p.regions_that_may_hold(bundle.stream(), "public", &Residency::Unrestricted),
        None
    );

    // A scope with no region of its (EU-only) class: nowhere could hold the stream.
    let e = Bundle::from_toml(&EXAMPLE.replacen(
        "regions = [\"aws:eu-west-1\", \"aws:eu-central-1\"]\nretention_s",
        "regions = [\"aws:us-east-1\"]\nretention_s",
        1,
    ))
    .and_then(|b| Policy::compile(&b).map(drop))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("streams[0].regions") && e.contains("could be held nowhere"),
        "{e}"
    );
}

#[test]
fn stream_rules_limits_enrollment() {
    let p = policy();
    let r = p.stream_rule(&stream("orders.eu.ie")).unwrap();
    assert_eq!(r.index, 0);
    assert_eq!(r.replication, ReplicationScope::Regions);
    assert_eq!(r.retention_s, Some(2_592_000));
    assert_eq!(r.priority, Priority::Latency);
    assert!(p.replicates_to(&stream("orders.eu.ie"), "aws:eu-central-1"));
    assert!(!p.replicates_to(&stream("orders.eu.ie"), "aws:us-east-1"));
    assert_eq!(
        p.stream_rule(&stream("stock.sku1")).unwrap().conflict,
        Some(ConflictStrategy::Counter)
    );
    assert!(p.stream_rule(&stream("misc")).is_none());

    let limits = p.rate_limits("orders-api", "acme");
    assert_eq!(limits.principal.unwrap().events_per_s, 500);
    assert_eq!(limits.tenant.unwrap().events_per_day, Some(100_000_000));
    assert_eq!(p.rate_limits("analytics", "globex"), RateLimits::default());

    let e = p.enrollment(&public(9)).unwrap();
    assert_eq!(e.principal, "till-dublin-7");
    assert_eq!(e.tenant, "acme");
    assert_eq!(e.jurisdiction.as_str(), "EU");
    assert!(p.enrollment(&public(8)).is_none());
}

/// The downlink's question: an EU device receives what EU nodes may hold in clear, nothing
/// a class keeps elsewhere, and no sealed-transit class either (a device is not a relay).
#[test]
fn a_device_may_hold_what_its_enrolled_jurisdiction_may() {
    let p = policy();
    let eu = p.enrollment(&public(9)).unwrap();
    assert_eq!(eu.jurisdiction.as_str(), "EU");
    let mut us = eu.clone();
    us.jurisdiction = weft_fabric::Jurisdiction::new("US").unwrap();
    let anywhere = Residency::Unrestricted;
    // A stream without a rule: the stamp alone decides.
    let cmds = stream("devices.till.commands");
    let only = |codes: &[&str]| {
        Residency::Only(
            codes
                .iter()
                .map(|c| weft_fabric::Jurisdiction::new(*c).unwrap())
                .collect(),
        )
    };
    // A public event: anyone.
    assert!(p.device_may_hold(eu, &cmds, "public", &anywhere));
    assert!(p.device_may_hold(&us, &cmds, "public", &anywhere));
    // EU personal data: the EU device only.
    assert!(p.device_may_hold(eu, &cmds, "eu-personal", &only(&["EU"])));
    assert!(!p.device_may_hold(&us, &cmds, "eu-personal", &only(&["EU"])));
    // A stamp narrower than the class holds too: a public event stamped US-only.
    assert!(!p.device_may_hold(eu, &cmds, "public", &only(&["US"])));
    assert!(p.device_may_hold(&us, &cmds, "public", &only(&["US"])));
    // Payments may cross APAC sealed, as a relay; an APAC device gets none of them.
    let mut apac = eu.clone();
    apac.jurisdiction = weft_fabric::Jurisdiction::new("APAC").unwrap();
    assert!(!p.device_may_hold(&apac, &cmds, "payment", &only(&["EU", "US"])));
    assert!(p.device_may_hold(&us, &cmds, "payment", &only(&["EU", "US"])));
    // An unknown jurisdiction holds nothing restricted.
    let mut nowhere = eu.clone();
    nowhere.jurisdiction = weft_fabric::Jurisdiction::new("XX").unwrap();
    assert!(!p.device_may_hold(&nowhere, &cmds, "eu-personal", &only(&["EU"])));
    assert!(p.device_may_hold(&nowhere, &cmds, "public", &anywhere));
}

#[test]
fn transforms() {
    let p = policy();
    let source = stream("orders.eu.ie");
    let names: Vec<&str> = p.transforms_for(&source).map(|t| t.name()).collect();
    assert_eq!(names, ["orders-masked", "orders-per-country"]);
    // Never a system stream (erase requests name principals and keys), even for a
    // transform whose source pattern names them; and never onto one.
    let everything = EXAMPLE.replace(
        "[transforms.orders-per-country]",
        "[transforms.all-counts]\nsource = \"_weft.>\"\ntarget = \"counts.all\"\n\
         classification = \"public\"\naggregate = { window_s = 60, group_by = [\"country\"] }\n\n\
         [transforms.orders-per-country]",
    );
    let wide = Policy::compile(&Bundle::from_toml(&everything).unwrap()).unwrap();
    assert_eq!(wide.transforms_for(&stream("_weft.erase")).count(), 0);
    let onto_system = EXAMPLE.replace(
        "target = \"orders.global.per-country\"",
        "target = \"_weft.copies\"",
    );
    let err = match Bundle::from_toml(&onto_system) {
        Err(e) => e.to_string(),
        Ok(b) => Policy::compile(&b).unwrap_err().to_string(),
    };
    assert!(err.contains("system stream"), "{err}");
    let t = p.transform("orders-masked").unwrap();
    let id = EventId([0xab; 32]);
    let payload = br#"{"customer":{"id":"c-17","email":"a@b.eu","address":"1 Main St","tier":"gold"},"card":"4111111111111111","total":42,"country":"IE"}"#;
    let d = t.apply(&id, payload, &example_keys()).unwrap();
    assert_eq!(d.stream.as_str(), "orders.global.masked");
    assert_eq!(d.classification, "public");
    let data = &d.payload["data"];
    assert!(data["customer"].get("email").is_none());
    assert!(data["customer"].get("address").is_none());
    assert_eq!(data["customer"]["tier"], "gold");
    let hashed = data["customer"]["id"].as_str().unwrap();
    assert!(hashed.starts_with("hmac-sha256:") && hashed.len() == 12 + 64);
    assert_eq!(data["card"], "************1111");
    assert_eq!(data["total"], 42);
    assert_eq!(d.payload["lineage"]["sources"][0], "ab".repeat(32));
    assert_eq!(d.payload["lineage"]["transform"], "orders-masked");
    assert_eq!(d.payload["lineage"]["policy_epoch"], 7);
    // Deterministic: same input, same output.
    assert_eq!(t.apply(&id, payload, &example_keys()).unwrap(), d);
    assert!(matches!(
        t.apply(&id, b"[1]", &example_keys()),
        Err(TransformError::NotJson(_))
    ));
    // Fail closed: a field the paths cannot reach in this payload's shape is never let
    // through untouched (before, these went out with the e-mail in clear).
    for (payload, want) in [
        (
            &br#"{"customer":[{"email":"a@b.eu","id":"c-17"}]}"#[..],
            "customer",
        ),
        (&br#"{"customer":"a@b.eu"}"#[..], "customer"),
        (&br#"{"customer.email":"a@b.eu"}"#[..], "customer.email"),
        (
            &br#"{"items":[{"customer.email":"a@b.eu"}]}"#[..],
            "customer.email",
        ),
    ] {
        match t.apply(&id, payload, &example_keys()) {
            Err(TransformError::Unresolved { at, .. }) => assert_eq!(at, want),
            Err(TransformError::DottedKey { key }) => assert_eq!(key, want),
            other => panic!("{}: {other:?}", String::from_utf8_lossy(payload)),
        }
    }
    // Absent fields and `null` parents are fine.
    assert!(
        t.apply(&id, br#"{"customer":null,"total":1}"#, &example_keys())
            .is_ok()
    );
    assert!(t.apply(&id, br#"{"total":1}"#, &example_keys()).is_ok());

    let agg = p.transform("orders-per-country").unwrap();
    assert!(agg.apply(&id, payload, &example_keys()).is_err());
    let mut w = agg.window().unwrap();
    for (i, (country, total)) in [("IE", 10), ("DE", 5), ("IE", 7)].iter().enumerate() {
        let body = format!(r#"{{"country":"{country}","total":{total},"customer":{{"id":"x"}}}}"#);
        w.add(agg, &EventId([i as u8; 32]), body.as_bytes())
            .unwrap();
    }
    assert!(matches!(
        w.add(agg, &id, br#"{"country":"IE","total":"many"}"#),
        Err(TransformError::NotNumber { .. })
    ));
    assert_eq!(w.len(), 3);
    let out = w.finish(agg, 60_000);
    assert_eq!(out.len(), 2);
    let de = &out[0].payload;
    assert_eq!(de["data"]["country"], "DE");
    assert_eq!(de["data"]["count"], 1);
    let ie = &out[1].payload;
    assert_eq!(ie["data"]["count"], 2);
    assert_eq!(ie["data"]["sum.total"], 17.0);
    assert!(ie["data"].get("customer").is_none());
    assert_eq!(ie["lineage"]["sources"].as_array().unwrap().len(), 2);
    assert_eq!(ie["lineage"]["window_start_ms"], 60_000);
}

/// An allow list (`keep`): the derived payload carries the fields it names and those
/// hashed or masked, nothing else: a field the producer adds later (a phone number) stays
/// behind, where a deny list (`drop`) would have let it out. `keep` excludes `drop` and
/// `aggregate`; a bundle without it encodes as before (no signature changes).
#[test]
fn a_transform_with_an_allow_list_carries_only_what_it_names() {
    let kept = EXAMPLE.replace(
        "drop = [\"customer.email\", \"customer.address\"]",
        "keep = [\"customer.tier\", \"total\", \"country\"]",
    );
    assert_ne!(kept, EXAMPLE);
    let p = Policy::compile(&Bundle::from_toml(&kept).unwrap()).unwrap();
    let t = p.transform("orders-masked").unwrap();
    let id = EventId([0xab; 32]);
    let payload = br#"{"customer":{"id":"c-17","email":"a@b.eu","phone":"+353 1 234","tier":"gold"},"card":"4111111111111111","total":42,"country":"IE","notes":"ring twice"}"#;
    let data = t.apply(&id, payload, &example_keys()).unwrap().payload["data"].clone();
    assert_eq!(
        data,
        serde_json::json!({
            "customer": {"id": data["customer"]["id"], "tier": "gold"},
            "card": "************1111",
            "total": 42,
            "country": "IE",
        }),
        "only the kept, hashed and masked fields"
    );
    assert!(
        data["customer"]["id"]
            .as_str()
            .is_some_and(|h| h.starts_with("hmac-sha256:")),
        "{data}"
    );
    // The same payload through the deny list lets the new fields out.
    let denied = policy()
        .transform("orders-masked")
        .unwrap()
        .apply(&id, payload, &example_keys())
        .unwrap();
    assert_eq!(denied.payload["data"]["customer"]["phone"], "+353 1 234");
    assert_eq!(denied.payload["data"]["notes"], "ring twice");
    // A kept object carries its fields; one hashed inside it is hashed.
    let whole = kept.replace(
        "keep = [\"customer.tier\", \"total\", \"country\"]",
        "keep = [\"customer\"]",
    );
    let p = Policy::compile(&Bundle::from_toml(&whole).unwrap()).unwrap();
    let data = p
        .transform("orders-masked")
        .unwrap()
        .apply(&id, payload, &example_keys())
        .unwrap()
        .payload["data"]
        .clone();
    assert_eq!(data["customer"]["phone"], "+353 1 234");
    assert!(
        data["customer"]["id"]
            .as_str()
            .unwrap()
            .starts_with("hmac-sha256:")
    );
    assert!(data.get("total").is_none() && data.get("notes").is_none());
    // Fail closed as the other lists do: a kept path the payload's shape cannot follow.
    assert!(matches!(
        p.transform("orders-masked").unwrap().apply(
            &id,
            br#"{"customer":"c-17"}"#,
            &example_keys()
        ),
        Err(TransformError::Unresolved { .. })
    ));
    // keep excludes drop and aggregate.
    for (bundle, want) in [
        (
            EXAMPLE.replace(
                "drop = [\"customer.email\", \"customer.address\"]",
                "drop = [\"customer.email\"]\nkeep = [\"total\"]",
            ),
            "excludes keep",
        ),
        (
            EXAMPLE.replace(
                "aggregate = { window_s = 60",
                "keep = [\"total\"]\naggregate = { window_s = 60",
            ),
            "excludes keep",
        ),
    ] {
        let err = match Bundle::from_toml(&bundle) {
            Err(e) => e.to_string(),
            Ok(b) => Policy::compile(&b).unwrap_err().to_string(),
        };
        assert!(err.contains(want), "{err}");
    }
    // A bundle without keep encodes as it did: its signed bytes do not change.
    let cbor = Bundle::from_toml(EXAMPLE).unwrap().to_cbor().unwrap();
    // (The CBOR text string "keep": major type 3, length 4; `keep_last` is another key.)
    assert!(!cbor.windows(5).any(|w| w == b"\x64keep"));
    let with_keep = Bundle::from_toml(&kept).unwrap().to_cbor().unwrap();
    assert!(with_keep.windows(5).any(|w| w == b"\x64keep"));
}

/// `aggregate.min_count` (k-anonymity): no published figure is about fewer events. Groups
/// under it fold into one rest group, published only if it reaches it itself; without it
/// every group is published, a group of one included (one customer's order total).
/// A derivative is stamped with the target class, narrowed to its source's own residency
/// when the producer stamped the source more narrowly than its stream's class: the
/// transform declassifies what the policy classified, not what a producer held back.
#[test]
fn a_derivative_keeps_its_sources_narrower_stamp() {
    let p = policy();
    let only = |codes: &[&str]| Residency::only(codes.iter().copied()).unwrap();
    let masked = stream("orders.global.masked");
    let stamp = |source: &weft_fabric::Event, class: &str| {
        p.derived_stamp(&masked, class, p.derived_restriction(source).as_ref())
            .map(|s| s.residency)
    };
    // Stamped with its stream's class: derived as the policy says (public: anywhere).
    let eu_order = event("orders.eu.ie", "eu-personal", only(&["EU"]), false);
    assert_eq!(p.derived_restriction(&eu_order), None);
    assert_eq!(stamp(&eu_order, "public"), Ok(Residency::Unrestricted));
    let payment = event("payments.card", "payment", only(&["EU", "US"]), false);
    assert_eq!(stamp(&payment, "public"), Ok(Residency::Unrestricted));
    assert_eq!(stamp(&payment, "payment"), Ok(only(&["EU", "US"])));
    // A payment its producer kept to the EU: its derivative stays in the EU too.
    let eu_payment = event("payments.card", "payment", only(&["EU"]), false);
    assert_eq!(p.derived_restriction(&eu_payment), Some(only(&["EU"])));
    assert_eq!(stamp(&eu_payment, "public"), Ok(only(&["EU"])));
    assert_eq!(stamp(&eu_payment, "payment"), Ok(only(&["EU"])));
    // The classification is the target's; only the set narrows.
    assert_eq!(
        p.derived_stamp(
            &masked,
            "public",
            p.derived_restriction(&eu_payment).as_ref()
        )
        .unwrap()
        .classification,
        "public"
    );
    // A narrower class than the stream's (a pre-signed event naming it) narrows as well.
    let narrower_class = event("payments.card", "eu-personal", only(&["EU"]), false);
    assert_eq!(stamp(&narrower_class, "payment"), Ok(only(&["EU"])));
    // Nothing in common: nothing derived, and the reason names both sides.
    let us_payment = event("payments.card", "payment", only(&["US"]), false);
    let refused = stamp(&us_payment, "eu-personal").unwrap_err();
    assert_eq!(
        refused,
        Reason::DerivedResidencyDisjoint {
            source: only(&["US"]),
            classification: "eu-personal".into()
        }
    );
    assert_eq!(
        refused.to_string(),
        "the source's own residency [US] and class `eu-personal` share no jurisdiction"
    );
    // A stream without a rule: the event's own class is the reference.
    let public_us = event("misc.x", "public", only(&["US"]), false);
    assert_eq!(stamp(&public_us, "public"), Ok(only(&["US"])));
    let public = event("misc.x", "public", Residency::Unrestricted, false);
    assert_eq!(stamp(&public, "public"), Ok(Residency::Unrestricted));
    // A stamp set wider than its class counts as the class (it cannot widen).
    let wide = event("orders.eu.ie", "eu-personal", only(&["EU", "US"]), false);
    assert_eq!(stamp(&wide, "public"), Ok(Residency::Unrestricted));
    // The target's own rules still apply.
    assert_eq!(
        stamp(&eu_payment, "secret"),
        Err(Reason::UnknownClassification {
            classification: "secret".into()
        })
    );
}

/// `hash_key`: hashes are HMAC-SHA256 under a key each ingress node holds in its own
/// configuration; the bundle names it only. A node without the key derives nothing (no
/// fallback to a weaker hash); the key's name and length are checked.
#[test]
fn a_transform_hashes_under_a_node_local_key_the_bundle_only_names() {
    // The example hashes under a key; the same bundle with a salt instead, for contrast.
    let keyed = EXAMPLE.to_string();
    let salted = EXAMPLE.replace("hash_key = \"orders-2025\"", "salt = \"acme-2025\"");
    assert_ne!(salted, keyed);
    let bundle = Bundle::from_toml(&keyed).unwrap();
    let p = Policy::compile(&bundle).unwrap();
    let t = p.transform("orders-masked").unwrap();
    assert_eq!(t.hash_key(), Some("orders-2025"));
    let salted_policy = Policy::compile(&Bundle::from_toml(&salted).unwrap()).unwrap();
    let salted_t = salted_policy.transform("orders-masked").unwrap();
    assert_eq!(salted_t.hash_key(), None);
    let id = EventId([0xab; 32]);
    let payload = br#"{"customer":{"id":"c-17"},"card":"4111111111111111"}"#;
    assert_eq!(
        t.apply(&id, payload, &HashKeys::new()),
        Err(TransformError::HashKeyMissing {
            name: "orders-2025".into()
        })
    );
    let secret = b"sixteen or more bytes of secret".to_vec();
    let mut keys = HashKeys::new();
    keys.insert("orders-2025", secret.clone()).unwrap();
    let d = t.apply(&id, payload, &keys).unwrap();
    let want = {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        mac.update(b"weft/transform-hash\0\"c-17\"");
        let bytes = mac.finalize().into_bytes();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("hmac-sha256:{hex}")
    };
    assert_eq!(d.payload["data"]["customer"]["id"], want.as_str());
    // Another key, another hash: the key is what a guess would need.
    let mut other = HashKeys::new();
    other
        .insert("orders-2025", b"another secret of sixteen bytes".to_vec())
        .unwrap();
    assert_ne!(t.apply(&id, payload, &other).unwrap(), d);
    // The salted form needs no key, and its hash is one anyone holding the bundle can
    // recompute: SHA-256 over the salt and the value.
    let salted_d = salted_t.apply(&id, payload, &HashKeys::new()).unwrap();
    let want_salted = {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(b"weft/transform-hash\0acme-2025\0\"c-17\"");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    };
    assert_eq!(
        salted_d.payload["data"]["customer"]["id"],
        want_salted.as_str()
    );
    // The signed bundle carries the name, never a key; a bundle without `hash_key`
    // encodes as before.
    let cbor = bundle.to_cbor().unwrap();
    assert!(cbor.windows(11).any(|w| w == b"orders-2025"));
    assert!(!cbor.windows(secret.len()).any(|w| w == secret.as_slice()));
    assert!(
        !Bundle::from_toml(&salted)
            .unwrap()
            .to_cbor()
            .unwrap()
            .windows(8)
            .any(|w| w == b"hash_key")
    );
    // Debug names keys, never shows them.
    assert_eq!(format!("{keys:?}"), "{\"orders-2025\"}");
    // Refusals, each naming what is wrong.
    for (name, key, want) in [
        ("orders-2025", vec![7u8; 15], "HASH_KEY_LEN_MIN"),
        ("orders-2025", vec![7u8; 1025], "HASH_KEY_LEN_MAX"),
        ("", vec![7u8; 16], "HASH_KEY_NAME_LEN_MAX"),
        ("a/b", vec![7u8; 16], "letters, digits"),
    ] {
        let err = HashKeys::new().insert(name, key).unwrap_err();
        assert!(err.contains(want), "{err}");
    }
    let compile = |text: &str| match Bundle::from_toml(text) {
        Err(e) => e.to_string(),
        Ok(b) => Policy::compile(&b).unwrap_err().to_string(),
    };
    let both = keyed.replace(
        "hash_key = \"orders-2025\"",
        "hash_key = \"orders-2025\"\nsalt = \"x\"",
    );
    assert!(
        compile(&both).contains("excludes hash_key"),
        "{}",
        compile(&both)
    );
    let unhashed = keyed.replace("hash = [\"customer.id\"]\n", "");
    assert_ne!(unhashed, keyed);
    assert!(
        compile(&unhashed).contains("needs hash"),
        "{}",
        compile(&unhashed)
    );
    let bad = keyed.replace("hash_key = \"orders-2025\"", "hash_key = \"orders 2025\"");
    assert!(compile(&bad).contains("hash_key"), "{}", compile(&bad));
}

#[test]
fn an_aggregate_publishes_no_group_smaller_than_its_min_count() {
    let with_k = |k: u64| {
        let text = EXAMPLE.replace(
            "aggregate = { window_s = 60, group_by = [\"country\"], sum = [\"total\"] }",
            &format!(
                "aggregate = {{ window_s = 60, group_by = [\"country\"], sum = [\"total\"], min_count = {k} }}"
            ),
        );
        assert_ne!(text, EXAMPLE);
        Policy::compile(&Bundle::from_toml(&text).unwrap()).unwrap()
    };
    let run = |p: &Policy, orders: &[(&str, f64)]| {
        let t = p.transform("orders-per-country").unwrap();
        let mut w = t.window().unwrap();
        for (i, (country, total)) in orders.iter().enumerate() {
            let body = format!(r#"{{"country":"{country}","total":{total}}}"#);
            w.add(t, &EventId([i as u8; 32]), body.as_bytes()).unwrap();
        }
        w.finish(t, 0)
            .into_iter()
            .map(|d| d.payload)
            .collect::<Vec<_>>()
    };
    let orders = [
        ("IE", 10.0),
        ("IE", 20.0),
        ("IE", 30.0),
        ("DE", 7.0),
        ("FR", 5.0),
        ("ES", 1.0),
    ];
    // Without min_count: four groups, three of them one order each.
    let all = run(&policy(), &orders);
    assert_eq!(all.len(), 4);
    assert!(
        all.iter()
            .any(|d| d["data"]["country"] == "FR" && d["data"]["sum.total"] == 5.0)
    );
    // min_count 3: Ireland, and the rest (DE, ES, FR: three orders) without their countries.
    let k3 = run(&with_k(3), &orders);
    assert_eq!(k3.len(), 2, "{k3:?}");
    assert_eq!(k3[0]["data"]["country"], "IE");
    assert_eq!(k3[0]["data"]["count"], 3);
    let rest = &k3[1]["data"];
    assert_eq!(rest["rest"], true);
    assert_eq!(rest["rest_groups"], 3);
    assert_eq!(rest["country"], serde_json::Value::Null);
    assert_eq!(rest["count"], 3);
    assert_eq!(rest["sum.total"], 13.0);
    assert_eq!(k3[1]["lineage"]["source_count"], 3);
    assert_eq!(k3[1]["lineage"]["sources"].as_array().unwrap().len(), 3);
    // min_count 4: every group is too small; together they are six orders.
    let k4 = run(&with_k(4), &orders);
    assert_eq!(k4.len(), 1, "{k4:?}");
    assert_eq!(
        (&k4[0]["data"]["rest_groups"], &k4[0]["data"]["count"]),
        (&serde_json::json!(4), &serde_json::json!(6))
    );
    // min_count 7: not even all of them together: nothing is published.
    assert!(run(&with_k(7), &orders).is_empty());
    // The bounds are checked at compile.
    for bad in [0, 1_000_001] {
        let text = EXAMPLE.replace(
            "sum = [\"total\"] }",
            &format!("sum = [\"total\"], min_count = {bad} }}"),
        );
        let err = match Bundle::from_toml(&text) {
            Err(e) => e.to_string(),
            Ok(b) => Policy::compile(&b).unwrap_err().to_string(),
        };
        assert!(
            err.contains("min_count") && err.contains("must be 1 to"),
            "{err}"
        );
    }
}

#[test]
fn toml_errors_name_the_field() {
    let bad = EXAMPLE.replace(
        "tenant = \"acme\"\nroles = [\"order-writer\"]",
        "tenat = \"acme\"\nroles = [\"order-writer\"]",
    );
    let e = Bundle::from_toml(&bad).unwrap_err().to_string();
    assert!(
        e.contains("principals.orders-api") && e.contains("tenat"),
        "{e}"
    );
    let bad = EXAMPLE.replace("transit = \"forbidden\"", "transit = \"sometimes\"");
    let e = Bundle::from_toml(&bad).unwrap_err().to_string();
    assert!(e.contains("classes.eu-personal.transit"), "{e}");
    let bad = EXAMPLE.replace(
        "roles = [\"analyst\"]\ntoken",
        "roles = [\"analyst\", \"ghost\"]\ntoken",
    );
    let e = Bundle::from_toml(&bad).unwrap_err().to_string();
    assert!(
        e.contains("principals.analytics.roles[1]") && e.contains("ghost"),
        "{e}"
    );
    let bad = EXAMPLE.replace("epoch = 7", "epoch = 0");
    assert!(
        Bundle::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("epoch")
    );
}

#[test]
fn docs_quote_the_example_verbatim() {
    let doc = include_str!("../../docs/policy.md");
    assert!(
        doc.contains(EXAMPLE),
        "docs/policy.md §1 differs from policy/examples/eu-retail.toml"
    );
}

/// The regions an event may be held in, which bound what `ack=regions:N` can be confirmed
/// in: a class's jurisdictions' regions; none for a public class. A residency narrower
/// than its class (a pre-signed stamp) narrows them. A stream rule's `regions` scope does
/// not (the replication filter does not apply it).
#[test]
fn the_regions_an_event_may_be_held_in() {
    let p = policy();
    let eu = ["aws:eu-central-1", "aws:eu-west-1"];
    let held = |s: &str, class: &str, residency: &Residency| {
        p.regions_that_may_hold(&stream(s), class, residency)
            .map(|r| r.into_iter().collect::<Vec<_>>())
    };
    assert_eq!(
        held("orders.eu.ie", "eu-personal", &Residency::Unrestricted),
        Some(eu.to_vec())
    );
    assert_eq!(
        held("payments.card", "payment", &Residency::Unrestricted),
        Some(vec!["aws:eu-central-1", "aws:eu-west-1", "aws:us-east-1"])
    );
    let only_us = Residency::only(["US"]).unwrap();
    assert_eq!(
        held("payments.card", "payment", &only_us),
        Some(vec!["aws:us-east-1"])
    );
    assert_eq!(
        held("orders.global.x", "public", &Residency::Unrestricted),
        None
    );
}
