//! Route recompute on a 1000-node mesh: 20 regions of 50 nodes, each node reporting about
//! 20 links (12 inside its region, 8 to other regions). Prints criterion's time per
//! recompute for: building the graph from the link-state database, Dijkstra from one source
//! (all transit allowed, and with half the regions forbidden as transit), the two together,
//! and one relay choice.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use weft_routing::{LinkStateDb, best_relay, shortest_paths};

const REGIONS: u32 = 20;
const PER_REGION: u32 = 50;
const LINKS_IN_REGION: u32 = 12;
const LINKS_OUT_OF_REGION: u32 = 8;

struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn mesh() -> LinkStateDb<u32> {
    let mut rng = SplitMix(42);
    // Regions on a 150 ms x 150 ms map; RTT between regions = distance + 5 ms.
    let pos: Vec<(f64, f64)> = (0..REGIONS)
        .map(|_| (rng.below(150_000) as f64, rng.below(150_000) as f64))
        .collect();
    let region_rtt_us = |a: u32, b: u32| {
        let (pa, pb) = (pos[a as usize], pos[b as usize]);
        ((pa.0 - pb.0).hypot(pa.1 - pb.1) + 5_000.0) as u64
    };
    let mut db = LinkStateDb::new();
    let n = REGIONS * PER_REGION;
    for node in 0..n {
        let region = node / PER_REGION;
        let mut links = Vec::new();
        while links.len() < (LINKS_IN_REGION + LINKS_OUT_OF_REGION) as usize {
            let in_region = links.len() < LINKS_IN_REGION as usize;
            let peer = if in_region {
                region * PER_REGION + rng.below(u64::from(PER_REGION)) as u32
            } else {
                rng.below(u64::from(n)) as u32
            };
            if peer == node || links.iter().any(|(p, _)| *p == peer) {
                continue;
            }
            let base = if peer / PER_REGION == region {
                500
            } else {
                region_rtt_us(region, peer / PER_REGION)
            };
            links.push((peer, base + rng.below(1_000)));
        }
        db.handle_report(node, 1, links).expect("within limits");
    }
    db
}

fn bench(c: &mut Criterion) {
    let db = mesh();
    let graph = db.graph();
    println!(
        "graph: {} nodes, {} directed edges",
        graph.len(),
        graph.edges_len()
    );
    let even_regions = |n: &u32| (n / PER_REGION).is_multiple_of(2);
    let mut g = c.benchmark_group("routes_1000_nodes");
    g.bench_function("graph_build", |b| b.iter(|| black_box(db.graph())));
    g.bench_function("dijkstra_all_transit", |b| {
        b.iter(|| black_box(shortest_paths(&graph, &0, |_| true, None).map(|r| r.latency_us(&999))))
    });
    g.bench_function("dijkstra_half_regions_transit", |b| {
        b.iter(|| {
            black_box(shortest_paths(&graph, &0, even_regions, None).map(|r| r.latency_us(&999)))
        })
    });
    g.bench_function("recompute_graph_and_dijkstra", |b| {
        b.iter(|| {
            let graph = db.graph();
            black_box(shortest_paths(&graph, &0, |_| true, None).map(|r| r.latency_us(&999)))
        })
    });
    g.bench_function("best_relay_one_pair", |b| {
        b.iter(|| black_box(best_relay(&graph, &0, &999, |_| true, None)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
