//! Property tests: Dijkstra and relay choice against brute force, the transit predicate,
//! the RTT estimator's outlier rejection, and the link-state database against a model.

use std::collections::BTreeMap;

use proptest::prelude::*;
use weft_routing::linkstate::{LINKS_PER_NODE_MAX, LinkStateError};
use weft_routing::paths::RELAY_COST_PCT_MAX;
use weft_routing::rtt::{RTT_CHANGE_PCT, RTT_CHANGE_SAMPLES, RTT_CHANGE_US_MIN};
use weft_routing::{
    LatencyGraph, LinkStateDb, ReportOutcome, RttEstimator, best_relay, shortest_paths,
};

/// Random directed graphs on nodes 0..n with weights 1..=100, plus a transit mask.
fn graph_and_mask(n_max: u32) -> impl Strategy<Value = (u32, Vec<(u32, u32, u64)>, Vec<bool>)> {
    (2..=n_max).prop_flat_map(|n| {
        let edges =
            prop::collection::vec((0..n, 0..n, 1u64..=100), 0..(n * n) as usize).prop_map(|es| {
                es.into_iter()
                    .filter(|(a, b, _)| a != b)
                    .collect::<Vec<_>>()
            });
        (
            Just(n),
            edges,
            prop::collection::vec(any::<bool>(), n as usize),
        )
    })
}

/// Every node appears in the graph even without edges: self-free isolated nodes are added
/// as a zero-weight edge-free presence by linking them nowhere, so tests index them safely.
fn build(n: u32, edges: &[(u32, u32, u64)]) -> LatencyGraph<u32> {
    // from_edges only knows nodes that appear in an edge; give each node a heavy edge to an
    // extra sink node `n` that nothing else touches, so all of 0..n exist.
    let mut all: Vec<(u32, u32, u64)> = edges.to_vec();
    all.extend((0..n).map(|i| (i, n, 1_000_000)));
    LatencyGraph::from_edges(all)
}

/// Minimum latency over every simple path from `s` to `t` whose intermediate nodes are
/// allowed, by exhaustive search. Uses the first edge of each `(u, v)` pair, as the graph does.
fn brute(n: u32, edges: &[(u32, u32, u64)], allowed: &[bool], s: u32, t: u32) -> Option<u64> {
    let mut w: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for (a, b, c) in edges {
        w.entry((*a, *b)).or_insert(*c);
    }
    for i in 0..n {
        w.entry((i, n)).or_insert(1_000_000);
    }
    struct Search<'a> {
        s: u32,
        t: u32,
        w: &'a BTreeMap<(u32, u32), u64>,
        allowed: &'a [bool],
    }
    impl Search<'_> {
        fn dfs(&self, at: u32, cost: u64, seen: &mut Vec<bool>, best: &mut Option<u64>) {
            if at == self.t {
                *best = Some(best.map_or(cost, |b| b.min(cost)));
                return;
            }
            if at != self.s && !self.allowed.get(at as usize).copied().unwrap_or(false) {
                return;
            }
            for ((_, b), c) in self.w.range((at, 0)..=(at, u32::MAX)) {
                if !seen[*b as usize] {
                    seen[*b as usize] = true;
                    self.dfs(*b, cost + c, seen, best);
                    seen[*b as usize] = false;
                }
            }
        }
    }
    let mut seen = vec![false; n as usize + 1];
    seen[s as usize] = true;
    let mut best = None;
    Search {
        s,
        t,
        w: &w,
        allowed,
    }
    .dfs(s, 0, &mut seen, &mut best);
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Dijkstra's latency equals the exhaustive minimum, for every source and destination;
    /// every returned path exists edge by edge, sums to its latency, and passes only
    /// through allowed nodes.
    #[test]
    fn dijkstra_equals_brute_force((n, edges, mask) in graph_and_mask(7)) {
        let g = build(n, &edges);
        let allowed = |x: &u32| mask.get(*x as usize).copied().unwrap_or(false);
        for s in 0..n {
            let routes = shortest_paths(&g, &s, allowed, None).unwrap();
            for t in 0..n {
                let expected = if s == t { Some(0) } else { brute(n, &edges, &mask, s, t) };
                prop_assert_eq!(routes.latency_us(&t), expected, "s={} t={}", s, t);
                if let Some(route) = routes.route(&t) {
                    prop_assert_eq!(route.path.first(), Some(&s));
                    prop_assert_eq!(route.path.last(), Some(&t));
                    let mut sum = 0;
                    for hop in route.path.windows(2) {
                        sum += g.rtt_us(&hop[0], &hop[1]).expect("path edge exists");
                    }
                    prop_assert_eq!(sum, route.latency_us);
                    for mid in route.path.iter().skip(1).take(route.path.len().saturating_sub(2)) {
                        prop_assert!(allowed(mid), "forbidden transit {} in {:?}", mid, route.path);
                    }
                }
            }
        }
    }

    /// On larger graphs: a node the predicate forbids is never a transit hop.
    #[test]
    fn forbidden_node_is_never_transit((n, edges, mask) in graph_and_mask(40)) {
        let g = build(n, &edges);
        let allowed = |x: &u32| mask.get(*x as usize).copied().unwrap_or(false);
        let routes = shortest_paths(&g, &0, allowed, None).unwrap();
        for (t, _) in routes.reachable() {
            let path = routes.route(&t).unwrap().path;
            for mid in &path[1..path.len() - 1] {
                prop_assert!(allowed(mid));
            }
        }
    }

    /// The relay choice is the cheapest allowed single relay, taken only under the
    /// hysteresis bound or when the direct link is missing.
    #[test]
    fn relay_choice_matches_brute_force((n, edges, mask) in graph_and_mask(8), s in 0u32..8, t in 0u32..8) {
        prop_assume!(s < n && t < n && s != t);
        let g = build(n, &edges);
        let allowed = |x: &u32| mask.get(*x as usize).copied().unwrap_or(false);
        let direct = g.rtt_us(&s, &t);
        let relay = (0..=n)
            .filter(|r| *r != s && *r != t && allowed(r))
            .filter_map(|r| Some(g.rtt_us(&s, &r)? + g.rtt_us(&r, &t)?))
            .min();
        let choice = best_relay(&g, &s, &t, allowed, None);
        match (direct, relay) {
            (None, None) => prop_assert_eq!(choice, None),
            (Some(d), None) => prop_assert_eq!(choice.unwrap().latency_us, d),
            (None, Some(c)) => prop_assert_eq!(choice.unwrap().latency_us, c),
            (Some(d), Some(c)) => {
                let ch = choice.unwrap();
                if c * 100 < d * RELAY_COST_PCT_MAX {
                    prop_assert_eq!(ch.latency_us, c);
                    prop_assert!(ch.via.is_some());
                } else {
                    prop_assert_eq!(ch.latency_us, d);
                    prop_assert_eq!(ch.via, None);
                }
            }
        }
    }

    /// Isolated delayed-ACK spikes (each followed by at least one normal sample) and
    /// bursts shorter than the window never move the published estimate.
    #[test]
    fn rtt_ignores_high_outliers(
        base in 1_000u64..300_000,
        jitter in prop::collection::vec(0u64..50, 1..200),
        spikes in prop::collection::vec((any::<bool>(), 1usize..8, 1u64..500_000), 1..200),
    ) {
        let mut e = RttEstimator::new();
        prop_assert_eq!(e.handle_sample(base).unwrap(), Some(base));
        for (i, (spike, burst, extra)) in spikes.iter().enumerate() {
            if *spike {
                for _ in 0..*burst {
                    prop_assert_eq!(e.handle_sample(base + extra).unwrap(), None);
                }
            }
            // Within the window after the spikes there is a normal sample again.
            let j = jitter[i % jitter.len()];
            prop_assert_eq!(e.handle_sample(base + j).unwrap(), None);
            e.check_invariants();
        }
        prop_assert_eq!(e.estimate_us(), Some(base));
    }

    /// Hysteresis: after the first sample, the published estimate changes at most once per
    /// `RTT_CHANGE_SAMPLES` samples, and every change is larger than the band.
    #[test]
    fn rtt_changes_only_after_hysteresis(samples in prop::collection::vec(0u64..1_000_000, 1..300)) {
        let mut e = RttEstimator::new();
        let mut last: Option<(usize, u64)> = None;
        for (i, s) in samples.iter().enumerate() {
            if let Some(v) = e.handle_sample(*s).unwrap() {
                if let Some((j, prev)) = last {
                    prop_assert!(i - j >= RTT_CHANGE_SAMPLES as usize, "changes at {} and {}", j, i);
                    let band = (prev * RTT_CHANGE_PCT / 100).max(RTT_CHANGE_US_MIN);
                    prop_assert!(v.abs_diff(prev) > band, "{} -> {} within band {}", prev, v, band);
                } else {
                    prop_assert_eq!(i, 0);
                }
                last = Some((i, v));
            }
        }
    }

    /// The published estimate always lies within the range of samples seen.
    #[test]
    fn rtt_estimate_within_sample_range(samples in prop::collection::vec(0u64..1_000_000, 1..300)) {
        let mut e = RttEstimator::new();
        for s in &samples {
            e.handle_sample(*s).unwrap();
            e.check_invariants();
        }
        let est = e.estimate_us().unwrap();
        prop_assert!(est >= *samples.iter().min().unwrap() && est <= *samples.iter().max().unwrap());
    }

    /// The database agrees with a model that keeps the newest well-formed report per node.
    #[test]
    fn linkstate_keeps_newest_version(
        reports in prop::collection::vec(
            (0u32..12, 0u64..6, prop::collection::vec((0u32..12, 0u64..1_000), 0..8)),
            1..100,
        ),
    ) {
        let mut db = LinkStateDb::new();
        let mut model: BTreeMap<u32, (u64, Vec<(u32, u64)>)> = BTreeMap::new();
        for (node, version, links) in reports {
            let mut peers: Vec<u32> = links.iter().map(|l| l.0).collect();
            peers.sort_unstable();
            let dup = peers.windows(2).any(|w| w[0] == w[1]);
            let selfl = peers.contains(&node);
            let out = db.handle_report(node, version, links.clone());
            if selfl || dup {
                let refused = matches!(
                    out,
                    Err(LinkStateError::SelfLink { .. } | LinkStateError::DuplicatePeer { .. })
                );
                prop_assert!(refused, "{:?}", out);
            } else if model.get(&node).is_some_and(|(v, _)| *v >= version) {
                prop_assert_eq!(out, Ok(ReportOutcome::Stale));
            } else {
                prop_assert_eq!(out, Ok(ReportOutcome::Applied));
                let mut sorted = links;
                sorted.sort_unstable();
                model.insert(node, (version, sorted));
            }
            db.check_invariants();
        }
        let mut nodes: Vec<u32> = Vec::new();
        for (node, (version, links)) in &model {
            prop_assert_eq!(db.version(node), Some(*version));
            prop_assert_eq!(db.links(node), Some(links.as_slice()));
            nodes.push(*node);
            nodes.extend(links.iter().map(|l| l.0));
        }
        nodes.sort_unstable();
        nodes.dedup();
        prop_assert_eq!(db.nodes_len(), nodes.len());
        let graph = db.graph();
        prop_assert_eq!(graph.nodes(), nodes.as_slice());
        // Edge a -> b weighs a's figure for b, else b's figure for a.
        let figure = |x: &u32, y: &u32| {
            model.get(x).and_then(|(_, l)| l.iter().find(|(p, _)| p == y).map(|(_, w)| *w))
        };
        for a in &nodes {
            for b in &nodes {
                let expected = if a == b { None } else { figure(a, b).or_else(|| figure(b, a)) };
                prop_assert_eq!(graph.rtt_us(a, b), expected, "{} -> {}", a, b);
            }
        }
        prop_assert!(LINKS_PER_NODE_MAX >= 8);
    }
}
