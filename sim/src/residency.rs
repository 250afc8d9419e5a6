//! Residency in the simulator: a scenario's `[policy]` (residency classes) turned into a
//! real weft-policy bundle and compiled with [`weft_policy::Policy::compile`], so the
//! simulated nodes enforce, and the engine's independent checker checks, exactly the rules
//! a `weft` node enforces.
//!
//! The bundle is built, not written: node keys come from the run's seed, so the scenario
//! names only the classes. Every jurisdiction of the topology is granted the regions of the
//! run whose catalog jurisdiction it is and the keys of the nodes placed in it; a node sitting
//! in a region of another jurisdiction (an edge site under its own law, attached to a region
//! elsewhere) is granted its key but not the region, so its claim fails, as it would in a
//! real bundle, and it may hold only unrestricted events.

use std::collections::{BTreeMap, BTreeSet};

use weft_policy::{Bundle, BundleError, ClassSpec, JurisdictionSpec, Policy, StreamRule};

/// The policy epoch the simulator's bundles carry.
pub const SIM_POLICY_EPOCH: u64 = 1;

/// A scenario's `[policy]`: residency classes by classification, in weft-policy's bundle
/// format (`jurisdictions` + `transit`, or `anywhere = true`), and stream rules keeping
/// streams to some regions (`replication = "regions"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// Classification -> residency class.
    pub classes: BTreeMap<String, ClassSpec>,
    /// Stream rules, in order (first match wins), each `replication = "regions"`.
    pub streams: Vec<StreamRule>,
}

/// One node as the bundle sees it.
#[derive(Debug, Clone, Copy)]
pub struct GrantedNode<'a> {
    /// The jurisdiction the node claims.
    pub jurisdiction: &'a str,
    /// Its key, when known (the scenario is validated before keys exist).
    pub key: Option<[u8; 32]>,
}

/// Builds the bundle for `spec` over a run whose regions are `regions` (region id, its
/// jurisdiction) and whose nodes are `nodes` (module docs).
pub fn bundle(spec: &PolicySpec, regions: &[(&str, &str)], nodes: &[GrantedNode<'_>]) -> Bundle {
    let mut codes: BTreeSet<&str> = BTreeSet::new();
    codes.extend(regions.iter().map(|(_, j)| *j));
    codes.extend(nodes.iter().map(|n| n.jurisdiction));
    for class in spec.classes.values() {
        codes.extend(class.jurisdictions.iter().map(String::as_str));
    }
    let mut jurisdictions: BTreeMap<String, JurisdictionSpec> = codes
        .iter()
        .map(|code| {
            let spec = JurisdictionSpec {
                regions: Vec::new(),
                nodes: Vec::new(),
            };
            ((*code).to_string(), spec)
        })
        .collect();
    let mut region_seen = BTreeSet::new();
    for (region, code) in regions {
        if region_seen.insert(*region)
            && let Some(j) = jurisdictions.get_mut(*code)
        {
            j.regions.push((*region).to_string());
        }
    }
    for node in nodes {
        if let (Some(key), Some(j)) = (node.key, jurisdictions.get_mut(node.jurisdiction)) {
            j.nodes.push(hex(&key));
        }
    }
    Bundle {
        format: weft_policy::limits::BUNDLE_FORMAT,
        epoch: SIM_POLICY_EPOCH,
        description: Some("weft-sim: the scenario's residency classes and stream scopes".into()),
        jurisdictions,
        tenants: BTreeMap::new(),
        roles: BTreeMap::new(),
        principals: BTreeMap::new(),
        access: Vec::new(),
        classes: spec.classes.clone(),
        streams: spec.streams.clone(),
        transforms: BTreeMap::new(),
        limits: Vec::new(),
        devices: BTreeMap::new(),
    }
}

/// Builds and compiles the bundle (see [`bundle`]).
pub fn compile(
    spec: &PolicySpec,
    regions: &[(&str, &str)],
    nodes: &[GrantedNode<'_>],
) -> Result<Policy, BundleError> {
    Policy::compile(&bundle(spec, regions, nodes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
