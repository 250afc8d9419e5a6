//! Latency-aware routing inside the mesh core: link probes, link-state gossip, the region
//! graph, source-routed relays and failover. The algorithms are `weft-routing`'s (RTT
//! estimation, Vivaldi coordinates, constrained Dijkstra); this module holds the per-node
//! state that feeds them and turns their answers into pushes. Link records are kept here,
//! by node, and checked by [`LinkRecord::validate`] (the limits `weft-routing`'s
//! `LinkStateDb` applies): the region graph is built from them region by region, and a
//! second copy in a `LinkStateDb`, which nothing read, cost a twentieth of a 1000-node
//! simulation.
//!
//! # How an event finds its path
//!
//! Dissemination works on two levels (see `node.rs`): inside a region a rendezvous tree,
//! between regions one push per destination region to that region's *root* for the event's
//! origin. Which regions a push goes to first, and which it is relayed through, is decided
//! here, over a graph whose vertices are regions:
//!
//! - the edges out of this node's region are this node's own measurements (RTT estimators
//!   fed by probes and by the transport), minus regions whose direct link just failed;
//! - every other edge is the median of what the nodes of one region report for the other
//!   (link-state records, gossiped), or, for pairs nobody measured, the median distance
//!   between the two regions' network coordinates;
//! - a transit region's outgoing edges weigh [`TRANSIT_COST_PCT`] percent of their latency,
//!   so a relay is taken only when it saves a margin over the direct link (estimates within
//!   a few percent of each other do not flap the path; the RTT estimators' own hysteresis
//!   does the rest);
//! - transit is allowed only through regions the replication filter admits for the event
//!   (residency, issue 6), so the path is the shortest *allowed* one.
//!
//! The publisher computes the shortest-path tree from its region and sends each first-hop
//! region's root a push naming the rest of that subtree ([`RelayHop`]s): *source routing*,
//! so a relay needs no view of the graph that agrees with the publisher's; it forwards to
//! the roots of the regions named under it, even for events it already holds.
//!
//! # Failover
//!
//! Pushes across regions ask for a [`super::Message::PushAck`]. If none arrives within the
//! link's RTT timeout ([`rto_us`]), the sender marks its direct link to that region failed,
//! recomputes the tree without it and sends the same events to the regions the lost push
//! was for along the next-best path: traffic is on the new path one RTT timeout after the
//! old one broke. A failed link comes back when a probe to the region is answered (failed
//! regions are probed every tick) or a late acknowledgement arrives.
//!
//! # Link state
//!
//! Every node probes the entry member of each other region (the root of its own tree
//! there) a few regions per tick, and gossips a [`LinkRecord`]: its measured link RTTs (at
//! most [`LINKS_PER_REGION_MAX`] per region, [`LINKS_PER_NODE_MAX`] in all), its Vivaldi
//! coordinate, and a small status (name, HTTP address, counters) for dashboards. Records
//! spread by gossip with a transmit budget (news first: a node's own records, a node's
//! first record, and versions that change what routing reads, see `material`) plus a slow
//! rotation through everything held, so late joiners fill in and versions that only drift
//! (jitter, coordinates, status counters) arrive too. A gossip round sends a digest (node
//! and version of each record, [`super::Message::LinkDigest`]) and the peer pulls the
//! records it would take ([`super::Message::LinkPull`], answered with
//! [`super::Message::Links`]): a record of a thousand-node mesh is some 2 KB against 40
//! bytes for its digest entry, and most records a round names are ones the peer holds
//! (pushing whole records, link state was 56 % of a 1000-node simulation's bytes). Each node keeps the records of at
//! most [`RECORDS_PER_REGION_MAX`] nodes per region: the region graph needs a sample of
//! each region, not every node, and a thousand-node mesh would otherwise hold a million
//! records per simulated run. The sample is the same on every node: the
//! [`RECORDS_PER_REGION_MAX`] live members of the region with the lowest keys (keys are
//! random, so this is a random sample), so every node that takes a record passes it on to
//! nodes that keep it too, and the records of the other nodes of a large region do not
//! spread at all. Records come only from authenticated mesh peers; they are not signed by
//! the node they describe (a trusted node could misreport another's links).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use weft_routing::linkstate::LINKS_PER_NODE_MAX;
use weft_routing::rtt::RTT_US_MAX;
use weft_routing::{Coordinate, LatencyGraph, RttEstimator, VivaldiClient};

use crate::envelope::{KeyBuildHasher, OriginKey};
use crate::mesh::member::{MemberInfo, MemberMap};
use crate::mesh::timers::Micros;

/// Weight of a transit region's outgoing edges, percent of their latency: a relay path
/// must be about 5% faster than the direct one to be taken. (`weft_routing::best_relay`
/// asks for 15%, right for a single relay choice made once; here the margin also bounds
/// the stretch a path may keep, and 15% would allow up to 1.18.)
pub const TRANSIT_COST_PCT: u64 = 105;
/// How long the region graph may lag behind drifting estimates it reads and newly gossiped
/// records with changed links (including other nodes' reports of links they lost): it is
/// rebuilt at the first use after this much time, not on every change. A membership
/// change, this node's own link failing or recovering and an RTT level shift it measured
/// rebuild it at once. Records
/// and estimates change several times a second per node on a busy mesh, and rebuilding
/// the graph (and every tree over it) before each publish after such a change was a tenth
/// of a simulation's time, and cost the node the same.
pub const GRAPH_REFRESH_US: Micros = 100_000;
/// Most link records in one gossip message.
pub const LINK_RECORDS_PER_MESSAGE_MAX: usize = 16;
/// Most links a node reports per destination region (its nearest there).
pub const LINKS_PER_REGION_MAX: usize = 3;
/// Most nodes per region whose records a node keeps: those with the lowest keys among
/// the region's live members (module docs, [`sampled`]).
pub const RECORDS_PER_REGION_MAX: usize = 16;
/// Longest node name in a record, bytes.
pub const NODE_NAME_LEN_MAX: usize = 64;
/// Longest HTTP address in a record, bytes.
pub const NODE_HTTP_LEN_MAX: usize = 128;
/// Most times one push's path is rerouted after failed links.
pub const REROUTES_MAX: u8 = 2;
/// Most relay hops named in one push.
pub const RELAY_HOPS_MAX: usize = 64;
/// Most cross-region pushes waiting for their acknowledgement; beyond it pushes go out
/// without one (counted: `Stats::acks_untracked`) and rely on GRAFT and anti-entropy.
pub const PENDING_ACKS_MAX: usize = 4_096;
/// Most timed-out pushes remembered so that a late acknowledgement still counts (as an RTT
/// sample and as proof the link works).
pub const LATE_ACKS_MAX: usize = 1_024;
/// Most probes in flight.
pub const PROBES_OUT_MAX: usize = 1_024;
/// Most records waiting in the hot gossip queue (news: see `material`; this node's own
/// record is let in over the bound).
pub const HOT_RECORDS_MAX: usize = 256;
/// Gossip rounds a node names another node's record that is news to it (its own: log2 of
/// the mesh's size, plus one). Each round's digest goes to `link_fanout` (2) peers: six
/// digests naming it per node that takes it leave about e^-6 (a quarter of a percent) of
/// the nodes for the rotation to reach (every node keeps the same sample of records, [`sampled`]); the full
/// budget, 22 pushes each at 1000 nodes, kept every link-state message full for minutes
/// while a large mesh formed (docs/sim-speed.md).
pub const RELAY_ROUNDS: u32 = 3;
/// Most link-record pulls a node remembers ([`super::Message::LinkPull`]; entries go when
/// the record is taken, or are swept once older than [`LINK_PULL_RETRY_US`] when the map
/// is full): several peers' digests naming the same version fetch it once.
pub const LINK_PULLS_MAX: usize = 1_024;
/// How long a link-record pull waits for its answer (a datagram, which may be lost) before
/// another digest naming the record may ask again.
pub const LINK_PULL_RETRY_US: Micros = 2_000_000;
/// Whether `key` is in its region's sample of records: among the
/// [`RECORDS_PER_REGION_MAX`] lowest keys of `region_list` (the region's live members,
/// sorted by key). Every node draws the same sample from the same membership, so a record
/// is kept by every node that keeps any record of its region, and news reaches all of
/// them; "the first records to arrive" made each node keep another sample, and a record
/// was kept by a median of a fifth of the nodes in a thousand-node mesh (docs/sim-speed.md).
/// A node also keeps its own record, whether or not it is in its region's sample.
pub fn sampled(region_list: &[OriginKey], key: &OriginKey) -> bool {
    region_list
        .binary_search(key)
        .is_ok_and(|at| at < RECORDS_PER_REGION_MAX)
}

/// Smallest RTT timeout, microseconds.
pub const RTO_US_MIN: Micros = 10_000;
/// RTT timeout for a link never measured, microseconds (the slowest measured pair is about
/// 330 ms).
pub const RTO_US_UNKNOWN: Micros = 1_000_000;

/// One region a relayed push must still reach: the region and the position of its parent
/// hop in the same list (`None`: the receiver of the push is the parent).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RelayHop {
    /// Region id, e.g. `aws:us-east-1`.
    pub region: SmolStr,
    /// Index of the parent hop in the list; always below this hop's own index.
    pub parent: Option<u8>,
}

/// What a node says about itself besides its links (for dashboards and `weft peers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Operator-chosen node name.
    pub name: String,
    /// Where its HTTP API listens (`host:port`), or empty.
    pub http: String,
    /// Events this node originated.
    pub published: u64,
    /// Events it holds.
    pub stored: u64,
    /// Events it knows of (announced) but does not hold yet: its replication lag.
    pub missing: u64,
    /// The policy epoch it enforces.
    pub policy_epoch: u64,
}

/// A node's gossiped link state: its measured RTTs, coordinate and status, versioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkRecord {
    /// The node described.
    pub node: [u8; 32],
    /// Grows with every new record of the node (generation in the high 32 bits, so a
    /// restarted node's records replace its old ones).
    pub version: u64,
    /// Its Vivaldi coordinate.
    pub coord: Coordinate,
    /// Its measured RTT estimates, microseconds, by peer key.
    pub links: Vec<([u8; 32], u32)>,
    /// Its status.
    pub status: NodeStatus,
}

/// Whether a record taken is news, for the hot gossip queue (`Router::store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum News {
    /// This node's own record: always pushed.
    Own,
    /// A node's first record here, or a [`material`] change.
    Yes,
    /// Drift: kept, and passed on by the rotation only.
    No,
}

/// Whether a newer record of a node says something an older one (the last taken as news)
/// did not, for routing: a restart (a new generation), another policy epoch, a first real
/// coordinate (a node's first record carries the origin), links added or dropped, or a
/// link (compared per region of the peers, since which of a region's near-equal peers are
/// the nearest three changes with jitter; a peer swapped for another of its region as near
/// is no news) whose RTT moved by more than an eighth and a millisecond. The level shifts
/// and failures routing reacts to move RTTs by a quarter or more; the further drift of a
/// coordinate and new status counters are no news.
///
/// `region_of` names a peer's region by anything ordered as the region names are (the
/// names themselves, or their indices in the sorted name list).
fn material<R: Ord + Copy>(
    old: &LinkRecord,
    new: &LinkRecord,
    region_of: impl Fn(&[u8; 32]) -> Option<R>,
) -> bool {
    fn moved(a: u32, b: u32) -> bool {
        let d = a.abs_diff(b);
        d > 1_000 && u64::from(d) * 8 > u64::from(a.min(b))
    }
    let placed = |r: &LinkRecord| r.coord != Coordinate::origin();
    if old.version >> 32 != new.version >> 32
        || old.status.policy_epoch != new.status.policy_epoch
        || placed(old) != placed(new)
        || old.links.len() != new.links.len()
    {
        return true;
    }
    if old.links.iter().zip(&new.links).all(|(a, b)| a.0 == b.0) {
        return old
            .links
            .iter()
            .zip(&new.links)
            .any(|(a, b)| moved(a.1, b.1));
    }
    let by_region = |r: &LinkRecord| {
        let mut v: Vec<(Option<R>, u32)> = r
            .links
            .iter()
            .map(|(k, rtt)| (region_of(k), *rtt))
            .collect();
        v.sort_unstable();
        v
    };
    by_region(old)
        .iter()
        .zip(&by_region(new))
        .any(|(a, b)| a.0 != b.0 || moved(a.1, b.1))
}

impl LinkRecord {
    /// Checks the limits of a record received from a peer.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.links.len() > LINKS_PER_NODE_MAX {
            return Err("links over LINKS_PER_NODE_MAX");
        }
        if self.status.name.len() > NODE_NAME_LEN_MAX {
            return Err("status.name over NODE_NAME_LEN_MAX");
        }
        if self.status.http.len() > NODE_HTTP_LEN_MAX {
            return Err("status.http over NODE_HTTP_LEN_MAX");
        }
        if self.coord.validate().is_err() {
            return Err("coord invalid");
        }
        if self.links.iter().any(|(k, _)| *k == self.node) {
            return Err("links name the node itself");
        }
        // Nodes build their records sorted by peer; strictly ascending also means no peer
        // twice.
        if !self.links.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err("links not sorted by peer, or a peer named twice");
        }
        if self
            .links
            .iter()
            .any(|(_, rtt)| u64::from(*rtt) > RTT_US_MAX)
        {
            return Err("a link's RTT over RTT_US_MAX");
        }
        Ok(())
    }
}

/// RTT timeout for a link whose RTT estimate is `rtt_us`: the estimate plus a quarter and
/// 5 ms of slack for jitter and the receiver's work, at least [`RTO_US_MIN`].
pub fn rto_us(rtt_us: Option<Micros>) -> Micros {
    match rtt_us {
        Some(r) => (r + r / 4 + 5_000).max(RTO_US_MIN),
        None => RTO_US_UNKNOWN,
    }
}

/// A cross-region push waiting for its acknowledgement.
#[derive(Debug, Clone)]
pub(crate) struct PendingAck {
    pub(crate) to: OriginKey,
    pub(crate) region: SmolStr,
    pub(crate) events: Vec<std::sync::Arc<crate::envelope::Event>>,
    pub(crate) relay: Vec<RelayHop>,
    pub(crate) reroutes: u8,
    pub(crate) sent_us: Micros,
    /// The key of its timeout in the node's timer map.
    pub(crate) timer: super::timers::TimerKey,
}

/// What one RTT sample did to a peer's published estimate ([`Router::rtt_sample`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sampled {
    /// A new estimate was published. (A sample past `RTT_US_MAX` after a level shift clears
    /// the estimate without publishing one: `before` and `after` differ then too.)
    pub(crate) changed: bool,
    /// The estimate before the sample.
    pub(crate) before: Option<Micros>,
    /// The estimate after it.
    pub(crate) after: Option<Micros>,
    /// The sample restarted the estimate (a level shift), and which way.
    pub(crate) shifted: Option<Shift>,
}

/// Which way a level shift restarted an RTT estimate ([`Router::rtt_sample`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shift {
    /// Two samples in a row beyond the RTT timeout: the path got slower.
    Up,
    /// A sample under three quarters of the estimate: the path healed.
    Down,
}

/// How a region-graph edge was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeSource {
    /// This node's own measurement.
    Measured,
    /// The median of other nodes' gossiped reports.
    Reported,
    /// Network coordinates.
    Estimated,
}

/// One region's current path from this node, for `/v1/mesh/routes`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionRoute {
    /// Destination region.
    pub region: String,
    /// Regions from this node's to the destination, both included.
    pub path: Vec<String>,
    /// Estimated one-way latency along the path, microseconds.
    pub latency_us: Micros,
    /// Estimated one-way latency of the direct link, if known and usable.
    pub direct_us: Option<Micros>,
    /// Whether the direct link is currently marked failed.
    pub direct_failed: bool,
    /// How the first hop's latency was obtained.
    pub first_hop: EdgeSource,
    /// Other first hops, with the latency through them, best first.
    pub alternatives: Vec<(Vec<String>, Micros)>,
}

/// The region graph as built from the current link state.
#[derive(Debug, Clone, PartialEq)]
struct RegionGraph {
    names: Vec<String>,
    mine: u16,
    /// True round-trip latency per directed edge `(a, b)`, and where it came from.
    edges: BTreeMap<(u16, u16), (Micros, EdgeSource)>,
}

/// What the region graph needs of the membership, derived once per membership change
/// instead of once per graph build (a build follows nearly every gossiped link record and
/// RTT change; looking each reported peer up in the member map and its region name in the
/// sorted names was most of `build_graph`).
#[derive(Debug, Clone, PartialEq)]
struct Topology {
    /// Region names, sorted (the region indices).
    names: Vec<String>,
    /// This node's region index.
    mine: u16,
    /// Region index of every member and of this node.
    region_of: std::collections::HashMap<OriginKey, u16, KeyBuildHasher>,
    /// Per region index: this node's entry member there ([`entry_of`]).
    entries: Vec<Option<OriginKey>>,
}

impl Topology {
    /// The region index of `key` as the member map places it: none for this node (`me`),
    /// which the member map does not hold. Indices follow the region names' order, so
    /// grouping and ordering by them agrees with grouping and ordering by name.
    fn member_region(&self, key: &OriginKey, me: &OriginKey) -> Option<u16> {
        (key != me)
            .then(|| self.region_of.get(key).copied())
            .flatten()
    }

    fn new(
        me: &MemberInfo,
        members: &MemberMap,
        regions: &BTreeMap<String, Vec<OriginKey>>,
    ) -> Self {
        let names: Vec<String> = regions.keys().cloned().collect();
        let index = |r: &str| names.binary_search_by(|n| n.as_str().cmp(r)).ok();
        let mine = index(&me.region).unwrap_or(0) as u16;
        let mut region_of: std::collections::HashMap<OriginKey, u16, KeyBuildHasher> =
            std::collections::HashMap::with_capacity_and_hasher(
                members.len() + 1,
                KeyBuildHasher::default(),
            );
        // Consecutive members often share a region: remember the last name looked up.
        let mut last: Option<(&str, Option<usize>)> = None;
        for (k, m) in members {
            let i = match last {
                Some((name, i)) if name == m.region => i,
                _ => {
                    let i = index(&m.region);
                    last = Some((&m.region, i));
                    i
                }
            };
            if let Some(i) = i {
                region_of.insert(*k, i as u16);
            }
        }
        region_of.insert(me.node_key(), mine);
        let entries = names
            .iter()
            .map(|name| {
                regions
                    .get(name)
                    .and_then(|list| entry_of(list, &me.node_key()))
            })
            .collect();
        Self {
            names,
            mine,
            region_of,
            entries,
        }
    }
}

/// A shortest-path tree over regions from this node's region.
#[derive(Debug, Clone)]
pub(crate) struct RegionTree {
    /// Parent of each region index on its path (`None` for the root and unreachable ones).
    parent: Vec<Option<u16>>,
    reachable: Vec<bool>,
}

/// See [`Router::reported`].
#[derive(Debug, Clone, Default)]
struct ReportedLinks {
    /// The record whose samples are in `by_pair`, per node with any: its samples are
    /// derived again when it is replaced (the topology they were derived under lives as
    /// long as this value: a membership change drops both, `Router::members_changed`).
    /// Held rather than the samples themselves: a record is shared with the records map
    /// (and, in the simulator, with every node that took it), where a node's samples were
    /// half a kilobyte per record, 230 MB over a 1000-node mesh.
    by_record: BTreeMap<OriginKey, Arc<LinkRecord>>,
    /// Per region pair, every reported RTT, ascending.
    by_pair: BTreeMap<u32, Vec<u32>>,
    /// Per region pair, both ways, the median of its reports.
    edges: BTreeMap<(u16, u16), (Micros, EdgeSource)>,
}

impl ReportedLinks {
    /// Built from every record at once (after a membership change): each record's samples,
    /// then all of them sorted together and cut into region pairs. The same lists, medians
    /// and edges as [`ReportedLinks::update`] record by record from empty, which inserts
    /// each sample into its pair's sorted list one at a time: over the few hundred records
    /// of a large mesh that was 12 % of a 300-node simulation's instructions (each node
    /// rebuilds after membership changes, and again at its next publish).
    fn new<'a>(
        records: impl IntoIterator<Item = (&'a OriginKey, &'a Arc<LinkRecord>)>,
        topology: &Topology,
        me: &MemberInfo,
    ) -> Self {
        let mut out = Self::default();
        let mut all = Vec::new();
        for (key, record) in records {
            let before = all.len();
            Self::samples_into(&mut all, *key, Some(record), topology, me);
            if all.len() > before {
                out.by_record.insert(*key, Arc::clone(record));
            }
        }
        all.sort_unstable();
        for group in all.chunk_by(|x, y| x >> 32 == y >> 32) {
            let pair = (group[0] >> 32) as u32;
            out.by_pair
                .insert(pair, group.iter().map(|s| *s as u32).collect());
            out.set_edges(pair);
        }
        out
    }

    /// Sets both edges of `pair` to the median of its reports, or removes the pair and
    /// its edges when it has none left.
    fn set_edges(&mut self, pair: u32) {
        let (a, b) = ((pair >> 16) as u16, pair as u16);
        match self.by_pair.get(&pair) {
            Some(rtts) if !rtts.is_empty() => {
                let w = Micros::from(rtts[rtts.len() / 2]);
                self.edges.insert((a, b), (w, EdgeSource::Reported));
                self.edges.insert((b, a), (w, EdgeSource::Reported));
            }
            _ => {
                self.by_pair.remove(&pair);
                self.edges.remove(&(a, b));
                self.edges.remove(&(b, a));
            }
        }
    }

    /// What `key`'s record reports of links between regions, as `pair << 32 | rtt`,
    /// ascending (nothing for this node's own record or none).
    fn samples(
        key: OriginKey,
        record: Option<&LinkRecord>,
        topology: &Topology,
        me: &MemberInfo,
    ) -> Vec<u64> {
        let mut samples = Vec::new();
        Self::samples_into(&mut samples, key, record, topology, me);
        samples
    }

    /// [`ReportedLinks::samples`], appended to `out` (sorted among themselves).
    fn samples_into(
        out: &mut Vec<u64>,
        key: OriginKey,
        record: Option<&LinkRecord>,
        topology: &Topology,
        me: &MemberInfo,
    ) {
        let start = out.len();
        let region_of = |k: &OriginKey| -> Option<u16> { topology.region_of.get(k).copied() };
        if let Some(record) = record
            && key != me.node_key()
            && let Some(a) = region_of(&key)
        {
            for (peer, rtt) in &record.links {
                if let Some(b) = region_of(&OriginKey(*peer))
                    && a != b
                {
                    let pair = (u32::from(a.min(b)) << 16) | u32::from(a.max(b));
                    out.push((u64::from(pair) << 32) | u64::from(*rtt));
                }
            }
            out[start..].sort_unstable();
        }
    }

    /// Replaces what `key`'s record said (nothing, if the record is gone). This node's own
    /// record is not a report: its own view enters the graph as measured edges. A new
    /// record mostly repeats the old one's links: only the samples that differ are moved,
    /// and only the pairs they belong to get a new median.
    fn update(
        &mut self,
        key: OriginKey,
        record: Option<&Arc<LinkRecord>>,
        topology: &Topology,
        me: &MemberInfo,
    ) {
        let samples = Self::samples(key, record.map(|r| &**r), topology, me);
        // The held record's samples, derived under the same topology as when it was taken.
        let old = Self::samples(key, self.by_record.remove(&key).as_deref(), topology, me);
        // Both ascending: walk them side by side, moving what is in one only.
        let (mut i, mut j) = (0, 0);
        let mut touched: Vec<u32> = Vec::new();
        loop {
            match (old.get(i).copied(), samples.get(j).copied()) {
                (None, None) => break,
                (Some(o), Some(n)) if o == n => {
                    i += 1;
                    j += 1;
                }
                (Some(o), n) if n.is_none_or(|n| o < n) => {
                    let (pair, rtt) = ((o >> 32) as u32, o as u32);
                    if let Some(list) = self.by_pair.get_mut(&pair)
                        && let Ok(at) = list.binary_search(&rtt)
                    {
                        list.remove(at);
                    }
                    touched.push(pair);
                    i += 1;
                }
                (_, Some(n)) => {
                    let (pair, rtt) = ((n >> 32) as u32, n as u32);
                    let list = self.by_pair.entry(pair).or_default();
                    let at = list.partition_point(|x| *x <= rtt);
                    list.insert(at, rtt);
                    touched.push(pair);
                    j += 1;
                }
                (Some(_), None) => unreachable!("taken by the arm above"),
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for pair in touched {
            self.set_edges(pair);
        }
        if !samples.is_empty()
            && let Some(record) = record
        {
            self.by_record.insert(key, Arc::clone(record));
        }
    }
}

/// The middle of `v` (the upper one of an even count); `v` is not empty.
fn median(v: &mut [Micros]) -> Micros {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Edges for the region pairs nobody reported: the median distance between up to three
/// record coordinates of each region. Returns those coordinates per region (coordinates
/// move with every record, so they are read afresh for each build).
fn estimate_unreported<'a>(
    edges: &mut BTreeMap<(u16, u16), (Micros, EdgeSource)>,
    records: impl IntoIterator<Item = (&'a OriginKey, &'a Arc<LinkRecord>)>,
    topology: &Topology,
) -> BTreeMap<u16, Vec<Coordinate>> {
    let mut coords: BTreeMap<u16, Vec<Coordinate>> = BTreeMap::new();
    for (k, rec) in records {
        if let Some(&r) = topology.region_of.get(k) {
            let list = coords.entry(r).or_default();
            if list.len() < 3 {
                list.push(rec.coord);
            }
        }
    }
    for (a, ca) in &coords {
        for (b, cb) in &coords {
            if a == b || edges.contains_key(&(*a, *b)) {
                continue;
            }
            let mut v: Vec<Micros> = ca
                .iter()
                .flat_map(|x| cb.iter().map(move |y| x.distance_us(y)))
                .collect();
            if !v.is_empty() {
                edges.insert((*a, *b), (median(&mut v), EdgeSource::Estimated));
            }
        }
    }
    coords
}

/// The hot queue of link records ([`Router::gossip_batch`]): how many times each was sent,
/// by key and ordered by (count, key), so a gossip round reads the fewest-sent first off
/// the order instead of collecting and selecting from the whole queue (up to
/// [`HOT_RECORDS_MAX`] records, every round: a twentieth of an idle 1000-node mesh's timer
/// work).
#[derive(Debug, Default)]
struct HotQueue {
    by_key: BTreeMap<OriginKey, u32>,
    by_count: BTreeSet<(u32, OriginKey)>,
}

impl HotQueue {
    fn len(&self) -> usize {
        self.by_key.len()
    }

    fn contains_key(&self, key: &OriginKey) -> bool {
        self.by_key.contains_key(key)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    #[cfg(test)]
    fn get(&self, key: &OriginKey) -> Option<&u32> {
        self.by_key.get(key)
    }

    #[cfg(test)]
    fn clear(&mut self) {
        self.by_key.clear();
        self.by_count.clear();
    }

    /// Sets `key`'s count, queueing it if absent.
    fn insert(&mut self, key: OriginKey, sent: u32) {
        if let Some(old) = self.by_key.insert(key, sent) {
            self.by_count.remove(&(old, key));
        }
        self.by_count.insert((sent, key));
    }

    fn remove(&mut self, key: &OriginKey) {
        if let Some(old) = self.by_key.remove(key) {
            self.by_count.remove(&(old, *key));
        }
    }

    /// (count, key), fewest sent first, keys breaking ties.
    fn fewest_sent(&self) -> impl Iterator<Item = (u32, OriginKey)> + '_ {
        self.by_count.iter().copied()
    }

    /// Both orders hold the same entries.
    fn consistent(&self) -> bool {
        self.by_key.len() == self.by_count.len()
            && self
                .by_count
                .iter()
                .all(|(n, k)| self.by_key.get(k) == Some(n))
    }
}

/// A link record held ([`Router`]), with what is kept beside it.
#[derive(Debug, Clone)]
struct HeldRecord {
    record: Arc<LinkRecord>,
    /// When it was taken.
    received: Micros,
    /// The last of its node's records taken as news, if any: a newer one is news when it
    /// differs from this one materially, so drift that adds up counts (`material`).
    news_base: Option<Arc<LinkRecord>>,
}

/// The records of `held`, shared, in key order (what the graph's builders read).
fn record_arcs(
    held: &BTreeMap<OriginKey, HeldRecord>,
) -> impl Iterator<Item = (&OriginKey, &Arc<LinkRecord>)> {
    held.iter().map(|(k, h)| (k, &h.record))
}

/// Per-node routing state (module docs).
pub(crate) struct Router {
    pub(crate) vivaldi: VivaldiClient,
    rtt: BTreeMap<OriginKey, RttEstimator>,
    /// The records held, each with when it was taken and its news base: one tree (three
    /// beside each other were 43 MB of a 1000-node simulation, and three lookups a record).
    records: BTreeMap<OriginKey, HeldRecord>,
    hot: HotQueue,
    cold_cursor: Option<OriginKey>,
    /// Records asked for by a pull and not yet taken: node -> (version named, asked at).
    pulls: BTreeMap<OriginKey, (u64, Micros)>,
    own_counter: u32,
    pub(crate) own_dirty: bool,
    pub(crate) own_forced: bool,
    pub(crate) own_published_us: Option<Micros>,
    /// Regions whose direct link from this node failed, since when.
    pub(crate) failed: BTreeMap<String, Micros>,
    pub(crate) probes: BTreeMap<u64, (OriginKey, Micros)>,
    pub(crate) probe_nonce: u64,
    pub(crate) probe_cursor: usize,
    /// Looked up by acknowledgement id only (never walked): a hash map, whose entries stay
    /// put, where a tree map shifted its ~140-byte entries on every removal.
    pub(crate) pending: rustc_hash::FxHashMap<u64, PendingAck>,
    /// Pushes that timed out: id -> (peer, sent at).
    pub(crate) late: BTreeMap<u64, (OriginKey, Micros)>,
    pub(crate) ack_seq: u64,
    /// Pushes awaiting an acknowledgement that the driver has not let go of yet
    /// (`MeshConfig::holds_transmits`; `Node::transmits_released` empties it).
    pub(crate) held_acks: Vec<u64>,
    graph: Option<RegionGraph>,
    /// When `graph` was built.
    graph_built_us: Micros,
    /// An estimate or a record `graph` was built from changed since (see
    /// [`GRAPH_REFRESH_US`]).
    graph_stale: bool,
    trees: BTreeMap<Vec<bool>, RegionTree>,
    /// Grows with every graph build that changed the graph, and with the first build after
    /// [`Router::invalidate`].
    graph_epoch: u64,
    /// `graph` has an edge estimated from coordinates (see [`Router::graph_reads_estimate`]).
    graph_uses_coords: bool,
    /// Where an estimate makes a peer near (the mesh's `near_region_rtt_us`).
    pub(crate) near_rtt_us: Micros,
    /// Grows whenever a peer's estimate crosses `near_rtt_us` (either way) or a near peer
    /// is forgotten: which regions are near changes only then (or with the membership).
    pub(crate) near_epoch: u64,
    /// Derived from the membership; dropped by [`Router::members_changed`].
    topology: Option<Topology>,
    /// Every other node's reported links by region pair and their medians (the edges the
    /// records give), kept up to date one changed record at a time (`changed_records`)
    /// instead of regrouping every link of every record per build (a few records arrive
    /// before nearly every build, each mostly repeating its links). Dropped with the
    /// topology its region indices come from.
    reported: Option<ReportedLinks>,
    /// Records stored with changed links, or dropped, since `reported` was brought up to
    /// date.
    changed_records: BTreeSet<OriginKey>,
    pub(crate) status: NodeStatus,
}

impl Router {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            vivaldi: VivaldiClient::new(seed),
            rtt: BTreeMap::new(),
            records: BTreeMap::new(),
            hot: HotQueue::default(),
            cold_cursor: None,
            pulls: BTreeMap::new(),
            own_counter: 0,
            own_dirty: true,
            own_forced: false,
            own_published_us: None,
            failed: BTreeMap::new(),
            probes: BTreeMap::new(),
            probe_nonce: 0,
            probe_cursor: 0,
            pending: rustc_hash::FxHashMap::default(),
            late: BTreeMap::new(),
            ack_seq: 0,
            held_acks: Vec::new(),
            graph: None,
            graph_built_us: 0,
            graph_stale: false,
            trees: BTreeMap::new(),
            graph_epoch: 0,
            graph_uses_coords: true,
            near_rtt_us: 0,
            near_epoch: 0,
            topology: None,
            reported: None,
            changed_records: BTreeSet::new(),
            status: NodeStatus::default(),
        }
    }

    /// Every peer's RTT estimator, ascending by key.
    pub(crate) fn estimators(&self) -> impl Iterator<Item = (&OriginKey, &RttEstimator)> {
        self.rtt.iter()
    }

    /// The published RTT estimate to `peer`.
    pub(crate) fn rtt_us(&self, peer: &OriginKey) -> Option<Micros> {
        self.rtt.get(peer).and_then(RttEstimator::estimate_us)
    }

    /// The RTT to `peer`: measured if it was, else estimated from its gossiped network
    /// coordinate (once this node's own coordinate has learned something).
    pub(crate) fn estimate_us(&self, peer: &OriginKey) -> Option<Micros> {
        self.rtt_us(peer).or_else(|| self.coord_estimate_us(peer))
    }

    /// The RTT to `peer` estimated from network coordinates (its record's and this node's).
    pub(crate) fn coord_estimate_us(&self, peer: &OriginKey) -> Option<Micros> {
        let coord = self.records.get(peer)?.record.coord;
        (self.vivaldi.updates() > 0).then(|| self.vivaldi.estimate_rtt_us(&coord))
    }

    /// Takes one RTT sample; returns what it did to the peer's published estimate.
    pub(crate) fn rtt_sample(&mut self, peer: OriginKey, rtt_us: Micros) -> Sampled {
        let estimator = self.rtt.entry(peer).or_default();
        let before = estimator.estimate_us();
        let was_near = before.is_some_and(|e| e < self.near_rtt_us);
        // Two samples in a row beyond the RTT timeout are no delayed-ACK outliers (those add
        // milliseconds): the path changed (a degraded link). One alone is not enough: a
        // push or acknowledgement lost on its reliable stream comes a retransmission (an
        // RTT) late, and under 0.1 % loss (`example.toml`) single late samples restarted
        // the estimate (and replanned every route) about 4,900 times a run, each followed
        // by a restart back down at the next sample. One under three quarters of the
        // estimate is no outlier (nothing makes a round trip faster than its path): the
        // link healed. Either way start the estimate over from the sample instead of
        // waiting for the window and the smoothing to catch up, so routing moves within two
        // samples.
        let shifted = before.and_then(|est| {
            let rto = rto_us(Some(est));
            if rtt_us > rto && estimator.last_sample_us().is_some_and(|last| last > rto) {
                Some(Shift::Up)
            } else {
                (rtt_us * 4 < est * 3).then_some(Shift::Down)
            }
        });
        if shifted.is_some() {
            *estimator = RttEstimator::new();
        }
        let changed = matches!(estimator.handle_sample(rtt_us), Ok(Some(_)));
        let after = estimator.estimate_us();
        if was_near != after.is_some_and(|e| e < self.near_rtt_us) {
            self.near_epoch += 1;
        }
        if changed {
            self.own_dirty = true;
            // A level shift replans at once; the drift of an estimate within
            // GRAPH_REFRESH_US.
            if shifted.is_some() {
                self.invalidate();
            } else if self.graph_reads_estimate(&peer) {
                self.graph_stale = true;
            }
        }
        if let Some(c) = self.records.get(&peer).map(|h| h.record.coord) {
            let first = self.vivaldi.updates() == 0;
            let _ = self.vivaldi.update(&c, rtt_us);
            // The first coordinate lets the graph estimate edges nobody measured.
            if first && self.vivaldi.updates() > 0 {
                self.graph_stale = true;
            }
        }
        Sampled {
            changed,
            before,
            after,
            shifted,
        }
    }

    /// Whether the region graph reads this node's estimate for `peer`: always while the
    /// graph has an edge estimated from coordinates (as before this rule, so that a graph
    /// estimated at startup keeps following), else only for the entry member of `peer`'s
    /// region, or for any member of a region whose entry has no estimate yet (its edge is
    /// the best estimate there). Other estimates never change the graph: no rebuild.
    fn graph_reads_estimate(&self, peer: &OriginKey) -> bool {
        if self.graph_uses_coords {
            return true;
        }
        let Some(topology) = &self.topology else {
            return true;
        };
        let Some(&region) = topology.region_of.get(peer) else {
            return false;
        };
        if region == topology.mine {
            return false;
        }
        match topology.entries.get(usize::from(region)).copied().flatten() {
            Some(entry) => entry == *peer || self.rtt_us(&entry).is_none(),
            None => true,
        }
    }

    /// Forgets a member that left.
    pub(crate) fn member_down(&mut self, peer: &OriginKey) {
        if self
            .rtt
            .remove(peer)
            .and_then(|e| e.estimate_us())
            .is_some_and(|e| e < self.near_rtt_us)
        {
            self.near_epoch += 1;
        }
        self.forget_record(peer);
    }

    /// The records held, shared (as the simulator passes them and gossip sends them), in
    /// key order.
    pub(crate) fn record_arcs(&self) -> impl Iterator<Item = (&OriginKey, &Arc<LinkRecord>)> {
        record_arcs(&self.records)
    }

    /// Whether the hot queue's two orders hold the same entries, within its bound (this
    /// node's own record may go past it by one).
    pub(crate) fn hot_consistent(&self) -> bool {
        self.hot.consistent() && self.hot.len() <= HOT_RECORDS_MAX + 1
    }

    /// Drops the record of `peer` (a member that left, or one no longer in its region's
    /// sample, [`sampled`]).
    pub(crate) fn forget_record(&mut self, peer: &OriginKey) {
        if self.records.remove(peer).is_some() {
            self.changed_records.insert(*peer);
            self.hot.remove(peer);
            self.invalidate();
        }
    }

    /// The cached region graph and trees are out of date (a membership change or a failed
    /// or recovered link: rebuilt at the next use, whatever the time).
    pub(crate) fn invalidate(&mut self) {
        self.graph = None;
        self.trees.clear();
    }

    /// The membership (or the per-region member lists) changed: everything derived from
    /// it is out of date. Callers must say so on every change of either.
    pub(crate) fn members_changed(&mut self) {
        self.topology = None;
        self.reported = None;
        self.invalidate();
    }

    /// Marks the direct link to `region` failed (true if it was not already).
    pub(crate) fn fail(&mut self, region: &str, now: Micros) -> bool {
        if self.failed.contains_key(region) {
            return false;
        }
        self.failed.insert(region.to_string(), now);
        self.own_forced = true;
        self.invalidate();
        true
    }

    /// The direct link to `region` works again.
    pub(crate) fn recover(&mut self, region: &str) -> bool {
        if self.failed.remove(region).is_some() {
            self.own_forced = true;
            self.invalidate();
            true
        } else {
            false
        }
    }

    /// All records held (this node's own included once published), each with when it
    /// was taken.
    pub(crate) fn records(&self) -> impl Iterator<Item = (&LinkRecord, Micros)> {
        self.records.values().map(|h| (&*h.record, h.received))
    }

    /// Builds this node's next record.
    pub(crate) fn own_record(&mut self, me: &MemberInfo, members: &MemberMap) -> LinkRecord {
        self.own_counter = self.own_counter.wrapping_add(1);
        let mut by_region: BTreeMap<&str, Vec<(Micros, OriginKey)>> = BTreeMap::new();
        for (k, est) in &self.rtt {
            let (Some(m), Some(r)) = (members.get(k), est.estimate_us()) else {
                continue;
            };
            if m.region != me.region && self.failed.contains_key(m.region.as_str()) {
                continue;
            }
            by_region.entry(&m.region).or_default().push((r, *k));
        }
        let mut links = Vec::new();
        for list in by_region.values_mut() {
            list.sort_unstable();
            for (r, k) in list.iter().take(LINKS_PER_REGION_MAX) {
                if links.len() < LINKS_PER_NODE_MAX {
                    links.push((k.0, u32::try_from(*r).unwrap_or(u32::MAX)));
                }
            }
        }
        links.sort_unstable();
        LinkRecord {
            node: me.key,
            version: (u64::from(me.generation) << 32) | u64::from(self.own_counter),
            coord: self.vivaldi.coordinate(),
            links,
            status: self.status.clone(),
        }
    }

    /// Takes a record (own or received). Returns `Ok(true)` if it was new and kept.
    pub(crate) fn take_record(
        &mut self,
        record: Arc<LinkRecord>,
        members: &MemberMap,
        regions: &BTreeMap<String, Vec<OriginKey>>,
        me: &OriginKey,
        now: Micros,
    ) -> Result<bool, &'static str> {
        let key = OriginKey(record.node);
        // The very record held (shared, not a copy: the simulator passes records between
        // nodes as they are) was validated when it was taken and would be refused as not
        // newer below: nothing to check again. A record decoded from the wire is never
        // shared this way.
        if self
            .records
            .get(&key)
            .is_some_and(|held| Arc::ptr_eq(&held.record, &record))
        {
            return Ok(false);
        }
        record.validate()?;
        if !self.would_take(&key, record.version, members, regions, me) {
            return Ok(false);
        }
        if key == *me {
            self.store(record, now, News::Own);
            return Ok(true);
        }
        let news = match self.records.get(&key) {
            Some(held) => {
                let base = held.news_base.as_ref().unwrap_or(&held.record);
                match &self.topology {
                    // The membership's region indices, when built since its last change: a
                    // hashed lookup per link instead of a walk of the member map (a
                    // twenty-fifth of a 300-node simulation). The indices follow the names'
                    // order, and this node, which the member map does not hold, gets none
                    // here either: both ways group and order the links alike.
                    Some(topology) => material(base, &record, |k| {
                        topology.member_region(&OriginKey(*k), me)
                    }),
                    None => material(base, &record, |k| {
                        members.get(&OriginKey(*k)).map(|m| m.region.as_str())
                    }),
                }
            }
            None => true,
        };
        self.store(record, now, if news { News::Yes } else { News::No });
        Ok(true)
    }

    /// Whether [`Router::take_record`] would take a valid record of node `key` at
    /// `version`: the one rule for a record received and for one a digest names (the
    /// digest's record is pulled only then).
    fn would_take(
        &self,
        key: &OriginKey,
        version: u64,
        members: &MemberMap,
        regions: &BTreeMap<String, Vec<OriginKey>>,
        me: &OriginKey,
    ) -> bool {
        // Not a member (yet): the rotation names the record again later. (Our own record
        // comes back through gossip; only the one we made counts.)
        let member = members.get(key);
        if key != me && member.is_none() {
            return false;
        }
        match (self.records.get(key), member) {
            (Some(held), _) => held.record.version < version,
            // Keep the region's sample (module docs).
            (None, Some(member)) if key != me => {
                let list = regions
                    .get(member.region.as_str())
                    .map_or(&[][..], Vec::as_slice);
                sampled(list, key)
            }
            (None, _) => true,
        }
    }

    /// The nodes whose records a gossip digest (node and version of each record) names
    /// and this node should pull: those [`Router::would_take`] at the version named, less
    /// those already asked for at that version or a later one in the last
    /// [`LINK_PULL_RETRY_US`] (several peers' digests often name the same news at once).
    pub(crate) fn pulls_for(
        &mut self,
        digest: &[(OriginKey, u64)],
        members: &MemberMap,
        regions: &BTreeMap<String, Vec<OriginKey>>,
        me: &OriginKey,
        now: Micros,
    ) -> Vec<OriginKey> {
        let mut out = Vec::new();
        for (key, version) in digest {
            if !self.would_take(key, *version, members, regions, me)
                || out.contains(key)
                || self.pulls.get(key).is_some_and(|(asked, at)| {
                    *asked >= *version && now < at.saturating_add(LINK_PULL_RETRY_US)
                })
            {
                continue;
            }
            if self.pulls.len() >= LINK_PULLS_MAX && !self.pulls.contains_key(key) {
                self.pulls
                    .retain(|_, (_, at)| now < at.saturating_add(LINK_PULL_RETRY_US));
            }
            // Still full of pulls in flight: this one is asked for without being
            // remembered (a later digest may ask again; the map stays bounded).
            if self.pulls.len() < LINK_PULLS_MAX || self.pulls.contains_key(key) {
                self.pulls.insert(*key, (*version, now));
            }
            out.push(*key);
        }
        out
    }

    /// The records held of `keys` (a peer's [`super::Message::LinkPull`]), newest held,
    /// in the order asked; a key whose record is no longer held is left out.
    pub(crate) fn records_of(&self, keys: &[OriginKey]) -> Vec<Arc<LinkRecord>> {
        keys.iter()
            .filter_map(|k| self.records.get(k).map(|h| h.record.clone()))
            .collect()
    }

    /// Node and version of each record in `batch`: what a gossip round sends.
    pub(crate) fn digest_of(batch: &[Arc<LinkRecord>]) -> Vec<(OriginKey, u64)> {
        batch
            .iter()
            .map(|r| (OriginKey(r.node), r.version))
            .collect()
    }

    /// Keeps `record`; when it is news (this node's own record, the first one of a node, or
    /// a [`material`] change since the last news) it also goes in the hot queue, pushed with
    /// the transmit budget (this node's own record even when the queue is at its bound). A
    /// version that only drifts reaches the others by the rotation through everything
    /// held: in a large mesh most versions are drift (RTT estimates move with jitter,
    /// status counters with traffic), and giving each its full budget kept every link-state
    /// message full (16 records, 34 KB at 1000 nodes, 56 % of all bytes; docs/sim-speed.md).
    fn store(&mut self, record: Arc<LinkRecord>, now: Micros, news: News) {
        let key = OriginKey(record.node);
        self.pulls.remove(&key);
        let room = self.hot.len() < HOT_RECORDS_MAX || self.hot.contains_key(&key);
        if news == News::Own || (news == News::Yes && room) {
            self.hot.insert(key, 0);
        }
        let old = self.records.get(&key);
        // A new version usually repeats most links; one with the very same links changes
        // only the coordinate, which every build reads afresh.
        let same_links = old.is_some_and(|old| old.record.links == record.links);
        let news_base = if news == News::Yes {
            Some(record.clone())
        } else {
            old.and_then(|old| old.news_base.clone())
        };
        self.records.insert(
            key,
            HeldRecord {
                record,
                received: now,
                news_base,
            },
        );
        if !same_links {
            self.changed_records.insert(key);
            self.graph_stale = true;
        } else if self.graph_uses_coords {
            self.graph_stale = true;
        }
    }

    /// Records for one gossip message: hot ones first (this node's own sent `budget` times
    /// in all, others' at most `RELAY_ROUNDS`), then a couple from the rotation through
    /// everything held.
    pub(crate) fn gossip_batch(&mut self, budget: u32, me: &OriginKey) -> Vec<Arc<LinkRecord>> {
        let mut out = Vec::new();
        let mut spent = Vec::new();
        // The fewest-sent first (keys break ties: a total order), read off the queue's
        // order by count.
        let take = LINK_RECORDS_PER_MESSAGE_MAX - 2;
        let hot: Vec<(u32, OriginKey)> = self.hot.fewest_sent().take(take).collect();
        for (n, k) in hot {
            if let Some(h) = self.records.get(&k) {
                out.push(h.record.clone());
            }
            spent.push((k, n + 1));
        }
        for (k, n) in spent {
            let limit = if k == *me {
                budget
            } else {
                budget.min(RELAY_ROUNDS)
            };
            if n >= limit {
                self.hot.remove(&k);
            } else {
                self.hot.insert(k, n);
            }
        }
        for _ in 0..2 {
            let next = match self.cold_cursor {
                Some(c) => self
                    .records
                    .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                    .next()
                    .or_else(|| self.records.iter().next()),
                None => self.records.iter().next(),
            };
            let Some((k, h)) = next else {
                break;
            };
            self.cold_cursor = Some(*k);
            if !out.iter().any(|o| o.node == h.record.node) {
                out.push(h.record.clone());
            }
        }
        out
    }

    /// Builds the region graph unless the cached one is current at `now`: built since the
    /// last membership or link-failure change, and, if an estimate or a record it reads
    /// changed since, less than [`GRAPH_REFRESH_US`] ago.
    ///
    /// Returns the graph's [`Router::graph_epoch`]: whatever was derived from the graph
    /// under an older one is out of date.
    pub(crate) fn ensure_graph(
        &mut self,
        me: &MemberInfo,
        members: &MemberMap,
        regions: &BTreeMap<String, Vec<OriginKey>>,
        now: Micros,
    ) -> u64 {
        let expired = self.graph_stale && now >= self.graph_built_us + GRAPH_REFRESH_US;
        if self.graph.is_none() || expired {
            let graph = self.build_graph(me, members, regions);
            // The same graph again (estimates that moved without changing an edge): the
            // trees and what was planned from them still hold.
            if self.graph.as_ref() != Some(&graph) {
                self.graph_uses_coords = graph
                    .edges
                    .values()
                    .any(|(_, source)| *source == EdgeSource::Estimated);
                self.graph = Some(graph);
                self.trees.clear();
                self.graph_epoch += 1;
            }
            self.graph_built_us = now;
            self.graph_stale = false;
        }
        self.graph_epoch
    }

    /// The membership-derived part of the graph, built when missing.
    fn topology(
        &mut self,
        me: &MemberInfo,
        members: &MemberMap,
        regions: &BTreeMap<String, Vec<OriginKey>>,
    ) -> &Topology {
        let topology = self
            .topology
            .get_or_insert_with(|| Topology::new(me, members, regions));
        debug_assert!(
            *topology == Topology::new(me, members, regions),
            "membership changed without Router::members_changed"
        );
        topology
    }

    /// The region graph (module docs). The edge from this node's region to another is the
    /// RTT estimate to the member this node pushes its own events to there (its *entry*:
    /// probes and acknowledged pushes keep that estimate fresh), or, before that member was
    /// measured, the best estimate to any member there.
    fn build_graph(
        &mut self,
        me: &MemberInfo,
        members: &MemberMap,
        regions: &BTreeMap<String, Vec<OriginKey>>,
    ) -> RegionGraph {
        self.topology(me, members, regions);
        let Some(topology) = self.topology.as_ref() else {
            unreachable!("set above");
        };
        let names = topology.names.clone();
        let mine = topology.mine;
        let reported = self.reported.get_or_insert_with(|| {
            self.changed_records.clear();
            ReportedLinks::new(record_arcs(&self.records), topology, me)
        });
        for key in std::mem::take(&mut self.changed_records) {
            reported.update(key, self.records.get(&key).map(|h| &h.record), topology, me);
        }
        let mut edges = reported.edges.clone();
        let coords = estimate_unreported(&mut edges, record_arcs(&self.records), topology);
        // Edges out of this node's region: this node's own view.
        for (i, name) in names.iter().enumerate() {
            let i = i as u16;
            if i == mine {
                continue;
            }
            if self.failed.contains_key(name) {
                edges.remove(&(mine, i));
                continue;
            }
            let entry = topology.entries[i as usize].and_then(|k| self.rtt_us(&k));
            let measured = entry.or_else(|| {
                regions
                    .get(name)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.rtt_us(k))
                    .min()
            });
            if let Some(r) = measured {
                edges.insert((mine, i), (r, EdgeSource::Measured));
            } else if let std::collections::btree_map::Entry::Vacant(slot) = edges.entry((mine, i))
            {
                // Nobody in this region measured that one: estimate from coordinates.
                let own = self.vivaldi.coordinate();
                let mut v: Vec<Micros> = coords
                    .get(&i)
                    .into_iter()
                    .flatten()
                    .map(|c| own.distance_us(c))
                    .collect();
                if !v.is_empty() && self.vivaldi.updates() > 0 {
                    slot.insert((median(&mut v), EdgeSource::Estimated));
                }
            }
        }
        RegionGraph { names, mine, edges }
    }

    /// The shortest-path tree from this node's region, transit allowed only through
    /// regions with `allowed[i]` (indexes into the sorted region names; `None` = all).
    pub(crate) fn tree(
        &mut self,
        me: &MemberInfo,
        members: &MemberMap,
        regions: &BTreeMap<String, Vec<OriginKey>>,
        allowed: Vec<bool>,
        now: Micros,
    ) -> (&RegionTree, &[String], u16) {
        self.ensure_graph(me, members, regions, now);
        let graph = self
            .graph
            .as_ref()
            .unwrap_or_else(|| unreachable!("ensured above"));
        let tree = self
            .trees
            .entry(allowed)
            .or_insert_with_key(|allowed| shortest_tree(graph, allowed));
        (tree, &graph.names, graph.mine)
    }

    /// Per destination region: the path, its latency and the alternatives (for
    /// `/v1/mesh/routes`).
    pub(crate) fn region_routes(
        &mut self,
        me: &MemberInfo,
        members: &MemberMap,
        regions: &BTreeMap<String, Vec<OriginKey>>,
        now: Micros,
    ) -> Vec<RegionRoute> {
        // What an operator reads is never stale.
        if self.graph_stale {
            self.invalidate();
        }
        self.ensure_graph(me, members, regions, now);
        let Some(graph) = self.graph.as_ref() else {
            unreachable!("ensured above")
        };
        let all = vec![true; graph.names.len()];
        let tree = shortest_tree(graph, &all);
        let mine = graph.mine;
        let mut out = Vec::new();
        for (i, name) in graph.names.iter().enumerate() {
            let i = i as u16;
            if i == mine {
                continue;
            }
            let direct = graph.edges.get(&(mine, i)).map(|(w, _)| w / 2);
            let direct_failed = self.failed.contains_key(name.as_str());
            let path = tree.path(mine, i);
            // The chosen path's first hop (the region itself when it goes direct).
            let chosen_hop = path.as_ref().and_then(|p| p.get(1).copied());
            // Alternatives: the best path through each other first hop (not the direct
            // link, nor the chosen path's own first hop, which listed the chosen relay path
            // again as its own alternative).
            let mut alternatives = Vec::new();
            for (&(a, h), (w1, _)) in graph.edges.range((mine, 0)..=(mine, u16::MAX)) {
                debug_assert_eq!(a, mine);
                if h == i || Some(h) == chosen_hop {
                    continue;
                }
                if let Some((w2, _)) = graph.edges.get(&(h, i)) {
                    alternatives.push((
                        vec![
                            graph.names[mine as usize].clone(),
                            graph.names[h as usize].clone(),
                            name.clone(),
                        ],
                        (w1 + w2) / 2,
                    ));
                }
            }
            alternatives.sort_by_key(|a| a.1);
            alternatives.truncate(3);
            let Some(path) = path else {
                out.push(RegionRoute {
                    region: name.clone(),
                    path: Vec::new(),
                    latency_us: 0,
                    direct_us: direct,
                    direct_failed,
                    first_hop: EdgeSource::Estimated,
                    alternatives,
                });
                continue;
            };
            let latency: Micros = path
                .windows(2)
                .map(|w| graph.edges.get(&(w[0], w[1])).map_or(0, |e| e.0))
                .sum::<Micros>()
                / 2;
            let first_hop = graph
                .edges
                .get(&(path[0], path[1]))
                .map_or(EdgeSource::Estimated, |e| e.1);
            out.push(RegionRoute {
                region: name.clone(),
                path: path
                    .iter()
                    .map(|r| graph.names[*r as usize].clone())
                    .collect(),
                latency_us: latency,
                direct_us: direct,
                direct_failed,
                first_hop,
                alternatives,
            });
        }
        out
    }
}

/// The root of a region's tree for `origin`'s events: the member first in rendezvous order
/// (the origin itself if it is a member).
pub fn entry_of(members: &[OriginKey], origin: &OriginKey) -> Option<OriginKey> {
    members
        .iter()
        .map(|m| {
            (
                if m == origin {
                    0
                } else {
                    1 + rank(origin, m) / 2
                },
                *m,
            )
        })
        .min()
        .map(|(_, k)| k)
}

fn shortest_tree(graph: &RegionGraph, allowed: &[bool]) -> RegionTree {
    let n = graph.names.len();
    let mine = graph.mine;
    // Transit edges (out of a region other than the source) cost more: a relay must save a
    // clear margin (module docs).
    let lg = LatencyGraph::from_edges(
        graph
            .edges
            .iter()
            .map(|(&(a, b), &(w, _))| {
                let w = if a == mine {
                    w
                } else {
                    w.saturating_mul(TRANSIT_COST_PCT) / 100
                };
                (a, b, w.max(1))
            })
            .chain(std::iter::once((mine, mine, 0))),
    );
    let mut parent = vec![None; n];
    let mut reachable = vec![false; n];
    reachable[mine as usize] = true;
    if let Some(routes) = weft_routing::shortest_paths(
        &lg,
        &mine,
        |r| allowed.get(*r as usize).copied().unwrap_or(false),
        None,
    ) {
        for (dst, _) in routes.reachable() {
            if let Some(route) = routes.route(&dst) {
                reachable[dst as usize] = true;
                if route.path.len() >= 2 {
                    parent[dst as usize] = Some(route.path[route.path.len() - 2]);
                }
            }
        }
    }
    RegionTree { parent, reachable }
}

impl RegionTree {
    /// Region indices from `from` (the root) to `to`, both included.
    pub(crate) fn path(&self, from: u16, to: u16) -> Option<Vec<u16>> {
        if !self.reachable.get(to as usize).copied().unwrap_or(false) {
            return None;
        }
        let mut path = vec![to];
        let mut at = to;
        while at != from {
            at = self.parent.get(at as usize).copied().flatten()?;
            path.push(at);
            if path.len() > self.parent.len() {
                return None;
            }
        }
        path.reverse();
        Some(path)
    }

    /// Splits the paths to `dests` into one hop list per first-hop region: which region to
    /// push to directly, and the [`RelayHop`]s it relays to. Unreachable destinations are
    /// returned last.
    pub(crate) fn plan(
        &self,
        names: &[String],
        from: u16,
        dests: &BTreeSet<u16>,
    ) -> (Vec<(String, Vec<RelayHop>)>, Vec<String>) {
        let mut first: BTreeMap<u16, Vec<RelayHop>> = BTreeMap::new();
        let mut unreachable = Vec::new();
        for &d in dests {
            if d == from {
                continue;
            }
            let Some(path) = self.path(from, d) else {
                unreachable.push(names[d as usize].clone());
                continue;
            };
            let hops = first.entry(path[1]).or_default();
            // Walk the rest of the path, adding hops not yet in the list.
            let mut parent: Option<u8> = None;
            for r in &path[2..] {
                let name = &names[*r as usize];
                match hops.iter().position(|h| h.region == *name) {
                    Some(at) => parent = u8::try_from(at).ok(),
                    None => {
                        if hops.len() >= RELAY_HOPS_MAX {
                            break;
                        }
                        hops.push(RelayHop {
                            region: SmolStr::new(name),
                            parent,
                        });
                        parent = u8::try_from(hops.len() - 1).ok();
                    }
                }
            }
        }
        (
            first
                .into_iter()
                .map(|(r, hops)| (names[r as usize].clone(), hops))
                .collect(),
            unreachable,
        )
    }
}

/// `hops` without the hops whose region `keep` refuses, in the same order. A kept hop
/// whose parent is dropped hangs from its nearest kept ancestor instead (the top level if
/// there is none), so it is still relayed, one region sooner. Parents stay before their
/// children; a parent index out of range counts as none.
pub(crate) fn prune_hops(hops: &[RelayHop], keep: impl Fn(&str) -> bool) -> Vec<RelayHop> {
    // Per input hop: its index in the output if kept, else its nearest kept ancestor's.
    let mut at: Vec<Option<u8>> = Vec::with_capacity(hops.len());
    let mut out = Vec::with_capacity(hops.len());
    for h in hops {
        let parent = h
            .parent
            .and_then(|p| at.get(usize::from(p)).copied().flatten());
        if keep(&h.region) {
            at.push(u8::try_from(out.len()).ok());
            out.push(RelayHop {
                region: h.region.clone(),
                parent,
            });
        } else {
            at.push(parent);
        }
    }
    out
}

/// Splits a received hop list into its top-level regions, each with its own sub-list
/// (re-indexed). Malformed lists (a parent not before its child, too many hops, a region
/// twice or the receiver's own region) yield `None`.
pub fn split_hops(hops: &[RelayHop], own_region: &str) -> Option<Vec<(SmolStr, Vec<RelayHop>)>> {
    if hops.len() > RELAY_HOPS_MAX {
        return None;
    }
    // Every cross-region push a relay receives comes through here, so no set or map is
    // built: the duplicate check scans the hops before each one (a push names a few; at
    // most RELAY_HOPS_MAX), and one pass files each hop under its top-level hop.
    for (i, h) in hops.iter().enumerate() {
        if h.region == own_region
            || hops[..i].iter().any(|o| o.region == h.region)
            || h.parent.is_some_and(|p| usize::from(p) >= i)
        {
            return None;
        }
    }
    // Per hop: its top-level hop, that hop's entry in `out`, and its own place in its
    // top-level hop's sub-list (all below RELAY_HOPS_MAX, so they fit a byte).
    let mut top = [0u8; RELAY_HOPS_MAX];
    let mut entry = [0u8; RELAY_HOPS_MAX];
    let mut place = [0u8; RELAY_HOPS_MAX];
    let mut out: Vec<(SmolStr, Vec<RelayHop>)> = Vec::new();
    for (i, h) in hops.iter().enumerate() {
        match h.parent {
            None => {
                top[i] = i as u8;
                entry[i] = out.len() as u8;
                out.push((h.region.clone(), Vec::new()));
            }
            Some(p) => {
                let p = usize::from(p);
                let t = usize::from(top[p]);
                top[i] = t as u8;
                let sub = &mut out[usize::from(entry[t])].1;
                place[i] = sub.len() as u8;
                sub.push(RelayHop {
                    region: h.region.clone(),
                    // Children of the top-level hop are top-level in its sub-list.
                    parent: (p != t).then_some(place[p]),
                });
            }
        }
    }
    Some(out)
}

/// Rendezvous rank of `member` for `origin`: a fixed mixing function (splitmix64) of both
/// keys, the same on every node and every run.
pub(crate) fn rank(origin: &OriginKey, member: &OriginKey) -> u64 {
    let word = |k: &OriginKey, at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&k.0[at..at + 8]);
        u64::from_le_bytes(b)
    };
    splitmix64(
        word(origin, 0)
            ^ splitmix64(word(member, 0) ^ word(member, 8))
            ^ word(origin, 8).rotate_left(17),
    )
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The first implementation of [`split_hops`] (sets and maps), kept as its model.
    fn split_hops_model(
        hops: &[RelayHop],
        own_region: &str,
    ) -> Option<Vec<(SmolStr, Vec<RelayHop>)>> {
        if hops.len() > RELAY_HOPS_MAX {
            return None;
        }
        let mut seen = BTreeSet::new();
        for (i, h) in hops.iter().enumerate() {
            if h.region == own_region || !seen.insert(h.region.as_str()) {
                return None;
            }
            if h.parent.is_some_and(|p| usize::from(p) >= i) {
                return None;
            }
        }
        // Top-level hop of each hop.
        let mut top = vec![0usize; hops.len()];
        for (i, h) in hops.iter().enumerate() {
            top[i] = match h.parent {
                None => i,
                Some(p) => top[usize::from(p)],
            };
        }
        let mut out = Vec::new();
        for (i, h) in hops.iter().enumerate() {
            if h.parent.is_some() {
                continue;
            }
            // Descendants of i, in order; their parents re-indexed into the sub-list.
            let mut map: BTreeMap<usize, u8> = BTreeMap::new();
            let mut sub = Vec::new();
            for (j, hj) in hops.iter().enumerate().skip(i + 1) {
                if top[j] != i {
                    continue;
                }
                let parent = match hj.parent {
                    Some(p) if usize::from(p) == i => None,
                    Some(p) => Some(*map.get(&usize::from(p))?),
                    None => None,
                };
                map.insert(j, u8::try_from(sub.len()).ok()?);
                sub.push(RelayHop {
                    region: hj.region.clone(),
                    parent,
                });
            }
            out.push((h.region.clone(), sub));
        }
        Some(out)
    }

    proptest! {
        /// The hot queue reads off, fewest sent first, what sorting a plain map of its
        /// counts by (count, key) gives, through inserts, count changes and removals.
        #[test]
        fn the_hot_queue_reads_the_fewest_sent_first(
            ops in proptest::collection::vec((0u8..24, proptest::option::of(0u32..5)), 1..200),
        ) {
            let mut queue = HotQueue::default();
            let mut model: BTreeMap<OriginKey, u32> = BTreeMap::new();
            for (k, sent) in ops {
                let key = OriginKey([k; 32]);
                match sent {
                    Some(n) => {
                        queue.insert(key, n);
                        model.insert(key, n);
                    }
                    None => {
                        queue.remove(&key);
                        model.remove(&key);
                    }
                }
                let mut sorted: Vec<(u32, OriginKey)> = model.iter().map(|(k, n)| (*n, *k)).collect();
                sorted.sort_unstable();
                sorted.truncate(LINK_RECORDS_PER_MESSAGE_MAX - 2);
                let read: Vec<(u32, OriginKey)> =
                    queue.fewest_sent().take(LINK_RECORDS_PER_MESSAGE_MAX - 2).collect();
                prop_assert_eq!(read, sorted);
                prop_assert_eq!(queue.len(), model.len());
                prop_assert!(queue.consistent());
            }
        }
    }

    proptest! {
        #[test]
        fn split_hops_matches_its_model(
            raw in proptest::collection::vec(
                (0u8..20, proptest::option::of(0u8..64)),
                0..RELAY_HOPS_MAX + 2,
            ),
        ) {
            // Mostly well-formed lists (distinct regions, parents before their children),
            // with a region named twice, the receiver's own region or a parent at or after
            // its child now and then.
            let hops: Vec<RelayHop> = raw
                .iter()
                .enumerate()
                .map(|(i, (r, parent))| {
                    let region = match r {
                        0 => "own".to_string(),
                        1 => "r0".to_string(),
                        _ => format!("r{}", i + 1),
                    };
                    let parent = parent.map(|p| if p == 63 { i as u8 } else { p % (i as u8).max(1) });
                    hop(&region, parent)
                })
                .collect();
            prop_assert_eq!(split_hops(&hops, "own"), split_hops_model(&hops, "own"));
        }
    }

    proptest! {
        /// A pruned list keeps exactly the kept hops in order, and each hangs from its
        /// nearest kept ancestor in the original tree.
        #[test]
        fn pruned_hops_hang_from_their_nearest_kept_ancestor(
            raw in proptest::collection::vec(
                (proptest::option::of(0u8..64), proptest::bool::ANY),
                0..RELAY_HOPS_MAX,
            ),
        ) {
            let hops: Vec<RelayHop> = raw
                .iter()
                .enumerate()
                .map(|(i, (parent, _))| {
                    hop(&format!("r{i}"), parent.filter(|_| i > 0).map(|p| p % i as u8))
                })
                .collect();
            let kept: BTreeSet<String> = raw
                .iter()
                .enumerate()
                .filter(|(_, (_, k))| *k)
                .map(|(i, _)| format!("r{i}"))
                .collect();
            let pruned = prune_hops(&hops, |r| kept.contains(r));
            let regions: Vec<&str> = pruned.iter().map(|h| h.region.as_str()).collect();
            let expected: Vec<&str> = hops
                .iter()
                .map(|h| h.region.as_str())
                .filter(|r| kept.contains(*r))
                .collect();
            prop_assert_eq!(regions, expected);
            for h in &pruned {
                let i = hops.iter().position(|o| o.region == h.region).unwrap();
                // The model: walk up the original tree to the first kept ancestor.
                let mut up = hops[i].parent;
                while let Some(p) = up
                    && !kept.contains(hops[usize::from(p)].region.as_str())
                {
                    up = hops[usize::from(p)].parent;
                }
                let want = up.map(|p| hops[usize::from(p)].region.as_str());
                let got = h.parent.map(|p| pruned[usize::from(p)].region.as_str());
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn pruning_reattaches_children_of_dropped_hops() {
        // b <- (c <- d), e; drop c: d hangs from b.
        let hops = vec![
            hop("b", None),
            hop("c", Some(0)),
            hop("d", Some(1)),
            hop("e", None),
        ];
        assert_eq!(
            prune_hops(&hops, |r| r != "c"),
            vec![hop("b", None), hop("d", Some(0)), hop("e", None)]
        );
        // Drop b too: d is top-level.
        assert_eq!(
            prune_hops(&hops, |r| r == "d" || r == "e"),
            vec![hop("d", None), hop("e", None)]
        );
        assert_eq!(prune_hops(&hops, |_| false), vec![]);
    }

    fn hop(region: &str, parent: Option<u8>) -> RelayHop {
        RelayHop {
            region: region.into(),
            parent,
        }
    }

    #[test]
    fn hop_lists_split_into_subtrees() {
        // b <- (c <- d), e
        let hops = vec![
            hop("b", None),
            hop("c", Some(0)),
            hop("d", Some(1)),
            hop("e", None),
        ];
        let split = split_hops(&hops, "a").unwrap();
        assert_eq!(
            split,
            vec![
                (SmolStr::new("b"), vec![hop("c", None), hop("d", Some(0))]),
                (SmolStr::new("e"), vec![]),
            ]
        );
    }

    #[test]
    fn malformed_hop_lists_are_refused() {
        assert!(split_hops(&[hop("a", None)], "a").is_none(), "own region");
        assert!(
            split_hops(&[hop("b", Some(0))], "a").is_none(),
            "self parent"
        );
        assert!(
            split_hops(&[hop("b", None), hop("b", None)], "a").is_none(),
            "region twice"
        );
        let many: Vec<RelayHop> = (0..=RELAY_HOPS_MAX)
            .map(|i| hop(&format!("r{i}"), None))
            .collect();
        assert!(split_hops(&many, "a").is_none(), "too many");
    }

    #[test]
    fn a_relay_is_taken_only_when_it_saves_a_margin() {
        // a -> c direct 100; a -> b 30, b -> c 40: relay 30 + 40 * 1.05 = 72 < 100.
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut edges = BTreeMap::new();
        let mut e = |a: u16, b: u16, w: Micros| {
            edges.insert((a, b), (w, EdgeSource::Reported));
            edges.insert((b, a), (w, EdgeSource::Reported));
        };
        e(0, 1, 30_000);
        e(1, 2, 40_000);
        e(0, 2, 100_000);
        let g = RegionGraph {
            names: names.clone(),
            mine: 0,
            edges: edges.clone(),
        };
        let t = shortest_tree(&g, &[true, true, true]);
        assert_eq!(t.path(0, 2), Some(vec![0, 1, 2]));
        let (plan, unreachable) = t.plan(&names, 0, &[1u16, 2].into_iter().collect());
        assert!(unreachable.is_empty());
        assert_eq!(plan, vec![("b".to_string(), vec![hop("c", None)])]);
        // Transit through b not allowed: direct.
        let t = shortest_tree(&g, &[true, false, true]);
        assert_eq!(t.path(0, 2), Some(vec![0, 2]));
        // A relay saving under 3%: stays direct.
        edges.insert((0, 2), (71_000, EdgeSource::Reported));
        let g = RegionGraph {
            names,
            mine: 0,
            edges,
        };
        let t = shortest_tree(&g, &[true, true, true]);
        assert_eq!(t.path(0, 2), Some(vec![0, 2]));
    }

    /// A member record with a key of `key` bytes in `region`.
    fn member(key: u8, region: &str) -> MemberInfo {
        MemberInfo::for_test(key, region)
    }

    /// The member map and per-region key lists (sorted by key, as `Node` keeps them) of
    /// `all`.
    fn membership<'a>(
        all: impl IntoIterator<Item = &'a MemberInfo>,
    ) -> (MemberMap, BTreeMap<String, Vec<OriginKey>>) {
        let mut members = BTreeMap::new();
        let mut regions: BTreeMap<String, Vec<OriginKey>> = BTreeMap::new();
        for m in all {
            members.insert(m.node_key(), Arc::new(m.clone()));
            regions
                .entry(m.region.to_string())
                .or_default()
                .push(m.node_key());
        }
        for list in regions.values_mut() {
            list.sort();
        }
        (members, regions)
    }

    /// `material` judges alike whether peers are placed by region name (the member map) or
    /// by the topology's region index, links to this node (in no member map) included.
    #[test]
    fn material_by_region_index_agrees_with_by_region_name() {
        use proptest::prelude::*;
        let me = member(1, "b");
        let others: Vec<MemberInfo> = (2..=10u8)
            .map(|k| member(k, ["d", "a", "c", "b"][usize::from(k % 4)]))
            .collect();
        let (members, mut regions) = membership(&others);
        regions
            .entry("b".to_string())
            .or_default()
            .insert(0, me.node_key());
        let topology = Topology::new(&me, &members, &regions);
        let record = |links: &BTreeMap<u8, u32>| LinkRecord {
            node: [9; 32],
            version: 1,
            coord: Coordinate::origin(),
            links: links.iter().map(|(k, r)| ([*k; 32], *r)).collect(),
            status: NodeStatus::default(),
        };
        // RTTs within a millisecond of each other never count as moved, so the answer rests
        // on how the links group by region: the part the two placements could disagree on.
        let links = || prop::collection::btree_map(1..=10u8, 10_000u32..10_900, 2..=3);
        proptest!(|(old in links(), new in links())| {
            let (old, new) = (record(&old), record(&new));
            let by_name = material(&old, &new, |k| {
                members.get(&OriginKey(*k)).map(|m| m.region.as_str())
            });
            let by_index = material(&old, &new, |k| {
                topology.member_region(&OriginKey(*k), &me.node_key())
            });
            prop_assert_eq!(by_name, by_index);
        });
    }

    /// The region graph follows a drifting estimate within GRAPH_REFRESH_US, a level shift
    /// and a failed link at once.
    #[test]
    fn the_graph_lags_drift_by_at_most_the_refresh_interval() {
        let (me, b) = (member(1, "a"), member(2, "b"));
        let (members, regions) = membership([&me, &b]);
        let mut router = Router::new(7);
        let weight = |router: &mut Router, now: Micros| {
            router.tree(&me, &members, &regions, vec![true, true], now);
            let g = router.graph.as_ref().unwrap();
            g.edges.get(&(g.mine, 1 - g.mine)).map(|(w, _)| *w)
        };
        assert!(router.rtt_sample(b.node_key(), 100_000).changed);
        let first = weight(&mut router, 0).expect("an edge to b");
        // Drift: a lower sample that is no level shift moves the estimate, and the graph
        // follows GRAPH_REFRESH_US later, not before.
        let mut now = 1_000;
        let mut drifted = false;
        for _ in 0..20 {
            now += 1_000;
            if router.rtt_sample(b.node_key(), 80_000).changed {
                drifted = true;
                break;
            }
        }
        assert!(drifted, "the estimate never moved");
        assert_eq!(
            weight(&mut router, now),
            Some(first),
            "rebuilt before the interval"
        );
        let later = weight(&mut router, now + GRAPH_REFRESH_US).unwrap();
        assert!(later < first, "{later} after {first}");
        // A level shift (two samples in a row beyond the RTT timeout) is followed at once;
        // one sample alone (a retransmission) is not a shift.
        now += GRAPH_REFRESH_US + 1;
        assert!(!router.rtt_sample(b.node_key(), 2_000_000).changed);
        assert_eq!(weight(&mut router, now), Some(later));
        assert!(router.rtt_sample(b.node_key(), 2_000_000).changed);
        assert!(weight(&mut router, now).unwrap() > later);
        // So is a failed link: the edge is gone.
        assert!(router.fail("b", now));
        assert_eq!(weight(&mut router, now), None);
    }

    /// One sample beyond the RTT timeout is a retransmission (a packet of a push or of its
    /// acknowledgement lost on its stream), not a slower path: the estimate keeps its
    /// value. Two in a row restart it upwards, and a sample under three quarters of the
    /// estimate restarts it downwards.
    #[test]
    fn a_single_late_sample_is_no_level_shift() {
        let peer = member(2, "b").node_key();
        let mut router = Router::new(7);
        for _ in 0..weft_routing::rtt::RTT_WINDOW_LEN {
            assert_eq!(router.rtt_sample(peer, 100_000).shifted, None);
        }
        let settled = router.rtt_us(&peer).expect("an estimate");
        let late = 3 * settled;
        assert!(late > rto_us(Some(settled)));
        // Late samples with a normal one between them: never two in a row.
        for _ in 0..3 {
            let s = router.rtt_sample(peer, late);
            assert_eq!((s.shifted, s.changed), (None, false));
            assert_eq!(router.rtt_us(&peer), Some(settled));
            assert_eq!(router.rtt_sample(peer, 100_000).shifted, None);
            assert_eq!(router.rtt_us(&peer), Some(settled));
        }
        // Two in a row: the path got slower.
        assert_eq!(router.rtt_sample(peer, late).shifted, None);
        let s = router.rtt_sample(peer, late);
        assert_eq!((s.shifted, s.changed), (Some(Shift::Up), true));
        assert_eq!(router.rtt_us(&peer), Some(late));
        // Back under three quarters: healed, at once.
        let s = router.rtt_sample(peer, 100_000);
        assert_eq!((s.shifted, s.changed), (Some(Shift::Down), true));
        assert_eq!(router.rtt_us(&peer), Some(100_000));
    }

    /// Reported links kept up to date one record at a time equal the ones regrouped from
    /// every record, whatever the order of stores, replacements and removals.
    #[test]
    fn reported_links_follow_record_changes() {
        use proptest::prelude::*;
        let all: Vec<MemberInfo> = (1..=8u8)
            .map(|k| member(k, ["a", "b", "c"][usize::from(k % 3)]))
            .collect();
        let me = all[0].clone();
        let (members, regions) = membership(&all);
        let topology = Topology::new(&me, &members, &regions);
        // (node, RTTs to each of the 8 members; `None`: the record is dropped)
        let change = (
            1..=8u8,
            proptest::option::of(prop::collection::vec(1u32..500, 8)),
        );
        proptest!(|(changes in prop::collection::vec(change, 1..40))| {
            let mut records: BTreeMap<OriginKey, Arc<LinkRecord>> = BTreeMap::new();
            let mut incremental = ReportedLinks::default();
            for (node, rtts) in changes {
                let key = OriginKey([node; 32]);
                match rtts {
                    Some(rtts) => {
                        let record = LinkRecord {
                            node: key.0,
                            version: 1,
                            coord: Coordinate::origin(),
                            links: (1..=8u8).zip(rtts).map(|(p, r)| ([p; 32], r)).collect(),
                            status: NodeStatus::default(),
                        };
                        records.insert(key, Arc::new(record));
                    }
                    None => {
                        records.remove(&key);
                    }
                }
                incremental.update(key, records.get(&key), &topology, &me);
            }
            let whole = ReportedLinks::new(&records, &topology, &me);
            prop_assert_eq!(&incremental.by_pair, &whole.by_pair);
            prop_assert_eq!(&incremental.by_record, &whole.by_record);
            prop_assert_eq!(&incremental.edges, &whole.edges);
        });
    }

    /// A region's records: every node keeps the same sample, the region's
    /// RECORDS_PER_REGION_MAX lowest keys, whatever order the records arrive in; a record
    /// outside it is refused, and when a sampled member leaves, the next key is taken.
    #[test]
    fn every_node_keeps_the_same_sample_of_a_regions_records() {
        let me = member(200, "a");
        let others: Vec<MemberInfo> = (1..=RECORDS_PER_REGION_MAX as u8 + 2)
            .map(|k| member(k, "b"))
            .collect();
        let record = |m: &MemberInfo, version: u64| LinkRecord {
            node: m.key,
            version,
            coord: Coordinate::origin(),
            links: vec![],
            status: NodeStatus::default(),
        };
        let take = |router: &mut Router,
                    view: &(MemberMap, BTreeMap<String, Vec<OriginKey>>),
                    m: &MemberInfo,
                    version: u64| {
            router
                .take_record(
                    Arc::new(record(m, version)),
                    &view.0,
                    &view.1,
                    &me.node_key(),
                    0,
                )
                .unwrap()
        };
        let view = membership(others.iter().chain([&me]));
        let (late, later) = (
            &others[RECORDS_PER_REGION_MAX],
            &others[RECORDS_PER_REGION_MAX + 1],
        );
        // Arrival order does not matter: the last keys first, then the rest.
        let mut in_order = Router::new(3);
        let mut reversed = Router::new(3);
        for m in &others {
            take(&mut in_order, &view, m, 1);
        }
        for m in others.iter().rev() {
            take(&mut reversed, &view, m, 1);
        }
        let sample: Vec<OriginKey> = others[..RECORDS_PER_REGION_MAX]
            .iter()
            .map(MemberInfo::node_key)
            .collect();
        for router in [&in_order, &reversed] {
            assert_eq!(router.records.keys().copied().collect::<Vec<_>>(), sample);
        }
        let mut router = in_order;
        assert!(!take(&mut router, &view, late, 2), "outside the sample");
        assert!(take(&mut router, &view, &others[0], 2), "a new version");
        // The lowest key leaves: the next one is in the sample now, the one after not.
        router.member_down(&others[0].node_key());
        let view = membership(others[1..].iter().chain([&me]));
        assert!(take(&mut router, &view, late, 1), "moved into the sample");
        assert!(!take(&mut router, &view, later, 1), "still outside");
        assert_eq!(router.records.len(), RECORDS_PER_REGION_MAX);
    }

    /// Push gossip carries news only: a node's first record, a new generation or policy
    /// epoch, links added or dropped, or an RTT that moved by more than an eighth and a
    /// millisecond. A version that only drifts (jitter, a coordinate, status counters, the
    /// nearest peer of a region swapped for another as near) is kept and reaches the others
    /// by the rotation; this node's own records are always news.
    #[test]
    fn only_news_goes_in_the_hot_gossip_queue() {
        let me = member(200, "a");
        let (x, b1, b2, c1) = (
            member(1, "b"),
            member(2, "b"),
            member(3, "b"),
            member(4, "c"),
        );
        let (members, regions) = membership([&me, &x, &b1, &b2, &c1]);
        let record = |version: u64, links: Vec<([u8; 32], u32)>, epoch: u64| LinkRecord {
            node: x.key,
            version,
            coord: Coordinate::origin(),
            links,
            status: NodeStatus {
                policy_epoch: epoch,
                ..NodeStatus::default()
            },
        };
        let mut router = Router::new(3);
        let mut version = 0;
        let mut hot_after = |router: &mut Router, links: Vec<([u8; 32], u32)>, epoch: u64| {
            router.hot.clear();
            version += 1;
            let r = Arc::new(record(version, links, epoch));
            assert_eq!(
                router.take_record(r, &members, &regions, &me.node_key(), 0),
                Ok(true),
                "every newer version is kept"
            );
            router.hot.contains_key(&x.node_key())
        };
        let base = vec![(b1.key, 80_000), (c1.key, 40_000)];
        assert!(hot_after(&mut router, base.clone(), 1), "the first record");
        assert!(!hot_after(&mut router, base.clone(), 1), "the same links");
        let drift = vec![(b1.key, 84_000), (c1.key, 39_000)];
        assert!(!hot_after(&mut router, drift, 1), "within an eighth");
        let small = vec![(b1.key, 84_000), (c1.key, 900)];
        assert!(hot_after(&mut router, small.clone(), 1), "39 ms to 0.9 ms");
        let jitter = vec![(b1.key, 84_000), (c1.key, 1_800)];
        assert!(!hot_after(&mut router, jitter, 1), "under a millisecond");
        let swapped = vec![(b2.key, 85_000), (c1.key, 1_800)];
        assert!(
            !hot_after(&mut router, swapped, 1),
            "another peer of the same region, as near"
        );
        let shifted = vec![(b2.key, 120_000), (c1.key, 1_800)];
        assert!(hot_after(&mut router, shifted.clone(), 1), "a level shift");
        assert!(
            hot_after(&mut router, shifted.clone(), 2),
            "a new policy epoch"
        );
        assert!(
            hot_after(&mut router, vec![(c1.key, 1_800)], 2),
            "a link dropped"
        );
        // Drift adds up: compared with the last version that was news (120 ms), 130 ms is
        // not, 140 ms is.
        assert!(hot_after(&mut router, shifted.clone(), 2), "a link back");
        let drifted = |rtt| vec![(b2.key, rtt), (c1.key, 1_800)];
        assert!(
            !hot_after(&mut router, drifted(130_000), 2),
            "an eighth: not yet"
        );
        assert!(
            hot_after(&mut router, drifted(140_000), 2),
            "two small steps"
        );
        let moved = vec![(b1.key, 120_000), (c1.key, 1_800)];
        router.hot.clear();
        let next = Arc::new(record((1 << 32) | 1, moved, 2));
        router
            .take_record(next, &members, &regions, &me.node_key(), 0)
            .unwrap();
        assert!(router.hot.contains_key(&x.node_key()), "a new generation");
        // A node's first real coordinate is news (its first record carries the origin); how
        // the coordinate moves after that is not.
        let moved = vec![(b1.key, 120_000), (c1.key, 1_800)];
        for (version, at, news) in [(2, 0.02, true), (3, 0.03, false)] {
            let mut coord = Coordinate::origin();
            coord.vec[0] = at;
            router.hot.clear();
            let next = Arc::new(LinkRecord {
                coord,
                ..record((1 << 32) | version, moved.clone(), 2)
            });
            router
                .take_record(next, &members, &regions, &me.node_key(), 0)
                .unwrap();
            assert_eq!(
                router.hot.contains_key(&x.node_key()),
                news,
                "coordinate {at}"
            );
        }
        // This node's own record is always pushed.
        let own = |version| {
            Arc::new(LinkRecord {
                node: me.key,
                ..record(version, vec![], 2)
            })
        };
        for (version, full) in [((1 << 32) | 10, false), ((1 << 32) | 11, true)] {
            router.hot.clear();
            if full {
                // At its bound the queue still takes this node's own record.
                for i in 0..HOT_RECORDS_MAX as u64 {
                    let mut k = [7u8; 32];
                    k[..8].copy_from_slice(&i.to_le_bytes());
                    router.hot.insert(OriginKey(k), 0);
                }
            }
            let taken = router.take_record(own(version), &members, &regions, &me.node_key(), 0);
            assert_eq!(taken, Ok(true));
            assert!(router.hot.contains_key(&me.node_key()));
        }
    }

    /// This node's own record is pushed for the whole budget; another node's news for at
    /// most `RELAY_ROUNDS` rounds. Both then leave the hot queue and go on in the rotation.
    #[test]
    fn others_records_are_pushed_for_fewer_rounds_than_this_nodes_own() {
        let me = member(200, "a");
        let x = member(1, "b");
        let (members, regions) = membership([&me, &x]);
        let record = |m: &MemberInfo| {
            Arc::new(LinkRecord {
                node: m.key,
                version: 1,
                coord: Coordinate::origin(),
                links: vec![],
                status: NodeStatus::default(),
            })
        };
        let mut router = Router::new(3);
        for m in [&me, &x] {
            let taken = router.take_record(record(m), &members, &regions, &me.node_key(), 0);
            assert_eq!(taken, Ok(true));
        }
        let budget = RELAY_ROUNDS + 4;
        let holds =
            |batch: &[Arc<LinkRecord>], m: &MemberInfo| batch.iter().any(|r| r.node == m.key);
        for round in 1..=budget {
            let batch = router.gossip_batch(budget, &me.node_key());
            assert!(holds(&batch, &me), "own record, round {round}");
            assert_eq!(
                router.hot.contains_key(&x.node_key()),
                round < RELAY_ROUNDS,
                "round {round}"
            );
        }
        assert!(router.hot.is_empty(), "both out of the hot queue");
        // The rotation still carries them (two a message).
        let batch = router.gossip_batch(budget, &me.node_key());
        assert!(holds(&batch, &me) && holds(&batch, &x));
    }

    /// A gossip round takes the hot records sent the fewest times (ties by key), in that
    /// order, from a queue longer than a message: the selection agrees with sorting the
    /// whole queue.
    #[test]
    fn a_gossip_round_takes_the_fewest_sent_hot_records_in_order() {
        let me = member(200, "a");
        let mut router = Router::new(5);
        let mut expected = Vec::new();
        for i in 0..40u8 {
            let key = OriginKey([i.wrapping_mul(37); 32]);
            let sent = u32::from(i % 3);
            router.records.insert(
                key,
                HeldRecord {
                    record: Arc::new(LinkRecord {
                        node: key.0,
                        version: 1,
                        coord: Coordinate::origin(),
                        links: vec![],
                        status: NodeStatus::default(),
                    }),
                    received: 0,
                    news_base: None,
                },
            );
            router.hot.insert(key, sent);
            expected.push((sent, key));
        }
        expected.sort_unstable();
        let take = LINK_RECORDS_PER_MESSAGE_MAX - 2;
        let batch = router.gossip_batch(RELAY_ROUNDS + 4, &me.node_key());
        let hot: Vec<[u8; 32]> = batch.iter().take(take).map(|r| r.node).collect();
        let want: Vec<[u8; 32]> = expected.iter().take(take).map(|(_, k)| k.0).collect();
        assert_eq!(hot, want);
        // Each was counted as sent once more; the others were not touched.
        for (i, (sent, key)) in expected.iter().enumerate() {
            let now = router.hot.get(key).copied();
            if i < take {
                let again = sent + 1;
                assert_eq!(now, (again < RELAY_ROUNDS).then_some(again), "{i}");
            } else {
                assert_eq!(now, Some(*sent), "{i}");
            }
        }
    }

    #[test]
    fn malformed_records_are_refused_with_the_limit_they_break() {
        let record = |links: Vec<([u8; 32], u32)>| LinkRecord {
            node: [9; 32],
            version: 1,
            coord: Coordinate::origin(),
            links,
            status: NodeStatus::default(),
        };
        assert_eq!(
            record(vec![([1; 32], 10), ([2; 32], 20)]).validate(),
            Ok(())
        );
        let err = |links| record(links).validate().unwrap_err();
        assert!(err(vec![([2; 32], 10), ([1; 32], 20)]).contains("sorted"));
        assert!(err(vec![([1; 32], 10), ([1; 32], 20)]).contains("twice"));
        assert!(err(vec![([9; 32], 10)]).contains("itself"));
        let slow = u32::try_from(RTT_US_MAX + 1).unwrap();
        assert!(err(vec![([1; 32], slow)]).contains("RTT_US_MAX"));
        let many = (0..=LINKS_PER_NODE_MAX as u8)
            .map(|i| ([i; 32], 1))
            .collect();
        assert!(err(many).contains("LINKS_PER_NODE_MAX"));
    }

    #[test]
    fn rto_has_a_floor_and_slack() {
        assert_eq!(rto_us(None), RTO_US_UNKNOWN);
        assert_eq!(rto_us(Some(1_000)), RTO_US_MIN);
        assert_eq!(rto_us(Some(100_000)), 130_000);
    }
}
