//! Turns a validated [`Scenario`] and the [`RegionCatalog`] into the engine's resolved
//! [`Plan`]: region latency matrix, nodes, workloads and faults in microseconds.

use crate::catalog::{RegionCatalog, SAME_REGION_RTT_MS};
use crate::engine::{FaultKind, Plan, PlanFault, PlanNode, PlanWorkload};
use crate::scenario::{self, Scenario};

/// Default liveness window after the last heal when the scenario sets none.
pub const CONVERGE_WITHIN_US_DEFAULT: u64 = 60_000_000;

/// Builds the plan; `seed` overrides the scenario's.
pub fn build(scenario: &Scenario, catalog: &RegionCatalog, seed: Option<u64>) -> Plan {
    let regions: Vec<String> = catalog.regions().iter().map(|r| r.id.clone()).collect();
    let r = regions.len();
    let mut one_way_us = vec![vec![0; r]; r];
    let mut measured = vec![vec![false; r]; r];
    for a in 0..r {
        for b in 0..r {
            let entry = catalog.rtt_at(a, b);
            one_way_us[a][b] = entry.map_or(0, |e| e.rtt_us() / 2);
            measured[a][b] = entry.is_some_and(|e| e.is_measured());
        }
    }
    let link_net = (!scenario.network.links.is_empty()).then(|| {
        let mut net = vec![vec![(scenario.network.jitter_us, scenario.network.loss); r]; r];
        for l in &scenario.network.links {
            if let (Some(a), Some(b)) = (catalog.region_index(&l.a), catalog.region_index(&l.b)) {
                net[a][b] = (l.jitter_us, l.loss);
                net[b][a] = (l.jitter_us, l.loss);
            }
        }
        net
    });
    let nodes = scenario
        .topology
        .nodes()
        .iter()
        .map(|n| PlanNode {
            name: n.name.clone(),
            region: catalog.region_index(&n.region).unwrap_or(0),
            cloud: n.cloud().unwrap_or("edge").to_string(),
            jurisdiction: n.jurisdiction.as_str().to_string(),
            access_us: n.edge.as_ref().map_or(0, |e| e.access_rtt_us / 2),
        })
        .collect();
    let idx = |v: &[scenario::NodeIndex]| v.iter().map(|i| i.as_usize()).collect::<Vec<_>>();
    let workloads = scenario
        .workloads
        .iter()
        .map(|w| PlanWorkload {
            stream: w.stream.clone(),
            rate_per_s: w.rate_per_s,
            payload_bytes: w.payload_bytes as usize,
            publishers: idx(&w.publisher_nodes),
            subscribers: idx(&w.subscriber_nodes),
            start_us: w.start_us,
            stop_us: w.stop_us,
            classification: w.classification.clone(),
            sealed: w.sealed,
            table: w.table.clone(),
            devices: w.devices as usize,
        })
        .collect();
    let faults = scenario
        .faults
        .iter()
        .map(|f| PlanFault {
            at_us: f.at_us,
            until_us: f.heal_us(),
            measure: f.measure,
            kind: match &f.kind {
                scenario::FaultKind::RegionOutage { nodes, .. } => FaultKind::Down {
                    nodes: idx(nodes),
                    lose_memory: false,
                },
                scenario::FaultKind::NodeCrash {
                    nodes, lose_memory, ..
                } => FaultKind::Down {
                    nodes: idx(nodes),
                    lose_memory: *lose_memory,
                },
                scenario::FaultKind::Partition {
                    a_nodes,
                    b_nodes,
                    symmetric,
                    ..
                } => FaultKind::Partition {
                    a: idx(a_nodes),
                    b: idx(b_nodes),
                    symmetric: *symmetric,
                },
                scenario::FaultKind::LinkDegradation {
                    a_nodes,
                    b_nodes,
                    latency_factor,
                    loss,
                    ..
                } => FaultKind::Degrade {
                    a: idx(a_nodes),
                    b: idx(b_nodes),
                    latency_factor: *latency_factor,
                    loss: *loss,
                },
                scenario::FaultKind::ClockSkew { nodes, skew_ms, .. } => FaultKind::ClockSkew {
                    nodes: idx(nodes),
                    skew_ms: *skew_ms,
                },
            },
        })
        .collect();
    let region_jurisdictions = catalog
        .regions()
        .iter()
        .map(|r| r.jurisdiction.as_str().to_string())
        .collect();
    Plan {
        seed: seed.or(scenario.seed).unwrap_or(1),
        duration_us: scenario.duration_us,
        regions,
        one_way_us,
        measured,
        intra_region_us: (SAME_REGION_RTT_MS * 1000.0 / 2.0) as u64,
        nodes,
        jitter_us: scenario.network.jitter_us,
        loss: scenario.network.loss,
        link_net,
        verify_us: scenario.network.verify_us,
        signing: scenario.network.signing,
        workloads,
        faults,
        converge_within_us: scenario
            .checks
            .converge_within_us
            .unwrap_or(CONVERGE_WITHIN_US_DEFAULT),
        policy: scenario.policy.clone(),
        region_jurisdictions,
        enforce_residency: true,
        numbering_floor: true,
        table_sabotage: None,
    }
}
