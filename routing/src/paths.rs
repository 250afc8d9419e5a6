//! Constrained shortest paths over the latency graph, and relay choice.
//!
//! Transit is restricted by a predicate: a path may pass *through* a node only if
//! `transit_ok(node)` holds; the source and the destination themselves need not satisfy it.
//! Policy will supply the predicate (a node outside an event's residency may not carry it);
//! this module only takes a `Fn(&N) -> bool`.
//!
//! - [`shortest_paths`]: Dijkstra from one source to every destination, with the path and
//!   its estimated latency per destination. A node that fails the predicate is a sink: it is
//!   reachable but never relaxed, which is exactly "no forbidden transit hop".
//! - [`best_relay`]: for one `(src, dst)` pair, the best single relay, used only when the
//!   direct link is missing or the relay is clearly faster ([`RELAY_COST_PCT_MAX`]). A
//!   degraded direct link shows up as a higher figure in the graph once the RTT estimator
//!   publishes the change and the report is gossiped; the function uses whatever the graph
//!   holds.
//!
//! Both can fall back to coordinate estimates ([`crate::coord`]) for links nobody measured:
//! pass an [`Estimator`]. In [`shortest_paths`] only the source's own missing links are
//! estimated (the source can open a connection to anyone; it cannot make two other nodes
//! talk), so at most the first hop of a route is an estimate, and the route says so.
//!
//! Ties are broken by node order, so the same graph gives the same routes everywhere.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::linkstate::LatencyGraph;

/// A relay is preferred to a working direct link only if the relayed path costs less than
/// this percentage of the direct one. 85: the simulator's stretch target is 1.15, and a
/// smaller gain is within the noise of the estimates (and costs a hop of processing).
pub const RELAY_COST_PCT_MAX: u64 = 85;

/// A source of RTT estimates for links nobody measured, in microseconds: typically
/// `|a, b| Some(coord(a)?.distance_us(coord(b)?))`.
pub type Estimator<'a, N> = &'a dyn Fn(&N, &N) -> Option<u64>;

const NONE: u32 = u32::MAX;

/// Shortest paths from one source to every node of a graph (see [`shortest_paths`]).
#[derive(Debug, Clone)]
pub struct Routes<'g, N> {
    graph: &'g LatencyGraph<N>,
    src: usize,
    dist_us: Vec<u64>,
    prev: Vec<u32>,
    /// Whether the edge into this node from `prev` is a coordinate estimate.
    estimated: Vec<bool>,
}

/// One route: the node sequence from source to destination and its latency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<N> {
    /// Source first, destination last; `[src]` for the source itself.
    pub path: Vec<N>,
    /// Sum of the RTTs of the path's links, in microseconds.
    pub latency_us: u64,
    /// Whether the first hop is a coordinate estimate rather than a measured link.
    pub estimated: bool,
}

/// Dijkstra from `src` over `graph`, passing through only nodes that satisfy `transit_ok`.
/// With `estimate`, the source's unmeasured links to other nodes are filled in from it.
/// `None` if `src` is not in the graph.
pub fn shortest_paths<'g, N: Ord + Copy>(
    graph: &'g LatencyGraph<N>,
    src: &N,
    transit_ok: impl Fn(&N) -> bool,
    estimate: Option<Estimator<'_, N>>,
) -> Option<Routes<'g, N>> {
    let s = graph.index_of(src)?;
    let n = graph.len();
    let nodes = graph.nodes();
    let mut dist_us = vec![u64::MAX; n];
    let mut prev = vec![NONE; n];
    let mut estimated = vec![false; n];
    let mut done = vec![false; n];
    dist_us[s] = 0;
    // Edges out of the source: measured, plus estimates for the others if asked.
    let mut src_edges: Vec<(u32, u64, bool)> = graph
        .out_edges(s)
        .iter()
        .map(|(t, w)| (*t, *w, false))
        .collect();
    if let Some(est) = estimate {
        let measured = graph.out_edges(s);
        for (i, node) in nodes.iter().enumerate() {
            if i != s
                && measured.binary_search_by(|e| e.0.cmp(&(i as u32))).is_err()
                && let Some(w) = est(src, node)
            {
                src_edges.push((i as u32, w, true));
            }
        }
    }
    for (t, w, is_est) in src_edges {
        let t = t as usize;
        if w < dist_us[t] || (w == dist_us[t] && !is_est && estimated[t]) {
            dist_us[t] = w;
            prev[t] = s as u32;
            estimated[t] = is_est;
        }
    }
    done[s] = true;
    let mut heap: BinaryHeap<Reverse<(u64, u32)>> = (0..n)
        .filter(|i| dist_us[*i] != u64::MAX && *i != s)
        .map(|i| Reverse((dist_us[i], i as u32)))
        .collect();
    // Each node is settled once; each edge pushes at most one entry: bounded by n + edges.
    while let Some(Reverse((d, u))) = heap.pop() {
        let u = u as usize;
        if done[u] || d > dist_us[u] {
            continue;
        }
        done[u] = true;
        if !transit_ok(&nodes[u]) {
            continue;
        }
        for (v, w) in graph.out_edges(u) {
            let v = *v as usize;
            let nd = d.saturating_add(*w);
            if !done[v] && nd < dist_us[v] {
                dist_us[v] = nd;
                prev[v] = u as u32;
                estimated[v] = estimated[u];
                heap.push(Reverse((nd, v as u32)));
            }
        }
    }
    Some(Routes {
        graph,
        src: s,
        dist_us,
        prev,
        estimated,
    })
}

impl<N: Ord + Copy> Routes<'_, N> {
    /// The source.
    pub fn source(&self) -> N {
        self.graph.nodes()[self.src]
    }

    /// Estimated latency to `dst` in microseconds, if reachable.
    pub fn latency_us(&self, dst: &N) -> Option<u64> {
        let d = self.dist_us[self.graph.index_of(dst)?];
        (d != u64::MAX).then_some(d)
    }

    /// The route to `dst`, if reachable.
    pub fn route(&self, dst: &N) -> Option<Route<N>> {
        let t = self.graph.index_of(dst)?;
        let latency_us = self.dist_us[t];
        if latency_us == u64::MAX {
            return None;
        }
        let mut path = vec![self.graph.nodes()[t]];
        let mut at = t;
        // A shortest path has at most n nodes.
        for _ in 0..self.graph.len() {
            if at == self.src {
                break;
            }
            at = self.prev[at] as usize;
            path.push(self.graph.nodes()[at]);
        }
        debug_assert_eq!(at, self.src);
        path.reverse();
        Some(Route {
            path,
            latency_us,
            estimated: self.estimated[t],
        })
    }

    /// The first hop toward `dst` (`dst` itself when going direct); `None` if `dst` is the
    /// source or unreachable.
    pub fn next_hop(&self, dst: &N) -> Option<N> {
        let route = self.route(dst)?;
        route.path.get(1).copied()
    }

    /// Every reachable destination other than the source, with its latency, in node order.
    pub fn reachable(&self) -> impl Iterator<Item = (N, u64)> + '_ {
        self.dist_us
            .iter()
            .enumerate()
            .filter(move |(i, d)| **d != u64::MAX && *i != self.src)
            .map(|(i, d)| (self.graph.nodes()[i], *d))
    }
}

/// How to reach one destination: direct or through one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayChoice<N> {
    /// The relay, or `None` to go direct.
    pub via: Option<N>,
    /// Latency of the chosen way, microseconds.
    pub latency_us: u64,
    /// Latency of the direct link (measured or estimated), if known.
    pub direct_us: Option<u64>,
    /// Whether any leg of the chosen way is a coordinate estimate.
    pub estimated: bool,
}

/// The best way from `src` to `dst` with at most one relay. A relay (a node satisfying
/// `transit_ok`) is chosen when the direct link is unknown or when the relayed path costs
/// under [`RELAY_COST_PCT_MAX`] percent of it. Legs missing from the graph come from
/// `estimate` if given. `None` if there is neither a direct link nor a relay.
pub fn best_relay<N: Ord + Copy>(
    graph: &LatencyGraph<N>,
    src: &N,
    dst: &N,
    transit_ok: impl Fn(&N) -> bool,
    estimate: Option<Estimator<'_, N>>,
) -> Option<RelayChoice<N>> {
    let leg = |a: &N, b: &N| -> Option<(u64, bool)> {
        if let Some(w) = graph.rtt_us(a, b) {
            return Some((w, false));
        }
        estimate.and_then(|e| e(a, b)).map(|w| (w, true))
    };
    let direct = leg(src, dst);
    let mut best: Option<(u64, N, bool)> = None;
    for r in graph.nodes() {
        if r == src || r == dst || !transit_ok(r) {
            continue;
        }
        let (Some((a, ea)), Some((b, eb))) = (leg(src, r), leg(r, dst)) else {
            continue;
        };
        let cost = a.saturating_add(b);
        if best.is_none_or(|(c, _, _)| cost < c) {
            best = Some((cost, *r, ea || eb));
        }
    }
    let direct_us = direct.map(|(d, _)| d);
    match (direct, best) {
        (Some((d, de)), Some((c, r, e))) => {
            if c.saturating_mul(100) < d.saturating_mul(RELAY_COST_PCT_MAX) {
                Some(RelayChoice {
                    via: Some(r),
                    latency_us: c,
                    direct_us,
                    estimated: e,
                })
            } else {
                Some(RelayChoice {
                    via: None,
                    latency_us: d,
                    direct_us,
                    estimated: de,
                })
            }
        }
        (Some((d, de)), None) => Some(RelayChoice {
            via: None,
            latency_us: d,
            direct_us,
            estimated: de,
        }),
        (None, Some((c, r, e))) => Some(RelayChoice {
            via: Some(r),
            latency_us: c,
            direct_us,
            estimated: e,
        }),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(edges: &[(u32, u32, u64)]) -> LatencyGraph<u32> {
        LatencyGraph::from_edges(
            edges
                .iter()
                .flat_map(|(a, b, w)| [(*a, *b, *w), (*b, *a, *w)]),
        )
    }

    #[test]
    fn dijkstra_prefers_the_cheaper_transit_and_respects_the_predicate() {
        // 1 - 2 - 4 costs 20, 1 - 3 - 4 costs 30, 1 - 4 costs 100.
        let g = sym(&[(1, 2, 10), (2, 4, 10), (1, 3, 15), (3, 4, 15), (1, 4, 100)]);
        let r = shortest_paths(&g, &1, |_| true, None).unwrap();
        assert_eq!(
            r.route(&4),
            Some(Route {
                path: vec![1, 2, 4],
                latency_us: 20,
                estimated: false
            })
        );
        assert_eq!(r.next_hop(&4), Some(2));
        assert_eq!(r.route(&1).unwrap().path, vec![1]);
        let r = shortest_paths(&g, &1, |n| *n != 2, None).unwrap();
        assert_eq!(r.route(&4).unwrap().path, vec![1, 3, 4]);
        // A forbidden node is still a reachable destination.
        assert_eq!(r.latency_us(&2), Some(10));
        let r = shortest_paths(&g, &1, |_| false, None).unwrap();
        assert_eq!(r.route(&4).unwrap().path, vec![1, 4]);
        assert_eq!(r.reachable().count(), 3);
    }

    #[test]
    fn unreachable_and_unknown() {
        let g = sym(&[(1, 2, 10), (3, 4, 10)]);
        let r = shortest_paths(&g, &1, |_| true, None).unwrap();
        assert_eq!(r.route(&3), None);
        assert_eq!(r.latency_us(&9), None);
        assert!(shortest_paths(&g, &9, |_| true, None).is_none());
    }

    #[test]
    fn estimates_fill_the_sources_missing_links_only() {
        let g = sym(&[(1, 2, 10), (3, 4, 10)]);
        let est = |a: &u32, b: &u32| Some(u64::from(a.abs_diff(*b)) * 7 + u64::from(*b == 4) * 19);
        let r = shortest_paths(&g, &1, |_| true, Some(&est)).unwrap();
        // 1 -> 3 estimated at 14, then measured 3 -> 4 (10) beats the estimated 1 -> 4 (40).
        assert_eq!(
            r.route(&4),
            Some(Route {
                path: vec![1, 3, 4],
                latency_us: 24,
                estimated: true
            })
        );
        assert_eq!(
            r.route(&2),
            Some(Route {
                path: vec![1, 2],
                latency_us: 10,
                estimated: false
            })
        );
    }

    #[test]
    fn relay_only_when_clearly_better_or_direct_missing() {
        let g = sym(&[(1, 2, 40), (2, 3, 40), (1, 3, 100)]);
        assert_eq!(
            best_relay(&g, &1, &3, |_| true, None),
            Some(RelayChoice {
                via: Some(2),
                latency_us: 80,
                direct_us: Some(100),
                estimated: false
            })
        );
        // 80 is not under 85 % of 90: go direct.
        let g = sym(&[(1, 2, 40), (2, 3, 40), (1, 3, 90)]);
        assert_eq!(best_relay(&g, &1, &3, |_| true, None).unwrap().via, None);
        // Forbidden relay.
        let g = sym(&[(1, 2, 40), (2, 3, 40), (1, 3, 100)]);
        assert_eq!(best_relay(&g, &1, &3, |n| *n != 2, None).unwrap().via, None);
        // Direct link missing.
        let g = sym(&[(1, 2, 40), (2, 3, 40)]);
        assert_eq!(best_relay(&g, &1, &3, |_| true, None).unwrap().via, Some(2));
        assert_eq!(best_relay(&g, &1, &3, |_| false, None), None);
        // Estimated direct link.
        let est = |_: &u32, _: &u32| Some(50);
        let c = best_relay(&g, &1, &3, |_| true, Some(&est)).unwrap();
        assert_eq!(
            c,
            RelayChoice {
                via: None,
                latency_us: 50,
                direct_us: Some(50),
                estimated: true
            }
        );
    }
}
