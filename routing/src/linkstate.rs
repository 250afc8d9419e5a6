//! Link state: the latency graph of the mesh, assembled from every node's gossiped report
//! of its measured link RTTs.
//!
//! Each node periodically publishes `(node, version, links)`, where `links` are its
//! published RTT estimates ([`crate::rtt::RttEstimator::estimate_us`]) to the peers it
//! measures. [`LinkStateDb`] keeps the newest version per node and hands out an immutable,
//! index-based [`LatencyGraph`] for path computation ([`crate::paths`]).
//!
//! Both directions of a link share one round trip, so the edge `u -> v` weighs what `u`
//! reported for `v`, or, if `u` did not report `v`, what `v` reported for `u`.
//!
//! Everything is bounded: [`LINKS_PER_NODE_MAX`] links per report and [`NODES_MAX`]
//! distinct nodes in all (reporters and the peers they name). A report that would exceed
//! either is refused whole, with an error naming the limit.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::rtt::RTT_US_MAX;

/// Most links in one node's report. A node measures its lazy and tree peers and a sample of
/// other regions: a few dozen. 64 leaves room and keeps a 1000-node graph at most 64,000
/// edges (Dijkstra over it takes well under a millisecond; `benches/routes.rs`).
pub const LINKS_PER_NODE_MAX: usize = 64;

/// Most distinct nodes in the database (reporters plus the peers they name). The simulator's
/// largest scenario has 1000 nodes; 4096 is the same order as the fabric's membership.
pub const NODES_MAX: usize = 4096;

// Edge offsets in a `LatencyGraph` are `u32`: a full database (every link stored in both
// directions) must fit.
const _: () = assert!(NODES_MAX * LINKS_PER_NODE_MAX * 2 <= u32::MAX as usize);

/// A report the database refused. The database did not change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LinkStateError {
    /// The report lists more than [`LINKS_PER_NODE_MAX`] links.
    #[error("links: {len} links exceed LINKS_PER_NODE_MAX ({max})")]
    TooManyLinks {
        /// Links in the report.
        len: usize,
        /// [`LINKS_PER_NODE_MAX`].
        max: usize,
    },
    /// Accepting the report would make the database hold more than [`NODES_MAX`] nodes.
    #[error("links: the report would bring the database to {len} nodes, over NODES_MAX ({max})")]
    TooManyNodes {
        /// Distinct nodes after the report.
        len: usize,
        /// [`NODES_MAX`].
        max: usize,
    },
    /// A link's RTT exceeds [`RTT_US_MAX`].
    #[error("links[{index}].rtt_us: {rtt_us} exceeds RTT_US_MAX ({max})")]
    RttTooLarge {
        /// Position of the link in the report.
        index: usize,
        /// The refused value.
        rtt_us: u64,
        /// [`RTT_US_MAX`].
        max: u64,
    },
    /// The report names its own node as a peer.
    #[error("links[{index}].peer: a node cannot report a link to itself")]
    SelfLink {
        /// Position of the link in the report.
        index: usize,
    },
    /// The report names the same peer twice.
    #[error("links[{index}].peer: peer listed twice")]
    DuplicatePeer {
        /// Position of the second occurrence.
        index: usize,
    },
}

/// What happened to a well-formed report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Stored: the node had no report, or an older version.
    Applied,
    /// Ignored: the database holds this version or a newer one for the node.
    Stale,
}

#[derive(Debug, Clone)]
struct Report<N> {
    version: u64,
    /// Sorted by peer, no duplicates, no self-link.
    links: Vec<(N, u64)>,
}

/// The newest link report of every node, bounded (module docs).
#[derive(Debug, Clone)]
pub struct LinkStateDb<N> {
    reports: BTreeMap<N, Report<N>>,
    /// For every node present: how many reports mention it (as reporter or as peer).
    refs: BTreeMap<N, u32>,
}

impl<N: Ord + Copy> Default for LinkStateDb<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<N: Ord + Copy> LinkStateDb<N> {
    /// An empty database.
    pub fn new() -> Self {
        Self {
            reports: BTreeMap::new(),
            refs: BTreeMap::new(),
        }
    }

    /// Takes `node`'s report at `version`: the node's measured RTT to each listed peer, in
    /// microseconds. A version not newer than the stored one is [`ReportOutcome::Stale`];
    /// a malformed or over-limit report is refused whole and changes nothing.
    pub fn handle_report(
        &mut self,
        node: N,
        version: u64,
        mut links: Vec<(N, u64)>,
    ) -> Result<ReportOutcome, LinkStateError> {
        if links.len() > LINKS_PER_NODE_MAX {
            return Err(LinkStateError::TooManyLinks {
                len: links.len(),
                max: LINKS_PER_NODE_MAX,
            });
        }
        for (index, (peer, rtt_us)) in links.iter().enumerate() {
            if *peer == node {
                return Err(LinkStateError::SelfLink { index });
            }
            if *rtt_us > RTT_US_MAX {
                return Err(LinkStateError::RttTooLarge {
                    index,
                    rtt_us: *rtt_us,
                    max: RTT_US_MAX,
                });
            }
        }
        // Reports arrive sorted by peer (nodes build them so): then there is no duplicate
        // and nothing to sort. Otherwise duplicates are reported at the position of the
        // later occurrence in the input.
        let ascending = links.windows(2).all(|w| w[0].0 < w[1].0);
        if !ascending {
            let mut order: Vec<usize> = (0..links.len()).collect();
            order.sort_by(|a, b| links[*a].0.cmp(&links[*b].0).then(a.cmp(b)));
            if let Some(w) = order.windows(2).find(|w| links[w[0]].0 == links[w[1]].0) {
                return Err(LinkStateError::DuplicatePeer { index: w[1] });
            }
        }
        let old = self.reports.get(&node);
        if old.is_some_and(|r| r.version >= version) {
            return Ok(ReportOutcome::Stale);
        }
        if !ascending {
            links.sort_unstable_by_key(|l| l.0);
        }
        // Count the nodes the database would hold. The old and the new report are both
        // sorted by peer: walk them together, so that only peers that come or go are
        // looked up (a node's successive reports mostly name the same peers).
        let old_links: &[(N, u64)] = old.map_or(&[], |r| &r.links);
        let mut added = usize::from(!self.refs.contains_key(&node));
        let mut removed = 0usize;
        for change in merge_peers(old_links, &links) {
            match change {
                PeerChange::Gone(peer) if self.refs.get(peer) == Some(&1) => removed += 1,
                PeerChange::New(peer) if !self.refs.contains_key(peer) => added += 1,
                _ => {}
            }
        }
        let len = self.refs.len() + added - removed;
        if len > NODES_MAX {
            return Err(LinkStateError::TooManyNodes {
                len,
                max: NODES_MAX,
            });
        }
        // Apply the same walk: peers in both reports keep their count.
        match self.reports.get_mut(&node) {
            Some(old) => {
                for change in merge_peers(&old.links, &links) {
                    match change {
                        PeerChange::Gone(peer) => unref(&mut self.refs, *peer),
                        PeerChange::New(peer) => *self.refs.entry(*peer).or_insert(0) += 1,
                        PeerChange::Kept => {}
                    }
                }
                *old = Report { version, links };
            }
            None => {
                *self.refs.entry(node).or_insert(0) += 1;
                for (peer, _) in &links {
                    *self.refs.entry(*peer).or_insert(0) += 1;
                }
                self.reports.insert(node, Report { version, links });
            }
        }
        debug_assert_eq!(self.refs.len(), len);
        Ok(ReportOutcome::Applied)
    }

    fn unref(&mut self, n: N) {
        unref(&mut self.refs, n);
    }

    /// Forgets `node`'s report (it left the mesh). Returns whether there was one. Its
    /// links disappear; other nodes' links to it stay until they report again.
    pub fn remove_node(&mut self, node: &N) -> bool {
        let Some(old) = self.reports.remove(node) else {
            return false;
        };
        for (peer, _) in &old.links {
            self.unref(*peer);
        }
        self.unref(*node);
        true
    }

    /// The stored version of `node`'s report.
    pub fn version(&self, node: &N) -> Option<u64> {
        self.reports.get(node).map(|r| r.version)
    }

    /// `node`'s reported links, sorted by peer.
    pub fn links(&self, node: &N) -> Option<&[(N, u64)]> {
        self.reports.get(node).map(|r| r.links.as_slice())
    }

    /// Nodes that have a report.
    pub fn reporters(&self) -> impl Iterator<Item = &N> {
        self.reports.keys()
    }

    /// Distinct nodes held (reporters and the peers they name), at most [`NODES_MAX`].
    pub fn nodes_len(&self) -> usize {
        self.refs.len()
    }

    /// The latency graph of everything stored, for path computation.
    pub fn graph(&self) -> LatencyGraph<N> {
        LatencyGraph::from_reports(
            self.refs.keys().copied().collect(),
            self.reports.iter().map(|(n, r)| (*n, r.links.as_slice())),
        )
    }

    /// Panics if the bookkeeping is inconsistent (for tests and the simulator).
    pub fn check_invariants(&self) {
        assert!(self.refs.len() <= NODES_MAX);
        let mut counted: BTreeMap<N, u32> = BTreeMap::new();
        for (node, r) in &self.reports {
            *counted.entry(*node).or_insert(0) += 1;
            assert!(r.links.len() <= LINKS_PER_NODE_MAX);
            assert!(r.links.windows(2).all(|w| w[0].0 < w[1].0));
            for (peer, rtt_us) in &r.links {
                assert!(peer != node);
                assert!(*rtt_us <= RTT_US_MAX);
                *counted.entry(*peer).or_insert(0) += 1;
            }
        }
        assert!(counted == self.refs, "reference counts out of date");
    }
}

/// An immutable latency graph in compressed sparse rows: node `i`'s out-edges are
/// `edges[offsets[i]..offsets[i + 1]]`, as `(target index, rtt_us)`. Nodes are indexed in
/// their `Ord` order, so the same database gives the same graph on every machine.
#[derive(Debug, Clone)]
pub struct LatencyGraph<N> {
    nodes: Vec<N>,
    offsets: Vec<u32>,
    edges: Vec<(u32, u64)>,
}

impl<N: Ord + Copy> LatencyGraph<N> {
    /// Builds a graph from `nodes` (sorted, distinct: every node any report names) and
    /// reports. Edge `u -> v` weighs `u`'s figure for `v`, else `v`'s for `u`.
    fn from_reports<'a>(nodes: Vec<N>, reports: impl Iterator<Item = (N, &'a [(N, u64)])>) -> Self
    where
        N: 'a,
    {
        debug_assert!(nodes.windows(2).all(|w| w[0] < w[1]));
        let index = |n: &N| nodes.binary_search(n).ok().map(|i| i as u32);
        // Every reported link gives its own direction (`false`) and the reverse (`true`);
        // sorting puts a node's own figure before a reverse one for the same target, and
        // dedup keeps the first.
        let mut adj: Vec<Vec<(u32, bool, u64)>> = vec![Vec::new(); nodes.len()];
        for (u, links) in reports {
            let Some(ui) = index(&u) else { continue };
            for (v, rtt_us) in links {
                let Some(vi) = index(v) else { continue };
                adj[ui as usize].push((vi, false, *rtt_us));
                adj[vi as usize].push((ui, true, *rtt_us));
            }
        }
        let mut offsets = Vec::with_capacity(nodes.len() + 1);
        let mut edges = Vec::with_capacity(adj.iter().map(Vec::len).sum());
        offsets.push(0u32);
        for mut out in adj {
            out.sort_unstable();
            out.dedup_by_key(|e| e.0);
            edges.extend(out.into_iter().map(|(t, _, w)| (t, w)));
            offsets.push(edges.len() as u32);
        }
        Self {
            nodes,
            offsets,
            edges,
        }
    }

    /// A graph straight from an edge list, for tests, benchmarks and the simulator: each
    /// `(u, v, rtt_us)` is one directed edge; later duplicates of a `(u, v)` pair are
    /// ignored. Unlike [`LinkStateDb`] it applies no limits; panics past `u32::MAX` edges.
    pub fn from_edges(edges: impl IntoIterator<Item = (N, N, u64)>) -> Self {
        let edges: Vec<(N, N, u64)> = edges.into_iter().collect();
        let mut nodes: Vec<N> = edges.iter().flat_map(|(u, v, _)| [*u, *v]).collect();
        nodes.sort_unstable();
        nodes.dedup();
        // (target, position in the input, rtt): sorting and dedup keep the first of a pair.
        let mut adj: Vec<Vec<(u32, usize, u64)>> = vec![Vec::new(); nodes.len()];
        for (seq, (u, v, w)) in edges.into_iter().enumerate() {
            let ui = nodes.binary_search(&u).unwrap_or(0);
            let vi = nodes.binary_search(&v).unwrap_or(0) as u32;
            adj[ui].push((vi, seq, w));
        }
        assert!(
            edges_len_fits(adj.iter().map(Vec::len).sum()),
            "too many edges"
        );
        let mut offsets = vec![0u32];
        let mut flat = Vec::new();
        for mut out in adj {
            out.sort_unstable();
            out.dedup_by_key(|e| e.0);
            flat.extend(out.into_iter().map(|(t, _, w)| (t, w)));
            offsets.push(flat.len() as u32);
        }
        Self {
            nodes,
            offsets,
            edges: flat,
        }
    }

    /// The nodes, sorted; a node's position is its index.
    pub fn nodes(&self) -> &[N] {
        &self.nodes
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of directed edges.
    pub fn edges_len(&self) -> usize {
        self.edges.len()
    }

    /// The index of `node`.
    pub fn index_of(&self, node: &N) -> Option<usize> {
        self.nodes.binary_search(node).ok()
    }

    /// Out-edges of the node at `index`, as `(target index, rtt_us)`, sorted by target.
    /// Panics if `index` is not below [`LatencyGraph::len`].
    pub fn out_edges(&self, index: usize) -> &[(u32, u64)] {
        &self.edges[self.offsets[index] as usize..self.offsets[index + 1] as usize]
    }

    /// The RTT of the edge `from -> to`, if there is one.
    pub fn rtt_us(&self, from: &N, to: &N) -> Option<u64> {
        let (f, t) = (self.index_of(from)?, self.index_of(to)? as u32);
        let out = self.out_edges(f);
        out.binary_search_by(|e| e.0.cmp(&t)).ok().map(|i| out[i].1)
    }
}

fn edges_len_fits(len: usize) -> bool {
    u32::try_from(len).is_ok()
}

/// Drops one reference to `n`, forgetting it at zero.
fn unref<N: Ord>(refs: &mut BTreeMap<N, u32>, n: N) {
    if let Some(c) = refs.get_mut(&n) {
        *c -= 1;
        if *c == 0 {
            refs.remove(&n);
        }
    }
}

/// How a peer differs between an old and a new report.
enum PeerChange<'a, N> {
    /// Only in the old report.
    Gone(&'a N),
    /// Only in the new report.
    New(&'a N),
    /// In both.
    Kept,
}

/// The peers of two reports sorted by peer, walked together.
fn merge_peers<'a, N: Ord>(
    old: &'a [(N, u64)],
    new: &'a [(N, u64)],
) -> impl Iterator<Item = PeerChange<'a, N>> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let change = match (old.get(i), new.get(j)) {
            (None, None) => return None,
            (Some((o, _)), None) => {
                i += 1;
                PeerChange::Gone(o)
            }
            (None, Some((n, _))) => {
                j += 1;
                PeerChange::New(n)
            }
            (Some((o, _)), Some((n, _))) => match o.cmp(n) {
                std::cmp::Ordering::Less => {
                    i += 1;
                    PeerChange::Gone(o)
                }
                std::cmp::Ordering::Greater => {
                    j += 1;
                    PeerChange::New(n)
                }
                std::cmp::Ordering::Equal => {
                    i += 1;
                    j += 1;
                    PeerChange::Kept
                }
            },
        };
        Some(change)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_version_wins() {
        let mut db = LinkStateDb::new();
        assert_eq!(
            db.handle_report(1u32, 5, vec![(2, 100)]),
            Ok(ReportOutcome::Applied)
        );
        assert_eq!(
            db.handle_report(1, 5, vec![(3, 100)]),
            Ok(ReportOutcome::Stale)
        );
        assert_eq!(
            db.handle_report(1, 4, vec![(3, 100)]),
            Ok(ReportOutcome::Stale)
        );
        assert_eq!(db.links(&1), Some(&[(2, 100)][..]));
        assert_eq!(
            db.handle_report(1, 6, vec![(3, 70), (2, 90)]),
            Ok(ReportOutcome::Applied)
        );
        assert_eq!(db.links(&1), Some(&[(2, 90), (3, 70)][..]));
        assert_eq!(db.version(&1), Some(6));
        assert_eq!(db.nodes_len(), 3);
        db.check_invariants();
    }

    #[test]
    fn malformed_reports_are_refused_whole() {
        let mut db = LinkStateDb::new();
        db.handle_report(1u32, 1, vec![(2, 10)]).unwrap();
        let too_many: Vec<(u32, u64)> = (10..10 + LINKS_PER_NODE_MAX as u32 + 1)
            .map(|p| (p, 1))
            .collect();
        assert_eq!(
            db.handle_report(1, 2, too_many),
            Err(LinkStateError::TooManyLinks {
                len: LINKS_PER_NODE_MAX + 1,
                max: LINKS_PER_NODE_MAX
            })
        );
        assert_eq!(
            db.handle_report(1, 2, vec![(3, 1), (1, 1)]),
            Err(LinkStateError::SelfLink { index: 1 })
        );
        assert_eq!(
            db.handle_report(1, 2, vec![(3, 1), (4, 1), (3, 2)]),
            Err(LinkStateError::DuplicatePeer { index: 2 })
        );
        assert_eq!(
            db.handle_report(1, 2, vec![(3, RTT_US_MAX + 1)]),
            Err(LinkStateError::RttTooLarge {
                index: 0,
                rtt_us: RTT_US_MAX + 1,
                max: RTT_US_MAX
            })
        );
        assert_eq!(db.version(&1), Some(1));
        assert_eq!(db.links(&1), Some(&[(2, 10)][..]));
        assert!(
            LinkStateError::TooManyLinks { len: 65, max: 64 }
                .to_string()
                .contains("LINKS_PER_NODE_MAX")
        );
        db.check_invariants();
    }

    #[test]
    fn node_limit_counts_peers_and_is_exact() {
        let mut db = LinkStateDb::new();
        // Fill to exactly NODES_MAX with reporters naming fresh peers.
        let mut next = 0u32;
        while db.nodes_len() + 2 <= NODES_MAX {
            db.handle_report(next, 1, vec![(next + 1, 5)]).unwrap();
            next += 2;
        }
        let len = db.nodes_len();
        assert!(len == NODES_MAX || len == NODES_MAX - 1);
        let err = db
            .handle_report(1_000_000, 1, vec![(1_000_001, 5), (1_000_002, 5)])
            .unwrap_err();
        assert!(
            matches!(err, LinkStateError::TooManyNodes { max: NODES_MAX, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("NODES_MAX"));
        assert_eq!(db.nodes_len(), len);
        // Replacing a report's only fresh peer by another fresh one keeps the count.
        assert_eq!(
            db.handle_report(0, 2, vec![(2_000_000, 5)]),
            Ok(ReportOutcome::Applied)
        );
        assert_eq!(db.nodes_len(), len);
        db.check_invariants();
    }

    #[test]
    fn remove_node_drops_its_links_and_unreferenced_peers() {
        let mut db = LinkStateDb::new();
        db.handle_report(1u32, 1, vec![(2, 10), (3, 20)]).unwrap();
        db.handle_report(2, 1, vec![(1, 11)]).unwrap();
        assert_eq!(db.nodes_len(), 3);
        assert!(db.remove_node(&1));
        assert!(!db.remove_node(&1));
        // 1 is still named by 2's report; 3 is gone.
        assert_eq!(db.nodes_len(), 2);
        db.check_invariants();
    }

    #[test]
    fn graph_uses_reverse_reports_for_missing_directions() {
        let mut db = LinkStateDb::new();
        db.handle_report(1u32, 1, vec![(2, 10), (3, 30)]).unwrap();
        db.handle_report(2, 1, vec![(1, 12)]).unwrap();
        let g = db.graph();
        assert_eq!(g.len(), 3);
        assert_eq!(g.rtt_us(&1, &2), Some(10));
        assert_eq!(g.rtt_us(&2, &1), Some(12));
        assert_eq!(g.rtt_us(&3, &1), Some(30));
        assert_eq!(g.rtt_us(&1, &3), Some(30));
        assert_eq!(g.rtt_us(&2, &3), None);
        assert_eq!(g.edges_len(), 4);
    }
}
