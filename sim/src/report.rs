//! The run report: summary figures computed from the engine's metrics, rendered as a
//! terminal table and as JSON (fields documented in `docs/sim.md`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::engine::{
    AntiEntropyCounters, FaultKind, MembershipCounters, Metrics, Plan, SkipCounters,
};

/// Points of a latency CDF: the nearest-rank latency at quantiles 0.01, 0.02, .., 1.00.
const CDF_POINTS: usize = 100;

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    /// From samples in microseconds (nearest-rank percentiles).
    pub fn from_us(samples: &[u64]) -> Self {
        Self::from_scaled(samples, 1000.0)
    }

    fn from_scaled(samples: &[u64], div: f64) -> Self {
        let n = samples.len();
        let Some(&max) = samples.iter().max() else {
            return Self {
                count: 0,
                p50: 0.0,
                p95: 0.0,
                p99: 0.0,
                max: 0.0,
            };
        };
        // Three order statistics by selection, each in the part below the last (O(n)),
        // rather than a sort of every sample (a run sorted its million latencies some
        // 150 times over, once per region pair and workload: 3 % of its instructions).
        let index = |q: f64| ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        let (i50, i95, i99) = (index(0.50), index(0.95), index(0.99));
        let mut v = samples.to_vec();
        let p99 = *v.select_nth_unstable(i99).1;
        let p95 = if i95 < i99 {
            *v[..i99].select_nth_unstable(i95).1
        } else {
            p99
        };
        let p50 = if i50 < i95 {
            *v[..i95].select_nth_unstable(i50).1
        } else {
            p95
        };
        let ms = |x: u64| round3(x as f64 / div);
        Self {
            count: n,
            p50: ms(p50),
            p95: ms(p95),
            p99: ms(p99),
            max: ms(max),
        }
    }
}

/// The CDF of samples in microseconds: `(latency ms, fraction)` at the quantiles
/// `1/CDF_POINTS ..= 1` (nearest rank); empty without samples.
fn cdf_ms(samples: &[u64]) -> Vec<(f64, f64)> {
    if samples.is_empty() {
        return Vec::new();
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    (1..=CDF_POINTS)
        .map(|i| {
            let q = i as f64 / CDF_POINTS as f64;
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            (round3(v[rank - 1] as f64 / 1000.0), round3(q))
        })
        .collect()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One strategy's results in a run.
#[derive(Debug, Clone, Serialize)]
pub struct StrategyReport {
    /// `weft`, `flooding` or `random-gossip`.
    pub strategy: String,
    /// Events published.
    pub published: u64,
    /// Deliveries to applications: the first of each (event, node) pair.
    pub deliveries: u64,
    /// Deliveries again, to nodes restarted without their stores, of events their earlier
    /// application instance had (`lose_memory`); not in `deliveries`.
    pub redeliveries: u64,
    /// Delivery latency, ms.
    pub latency_ms: Percentiles,
    /// Stretch = latency / ideal (shortest path over live nodes), deliveries across regions.
    pub stretch: Percentiles,
    /// Latency of deliveries inside the origin's region, ms.
    pub intra_region_latency_ms: Percentiles,
    /// Latency of deliveries of events published while a fault other than a `measure`
    /// partition was active (not in `latency_ms`), ms: publish to delivery, so an event a
    /// cut held back counts the wait until the heal and the repair after it.
    pub fault_latency_ms: Percentiles,
    /// Last delivery hop: hops travelled to the last node an event reached (p50, p99, max).
    pub ldh: Percentiles,
    /// Relative message redundancy: payload copies received / first receipts - 1.
    pub rmr: f64,
    /// Messages sent per published event.
    pub messages_per_event: f64,
    /// Bytes sent per published event.
    pub bytes_per_event: f64,
    /// Bytes sent between regions.
    pub cross_region_bytes: u64,
    /// Messages by kind.
    pub messages_by_kind: BTreeMap<String, u64>,
    /// Bytes by message kind (the same kinds; they add up to the bytes sent).
    pub bytes_by_kind: BTreeMap<String, u64>,
    /// (event, live interested node) pairs never delivered.
    pub missed: u64,
    /// (event, live interested node) pairs not delivered because every copy of the event
    /// left was lost with a store (a crash with `lose_memory`) or with a crashed node's
    /// relay cache (memory, lost at any crash) before it reached the node, and no store
    /// holds it at the end; not in `missed`.
    pub destroyed: u64,
    /// Publish attempts held back (each tried again 50 ms later) while a node restarted
    /// without its store asked members for its own events before numbering on, as the
    /// real node does (at most 10 s after its start).
    pub publishes_held: u64,
    /// Publishes that took a sequence number their origin had already given another event
    /// while some node still remembered the number (the engine's record of every origin's
    /// numbers, across restarts): nodes that saw it drop the new event as a duplicate or
    /// name an equivocation. The "no sequence number reused" check.
    pub numbers_reused: u64,
    /// The first such publish, as "origin N (publishing at NODE) seq S, published up to H
    /// before"; null when none was.
    pub numbers_reused_first: Option<String>,
    /// Publishes under a number their origin used before that no node remembered any more
    /// (every store that held or saw it was lost): harmless to the fabric, not a failure.
    pub numbers_renumbered: u64,
    /// Times a node restarted without its store numbered past the wall-clock floor
    /// (`weft_fabric::mesh::own_numbers_floor`) instead of past what it held: its wait for
    /// its own numbering ended without it known (cut off from every other node), or a
    /// member asked claimed more than it can be believed on. A hole its peers take as
    /// lost, never a reused number.
    pub numbers_floored: u64,
    /// Times a node found a peer's event under a number it held another event for
    /// (`AppEvent::Equivocation`, the real node's `origin_equivocation`); at most one
    /// per reused number and node that saw both, 0 when no number was reused.
    pub equivocations: u64,
    /// When the newest event with a missed pair was published, seconds into the run (null
    /// when nothing was missed).
    pub missed_newest_publish_s: Option<f64>,
    /// Deliveries of one event twice to one application.
    pub duplicates: u64,
    /// Per-origin order violations at applications.
    pub order_violations: u64,
    /// Time from the last heal (or end of publishing) to full delivery, ms.
    pub convergence_ms: Option<f64>,
    /// Messages dropped by faults and loss.
    pub dropped: u64,
    /// Latency by (origin region, destination region), ms.
    pub latency_by_region_pair: Vec<RegionPairLatency>,
    /// Latency by destination region (all origins), ms.
    pub latency_by_destination: Vec<RegionLatency>,
    /// Latency CDF: `(latency ms, fraction of deliveries at most that late)` at the
    /// quantiles 0.01, 0.02, .., 1.00 (nearest rank); empty without deliveries.
    pub latency_cdf_ms: Vec<(f64, f64)>,
    /// Delivered fraction over time: (seconds, delivered / expected).
    pub delivered_fraction: Vec<(f64, f64)>,
    /// Invariant violations found.
    pub violations: Vec<String>,
    /// Simulator steps.
    pub steps: u64,
    /// Latency-aware routing at work (Weft's counters; zero for the baselines).
    pub routing: RoutingReport,
    /// What anti-entropy did (Weft's counters; zero for the baselines).
    pub anti_entropy: AntiEntropyCounters,
    /// What Skips did (Weft's counters; zero for the baselines).
    pub skips: SkipCounters,
    /// SWIM's verdicts (Weft's; zero for the baselines, which have no membership).
    pub membership: MembershipReport,
    /// Residency, as the engine checked it on every send, delivery and store.
    pub residency: ResidencyReport,
    /// Per workload: its residency class and delivery latency.
    pub workloads: Vec<WorkloadReport>,
    /// Per table workload: its replicas compared at the end of the run.
    pub tables: Vec<TableReport>,
}

/// Members declared down during a run, and how long after a node stopped its peers
/// declared it down: the report's `membership`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MembershipReport {
    /// Declarations, by what the member really was.
    #[serde(flatten)]
    pub downs: MembershipCounters,
    /// Per declaration of a stopped node (at each node that declared it): time from its
    /// stop to the declaration, ms.
    pub detection_ms: Percentiles,
}

/// One table workload's replicas at the end of a run (`docs/sim.md` section 4).
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The stream.
    pub stream: String,
    /// `lww`, `multi-value`, `counter` or `set`.
    pub strategy: String,
    /// Size of the key space.
    pub keys: u32,
    /// Writes published.
    pub writes: u64,
    /// Live replicas compared (subscribers that may hold the stream).
    pub replicas: u64,
    /// Whether every replica's state digest is the same.
    pub digests_equal: bool,
    /// Distinct digests among the replicas.
    pub digests_distinct: u64,
    /// Whether every replica's digest equals the reference replica's (every write replayed
    /// in publish order into a fresh table): nothing resurrected, nothing lost.
    pub equal_to_reference: bool,
    /// Replicas whose digest equals the reference's.
    pub replicas_equal_to_reference: u64,
    /// The reference's digest, first 8 bytes in hex.
    pub reference_digest: String,
    /// Keys present (not deleted or empty) in the reference.
    pub reference_keys_present: u64,
    /// (replica, key) pairs present on a replica but absent in the reference (resurrected).
    pub resurrected: u64,
    /// (replica, key) pairs absent on a replica but present in the reference (lost).
    pub lost: u64,
    /// Conflict counters summed over the replicas (`weft_fabric::table::ConflictStats`).
    pub conflicts: weft_fabric::table::ConflictStats,
}

/// What the residency checker found (`docs/sim.md`).
#[derive(Debug, Clone, Serialize)]
pub struct ResidencyReport {
    /// Whether the run had a policy (residency classes).
    pub policy: bool,
    /// Events (or messages naming them) sent where the policy keeps them out, and events
    /// delivered or stored by nodes that may not hold them.
    pub violations: u64,
    /// The first few violations, described.
    pub examples: Vec<String>,
    /// (message, event) pairs checked that concerned a restricted event.
    pub checked: u64,
    /// Events relayed in sealed transit by nodes outside their residency.
    pub transit_forwarded: u64,
    /// Events the receiving cores refused as not theirs to hold (a sender broke policy).
    pub refused_by_receivers: u64,
    /// (event, subscriber) pairs withheld by residency (not expected, not missed).
    pub withheld_pairs: u64,
}

/// One workload's results.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    /// The stream.
    pub stream: String,
    /// Its classification (`-` without a policy).
    pub classification: String,
    /// Whether its payloads are sealed by the producer.
    pub sealed: bool,
    /// Delivery latency of its events (remote deliveries), ms.
    pub latency_ms: Percentiles,
    /// Latency by (origin region, destination region), ms.
    pub latency_by_region_pair: Vec<RegionPairLatency>,
}

/// What routing did in a run.
#[derive(Debug, Clone, Serialize)]
pub struct RoutingReport {
    /// Cross-region pushes whose acknowledgement did not come within the RTT timeout and
    /// were sent again along the next-best path.
    pub failovers: u64,
    /// Longest time from such a push to its failover, ms.
    pub failover_after_ms_max: f64,
    /// Pushes relayed on to other regions (source-routed hops).
    pub relayed: u64,
    /// Events a relay whose own link failed sent back with relay hops to the peer they came
    /// from, per event and target (its region was the best way left).
    pub relays_sent_back: u64,
    /// Reroutes given up: no way left to a region, or the only one back where the hops
    /// came from (left to GRAFT and anti-entropy).
    pub reroute_unreachable: u64,
    /// Failed links that came back.
    pub links_recovered: u64,
    /// RTT estimates restarted upwards (two samples in a row beyond the RTT timeout).
    pub rtt_shifts_up: u64,
    /// RTT estimates restarted downwards (a sample under three quarters of the estimate).
    pub rtt_shifts_down: u64,
    /// Link probes sent.
    pub probes_sent: u64,
    /// For events published during `measure` faults: delivery latency minus the ideal
    /// under the fault, ms (cross-region deliveries; the time rerouting cost).
    pub measured_extra_ms: Percentiles,
    /// Largest base RTT of a link those faults cut or degrade, ms (0 without).
    pub measured_link_rtt_ms: f64,
    /// Deliveries of events published during `measure` faults that left no path at all
    /// between the two regions: in latency, not in stretch or `measured_extra_ms`.
    pub no_path_deliveries: u64,
}

/// Latency between two regions.
#[derive(Debug, Clone, Serialize)]
pub struct RegionPairLatency {
    /// Origin region.
    pub from: String,
    /// Destination region.
    pub to: String,
    /// Latency, ms.
    pub latency_ms: Percentiles,
}

/// Latency of deliveries to one region.
#[derive(Debug, Clone, Serialize)]
pub struct RegionLatency {
    /// Destination region.
    pub region: String,
    /// Latency, ms.
    pub latency_ms: Percentiles,
}

/// A fault's window in a run, for the charts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultWindow {
    /// `down` (region outage or node crash), `partition`, `degrade` or `clock-skew`.
    pub kind: String,
    /// The fault as written in the scenario (`region-outage`, `node-crash`, ...).
    pub fault: String,
    /// What it hits, as the scenario names it (`region aws:eu-west-1`, `{ clouds = ["aws"] }
    /// -> "rest"`), with its figures (`x3.0 latency, loss 0.05`).
    pub targets: String,
    /// How many nodes it touches (both sides of a partition or degradation).
    pub nodes: usize,
    /// Start, seconds.
    pub at_s: f64,
    /// Heal, seconds.
    pub until_s: f64,
}

impl FaultWindow {
    /// One line naming the fault by its number in the scenario (`F1`, as the charts label
    /// it): `fault F1 region-outage region aws:eu-west-1 (3 nodes), 60 s to 240 s`.
    pub fn line(&self, index: usize) -> String {
        format!(
            "fault {} {} {} ({} node{}), {} s to {} s",
            Self::label(index),
            self.fault,
            self.targets,
            self.nodes,
            if self.nodes == 1 { "" } else { "s" },
            self.at_s,
            self.until_s
        )
    }

    /// The short label of the scenario's fault number `index` (from 0): `F1`, `F2`, ...
    pub fn label(index: usize) -> String {
        format!("F{}", index + 1)
    }

    fn new(f: &crate::scenario::Fault, plan: &crate::engine::PlanFault) -> Self {
        use crate::scenario::FaultKind as Written;
        let kind = match plan.kind {
            FaultKind::Down { .. } => "down",
            FaultKind::Partition { .. } => "partition",
            FaultKind::Degrade { .. } => "degrade",
            FaultKind::ClockSkew { .. } => "clock-skew",
        };
        let arrow = |symmetric: bool| if symmetric { "<->" } else { "->" };
        let (targets, nodes) = match &f.kind {
            Written::RegionOutage { region, nodes } => (format!("region {region}"), nodes.len()),
            Written::NodeCrash {
                selector,
                nodes,
                lose_memory,
            } => (
                format!(
                    "{selector}{}",
                    if *lose_memory { ", stores lost" } else { "" }
                ),
                nodes.len(),
            ),
            Written::Partition {
                a,
                b,
                a_nodes,
                b_nodes,
                symmetric,
            } => (
                format!("{a} {} {b}", arrow(*symmetric)),
                a_nodes.len() + b_nodes.len(),
            ),
            Written::LinkDegradation {
                a,
                b,
                a_nodes,
                b_nodes,
                latency_factor,
                loss,
            } => (
                format!("{a} <-> {b}, latency x{latency_factor}, loss {loss}"),
                a_nodes.len() + b_nodes.len(),
            ),
            Written::ClockSkew {
                selector,
                nodes,
                skew_ms,
            } => (format!("{selector}, {skew_ms:+} ms"), nodes.len()),
        };
        Self {
            kind: kind.to_string(),
            fault: f.kind.name().to_string(),
            targets,
            nodes,
            at_s: round3(plan.at_us as f64 / 1e6),
            until_s: round3(plan.until_us as f64 / 1e6),
        }
    }
}

impl StrategyReport {
    /// Summarises a run's metrics.
    pub fn new(strategy: &str, plan: &Plan, m: &Metrics) -> Self {
        let rmr = if m.first_receipts == 0 {
            0.0
        } else {
            round3(m.payload_copies as f64 / m.first_receipts as f64 - 1.0)
        };
        let per_event = |x: u64| {
            if m.published == 0 {
                0.0
            } else {
                round3(x as f64 / m.published as f64)
            }
        };
        let total_messages: u64 = m.messages_by_kind.values().sum();
        let mut by_destination: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        let mut by_pair: BTreeMap<(usize, usize), Vec<u64>> = BTreeMap::new();
        let mut by_workload: BTreeMap<usize, BTreeMap<(usize, usize), Vec<u64>>> = BTreeMap::new();
        for ((w, from, to), v) in &m.latency_by_pair {
            by_destination.entry(*to).or_default().extend_from_slice(v);
            by_pair
                .entry((*from, *to))
                .or_default()
                .extend_from_slice(v);
            by_workload
                .entry(*w)
                .or_default()
                .insert((*from, *to), v.clone());
        }
        let pairs = |map: &BTreeMap<(usize, usize), Vec<u64>>| -> Vec<RegionPairLatency> {
            map.iter()
                .map(|((a, b), v)| RegionPairLatency {
                    from: plan.regions[*a].clone(),
                    to: plan.regions[*b].clone(),
                    latency_ms: Percentiles::from_us(v),
                })
                .collect()
        };
        let workloads = plan
            .workloads
            .iter()
            .enumerate()
            .map(|(w, wl)| {
                let map = by_workload.remove(&w).unwrap_or_default();
                let all: Vec<u64> = map.values().flatten().copied().collect();
                WorkloadReport {
                    stream: wl.stream.as_str().to_string(),
                    classification: wl.classification.clone().unwrap_or_else(|| "-".into()),
                    sealed: wl.sealed,
                    latency_ms: Percentiles::from_us(&all),
                    latency_by_region_pair: pairs(&map),
                }
            })
            .collect();
        let tables = m
            .tables
            .iter()
            .filter_map(|(w, t)| {
                let wl = plan.workloads.get(*w)?;
                let spec = wl.table.as_ref()?;
                Some(TableReport {
                    stream: wl.stream.as_str().to_string(),
                    strategy: spec.strategy.as_str().to_string(),
                    keys: spec.keys,
                    writes: t.writes,
                    replicas: t.replicas,
                    digests_equal: t.digests_distinct <= 1,
                    digests_distinct: t.digests_distinct,
                    equal_to_reference: t.replicas_equal_to_reference == t.replicas,
                    replicas_equal_to_reference: t.replicas_equal_to_reference,
                    reference_digest: crate::tables::short_hex(&t.reference_digest),
                    reference_keys_present: t.reference_keys_present,
                    resurrected: t.resurrected,
                    lost: t.lost,
                    conflicts: t.conflicts,
                })
            })
            .collect();
        Self {
            strategy: strategy.to_string(),
            published: m.published,
            deliveries: m.deliveries,
            redeliveries: m.redeliveries,
            latency_ms: Percentiles::from_us(&m.latency_us),
            stretch: Percentiles::from_scaled(&m.stretch_milli, 1000.0),
            intra_region_latency_ms: Percentiles::from_us(&m.intra_region_latency_us),
            fault_latency_ms: Percentiles::from_us(&m.fault_window_latency_us),
            ldh: Percentiles::from_scaled(&m.ldh, 1.0),
            rmr,
            messages_per_event: per_event(total_messages),
            bytes_per_event: per_event(m.bytes),
            cross_region_bytes: m.cross_region_bytes,
            messages_by_kind: m
                .messages_by_kind
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            bytes_by_kind: m
                .bytes_by_kind
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            missed: m.missed,
            destroyed: m.destroyed,
            publishes_held: m.publishes_held,
            numbers_reused: m.numbers_reused,
            numbers_reused_first: m.numbers_reused_first.clone(),
            numbers_renumbered: m.numbers_renumbered,
            numbers_floored: m.numbers_floored,
            equivocations: m.equivocations,
            missed_newest_publish_s: m.missed_newest_publish_us.map(|u| round3(u as f64 / 1e6)),
            duplicates: m.app_duplicates,
            order_violations: m.order_violations,
            convergence_ms: m.convergence_us.map(|u| round3(u as f64 / 1000.0)),
            dropped: m.dropped,
            latency_by_region_pair: pairs(&by_pair),
            latency_by_destination: by_destination
                .iter()
                .map(|(to, v)| RegionLatency {
                    region: plan.regions[*to].clone(),
                    latency_ms: Percentiles::from_us(v),
                })
                .collect(),
            latency_cdf_ms: cdf_ms(&m.latency_us),
            routing: RoutingReport {
                failovers: m.routing.failovers,
                failover_after_ms_max: round3(m.routing.failover_after_us_max as f64 / 1000.0),
                relayed: m.routing.relayed,
                relays_sent_back: m.routing.relays_sent_back,
                reroute_unreachable: m.routing.reroute_unreachable,
                links_recovered: m.routing.links_recovered,
                rtt_shifts_up: m.routing.rtt_shifts_up,
                rtt_shifts_down: m.routing.rtt_shifts_down,
                probes_sent: m.routing.probes_sent,
                measured_extra_ms: Percentiles::from_us(&m.measured_extra_us),
                no_path_deliveries: m.no_path_deliveries,
                measured_link_rtt_ms: round3(m.measured_link_rtt_us as f64 / 1000.0),
            },
            anti_entropy: AntiEntropyCounters {
                summary_share_min: round3(m.anti_entropy.summary_share_min),
                ..m.anti_entropy.clone()
            },
            skips: m.skips.clone(),
            membership: MembershipReport {
                downs: m.membership.clone(),
                detection_ms: Percentiles::from_us(&m.detection_us),
            },
            delivered_fraction: m
                .timeline
                .iter()
                .map(|(t, d, e)| {
                    (
                        round3(*t as f64 / 1e6),
                        if *e == 0 {
                            1.0
                        } else {
                            round3(*d as f64 / *e as f64)
                        },
                    )
                })
                .collect(),
            violations: m.violations.clone(),
            steps: m.steps,
            residency: ResidencyReport {
                policy: plan.policy.is_some(),
                violations: m.residency.violations,
                examples: m.residency.examples.clone(),
                checked: m.residency.checked,
                transit_forwarded: m.residency.transit_forwarded,
                refused_by_receivers: m.residency.refused_by_receivers,
                withheld_pairs: m.residency.withheld_pairs,
            },
            workloads,
            tables,
        }
    }
}

/// The conflict counters of a table report that its strategy produces, as `name n` pairs.
fn conflicts_text(t: &TableReport) -> String {
    let c = &t.conflicts;
    let pairs: &[(&str, u64)] = match t.strategy.as_str() {
        "lww" => &[("lww_lost", c.lww_lost)],
        "multi-value" => &[
            ("mv_siblings", c.mv_siblings),
            ("mv_resolved", c.mv_resolved),
            ("superseded_late", c.superseded_late),
        ],
        "counter" => &[("counter_merged", c.counter_merged)],
        _ => &[
            ("set_add_wins", c.set_add_wins),
            ("superseded_late", c.superseded_late),
        ],
    };
    pairs
        .iter()
        .map(|(n, v)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One check of the run (safety or liveness), with its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The measured value and the bound.
    pub detail: String,
}

/// The whole report of one `weft-sim run`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Master seed.
    pub seed: u64,
    /// Nodes simulated.
    pub nodes: usize,
    /// Simulated duration, seconds.
    pub duration_s: f64,
    /// How signature checks were treated.
    pub signature_checks: String,
    /// How publishers signed: `"modelled"` (signature not computed, ids as when signed) or
    /// `"executed"` (Ed25519).
    pub signing: String,
    /// Results per strategy; Weft first.
    pub strategies: Vec<StrategyReport>,
    /// Checks on Weft's run.
    pub checks: Vec<CheckResult>,
    /// The scenario's fault windows, in plan order.
    pub faults: Vec<FaultWindow>,
    /// Where the latencies between the scenario's regions come from.
    pub latency_pairs: LatencyPairs,
}

/// The region pairs a run's nodes span, by where their RTT comes from: measured (the
/// catalog's data) or derived by its model (`docs/sim.md` §1).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyPairs {
    /// Pairs of distinct regions with a measured RTT.
    pub measured: usize,
    /// The pairs whose RTT was derived, as `"a - b: RTT ms"`, in region order.
    pub derived: Vec<String>,
}

impl LatencyPairs {
    fn new(plan: &Plan) -> Self {
        let used: std::collections::BTreeSet<usize> = plan.nodes.iter().map(|n| n.region).collect();
        let used: Vec<usize> = used.into_iter().collect();
        let mut measured = 0;
        let mut derived = Vec::new();
        for (i, &a) in used.iter().enumerate() {
            for &b in &used[i + 1..] {
                if plan.measured[a][b] {
                    measured += 1;
                } else {
                    derived.push(format!(
                        "{} - {}: {:.1} ms",
                        plan.regions[a],
                        plan.regions[b],
                        2.0 * plan.one_way_us[a][b] as f64 / 1000.0
                    ));
                }
            }
        }
        Self { measured, derived }
    }
}

/// A missed event published this close to the run's end may just be in flight (the
/// slowest measured path with a retransmission is about 1 s).
const IN_FLIGHT_S: f64 = 2.0;

impl Report {
    /// Assembles the report and evaluates the checks on Weft's results.
    pub fn new(
        scenario: &crate::scenario::Scenario,
        plan: &Plan,
        strategies: Vec<StrategyReport>,
    ) -> Self {
        let mut checks = Vec::new();
        if let Some(w) = strategies.iter().find(|s| s.strategy == "weft") {
            let mut check = |name: &str, passed: bool, detail: String| {
                checks.push(CheckResult {
                    name: name.to_string(),
                    passed,
                    detail,
                })
            };
            check(
                "no event delivered twice to an application",
                w.duplicates == 0,
                format!("{} duplicates", w.duplicates),
            );
            check(
                "per-origin order at every application",
                w.order_violations == 0,
                format!("{} violations", w.order_violations),
            );
            check(
                "node invariants",
                w.violations.is_empty(),
                w.violations
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "none broken".into()),
            );
            check(
                "residency violations = 0 (checked on every send, delivery and store)",
                w.residency.violations == 0,
                match (w.residency.policy, w.residency.examples.first()) {
                    (false, _) => "no policy in this scenario".into(),
                    (true, None) => format!(
                        "0 violations; {} restricted sends checked, {} sealed-transit relays, {} pairs withheld",
                        w.residency.checked,
                        w.residency.transit_forwarded,
                        w.residency.withheld_pairs
                    ),
                    (true, Some(first)) => {
                        format!("{} violations, first: {first}", w.residency.violations)
                    }
                },
            );
            check(
                "no sequence number reused while a node remembers it",
                w.numbers_reused == 0 && w.equivocations == 0,
                {
                    let mut d = format!(
                        "{} reused, {} equivocations named by nodes",
                        w.numbers_reused, w.equivocations
                    );
                    if let Some(first) = &w.numbers_reused_first {
                        d.push_str(&format!("; first: {first}"));
                    }
                    if w.numbers_renumbered > 0 {
                        d.push_str(&format!(
                            "; {} renumbered after every node forgot them",
                            w.numbers_renumbered
                        ));
                    }
                    d
                },
            );
            check("missed = 0 after faults heal", w.missed == 0, {
                let mut d = format!("{} (event, node) pairs missed", w.missed);
                if let Some(at) = w.missed_newest_publish_s {
                    let end = plan.duration_us as f64 / 1e6;
                    d.push_str(&format!(
                        "; the newest published at {at} s, {:.3} s before the run's end",
                        end - at
                    ));
                    if end - at < IN_FLIGHT_S {
                        d.push_str(
                            " (perhaps still in flight: stop the workloads earlier, stop_s)",
                        );
                    }
                }
                if w.destroyed > 0 {
                    d.push_str(&format!(
                        "; {} more not deliverable (every copy lost with a store or a crashed node's memory)",
                        w.destroyed
                    ));
                }
                d
            });
            let within_ms = plan.converge_within_us as f64 / 1000.0;
            check(
                "converged within the stated time",
                w.convergence_ms.is_some_and(|c| c <= within_ms),
                match w.convergence_ms {
                    Some(c) => format!("{c} ms (bound {within_ms} ms)"),
                    None => format!("did not converge before the end (bound {within_ms} ms)"),
                },
            );
            if !w.tables.is_empty() {
                let diverged: Vec<String> = w
                    .tables
                    .iter()
                    .filter(|t| !t.digests_equal)
                    .map(|t| format!("{} ({} digests)", t.stream, t.digests_distinct))
                    .collect();
                check(
                    "table digests equal on every replica",
                    diverged.is_empty(),
                    if diverged.is_empty() {
                        format!("{} tables, every replica alike", w.tables.len())
                    } else {
                        format!("diverged: {}", diverged.join(", "))
                    },
                );
                let off: Vec<String> = w
                    .tables
                    .iter()
                    .filter(|t| !t.equal_to_reference)
                    .map(|t| {
                        format!(
                            "{} ({} of {} replicas differ; {} keys resurrected, {} lost)",
                            t.stream,
                            t.replicas - t.replicas_equal_to_reference,
                            t.replicas,
                            t.resurrected,
                            t.lost
                        )
                    })
                    .collect();
                check(
                    "table digests = reference replay (nothing resurrected or lost)",
                    off.is_empty(),
                    if off.is_empty() {
                        format!(
                            "{} writes replayed in publish order into fresh tables",
                            w.tables.iter().map(|t| t.writes).sum::<u64>()
                        )
                    } else {
                        off.join(", ")
                    },
                );
            }
            if let Some(max) = scenario.checks.stretch_p99_max {
                check(
                    "stretch p99",
                    w.stretch.p99 <= max,
                    format!("{} (bound {max})", w.stretch.p99),
                );
            }
            if let Some(max) = scenario.checks.rmr_max {
                check("RMR", w.rmr <= max, format!("{} (bound {max})", w.rmr));
            }
            if let Some(factor) = scenario.checks.reroute_within_rtt {
                let rtt = w.routing.measured_link_rtt_ms;
                let extra = w.routing.measured_extra_ms.max;
                check(
                    "rerouted within the stated RTTs",
                    w.routing.measured_extra_ms.count > 0 && extra <= factor * rtt,
                    format!(
                        "worst extra delay {extra} ms over the ideal under the fault (bound \
                         {factor} x {rtt} ms link RTT) over {} deliveries; {} failovers, slowest \
                         after {} ms; {} deliveries had no path left under the fault (not \
                         measured: they waited for the heal)",
                        w.routing.measured_extra_ms.count,
                        w.routing.failovers,
                        w.routing.failover_after_ms_max,
                        w.routing.no_path_deliveries
                    ),
                );
            }
        }
        Self {
            scenario: scenario.name.clone(),
            seed: plan.seed,
            nodes: plan.nodes.len(),
            duration_s: plan.duration_us as f64 / 1e6,
            signature_checks: if plan.verify_us == 0 {
                "neither executed nor modelled: network.verify_us = 0, a received event \
                 costs no node time"
                    .to_string()
            } else {
                format!(
                    "modelled, not executed: each received event costs {} us of node time",
                    plan.verify_us
                )
            },
            signing: plan.signing.name().to_owned(),
            strategies,
            checks,
            faults: scenario
                .faults
                .iter()
                .zip(&plan.faults)
                .map(|(f, p)| FaultWindow::new(f, p))
                .collect(),
            latency_pairs: LatencyPairs::new(plan),
        }
    }

    /// Checks that failed, as lines.
    pub fn failed_checks(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }

    /// Pretty JSON (deterministic: no wall-clock figures).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self).map(|s| s + "\n")
    }

    /// The terminal summary table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} | seed {} | {} nodes | {} s simulated | signing {} | signature checks {}",
            self.scenario,
            self.seed,
            self.nodes,
            self.duration_s,
            self.signing,
            self.signature_checks
        );
        let _ = writeln!(
            out,
            "region pairs: {} measured, {} derived by the catalog's model{}",
            self.latency_pairs.measured,
            self.latency_pairs.derived.len(),
            if self.latency_pairs.derived.is_empty() {
                ""
            } else {
                " (listed under latency_pairs in the --json report)"
            }
        );
        for (i, f) in self.faults.iter().enumerate() {
            let _ = writeln!(out, "{}", f.line(i));
        }
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>8} {:>7} {:>6} {:>6} {:>6} {:>10}",
            "strategy",
            "published",
            "delivered",
            "p50 ms",
            "p99 ms",
            "max ms",
            "str p50",
            "str p99",
            "RMR",
            "LDH p99",
            "msgs/ev",
            "missed",
            "dups",
            "resid",
            "converge"
        );
        for s in &self.strategies {
            let _ = writeln!(
                out,
                "{:<14} {:>9} {:>10} {:>9.1} {:>9.1} {:>9.1} {:>8.3} {:>8.3} {:>7.3} {:>8.0} {:>7.1} {:>6} {:>6} {:>6} {:>10}",
                s.strategy,
                s.published,
                s.deliveries,
                s.latency_ms.p50,
                s.latency_ms.p99,
                s.latency_ms.max,
                s.stretch.p50,
                s.stretch.p99,
                s.rmr,
                s.ldh.p99,
                s.messages_per_event,
                s.missed,
                s.duplicates,
                s.residency.violations,
                s.convergence_ms
                    .map_or("-".to_string(), |c| format!("{:.0} ms", c)),
            );
        }
        if !self.faults.is_empty() {
            let _ = writeln!(
                out,
                "  latency and stretch: events published while no fault other than a `measure` partition was active; those published during a fault count in `converge` (docs/sim.md, .latency_ms)"
            );
            for s in self
                .strategies
                .iter()
                .filter(|s| s.fault_latency_ms.count > 0)
            {
                let f = &s.fault_latency_ms;
                let _ = writeln!(
                    out,
                    "  {:<12} published during a fault: latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} deliveries)",
                    s.strategy, f.p50, f.p95, f.p99, f.max, f.count
                );
            }
        }
        if let Some(w) = self.strategies.first().filter(|w| w.residency.policy) {
            for wl in &w.workloads {
                let _ = writeln!(
                    out,
                    "  {} {:<24} class {:<16} p50 {:>7.1} ms  p99 {:>7.1} ms  ({} deliveries)",
                    w.strategy,
                    wl.stream,
                    format!(
                        "{}{}",
                        wl.classification,
                        if wl.sealed { " (sealed)" } else { "" }
                    ),
                    wl.latency_ms.p50,
                    wl.latency_ms.p99,
                    wl.latency_ms.count
                );
            }
        }
        for w in self.strategies.iter().filter(|w| w.redeliveries > 0) {
            let _ = writeln!(
                out,
                "  {} re-deliveries to nodes restarted without their stores (new application \
                 instances): {}, not counted in delivered",
                w.strategy, w.redeliveries
            );
        }
        if let Some(w) = self.strategies.first() {
            let a = &w.anti_entropy;
            if a.requests > 0 {
                let _ = writeln!(
                    out,
                    "  {} anti-entropy: {} requests, {} summarised (at least {:.0} % at every node), {} answered unsettled, {} events sent, {} repaired, {} held back as fresh",
                    w.strategy,
                    a.requests,
                    a.summaries,
                    100.0 * a.summary_share_min,
                    a.unsettled,
                    a.events_sent,
                    a.events_repaired,
                    a.events_held_back
                );
            }
            let d = &w.membership;
            if d.downs.downs > 0 {
                let after = if d.detection_ms.count > 0 {
                    format!(
                        " (declared p50 {:.1} s, max {:.1} s after they stopped)",
                        d.detection_ms.p50 / 1000.0,
                        d.detection_ms.max / 1000.0
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "  {} membership: {} down verdicts (counted at each node that declared one): {} on stopped nodes{after}, {} on cut-off ones, {} on reachable ones (false verdicts)",
                    w.strategy,
                    d.downs.downs,
                    d.downs.of_stopped,
                    d.downs.of_cut_off,
                    d.downs.of_reachable
                );
            }
            let k = &w.skips;
            if k.relayed > 0 || k.deferred > 0 {
                let _ = writeln!(
                    out,
                    "  {} skips: {} from origins, {} on another node's word ({} confirmed, {} final after waiting, {} contradicted, {} dropped at a restart, {} still waiting at the end, at most {} at one node), {} deferred over a sender's quota",
                    w.strategy,
                    k.from_origin,
                    k.relayed,
                    k.confirmed,
                    k.expired,
                    k.contradicted,
                    k.dropped_at_restart,
                    k.pending_at_end,
                    k.pending_max_at_end,
                    k.deferred
                );
            }
            if k.lost_in > 0 {
                let _ = writeln!(
                    out,
                    "  {} lost numbers: {} named by origins that no longer held them and lacked here, {} taken as seen after waiting for a holder's copy, {} of whose events a holder sent later (delivered late)",
                    w.strategy, k.lost_in, k.lost_skipped, k.lost_recovered
                );
            }
            for t in &w.tables {
                let _ = writeln!(
                    out,
                    "  table {:<20} {:<11} {:>5} keys {:>6} writes {:>3} replicas  digests equal {}{}  {}",
                    t.stream,
                    t.strategy,
                    t.keys,
                    t.writes,
                    t.replicas,
                    if t.digests_equal { "yes" } else { "NO" },
                    if t.equal_to_reference {
                        ", = reference"
                    } else {
                        ", != REFERENCE"
                    },
                    conflicts_text(t)
                );
            }
        }
        for c in &self.checks {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                if c.passed { "ok" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Nearest-rank percentiles from a sorted copy: what the selections must equal.
    fn by_sorting(samples: &[u64]) -> Percentiles {
        let mut v = samples.to_vec();
        v.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
            v.get(rank - 1).map_or(0.0, |x| round3(*x as f64 / 1000.0))
        };
        Percentiles {
            count: v.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    proptest! {
        #[test]
        fn percentiles_by_selection_equal_those_of_a_sorted_copy(
            samples in prop::collection::vec(0u64..5_000_000, 0..400),
        ) {
            prop_assert_eq!(Percentiles::from_us(&samples), by_sorting(&samples));
        }
    }

    #[test]
    fn percentiles_of_small_and_skewed_samples() {
        assert_eq!(Percentiles::from_us(&[]).count, 0);
        let one = Percentiles::from_us(&[7_000]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        // 100 samples: nearest rank 50, 95 and 99.
        let v: Vec<u64> = (1..=100).rev().map(|x| x * 1000).collect();
        let p = Percentiles::from_us(&v);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
    }
}
