//! Scenario files: the TOML format that describes one simulated run (topology, network,
//! workloads, faults, checks, baselines), parsed into validated types, and the
//! deterministic numbering of the run's nodes.
//!
//! [`Scenario::parse`] reads the text against a [`RegionCatalog`] and returns either a
//! [`Scenario`] whose every field has been checked, or the first problem found, as a
//! [`ScenarioError`] naming the field path (`fault[2].duration_s: must be > 0`). Unknown
//! keys are errors everywhere. `docs/sim.md` documents the format field by field; the
//! example `sim/scenarios/example.toml` is parsed by a test here.
//!
//! Times in the file are seconds or milliseconds (as the key's suffix says) and may be
//! fractional; the validated types hold integer microseconds (`_us`), the simulator's time
//! resolution, so the engine never accumulates floating-point time.
//!
//! **Nodes.** The topology numbers its nodes deterministically: first the region nodes,
//! regions in catalog (id) order, `ordinal` 0.. within each; then the edge nodes, sites in
//! name order. A region node is named `aws:us-east-1/0`, an edge node `factory-lyon/0`.
//! The order in which the file lists regions or sites does not change the numbering.
//! [`Topology::resolve`] turns a [`Selector`] into the sorted set of [`NodeIndex`]es.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};
use weft_fabric::limits::PAYLOAD_LEN_MAX;
use weft_fabric::{Jurisdiction, StreamName};

use crate::catalog::RegionCatalog;
use crate::residency::{self, GrantedNode, PolicySpec};
use crate::tables::{COUNTER_DELTA_ABS_MAX, SET_ELEMENTS_DOMAIN_MAX, TABLE_KEYS_MAX, TableSpec};
use crate::toml_text;

/// Longest scenario name, in bytes: it names report files and appears in report titles.
pub const NAME_LEN_MAX: usize = 64;
/// Most of the run a workload without `stop_s` leaves unpublished at its end (a tenth of the
/// run, up to this), so that its last events arrive before the checks.
pub const STOP_DRAIN_MAX_US: u64 = 30_000_000;

/// Longest scenario description, in bytes: a paragraph, not a document.
pub const DESCRIPTION_LEN_MAX: usize = 4096;

/// Longest simulated run, in seconds (one day). A scenario rehearses an incident, which
/// plays out in minutes to hours; the bound keeps the event count, and the run, finite.
pub const DURATION_S_MAX: f64 = 86_400.0;

/// Most nodes in one region. Real deployments run a handful per region; 1,000 leaves
/// room for scale tests while one region's fan-out stays bounded.
pub const NODES_PER_REGION_MAX: u32 = 1_000;

/// Most nodes at one edge site.
pub const NODES_PER_SITE_MAX: u32 = 1_000;

/// Most nodes in a scenario, region and edge nodes together. The engine keeps per-node
/// state and per-event delivery records; 10,000 nodes keep a run within memory and within
/// minutes at the simulator's target of a million deliveries per second.
pub const NODES_TOTAL_MAX: usize = 10_000;

/// Most edge sites in a scenario.
pub const EDGE_SITES_MAX: usize = 1_000;

/// Longest edge site name, in bytes.
pub const SITE_NAME_LEN_MAX: usize = 64;

/// Largest access RTT of an edge site, in ms. A geostationary satellite link is about
/// 600 ms; a congested cellular link can reach a second or two.
pub const ACCESS_RTT_MS_MAX: f64 = 2_000.0;

/// Largest network jitter, in ms: beyond a second the "jitter" is an outage, which a
/// fault models better.
pub const JITTER_MS_MAX: f64 = 1_000.0;

/// Largest modelled per-message verification cost, in microseconds. An Ed25519
/// verification costs tens of microseconds on a server core; 100 ms covers the slowest
/// device with room to spare.
pub const VERIFY_US_MAX: u64 = 100_000;

/// Most `[[workload]]` entries.
pub const WORKLOADS_MAX: usize = 64;

/// Largest fabric-wide rate of one workload, in events per simulated second.
pub const RATE_PER_S_MAX: f64 = 100_000.0;

/// Most devices one publisher of a workload publishes for (`devices`): each is an origin
/// of its own, tracked per node as the nodes track origins.
pub const DEVICES_PER_PUBLISHER_MAX: u32 = 1_000;

/// Most devices in a scenario (every publisher's, over every workload).
pub const DEVICES_TOTAL_MAX: u64 = 100_000;

/// Most events a scenario may publish in total (the sum over workloads of rate times
/// active time). Every event is tracked to every subscriber; ten million events times a
/// few subscribers is what memory and a run of minutes allow.
pub const EVENTS_TOTAL_MAX: f64 = 10_000_000.0;

/// Most `[[fault]]` entries: enough for a chaos schedule, small enough that the
/// pairwise overlap checks stay cheap.
pub const FAULTS_MAX: usize = 256;

/// Most `[[network.link]]` entries.
pub const NETWORK_LINKS_MAX: usize = 1_024;

/// Largest latency factor of a link degradation: 100x turns 100 ms into 10 s, well past
/// every timeout the fabric has.
pub const LATENCY_FACTOR_MAX: f64 = 100.0;

/// Largest clock skew, in ms, either way (one hour): far past the fabric's drift limit,
/// so skews that it must reject can be rehearsed, without overflowing anything.
pub const SKEW_MS_MAX: i64 = 3_600_000;

/// Most entries in one selector list.
pub const SELECTOR_LEN_MAX: usize = 1_024;

/// Largest fan-out of the random-gossip baseline.
pub const FANOUT_MAX: u32 = 64;

/// Why a scenario was refused. Parsing has no side effects; the first problem found is
/// reported, in file order.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    /// The text is not TOML, or a value has the wrong type, or a key is unknown or missing.
    #[error("{path}: {message}{}", at_line_column(*.position))]
    Toml {
        /// Dotted path of the key (`fault[2].kind`; `scenario` for the whole file).
        path: String,
        /// What the TOML reader said.
        message: String,
        /// 1-based line and column, when known.
        position: Option<(usize, usize)>,
    },
    /// A value breaks a rule of the format.
    #[error("{path}: {reason}")]
    Invalid {
        /// Dotted path of the field (`fault[2].duration_s`).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value or a count is over its named limit.
    #[error("{path}: {value} is over the limit {limit} = {max}")]
    OverLimit {
        /// Dotted path of the field.
        path: String,
        /// The value found, with its unit.
        value: String,
        /// Name of the limit constant.
        limit: &'static str,
        /// The limit.
        max: String,
    },
}

fn at_line_column(position: Option<(usize, usize)>) -> String {
    position.map_or_else(String::new, |(line, column)| {
        format!(" (line {line}, column {column})")
    })
}

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}

fn over_limit(
    path: impl Into<String>,
    value: impl fmt::Display,
    limit: &'static str,
    max: impl fmt::Display,
) -> ScenarioError {
    ScenarioError::OverLimit {
        path: path.into(),
        value: value.to_string(),
        limit,
        max: max.to_string(),
    }
}

/// Index of a node in [`Topology::nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIndex(pub u32);

impl NodeIndex {
    /// The index as a `usize`, for indexing slices.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One simulated node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Its index.
    pub index: NodeIndex,
    /// Its name: `aws:us-east-1/0` for a region node, `factory-lyon/0` for an edge node.
    pub name: String,
    /// Its region (for an edge node: the region its site attaches to).
    pub region: String,
    /// Its position within its region or edge site, from 0.
    pub ordinal: u32,
    /// The jurisdiction it sits in: the region's, or the edge site's.
    pub jurisdiction: Jurisdiction,
    /// For an edge node, its site; `None` for a region node.
    pub edge: Option<EdgePlacement>,
}

impl Node {
    /// The cloud of a region node (`aws`); `None` for an edge node, which is in no cloud.
    pub fn cloud(&self) -> Option<&str> {
        match self.edge {
            Some(_) => None,
            None => self.region.split_once(':').map(|(cloud, _)| cloud),
        }
    }

    /// Whether this is an edge node.
    pub fn is_edge(&self) -> bool {
        self.edge.is_some()
    }
}

/// Where an edge node sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgePlacement {
    /// The edge site's name.
    pub site: String,
    /// RTT between the site and its region, in microseconds.
    pub access_rtt_us: u64,
}

/// The nodes of one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionNodes {
    /// The region id.
    pub region: String,
    /// Index of its first node; its nodes are contiguous.
    pub first: NodeIndex,
    /// Number of nodes.
    pub nodes: u32,
}

/// An edge site: nodes outside the clouds, attached to a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSite {
    /// Its name (`factory-lyon`).
    pub name: String,
    /// The region it reaches the fabric through.
    pub region: String,
    /// RTT between the site and its region, in microseconds.
    pub access_rtt_us: u64,
    /// The jurisdiction the site is in (the region's unless the file says otherwise).
    pub jurisdiction: Jurisdiction,
    /// Index of its first node; its nodes are contiguous.
    pub first: NodeIndex,
    /// Number of nodes.
    pub nodes: u32,
}

/// The nodes of a scenario, numbered deterministically (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    nodes: Vec<Node>,
    regions: Vec<RegionNodes>,
    edge_sites: Vec<EdgeSite>,
    by_name: BTreeMap<String, NodeIndex>,
}

impl Topology {
    /// Every node, in index order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node at `index`.
    pub fn node(&self, index: NodeIndex) -> Option<&Node> {
        self.nodes.get(index.as_usize())
    }

    /// The index of the node named `name` (`aws:us-east-1/0`).
    pub fn node_index(&self, name: &str) -> Option<NodeIndex> {
        self.by_name.get(name).copied()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes (never true for a validated scenario).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The regions with nodes, in id order.
    pub fn regions(&self) -> &[RegionNodes] {
        &self.regions
    }

    /// The edge sites, in name order.
    pub fn edge_sites(&self) -> &[EdgeSite] {
        &self.edge_sites
    }

    /// The nodes `selector` picks, sorted by index, without duplicates.
    pub fn resolve(&self, selector: &Selector) -> Vec<NodeIndex> {
        self.nodes
            .iter()
            .filter(|node| selector.matches(node))
            .map(|node| node.index)
            .collect()
    }

    /// The nodes `side` picks, where [`OtherSide::Rest`] means every node not in `a`;
    /// sorted by index.
    pub fn resolve_other(&self, side: &OtherSide, a: &[NodeIndex]) -> Vec<NodeIndex> {
        match side {
            OtherSide::Selected(selector) => self.resolve(selector),
            OtherSide::Rest => self.complement(a),
        }
    }

    /// Every node not in `nodes` (which must be sorted), sorted by index.
    pub fn complement(&self, nodes: &[NodeIndex]) -> Vec<NodeIndex> {
        self.nodes
            .iter()
            .map(|node| node.index)
            .filter(|index| nodes.binary_search(index).is_err())
            .collect()
    }
}

/// A set of nodes, named by what they have in common. In a file: `"all"`, or a table with
/// exactly one of the keys `clouds`, `regions`, `jurisdictions`, `edge_sites`, `nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every node, region and edge.
    All,
    /// The region nodes of these clouds (edge nodes are in no cloud).
    Clouds(BTreeSet<String>),
    /// The region nodes of these regions (not the edge sites attached to them).
    Regions(BTreeSet<String>),
    /// Every node, region or edge, in one of these jurisdictions.
    Jurisdictions(BTreeSet<Jurisdiction>),
    /// The nodes of these edge sites.
    EdgeSites(BTreeSet<String>),
    /// These nodes, by name.
    Nodes(BTreeSet<String>),
}

impl Selector {
    /// Whether `node` is in the set.
    pub fn matches(&self, node: &Node) -> bool {
        match self {
            Selector::All => true,
            Selector::Clouds(clouds) => node.cloud().is_some_and(|c| clouds.contains(c)),
            Selector::Regions(regions) => !node.is_edge() && regions.contains(&node.region),
            Selector::Jurisdictions(set) => set.contains(&node.jurisdiction),
            Selector::EdgeSites(sites) => {
                node.edge.as_ref().is_some_and(|e| sites.contains(&e.site))
            }
            Selector::Nodes(names) => names.contains(&node.name),
        }
    }
}

impl fmt::Display for Selector {
    /// The selector as it would be written in a file (`{ clouds = ["aws", "gcp"] }`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<'a>(
            f: &mut fmt::Formatter<'_>,
            key: &str,
            items: impl Iterator<Item = &'a str>,
        ) -> fmt::Result {
            let quoted: Vec<String> = items.map(|i| format!("{i:?}")).collect();
            write!(f, "{{ {key} = [{}] }}", quoted.join(", "))
        }
        match self {
            Selector::All => f.write_str("\"all\""),
            Selector::Clouds(s) => list(f, "clouds", s.iter().map(String::as_str)),
            Selector::Regions(s) => list(f, "regions", s.iter().map(String::as_str)),
            Selector::Jurisdictions(s) => list(f, "jurisdictions", s.iter().map(|j| j.as_str())),
            Selector::EdgeSites(s) => list(f, "edge_sites", s.iter().map(String::as_str)),
            Selector::Nodes(s) => list(f, "nodes", s.iter().map(String::as_str)),
        }
    }
}

/// The `b` side of a partition or link degradation: a selector, or every node not in `a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtherSide {
    /// `"rest"`: every node not in `a`.
    Rest,
    /// The nodes this selector picks (never overlapping `a`).
    Selected(Selector),
}

impl fmt::Display for OtherSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OtherSide::Rest => f.write_str("\"rest\""),
            OtherSide::Selected(selector) => selector.fmt(f),
        }
    }
}

/// `[network]`: how every message behaves before faults.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// Largest extra one-way delay of a message, in microseconds; each message adds a
    /// delay drawn uniformly from `0..=jitter_us` to half the base RTT.
    pub jitter_us: u64,
    /// Probability that a message is lost, `0 <= loss < 1`, independently per message.
    pub loss: f64,
    /// Modelled cost of verifying one received event's signature, in microseconds of the
    /// receiving node's time.
    pub verify_us: u64,
    /// Whether publishers compute their events' Ed25519 signatures.
    pub signing: Signing,
    /// Per region pair, jitter and loss instead of the values above (`[[network.link]]`).
    pub links: Vec<LinkNetwork>,
}

/// One `[[network.link]]`: the jitter and loss of messages between two regions' nodes (both
/// ways), instead of the scenario-wide `[network]` values.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkNetwork {
    /// One region.
    pub a: String,
    /// The other region.
    pub b: String,
    /// Largest extra one-way delay, microseconds.
    pub jitter_us: u64,
    /// Probability that a message is lost.
    pub loss: f64,
}

/// `network.signing`: how publishers sign. Verification is always modelled (nodes in the
/// simulator trust what they receive and pay `verify_us` for it), so a signature is never
/// read; computing it changes no event id and no result, only the run's speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signing {
    /// Events are encoded and get their ids as when signed; the signature is not computed
    /// (`"modelled"`, the default).
    #[default]
    Modelled,
    /// Every event is really signed with its publisher's Ed25519 key (`"executed"`).
    Executed,
}

impl Signing {
    /// Every mode, in the order errors list them.
    pub const ALL: [Signing; 2] = [Signing::Modelled, Signing::Executed];

    /// The name scenario files and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Signing::Modelled => "modelled",
            Signing::Executed => "executed",
        }
    }
}

/// One `[[workload]]`: events published on one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The stream the events are published on.
    pub stream: StreamName,
    /// Events per simulated second, fabric-wide (spread over the publishers).
    pub rate_per_s: f64,
    /// Payload size of each event, in bytes.
    pub payload_bytes: u32,
    /// Which nodes publish, as written.
    pub publishers: Selector,
    /// The publishing nodes, sorted.
    pub publisher_nodes: Vec<NodeIndex>,
    /// Which nodes subscribe to the stream, as written.
    pub subscribers: Selector,
    /// The subscribing nodes, sorted.
    pub subscriber_nodes: Vec<NodeIndex>,
    /// When publishing starts, in microseconds of simulated time.
    pub start_us: u64,
    /// When publishing stops (exclusive), in microseconds; `start_us < stop_us`.
    pub stop_us: u64,
    /// The events' classification (a class of the scenario's `[policy]`; required with
    /// one, refused without): stamped with the class's residency as a node stamps it.
    pub classification: Option<String>,
    /// Whether the producer seals the payload (sealed transit applies only to sealed
    /// payloads).
    pub sealed: bool,
    /// A table workload (`[workload.table]`): keyed writes of one conflict strategy,
    /// applied by every subscriber to its replica.
    pub table: Option<TableSpec>,
    /// Devices per publisher (`devices`, 0: none): each publisher publishes its events on
    /// behalf of that many devices in turn, each event signed by the device's own key (an
    /// origin of its own), as `weft-agent` does through the node it connects to. A node's
    /// devices are shared by its workloads that name devices (device `k` of a node is one
    /// origin in all of them). Such a workload's publishers must be among its subscribers,
    /// as a node stores the streams devices publish through it.
    pub devices: u32,
}

/// One `[[fault]]`: what goes wrong, from `at_us` until it heals at `at_us + duration_us`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// When it starts, in microseconds of simulated time.
    pub at_us: u64,
    /// How long it lasts, in microseconds (> 0); it heals within the run.
    pub duration_us: u64,
    /// What it is.
    pub kind: FaultKind,
    /// `measure` (partitions and link degradations): events published while the fault is
    /// active count in latency and stretch, against the ideal *under* the fault (the
    /// fastest path that is left), instead of being set apart as fault-window deliveries.
    /// This is how a scenario checks that routing finds the new best path.
    pub measure: bool,
}

impl Fault {
    /// When the fault heals, in microseconds (at most the scenario's duration).
    pub fn heal_us(&self) -> u64 {
        self.at_us + self.duration_us
    }
}

/// The kinds of fault.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// `region-outage`: every node of the region stops (sends, receives and publishes
    /// nothing) and resumes with its state at heal. Edge sites attached to the region keep
    /// running but, reaching the fabric through it, are cut off.
    RegionOutage {
        /// The region.
        region: String,
        /// Its nodes, sorted.
        nodes: Vec<NodeIndex>,
    },
    /// `partition`: messages between the two sides are dropped (only those from `a` to
    /// `b` when not symmetric).
    Partition {
        /// One side, as written.
        a: Selector,
        /// The other side, as written.
        b: OtherSide,
        /// The nodes of `a`, sorted.
        a_nodes: Vec<NodeIndex>,
        /// The nodes of `b`, sorted, disjoint from `a_nodes`.
        b_nodes: Vec<NodeIndex>,
        /// Whether both directions are cut (default true).
        symmetric: bool,
    },
    /// `link-degradation`: messages between the two sides, both ways, take
    /// `latency_factor` times their base latency and are lost with the extra probability
    /// `loss`. Overlapping degradations of one link compose: factors multiply, losses
    /// combine as independent.
    LinkDegradation {
        /// One side, as written.
        a: Selector,
        /// The other side, as written.
        b: OtherSide,
        /// The nodes of `a`, sorted.
        a_nodes: Vec<NodeIndex>,
        /// The nodes of `b`, sorted, disjoint from `a_nodes`.
        b_nodes: Vec<NodeIndex>,
        /// Multiplier of the base one-way latency, `1 ..= LATENCY_FACTOR_MAX`.
        latency_factor: f64,
        /// Extra loss probability on these links, `0 <= loss < 1`.
        loss: f64,
    },
    /// `node-crash`: the nodes stop and restart at heal.
    NodeCrash {
        /// Which nodes, as written.
        selector: Selector,
        /// The nodes, sorted.
        nodes: Vec<NodeIndex>,
        /// Whether they restart without their volatile state (true: a crash and restart,
        /// keeping only what their store made durable) or with it (false: a freeze, like a
        /// paused VM).
        lose_memory: bool,
    },
    /// `clock-skew`: the nodes' clocks read `skew_ms` off true time until heal.
    ClockSkew {
        /// Which nodes, as written.
        selector: Selector,
        /// The nodes, sorted.
        nodes: Vec<NodeIndex>,
        /// The offset, in ms, positive ahead, negative behind; never 0.
        skew_ms: i64,
    },
}

impl FaultKind {
    /// The kind as written in a file (`region-outage`).
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::RegionOutage { .. } => "region-outage",
            FaultKind::Partition { .. } => "partition",
            FaultKind::LinkDegradation { .. } => "link-degradation",
            FaultKind::NodeCrash { .. } => "node-crash",
            FaultKind::ClockSkew { .. } => "clock-skew",
        }
    }

    /// The nodes this fault stops (region outage, node crash); empty for other kinds.
    pub fn stopped_nodes(&self) -> &[NodeIndex] {
        match self {
            FaultKind::RegionOutage { nodes, .. } | FaultKind::NodeCrash { nodes, .. } => nodes,
            _ => &[],
        }
    }
}

/// `[checks]`: targets the run must meet; each is optional.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Checks {
    /// Every subscriber has every event it should within this many microseconds after the
    /// later of the last fault's heal and the last workload's stop.
    pub converge_within_us: Option<u64>,
    /// Largest allowed p99 stretch: delivery latency over the ideal (the shortest allowed
    /// path over the RTT matrix); at least 1.
    pub stretch_p99_max: Option<f64>,
    /// Largest allowed relative message redundancy (RMR): messages sent per delivery,
    /// minus one.
    pub rmr_max: Option<f64>,
    /// For scenarios with `measure` faults: every delivery of an event published during
    /// them arrives at most this many RTTs (of the faulted link) later than the ideal
    /// under the fault: how fast traffic moves to the next path.
    pub reroute_within_rtt: Option<f64>,
}

/// A dissemination strategy run beside Weft's, for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Baseline {
    /// Every node forwards every new event to every node it knows.
    Flooding,
    /// Every node forwards every new event to `fanout` nodes chosen at random.
    RandomGossip {
        /// Nodes per forward, `1 ..= FANOUT_MAX`, below the node count.
        fanout: u32,
    },
}

/// A validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Its name (`[A-Za-z0-9_.-]+`).
    pub name: String,
    /// What it rehearses, for people.
    pub description: String,
    /// Simulated time the run covers, in microseconds (> 0).
    pub duration_us: u64,
    /// The default seed; the runner may override it.
    pub seed: Option<u64>,
    /// The nodes.
    pub topology: Topology,
    /// Message behaviour before faults.
    pub network: Network,
    /// The workloads (at least one), in file order.
    pub workloads: Vec<Workload>,
    /// The faults, in file order.
    pub faults: Vec<Fault>,
    /// The targets.
    pub checks: Checks,
    /// Baselines to run beside Weft, sorted.
    pub baselines: Vec<Baseline>,
    /// Residency classes every node enforces (and the simulator checks on every send).
    pub policy: Option<PolicySpec>,
}

/// Checks `{path}.nodes`: at least one (leave the `what` out instead), at most `max`.
fn node_count(
    path: &str,
    nodes: u32,
    what: &str,
    limit: &'static str,
    max: u32,
) -> Result<(), ScenarioError> {
    if nodes == 0 {
        return Err(invalid(
            format!("{path}.nodes"),
            format!("must be at least 1 (leave the {what} out instead)"),
        ));
    }
    if nodes > max {
        return Err(over_limit(format!("{path}.nodes"), nodes, limit, max));
    }
    Ok(())
}

impl Scenario {
    /// Parses and validates a scenario file against `catalog`.
    pub fn parse(text: &str, catalog: &RegionCatalog) -> Result<Self, ScenarioError> {
        let file: ScenarioFile =
            toml_text::from_toml(text).map_err(|failure| ScenarioError::Toml {
                path: if failure.path.is_empty() {
                    "scenario".to_owned()
                } else {
                    failure.path
                },
                message: failure.message,
                position: failure.position,
            })?;
        validate(file, catalog)
    }
}

// ---------------------------------------------------------------------------------------
// The file as serde reads it.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    description: String,
    duration_s: f64,
    seed: Option<u64>,
    topology: TopologyFile,
    #[serde(default)]
    network: NetworkFile,
    #[serde(default)]
    workload: Vec<WorkloadFile>,
    #[serde(default)]
    fault: Vec<FaultFile>,
    #[serde(default)]
    checks: ChecksFile,
    #[serde(default)]
    baselines: BaselinesFile,
    policy: Option<PolicyFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    classes: BTreeMap<String, weft_policy::ClassSpec>,
    #[serde(default)]
    streams: Vec<StreamScopeFile>,
}

/// `[[policy.streams]]`: a stream rule keeping the streams `pattern` matches to `regions`
/// (a bundle's `replication = "regions"` rule, docs/policy.md §6.3).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamScopeFile {
    pattern: String,
    classification: String,
    regions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    regions: Vec<RegionNodesFile>,
    #[serde(default)]
    edge_sites: Vec<EdgeSiteFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionNodesFile {
    region: String,
    nodes: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeSiteFile {
    name: String,
    region: String,
    access_rtt_ms: f64,
    nodes: u32,
    jurisdiction: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct NetworkFile {
    jitter_ms: f64,
    loss: f64,
    verify_us: u64,
    signing: Option<String>,
    link: Vec<LinkFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkFile {
    a: String,
    b: String,
    jitter_ms: Option<f64>,
    loss: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadFile {
    stream: String,
    rate_per_s: f64,
    payload_bytes: u64,
    #[serde(default)]
    publishers: Option<SelectorFile>,
    #[serde(default)]
    subscribers: Option<SelectorFile>,
    start_s: Option<f64>,
    stop_s: Option<f64>,
    classification: Option<String>,
    #[serde(default)]
    sealed: bool,
    table: Option<TableFile>,
    #[serde(default)]
    devices: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    strategy: weft_fabric::table::Strategy,
    keys: u32,
    #[serde(default)]
    delete: f64,
    blind: Option<f64>,
    delta_min: Option<i64>,
    delta_max: Option<i64>,
    elements: Option<u32>,
    remove: Option<f64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum FaultKindFile {
    RegionOutage,
    Partition,
    LinkDegradation,
    NodeCrash,
    ClockSkew,
}

impl FaultKindFile {
    fn name(self) -> &'static str {
        match self {
            FaultKindFile::RegionOutage => "region-outage",
            FaultKindFile::Partition => "partition",
            FaultKindFile::LinkDegradation => "link-degradation",
            FaultKindFile::NodeCrash => "node-crash",
            FaultKindFile::ClockSkew => "clock-skew",
        }
    }

    /// The kind-specific fields: (required, optional).
    fn fields(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            FaultKindFile::RegionOutage => (&["region"], &[]),
            FaultKindFile::Partition => (&["a", "b"], &["symmetric", "measure"]),
            FaultKindFile::LinkDegradation => (&["a", "b"], &["latency_factor", "loss", "measure"]),
            FaultKindFile::NodeCrash => (&["nodes"], &["lose_memory"]),
            FaultKindFile::ClockSkew => (&["nodes", "skew_ms"], &[]),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    kind: FaultKindFile,
    at_s: f64,
    duration_s: f64,
    region: Option<String>,
    a: Option<SelectorFile>,
    b: Option<SelectorFile>,
    symmetric: Option<bool>,
    latency_factor: Option<f64>,
    loss: Option<f64>,
    nodes: Option<SelectorFile>,
    lose_memory: Option<bool>,
    skew_ms: Option<i64>,
    measure: Option<bool>,
}

impl FaultFile {
    /// The kind-specific fields present in the file, in declaration order.
    fn present(&self) -> Vec<&'static str> {
        let flags = [
            ("region", self.region.is_some()),
            ("a", self.a.is_some()),
            ("b", self.b.is_some()),
            ("symmetric", self.symmetric.is_some()),
            ("latency_factor", self.latency_factor.is_some()),
            ("loss", self.loss.is_some()),
            ("nodes", self.nodes.is_some()),
            ("lose_memory", self.lose_memory.is_some()),
            ("skew_ms", self.skew_ms.is_some()),
            ("measure", self.measure.is_some()),
        ];
        flags.iter().filter(|(_, p)| *p).map(|(n, _)| *n).collect()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ChecksFile {
    converge_within_s: Option<f64>,
    stretch_p99_max: Option<f64>,
    rmr_max: Option<f64>,
    reroute_within_rtt: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct BaselinesFile {
    flooding: bool,
    #[serde(rename = "random-gossip")]
    random_gossip: Option<RandomGossipFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RandomGossipFile {
    fanout: u32,
}

/// A selector as written: a keyword (`"all"`, `"rest"`) or a one-key table.
enum SelectorFile {
    Keyword(String),
    Table(SelectorTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectorTable {
    clouds: Option<Vec<String>>,
    regions: Option<Vec<String>>,
    jurisdictions: Option<Vec<String>>,
    edge_sites: Option<Vec<String>>,
    nodes: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for SelectorFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SelectorVisitor;
        impl<'de> Visitor<'de> for SelectorVisitor {
            type Value = SelectorFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "\"all\", \"rest\", or a table with one of the keys clouds, regions, \
                     jurisdictions, edge_sites, nodes",
                )
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<SelectorFile, E> {
                Ok(SelectorFile::Keyword(value.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SelectorFile, A::Error> {
                SelectorTable::deserialize(MapAccessDeserializer::new(map)).map(SelectorFile::Table)
            }
        }
        deserializer.deserialize_any(SelectorVisitor)
    }
}

// ---------------------------------------------------------------------------------------
// Validation.

/// The sign rule of a time value.
#[derive(Clone, Copy)]
enum Sign {
    /// `> 0`.
    Positive,
    /// `>= 0`.
    NonNegative,
}

/// Checks a time value written in `unit` (`"s"` or `"ms"`) against its sign rule and `max`
/// (in the same unit, named `limit`), and converts it to integer microseconds.
fn time_us(
    path: &str,
    value: f64,
    sign: Sign,
    unit: &str,
    max: f64,
    limit: &'static str,
) -> Result<u64, ScenarioError> {
    if !value.is_finite() {
        return Err(invalid(path, "must be a finite number"));
    }
    match sign {
        Sign::Positive if value <= 0.0 => return Err(invalid(path, "must be > 0")),
        Sign::NonNegative if value < 0.0 => return Err(invalid(path, "must be >= 0")),
        _ => {}
    }
    if value > max {
        return Err(over_limit(
            path,
            format!("{value} {unit}"),
            limit,
            format!("{max} {unit}"),
        ));
    }
    let per_s = if unit == "ms" { 1_000.0 } else { 1_000_000.0 };
    // Bounded by `max` above (at most a day in µs), so the cast cannot saturate.
    let us = (value * per_s).round() as u64;
    if matches!(sign, Sign::Positive) && us == 0 {
        return Err(invalid(path, "is below the simulator's resolution of 1 µs"));
    }
    Ok(us)
}

fn seconds_us(path: &str, value: f64, sign: Sign) -> Result<u64, ScenarioError> {
    time_us(path, value, sign, "s", DURATION_S_MAX, "DURATION_S_MAX")
}

/// Microseconds as seconds, for messages (`90 s`, `12.5 s`).
fn show_s(us: u64) -> String {
    format!("{} s", us as f64 / 1e6)
}

fn probability(path: &str, value: f64) -> Result<f64, ScenarioError> {
    if !(value.is_finite() && (0.0..1.0).contains(&value)) {
        return Err(invalid(
            path,
            format!(
                "is {value}, must be >= 0 and < 1 (a probability; losing every message is a \
                 partition)"
            ),
        ));
    }
    Ok(value)
}

fn validate(file: ScenarioFile, catalog: &RegionCatalog) -> Result<Scenario, ScenarioError> {
    check_name("name", &file.name)?;
    if file.description.len() > DESCRIPTION_LEN_MAX {
        return Err(over_limit(
            "description",
            format!("{} bytes", file.description.len()),
            "DESCRIPTION_LEN_MAX",
            DESCRIPTION_LEN_MAX,
        ));
    }
    let duration_us = seconds_us("duration_s", file.duration_s, Sign::Positive)?;
    let topology = topology(&file.topology, catalog)?;
    let network = network(&file.network, &topology)?;

    if file.workload.is_empty() {
        return Err(invalid(
            "workload",
            "at least one [[workload]] is required: a run without events measures nothing",
        ));
    }
    if file.workload.len() > WORKLOADS_MAX {
        return Err(over_limit(
            "workload",
            format!("{} entries", file.workload.len()),
            "WORKLOADS_MAX",
            WORKLOADS_MAX,
        ));
    }
    let workloads = file
        .workload
        .iter()
        .enumerate()
        .map(|(i, w)| {
            workload(
                &format!("workload[{i}]"),
                w,
                duration_us,
                &topology,
                catalog,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let events_total: f64 = workloads
        .iter()
        .map(|w| w.rate_per_s * (w.stop_us - w.start_us) as f64 / 1e6)
        .sum();
    if events_total > EVENTS_TOTAL_MAX {
        return Err(over_limit(
            "workload",
            format!("{events_total:.0} events in total (rate_per_s x active time, summed)"),
            "EVENTS_TOTAL_MAX",
            EVENTS_TOTAL_MAX,
        ));
    }
    // A node stores what devices publish through it: each publisher of a device workload
    // subscribes to its stream (in that workload or another: a node's interest is every
    // stream it subscribes to).
    for (i, w) in workloads.iter().enumerate() {
        if w.devices == 0 {
            continue;
        }
        let subscribes = |p: &NodeIndex| {
            workloads
                .iter()
                .any(|o| o.stream == w.stream && o.subscriber_nodes.binary_search(p).is_ok())
        };
        if let Some(p) = w.publisher_nodes.iter().find(|p| !subscribes(p)) {
            let name = topology.node(*p).map_or("?", |n| n.name.as_str());
            return Err(invalid(
                format!("workload[{i}].publishers"),
                format!(
                    "node {name} publishes for devices to a stream it does not subscribe to: a \
                     node stores what devices publish through it (`weft node` refuses an edge \
                     publish to a stream it does not store, and a relay cache answers nobody)"
                ),
            ));
        }
    }
    // A node's devices are shared by its workloads: it has as many as the most any of them
    // names.
    let mut devices_of: BTreeMap<NodeIndex, u32> = BTreeMap::new();
    for w in &workloads {
        for p in &w.publisher_nodes {
            let d = devices_of.entry(*p).or_default();
            *d = (*d).max(w.devices);
        }
    }
    let devices_total: u64 = devices_of.values().map(|d| u64::from(*d)).sum();
    if devices_total > DEVICES_TOTAL_MAX {
        return Err(over_limit(
            "workload",
            format!("{devices_total} devices in total (devices x publishers, per node the most)"),
            "DEVICES_TOTAL_MAX",
            DEVICES_TOTAL_MAX,
        ));
    }

    if file.fault.len() > FAULTS_MAX {
        return Err(over_limit(
            "fault",
            format!("{} entries", file.fault.len()),
            "FAULTS_MAX",
            FAULTS_MAX,
        ));
    }
    let faults = file
        .fault
        .iter()
        .enumerate()
        .map(|(i, f)| fault(&format!("fault[{i}]"), f, duration_us, &topology, catalog))
        .collect::<Result<Vec<_>, _>>()?;
    check_fault_overlaps(&faults, &topology)?;

    let checks = checks(&file.checks, duration_us, &workloads, &faults)?;
    let baselines = baselines(&file.baselines, topology.len())?;
    let policy = policy(file.policy.as_ref(), &topology, &workloads, catalog)?;

    Ok(Scenario {
        name: file.name,
        description: file.description,
        duration_us,
        seed: file.seed,
        topology,
        network,
        workloads,
        faults,
        checks,
        baselines,
        policy,
    })
}

/// Validates `[policy]` and the workloads' classifications: the classes compile (as a
/// bundle over the run's regions and jurisdictions, `residency.rs`), every workload names a
/// class, and every publisher may hold its workload's events (a publisher stores what it
/// publishes).
fn policy(
    file: Option<&PolicyFile>,
    topology: &Topology,
    workloads: &[Workload],
    catalog: &RegionCatalog,
) -> Result<Option<PolicySpec>, ScenarioError> {
    let Some(file) = file else {
        for (i, w) in workloads.iter().enumerate() {
            if w.classification.is_some() || w.sealed {
                return Err(invalid(
                    format!("workload[{i}].classification"),
                    "classifications and sealed payloads need a [policy] section",
                ));
            }
        }
        return Ok(None);
    };
    if file.classes.is_empty() {
        return Err(invalid(
            "policy.classes",
            "name at least one residency class",
        ));
    }
    if topology.len() > weft_policy::limits::NODES_MAX {
        return Err(over_limit(
            "topology",
            format!("{} nodes with a [policy]", topology.len()),
            "weft_policy::limits::NODES_MAX",
            weft_policy::limits::NODES_MAX,
        ));
    }
    let spec = PolicySpec {
        classes: file.classes.clone(),
        streams: file
            .streams
            .iter()
            .map(|s| weft_policy::StreamRule {
                pattern: s.pattern.clone(),
                classification: s.classification.clone(),
                replication: weft_policy::ReplicationScope::Regions,
                regions: s.regions.clone(),
                retention_s: None,
                retention_bytes: None,
                conflict: None,
                priority: weft_policy::Priority::Normal,
            })
            .collect(),
    };
    let region_jurisdiction = |region: &str| {
        catalog
            .region(region)
            .map_or("", |r| r.jurisdiction.as_str())
    };
    let regions: Vec<(&str, &str)> = topology
        .regions()
        .iter()
        .map(|r| (r.region.as_str(), region_jurisdiction(&r.region)))
        .collect();
    let nodes: Vec<GrantedNode<'_>> = topology
        .nodes()
        .iter()
        .map(|n| GrantedNode {
            jurisdiction: n.jurisdiction.as_str(),
            key: None,
        })
        .collect();
    let compiled = residency::compile(&spec, &regions, &nodes)
        .map_err(|e| invalid("policy", e.to_string()))?;
    // A class may name a jurisdiction this topology has no node in (a bundle written for a
    // larger fabric), but not one that neither the catalog nor any node knows: that is
    // most likely a typo, and the class would silently hold its events in fewer places.
    for (name, class) in &spec.classes {
        for (k, j) in class.jurisdictions.iter().enumerate() {
            let known = catalog
                .jurisdictions()
                .iter()
                .any(|c| c.as_str() == j.as_str())
                || topology
                    .nodes()
                    .iter()
                    .any(|n| n.jurisdiction.as_str() == j.as_str());
            if !known {
                let codes: Vec<&str> = catalog.jurisdictions().iter().map(|c| c.as_str()).collect();
                return Err(invalid(
                    format!("policy.classes.{name}.jurisdictions[{k}]"),
                    format!(
                        "{j:?} is neither a jurisdiction of the region catalog ({}) nor one \
                         a node of the topology claims",
                        codes.join(", ")
                    ),
                ));
            }
        }
    }
    for (i, w) in workloads.iter().enumerate() {
        let path = format!("workload[{i}].classification");
        let Some(c) = &w.classification else {
            return Err(invalid(path, "required with a [policy] section"));
        };
        let Some(class) = spec.classes.get(c) else {
            return Err(invalid(
                path,
                format!("{c:?} is not a class of [policy.classes]"),
            ));
        };
        for n in &w.publisher_nodes {
            let Some(node) = topology.node(*n) else {
                continue;
            };
            // A node's claim holds when its region lies in its jurisdiction.
            let placed = (region_jurisdiction(&node.region) == node.jurisdiction.as_str())
                .then_some(node.jurisdiction.as_str());
            let holds = class.anywhere
                || placed.is_some_and(|j| class.jurisdictions.iter().any(|c| c == j));
            if !holds {
                return Err(invalid(
                    format!("workload[{i}].publishers"),
                    format!(
                        "node {} (jurisdiction {}) may not hold events of class {c:?}, \
                         which stay in {:?}: a publisher stores what it publishes",
                        node.name,
                        node.jurisdiction.as_str(),
                        class.jurisdictions
                    ),
                ));
            }
            // The stream's rule: its class narrows the workload's when it is another
            // restricted one (as the engine's `Policy::event_scope` does), and a
            // `replication = "regions"` scope keeps the stream to its regions; a region is
            // taken only when the node's claim holds.
            if let Some(rule) = compiled.stream_rule(&w.stream) {
                let rule_class = spec
                    .classes
                    .get(&rule.classification)
                    .filter(|rc| rule.classification != *c && !rc.anywhere);
                if let Some(rc) = rule_class
                    && !placed.is_some_and(|j| rc.jurisdictions.iter().any(|x| x == j))
                {
                    return Err(invalid(
                        format!("workload[{i}].publishers"),
                        format!(
                            "node {} (jurisdiction {}) may not hold events on {}, whose stream \
                             rule policy.streams[{}] names class {:?}, which stays in {:?}: a \
                             publisher stores what it publishes",
                            node.name,
                            node.jurisdiction.as_str(),
                            w.stream.as_str(),
                            rule.index,
                            rule.classification,
                            rc.jurisdictions
                        ),
                    ));
                }
                if rule.replication == weft_policy::ReplicationScope::Regions
                    && (placed.is_none() || !rule.regions.contains(node.region.as_str()))
                {
                    return Err(invalid(
                        format!("workload[{i}].publishers"),
                        format!(
                            "node {} (region {}) may not hold events on {}, which \
                             policy.streams[{}] keeps to {}: a publisher stores what it publishes",
                            node.name,
                            node.region.as_str(),
                            w.stream.as_str(),
                            rule.index,
                            rule.regions.iter().cloned().collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
        }
    }
    Ok(Some(spec))
}

fn check_name(path: &str, name: &str) -> Result<(), ScenarioError> {
    if name.is_empty() {
        return Err(invalid(path, "is empty"));
    }
    if name.len() > NAME_LEN_MAX {
        return Err(over_limit(
            path,
            format!("{} bytes", name.len()),
            "NAME_LEN_MAX",
            NAME_LEN_MAX,
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(invalid(
            path,
            format!("has {c:?}; names allow only A-Z a-z 0-9 _ . -"),
        ));
    }
    Ok(())
}

fn check_site_name(path: &str, name: &str) -> Result<(), ScenarioError> {
    if name.len() > SITE_NAME_LEN_MAX {
        return Err(over_limit(
            path,
            format!("{} bytes", name.len()),
            "SITE_NAME_LEN_MAX",
            SITE_NAME_LEN_MAX,
        ));
    }
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("{name:?} is not a site name: [a-z0-9][a-z0-9-]* (e.g. factory-lyon)"),
        ))
    }
}

fn jurisdiction(path: &str, code: &str) -> Result<Jurisdiction, ScenarioError> {
    Jurisdiction::new(code).map_err(|_| {
        invalid(
            path,
            format!(
                "{code:?} is not a jurisdiction code: [A-Z][A-Z0-9-]+, at most \
                 JURISDICTION_LEN_MAX = {} bytes",
                weft_fabric::limits::JURISDICTION_LEN_MAX
            ),
        )
    })
}

fn known_region<'c>(
    path: &str,
    id: &str,
    catalog: &'c RegionCatalog,
) -> Result<&'c crate::catalog::Region, ScenarioError> {
    catalog.region(id).ok_or_else(|| {
        invalid(
            path,
            format!(
                "unknown region {id:?}: not in the region catalog (ids look like aws:us-east-1)"
            ),
        )
    })
}

fn topology(file: &TopologyFile, catalog: &RegionCatalog) -> Result<Topology, ScenarioError> {
    if file.regions.is_empty() {
        return Err(invalid(
            "topology.regions",
            "is empty; list at least one region",
        ));
    }
    // Regions in catalog order; remember where each was written for error paths.
    let mut regions: BTreeMap<usize, (String, u32)> = BTreeMap::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total: usize = 0;
    for (i, entry) in file.regions.iter().enumerate() {
        let path = format!("topology.regions[{i}]");
        known_region(&format!("{path}.region"), &entry.region, catalog)?;
        if let Some(first) = seen.insert(&entry.region, i) {
            return Err(invalid(
                format!("{path}.region"),
                format!(
                    "{} is already listed at topology.regions[{first}]",
                    entry.region
                ),
            ));
        }
        node_count(
            &path,
            entry.nodes,
            "region",
            "NODES_PER_REGION_MAX",
            NODES_PER_REGION_MAX,
        )?;
        total += entry.nodes as usize;
        let index = catalog.region_index(&entry.region).unwrap_or(usize::MAX);
        regions.insert(index, (entry.region.clone(), entry.nodes));
    }

    if file.edge_sites.len() > EDGE_SITES_MAX {
        return Err(over_limit(
            "topology.edge_sites",
            format!("{} entries", file.edge_sites.len()),
            "EDGE_SITES_MAX",
            EDGE_SITES_MAX,
        ));
    }
    struct SiteDraft {
        region: String,
        access_rtt_us: u64,
        jurisdiction: Jurisdiction,
        nodes: u32,
    }
    let mut sites: BTreeMap<String, SiteDraft> = BTreeMap::new();
    let mut site_paths: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, site) in file.edge_sites.iter().enumerate() {
        let path = format!("topology.edge_sites[{i}]");
        check_site_name(&format!("{path}.name"), &site.name)?;
        if let Some(first) = site_paths.insert(&site.name, i) {
            return Err(invalid(
                format!("{path}.name"),
                format!(
                    "{:?} is already used by topology.edge_sites[{first}]",
                    site.name
                ),
            ));
        }
        let region = known_region(&format!("{path}.region"), &site.region, catalog)?;
        if !seen.contains_key(site.region.as_str()) {
            return Err(invalid(
                format!("{path}.region"),
                format!(
                    "{} has no nodes in topology.regions; an edge site reaches the fabric \
                     through its region's nodes",
                    site.region
                ),
            ));
        }
        let access_rtt_us = time_us(
            &format!("{path}.access_rtt_ms"),
            site.access_rtt_ms,
            Sign::Positive,
            "ms",
            ACCESS_RTT_MS_MAX,
            "ACCESS_RTT_MS_MAX",
        )?;
        node_count(
            &path,
            site.nodes,
            "site",
            "NODES_PER_SITE_MAX",
            NODES_PER_SITE_MAX,
        )?;
        let jurisdiction = match &site.jurisdiction {
            Some(code) => jurisdiction(&format!("{path}.jurisdiction"), code)?,
            None => region.jurisdiction.clone(),
        };
        total += site.nodes as usize;
        sites.insert(
            site.name.clone(),
            SiteDraft {
                region: site.region.clone(),
                access_rtt_us,
                jurisdiction,
                nodes: site.nodes,
            },
        );
    }
    if total > NODES_TOTAL_MAX {
        return Err(over_limit(
            "topology",
            format!("{total} nodes"),
            "NODES_TOTAL_MAX",
            NODES_TOTAL_MAX,
        ));
    }

    let mut nodes = Vec::with_capacity(total);
    let mut region_groups = Vec::with_capacity(regions.len());
    let mut next = 0u32;
    for (region, count) in regions.into_values() {
        let jurisdiction = catalog
            .region(&region)
            .map(|r| r.jurisdiction.clone())
            .ok_or_else(|| invalid("topology.regions", format!("unknown region {region:?}")))?;
        region_groups.push(RegionNodes {
            region: region.clone(),
            first: NodeIndex(next),
            nodes: count,
        });
        for ordinal in 0..count {
            nodes.push(Node {
                index: NodeIndex(next),
                name: format!("{region}/{ordinal}"),
                region: region.clone(),
                ordinal,
                jurisdiction: jurisdiction.clone(),
                edge: None,
            });
            next += 1;
        }
    }
    let mut edge_sites = Vec::with_capacity(sites.len());
    for (name, site) in sites {
        edge_sites.push(EdgeSite {
            name: name.clone(),
            region: site.region.clone(),
            access_rtt_us: site.access_rtt_us,
            jurisdiction: site.jurisdiction.clone(),
            first: NodeIndex(next),
            nodes: site.nodes,
        });
        for ordinal in 0..site.nodes {
            nodes.push(Node {
                index: NodeIndex(next),
                name: format!("{name}/{ordinal}"),
                region: site.region.clone(),
                ordinal,
                jurisdiction: site.jurisdiction.clone(),
                edge: Some(EdgePlacement {
                    site: name.clone(),
                    access_rtt_us: site.access_rtt_us,
                }),
            });
            next += 1;
        }
    }
    let by_name = nodes.iter().map(|n| (n.name.clone(), n.index)).collect();
    Ok(Topology {
        nodes,
        regions: region_groups,
        edge_sites,
        by_name,
    })
}

fn network(file: &NetworkFile, topology: &Topology) -> Result<Network, ScenarioError> {
    let jitter_us = time_us(
        "network.jitter_ms",
        file.jitter_ms,
        Sign::NonNegative,
        "ms",
        JITTER_MS_MAX,
        "JITTER_MS_MAX",
    )?;
    let loss = probability("network.loss", file.loss)?;
    if file.verify_us > VERIFY_US_MAX {
        return Err(over_limit(
            "network.verify_us",
            format!("{} µs", file.verify_us),
            "VERIFY_US_MAX",
            format!("{VERIFY_US_MAX} µs"),
        ));
    }
    let signing = match file.signing.as_deref() {
        None => Signing::default(),
        Some(name) => Signing::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                let names: Vec<String> = Signing::ALL
                    .iter()
                    .map(|s| format!("{:?}", s.name()))
                    .collect();
                invalid(
                    "network.signing",
                    format!("{name:?} is not one of {}", names.join(", ")),
                )
            })?,
    };
    if file.link.len() > NETWORK_LINKS_MAX {
        return Err(over_limit(
            "network.link",
            file.link.len(),
            "NETWORK_LINKS_MAX",
            NETWORK_LINKS_MAX,
        ));
    }
    let mut links: Vec<LinkNetwork> = Vec::with_capacity(file.link.len());
    for (i, l) in file.link.iter().enumerate() {
        let path = format!("network.link[{i}]");
        for (key, region) in [("a", &l.a), ("b", &l.b)] {
            if !topology.regions().iter().any(|r| r.region == *region) {
                return Err(invalid(
                    format!("{path}.{key}"),
                    format!("{region:?} is not a region of [topology] with nodes"),
                ));
            }
        }
        if l.a == l.b {
            return Err(invalid(
                &path,
                "a and b are the same region: a link joins two regions",
            ));
        }
        if links
            .iter()
            .any(|o| (o.a == l.a && o.b == l.b) || (o.a == l.b && o.b == l.a))
        {
            return Err(invalid(
                &path,
                format!("{} - {} is already given", l.a, l.b),
            ));
        }
        if l.jitter_ms.is_none() && l.loss.is_none() {
            return Err(invalid(&path, "sets nothing: give jitter_ms, loss or both"));
        }
        let link_jitter_us = match l.jitter_ms {
            Some(ms) => time_us(
                &format!("{path}.jitter_ms"),
                ms,
                Sign::NonNegative,
                "ms",
                JITTER_MS_MAX,
                "JITTER_MS_MAX",
            )?,
            None => jitter_us,
        };
        let link_loss = match l.loss {
            Some(p) => probability(&format!("{path}.loss"), p)?,
            None => loss,
        };
        links.push(LinkNetwork {
            a: l.a.clone(),
            b: l.b.clone(),
            jitter_us: link_jitter_us,
            loss: link_loss,
        });
    }
    Ok(Network {
        jitter_us,
        loss,
        verify_us: file.verify_us,
        signing,
        links,
    })
}

/// Validates a selector as written; `"rest"` only where `allow_rest`. Returns `None` for
/// `"rest"`.
fn selector(
    path: &str,
    file: &SelectorFile,
    allow_rest: bool,
    topology: &Topology,
    catalog: &RegionCatalog,
) -> Result<Option<Selector>, ScenarioError> {
    let table = match file {
        SelectorFile::Keyword(k) if k == "all" => return Ok(Some(Selector::All)),
        SelectorFile::Keyword(k) if k == "rest" && allow_rest => return Ok(None),
        SelectorFile::Keyword(k) if k == "rest" => {
            return Err(invalid(
                path,
                "\"rest\" is only allowed as b of a partition or link-degradation",
            ));
        }
        SelectorFile::Keyword(k) => {
            return Err(invalid(
                path,
                format!(
                    "{k:?} is not a selector: use \"all\"{} or a table with one of the keys \
                     clouds, regions, jurisdictions, edge_sites, nodes",
                    if allow_rest { ", \"rest\"" } else { "" }
                ),
            ));
        }
        SelectorFile::Table(table) => table,
    };
    let keys = [
        ("clouds", &table.clouds),
        ("regions", &table.regions),
        ("jurisdictions", &table.jurisdictions),
        ("edge_sites", &table.edge_sites),
        ("nodes", &table.nodes),
    ];
    let given: Vec<(&str, &Vec<String>)> = keys
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
        .collect();
    let [(key, items)] = given[..] else {
        let names: Vec<&str> = given.iter().map(|(k, _)| *k).collect();
        return Err(invalid(
            path,
            if names.is_empty() {
                "is an empty table: give exactly one of clouds, regions, jurisdictions, \
                 edge_sites, nodes"
                    .to_owned()
            } else {
                format!(
                    "gives {}; give exactly one of clouds, regions, jurisdictions, edge_sites, \
                     nodes (combine sides with separate faults instead)",
                    names.join(" and ")
                )
            },
        ));
    };
    let path = format!("{path}.{key}");
    if items.is_empty() {
        return Err(invalid(&path, "is empty; list at least one"));
    }
    if items.len() > SELECTOR_LEN_MAX {
        return Err(over_limit(
            &path,
            format!("{} entries", items.len()),
            "SELECTOR_LEN_MAX",
            SELECTOR_LEN_MAX,
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        if !seen.insert(item.as_str()) {
            return Err(invalid(
                format!("{path}[{i}]"),
                format!("lists {item:?} twice"),
            ));
        }
    }
    let nodes = topology.nodes();
    let no_nodes = |i: usize, what: String| invalid(format!("{path}[{i}]"), what);
    let selector = match key {
        "clouds" => {
            for (i, cloud) in items.iter().enumerate() {
                if !catalog.clouds().contains(cloud) {
                    return Err(no_nodes(
                        i,
                        format!(
                            "unknown cloud {cloud:?} (the catalog has {})",
                            catalog.clouds().join(", ")
                        ),
                    ));
                }
                if !nodes.iter().any(|n| n.cloud() == Some(cloud.as_str())) {
                    return Err(no_nodes(
                        i,
                        format!("cloud {cloud:?} has no nodes in topology.regions"),
                    ));
                }
            }
            Selector::Clouds(items.iter().cloned().collect())
        }
        "regions" => {
            for (i, region) in items.iter().enumerate() {
                known_region(&format!("{path}[{i}]"), region, catalog)?;
                if !nodes.iter().any(|n| !n.is_edge() && n.region == *region) {
                    return Err(no_nodes(
                        i,
                        format!("region {region:?} has no nodes in topology.regions"),
                    ));
                }
            }
            Selector::Regions(items.iter().cloned().collect())
        }
        "jurisdictions" => {
            let mut set = BTreeSet::new();
            for (i, code) in items.iter().enumerate() {
                let code = jurisdiction(&format!("{path}[{i}]"), code)?;
                if !nodes.iter().any(|n| n.jurisdiction == code) {
                    return Err(no_nodes(i, format!("no node is in jurisdiction {code}")));
                }
                set.insert(code);
            }
            Selector::Jurisdictions(set)
        }
        "edge_sites" => {
            for (i, site) in items.iter().enumerate() {
                if !topology.edge_sites().iter().any(|s| s.name == *site) {
                    return Err(no_nodes(
                        i,
                        format!("no edge site named {site:?} in topology.edge_sites"),
                    ));
                }
            }
            Selector::EdgeSites(items.iter().cloned().collect())
        }
        _ => {
            for (i, name) in items.iter().enumerate() {
                if topology.node_index(name).is_none() {
                    return Err(no_nodes(
                        i,
                        format!(
                            "no node named {name:?}; nodes are named region/ordinal or \
                             site/ordinal, from 0 (e.g. aws:us-east-1/0)"
                        ),
                    ));
                }
            }
            Selector::Nodes(items.iter().cloned().collect())
        }
    };
    Ok(Some(selector))
}

/// A selector that may not be `"rest"`.
fn plain_selector(
    path: &str,
    file: &SelectorFile,
    topology: &Topology,
    catalog: &RegionCatalog,
) -> Result<Selector, ScenarioError> {
    // `allow_rest = false` never yields `None`; `All` keeps this total without a panic.
    Ok(selector(path, file, false, topology, catalog)?.unwrap_or(Selector::All))
}

fn workload(
    path: &str,
    file: &WorkloadFile,
    duration_us: u64,
    topology: &Topology,
    catalog: &RegionCatalog,
) -> Result<Workload, ScenarioError> {
    let stream = StreamName::new(file.stream.clone())
        .map_err(|e| invalid(format!("{path}.stream"), e.to_string()))?;
    let rate_path = format!("{path}.rate_per_s");
    if !(file.rate_per_s.is_finite() && file.rate_per_s > 0.0) {
        return Err(invalid(&rate_path, "must be > 0"));
    }
    if file.rate_per_s > RATE_PER_S_MAX {
        return Err(over_limit(
            &rate_path,
            format!("{} events/s", file.rate_per_s),
            "RATE_PER_S_MAX",
            format!("{RATE_PER_S_MAX} events/s"),
        ));
    }
    if file.payload_bytes > PAYLOAD_LEN_MAX as u64 {
        return Err(over_limit(
            format!("{path}.payload_bytes"),
            format!("{} bytes", file.payload_bytes),
            "PAYLOAD_LEN_MAX",
            format!("{PAYLOAD_LEN_MAX} bytes (weft-fabric's limit)"),
        ));
    }
    let all = SelectorFile::Keyword("all".to_owned());
    let publishers = plain_selector(
        &format!("{path}.publishers"),
        file.publishers.as_ref().unwrap_or(&all),
        topology,
        catalog,
    )?;
    let subscribers = plain_selector(
        &format!("{path}.subscribers"),
        file.subscribers.as_ref().unwrap_or(&all),
        topology,
        catalog,
    )?;
    let start_us = match file.start_s {
        Some(s) => seconds_us(&format!("{path}.start_s"), s, Sign::NonNegative)?,
        None => 0,
    };
    let stop_us = match file.stop_s {
        Some(s) => seconds_us(&format!("{path}.stop_s"), s, Sign::Positive)?,
        // A drain at the end by default: events published in the run's last moments would
        // still be in flight when it ends, and count as missed. A workload starting inside
        // the drain runs to the end.
        None => Some(duration_us - (duration_us / 10).min(STOP_DRAIN_MAX_US))
            .filter(|stop| *stop > start_us)
            .unwrap_or(duration_us),
    };
    if stop_us > duration_us {
        return Err(invalid(
            format!("{path}.stop_s"),
            format!(
                "{} is after the scenario ends at {}",
                show_s(stop_us),
                show_s(duration_us)
            ),
        ));
    }
    if start_us >= stop_us {
        return Err(invalid(
            format!("{path}.start_s"),
            format!(
                "{} is not before stop ({})",
                show_s(start_us),
                show_s(stop_us)
            ),
        ));
    }
    let publisher_nodes = topology.resolve(&publishers);
    let subscriber_nodes = topology.resolve(&subscribers);
    if file.devices > DEVICES_PER_PUBLISHER_MAX {
        return Err(invalid(
            format!("{path}.devices"),
            format!(
                "{} is over the limit {DEVICES_PER_PUBLISHER_MAX} per publisher",
                file.devices
            ),
        ));
    }
    if file.table.is_some()
        && let Some(p) = publisher_nodes
            .iter()
            .find(|p| subscriber_nodes.binary_search(p).is_err())
    {
        let name = topology.node(*p).map_or("?", |n| n.name.as_str());
        return Err(invalid(
            format!("{path}.publishers"),
            format!(
                "node {name} publishes to a table it does not subscribe to: a writer reads \
                 its own replica before it writes"
            ),
        ));
    }
    Ok(Workload {
        stream,
        rate_per_s: file.rate_per_s,
        // At most PAYLOAD_LEN_MAX (1 MiB), checked above.
        payload_bytes: u32::try_from(file.payload_bytes).unwrap_or(u32::MAX),
        publisher_nodes,
        publishers,
        subscriber_nodes,
        subscribers,
        start_us,
        stop_us,
        classification: file.classification.clone(),
        sealed: file.sealed,
        table: match &file.table {
            Some(t) => Some(table_spec(&format!("{path}.table"), t, file)?),
            None => None,
        },
        devices: file.devices,
    })
}

/// Validates `[workload.table]`: the strategy's fields only, each in range; the workload
/// clear (tables read payloads) and published only by subscribers (a writer reads its own
/// replica before it writes).
fn table_spec(path: &str, t: &TableFile, w: &WorkloadFile) -> Result<TableSpec, ScenarioError> {
    use weft_fabric::table::Strategy as S;
    if w.sealed {
        return Err(invalid(
            path,
            "a table workload cannot be sealed: nodes must read the operations to apply them",
        ));
    }
    let strategy = t.strategy;
    let foreign: [(&str, bool, &[S]); 5] = [
        ("blind", t.blind.is_some(), &[S::MultiValue]),
        ("delta_min", t.delta_min.is_some(), &[S::Counter]),
        ("delta_max", t.delta_max.is_some(), &[S::Counter]),
        ("elements", t.elements.is_some(), &[S::Set]),
        ("remove", t.remove.is_some(), &[S::Set]),
    ];
    for (field, present, allowed) in foreign {
        if present && !allowed.contains(&strategy) {
            return Err(invalid(
                format!("{path}.{field}"),
                format!(
                    "is a field of {} tables, not of {}",
                    allowed[0].as_str(),
                    strategy.as_str()
                ),
            ));
        }
    }
    if t.keys == 0 {
        return Err(invalid(format!("{path}.keys"), "must be at least 1"));
    }
    if t.keys > TABLE_KEYS_MAX {
        return Err(over_limit(
            format!("{path}.keys"),
            t.keys,
            "TABLE_KEYS_MAX",
            TABLE_KEYS_MAX,
        ));
    }
    let delete = probability(&format!("{path}.delete"), t.delete)?;
    let blind = match t.blind {
        Some(b) if !(b.is_finite() && (0.0..=1.0).contains(&b)) => {
            return Err(invalid(
                format!("{path}.blind"),
                format!("is {b}, must be >= 0 and <= 1 (a share of the puts)"),
            ));
        }
        Some(b) => b,
        None => 0.0,
    };
    let (delta_min, delta_max) = (t.delta_min.unwrap_or(1), t.delta_max.unwrap_or(1));
    for (field, d) in [("delta_min", delta_min), ("delta_max", delta_max)] {
        if d.unsigned_abs() > COUNTER_DELTA_ABS_MAX.unsigned_abs() {
            return Err(over_limit(
                format!("{path}.{field}"),
                d,
                "COUNTER_DELTA_ABS_MAX",
                COUNTER_DELTA_ABS_MAX,
            ));
        }
    }
    if delta_min > delta_max {
        return Err(invalid(
            format!("{path}.delta_max"),
            format!("is {delta_max}, below delta_min = {delta_min}"),
        ));
    }
    let elements = t.elements.unwrap_or(1);
    if elements == 0 {
        return Err(invalid(format!("{path}.elements"), "must be at least 1"));
    }
    if elements > SET_ELEMENTS_DOMAIN_MAX {
        return Err(over_limit(
            format!("{path}.elements"),
            elements,
            "SET_ELEMENTS_DOMAIN_MAX",
            SET_ELEMENTS_DOMAIN_MAX,
        ));
    }
    let remove = probability(&format!("{path}.remove"), t.remove.unwrap_or(0.0))?;
    if delete + remove >= 1.0 {
        return Err(invalid(
            format!("{path}.remove"),
            format!(
                "delete + remove is {}, must be < 1 (the rest are inserts)",
                delete + remove
            ),
        ));
    }
    Ok(TableSpec {
        strategy,
        keys: t.keys,
        delete,
        blind,
        delta_min,
        delta_max,
        elements,
        remove,
    })
}

/// Validates the `a` and `b` of a partition or degradation and resolves them, refusing
/// sides that overlap.
fn sides(
    path: &str,
    a: &SelectorFile,
    b: &SelectorFile,
    topology: &Topology,
    catalog: &RegionCatalog,
) -> Result<(Selector, OtherSide, Vec<NodeIndex>, Vec<NodeIndex>), ScenarioError> {
    let a = plain_selector(&format!("{path}.a"), a, topology, catalog)?;
    let a_nodes = topology.resolve(&a);
    let b = match selector(&format!("{path}.b"), b, true, topology, catalog)? {
        Some(selector) => OtherSide::Selected(selector),
        None => OtherSide::Rest,
    };
    let b_nodes = topology.resolve_other(&b, &a_nodes);
    if b_nodes.is_empty() {
        return Err(invalid(
            format!("{path}.b"),
            "\"rest\" selects no node: a already selects every node",
        ));
    }
    if let Some(common) = first_common(&a_nodes, &b_nodes) {
        let name = topology.node(common).map_or("?", |n| n.name.as_str());
        return Err(invalid(
            format!("{path}.b"),
            format!("selects {name}, which a selects too; the two sides must not overlap"),
        ));
    }
    Ok((a, b, a_nodes, b_nodes))
}

/// The first index in both sorted lists.
fn first_common(a: &[NodeIndex], b: &[NodeIndex]) -> Option<NodeIndex> {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return Some(a[i]),
        }
    }
    None
}

fn fault(
    path: &str,
    file: &FaultFile,
    duration_us: u64,
    topology: &Topology,
    catalog: &RegionCatalog,
) -> Result<Fault, ScenarioError> {
    let kind = file.kind;
    let (required, optional) = kind.fields();
    for field in file.present() {
        if !required.contains(&field) && !optional.contains(&field) {
            let mut fields: Vec<&str> = required.to_vec();
            fields.extend_from_slice(optional);
            return Err(invalid(
                format!("{path}.{field}"),
                format!(
                    "is not a field of kind {} (its fields: {})",
                    kind.name(),
                    fields.join(", ")
                ),
            ));
        }
    }
    let present = file.present();
    if let Some(missing) = required.iter().find(|f| !present.contains(f)) {
        return Err(invalid(
            format!("{path}.{missing}"),
            format!("is required for kind {}", kind.name()),
        ));
    }

    let at_us = seconds_us(&format!("{path}.at_s"), file.at_s, Sign::NonNegative)?;
    if at_us >= duration_us {
        return Err(invalid(
            format!("{path}.at_s"),
            format!(
                "{} is not before the scenario ends at {}",
                show_s(at_us),
                show_s(duration_us)
            ),
        ));
    }
    let fault_duration_us = seconds_us(
        &format!("{path}.duration_s"),
        file.duration_s,
        Sign::Positive,
    )?;
    if at_us + fault_duration_us > duration_us {
        return Err(invalid(
            format!("{path}.duration_s"),
            format!(
                "the fault heals at {}, after the scenario ends at {}; every fault must heal \
                 within the run so that recovery can be checked",
                show_s(at_us + fault_duration_us),
                show_s(duration_us)
            ),
        ));
    }

    // The required fields are present (checked above); the fallbacks keep this total.
    let all = SelectorFile::Keyword("all".to_owned());
    let kind = match kind {
        FaultKindFile::RegionOutage => {
            let region = file.region.clone().unwrap_or_default();
            let region_path = format!("{path}.region");
            known_region(&region_path, &region, catalog)?;
            let nodes = topology.resolve(&Selector::Regions(BTreeSet::from([region.clone()])));
            if nodes.is_empty() {
                return Err(invalid(
                    region_path,
                    format!("{region} has no nodes in topology.regions"),
                ));
            }
            FaultKind::RegionOutage { region, nodes }
        }
        FaultKindFile::Partition => {
            let (a, b, a_nodes, b_nodes) = sides(
                path,
                file.a.as_ref().unwrap_or(&all),
                file.b.as_ref().unwrap_or(&all),
                topology,
                catalog,
            )?;
            FaultKind::Partition {
                a,
                b,
                a_nodes,
                b_nodes,
                symmetric: file.symmetric.unwrap_or(true),
            }
        }
        FaultKindFile::LinkDegradation => {
            let (a, b, a_nodes, b_nodes) = sides(
                path,
                file.a.as_ref().unwrap_or(&all),
                file.b.as_ref().unwrap_or(&all),
                topology,
                catalog,
            )?;
            let factor_path = format!("{path}.latency_factor");
            let latency_factor = file.latency_factor.unwrap_or(1.0);
            if !(latency_factor.is_finite() && latency_factor >= 1.0) {
                return Err(invalid(
                    &factor_path,
                    format!(
                        "is {latency_factor}, must be >= 1 (a degradation never speeds a link up)"
                    ),
                ));
            }
            if latency_factor > LATENCY_FACTOR_MAX {
                return Err(over_limit(
                    &factor_path,
                    latency_factor,
                    "LATENCY_FACTOR_MAX",
                    LATENCY_FACTOR_MAX,
                ));
            }
            let loss = probability(&format!("{path}.loss"), file.loss.unwrap_or(0.0))?;
            if latency_factor == 1.0 && loss == 0.0 {
                return Err(invalid(
                    path,
                    "degrades nothing: set latency_factor above 1 or loss above 0",
                ));
            }
            FaultKind::LinkDegradation {
                a,
                b,
                a_nodes,
                b_nodes,
                latency_factor,
                loss,
            }
        }
        FaultKindFile::NodeCrash => {
            let selector = plain_selector(
                &format!("{path}.nodes"),
                file.nodes.as_ref().unwrap_or(&all),
                topology,
                catalog,
            )?;
            FaultKind::NodeCrash {
                nodes: topology.resolve(&selector),
                selector,
                lose_memory: file.lose_memory.unwrap_or(false),
            }
        }
        FaultKindFile::ClockSkew => {
            let selector = plain_selector(
                &format!("{path}.nodes"),
                file.nodes.as_ref().unwrap_or(&all),
                topology,
                catalog,
            )?;
            let skew_ms = file.skew_ms.unwrap_or(0);
            let skew_path = format!("{path}.skew_ms");
            if skew_ms == 0 {
                return Err(invalid(
                    skew_path,
                    "must not be 0 (a skew of 0 changes nothing)",
                ));
            }
            if skew_ms.unsigned_abs() > SKEW_MS_MAX.unsigned_abs() {
                return Err(over_limit(
                    skew_path,
                    format!("{skew_ms} ms"),
                    "SKEW_MS_MAX",
                    format!("{SKEW_MS_MAX} ms either way"),
                ));
            }
            FaultKind::ClockSkew {
                nodes: topology.resolve(&selector),
                selector,
                skew_ms,
            }
        }
    };
    Ok(Fault {
        at_us,
        duration_us: fault_duration_us,
        kind,
        measure: file.measure.unwrap_or(false),
    })
}

/// One bit per node, for the pairwise overlap checks.
struct NodeBits(Vec<u64>);

impl NodeBits {
    fn new(len: usize, nodes: &[NodeIndex]) -> Self {
        let mut words = vec![0u64; len.div_ceil(64)];
        for node in nodes {
            let i = node.as_usize();
            if let Some(word) = words.get_mut(i / 64) {
                *word |= 1 << (i % 64);
            }
        }
        Self(words)
    }

    fn first_common(&self, other: &NodeBits) -> Option<NodeIndex> {
        self.0
            .iter()
            .zip(&other.0)
            .enumerate()
            .find_map(|(w, (a, b))| {
                let both = a & b;
                (both != 0).then(|| NodeIndex((w * 64) as u32 + both.trailing_zeros()))
            })
    }
}

/// Refuses two faults that stop a common node at overlapping times (which one's restart
/// would apply?) and two clock skews of a common node at overlapping times (which offset?).
/// Partitions and degradations may overlap anything: they compose.
fn check_fault_overlaps(faults: &[Fault], topology: &Topology) -> Result<(), ScenarioError> {
    let len = topology.len();
    let sets: Vec<(Option<&'static str>, NodeBits)> = faults
        .iter()
        .map(|f| {
            let (group, nodes): (Option<&'static str>, &[NodeIndex]) = match &f.kind {
                FaultKind::RegionOutage { nodes, .. } | FaultKind::NodeCrash { nodes, .. } => {
                    (Some("stop"), nodes)
                }
                FaultKind::ClockSkew { nodes, .. } => (Some("skew"), nodes),
                _ => (None, &[]),
            };
            (group, NodeBits::new(len, nodes))
        })
        .collect();
    for (j, later) in faults.iter().enumerate() {
        let Some(group) = sets[j].0 else { continue };
        for (i, earlier) in faults[..j].iter().enumerate() {
            if sets[i].0 != Some(group)
                || !(earlier.at_us < later.heal_us() && later.at_us < earlier.heal_us())
            {
                continue;
            }
            if let Some(node) = sets[i].1.first_common(&sets[j].1) {
                let name = topology.node(node).map_or("?", |n| n.name.as_str());
                let (also, rule) = if group == "stop" {
                    ("stops", "faults that stop a node")
                } else {
                    ("skews the clock of", "clock skews of a node")
                };
                return Err(invalid(
                    format!("fault[{j}]"),
                    format!(
                        "{} from {} to {} overlaps fault[{i}] ({}, {} to {}), which also \
                         {also} {name}; {rule} must not overlap in time",
                        later.kind.name(),
                        show_s(later.at_us),
                        show_s(later.heal_us()),
                        earlier.kind.name(),
                        show_s(earlier.at_us),
                        show_s(earlier.heal_us()),
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn checks(
    file: &ChecksFile,
    duration_us: u64,
    workloads: &[Workload],
    faults: &[Fault],
) -> Result<Checks, ScenarioError> {
    let converge_within_us = match file.converge_within_s {
        None => None,
        Some(s) => {
            let path = "checks.converge_within_s";
            let within_us = seconds_us(path, s, Sign::Positive)?;
            let last_heal_us = faults.iter().map(Fault::heal_us).max();
            let last_stop_us = workloads.iter().map(|w| w.stop_us).max().unwrap_or(0);
            let from_us = last_heal_us.unwrap_or(0).max(last_stop_us);
            if from_us + within_us > duration_us {
                let heal = match last_heal_us {
                    Some(us) => format!("the last fault heals at {} and ", show_s(us)),
                    None => "there is no fault and ".to_string(),
                };
                return Err(invalid(
                    path,
                    format!(
                        "{heal}the last workload stops at {}; {} later is after the scenario \
                         ends at {} (lengthen duration_s or stop the workloads earlier)",
                        show_s(last_stop_us),
                        show_s(within_us),
                        show_s(duration_us)
                    ),
                ));
            }
            Some(within_us)
        }
    };
    if let Some(v) = file.stretch_p99_max
        && !(v.is_finite() && v >= 1.0)
    {
        return Err(invalid(
            "checks.stretch_p99_max",
            format!("is {v}, must be >= 1 (stretch is latency over the ideal path's)"),
        ));
    }
    if let Some(v) = file.rmr_max
        && !(v.is_finite() && v >= 0.0)
    {
        return Err(invalid("checks.rmr_max", format!("is {v}, must be >= 0")));
    }
    if let Some(v) = file.reroute_within_rtt
        && !(v.is_finite() && v > 0.0)
    {
        return Err(invalid(
            "checks.reroute_within_rtt",
            format!("is {v}, must be > 0 (a number of RTTs)"),
        ));
    }
    if file.reroute_within_rtt.is_some() && !faults.iter().any(|f| f.measure) {
        return Err(invalid(
            "checks.reroute_within_rtt",
            "needs a partition or link-degradation fault with measure = true: the check \
             bounds the extra delay of events published during such a fault, and without \
             one there is nothing to measure",
        ));
    }
    Ok(Checks {
        converge_within_us,
        stretch_p99_max: file.stretch_p99_max,
        rmr_max: file.rmr_max,
        reroute_within_rtt: file.reroute_within_rtt,
    })
}

fn baselines(file: &BaselinesFile, nodes_len: usize) -> Result<Vec<Baseline>, ScenarioError> {
    let mut out = Vec::new();
    if file.flooding {
        out.push(Baseline::Flooding);
    }
    if let Some(gossip) = &file.random_gossip {
        let path = "baselines.random-gossip.fanout";
        if gossip.fanout == 0 {
            return Err(invalid(path, "must be at least 1"));
        }
        if gossip.fanout > FANOUT_MAX {
            return Err(over_limit(path, gossip.fanout, "FANOUT_MAX", FANOUT_MAX));
        }
        if gossip.fanout as usize >= nodes_len {
            return Err(invalid(
                path,
                format!(
                    "is {}, must be below the node count ({nodes_len}): a node forwards to \
                     others, not itself",
                    gossip.fanout
                ),
            ));
        }
        out.push(Baseline::RandomGossip {
            fanout: gossip.fanout,
        });
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nodes, by index: 0-1 aws:eu-west-1, 2-3 aws:us-east-1, 4 gcp:europe-west3, 5-6 site.
    const BASE: &str = r#"
name = "t"
description = "a test"
duration_s = 100

[topology]
regions = [
  { region = "aws:us-east-1", nodes = 2 },
  { region = "gcp:europe-west3", nodes = 1 },
  { region = "aws:eu-west-1", nodes = 2 },
]
edge_sites = [{ name = "site", region = "aws:eu-west-1", access_rtt_ms = 10, nodes = 2 }]

[[workload]]
stream = "a.b"
rate_per_s = 10
payload_bytes = 100
"#;

    fn catalog() -> RegionCatalog {
        RegionCatalog::embedded().unwrap()
    }

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(text, &catalog())
    }

    /// The base scenario with `extra` appended.
    fn with(extra: &str) -> Result<Scenario, ScenarioError> {
        parse(&format!("{BASE}\n{extra}"))
    }

    /// The base scenario with `from` replaced by `to`.
    fn replaced(from: &str, to: &str) -> Result<Scenario, ScenarioError> {
        let text = BASE.replacen(from, to, 1);
        assert_ne!(text, BASE, "{from:?} is not in BASE");
        parse(&text)
    }

    fn err(result: Result<Scenario, ScenarioError>) -> String {
        match result {
            Ok(s) => panic!("parsed: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn idx(list: &[u32]) -> Vec<NodeIndex> {
        list.iter().map(|&i| NodeIndex(i)).collect()
    }

    fn fault_with(kind_fields: &str) -> String {
        format!("[[fault]]\nat_s = 10\nduration_s = 20\n{kind_fields}\n")
    }

    #[test]
    fn example_parses() {
        let text = include_str!("../scenarios/example.toml");
        let s = parse(text).unwrap();
        assert_eq!(s.name, "example");
        assert_eq!(s.duration_us, 900_000_000);
        assert_eq!(s.seed, Some(42));
        assert_eq!(s.topology.len(), 17 + 3);
        assert_eq!(s.topology.regions().len(), 8);
        assert_eq!(s.topology.edge_sites().len(), 2);
        assert_eq!(
            s.network,
            Network {
                jitter_us: 2_000,
                loss: 0.001,
                verify_us: 60,
                signing: Signing::Modelled,
                links: Vec::new(),
            }
        );
        assert_eq!(s.workloads.len(), 3);
        assert_eq!(s.workloads[1].publisher_nodes.len(), 2);
        assert_eq!(
            s.workloads[1].classification.as_deref(),
            Some("eu-personal")
        );
        assert!(s.workloads[2].sealed);
        let policy = s.policy.as_ref().unwrap();
        assert_eq!(
            policy.classes.keys().collect::<Vec<_>>(),
            ["eu-personal", "payment", "public"]
        );
        assert_eq!(s.faults.len(), 5);
        let kinds: Vec<&str> = s.faults.iter().map(|f| f.kind.name()).collect();
        assert_eq!(
            kinds,
            [
                "region-outage",
                "link-degradation",
                "node-crash",
                "clock-skew",
                "partition"
            ]
        );
        assert_eq!(s.checks.converge_within_us, Some(60_000_000));
        assert_eq!(s.checks.stretch_p99_max, None);
        assert_eq!(s.checks.rmr_max, Some(0.5));
        assert_eq!(
            s.baselines,
            [Baseline::Flooding, Baseline::RandomGossip { fanout: 4 }]
        );
        // The Swiss store is CH, not EU: the EU partition leaves it on the other side.
        let zurich = s.topology.node_index("store-zurich/0").unwrap();
        assert_eq!(s.topology.node(zurich).unwrap().jurisdiction.as_str(), "CH");
        let FaultKind::Partition {
            a_nodes, b_nodes, ..
        } = &s.faults[4].kind
        else {
            panic!("{:?}", s.faults[4]);
        };
        assert!(b_nodes.contains(&zurich) && !a_nodes.contains(&zurich));
        assert_eq!(a_nodes.len() + b_nodes.len(), s.topology.len());
    }

    #[test]
    fn nodes_are_numbered_by_region_id_then_site_name() {
        let s = with("").unwrap();
        let names: Vec<&str> = s.topology.nodes().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "aws:eu-west-1/0",
                "aws:eu-west-1/1",
                "aws:us-east-1/0",
                "aws:us-east-1/1",
                "gcp:europe-west3/0",
                "site/0",
                "site/1"
            ]
        );
        for (i, node) in s.topology.nodes().iter().enumerate() {
            assert_eq!(node.index, NodeIndex(i as u32));
            assert_eq!(s.topology.node_index(&node.name), Some(node.index));
        }
        let site = &s.topology.nodes()[6];
        assert_eq!(site.ordinal, 1);
        assert_eq!(site.region, "aws:eu-west-1");
        assert_eq!(site.cloud(), None);
        assert_eq!(site.jurisdiction.as_str(), "EU");
        assert_eq!(
            site.edge,
            Some(EdgePlacement {
                site: "site".into(),
                access_rtt_us: 10_000
            })
        );
        assert_eq!(s.topology.nodes()[2].cloud(), Some("aws"));
        assert_eq!(
            s.topology.regions()[1],
            RegionNodes {
                region: "aws:us-east-1".into(),
                first: NodeIndex(2),
                nodes: 2
            }
        );
        assert_eq!(s.topology.edge_sites()[0].first, NodeIndex(5));
        assert_eq!(s.topology.node(NodeIndex(7)), None);
    }

    #[test]
    fn defaults_fill_what_the_file_leaves_out() {
        let s = with("").unwrap();
        assert_eq!(s.seed, None);
        assert_eq!(
            s.network,
            Network {
                jitter_us: 0,
                loss: 0.0,
                verify_us: 0,
                signing: Signing::Modelled,
                links: Vec::new(),
            }
        );
        let w = &s.workloads[0];
        assert_eq!(w.stream.as_str(), "a.b");
        // A tenth of the run is left to drain (STOP_DRAIN_MAX_US at most).
        assert_eq!((w.start_us, w.stop_us), (0, 90_000_000));
        assert_eq!(w.publishers, Selector::All);
        assert_eq!(w.subscriber_nodes.len(), 7);
        assert_eq!(s.checks, Checks::default());
        assert!(s.faults.is_empty() && s.baselines.is_empty());
    }

    #[test]
    fn listing_order_does_not_change_numbering() {
        let a = with("").unwrap();
        let b = replaced(
            "  { region = \"aws:us-east-1\", nodes = 2 },\n  { region = \"gcp:europe-west3\", nodes = 1 },\n  { region = \"aws:eu-west-1\", nodes = 2 },",
            "  { region = \"aws:eu-west-1\", nodes = 2 },\n  { region = \"gcp:europe-west3\", nodes = 1 },\n  { region = \"aws:us-east-1\", nodes = 2 },",
        )
        .unwrap();
        assert_eq!(a.topology, b.topology);
    }

    #[test]
    fn selectors_resolve_to_sorted_node_sets() {
        let s = with("").unwrap();
        let t = &s.topology;
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(t.resolve(&Selector::All), idx(&[0, 1, 2, 3, 4, 5, 6]));
        assert_eq!(
            t.resolve(&Selector::Clouds(set(&["aws"]))),
            idx(&[0, 1, 2, 3])
        );
        assert_eq!(
            t.resolve(&Selector::Regions(set(&["aws:eu-west-1"]))),
            idx(&[0, 1])
        );
        let eu = BTreeSet::from([Jurisdiction::new("EU").unwrap()]);
        assert_eq!(
            t.resolve(&Selector::Jurisdictions(eu)),
            idx(&[0, 1, 4, 5, 6])
        );
        assert_eq!(
            t.resolve(&Selector::EdgeSites(set(&["site"]))),
            idx(&[5, 6])
        );
        assert_eq!(
            t.resolve(&Selector::Nodes(set(&["site/1", "aws:us-east-1/0"]))),
            idx(&[2, 6])
        );
        assert_eq!(t.complement(&idx(&[0, 1, 4, 5, 6])), idx(&[2, 3]));
        assert_eq!(
            t.resolve_other(&OtherSide::Rest, &idx(&[2, 3])),
            idx(&[0, 1, 4, 5, 6])
        );
    }

    #[test]
    fn selectors_display_as_written() {
        let clouds = Selector::Clouds(BTreeSet::from(["gcp".to_owned(), "aws".to_owned()]));
        assert_eq!(clouds.to_string(), r#"{ clouds = ["aws", "gcp"] }"#);
        assert_eq!(Selector::All.to_string(), "\"all\"");
        assert_eq!(OtherSide::Rest.to_string(), "\"rest\"");
    }

    #[test]
    fn faults_resolve_their_nodes() {
        let s = with(&format!(
            "{}{}{}{}{}",
            fault_with("kind = \"region-outage\"\nregion = \"aws:eu-west-1\""),
            fault_with("kind = \"partition\"\na = { clouds = [\"gcp\"] }\nb = \"rest\"\nsymmetric = false"),
            fault_with(
                "kind = \"link-degradation\"\na = { regions = [\"aws:us-east-1\"] }\nb = { edge_sites = [\"site\"] }\nlatency_factor = 2.5"
            ),
            "[[fault]]\nat_s = 50\nduration_s = 10\nkind = \"node-crash\"\nnodes = { jurisdictions = [\"US\"] }\n",
            fault_with("kind = \"clock-skew\"\nnodes = { nodes = [\"site/0\"] }\nskew_ms = -1500"),
        ))
        .unwrap();
        let f = &s.faults;
        assert_eq!(
            (f[0].at_us, f[0].duration_us, f[0].heal_us()),
            (10_000_000, 20_000_000, 30_000_000)
        );
        assert_eq!(
            f[0].kind,
            FaultKind::RegionOutage {
                region: "aws:eu-west-1".into(),
                nodes: idx(&[0, 1])
            }
        );
        assert_eq!(f[0].kind.stopped_nodes(), idx(&[0, 1]));
        let FaultKind::Partition {
            b,
            a_nodes,
            b_nodes,
            symmetric,
            ..
        } = &f[1].kind
        else {
            panic!()
        };
        assert_eq!(
            (b, a_nodes, b_nodes, *symmetric),
            (
                &OtherSide::Rest,
                &idx(&[4]),
                &idx(&[0, 1, 2, 3, 5, 6]),
                false
            )
        );
        let FaultKind::LinkDegradation {
            a_nodes,
            b_nodes,
            latency_factor,
            loss,
            ..
        } = &f[2].kind
        else {
            panic!()
        };
        assert_eq!(
            (a_nodes, b_nodes, *latency_factor, *loss),
            (&idx(&[2, 3]), &idx(&[5, 6]), 2.5, 0.0)
        );
        let FaultKind::NodeCrash {
            nodes, lose_memory, ..
        } = &f[3].kind
        else {
            panic!()
        };
        assert_eq!((nodes, *lose_memory), (&idx(&[2, 3]), false));
        let FaultKind::ClockSkew { nodes, skew_ms, .. } = &f[4].kind else {
            panic!()
        };
        assert_eq!((nodes, *skew_ms), (&idx(&[5]), -1500));
        assert!(f[4].kind.stopped_nodes().is_empty());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = err(with("colour = \"red\""));
        assert!(
            e.starts_with("workload[0].colour: unknown field `colour`"),
            "{e}"
        );
        let e = err(parse(&BASE.replacen(
            "name = \"t\"",
            "name = \"t\"\ncolour = 1",
            1,
        )));
        assert!(
            e.starts_with("colour: unknown field `colour`, expected one of `name`"),
            "{e}"
        );
        assert!(e.ends_with("(line 3, column 1)"), "{e}");
        let e = err(with(&fault_with(
            "kind = \"region-outage\"\nregion = \"aws:eu-west-1\"\nregoin = 1",
        )));
        assert!(
            e.starts_with("fault[0].regoin: unknown field `regoin`"),
            "{e}"
        );
        let e = err(with("[network]\njitter = 3"));
        assert!(
            e.starts_with("network.jitter: unknown field `jitter`"),
            "{e}"
        );
        let e = err(replaced(
            "payload_bytes = 100",
            "payload_bytes = 100\npublishers = { cloud = [\"aws\"] }",
        ));
        assert!(
            e.starts_with("workload[0].publishers.cloud: unknown field `cloud`"),
            "{e}"
        );
        let e = err(with("[baselines]\nrandom_gossip = { fanout = 3 }"));
        assert!(
            e.starts_with("baselines.random_gossip: unknown field `random_gossip`"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_mistyped_keys_name_path_and_line() {
        let e = err(replaced("description = \"a test\"\n", ""));
        assert!(
            e.starts_with("scenario: missing field `description`"),
            "{e}"
        );
        let e = err(replaced("nodes = 1 }", "nodes = \"one\" }"));
        assert_eq!(
            e,
            "topology.regions[1].nodes: invalid type: string \"one\", expected u32 (line 9, column 42)"
        );
        let e = err(replaced("nodes = 1 }", "nodes = -1 }"));
        assert!(
            e.starts_with("topology.regions[1].nodes: invalid value: integer `-1`"),
            "{e}"
        );
        let e = err(with(&fault_with("kind = \"meteor\"")));
        assert!(
            e.starts_with(
                "fault[0].kind: unknown variant `meteor`, expected one of `region-outage`"
            ),
            "{e}"
        );
        let e = err(parse("name = \"t\"\nduration_s = [1"));
        assert!(e.starts_with("scenario: ") && e.contains("(line 2,"), "{e}");
        let e = err(replaced(
            "payload_bytes = 100",
            "payload_bytes = 100\npublishers = 3",
        ));
        assert!(e.starts_with("workload[0].publishers: invalid type: integer `3`, expected \"all\", \"rest\", or a table"), "{e}");
    }

    #[test]
    fn top_level_values_are_checked() {
        assert_eq!(
            err(replaced("duration_s = 100", "duration_s = -5")),
            "duration_s: must be > 0"
        );
        assert_eq!(
            err(replaced("duration_s = 100", "duration_s = 0")),
            "duration_s: must be > 0"
        );
        assert_eq!(
            err(replaced("duration_s = 100", "duration_s = inf")),
            "duration_s: must be a finite number"
        );
        assert_eq!(
            err(replaced("duration_s = 100", "duration_s = 100000")),
            "duration_s: 100000 s is over the limit DURATION_S_MAX = 86400 s"
        );
        assert_eq!(
            err(replaced("duration_s = 100", "duration_s = 1e-9")),
            "duration_s: is below the simulator's resolution of 1 µs"
        );
        assert_eq!(
            err(replaced("name = \"t\"", "name = \"my run\"")),
            "name: has ' '; names allow only A-Z a-z 0-9 _ . -"
        );
        assert_eq!(
            err(replaced("name = \"t\"", "name = \"\"")),
            "name: is empty"
        );
        let long = format!("description = \"{}\"", "x".repeat(DESCRIPTION_LEN_MAX + 1));
        assert!(err(replaced("description = \"a test\"", &long)).contains("DESCRIPTION_LEN_MAX"));
    }

    #[test]
    fn topology_is_checked() {
        assert_eq!(
            err(replaced("\"gcp:europe-west3\"", "\"gcp:europe-west9\"")),
            "topology.regions[1].region: unknown region \"gcp:europe-west9\": not in the region \
             catalog (ids look like aws:us-east-1)"
        );
        assert_eq!(
            err(replaced("\"gcp:europe-west3\"", "\"aws:us-east-1\"")),
            "topology.regions[1].region: aws:us-east-1 is already listed at topology.regions[0]"
        );
        assert_eq!(
            err(replaced("nodes = 1 }", "nodes = 0 }")),
            "topology.regions[1].nodes: must be at least 1 (leave the region out instead)"
        );
        assert_eq!(
            err(replaced("nodes = 1 }", "nodes = 1001 }")),
            "topology.regions[1].nodes: 1001 is over the limit NODES_PER_REGION_MAX = 1000"
        );
        let many = "regions = [\n".to_owned()
            + &(0..11)
                .map(|i| {
                    format!(
                        "{{ region = {:?}, nodes = 1000 }},",
                        catalog().regions()[i].id
                    )
                })
                .collect::<String>()
            + "]\nedge_sites";
        let text = BASE.replacen("regions = [", "old = [", 1);
        let text = text.replacen("edge_sites", &many, 1);
        let text = text.replacen("old = [", "# [", 1).replace(
            "  { region = \"aws:us-east-1\", nodes = 2 },\n  { region = \"gcp:europe-west3\", nodes = 1 },\n  { region = \"aws:eu-west-1\", nodes = 2 },\n]",
            "",
        );
        assert_eq!(
            err(parse(&text)),
            "topology: 11002 nodes is over the limit NODES_TOTAL_MAX = 10000"
        );
        assert_eq!(
            err(replaced("regions = [\n", "regions = [\n]\nx = [\n")),
            "topology.x: unknown field `x`, expected `regions` or `edge_sites` (line 9, column 1)"
        );
    }

    #[test]
    fn edge_sites_are_checked() {
        let site = "{ name = \"site\", region = \"aws:eu-west-1\", access_rtt_ms = 10, nodes = 2 }";
        let bad = |to: &str| err(replaced(site, to));
        assert_eq!(
            bad("{ name = \"Site 1\", region = \"aws:eu-west-1\", access_rtt_ms = 10, nodes = 2 }"),
            "topology.edge_sites[0].name: \"Site 1\" is not a site name: [a-z0-9][a-z0-9-]* (e.g. factory-lyon)"
        );
        assert_eq!(
            bad(&format!("{site}, {site}")),
            "topology.edge_sites[1].name: \"site\" is already used by topology.edge_sites[0]"
        );
        assert_eq!(
            bad("{ name = \"site\", region = \"aws:eu-north-1\", access_rtt_ms = 10, nodes = 2 }"),
            "topology.edge_sites[0].region: aws:eu-north-1 has no nodes in topology.regions; an \
             edge site reaches the fabric through its region's nodes"
        );
        assert_eq!(
            bad("{ name = \"site\", region = \"aws:eu-west-1\", access_rtt_ms = -1, nodes = 2 }"),
            "topology.edge_sites[0].access_rtt_ms: must be > 0"
        );
        assert_eq!(
            bad("{ name = \"site\", region = \"aws:eu-west-1\", access_rtt_ms = 5000, nodes = 2 }"),
            "topology.edge_sites[0].access_rtt_ms: 5000 ms is over the limit ACCESS_RTT_MS_MAX = 2000 ms"
        );
        assert!(
            bad("{ name = \"site\", region = \"aws:eu-west-1\", access_rtt_ms = 1, nodes = 2, jurisdiction = \"ch\" }")
                .starts_with("topology.edge_sites[0].jurisdiction: \"ch\" is not a jurisdiction code")
        );
        assert_eq!(
            bad("{ name = \"site\", region = \"aws:eu-west-1\", access_rtt_ms = 1, nodes = 0 }"),
            "topology.edge_sites[0].nodes: must be at least 1 (leave the site out instead)"
        );
    }

    #[test]
    fn network_is_checked() {
        assert_eq!(
            err(with("[network]\nloss = 1.0")),
            "network.loss: is 1, must be >= 0 and < 1 (a probability; losing every message is a partition)"
        );
        assert_eq!(
            err(with("[network]\nloss = -0.1")),
            "network.loss: is -0.1, must be >= 0 and < 1 (a probability; losing every message is a partition)"
        );
        assert_eq!(
            err(with("[network]\njitter_ms = -1")),
            "network.jitter_ms: must be >= 0"
        );
        assert_eq!(
            err(with("[network]\njitter_ms = 1500")),
            "network.jitter_ms: 1500 ms is over the limit JITTER_MS_MAX = 1000 ms"
        );
        assert_eq!(
            err(with("[network]\nverify_us = 200000")),
            "network.verify_us: 200000 µs is over the limit VERIFY_US_MAX = 100000 µs"
        );
        assert_eq!(
            err(with("[network]\nsigning = \"sometimes\"")),
            "network.signing: \"sometimes\" is not one of \"modelled\", \"executed\""
        );
        let s = with("[network]\njitter_ms = 0.25\nloss = 0.01\nverify_us = 50").unwrap();
        assert_eq!(
            s.network,
            Network {
                jitter_us: 250,
                loss: 0.01,
                verify_us: 50,
                signing: Signing::Modelled,
                links: Vec::new(),
            }
        );
        let s = with("[network]\nsigning = \"executed\"").unwrap();
        assert_eq!(s.network.signing, Signing::Executed);
    }

    #[test]
    fn network_links_are_checked() {
        let link = |fields: &str| with(&format!("[[network.link]]\n{fields}"));
        assert_eq!(
            err(link(
                "a = \"aws:us-east-1\"\nb = \"gcp:asia-south1\"\nloss = 0.1"
            )),
            "network.link[0].b: \"gcp:asia-south1\" is not a region of [topology] with nodes"
        );
        assert_eq!(
            err(link(
                "a = \"aws:us-east-1\"\nb = \"aws:us-east-1\"\nloss = 0.1"
            )),
            "network.link[0]: a and b are the same region: a link joins two regions"
        );
        assert_eq!(
            err(link("a = \"aws:us-east-1\"\nb = \"aws:eu-west-1\"")),
            "network.link[0]: sets nothing: give jitter_ms, loss or both"
        );
        assert_eq!(
            err(link(
                "a = \"aws:us-east-1\"\nb = \"aws:eu-west-1\"\nloss = 1.5"
            )),
            "network.link[0].loss: is 1.5, must be >= 0 and < 1 (a probability; losing every message is a partition)"
        );
        assert_eq!(
            err(link(
                "a = \"aws:us-east-1\"\nb = \"aws:eu-west-1\"\njitter_ms = 2000"
            )),
            "network.link[0].jitter_ms: 2000 ms is over the limit JITTER_MS_MAX = 1000 ms"
        );
        assert_eq!(
            err(with(
                "[[network.link]]\na = \"aws:us-east-1\"\nb = \"aws:eu-west-1\"\nloss = 0.1\n\
                 [[network.link]]\na = \"aws:eu-west-1\"\nb = \"aws:us-east-1\"\njitter_ms = 3"
            )),
            "network.link[1]: aws:eu-west-1 - aws:us-east-1 is already given"
        );
        let s = with(
            "[network]\njitter_ms = 1\nloss = 0.01\n\
             [[network.link]]\na = \"aws:us-east-1\"\nb = \"aws:eu-west-1\"\nloss = 0.2",
        )
        .unwrap();
        assert_eq!(
            s.network.links,
            vec![LinkNetwork {
                a: "aws:us-east-1".into(),
                b: "aws:eu-west-1".into(),
                jitter_us: 1_000,
                loss: 0.2,
            }],
            "an unset field keeps the scenario-wide value"
        );
    }

    #[test]
    fn workloads_are_checked() {
        assert_eq!(
            err(parse(&BASE.replace(
                "[[workload]]\nstream = \"a.b\"\nrate_per_s = 10\npayload_bytes = 100\n",
                ""
            ))),
            "workload: at least one [[workload]] is required: a run without events measures nothing"
        );
        assert_eq!(
            err(replaced("stream = \"a.b\"", "stream = \"a..b\"")),
            "workload[0].stream: stream name has an empty token at byte 2 (leading, trailing or doubled '.')"
        );
        assert!(
            err(replaced("stream = \"a.b\"", "stream = \"a.*\""))
                .starts_with("workload[0].stream: stream name has wildcard")
        );
        assert_eq!(
            err(replaced("rate_per_s = 10", "rate_per_s = 0")),
            "workload[0].rate_per_s: must be > 0"
        );
        assert_eq!(
            err(replaced("rate_per_s = 10", "rate_per_s = 200000")),
            "workload[0].rate_per_s: 200000 events/s is over the limit RATE_PER_S_MAX = 100000 events/s"
        );
        assert!(
            err(replaced("payload_bytes = 100", "payload_bytes = 2000000")).starts_with(
                "workload[0].payload_bytes: 2000000 bytes is over the limit PAYLOAD_LEN_MAX = "
            )
        );
        assert_eq!(
            err(replaced(
                "payload_bytes = 100",
                "payload_bytes = 100\nstop_s = 150"
            )),
            "workload[0].stop_s: 150 s is after the scenario ends at 100 s"
        );
        assert_eq!(
            err(replaced(
                "payload_bytes = 100",
                "payload_bytes = 100\nstart_s = 50\nstop_s = 50"
            )),
            "workload[0].start_s: 50 s is not before stop (50 s)"
        );
        assert_eq!(
            err(replaced(
                "payload_bytes = 100",
                "payload_bytes = 100\npublishers = \"rest\""
            )),
            "workload[0].publishers: \"rest\" is only allowed as b of a partition or link-degradation"
        );
        let events = err(
            replaced("rate_per_s = 10", "rate_per_s = 100000").and_then(|_| {
                parse(
                    &BASE
                        .replace("duration_s = 100", "duration_s = 200")
                        .replace("rate_per_s = 10", "rate_per_s = 100000"),
                )
            }),
        );
        assert_eq!(
            events,
            "workload: 18000000 events in total (rate_per_s x active time, summed) is over the \
             limit EVENTS_TOTAL_MAX = 10000000"
        );
        let s = with("").unwrap();
        assert_eq!(s.workloads[0].payload_bytes, 100);
    }

    #[test]
    fn selectors_are_checked() {
        let sel = |s: &str| {
            err(replaced(
                "payload_bytes = 100",
                &format!("payload_bytes = 100\nsubscribers = {s}"),
            ))
        };
        let p = "workload[0].subscribers";
        assert_eq!(
            sel("\"everyone\""),
            format!(
                "{p}: \"everyone\" is not a selector: use \"all\" or a table with one of the keys clouds, regions, jurisdictions, edge_sites, nodes"
            )
        );
        assert_eq!(
            sel("{}"),
            format!(
                "{p}: is an empty table: give exactly one of clouds, regions, jurisdictions, edge_sites, nodes"
            )
        );
        assert_eq!(
            sel("{ clouds = [\"aws\"], jurisdictions = [\"EU\"] }"),
            format!(
                "{p}: gives clouds and jurisdictions; give exactly one of clouds, regions, jurisdictions, edge_sites, nodes (combine sides with separate faults instead)"
            )
        );
        assert_eq!(
            sel("{ clouds = [] }"),
            format!("{p}.clouds: is empty; list at least one")
        );
        assert_eq!(
            sel("{ clouds = [\"aws\", \"aws\"] }"),
            format!("{p}.clouds[1]: lists \"aws\" twice")
        );
        assert_eq!(
            sel("{ clouds = [\"oracle\"] }"),
            format!(
                "{p}.clouds[0]: unknown cloud \"oracle\" (the catalog has aws, azure, gcp, ibm)"
            )
        );
        assert_eq!(
            sel("{ clouds = [\"aws\", \"ibm\"] }"),
            format!("{p}.clouds[1]: cloud \"ibm\" has no nodes in topology.regions")
        );
        assert_eq!(
            sel("{ regions = [\"aws:us-east-7\"] }"),
            format!(
                "{p}.regions[0]: unknown region \"aws:us-east-7\": not in the region catalog (ids look like aws:us-east-1)"
            )
        );
        assert_eq!(
            sel("{ regions = [\"aws:us-west-2\"] }"),
            format!("{p}.regions[0]: region \"aws:us-west-2\" has no nodes in topology.regions")
        );
        assert_eq!(
            sel("{ jurisdictions = [\"JP\"] }"),
            format!("{p}.jurisdictions[0]: no node is in jurisdiction JP")
        );
        assert!(sel("{ jurisdictions = [\"eu\"] }").starts_with(&format!(
            "{p}.jurisdictions[0]: \"eu\" is not a jurisdiction code"
        )));
        assert_eq!(
            sel("{ edge_sites = [\"depot\"] }"),
            format!("{p}.edge_sites[0]: no edge site named \"depot\" in topology.edge_sites")
        );
        assert_eq!(
            sel("{ nodes = [\"aws:us-east-1/2\"] }"),
            format!(
                "{p}.nodes[0]: no node named \"aws:us-east-1/2\"; nodes are named region/ordinal or site/ordinal, from 0 (e.g. aws:us-east-1/0)"
            )
        );
        let long: Vec<String> = (0..=SELECTOR_LEN_MAX)
            .map(|i| format!("\"n{i}\""))
            .collect();
        assert_eq!(
            sel(&format!("{{ nodes = [{}] }}", long.join(","))),
            format!("{p}.nodes: 1025 entries is over the limit SELECTOR_LEN_MAX = 1024")
        );
    }

    #[test]
    fn fault_fields_follow_the_kind() {
        assert_eq!(
            err(with(&fault_with("kind = \"region-outage\""))),
            "fault[0].region: is required for kind region-outage"
        );
        assert_eq!(
            err(with(&fault_with("kind = \"partition\"\na = \"all\""))),
            "fault[0].b: is required for kind partition"
        );
        assert_eq!(
            err(with(&fault_with(
                "kind = \"region-outage\"\nregion = \"aws:eu-west-1\"\nskew_ms = 5"
            ))),
            "fault[0].skew_ms: is not a field of kind region-outage (its fields: region)"
        );
        assert_eq!(
            err(with(&fault_with(
                "kind = \"clock-skew\"\nnodes = \"all\"\nskew_ms = 5\nlose_memory = true"
            ))),
            "fault[0].lose_memory: is not a field of kind clock-skew (its fields: nodes, skew_ms)"
        );
        let e = err(parse(&format!(
            "{BASE}\n[[fault]]\nkind = \"node-crash\"\nat_s = 1\nnodes = \"all\"\n"
        )));
        assert!(e.starts_with("fault[0]: missing field `duration_s`"), "{e}");
    }

    #[test]
    fn fault_times_are_checked() {
        let outage = "kind = \"region-outage\"\nregion = \"aws:eu-west-1\"";
        let at = |at: &str, dur: &str| {
            err(with(&format!(
                "[[fault]]\nat_s = {at}\nduration_s = {dur}\n{outage}\n"
            )))
        };
        assert_eq!(at("10", "-5"), "fault[0].duration_s: must be > 0");
        assert_eq!(at("10", "0"), "fault[0].duration_s: must be > 0");
        assert_eq!(at("-1", "5"), "fault[0].at_s: must be >= 0");
        assert_eq!(
            at("100", "5"),
            "fault[0].at_s: 100 s is not before the scenario ends at 100 s"
        );
        assert_eq!(
            at("90", "20.5"),
            "fault[0].duration_s: the fault heals at 110.5 s, after the scenario ends at 100 s; \
             every fault must heal within the run so that recovery can be checked"
        );
        // The second fault is where the error is reported.
        let e = err(with(&format!(
            "{}{}",
            fault_with(outage),
            "[[fault]]\nat_s = 5\nduration_s = -1\nkind = \"node-crash\"\nnodes = \"all\"\n"
        )));
        assert_eq!(e, "fault[1].duration_s: must be > 0");
    }

    #[test]
    fn fault_values_are_checked() {
        assert_eq!(
            err(with(&fault_with(
                "kind = \"region-outage\"\nregion = \"aws:us-west-2\""
            ))),
            "fault[0].region: aws:us-west-2 has no nodes in topology.regions"
        );
        assert!(
            err(with(&fault_with(
                "kind = \"region-outage\"\nregion = \"nowhere\""
            )))
            .starts_with("fault[0].region: unknown region")
        );
        let degrade = |extra: &str| {
            err(with(&fault_with(&format!(
                "kind = \"link-degradation\"\na = {{ clouds = [\"aws\"] }}\nb = \"rest\"\n{extra}"
            ))))
        };
        assert_eq!(
            degrade(""),
            "fault[0]: degrades nothing: set latency_factor above 1 or loss above 0"
        );
        assert_eq!(
            degrade("latency_factor = 0.5"),
            "fault[0].latency_factor: is 0.5, must be >= 1 (a degradation never speeds a link up)"
        );
        assert_eq!(
            degrade("latency_factor = 1000"),
            "fault[0].latency_factor: 1000 is over the limit LATENCY_FACTOR_MAX = 100"
        );
        assert!(degrade("loss = 1.5").starts_with("fault[0].loss: is 1.5, must be >= 0 and < 1"));
        let skew = |v: &str| {
            err(with(&fault_with(&format!(
                "kind = \"clock-skew\"\nnodes = \"all\"\nskew_ms = {v}"
            ))))
        };
        assert_eq!(
            skew("0"),
            "fault[0].skew_ms: must not be 0 (a skew of 0 changes nothing)"
        );
        assert_eq!(
            skew("-3600001"),
            "fault[0].skew_ms: -3600001 ms is over the limit SKEW_MS_MAX = 3600000 ms either way"
        );
        assert_eq!(
            err(with(&fault_with("kind = \"node-crash\"\nnodes = \"rest\""))),
            "fault[0].nodes: \"rest\" is only allowed as b of a partition or link-degradation"
        );
    }

    #[test]
    fn partition_sides_must_not_overlap() {
        assert_eq!(
            err(with(&fault_with(
                "kind = \"partition\"\na = { clouds = [\"aws\"] }\nb = { jurisdictions = [\"EU\"] }"
            ))),
            "fault[0].b: selects aws:eu-west-1/0, which a selects too; the two sides must not overlap"
        );
        assert_eq!(
            err(with(&fault_with(
                "kind = \"link-degradation\"\na = { nodes = [\"site/1\"] }\nb = \"all\"\nloss = 0.1"
            ))),
            "fault[0].b: selects site/1, which a selects too; the two sides must not overlap"
        );
        assert_eq!(
            err(with(&fault_with(
                "kind = \"partition\"\na = \"all\"\nb = \"rest\""
            ))),
            "fault[0].b: \"rest\" selects no node: a already selects every node"
        );
        assert_eq!(
            err(with(&fault_with(
                "kind = \"partition\"\na = \"rest\"\nb = \"all\""
            ))),
            "fault[0].a: \"rest\" is only allowed as b of a partition or link-degradation"
        );
    }

    #[test]
    fn stopping_faults_must_not_overlap_on_a_node() {
        let outage = fault_with("kind = \"region-outage\"\nregion = \"aws:eu-west-1\"");
        let crash = |at: u32| {
            format!(
                "[[fault]]\nat_s = {at}\nduration_s = 5\nkind = \"node-crash\"\nnodes = {{ nodes = [\"aws:eu-west-1/1\"] }}\n"
            )
        };
        assert_eq!(
            err(with(&format!("{outage}{}", crash(25)))),
            "fault[1]: node-crash from 25 s to 30 s overlaps fault[0] (region-outage, 10 s to 30 s), \
             which also stops aws:eu-west-1/1; faults that stop a node must not overlap in time"
        );
        // Back to back is fine: the outage heals at 30 s, the crash starts at 30 s.
        with(&format!("{outage}{}", crash(30))).unwrap();
        // Other nodes, or other kinds, may overlap.
        with(&format!(
            "{outage}{}{}",
            fault_with("kind = \"node-crash\"\nnodes = { regions = [\"aws:us-east-1\"] }"),
            fault_with("kind = \"partition\"\na = { clouds = [\"gcp\"] }\nb = \"rest\""),
        ))
        .unwrap();
        let skew =
            fault_with("kind = \"clock-skew\"\nnodes = { edge_sites = [\"site\"] }\nskew_ms = 100");
        assert_eq!(
            err(with(&format!("{skew}{skew}"))),
            "fault[1]: clock-skew from 10 s to 30 s overlaps fault[0] (clock-skew, 10 s to 30 s), \
             which also skews the clock of site/0; clock skews of a node must not overlap in time"
        );
    }

    #[test]
    fn checks_are_checked() {
        let text = |extra: &str| format!("{BASE}{extra}");
        let s = parse(&text(
            "stop_s = 99.5\n[checks]\nconverge_within_s = 0.5\nstretch_p99_max = 1.2\nrmr_max = 0",
        ))
        .unwrap();
        assert_eq!(s.checks.converge_within_us, Some(500_000));
        assert_eq!(
            (s.checks.stretch_p99_max, s.checks.rmr_max),
            (Some(1.2), Some(0.0))
        );
        // A workload that runs to the end leaves no time to converge.
        assert_eq!(
            err(with("stop_s = 100\n[checks]\nconverge_within_s = 0.5")),
            "checks.converge_within_s: there is no fault and the last workload stops at 100 s; \
             0.5 s later is after the scenario ends at 100 s (lengthen duration_s or stop the \
             workloads earlier)"
        );
        assert_eq!(
            err(parse(&text(
                "stop_s = 80\n[[fault]]\nkind = \"node-crash\"\nnodes = \"all\"\nat_s = 10\nduration_s = 80\n[checks]\nconverge_within_s = 15\n"
            ))),
            "checks.converge_within_s: the last fault heals at 90 s and the last workload stops at \
             80 s; 15 s later is after the scenario ends at 100 s (lengthen duration_s or stop the \
             workloads earlier)"
        );
        parse(&text("stop_s = 80\n[[fault]]\nkind = \"node-crash\"\nnodes = \"all\"\nat_s = 10\nduration_s = 80\n[checks]\nconverge_within_s = 10\n")).unwrap();
        assert_eq!(
            err(with("[checks]\nstretch_p99_max = 0.9")),
            "checks.stretch_p99_max: is 0.9, must be >= 1 (stretch is latency over the ideal path's)"
        );
        assert_eq!(
            err(with("[checks]\nrmr_max = -0.1")),
            "checks.rmr_max: is -0.1, must be >= 0"
        );
        assert_eq!(
            err(with("[checks]\nconverge_within_s = 0")),
            "checks.converge_within_s: must be > 0"
        );
    }

    /// `reroute_within_rtt` measures events published during a `measure` fault; without
    /// one it was accepted and then failed every run with "0 ms within bound".
    #[test]
    fn a_reroute_bound_without_a_measured_fault_is_refused() {
        let fault = |measure: bool| {
            format!(
                "[[fault]]\nkind = \"partition\"\na = {{ regions = [\"aws:us-east-1\"] }}\n\
                 b = \"rest\"\nat_s = 10\nduration_s = 10\nmeasure = {measure}\n\
                 [checks]\nreroute_within_rtt = 2\n"
            )
        };
        let refused = "checks.reroute_within_rtt: needs a partition or link-degradation fault \
                       with measure = true: the check bounds the extra delay of events \
                       published during such a fault, and without one there is nothing to \
                       measure";
        assert_eq!(err(with("[checks]\nreroute_within_rtt = 2")), refused);
        assert_eq!(err(with(&fault(false))), refused);
        let s = with(&fault(true)).unwrap();
        assert_eq!(s.checks.reroute_within_rtt, Some(2.0));
    }

    /// A residency class may name a jurisdiction the topology has no node in (a bundle
    /// written for a larger fabric), not one that neither the catalog nor a node knows.
    #[test]
    fn a_class_naming_an_unknown_jurisdiction_is_refused() {
        let class = |jurisdictions: &str| {
            let text = BASE.replacen(
                "payload_bytes = 100",
                "payload_bytes = 100\nclassification = \"open\"",
                1,
            );
            parse(&format!(
                "{text}\n[policy.classes.open]\nanywhere = true\n\
                 [policy.classes.held]\njurisdictions = {jurisdictions}\ntransit = \"forbidden\"\n"
            ))
        };
        assert_eq!(
            err(class("[\"EU\", \"ZZ\"]")),
            "policy.classes.held.jurisdictions[1]: \"ZZ\" is neither a jurisdiction of the \
             region catalog (AE, AU, BR, CA, EU, IN, JP, SG, UK, US, ZA) nor one a node of the \
             topology claims"
        );
        // JP is in the catalog; no node of this topology is there.
        class("[\"JP\"]").unwrap();
        class("[\"EU\", \"US\"]").unwrap();
    }

    #[test]
    fn baselines_are_checked() {
        let s = with("[baselines]\nrandom-gossip = { fanout = 6 }").unwrap();
        assert_eq!(s.baselines, [Baseline::RandomGossip { fanout: 6 }]);
        assert_eq!(
            err(with("[baselines]\nrandom-gossip = { fanout = 7 }")),
            "baselines.random-gossip.fanout: is 7, must be below the node count (7): a node \
             forwards to others, not itself"
        );
        assert_eq!(
            err(with("[baselines]\nrandom-gossip = { fanout = 0 }")),
            "baselines.random-gossip.fanout: must be at least 1"
        );
        assert_eq!(
            err(with("[baselines]\nrandom-gossip = { fanout = 65 }")),
            "baselines.random-gossip.fanout: 65 is over the limit FANOUT_MAX = 64"
        );
        assert!(
            err(with("[baselines]\nflooding = \"yes\"")).starts_with(
                "baselines.flooding: invalid type: string \"yes\", expected a boolean"
            )
        );
    }

    #[test]
    fn too_many_faults_are_refused() {
        let faults: String = (0..=FAULTS_MAX)
            .map(|_| fault_with("kind = \"partition\"\na = { clouds = [\"gcp\"] }\nb = \"rest\""))
            .collect();
        assert_eq!(
            err(with(&faults)),
            "fault: 257 entries is over the limit FAULTS_MAX = 256"
        );
    }

    #[test]
    fn docs_example_is_the_example_file() {
        let docs = include_str!("../../docs/sim.md");
        let example = include_str!("../scenarios/example.toml");
        let start = docs.find("### 2.11 Complete example").unwrap();
        let block = &docs[start..];
        let open = block.find("```toml\n").unwrap() + "```toml\n".len();
        let close = block[open..].find("```\n").unwrap();
        assert_eq!(&block[open..open + close], example);
        // The node listing under it.
        let s = parse(example).unwrap();
        let name = |i: u32| s.topology.node(NodeIndex(i)).unwrap().name.clone();
        let listed = [
            (0, "aws:ap-northeast-1/0"),
            (2, "aws:eu-west-1/0"),
            (5, "aws:us-east-1/0"),
            (8, "azure:eastus2/0"),
            (10, "azure:westeurope/0"),
            (12, "gcp:europe-west3/0"),
            (14, "gcp:us-central1/0"),
            (16, "ibm:eu-gb/0"),
            (17, "factory-lyon/0"),
            (19, "store-zurich/0"),
        ];
        for (i, expected) in listed {
            assert_eq!(name(i), expected);
        }
        assert_eq!(s.topology.len(), 20);
    }

    #[test]
    fn parsing_is_deterministic() {
        let text = include_str!("../scenarios/example.toml");
        assert_eq!(parse(text).unwrap(), parse(text).unwrap());
    }
}
