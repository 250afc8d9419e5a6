//! The deterministic discrete-event engine: runs many fabric [`Node`]s over a modelled WAN,
//! injects faults, checks invariants and collects metrics.
//!
//! Determinism: one master seed; every random choice (network jitter and loss, each node's
//! seed, each producer's key) derives from it; the event queue is ordered by `(time, seq)`
//! with a global sequence tie-break; every map that is iterated is a `BTreeMap`. The same
//! plan and seed produce the same report, byte for byte.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use weft_fabric::mesh::{
    AppEvent, EventRef, MemStore, MemberInfo, MeshConfig, Message, Micros, Node, Store, Transmit,
};

use crate::baseline::{BaselineKind, BaselineNode};
use crate::queue::EventQueue;
use crate::residency::{self, GrantedNode, PolicySpec};
use crate::scenario::Signing;
use crate::tables::{self, TableMetrics, TableSabotage, TableSpec, Written};
use weft_fabric::table::{OP_CONTENT_TYPE, Op, Table};
use weft_fabric::{
    Event, EventDraft, EventId, Hlc, HybridClock, KeyBuildHasher, KeyId, KeyRing, OriginKey,
    Payload, Residency, SecurityContext, Signer, StreamName, StreamPattern,
};
use weft_policy::{Hop, Policy, PolicyFilter};

/// Most events a simulated node stores; scenarios stay far below it.
pub const NODE_STORE_LEN_MAX: usize = 10_000_000;
/// Most simulator events processed in one run (a runaway protocol stops here, reported).
pub const STEPS_MAX: u64 = 2_000_000_000;
/// How often a held publish is tried again (the node polls every 20 ms; coarser here, as a
/// client's retry would be, to keep the queue small).
const PUBLISH_HOLD_RETRY_US: Micros = 50_000;

/// Most residency violations described in the report (all are counted).
pub const RESIDENCY_EXAMPLES_MAX: usize = 8;

/// Hop count not known (relays outside the stream's interest break the chain).
const HOPS_UNKNOWN: u16 = u16::MAX;

/// A resolved simulation: nodes, latencies, workload and faults, in microseconds.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Master seed.
    pub seed: u64,
    /// Simulated duration.
    pub duration_us: Micros,
    /// Region ids, indexed by `PlanNode::region`.
    pub regions: Vec<String>,
    /// One-way latency between regions (symmetric), microseconds.
    pub one_way_us: Vec<Vec<Micros>>,
    /// Whether the catalog's RTT between two regions was measured (else the model derived
    /// it), indexed like `one_way_us`.
    pub measured: Vec<Vec<bool>>,
    /// One-way latency between two nodes of the same region.
    pub intra_region_us: Micros,
    /// The nodes.
    pub nodes: Vec<PlanNode>,
    /// Jitter added to each message's one-way delay, uniform in `[0, jitter_us]`.
    pub jitter_us: Micros,
    /// Baseline loss probability per message.
    pub loss: f64,
    /// Per pair of regions (indexed like `one_way_us`), the jitter and loss of messages
    /// between their nodes, when the scenario sets any link's (`[[network.link]]`); `None`
    /// when every link has `jitter_us` and `loss`.
    pub link_net: Option<Vec<Vec<(Micros, f64)>>>,
    /// Modelled cost of verifying one received event's signature (not executed).
    pub verify_us: Micros,
    /// Whether publishers compute signatures (see [`Signing`]).
    pub signing: Signing,
    /// Event sources.
    pub workloads: Vec<PlanWorkload>,
    /// Faults.
    pub faults: Vec<PlanFault>,
    /// After the last fault heals, every event must reach every live interested node
    /// within this time.
    pub converge_within_us: Micros,
    /// Residency classes (the scenario's `[policy]`), compiled into a real bundle at start.
    pub policy: Option<PolicySpec>,
    /// Jurisdiction of each region, indexed like `regions`.
    pub region_jurisdictions: Vec<String>,
    /// Whether the simulated nodes enforce the policy (`PolicyFilter` in every core). The
    /// checker checks every send either way; `false` (nodes run `AllowAll`) exists to show
    /// that the check catches a fabric that does not enforce.
    pub enforce_residency: bool,
    /// Whether a node restarted without its store, whose wait for its own numbering ends
    /// with no member asked answering, numbers past the wall-clock floor
    /// (`weft_fabric::mesh::own_numbers_floor`), as the node does. `false` models nodes
    /// before 2026-12-07, which numbered past what they held and so reused numbers their
    /// peers remembered (tests only: it shows that the "no sequence number reused" check
    /// can fail); `true` in every real run.
    pub numbering_floor: bool,
    /// A deliberate fault in one replica's table application (tests only: it shows that
    /// the table digest checks can fail); `None` in every real run.
    pub table_sabotage: Option<TableSabotage>,
}

/// One simulated node.
#[derive(Debug, Clone)]
pub struct PlanNode {
    /// Display name (`aws:us-east-1/0`).
    pub name: String,
    /// Index into `Plan::regions`.
    pub region: usize,
    /// Cloud.
    pub cloud: String,
    /// Jurisdiction.
    pub jurisdiction: String,
    /// Extra one-way access latency (edge sites attached to a region).
    pub access_us: Micros,
}

/// One stream's publishers and subscribers.
#[derive(Debug, Clone)]
pub struct PlanWorkload {
    /// The stream.
    pub stream: StreamName,
    /// Events per simulated second, over all publishers.
    pub rate_per_s: f64,
    /// Payload size.
    pub payload_bytes: usize,
    /// Publishing nodes (round-robin).
    pub publishers: Vec<usize>,
    /// Interested nodes.
    pub subscribers: Vec<usize>,
    /// When publishing starts.
    pub start_us: Micros,
    /// When it stops.
    pub stop_us: Micros,
    /// Classification of its events (with a policy).
    pub classification: Option<String>,
    /// Whether the producer seals the payload.
    pub sealed: bool,
    /// A table workload: keyed writes applied by every subscriber to its replica.
    pub table: Option<TableSpec>,
    /// Devices per publisher (0: the publishers sign their events themselves): each event
    /// is signed by one of its publisher's devices in turn, an origin of its own.
    pub devices: usize,
}

/// A fault window.
#[derive(Debug, Clone)]
pub struct PlanFault {
    /// Start.
    pub at_us: Micros,
    /// Heal.
    pub until_us: Micros,
    /// Events published during the fault count in latency and stretch (against the ideal
    /// under the fault).
    pub measure: bool,
    /// What happens.
    pub kind: FaultKind,
}

/// Fault kinds.
#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Nodes go down (a region outage, or a crash); back at `until_us`.
    Down {
        /// Affected nodes.
        nodes: Vec<usize>,
        /// Whether they lose their stored events.
        lose_memory: bool,
    },
    /// Messages between the groups are dropped (both ways if symmetric, else a to b).
    Partition {
        /// One side.
        a: Vec<usize>,
        /// The other side.
        b: Vec<usize>,
        /// Both directions.
        symmetric: bool,
    },
    /// Links between the groups get slower and lossier.
    Degrade {
        /// One side.
        a: Vec<usize>,
        /// The other side.
        b: Vec<usize>,
        /// Latency multiplier.
        latency_factor: f64,
        /// Extra loss probability.
        loss: f64,
    },
    /// The nodes' wall clocks are off by `skew_ms` (HLC stamps of their events).
    ClockSkew {
        /// Affected nodes.
        nodes: Vec<usize>,
        /// Offset.
        skew_ms: i64,
    },
}

/// The dissemination strategy a run simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Weft's mesh core (the real protocol code).
    Weft,
    /// Flooding over a random overlay where each node links to `degree` others.
    Flooding {
        /// Links each node opens.
        degree: usize,
    },
    /// Random-peer gossip.
    RandomGossip {
        /// Peers per forward.
        fanout: usize,
    },
}

impl Strategy {
    /// Name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Weft => "weft",
            Strategy::Flooding { .. } => "flooding",
            Strategy::RandomGossip { .. } => "random-gossip",
        }
    }
}

/// A simulated node's protocol instance.
enum Proto {
    Weft(Box<Node<MemStore>>),
    Base(Box<BaselineNode>),
}

impl Proto {
    fn handle_message(&mut self, now: Micros, from: OriginKey, msg: Message) {
        match self {
            Proto::Weft(n) => {
                #[cfg(feature = "handler-timing")]
                let _span = crate::timing::Span::start("message", msg.kind());
                n.handle_message(now, from, msg)
            }
            Proto::Base(n) => n.handle_message(from, msg),
        }
    }
    fn handle_timeout(&mut self, now: Micros) {
        if let Proto::Weft(n) = self {
            #[cfg(feature = "handler-timing")]
            let _span = crate::timing::Span::start("timers", "due");
            n.handle_timeout(now);
        }
    }
    fn handle_publish(&mut self, now: Micros, event: Arc<Event>) -> Result<(), String> {
        match self {
            Proto::Weft(n) => {
                #[cfg(feature = "handler-timing")]
                let _span = crate::timing::Span::start("publish", "event");
                n.handle_publish(now, event).map_err(|e| e.to_string())
            }
            Proto::Base(n) => {
                n.handle_publish(event);
                Ok(())
            }
        }
    }
    fn handle_rtt_sample(&mut self, now: Micros, peer: OriginKey, rtt: Micros) {
        if let Proto::Weft(n) = self {
            n.handle_rtt_sample(now, peer, rtt);
        }
    }
    fn join(&mut self, now: Micros, seeds: &[MemberInfo]) {
        if let Proto::Weft(n) = self {
            n.join(now, seeds);
        }
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        match self {
            Proto::Weft(n) => n.poll_transmit(),
            Proto::Base(n) => n.poll_transmit(),
        }
    }
    fn poll_event(&mut self) -> Option<AppEvent> {
        match self {
            Proto::Weft(n) => n.poll_event(),
            Proto::Base(n) => n.poll_event(),
        }
    }
    fn poll_timeout(&self) -> Option<Micros> {
        match self {
            Proto::Weft(n) => n.poll_timeout(),
            Proto::Base(n) => n.poll_timeout(),
        }
    }
    fn events_new(&self) -> u64 {
        match self {
            Proto::Weft(n) => n.stats().events_new,
            Proto::Base(n) => n.events_new(),
        }
    }
    /// The node's invariants: a bounded window after a step, every table at the end.
    fn check_invariants(&self, full: bool) {
        if let Proto::Weft(n) = self {
            if full {
                n.check_invariants_full();
            } else {
                n.check_invariants();
            }
        }
    }
    fn into_store(self) -> Option<MemStore> {
        match self {
            Proto::Weft(n) => Some(n.into_store()),
            Proto::Base(_) => None,
        }
    }
}

/// The distance between regions with no path (a quarter of the range: sums of two stay
/// representable in the shortest-path pass).
const UNREACHABLE_US: Micros = Micros::MAX / 4;

#[derive(Debug)]
enum Ev {
    Msg {
        to: usize,
        from: usize,
        msg: Message,
    },
    Timer {
        node: usize,
        at: Micros,
    },
    Publish {
        workload: usize,
    },
    /// A publish through `node` held while its numbering is not known (a restart without
    /// its store: [`SimNode::renumber_from`]), tried again.
    PublishHeld {
        workload: usize,
        node: usize,
    },
    FaultStart(usize),
    FaultEnd(usize),
}

struct SimNode {
    info: MemberInfo,
    node: Option<Proto>,
    parked: Option<MemStore>,
    timer_at: Option<Micros>,
    signer: Signer,
    clock: HybridClock,
    skew_ms: i64,
    next_seq: u64,
    /// Set when the node restarted without its store (`lose_memory`): when it started.
    /// Then, as the real node does (`MeshConfig::recover_own_numbers`), it asks members for
    /// its own events before it numbers: its publishes wait while its numbering is not
    /// known (`weft_fabric::mesh::own_numbers_worth_waiting`), and it numbers past
    /// the highest own number it holds or a member asked saw (`Node::own_numbers`), not from
    /// a counter the crash could not have kept.
    renumber_from: Option<Micros>,
    /// When the node last stopped (crash, region outage); `None` while it runs.
    stopped_at: Option<Micros>,
    /// Whether some node has no path of at most two hops to this one (partitions, links
    /// degraded to total loss), and when that last ended (for [`Engine::member_down`]).
    cut_off: bool,
    cut_off_ended_at: Option<Micros>,
    interest: Vec<StreamPattern>,
    /// Application view: events delivered (by index in `Engine::events`), and last
    /// delivered seq per origin.
    app_ids: Vec<bool>,
    /// Per origin node (its index), the last sequence number delivered (0: none). A
    /// vector: a hash map by origin key cost a cache miss per delivery on its key compare.
    app_last: Vec<u64>,
    /// Busy until (models signature verification cost on receive).
    busy_until: Micros,
    /// Per workload, this node's replica of its table (table workloads it subscribes to).
    tables: Vec<Option<Table>>,
    /// The devices this node publishes for (workloads with `devices`), and whose turn is
    /// next.
    devices: Vec<Device>,
    device_turn: usize,
}

/// A device publishing through a node (`PlanWorkload::devices`): it signs its events with
/// its own key, as `weft-agent` does.
struct Device {
    signer: Signer,
    next_seq: u64,
    /// Its index among origins for the application's order check (`SimNode::app_last`):
    /// after every node's.
    origin: usize,
}

/// Everything measured during a run.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Events published.
    pub published: u64,
    /// Deliveries to applications: the first of each (event, node) pair.
    pub deliveries: u64,
    /// Deliveries again to the application of a node that restarted without its store
    /// (`lose_memory`: a new application instance) of events it had delivered before.
    pub redeliveries: u64,
    /// First deliveries of an event to a node other than its origin.
    pub remote_deliveries: u64,
    /// Delivery latencies (µs), all.
    pub latency_us: Vec<Micros>,
    /// Latencies between nodes of the same region (µs).
    pub intra_region_latency_us: Vec<Micros>,
    /// Stretch samples (latency / ideal) across regions, x1000 as integers for determinism.
    pub stretch_milli: Vec<u64>,
    /// Per (workload, origin region, destination region): latencies.
    pub latency_by_pair: BTreeMap<(usize, usize, usize), Vec<Micros>>,
    /// Event copies received by nodes (push and sync), for RMR.
    pub payload_copies: u64,
    /// First receipts of events by nodes other than their origin (RMR's denominator).
    pub first_receipts: u64,
    /// Messages sent, by kind.
    pub messages_by_kind: BTreeMap<&'static str, u64>,
    /// Bytes sent, by message kind (as counted in `bytes`).
    pub bytes_by_kind: BTreeMap<&'static str, u64>,
    /// Bytes sent.
    pub bytes: u64,
    /// Bytes sent between different regions.
    pub cross_region_bytes: u64,
    /// Messages dropped by faults or loss.
    pub dropped: u64,
    /// Messages delivered (simulator deliveries).
    pub message_deliveries: u64,
    /// Duplicate deliveries to applications (safety violation).
    pub app_duplicates: u64,
    /// Out-of-order deliveries per origin (safety violation).
    pub order_violations: u64,
    /// Events not delivered to a live interested node at the end.
    pub missed: u64,
    /// (event, live interested node) pairs not delivered because no copy of the event was
    /// left to deliver: a node that lost its store, or a crashed node's relay cache (memory),
    /// held one, and at the end no node's store holds it (every holder lost it before it
    /// reached the node). Not counted in `missed`.
    pub destroyed: u64,
    /// When the newest event with a missed pair was published (`None`: nothing missed).
    pub missed_newest_publish_us: Option<Micros>,
    /// Publish attempts held back while a node restarted without its store did not know
    /// its own numbering yet ([`SimNode::renumber_from`]; each tried again after
    /// [`PUBLISH_HOLD_RETRY_US`]).
    pub publishes_held: u64,
    /// Publishes that took a sequence number their origin had already given another event
    /// while some node still remembers it (an origin restarted without its store that
    /// numbered before it learned its numbering): the engine's own record of every number
    /// each origin published, across restarts.
    pub numbers_reused: u64,
    /// The first number reused, as "origin N (publishing at NODE) seq S, published up to H
    /// before" (`None`: none).
    pub numbers_reused_first: Option<String>,
    /// Publishes under a number its origin used before that no node remembers any more
    /// (every copy of the earlier event, and every node that saw its number, went with
    /// lost stores): the fabric forgot the number, so nothing drops or contradicts it.
    pub numbers_renumbered: u64,
    /// Times a node restarted without its store numbered past the wall-clock floor
    /// (`weft_fabric::mesh::own_numbers_floor`): its wait for its numbering ended without
    /// it known, as when it is cut off from every other node, or a member asked claimed
    /// more than it can be believed on (`Node::own_floor_wanted`).
    pub numbers_floored: u64,
    /// [`AppEvent::Equivocation`]s the nodes raised: a peer's event under a number the
    /// node holds another event for.
    pub equivocations: u64,
    /// Time from the last heal (or the end of publishing, if later) until every event had
    /// reached every live interested node; `None` if some never did.
    pub convergence_us: Option<Micros>,
    /// Deliveries of events published while a fault was active (not in latency figures).
    pub fault_window_deliveries: u64,
    /// Their latencies (µs): publish to delivery, the wait for the heal included.
    pub fault_window_latency_us: Vec<Micros>,
    /// Deliveries of events published under `measure` faults that left no path between the
    /// origin's region and the receiver's: in latency, not in stretch or the extra delay
    /// over the ideal (there was none to compare with; they waited for the heal).
    pub no_path_deliveries: u64,
    /// For events published during a `measure` fault: delivery latency minus the ideal
    /// under the fault, per cross-region delivery (how long rerouting took).
    pub measured_extra_us: Vec<Micros>,
    /// Largest base RTT of a link a `measure` fault cuts or degrades (what rerouting time is
    /// compared with), 0 without such a fault.
    pub measured_link_rtt_us: Micros,
    /// Routing counters summed over Weft's nodes (zero for the baselines).
    pub routing: RoutingCounters,
    /// Anti-entropy's counters (Weft only).
    pub anti_entropy: AntiEntropyCounters,
    /// Skips' counters (Weft only).
    pub skips: SkipCounters,
    /// SWIM's verdicts: members declared down, by what the member really was (Weft only).
    pub membership: MembershipCounters,
    /// Per declaration of a stopped node down (at each node that declared it): the time
    /// since it stopped (µs).
    pub detection_us: Vec<Micros>,
    /// Last delivery hop per event: hops travelled by the event's last-reached delivery
    /// (only deliveries whose sender's hop count is known: relays that do not subscribe
    /// break the chain).
    pub ldh: Vec<u64>,
    /// Time of the last first-delivery of any event to any node.
    pub last_delivery_us: Micros,
    /// Delivered fraction over time: (time, delivered, expected so far).
    pub timeline: Vec<(Micros, u64, u64)>,
    /// Invariant violations (descriptions).
    pub violations: Vec<String>,
    /// Simulator steps.
    pub steps: u64,
    /// Residency, checked by the engine on every send, delivery and store.
    pub residency: ResidencyCounters,
    /// Per table workload (by workload index): its replicas compared at the end.
    pub tables: BTreeMap<usize, TableMetrics>,
}

/// What the engine's residency checker found (all zero without a policy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResidencyCounters {
    /// Violations: an event, or a message naming it (push, IHAVE, GRAFT, anti-entropy
    /// batch), sent to a node the policy refuses it; an event pushed to a sealed-transit
    /// node outside a relay path (or in anti-entropy, IHAVE or GRAFT); an event delivered to
    /// an application or found in the store of a node that may not hold it.
    pub violations: u64,
    /// The first [`RESIDENCY_EXAMPLES_MAX`] violations, described.
    pub examples: Vec<String>,
    /// Messages checked that carried or named a restricted event (residency not
    /// unrestricted), each event counted once per message.
    pub checked: u64,
    /// Events relayed in sealed transit by nodes outside their residency (the cores'
    /// `transit_forwarded`).
    pub transit_forwarded: u64,
    /// Events the receiving cores refused (the cores' `residency_refused`).
    pub refused_by_receivers: u64,
    /// (event, subscriber) pairs withheld by residency: subscribers that may not hold the
    /// event (not expected, not counted as missed).
    pub withheld_pairs: u64,
}

/// The run's policy and the checker's tables.
struct ResidencyState {
    policy: Arc<Policy>,
    /// Per workload: classification and residency stamped into its events.
    stamps: Vec<(String, Residency)>,
    /// Per workload, per node: what the node may receive of the workload's events
    /// (`Policy::hop`, computed once: every event of a workload has the same scope).
    hops: Vec<Vec<Hop>>,
    /// Per workload: every node may hold its events (nothing to check).
    open: Vec<bool>,
    /// The producers' sealing keys (one ring for the run).
    ring: KeyRing,
    /// Nonces for sealing: its own stream, so sealing does not disturb the network's.
    seal_rng: ChaCha8Rng,
}

/// Routing counters of the mesh core, summed over nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingCounters {
    /// Cross-region pushes that timed out and were rerouted.
    pub failovers: u64,
    /// Longest push-to-failover time at any node, microseconds.
    pub failover_after_us_max: u64,
    /// Pushes relayed on to other regions.
    pub relayed: u64,
    /// Events sent back with relay hops to the peer they came from, per event and target
    /// (its region was the best way left).
    pub relays_sent_back: u64,
    /// Reroutes given up: no way left to a region, or the only one back where the hops
    /// came from.
    pub reroute_unreachable: u64,
    /// Failed links that came back.
    pub links_recovered: u64,
    /// RTT estimates restarted upwards (the path got slower).
    pub rtt_shifts_up: u64,
    /// RTT estimates restarted downwards (the path healed).
    pub rtt_shifts_down: u64,
    /// Link probes sent.
    pub probes_sent: u64,
}

/// What anti-entropy did in a run, summed over the Weft nodes (zero for the baselines);
/// the report's `anti_entropy`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AntiEntropyCounters {
    /// Requests sent: new rounds, resumed ones, and whole digests after `unsettled`.
    pub requests: u64,
    /// Requests that summarised the requester's settled origins instead of listing them.
    pub summaries: u64,
    /// The lowest share of one node's requests that carried a summary (1.0 when no node
    /// sent any request): a node that never summarises pays a whole digest every round.
    pub summary_share_min: f64,
    /// Requests answered `unsettled` (the summary did not match; the whole digest follows).
    pub unsettled: u64,
    /// Events sent in answers.
    pub events_sent: u64,
    /// Of those, events that were new to the requester (what dissemination had missed).
    pub events_repaired: u64,
    /// Events left out of answers as fresh: all the requester lacked of their origin, and
    /// on their way to it through the tree most likely (`SYNC_FRESH_US`).
    pub events_held_back: u64,
    /// Rounds with a member back from down (after a heal), whole digest from the start.
    pub rounds_after_heal: u64,
    /// Partners passed over because they did not answer or SWIM suspected them.
    pub partners_passed_over: u64,
}

/// How long after a cut heals a verdict on a member it cut off counts as the cut's
/// ([`MembershipCounters::of_cut_off`]): verdicts reached on either side spread to the other
/// within seconds of the heal.
pub const VERDICT_AFTER_CUT_US: Micros = 60_000_000;

/// Members declared down by SWIM (`AppEvent::MemberDown`), counted at every node that
/// declared one, by what the engine knows the member was at that moment: the report's
/// `membership`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MembershipCounters {
    /// Declarations of a member down.
    pub downs: u64,
    /// Of those, of a member stopped (crashed, its region out) or since restarted under a
    /// new generation: what failure detection is for.
    pub of_stopped: u64,
    /// Of a running member that partitions (or links degraded to total loss) left with no
    /// path of at most two hops (SWIM's probe, or an indirect probe through one member) to
    /// some node, while that lasted or within [`VERDICT_AFTER_CUT_US`] after: a verdict
    /// across the cut, or one that reached the member's own side as the cut healed (a SWIM
    /// verdict holds fabric-wide; the member rejoins under a new generation).
    pub of_cut_off: u64,
    /// Of a running member every node could reach in two hops throughout the last
    /// [`VERDICT_AFTER_CUT_US`] (lossy, degraded or single cut links aside): false
    /// suspicions that became verdicts. Each costs the member a rejoin under a new
    /// generation and its trees a rebuild.
    pub of_reachable: u64,
}

/// What Skips did, summed over Weft's nodes (`weft_fabric::mesh::Stats`): the report's
/// `skips`. A Skip from another node than the event's origin (a relay, an anti-entropy
/// partner, the node a device publishes through) waits for a second word before it is
/// final (ARCHITECTURE.md, "Trust between nodes"); these say what that costs honest nodes.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SkipCounters {
    /// Skips taken from the events' origins (final at once).
    pub from_origin: u64,
    /// Skips taken on another node's word (waiting for a second word).
    pub relayed: u64,
    /// Of those, confirmed by a second node, the origin, or the event refused.
    pub confirmed: u64,
    /// Of those, final after waiting `SKIP_CONFIRM_US` without a second word.
    pub expired: u64,
    /// Of those, contradicted by the event (no node lies in the simulator: a policy or
    /// protocol fault).
    pub contradicted: u64,
    /// Skips left untaken because their sender's quota of waiting numbers was full (the
    /// number stays a gap for anti-entropy).
    pub deferred: u64,
    /// Of those, waiting when their node stopped and not waiting again after its restart:
    /// the restarted node lost its memory, or its rebuilt state no longer holds the
    /// number as seen (`Stats::skips_dropped_at_restart`); anti-entropy asks for the number
    /// again. With `confirmed`, `expired`, `contradicted` and `pending_at_end` these make
    /// up `relayed`.
    pub dropped_at_restart: u64,
    /// Numbers origins said they no longer hold (restarted without their stores,
    /// `Message::Lost`) that a node lacked, first word only.
    pub lost_in: u64,
    /// Of those, taken as seen after `LOST_WAIT_US` without another holder's copy (the
    /// rest came from a holder, or still wait).
    pub lost_skipped: u64,
    /// Of those, the events a holder sent later, within `LOST_OPEN_US`: stored and
    /// delivered late (`AppEvent::Recovered`, not an order violation).
    pub lost_recovered: u64,
    /// Still waiting at the end of the run, over all live nodes.
    pub pending_at_end: u64,
    /// The most waiting at any one node at the end of the run.
    pub pending_max_at_end: u64,
}

/// How an event reached an application ([`Engine::app_deliver`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// In per-origin order (`AppEvent::Deliver`).
    InOrder,
    /// After a contradicted Skip (`AppEvent::Late`): an order violation.
    Late,
    /// After its number was taken as lost (`AppEvent::Recovered`): out of order by design.
    Recovered,
}

impl SkipCounters {
    /// Adds `node`'s counters: at a crash (its counters start again from zero after the
    /// restart, and a Skip it reloaded from its store and then settled counts where it
    /// settles) and at the end of the run (`at_end`: what still waits there too).
    fn add(&mut self, node: &weft_fabric::mesh::Node<MemStore>, at_end: bool) {
        let s = node.stats();
        self.from_origin += s.skips_in.saturating_sub(s.skips_in_relayed);
        self.relayed += s.skips_in_relayed;
        self.confirmed += s.skips_confirmed;
        self.expired += s.skips_unconfirmed;
        self.contradicted += s.skips_contradicted;
        self.deferred += s.skips_deferred;
        self.dropped_at_restart += s.skips_dropped_at_restart;
        // Numbers, not events: one wall-clock floor's hole is some 1.8e15 of them.
        self.lost_in = self.lost_in.saturating_add(s.lost_in);
        self.lost_skipped = self.lost_skipped.saturating_add(s.lost_skipped);
        self.lost_recovered += s.lost_recovered;
        if at_end {
            let pending = node.skips_unconfirmed_pending() as u64;
            self.pending_at_end += pending;
            self.pending_max_at_end = self.pending_max_at_end.max(pending);
        }
    }
}

/// The link degradations active on one directed node pair, and what they amount to
/// together: the latency factors multiplied, the losses combined as independent
/// (docs/sim.md §2.7). Kept in the order they started, so the composition is the same
/// floating-point value on every run; composed when a degradation starts or heals, not per
/// message sent over the pair.
#[derive(Debug, Default)]
struct Degraded {
    active: Vec<(f64, f64)>,
    factor: f64,
    loss: f64,
}

impl Degraded {
    fn start(&mut self, factor: f64, loss: f64) {
        self.active.push((factor, loss));
        self.compose();
    }

    /// Ends one degradation of these values; true when none is left.
    fn heal(&mut self, factor: f64, loss: f64) -> bool {
        if let Some(at) = self.active.iter().position(|&d| d == (factor, loss)) {
            self.active.remove(at);
        }
        self.compose();
        self.active.is_empty()
    }

    fn compose(&mut self) {
        (self.factor, self.loss) = match self.active[..] {
            // One degradation: its own values (`1 - (1 - loss)` is not always `loss` in
            // floating point).
            [one] => one,
            _ => (
                self.active.iter().map(|d| d.0).product(),
                1.0 - self.active.iter().map(|d| 1.0 - d.1).product::<f64>(),
            ),
        };
    }
}

/// The engine.
pub struct Engine {
    plan: Plan,
    strategy: Strategy,
    /// Baseline overlay: each node's peers.
    overlay: Vec<Vec<OriginKey>>,
    now: Micros,
    /// Pending simulator events, earliest `(time, seq)` first (`seq` is unique, so the
    /// order is total and the same on every run).
    queue: EventQueue<Ev>,
    seq: u64,
    rng: ChaCha8Rng,
    nodes: Vec<SimNode>,
    key_index: HashMap<OriginKey, usize, KeyBuildHasher>,
    /// Directed node pairs cut by a partition, with how many active partitions cut each:
    /// overlapping partitions compose, the pair stays cut until the last of them heals.
    blocked: HashMap<(usize, usize), u32, KeyBuildHasher>,
    /// Directed node pairs under link degradation, with the active degradations composed.
    degraded: HashMap<(usize, usize), Degraded, KeyBuildHasher>,
    /// Events a copy of which went with a store lost in a crash (`lose_memory`), by index in
    /// `events`: at the end, those no store holds any more are not expected
    /// ([`Metrics::destroyed`]).
    destroyed: BTreeMap<usize, EventRef>,
    /// Published events: id -> index in `events`.
    event_index: HashMap<EventId, usize, KeyBuildHasher>,
    /// Published events in publish order: (publish time, origin node, workload). For an
    /// event a device signed, the node it published through.
    events: Vec<(Micros, usize, usize)>,
    /// Per published event, its origin's index for the order check: the node's index, or
    /// a device's (`Device::origin`).
    event_origin: Vec<u32>,
    /// Per origin (nodes, then devices: [`Device::origin`]), the highest sequence number
    /// it published, kept across restarts (the engine's truth, not a node's).
    published_high: Vec<u64>,
    /// (event, subscriber) pairs expected so far, the origin excluded.
    expected_pairs: u64,
    /// Delivery record per (event, node), at `event * nodes + node`: seen at the
    /// application. (Flat arrays: a hash set of pairs cost a cache miss per delivery.)
    delivered_pairs: Vec<bool>,
    /// Hops each (event, node) delivery travelled from the origin (0 at the origin), at
    /// `event * nodes + node`; [`HOPS_UNKNOWN`] if not known.
    hops: Vec<u16>,
    /// Per event, the hop count of its last delivery so far (LDH); [`HOPS_UNKNOWN`] if none.
    last_hop: Vec<u16>,
    /// The node whose message is being handled (deliveries it causes are one hop further).
    handling_from: Option<usize>,
    /// Ideal one-way latency between regions, one set per fault start or heal, each set one
    /// matrix per transit mask (`transit_masks`); each event is compared with the matrix of
    /// its workload's mask in force when it was published.
    ideals: Vec<Vec<Vec<Vec<Micros>>>>,
    /// Distinct sets of regions transit is allowed through (residency), per region.
    transit_masks: Vec<Vec<bool>>,
    /// Per workload, its index into `transit_masks`.
    workload_mask: Vec<usize>,
    /// Residency: the policy and the checker (None without a `[policy]`).
    residency: Option<ResidencyState>,
    /// Per published event, its index into `ideals`.
    event_ideal: Vec<u32>,
    workload_next_pub: Vec<usize>,
    metrics: Metrics,
    /// Messages sent per kind, indexed as [`Message::KINDS`] (copied into
    /// `Metrics::messages_by_kind` at the end; a map entry per message was measurable).
    sent_by_kind: [u64; Message::KINDS.len()],
    /// Bytes sent per kind, in the same order.
    bytes_by_kind: [u64; Message::KINDS.len()],
    /// Latencies per (workload, origin region, destination region), flat at
    /// `(w * regions + from) * regions + to` (moved into `Metrics::latency_by_pair` at the
    /// end; a tree lookup per delivery was measurable).
    latency_by_pair: Vec<Vec<Micros>>,
    /// Scratch buffer of `drain`.
    drain_app: Vec<AppEvent>,
    /// Per workload, the table writes published, in publish order (the reference replica
    /// replays them).
    table_writes: Vec<Vec<Written>>,
    /// Draws of the table workloads (keys, operations, values): their own stream from the
    /// seed, so adding a table workload does not disturb the network's draws.
    table_rng: ChaCha8Rng,
    /// The plan's table sabotage until it fires.
    table_sabotage: Option<TableSabotage>,
    /// Per published event (by index), its table operation once decoded: every replica
    /// reads the same bytes, so they are decoded at the first delivery, not at each (a
    /// tenth of `split-brain-writes`' instructions went to decoding the same operations).
    table_ops: Vec<Option<Rc<Op>>>,
}

impl Engine {
    /// Builds the engine: nodes, keys and the initial schedule.
    pub fn new(plan: Plan, strategy: Strategy) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
        let mut nodes = Vec::with_capacity(plan.nodes.len());
        let mut key_index = HashMap::default();
        for (i, n) in plan.nodes.iter().enumerate() {
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            let signer = Signer::from_secret(&secret);
            let info = MemberInfo {
                key: signer.origin().0,
                region: plan.regions[n.region].as_str().into(),
                cloud: n.cloud.as_str().into(),
                jurisdiction: n.jurisdiction.as_str().into(),
                addr: n.name.as_str().into(),
                policy_epoch: if plan.policy.is_some() {
                    residency::SIM_POLICY_EPOCH
                } else {
                    0
                },
                generation: 0,
            };
            key_index.insert(signer.origin(), i);
            let interest = plan
                .workloads
                .iter()
                .filter(|w| w.subscribers.contains(&i))
                .map(|w| StreamPattern::from(w.stream.clone()))
                .collect();
            let tables = plan
                .workloads
                .iter()
                .map(|w| match &w.table {
                    Some(t) if w.subscribers.contains(&i) => Some(Table::new(t.strategy)),
                    _ => None,
                })
                .collect();
            nodes.push(SimNode {
                info,
                node: None,
                parked: Some(MemStore::new(NODE_STORE_LEN_MAX)),
                timer_at: None,
                signer,
                clock: HybridClock::new(60_000),
                skew_ms: 0,
                next_seq: 1,
                renumber_from: None,
                stopped_at: None,
                cut_off: false,
                cut_off_ended_at: None,
                interest,
                app_ids: Vec::new(),
                app_last: Vec::new(),
                busy_until: 0,
                tables,
                devices: Vec::new(),
                device_turn: 0,
            });
        }
        // Devices: their own stream of draws from the seed, so scenarios without them keep
        // every other draw (and report) as it was.
        let mut device_rng = ChaCha8Rng::seed_from_u64(plan.seed ^ 0xde71_ce00_0000_de71);
        let mut device_origin = nodes.len();
        for (i, node) in nodes.iter_mut().enumerate() {
            let wanted = plan
                .workloads
                .iter()
                .filter(|w| w.publishers.contains(&i))
                .map(|w| w.devices)
                .max()
                .unwrap_or(0);
            for _ in 0..wanted {
                let mut secret = [0u8; 32];
                device_rng.fill_bytes(&mut secret);
                node.devices.push(Device {
                    signer: Signer::from_secret(&secret),
                    next_seq: 1,
                    origin: device_origin,
                });
                device_origin += 1;
            }
        }
        let workload_next_pub = vec![0; plan.workloads.len()];
        let (plan_workloads_len, plan_seed, plan_sabotage) =
            (plan.workloads.len(), plan.seed, plan.table_sabotage);
        let overlay = build_overlay(&nodes, strategy, &mut rng);
        let mut refused = None;
        let residency = match &plan.policy {
            Some(spec) => match residency_state(&plan, spec, &nodes) {
                Ok(state) => Some(state),
                Err(e) => {
                    refused = Some(e);
                    None
                }
            },
            None => None,
        };
        let pairs = plan.workloads.len() * plan.regions.len() * plan.regions.len();
        let mut engine = Self {
            ideals: Vec::new(),
            transit_masks: Vec::new(),
            workload_mask: Vec::new(),
            residency,
            event_ideal: Vec::new(),
            plan,
            strategy,
            overlay,
            now: 0,
            queue: EventQueue::default(),
            seq: 0,
            rng,
            nodes,
            key_index,
            blocked: HashMap::default(),
            degraded: HashMap::default(),
            events: Vec::new(),
            event_origin: Vec::new(),
            published_high: vec![0; device_origin],
            event_index: HashMap::default(),
            destroyed: BTreeMap::new(),
            expected_pairs: 0,
            delivered_pairs: Vec::new(),
            hops: Vec::new(),
            last_hop: Vec::new(),
            handling_from: None,
            workload_next_pub,
            metrics: Metrics::default(),
            drain_app: Vec::new(),
            sent_by_kind: [0; Message::KINDS.len()],
            bytes_by_kind: [0; Message::KINDS.len()],
            latency_by_pair: vec![Vec::new(); pairs],
            table_writes: vec![Vec::new(); plan_workloads_len],
            table_rng: ChaCha8Rng::seed_from_u64(plan_seed ^ 0x7ab1_e000_0000_7ab1),
            table_sabotage: plan_sabotage,
            table_ops: Vec::new(),
        };
        if let Some(e) = refused {
            engine.violation(|| e);
        }
        for i in 0..engine.nodes.len() {
            engine.start_node(i);
        }
        engine.compute_transit_masks();
        engine.recompute_ideal();
        engine.metrics.measured_link_rtt_us = engine
            .plan
            .faults
            .iter()
            .filter(|f| f.measure)
            .filter_map(|f| match &f.kind {
                FaultKind::Partition { a, b, .. } | FaultKind::Degrade { a, b, .. } => a
                    .iter()
                    .flat_map(|x| b.iter().map(move |y| (*x, *y)))
                    .map(|(x, y)| 2 * engine.link_us(x, y))
                    .max(),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // Everyone joins through the first node of each region (seeds), as an operator would
        // configure it.
        let mut seeds: Vec<usize> = Vec::new();
        let mut seen_regions = BTreeSet::new();
        for (i, n) in engine.plan.nodes.iter().enumerate() {
            if seen_regions.insert(n.region) {
                seeds.push(i);
            }
        }
        let seed_infos: Vec<MemberInfo> = seeds
            .iter()
            .map(|s| engine.nodes[*s].info.clone())
            .collect();
        for i in 0..engine.nodes.len() {
            if let Some(node) = engine.nodes[i].node.as_mut() {
                node.join(0, &seed_infos);
            }
            engine.drain(i);
        }
        for w in 0..engine.plan.workloads.len() {
            let at = engine.plan.workloads[w].start_us;
            engine.push(at, Ev::Publish { workload: w });
        }
        for f in 0..engine.plan.faults.len() {
            let (at, until) = (engine.plan.faults[f].at_us, engine.plan.faults[f].until_us);
            engine.push(at, Ev::FaultStart(f));
            engine.push(until, Ev::FaultEnd(f));
        }
        engine
    }

    fn push(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(at, self.seq, ev);
    }

    fn start_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let seed = self.plan.seed
            ^ ((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            ^ u64::from(n.info.generation);
        let me = OriginKey(n.info.key);
        n.node = Some(match self.strategy {
            Strategy::Weft => {
                let parked = n.parked.take();
                let mut config = MeshConfig::wan(self.plan.nodes.len() as u32);
                config.interest = n.interest.clone();
                // A restart after its store was lost (every node starts with one parked):
                // it asks members for its own events before it numbers, as the node does.
                // A first start has no earlier events, so it does not ask (the real node
                // cannot tell and waits up to OWN_NUMBERS_WAIT_US at its first start).
                if parked.is_none() {
                    config.recover_own_numbers = true;
                    n.renumber_from = Some(self.now);
                    n.next_seq = 1;
                }
                let store = parked.unwrap_or_else(|| MemStore::new(NODE_STORE_LEN_MAX));
                let mut node = Node::new(n.info.clone(), config, seed, store, self.now);
                if let Some(r) = &self.residency
                    && self.plan.enforce_residency
                {
                    node.set_filter(Box::new(PolicyFilter::new(r.policy.clone())));
                }
                Proto::Weft(Box::new(node))
            }
            Strategy::Flooding { .. } => Proto::Base(Box::new(BaselineNode::new(
                BaselineKind::Flooding,
                me,
                self.overlay[i].clone(),
                seed,
            ))),
            Strategy::RandomGossip { fanout } => Proto::Base(Box::new(BaselineNode::new(
                BaselineKind::RandomGossip { fanout },
                me,
                self.overlay[i].clone(),
                seed,
            ))),
        });
    }

    /// Runs the plan to the end and returns the metrics.
    pub fn run(mut self, mut progress: impl FnMut(Micros, Micros)) -> Metrics {
        let end = self.plan.duration_us;
        let mut next_sample = 0;
        let sample_every = (end / 100).max(1);
        while self.metrics.steps < STEPS_MAX
            && let Some((at, ev)) = self.queue.pop_until(end)
        {
            self.now = at;
            self.metrics.steps += 1;
            if at >= next_sample {
                let expected = self.expected_so_far();
                self.metrics
                    .timeline
                    .push((at, self.metrics.remote_deliveries, expected));
                next_sample = at + sample_every;
                progress(at, end);
            }
            let touched = self.step(ev);
            // Invariants after every step on small meshes; sampled on large ones (cost).
            if let Some(i) = touched
                && (self.nodes.len() <= 64 || self.metrics.steps.is_multiple_of(997))
                && let Some(node) = &self.nodes[i].node
            {
                node.check_invariants(false);
            }
        }
        self.now = end;
        // A last sample at the end, so every strategy's timeline spans the whole run.
        let expected = self.expected_so_far();
        self.metrics
            .timeline
            .push((end, self.metrics.remote_deliveries, expected));
        self.finish();
        self.metrics
    }

    fn step(&mut self, ev: Ev) -> Option<usize> {
        let touched = match &ev {
            Ev::Msg { to, .. } => Some(*to),
            Ev::Timer { node, .. } => Some(*node),
            _ => None,
        };
        match ev {
            Ev::Msg { to, from, msg } => {
                let now = self.now;
                let from_key = OriginKey(self.nodes[from].info.key);
                let copies = match &msg {
                    Message::Push { events: e, .. } => e.len() as u64,
                    Message::SyncResponse { events, .. } => events.len() as u64,
                    _ => 0,
                };
                let verify_us = self.plan.verify_us;
                let target = &mut self.nodes[to];
                let Some(node) = target.node.as_mut() else {
                    self.metrics.dropped += 1;
                    return None;
                };
                self.metrics.message_deliveries += 1;
                self.metrics.payload_copies += copies;
                // Modelled verification cost: the node is busy for verify_us per event.
                let start = now.max(target.busy_until);
                target.busy_until = start + copies * verify_us;
                node.handle_message(now, from_key, msg);
                self.handling_from = Some(from);
                self.drain(to);
                self.handling_from = None;
            }
            Ev::Timer { node: i, at } => {
                // Only the latest armed timer counts; earlier ones were superseded.
                if self.nodes[i].timer_at != Some(at) {
                    return None;
                }
                self.nodes[i].timer_at = None;
                let now = self.now;
                if let Some(node) = self.nodes[i].node.as_mut() {
                    // The node may have dropped the timer this was armed for (a push
                    // acknowledged, an event that arrived before its GRAFT timeout): a
                    // call would find nothing due, so re-arm for its next one instead.
                    match node.poll_timeout() {
                        None => return None,
                        Some(next) if next > now => {
                            self.arm_timer(i, next);
                            return None;
                        }
                        Some(_) => node.handle_timeout(now),
                    }
                }
                self.drain(i);
            }
            Ev::Publish { workload } => self.publish(workload),
            Ev::PublishHeld { workload, node } => self.publish_from(workload, node),
            Ev::FaultStart(f) => self.fault(f, true),
            Ev::FaultEnd(f) => self.fault(f, false),
        }
        touched
    }

    #[inline(never)] // once per event or fault, not per message: out of `step`
    fn publish(&mut self, w: usize) {
        let wl = &self.plan.workloads[w];
        if self.now >= wl.stop_us || wl.publishers.is_empty() || wl.rate_per_s <= 0.0 {
            return;
        }
        let interval = (1_000_000.0 / wl.rate_per_s) as Micros;
        let i = wl.publishers[self.workload_next_pub[w] % wl.publishers.len()];
        self.push(self.now + interval.max(1), Ev::Publish { workload: w });
        self.workload_next_pub[w] += 1;
        self.publish_from(w, i);
    }

    /// Workload `w`'s next event, published through node `i` now, or, when it is `i`'s own
    /// (not a device's), held while `i`'s own numbering is not known
    /// ([`SimNode::renumber_from`]).
    fn publish_from(&mut self, w: usize, i: usize) {
        let wl = &self.plan.workloads[w];
        if self.nodes[i].node.is_none() {
            return; // a down node publishes nothing
        }
        // A device's event is numbered by the device: the node's own numbering, known or
        // not, neither holds nor floors it.
        let by_device = wl.devices > 0 && !self.nodes[i].devices.is_empty();
        if !by_device
            && let Some(started) = self.nodes[i].renumber_from
            && let Some(Proto::Weft(node)) = &self.nodes[i].node
        {
            let (known, asked, high) = node.own_numbers();
            // Here the wait is over when the numbering is not known.
            let floor_wanted = node.own_floor_wanted(!known);
            let waited = self.now.saturating_sub(started);
            if !known && weft_fabric::mesh::own_numbers_worth_waiting(waited, asked) {
                self.metrics.publishes_held += 1;
                self.push(
                    self.now + PUBLISH_HOLD_RETRY_US,
                    Ev::PublishHeld {
                        workload: w,
                        node: i,
                    },
                );
                return;
            }
            let wall_ms = self.wall_ms(i);
            let n = &mut self.nodes[i];
            n.next_seq = n.next_seq.max(high.saturating_add(1));
            if floor_wanted && self.plan.numbering_floor {
                // The wait ended without the numbering known (over a store that held none of
                // the node's events: every restart the simulator asks after), or a member
                // claimed more than it can be believed on: past the wall-clock floor, once,
                // as the node's producer does.
                let last = n.clock.last().physical_ms();
                let floor = weft_fabric::mesh::own_numbers_floor(wall_ms.max(last));
                n.next_seq = n.next_seq.max(floor.saturating_add(1));
                n.renumber_from = None;
                self.metrics.numbers_floored += 1;
            }
        }
        let wl = wl.clone();
        let wall_ms = self.wall_ms(i);
        let n = &mut self.nodes[i];
        let Ok(hlc) = n.clock.tick(wall_ms) else {
            let addr = n.info.addr.clone();
            self.violation(|| format!("hlc refused at node {addr}"));
            return;
        };
        // A device's event: the next of the node's devices in turn signs it.
        let device = (wl.devices > 0 && !n.devices.is_empty()).then(|| {
            let d = n.device_turn % wl.devices.min(n.devices.len());
            n.device_turn = n.device_turn.wrapping_add(1);
            d
        });
        let (seq, origin_index) = match device {
            Some(d) => (n.devices[d].next_seq, n.devices[d].origin),
            None => (n.next_seq, i),
        };
        let mut draft = draft(
            &wl,
            seq,
            Hlc::from_u64(hlc.as_u64()),
            &n.info.addr,
            self.residency.as_ref().map(|r| &r.stamps[w]),
        );
        // A table write: a key and the operation the writer makes from its own replica's
        // current view of it, as a client reading then writing would.
        let table_write = match (&wl.table, n.tables[w].as_ref()) {
            (Some(spec), Some(local)) => {
                let (key, op) =
                    tables::next_write(spec, local, wl.payload_bytes, &mut self.table_rng);
                draft.key = Some(key.clone());
                draft.content_type = OP_CONTENT_TYPE.into();
                draft.payload = Payload::Clear(op.encode());
                Some((key, op))
            }
            _ => None,
        };
        // Sealed by the producer, as a device or service would: the key never reaches the
        // fabric.
        let signer = match device {
            Some(d) => &n.devices[d].signer,
            None => &n.signer,
        };
        let sealed = match &mut self.residency {
            Some(r) if wl.sealed => signer
                .seal(draft, &r.ring, &mut r.seal_rng)
                .map_err(|e| e.to_string()),
            _ => Ok(draft),
        };
        let signed = sealed.and_then(|draft| {
            match self.plan.signing {
                Signing::Executed => signer.sign(draft),
                Signing::Modelled => signer.model_sign(draft),
            }
            .map_err(|e| e.to_string())
        });
        let Ok(event) = signed else {
            self.violation(|| "signing failed".into());
            return;
        };
        match device {
            Some(d) => n.devices[d].next_seq += 1,
            None => n.next_seq += 1,
        }
        let high = self.published_high[origin_index];
        if seq <= high {
            self.number_reused(i, origin_index, &event, high);
        }
        self.published_high[origin_index] = high.max(seq);
        let event = Arc::new(event);
        let e = self.events.len();
        let nodes = self.nodes.len();
        self.events.push((self.now, i, w));
        self.event_origin
            .push(u32::try_from(origin_index).unwrap_or(u32::MAX));
        self.event_ideal
            .push(u32::try_from(self.ideals.len().saturating_sub(1)).unwrap_or(u32::MAX));
        self.event_index.insert(event.id(), e);
        let entitled = wl
            .subscribers
            .iter()
            .filter(|s| **s != i && self.entitled(w, **s))
            .count() as u64;
        let others = wl.subscribers.iter().filter(|s| **s != i).count() as u64;
        self.expected_pairs += entitled;
        self.metrics.residency.withheld_pairs += others - entitled;
        self.delivered_pairs.resize(nodes * (e + 1), false);
        self.hops.resize(nodes * (e + 1), HOPS_UNKNOWN);
        self.hops[e * nodes + i] = 0;
        self.last_hop.push(HOPS_UNKNOWN);
        self.metrics.published += 1;
        let now = self.now;
        let written = table_write.map(|(key, op)| Written {
            dot: tables::dot(event.origin(), event.seq()),
            hlc: event.hlc(),
            key,
            op,
        });
        if let Some(node) = self.nodes[i].node.as_mut() {
            match node.handle_publish(now, event) {
                Ok(()) => {
                    if let Some(written) = written {
                        self.table_writes[w].push(written);
                    }
                }
                Err(e) => self.violation(|| format!("publish refused: {e}")),
            }
        }
        self.drain(i);
    }

    /// Origin `origin_index` published `event` (through node `i`) under a number it gave
    /// another event before (`high`: the highest it had published). Harmful when some node still remembers the
    /// number (a running node has seen it, or a down node's kept store holds it): that node
    /// drops the new event as a duplicate or names an equivocation. Benign when every
    /// copy and trace of the earlier one went with lost stores (renumbered after loss).
    #[cold]
    #[inline(never)]
    fn number_reused(&mut self, i: usize, origin_index: usize, event: &Event, high: u64) {
        let (origin, seq) = (event.origin(), event.seq());
        let remembered = self.nodes.iter().any(|n| match (&n.node, &n.parked) {
            (Some(Proto::Weft(node)), _) => node.has_seen(&origin, seq),
            (None, Some(parked)) => parked.ranges(&origin).is_some_and(|r| r.contains(seq)),
            _ => false,
        });
        if !remembered {
            self.metrics.numbers_renumbered += 1;
            return;
        }
        self.metrics.numbers_reused += 1;
        if self.metrics.numbers_reused_first.is_none() {
            let at = &self.nodes[i].info.addr;
            self.metrics.numbers_reused_first = Some(format!(
                "origin {origin_index} (publishing at {at}) seq {seq}, published up to {high} before"
            ));
        }
    }

    fn unreadable_table_event(&mut self, event: &Event) {
        let id = event.id();
        self.violation(|| format!("table event {id} has no key or no readable operation"));
    }

    /// Applies a delivered event (index `e`) of table workload `w` to node `i`'s replica
    /// (the HLC receive rule first, as a node's clock moves past what it reads).
    #[inline(never)] // table workloads only: out of the delivery path
    fn apply_table(&mut self, i: usize, e: usize, w: usize, event: &Event) {
        if self.table_ops.len() <= e {
            self.table_ops.resize(e + 1, None);
        }
        let op = match &self.table_ops[e] {
            Some(op) => op.clone(),
            None => {
                let op = match event.payload() {
                    Payload::Clear(bytes) => Op::from_event(event.content_type(), bytes),
                    Payload::Sealed(_) => {
                        let id = event.id();
                        self.violation(|| format!("table event {id} is sealed"));
                        return;
                    }
                };
                let Ok(op) = op else {
                    self.unreadable_table_event(event);
                    return;
                };
                let op = Rc::new(op);
                self.table_ops[e] = Some(op.clone());
                op
            }
        };
        let Some(key) = event.key() else {
            self.unreadable_table_event(event);
            return;
        };
        let wall_ms = self.wall_ms(i);
        let n = &mut self.nodes[i];
        // A remote HLC beyond the drift bound is refused by the clock; the write still
        // applies (the table orders by the event's HLC, not the node's clock).
        let _ = n.clock.receive(event.hlc(), wall_ms);
        let Some(table) = n.tables[w].as_mut() else {
            return;
        };
        let write = weft_fabric::table::Write {
            dot: tables::dot(event.origin(), event.seq()),
            hlc: event.hlc(),
            key,
            op: &op,
        };
        let targeted = match self.table_sabotage {
            Some(TableSabotage::SkipFirstAdd { node } | TableSabotage::ApplyAddTwice { node }) => {
                node == i
            }
            None => false,
        };
        if targeted {
            tables::apply_delivered(table, &write, &mut self.table_sabotage);
        } else {
            table.apply(&write);
        }
    }

    #[inline(never)] // once per event or fault, not per message: out of `step`
    fn fault(&mut self, f: usize, start: bool) {
        let fault = self.plan.faults[f].clone();
        match fault.kind {
            FaultKind::Down { nodes, lose_memory } => {
                for i in nodes {
                    if start {
                        if let Some(node) = self.nodes[i].node.take() {
                            self.metrics.first_receipts += node.events_new();
                            if let Proto::Weft(n) = &node {
                                // Its relay cache is memory: any crash loses it, the
                                // store kept or not.
                                self.note_cached_destroyed(n);
                                self.metrics.skips.add(n, false);
                                if lose_memory {
                                    // Its waiting Skips go with its store.
                                    self.metrics.skips.dropped_at_restart +=
                                        n.skips_unconfirmed_pending() as u64;
                                }
                                // A generation it rejoined under (after a partition): the
                                // restart takes the one after it, as the node's store does.
                                let info = &mut self.nodes[i].info;
                                info.generation = info.generation.max(n.me().generation);
                            }
                            let store = node.into_store();
                            if lose_memory && let Some(lost) = &store {
                                self.audit_store(i, lost);
                                self.note_destroyed(lost);
                            }
                            self.nodes[i].parked = if lose_memory { None } else { store };
                            if lose_memory {
                                // A node that lost its disk is a new application instance.
                                self.nodes[i].app_ids.clear();
                                self.nodes[i].app_last.clear();
                                // Its replicas too: it rebuilds them from what it
                                // receives again.
                                for t in self.nodes[i].tables.iter_mut().flatten() {
                                    *t = Table::new(t.strategy());
                                }
                            }
                        }
                        self.nodes[i].timer_at = None;
                        self.nodes[i].stopped_at.get_or_insert(self.now);
                    } else if self.nodes[i].node.is_none() {
                        self.nodes[i].stopped_at = None;
                        self.nodes[i].info.generation += 1;
                        self.start_node(i);
                        let seeds: Vec<MemberInfo> = self
                            .nodes
                            .iter()
                            .filter(|n| n.node.is_some())
                            .take(8)
                            .map(|n| n.info.clone())
                            .collect();
                        let now = self.now;
                        if let Some(node) = self.nodes[i].node.as_mut() {
                            node.join(now, &seeds);
                        }
                        self.drain(i);
                    }
                }
            }
            FaultKind::Partition { a, b, symmetric } => {
                for &x in &a {
                    for &y in &b {
                        for pair in [(x, y), (y, x)]
                            .into_iter()
                            .take(if symmetric { 2 } else { 1 })
                        {
                            if start {
                                *self.blocked.entry(pair).or_insert(0) += 1;
                            } else if let Some(n) = self.blocked.get_mut(&pair) {
                                *n -= 1;
                                if *n == 0 {
                                    self.blocked.remove(&pair);
                                }
                            }
                        }
                    }
                }
            }
            FaultKind::Degrade {
                a,
                b,
                latency_factor,
                loss,
            } => {
                for &x in &a {
                    for &y in &b {
                        for pair in [(x, y), (y, x)] {
                            let d = self.degraded.entry(pair).or_default();
                            if start {
                                d.start(latency_factor, loss);
                            } else if d.heal(latency_factor, loss) {
                                self.degraded.remove(&pair);
                            }
                        }
                    }
                }
            }
            FaultKind::ClockSkew { nodes, skew_ms } => {
                for i in nodes {
                    self.nodes[i].skew_ms = if start { skew_ms } else { 0 };
                }
            }
        }
        // A crash or restart changes who can help an indirect probe too.
        if !matches!(self.plan.faults[f].kind, FaultKind::ClockSkew { .. }) {
            self.note_cuts();
        }
        self.recompute_ideal();
    }

    /// Sends everything node `i` has queued and re-arms its timer; hands deliveries to the
    /// application model.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        // Each message goes out as it is polled (the engine's sends never touch the node;
        // collecting them first moved every message once more).
        while let Some(t) = self.nodes[i].node.as_mut().and_then(Proto::poll_transmit) {
            let Some(&to) = self.key_index.get(&t.to) else {
                continue;
            };
            self.transmit(i, to, t.msg);
        }
        // A reused buffer (no allocation per step), taken out while the engine is borrowed:
        // handling a member event calls into the node again.
        let mut app = std::mem::take(&mut self.drain_app);
        let next_timer;
        {
            let Some(node) = self.nodes[i].node.as_mut() else {
                self.drain_app = app;
                return;
            };
            while let Some(e) = node.poll_event() {
                app.push(e);
            }
            next_timer = node.poll_timeout();
        }
        for e in app.drain(..) {
            match e {
                AppEvent::Deliver(event) => self.app_deliver(i, &event, Arrival::InOrder),
                // Out of per-origin order by definition (a Skip for it was contradicted):
                // counted as an order violation; no node in the simulator lies, so only a
                // policy or protocol fault gives one.
                AppEvent::Late(event) => self.app_deliver(i, &event, Arrival::Late),
                // Out of order too, but by design: its origin lost it, the node moved past
                // its number, and a holder's copy came later (`.skips.lost_recovered`).
                AppEvent::Recovered(event) => self.app_deliver(i, &event, Arrival::Recovered),
                AppEvent::SkipContradicted { .. } => {}
                // No two simulated producers share a key: only a reused number gives one
                // (`Metrics::numbers_reused`).
                AppEvent::Equivocation { .. } => self.metrics.equivocations += 1,
                AppEvent::MemberUp(m) => self.member_up(i, &m),
                AppEvent::MemberDown(m) => self.member_down(&m),
            }
        }
        self.drain_app = app;
        if let Some(at) = next_timer {
            self.arm_timer(i, at.max(now));
        }
    }

    /// Node `i` saw member `m` join: the transport measures the RTT when it connects to a
    /// new member. Cold: membership changes are rare next to messages.
    #[cold]
    #[inline(never)]
    fn member_up(&mut self, i: usize, m: &MemberInfo) {
        if let Some(&j) = self.key_index.get(&OriginKey(m.key)) {
            let rtt = 2 * self.link_us(i, j);
            let now = self.now;
            if let Some(node) = self.nodes[i].node.as_mut() {
                node.handle_rtt_sample(now, OriginKey(m.key), rtt);
            }
        }
    }

    /// After a fault starts or heals: which running nodes some other running node has no
    /// path of at most two hops to (both ways over links neither blocked nor at total loss,
    /// through a running node), for [`Self::member_down`]. Bitsets: n^2 / 64 words and up
    /// to 4 n^2 map lookups per change while some link is cut (a few milliseconds at 1000
    /// nodes), and faults are rare.
    #[cold]
    fn note_cuts(&mut self) {
        let n = self.nodes.len();
        let words = n.div_ceil(64);
        let cut = |a: usize, b: usize| {
            self.blocked.contains_key(&(a, b))
                || self.degraded.get(&(a, b)).is_some_and(|d| d.loss >= 1.0)
        };
        let running: Vec<bool> = self.nodes.iter().map(|s| s.node.is_some()).collect();
        // Each node's running neighbours both ways (itself included); all running nodes
        // when nothing is cut. A stopped node helps no indirect probe.
        let mut all = vec![0u64; words];
        for (k, _) in running.iter().enumerate().filter(|(_, up)| **up) {
            all[k / 64] |= 1 << (k % 64);
        }
        let mut near: Vec<u64> = (0..n).flat_map(|_| all.iter().copied()).collect();
        let mut any = false;
        for &(a, b) in self.blocked.keys().chain(
            self.degraded
                .iter()
                .filter(|(_, d)| d.loss >= 1.0)
                .map(|(pair, _)| pair),
        ) {
            any = true;
            near[a * words + b / 64] &= !(1 << (b % 64));
            near[b * words + a / 64] &= !(1 << (a % 64));
        }
        let cut_off: Vec<bool> = (0..n)
            .map(|i| {
                any && running[i]
                    && (0..n).any(|j| {
                        running[j]
                            && (cut(i, j) || cut(j, i))
                            && !(0..words).any(|w| near[i * words + w] & near[j * words + w] != 0)
                    })
            })
            .collect();
        for (node, now_cut) in self.nodes.iter_mut().zip(cut_off) {
            if node.cut_off && !now_cut {
                node.cut_off_ended_at = Some(self.now);
            }
            node.cut_off = now_cut;
        }
    }

    /// A node declared member `m` down: counted by what `m` really was
    /// ([`MembershipCounters`]), and for a stopped node, how long after it stopped.
    #[cold]
    #[inline(never)]
    fn member_down(&mut self, m: &MemberInfo) {
        let Some(&j) = self.key_index.get(&OriginKey(m.key)) else {
            return;
        };
        let c = &mut self.metrics.membership;
        c.downs += 1;
        if self.nodes[j].node.is_none() {
            c.of_stopped += 1;
            if let Some(at) = self.nodes[j].stopped_at {
                self.metrics.detection_us.push(self.now - at);
            }
        } else if m.generation < self.nodes[j].info.generation {
            // An incarnation from before a restart (a rejoin after a false verdict keeps
            // the engine's generation: that one counts below).
            c.of_stopped += 1;
        } else if self.nodes[j].cut_off
            || self.nodes[j]
                .cut_off_ended_at
                .is_some_and(|at| self.now < at + VERDICT_AFTER_CUT_US)
        {
            c.of_cut_off += 1;
        } else {
            c.of_reachable += 1;
        }
    }

    /// Queues a timer step for node `i` at `at` unless one is armed no later (only the
    /// earliest armed step counts: see `step`).
    fn arm_timer(&mut self, i: usize, at: Micros) {
        let n = &mut self.nodes[i];
        if n.timer_at.is_none_or(|cur| at < cur) {
            n.timer_at = Some(at);
            self.push(at, Ev::Timer { node: i, at });
        }
    }

    /// Whether node `i` may hold events of workload `w` (always, without a policy).
    fn entitled(&self, w: usize, i: usize) -> bool {
        self.residency
            .as_ref()
            .is_none_or(|r| r.open[w] || r.hops[w][i] == Hop::Clear)
    }

    /// Node `i`'s wall clock, ms since the Unix epoch: the simulated time from
    /// 2025-11-24 16:00 UTC on, plus the node's skew.
    fn wall_ms(&self, i: usize) -> u64 {
        let ms = (self.now / 1000) as i64 + 1_764_000_000_000 + self.nodes[i].skew_ms;
        ms.max(0) as u64
    }

    /// Records a broken invariant. Out of line and cold, as every caller's branch to it is:
    /// the description is formatted here, so that the formatting code stays out of the hot
    /// loop's instruction cache lines (the simulator's code path per message is larger than
    /// the 32 KiB instruction cache; docs/sim.md, section 3.3).
    #[cold]
    #[inline(never)]
    fn violation(&mut self, describe: impl FnOnce() -> String) {
        self.metrics.violations.push(describe());
    }

    /// Counts residency violations (with a description of the first few).
    #[cold]
    #[inline(never)]
    fn residency_violation(&mut self, count: u64, describe: impl FnOnce() -> String) {
        if count == 0 {
            return;
        }
        let r = &mut self.metrics.residency;
        r.violations += count;
        if r.examples.len() < RESIDENCY_EXAMPLES_MAX {
            r.examples.push(describe());
        }
    }

    /// The residency check of one send, independent of the cores' filter: every event the
    /// message carries or names, against what the receiving node may receive of it.
    fn check_send(&mut self, from: usize, to: usize, msg: &Message) {
        let Some(r) = &self.residency else {
            return;
        };
        let (mut bad, mut checked) = (0u64, 0u64);
        let mut first: Option<(EventId, &'static str, Hop)> = None;
        let mut check = |id: EventId, relaying: bool, what: &'static str| {
            let Some(&e) = self.event_index.get(&id) else {
                return;
            };
            let w = self.events[e].2;
            if r.open[w] {
                return;
            }
            checked += 1;
            let hop = r.hops[w][to];
            let ok = match hop {
                Hop::Clear => true,
                Hop::SealedTransit => relaying,
                Hop::Refuse => false,
            };
            if !ok {
                bad += 1;
                first.get_or_insert((id, what, hop));
            }
        };
        match msg {
            Message::Push { events, relay, .. } => {
                for e in events {
                    check(e.id(), !relay.is_empty(), "push");
                }
            }
            Message::SyncResponse { events, .. } => {
                for e in events {
                    check(e.id(), false, "anti-entropy batch");
                }
            }
            Message::IHave(refs) => {
                for r in refs {
                    check(r.id, false, "IHAVE");
                }
            }
            Message::Graft(refs) => {
                for r in refs {
                    check(r.id, false, "GRAFT");
                }
            }
            // Digests and Skips carry origins and sequence numbers only: no id, stream,
            // classification or content (docs/sim.md).
            _ => {}
        }
        self.metrics.residency.checked += checked;
        if let Some((id, what, hop)) = first {
            let (a, b) = (
                self.nodes[from].info.addr.clone(),
                self.nodes[to].info.addr.clone(),
            );
            self.residency_violation(bad, || {
                format!("{what} {a} -> {b} names event {id}, which {b} may get as {hop:?}")
            });
        }
    }

    /// The residency check of a store: every event in it must be one the node may hold.
    /// Only the origins that publish a workload the node may not hold can hold such events,
    /// so only their ranges are walked.
    fn audit_store(&mut self, i: usize, store: &MemStore) {
        let Some(r) = &self.residency else {
            return;
        };
        let suspects: BTreeSet<OriginKey> = self
            .plan
            .workloads
            .iter()
            .enumerate()
            .filter(|(w, _)| !r.open[*w] && r.hops[*w][i] != Hop::Clear)
            .flat_map(|(_, wl)| wl.publishers.iter())
            .flat_map(|p| {
                let n = &self.nodes[*p];
                std::iter::once(OriginKey(n.info.key))
                    .chain(n.devices.iter().map(|d| d.signer.origin()))
            })
            .collect();
        let mut bad = 0u64;
        let mut first = None;
        for origin in suspects {
            let Some(ranges) = store.ranges(&origin) else {
                continue;
            };
            for (lo, hi) in ranges.iter() {
                for seq in lo..=hi {
                    let Ok(Some(event)) = store.get(&origin, seq) else {
                        continue;
                    };
                    let Some(&e) = self.event_index.get(&event.id()) else {
                        continue;
                    };
                    if !self.entitled(self.events[e].2, i) {
                        bad += 1;
                        first.get_or_insert(event.id());
                    }
                }
            }
        }
        if let Some(id) = first {
            let addr = self.nodes[i].info.addr.clone();
            self.residency_violation(bad, || {
                format!("{addr} stores event {id}, which it may not hold")
            });
        }
    }

    /// Per workload, the regions its events may cross (clear or sealed transit, judged by
    /// each region's first node), deduplicated into `transit_masks`.
    fn compute_transit_masks(&mut self) {
        let r = self.plan.regions.len();
        let first = self.first_nodes();
        self.transit_masks.clear();
        self.workload_mask.clear();
        for w in 0..self.plan.workloads.len() {
            let mask: Vec<bool> = (0..r)
                .map(|reg| match (&self.residency, first[reg]) {
                    (Some(res), Some(i)) => res.hops[w][i] != Hop::Refuse,
                    _ => true,
                })
                .collect();
            let at = match self.transit_masks.iter().position(|m| *m == mask) {
                Some(at) => at,
                None => {
                    self.transit_masks.push(mask);
                    self.transit_masks.len() - 1
                }
            };
            self.workload_mask.push(at);
        }
        if self.transit_masks.is_empty() {
            self.transit_masks.push(vec![true; r]);
        }
    }

    /// Per region, its first node without access latency (else its first node): the node
    /// that stands for the region in ideal paths.
    fn first_nodes(&self) -> Vec<Option<usize>> {
        let r = self.plan.regions.len();
        let mut first_node: Vec<Option<usize>> = vec![None; r];
        for (i, n) in self.plan.nodes.iter().enumerate() {
            if first_node[n.region].is_none() && n.access_us == 0 {
                first_node[n.region] = Some(i);
            }
        }
        for (i, n) in self.plan.nodes.iter().enumerate() {
            if first_node[n.region].is_none() {
                first_node[n.region] = Some(i);
            }
        }
        first_node
    }

    /// The ideal one-way latency from node `a` to node `b` for event `e`: the shortest path
    /// its residency allows, under the faults in force when it was published.
    /// The ideal one-way latency from node `a` to node `b` for event `e` (the shortest
    /// allowed path when it was published); `None` when no path was left then (a `measure`
    /// partition cut every way): such a delivery waited for the heal, which no routing can
    /// shorten, and has no stretch.
    fn ideal_us(&self, e: usize, a: usize, b: usize) -> Option<Micros> {
        let (na, nb) = (&self.plan.nodes[a], &self.plan.nodes[b]);
        let base = if na.region == nb.region {
            self.plan.intra_region_us
        } else {
            let mask = self
                .workload_mask
                .get(self.events[e].2)
                .copied()
                .unwrap_or(0);
            self.ideals[self.event_ideal[e] as usize][mask][na.region][nb.region]
        };
        (base < UNREACHABLE_US).then(|| base + na.access_us + nb.access_us)
    }

    fn link_us(&self, a: usize, b: usize) -> Micros {
        let (na, nb) = (&self.plan.nodes[a], &self.plan.nodes[b]);
        let base = if na.region == nb.region {
            self.plan.intra_region_us
        } else {
            self.plan.one_way_us[na.region][nb.region]
        };
        base + na.access_us + nb.access_us
    }

    fn transmit(&mut self, from: usize, to: usize, msg: Message) {
        let kind = msg.kind_index();
        self.sent_by_kind[kind] += 1;
        if self.residency.is_some() {
            self.check_send(from, to, &msg);
        }
        let len = msg.wire_len() as u64;
        self.metrics.bytes += len;
        self.bytes_by_kind[kind] += len;
        if self.plan.nodes[from].region != self.plan.nodes[to].region {
            self.metrics.cross_region_bytes += len;
        }
        // Both maps are empty outside faults: skip the lookups then.
        if !self.blocked.is_empty() && self.blocked.contains_key(&(from, to)) {
            self.metrics.dropped += 1;
            return;
        }
        let (factor, extra_loss) = if self.degraded.is_empty() {
            (1.0, 0.0)
        } else {
            self.degraded
                .get(&(from, to))
                .map_or((1.0, 0.0), |d| (d.factor, d.loss))
        };
        let base = (self.link_us(from, to) as f64 * factor) as Micros;
        let (jitter_us, link_loss) = match &self.plan.link_net {
            None => (self.plan.jitter_us, self.plan.loss),
            Some(net) => net[self.plan.nodes[from].region][self.plan.nodes[to].region],
        };
        let jitter = (jitter_us as f64 * unit(&mut self.rng)) as Micros;
        let loss = link_loss + extra_loss;
        let mut delay = base + jitter;
        if loss > 0.0 && unit(&mut self.rng) < loss {
            match msg.channel() {
                weft_fabric::mesh::Channel::Datagram => {
                    self.metrics.dropped += 1;
                    return;
                }
                // Streams are reliable: a lost packet costs a retransmission, about one RTT.
                _ => delay += 2 * base,
            }
        }
        let at = self.now.max(self.nodes[from].busy_until) + delay;
        self.push(at, Ev::Msg { to, from, msg });
    }

    fn app_deliver(&mut self, i: usize, event: &Event, arrival: Arrival) {
        let id = event.id();
        let Some(&e) = self.event_index.get(&id) else {
            self.violation(|| format!("event {id} delivered but never published"));
            return;
        };
        let nodes = self.nodes.len();
        let w = self.events[e].2;
        if !self.entitled(w, i) {
            let addr = self.nodes[i].info.addr.clone();
            self.residency_violation(1, || {
                format!("{addr} delivered event {id}, which it may not hold")
            });
            // Not a delivery the run expects (a baseline ignores residency): counted as
            // a violation only, so delivered and the delivered fraction compare with
            // what is expected (before, flooding's fraction went above 1 under a policy).
            return;
        }
        let n = &mut self.nodes[i];
        if n.app_ids.len() <= e {
            n.app_ids.resize(e + 1, false);
        }
        if std::mem::replace(&mut n.app_ids[e], true) {
            self.metrics.app_duplicates += 1;
            let addr = n.info.addr.clone();
            self.violation(|| format!("event {id} delivered twice at {addr}"));
            return;
        }
        let origin = self.event_origin[e] as usize;
        if n.app_last.len() <= origin {
            n.app_last.resize(origin + 1, 0);
        }
        let last = &mut n.app_last[origin];
        match arrival {
            Arrival::InOrder => {
                if event.seq() <= *last {
                    self.metrics.order_violations += 1;
                }
                *last = event.seq();
            }
            Arrival::Late => self.metrics.order_violations += 1,
            Arrival::Recovered => {}
        }
        if self.plan.workloads[w].table.is_some() {
            self.apply_table(i, e, w, event);
        }
        if std::mem::replace(&mut self.delivered_pairs[e * nodes + i], true) {
            // A node that lost its disk receives again (a new application instance): not a
            // new delivery, counted apart.
            self.metrics.redeliveries += 1;
            return;
        }
        self.metrics.deliveries += 1;
        if let Some(from) = self.handling_from
            && let h = self.hops[e * nodes + from]
            && h != HOPS_UNKNOWN
        {
            let hop = h.saturating_add(1).min(HOPS_UNKNOWN - 1);
            self.hops[e * nodes + i] = hop;
            let last = &mut self.last_hop[e];
            *last = if *last == HOPS_UNKNOWN {
                hop
            } else {
                (*last).max(hop)
            };
        }
        if let Some(&(t0, origin, _)) = self.events.get(e) {
            if origin == i {
                return;
            }
            self.metrics.remote_deliveries += 1;
            self.metrics.last_delivery_us = self.now;
            // Latency and stretch describe the fabric at work; events published while a
            // fault was active reach some nodes only after the heal, which the convergence
            // time reports instead.
            let during = |f: &&PlanFault| f.at_us <= t0 && t0 < f.until_us;
            let latency = self.now.saturating_sub(t0);
            if self.plan.faults.iter().filter(during).any(|f| !f.measure) {
                self.metrics.fault_window_deliveries += 1;
                self.metrics.fault_window_latency_us.push(latency);
                return;
            }
            let measured = self.plan.faults.iter().filter(during).any(|f| f.measure);
            self.metrics.latency_us.push(latency);
            // Stretch is measured across regions: inside one region the ideal is a single
            // sub-millisecond hop, where any relay, however cheap, doubles the ratio without
            // a user-visible cost; those deliveries are reported as latency instead.
            if self.plan.nodes[origin].region == self.plan.nodes[i].region
                && self.plan.nodes[i].access_us == 0
            {
                self.metrics.intra_region_latency_us.push(latency);
            } else {
                match self.ideal_us(e, origin, i) {
                    Some(ideal) => {
                        let ideal = ideal.max(1);
                        self.metrics.stretch_milli.push(latency * 1000 / ideal);
                        if measured {
                            self.metrics
                                .measured_extra_us
                                .push(latency.saturating_sub(ideal));
                        }
                    }
                    // Before, the unreachable distance stood in for the ideal: a stretch
                    // of 0 and no extra delay, which pulled both figures down.
                    None => self.metrics.no_path_deliveries += 1,
                }
            }
            let r = self.plan.regions.len();
            let pair = (w * r + self.plan.nodes[origin].region) * r + self.plan.nodes[i].region;
            self.latency_by_pair[pair].push(latency);
        }
    }

    /// Shortest one-way latency between every pair of live regions (Floyd-Warshall over
    /// regions with a live node), one matrix per transit mask: transit only through live
    /// regions the mask allows (residency), so the ideal is the shortest *allowed* path.
    fn recompute_ideal(&mut self) {
        let r = self.plan.regions.len();
        let live_region: Vec<bool> = (0..r)
            .map(|reg| {
                self.plan.nodes.iter().enumerate().any(|(i, n)| {
                    n.region == reg && self.nodes.get(i).is_none_or(|s| s.node.is_some())
                })
            })
            .collect();
        let first_node = self.first_nodes();
        let mut d = vec![vec![UNREACHABLE_US; r]; r];
        for a in 0..r {
            for b in 0..r {
                if a == b {
                    d[a][b] = 0;
                } else if live_region[a] && live_region[b] {
                    // Partitions and degradations act on node pairs; scenarios select them
                    // by region, cloud or jurisdiction, so one pair of the two regions'
                    // first nodes stands for the link.
                    let (Some(x), Some(y)) = (first_node[a], first_node[b]) else {
                        continue;
                    };
                    if self.blocked.contains_key(&(x, y)) {
                        continue;
                    }
                    let factor = self.degraded.get(&(x, y)).map_or(1.0, |d| d.factor);
                    d[a][b] = (self.plan.one_way_us[a][b] as f64 * factor) as Micros;
                }
            }
        }
        let mut per_mask = Vec::with_capacity(self.transit_masks.len());
        for mask in &self.transit_masks {
            let mut d = d.clone();
            for k in 0..r {
                if !live_region[k] || !mask[k] {
                    continue;
                }
                for a in 0..r {
                    for b in 0..r {
                        let via = d[a][k] + d[k][b];
                        if via < d[a][b] {
                            d[a][b] = via;
                        }
                    }
                }
            }
            per_mask.push(d);
        }
        self.ideals.push(per_mask);
    }

    /// (event, subscriber) pairs expected so far, the origin itself excluded; nodes that are
    /// down count, so an outage shows as a dip in the delivered fraction.
    fn expected_so_far(&self) -> u64 {
        self.expected_pairs
    }

    /// Records the events a store lost in a crash held (`lose_memory`): copies gone.
    fn note_destroyed(&mut self, lost: &MemStore) {
        for origin in lost.origins() {
            let Some(ranges) = lost.ranges(&origin) else {
                continue;
            };
            for (lo, hi) in ranges.iter() {
                for seq in lo..=hi {
                    if let Ok(Some(event)) = lost.get(&origin, seq)
                        && let Some(&e) = self.event_index.get(&event.id())
                    {
                        self.destroyed.insert(e, EventRef::of(&event));
                    }
                }
            }
        }
    }

    /// Records the events a crashed node held in memory only (its relay cache: other
    /// origins' events of streams outside its interest), lost at any crash, its store kept or not:
    /// when no store holds such an event at the end, no copy is left that anything serves.
    fn note_cached_destroyed(&mut self, node: &Node<MemStore>) {
        for event in node.relay_cached() {
            if let Some(&e) = self.event_index.get(&event.id()) {
                self.destroyed.entry(e).or_insert(EventRef::of(event));
            }
        }
    }

    /// Whether event `e` is gone: a lost store or a crashed node's relay cache held it, and
    /// no store holds it now (a running node's, or that of a node down with its store
    /// kept). A relay cache serves nobody (a node stores its own events).
    fn gone(&self, e: usize) -> bool {
        self.destroyed.get(&e).is_some_and(|r| {
            !self.nodes.iter().any(|n| match (&n.node, &n.parked) {
                (Some(Proto::Weft(node)), _) => node.store().holds(r),
                (Some(Proto::Base(_)), _) => false,
                (None, Some(parked)) => parked.holds(r),
                (None, None) => false,
            })
        })
    }

    /// (event, live interested node) pairs not delivered at the end: (missed, destroyed,
    /// when the newest missed event was published), destroyed those of events
    /// [`Engine::gone`] (no copy left to deliver).
    fn missing_pairs(&self) -> (u64, u64, Option<Micros>) {
        let (mut missing, mut destroyed, mut newest) = (0, 0, None);
        let nodes = self.nodes.len();
        for (e, (published, origin, w)) in self.events.iter().enumerate() {
            let mut gone = None;
            for &s in &self.plan.workloads[*w].subscribers {
                if s != *origin
                    && self.nodes[s].node.is_some()
                    && !self.delivered_pairs[e * nodes + s]
                    && self.entitled(*w, s)
                {
                    if *gone.get_or_insert_with(|| self.gone(e)) {
                        destroyed += 1;
                    } else {
                        missing += 1;
                        newest = newest.max(Some(*published));
                    }
                }
            }
        }
        (missing, destroyed, newest)
    }

    /// Compares every table's replicas on live nodes that may hold it with each other and
    /// with the reference replay of every write (`tables::compare`).
    fn compare_tables(&mut self) {
        for (w, wl) in self.plan.workloads.iter().enumerate() {
            let Some(spec) = &wl.table else {
                continue;
            };
            let replicas = wl
                .subscribers
                .iter()
                .filter(|s| self.nodes[**s].node.is_some() && self.entitled(w, **s))
                .filter_map(|s| self.nodes[*s].tables[w].as_ref());
            let m = tables::compare(spec.strategy, &self.table_writes[w], replicas);
            self.metrics.tables.insert(w, m);
        }
    }

    fn finish(&mut self) {
        let r = self.plan.regions.len();
        for (at, latencies) in std::mem::take(&mut self.latency_by_pair)
            .into_iter()
            .enumerate()
        {
            if !latencies.is_empty() {
                let key = (at / (r * r), at / r % r, at % r);
                self.metrics.latency_by_pair.insert(key, latencies);
            }
        }
        let mut summary_share_min: f64 = 1.0;
        for n in &self.nodes {
            if let Some(Proto::Weft(node)) = &n.node {
                let s = node.stats();
                let r = &mut self.metrics.routing;
                r.failovers += s.failovers;
                r.failover_after_us_max = r.failover_after_us_max.max(s.failover_after_us_max);
                r.relayed += s.relayed;
                r.relays_sent_back += s.relays_sent_back;
                r.reroute_unreachable += s.reroute_unreachable;
                r.links_recovered += s.links_recovered;
                r.rtt_shifts_up += s.rtt_shifts_up;
                r.rtt_shifts_down += s.rtt_shifts_down;
                r.probes_sent += s.probes_sent;
                let a = &mut self.metrics.anti_entropy;
                a.requests += s.sync_requests_sent;
                a.summaries += s.sync_summaries_sent;
                if s.sync_requests_sent > 0 {
                    summary_share_min = summary_share_min
                        .min(s.sync_summaries_sent as f64 / s.sync_requests_sent as f64);
                }
                a.unsettled += s.sync_unsettled_out;
                a.events_sent += s.sync_events_sent;
                a.events_repaired += s.sync_events_new;
                a.events_held_back += s.sync_events_held_back;
                a.rounds_after_heal += s.sync_back_rounds;
                a.partners_passed_over += s.sync_partners_passed_over;
                self.metrics.residency.transit_forwarded += s.transit_forwarded;
                self.metrics.residency.refused_by_receivers += s.residency_refused;
                self.metrics.skips.add(node, true);
            }
        }
        self.metrics.anti_entropy.summary_share_min = summary_share_min;
        // Every store, live or parked: nothing a node may not hold.
        for i in 0..self.nodes.len() {
            // Taken out for the audit (which reads the engine) and put back.
            let node = self.nodes[i].node.take();
            let parked = self.nodes[i].parked.take();
            match (&node, &parked) {
                (Some(Proto::Weft(n)), _) => self.audit_store(i, n.store()),
                (None, Some(store)) => self.audit_store(i, store),
                _ => {}
            }
            self.nodes[i].node = node;
            self.nodes[i].parked = parked;
        }
        for ((kind, sent), bytes) in Message::KINDS
            .iter()
            .zip(self.sent_by_kind)
            .zip(self.bytes_by_kind)
        {
            if sent > 0 {
                self.metrics.messages_by_kind.insert(kind, sent);
                self.metrics.bytes_by_kind.insert(kind, bytes);
            }
        }
        self.metrics.ldh = self
            .last_hop
            .iter()
            .filter(|h| **h != HOPS_UNKNOWN)
            .map(|h| u64::from(*h))
            .collect();
        if std::env::var_os("WEFT_SIM_DEBUG").is_some() {
            for n in &self.nodes {
                if let Some(Proto::Weft(node)) = &n.node {
                    eprintln!(
                        "{}: members {} lazy {} stats {:?}",
                        n.info.addr,
                        node.members().count(),
                        node.lazy_peers().count(),
                        node.stats()
                    );
                }
            }
        }
        (
            self.metrics.missed,
            self.metrics.destroyed,
            self.metrics.missed_newest_publish_us,
        ) = self.missing_pairs();
        self.compare_tables();
        if self.metrics.missed == 0 {
            let reference = self
                .plan
                .workloads
                .iter()
                .map(|w| w.stop_us)
                .chain(self.plan.faults.iter().map(|f| f.until_us))
                .max()
                .unwrap_or(0);
            self.metrics.convergence_us =
                Some(self.metrics.last_delivery_us.saturating_sub(reference));
        }
        for n in &self.nodes {
            if let Some(node) = &n.node {
                node.check_invariants(true);
                self.metrics.first_receipts += node.events_new();
            }
        }
        // Each origin's own accept of its publish is not a receipt.
        self.metrics.first_receipts = self
            .metrics
            .first_receipts
            .saturating_sub(self.metrics.published);
    }
}

/// An event of workload `wl` as its producer drafts it: stamped with the class's
/// classification and residency when the run has a policy (as a node stamps a publish).
fn draft(
    wl: &PlanWorkload,
    seq: u64,
    hlc: Hlc,
    principal: &str,
    stamp: Option<&(String, Residency)>,
) -> EventDraft {
    let (classification, residency, policy_epoch) = match stamp {
        Some((c, r)) => (c.clone(), r.clone(), residency::SIM_POLICY_EPOCH),
        None => ("internal".to_string(), Residency::Unrestricted, 0),
    };
    EventDraft {
        stream: wl.stream.clone(),
        key: None,
        seq,
        hlc,
        security: SecurityContext {
            tenant: "sim".into(),
            principal: principal.to_string(),
            classification,
            residency,
            scopes: BTreeSet::new(),
            policy_epoch,
        },
        content_type: "application/octet-stream".into(),
        payload: Payload::Clear(vec![0u8; wl.payload_bytes]),
        trace: None,
    }
}

/// Compiles the run's policy over its nodes' keys and computes, per workload, what every
/// node may receive of its events (from one prototype event per workload, stamped and
/// sealed exactly as the workload's events are).
fn residency_state(
    plan: &Plan,
    spec: &PolicySpec,
    nodes: &[SimNode],
) -> Result<ResidencyState, String> {
    let regions: Vec<(&str, &str)> = plan
        .nodes
        .iter()
        .map(|n| {
            (
                plan.regions[n.region].as_str(),
                plan.region_jurisdictions
                    .get(n.region)
                    .map_or("", String::as_str),
            )
        })
        .collect();
    let granted: Vec<GrantedNode<'_>> = plan
        .nodes
        .iter()
        .zip(nodes)
        .map(|(p, n)| GrantedNode {
            jurisdiction: &p.jurisdiction,
            key: Some(n.info.key),
        })
        .collect();
    let policy = Arc::new(
        residency::compile(spec, &regions, &granted).map_err(|e| format!("policy refused: {e}"))?,
    );
    let mut key_rng = ChaCha8Rng::seed_from_u64(plan.seed ^ 0x5ea1_ed00_5ea1_ed00);
    let mut key = [0u8; 32];
    key_rng.fill_bytes(&mut key);
    let ring = KeyRing::new(
        KeyId::new("sim-producers-1").map_err(|e| e.to_string())?,
        key,
    );
    let prototype_signer = Signer::from_secret(&[0x5a; 32]);
    let mut stamps = Vec::with_capacity(plan.workloads.len());
    let mut hops = Vec::with_capacity(plan.workloads.len());
    let mut open = Vec::with_capacity(plan.workloads.len());
    for wl in &plan.workloads {
        let stamp = policy
            .stamp(
                &wl.stream,
                wl.classification.as_deref(),
                &Residency::Unrestricted,
            )
            .map_err(|reason| format!("stream {}: {reason}", wl.stream.as_str()))?;
        let stamp = (stamp.classification, stamp.residency);
        let d = draft(wl, 1, Hlc::from_u64(1 << 16), "prototype", Some(&stamp));
        let prototype = if wl.sealed {
            prototype_signer
                .seal_and_sign(d, &ring, &mut key_rng)
                .map_err(|e| e.to_string())?
        } else {
            prototype_signer.sign(d).map_err(|e| e.to_string())?
        };
        let scope = policy.event_scope(&prototype);
        let per_node: Vec<Hop> = nodes
            .iter()
            .map(|n| scope.hop(policy.placement(&n.info)).hop)
            .collect();
        open.push(per_node.iter().all(|h| *h == Hop::Clear));
        hops.push(per_node);
        stamps.push(stamp);
    }
    Ok(ResidencyState {
        policy,
        stamps,
        hops,
        open,
        ring,
        seal_rng: ChaCha8Rng::seed_from_u64(plan.seed ^ 0x5ea1_0000_0000_5ea1),
    })
}

/// A uniform float in [0, 1) from the RNG.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The baselines' peer lists: for flooding a random symmetric overlay where every node opens
/// `degree` links; for gossip the whole membership. Weft gets none (it finds its own).
fn build_overlay(
    nodes: &[SimNode],
    strategy: Strategy,
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<OriginKey>> {
    let keys: Vec<OriginKey> = nodes.iter().map(|n| OriginKey(n.info.key)).collect();
    let n = keys.len();
    match strategy {
        Strategy::Weft => vec![Vec::new(); n],
        Strategy::RandomGossip { .. } => keys
            .iter()
            .map(|me| keys.iter().copied().filter(|k| k != me).collect())
            .collect(),
        Strategy::Flooding { degree } => {
            let mut links: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
            for i in 0..n {
                let mut attempts = 0;
                while links[i].len() < degree.min(n.saturating_sub(1)) && attempts < 16 * degree {
                    attempts += 1;
                    let j = (rng.next_u64() % n as u64) as usize;
                    if j != i {
                        links[i].insert(j);
                        links[j].insert(i);
                    }
                }
            }
            links
                .into_iter()
                .map(|l| l.into_iter().map(|j| keys[j]).collect())
                .collect()
        }
    }
}
