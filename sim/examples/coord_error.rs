//! How well Vivaldi coordinates (`weft_routing::coord`) estimate real inter-region RTTs.
//!
//! One node per region of the embedded catalog (`sim/data/region-rtt.csv` plus derived
//! pairs, see `weft_sim::catalog`). Each round every node measures one peer and updates its
//! coordinate; afterwards the coordinates estimate every pair and the example prints the
//! median and 90th-percentile relative error, over all pairs and over measured pairs only.
//!
//! Three training regimes:
//! - `dense`: each node measures random peers among all regions;
//! - `sparse`: each node measures only `SPARSE_PEERS` fixed random peers, and the error is
//!   reported on the pairs **never measured**, which is what coordinates are for;
//! - `sparse+noise`: as `sparse`, with one sample in four delayed by up to 200 ms, filtered by
//!   a per-pair `RttEstimator`.
//!
//! It also counts, with `weft_routing::best_relay` over the full matrix, the region pairs
//! where one relay beats the direct path by more than 15 %.
//!
//! Run: `cargo run --release -p weft-sim --example coord_error`

use weft_routing::{LatencyGraph, RttEstimator, VivaldiClient, best_relay};
use weft_sim::catalog::RegionCatalog;

const ROUNDS: usize = 2000;
const SPARSE_PEERS: usize = 8;
const SEEDS: [u64; 3] = [1, 2, 3];

struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Regime {
    Dense,
    Sparse,
    SparseNoise,
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let catalog = RegionCatalog::embedded()?;
    let n = catalog.regions().len();
    let rtt_us = |a: usize, b: usize| catalog.rtt_at(a, b).map(|e| e.rtt_us());
    let measured = |a: usize, b: usize| catalog.rtt_at(a, b).is_some_and(|e| e.is_measured());
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .collect();
    let measured_pairs = pairs.iter().filter(|(i, j)| measured(*i, *j)).count();
    println!(
        "catalog: {n} regions, {} pairs, {measured_pairs} measured (the rest derived from the great-circle fit)",
        pairs.len()
    );
    println!("{ROUNDS} rounds, one sample per node per round; relative error |est - real| / real");
    for regime in [Regime::Dense, Regime::Sparse, Regime::SparseNoise] {
        for seed in SEEDS {
            let mut rng = SplitMix(seed);
            let mut clients: Vec<VivaldiClient> = (0..n)
                .map(|i| VivaldiClient::new(seed.wrapping_mul(1000) + i as u64))
                .collect();
            let mut estimators: Vec<Vec<RttEstimator>> = (0..n)
                .map(|_| (0..n).map(|_| RttEstimator::new()).collect())
                .collect();
            // Fixed peers for the sparse regimes (symmetric: a link is measured from both ends).
            let mut contacted = vec![vec![false; n]; n];
            let mut chosen = Vec::new();
            for (i, row) in contacted.iter_mut().enumerate() {
                let mut k = 0;
                while k < SPARSE_PEERS.min(n - 1) {
                    let j = rng.below(n);
                    if j != i && !row[j] {
                        row[j] = true;
                        chosen.push((i, j));
                        k += 1;
                    }
                }
            }
            for (i, j) in chosen {
                contacted[j][i] = true;
            }
            let peers: Vec<Vec<usize>> = (0..n)
                .map(|i| (0..n).filter(|j| contacted[i][*j]).collect())
                .collect();
            for _ in 0..ROUNDS {
                for i in 0..n {
                    let j = match regime {
                        Regime::Dense => (i + 1 + rng.below(n - 1)) % n,
                        Regime::Sparse | Regime::SparseNoise => peers[i][rng.below(peers[i].len())],
                    };
                    let exact = rtt_us(i, j).expect("complete matrix");
                    let sample = if regime == Regime::SparseNoise && rng.below(4) == 0 {
                        exact + rng.below(200_000) as u64
                    } else {
                        exact
                    };
                    let rtt = if regime == Regime::SparseNoise {
                        estimators[i][j].handle_sample(sample)?;
                        estimators[i][j].estimate_us().expect("has a sample")
                    } else {
                        sample
                    };
                    let peer = clients[j].coordinate();
                    clients[i].update(&peer, rtt)?;
                }
            }
            let err = |(i, j): &(usize, usize)| {
                let est = clients[*i]
                    .coordinate()
                    .distance_us(&clients[*j].coordinate()) as f64;
                let real = rtt_us(*i, *j).expect("complete matrix") as f64;
                (est - real).abs() / real
            };
            let (label, eval): (&str, Vec<&(usize, usize)>) = match regime {
                Regime::Dense => ("dense", pairs.iter().collect()),
                Regime::Sparse => (
                    "sparse",
                    pairs.iter().filter(|(i, j)| !contacted[*i][*j]).collect(),
                ),
                Regime::SparseNoise => (
                    "sparse+noise",
                    pairs.iter().filter(|(i, j)| !contacted[*i][*j]).collect(),
                ),
            };
            let all: Vec<f64> = eval.iter().map(|p| err(p)).collect();
            let meas: Vec<f64> = eval
                .iter()
                .filter(|(i, j)| measured(*i, *j))
                .map(|p| err(p))
                .collect();
            println!(
                "{label:>12} seed {seed}: {} pairs evaluated{}: median {:.1} %, p90 {:.1} %; measured pairs only ({}): median {:.1} %, p90 {:.1} %",
                all.len(),
                if regime == Regime::Dense {
                    ""
                } else {
                    " (never measured)"
                },
                100.0 * percentile(all.clone(), 0.5),
                100.0 * percentile(all, 0.9),
                meas.len(),
                100.0 * percentile(meas.clone(), 0.5),
                100.0 * percentile(meas, 0.9),
            );
        }
    }

    // Relays on the real matrix: pairs where one relay beats the direct path by > 15 %.
    let graph = LatencyGraph::from_edges(
        (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| (i, j, rtt_us(i, j).expect("complete matrix"))),
    );
    let mut relayed = 0;
    let mut relayed_measured = 0;
    let mut best_gain = (0.0, 0, 0, 0);
    for (i, j) in &pairs {
        let choice = best_relay(&graph, i, j, |_| true, None).expect("complete graph");
        if let (Some(via), Some(direct)) = (choice.via, choice.direct_us) {
            relayed += 1;
            if measured(*i, *j) {
                relayed_measured += 1;
            }
            let gain = 1.0 - choice.latency_us as f64 / direct as f64;
            if gain > best_gain.0 {
                best_gain = (gain, *i, *j, via);
            }
        }
    }
    let id = |k: usize| catalog.regions()[k].id.as_str();
    println!(
        "relays: {relayed} of {} region pairs ({relayed_measured} of them measured pairs) have a relay over 15 % faster than direct; largest gain {:.0} % ({} -> {} via {})",
        pairs.len(),
        100.0 * best_gain.0,
        id(best_gain.1),
        id(best_gain.2),
        id(best_gain.3)
    );
    Ok(())
}
